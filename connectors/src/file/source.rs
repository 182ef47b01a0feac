//! A JSON Lines file as a partitioned source.
//!
//! The file is cut into blocks at line boundaries in one streaming pass; worker `i` of `n`
//! reads blocks `i, i + n, i + 2n, ...`, so all workers move through event time together
//! (a file written in time order stays roughly in time order across workers). A block is
//! read with one positioned read into the worker's own reusable buffer, and payloads are
//! borrowed from that buffer: reading allocates nothing per line and makes one syscall per
//! block.
//!
//! Why not a memory map: the mapped pages of a file count in the process's resident set,
//! and `MADV_DONTNEED` on blocks already read did not reliably give them back (on this
//! kernel a 1.4 GB replay ended with most of the file resident). Reading into a buffer
//! keeps the footprint at `workers × block` whatever the file size; the bytes go through
//! the page cache, which the kernel reclaims as it sees fit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

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

impl Block {
    /// The block's length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the block holds no bytes (never true of a block of [`FileSource`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The non-empty lines of `bytes` (this block's contents, as read by
    /// [`FileSource::read`]) with their 1-based line numbers; a trailing `\r` is removed.
    pub fn lines(self, bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let mut line = self.first_line;
        // `bytes.split(|&b| b == b'\n')`, with memchr's vectorized search for the line ends.
        let mut rest = Some(bytes);
        std::iter::from_fn(move || {
            let r = rest?;
            Some(match memchr::memchr(b'\n', r) {
                Some(end) => {
                    rest = Some(&r[end + 1..]);
                    &r[..end]
                }
                None => {
                    rest = None;
                    r
                }
            })
        })
        .map(move |l| {
            let numbered = (line, l.strip_suffix(b"\r").unwrap_or(l));
            line += 1;
            numbered
        })
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
    }
}

/// A JSON Lines file, cut into blocks. Shared by all workers of a process.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: File,
    len: usize,
    blocks: Vec<Block>,
}

/// Bytes read at a time by the pass that finds the blocks.
const SCAN_BYTES: usize = 1 << 20;

impl FileSource {
    /// Opens `path` and finds its blocks and their line numbers (one streaming pass).
    pub fn open(path: &Path, config: &FileSourceConfig) -> Result<Self, ConnectorError> {
        let error = |action, source| ConnectorError::File {
            action,
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(|e| error("opening", e))?;
        let mut cutter = Cutter::new(config.block_bytes.max(1));
        let mut chunk = vec![0; SCAN_BYTES];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(error("reading", e)),
            };
            cutter.feed(&chunk[..n]);
        }
        let (blocks, len) = cutter.finish();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            blocks,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes (when it was opened).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// Reads `block` into `buf` (replacing its contents; the buffer is reused, so a worker
    /// allocates only when a block is larger than any before). Iterate its lines with
    /// [`Block::lines`].
    pub fn read(&self, block: Block, buf: &mut Vec<u8>) -> Result<(), ConnectorError> {
        buf.resize(block.len(), 0);
        read_at(&self.file, buf, block.start as u64).map_err(|source| ConnectorError::File {
            action: "reading",
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Cuts a stream of bytes into blocks of about `target` bytes that end at line ends.
struct Cutter {
    target: usize,
    blocks: Vec<Block>,
    /// Bytes seen so far.
    pos: usize,
    /// Where the open block starts, and the number of its first line.
    start: usize,
    first_line: u64,
    /// Newlines seen so far.
    newlines: u64,
}

impl Cutter {
    fn new(target: usize) -> Self {
        Self {
            target,
            blocks: Vec::new(),
            pos: 0,
            start: 0,
            first_line: 1,
            newlines: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let base = self.pos;
        // A block ends at the first newline at or after `start + target - 1`.
        let mut from = 0;
        loop {
            let want = (self.start + self.target - 1).max(base + from);
            if want >= base + chunk.len() {
                break;
            }
            let Some(at) = memchr::memchr(b'\n', &chunk[want - base..]) else {
                break;
            };
            let end = want + at + 1;
            self.newlines += memchr::memchr_iter(b'\n', &chunk[from..end - base]).count() as u64;
            self.blocks.push(Block {
                start: self.start,
                end,
                first_line: self.first_line,
            });
            self.start = end;
            self.first_line = self.newlines + 1;
            from = end - base;
        }
        self.newlines += memchr::memchr_iter(b'\n', &chunk[from..]).count() as u64;
        self.pos += chunk.len();
    }

    fn finish(mut self) -> (Vec<Block>, usize) {
        if self.start < self.pos {
            self.blocks.push(Block {
                start: self.start,
                end: self.pos,
                first_line: self.first_line,
            });
        }
        (self.blocks, self.pos)
    }
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
                let mut buf = Vec::new();
                source.read(b, &mut buf).unwrap();
                b.lines(&buf)
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
    fn blocks_are_cut_the_same_whatever_the_read_size() {
        // The streaming cut must equal a cut of the whole file at once.
        let text: String = (0..500)
            .map(|n| format!("line {n}{}\n", "y".repeat(n % 13)))
            .collect();
        for target in [1, 3, 40, 100, 999] {
            let whole = {
                let mut c = Cutter::new(target);
                c.feed(text.as_bytes());
                c.finish()
            };
            for chunk in [1, 7, 64, 4096] {
                let mut c = Cutter::new(target);
                for piece in text.as_bytes().chunks(chunk) {
                    c.feed(piece);
                }
                assert_eq!(c.finish(), whole, "target {target}, chunk {chunk}");
            }
            let (blocks, len) = &whole;
            assert_eq!(*len, text.len());
            assert!(blocks.iter().all(|b| text.as_bytes()[b.end - 1] == b'\n'));
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
        }
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
