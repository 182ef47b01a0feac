//! A JSON Lines file as a partitioned source.
//!
//! The file is memory-mapped and cut into blocks at line boundaries; worker `i` of `n`
//! reads blocks `i, i + n, i + 2n, ...`, so all workers move through event time together
//! (a file written in time order stays roughly in time order across workers). Payloads are
//! borrowed from the map: reading allocates nothing per line.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::ConnectorError;

/// How a file is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Target block size in bytes; a block ends at the first line end after it.
    #[serde(default = "default_block_bytes")]
    pub block_bytes: usize,
}

const fn default_block_bytes() -> usize {
    256 * 1024
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        Self {
            block_bytes: default_block_bytes(),
        }
    }
}

/// A run of whole lines of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Byte offset of the first line.
    pub start: usize,
    /// Byte offset one past the last line's newline (or the end of the file).
    pub end: usize,
    /// 1-based number of the block's first line.
    pub first_line: u64,
}

/// A memory-mapped JSON Lines file, cut into blocks. Shared by all workers of a process.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// `None` for an empty file, which cannot be mapped.
    map: Option<Mmap>,
    blocks: Vec<Block>,
}

impl FileSource {
    /// Opens and maps `path`, and finds its blocks and their line numbers (one pass).
    pub fn open(path: &Path, config: &FileSourceConfig) -> Result<Self, ConnectorError> {
        let error = |source| ConnectorError::File {
            action: "opening",
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(error)?;
        let len = file.metadata().map_err(error)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only. A file truncated by another process while mapped
            // would fault; replay inputs are not written while being read.
            Some(unsafe { Mmap::map(&file) }.map_err(error)?)
        };
        let bytes = map.as_deref().unwrap_or_default();
        let mut source = Self {
            path: path.to_owned(),
            map: None,
            blocks: Vec::new(),
        };
        // Cutting reads every page: let them go as it goes, until a worker reads its blocks.
        let mut released = 0;
        let blocks = cut_blocks(bytes, config.block_bytes.max(1), |end| {
            if end - released >= RELEASE_BYTES || end == bytes.len() {
                release(map.as_ref(), released, end);
                released = end;
            }
        });
        source.map = map;
        source.blocks = blocks;
        Ok(source)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All blocks, in file order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks worker `index` of `peers` reads, in file order.
    pub fn share(&self, index: usize, peers: usize) -> impl Iterator<Item = Block> + '_ {
        self.blocks
            .iter()
            .copied()
            .skip(index)
            .step_by(peers.max(1))
    }

    /// The non-empty lines of `block` with their 1-based line numbers; a trailing `\r` is
    /// removed.
    pub fn lines(&self, block: Block) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let bytes = &self.bytes()[block.start..block.end];
        let mut line = block.first_line;
        bytes
            .split(|&b| b == b'\n')
            .map(move |l| {
                let numbered = (line, l.strip_suffix(b"\r").unwrap_or(l));
                line += 1;
                numbered
            })
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
    }

    /// Tells the kernel `block` has been read: its pages leave this process's resident set
    /// (they are file pages, so reading them again only reloads them). Without this, the
    /// whole input file ends up counted in the process's RSS.
    pub fn release(&self, block: Block) {
        release(self.map.as_ref(), block.start, block.end);
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

/// Bytes the initial cut reads before releasing them.
const RELEASE_BYTES: usize = 64 << 20;

/// Drops `start..end` of `map` from the resident set (see [`FileSource::release`]).
fn release(map: Option<&Mmap>, start: usize, end: usize) {
    #[cfg(unix)]
    if let Some(map) = map {
        // SAFETY: the map is a read-only mapping of a file. MADV_DONTNEED on it discards
        // page-table references only; any later access faults the same bytes back in from
        // the file, so no live reference can observe different contents.
        let advised = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        // Only a hint: failing to give memory back is not an error worth stopping for.
        let _ = advised;
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

/// Cuts `bytes` into blocks of about `target` bytes ending at line ends, calling `cut` with
/// the end of each block.
fn cut_blocks(bytes: &[u8], target: usize, mut cut: impl FnMut(usize)) -> Vec<Block> {
    let mut blocks = Vec::with_capacity(bytes.len() / target + 1);
    let (mut start, mut line) = (0, 1u64);
    while start < bytes.len() {
        let want = (start + target).min(bytes.len());
        let end = match memchr::memchr(b'\n', &bytes[want.saturating_sub(1)..]) {
            Some(at) => want.saturating_sub(1) + at + 1,
            None => bytes.len(),
        };
        let end = end.max(start + 1);
        blocks.push(Block {
            start,
            end,
            first_line: line,
        });
        line += memchr::memchr_iter(b'\n', &bytes[start..end]).count() as u64;
        cut(end);
        start = end;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(text: &str, block_bytes: usize) -> (tempfile::NamedTempFile, FileSource) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let source = FileSource::open(file.path(), &FileSourceConfig { block_bytes }).unwrap();
        (file, source)
    }

    fn all_lines(source: &FileSource, peers: usize) -> Vec<(u64, String)> {
        let mut lines: Vec<_> = (0..peers)
            .flat_map(|i| source.share(i, peers).collect::<Vec<_>>())
            .flat_map(|b| {
                source
                    .lines(b)
                    .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn every_line_once_with_its_number_whatever_the_block_size_and_workers() {
        let text: String = (1..=100)
            .map(|n| format!("line{n}{}\n", "x".repeat(n % 7)))
            .collect();
        let expected: Vec<_> = (1..=100)
            .map(|n| (n as u64, format!("line{n}{}", "x".repeat(n % 7))))
            .collect();
        for block_bytes in [1, 5, 64, 1000, 1 << 20] {
            let (_f, source) = source(&text, block_bytes);
            for peers in [1, 2, 3] {
                assert_eq!(
                    all_lines(&source, peers),
                    expected,
                    "block_bytes {block_bytes}, peers {peers}"
                );
            }
        }
    }

    #[test]
    fn blank_lines_crlf_and_a_missing_final_newline() {
        let (_f, source) = source("a\r\n\n  \nb", 2);
        assert_eq!(
            all_lines(&source, 1),
            vec![(1, "a".to_owned()), (4, "b".to_owned())]
        );
    }

    #[test]
    fn released_blocks_read_the_same() {
        let text: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        let (_f, source) = source(&text, 100);
        let before = all_lines(&source, 1);
        for block in source.blocks() {
            source.release(*block);
        }
        assert_eq!(all_lines(&source, 1), before);
    }

    #[test]
    fn empty_file_and_missing_file() {
        let (_f, source) = source("", 10);
        assert!(source.is_empty());
        assert_eq!(source.blocks().len(), 0);
        let err = FileSource::open(
            Path::new("/nonexistent/x.jsonl"),
            &FileSourceConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }
}
