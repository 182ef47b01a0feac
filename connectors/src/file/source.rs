//! A JSON Lines file as a partitioned source.
//!
//! The workers share one cursor over the file: a worker that wants input reads the next
//! block of whole lines (about `block_bytes`) itself, into a buffer of its own, while
//! holding the cursor. So blocks are taken in file order and all workers move through
//! event time together (a file written in time order stays roughly in time order across
//! workers), while a worker with less else to do takes more of them. Payloads are
//! borrowed from the block's buffer, nothing is allocated per line, and the file is read
//! once with a few large read calls per block.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The block's place in the file: 0 for the first block, 1 for the next, and so on.
    pub seq: u64,
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

    /// The non-empty lines of `bytes` (this block's contents, as [`FilledBlock`] holds
    /// them) with their 1-based line numbers; a trailing `\r` is removed.
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

/// A JSON Lines file to be read into blocks by [`FileSource::read_blocks`].
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// The handle `open` made, until the first `read_blocks` takes it.
    file: Mutex<Option<File>>,
    len: usize,
    block_bytes: usize,
}

impl FileSource {
    /// Opens `path`.
    pub fn open(path: &Path, config: &FileSourceConfig) -> Result<Self, ConnectorError> {
        let error = |action, source| ConnectorError::File {
            action,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| error("opening", e))?;
        let len = file.metadata().map_err(|e| error("reading", e))?.len() as usize;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(Some(file)),
            len,
            block_bytes: config.block_bytes.max(1),
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

    /// Whether the file was empty when it was opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One reader per worker (`peers` of them, in worker order) over one cursor: each
    /// call of [`BlockReader::read_next`], on whichever reader, reads the next block of the
    /// file. After a read error every reader returns it.
    ///
    /// Why the worker reads: the block lands in the cache of the core that parses it (a
    /// reading thread copied it into a buffer the worker then fetched from the other core,
    /// and that thread took a share of the cores from the workers); a read of 256 KiB from
    /// the page cache is ~1% of the time a worker spends on the block, and the cursor is
    /// held for no longer. Why one cursor rather than block `k` to worker `k % peers`:
    /// workers do unequal work (worker 0 runs the main drift detectors), and with fixed
    /// shares the others waited for it; now they decode more of the input instead. Why
    /// not a memory map: mapped pages count in the process's resident set, and
    /// `MADV_DONTNEED` on blocks already read did not reliably give them back (on this
    /// kernel a 1.4 GB replay ended with most of the file resident), and a file truncated
    /// under a map kills the process (`SIGBUS`).
    pub fn read_blocks(&self, peers: usize) -> Result<Vec<BlockReader>, ConnectorError> {
        // Read from the start with plain sequential reads, so that a pipe works too
        // (`--input /dev/stdin`, `--input <(zstdcat events.jsonl.zst)`): the handle opened
        // by `open` the first time (a named pipe must not be closed and opened again), a new
        // one after that.
        let opened = self.file.lock().ok().and_then(|mut f| f.take());
        let file = match opened {
            Some(file) => file,
            None => File::open(&self.path).map_err(|source| ConnectorError::File {
                action: "opening",
                path: self.path.clone(),
                source,
            })?,
        };
        let cursor = Arc::new(Mutex::new(Cursor {
            file,
            target: self.block_bytes,
            carry: Vec::new(),
            start: 0,
            first_line: 1,
            seq: 0,
            end: None,
        }));
        Ok((0..peers.max(1))
            .map(|_| BlockReader {
                cursor: Arc::clone(&cursor),
                spare: Vec::new(),
                path: self.path.clone(),
            })
            .collect())
    }
}

/// One worker's end of a file's shared cursor: the blocks it takes come in file order.
#[derive(Debug)]
pub struct BlockReader {
    cursor: Arc<Mutex<Cursor>>,
    /// Buffers of blocks given back, for the next reads.
    spare: Vec<Vec<u8>>,
    path: PathBuf,
}

/// What [`BlockReader::read_next`] found.
#[derive(Debug)]
pub enum Poll {
    /// The next block.
    Block(FilledBlock),
    /// No more blocks: the file is read.
    Done,
    /// Reading failed; there will be no more blocks.
    Failed(ConnectorError),
}

impl BlockReader {
    /// Reads the next block of the file (the one after the last any reader took).
    pub fn read_next(&mut self) -> Poll {
        let mut bytes = self.spare.pop().unwrap_or_default();
        // Poisoned only by another worker's panic, which fails the run anyway: go on.
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        match cursor.read(&mut bytes) {
            Ok(Some((block, len))) => Poll::Block(FilledBlock { block, bytes, len }),
            Ok(None) => {
                self.spare.push(bytes);
                Poll::Done
            }
            Err((kind, message)) => Poll::Failed(ConnectorError::File {
                action: "reading",
                path: self.path.clone(),
                source: std::io::Error::new(kind, message),
            }),
        }
    }

    /// Gives a read block's buffer back, for this reader's next block.
    pub fn recycle(&mut self, block: FilledBlock) {
        self.spare.push(block.bytes);
    }
}

/// A block with its bytes.
#[derive(Debug)]
pub struct FilledBlock {
    /// Where it is in the file.
    pub block: Block,
    /// The block's bytes are `bytes[..len]`; the rest is a buffer kept for reuse.
    bytes: Vec<u8>,
    len: usize,
}

impl FilledBlock {
    /// The block's non-empty lines with their 1-based line numbers (see [`Block::lines`]).
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.block.lines(&self.bytes[..self.len])
    }
}

/// Bytes read past a block's target size, to find its last line end.
const READ_BYTES: usize = 4 * 1024;

/// Where the shared reading of a file is.
#[derive(Debug)]
struct Cursor {
    file: File,
    target: usize,
    /// Bytes read past the last block's end: the start of the next.
    carry: Vec<u8>,
    /// The next block's offset, first line number and place.
    start: usize,
    first_line: u64,
    seq: u64,
    /// Set once the file is read to its end (`Ok`) or a read failed.
    end: Option<Result<(), ReadFailure>>,
}

/// A failed read's kind and message, for every reader (`io::Error` is not `Clone`).
type ReadFailure = (std::io::ErrorKind, String);

impl Cursor {
    /// Reads the next block into `bytes` (whose length is only grown, so that a reused
    /// buffer is not zeroed again): a block ends at the first line end at or after
    /// `target - 1` bytes into it, or at the end of the file. `None` at the end.
    fn read(&mut self, bytes: &mut Vec<u8>) -> Result<Option<(Block, usize)>, ReadFailure> {
        if let Some(Err(e)) = &self.end {
            return Err(e.clone());
        }
        let target = self.target;
        let mut filled = self.carry.len();
        if bytes.len() < filled.max(target) + READ_BYTES {
            bytes.resize(filled.max(target) + READ_BYTES, 0);
        }
        bytes[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        // Where this block's first newline at or after `target - 1` may be, as far as read.
        let mut searched = 0;
        let cut = loop {
            let from = searched.max(target - 1);
            if let Some(at) = bytes
                .get(from..filled)
                .and_then(|b| memchr::memchr(b'\n', b))
            {
                break from + at + 1;
            }
            if self.end.is_some() {
                break filled;
            }
            searched = filled;
            // Up to the target and a little past it, where the block's last line likely
            // ends: what is read beyond the cut is carried to the next block.
            let want = filled.max(target) + READ_BYTES;
            if bytes.len() < want {
                bytes.resize(want, 0);
            }
            let n = loop {
                match (&self.file).read(&mut bytes[filled..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let failed = (e.kind(), e.to_string());
                        self.end = Some(Err(failed.clone()));
                        return Err(failed);
                    }
                }
            };
            if n == 0 {
                self.end = Some(Ok(()));
            }
            filled += n;
        };
        if cut == 0 {
            return Ok(None);
        }
        self.carry.extend_from_slice(&bytes[cut..filled]);
        let block = Block {
            start: self.start,
            end: self.start + cut,
            first_line: self.first_line,
            seq: self.seq,
        };
        self.start += cut;
        self.first_line += memchr::memchr_iter(b'\n', &bytes[..cut]).count() as u64;
        self.seq += 1;
        Ok(Some((block, cut)))
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

    /// A block and its numbered lines, as a reader got them.
    type Got = (Block, Vec<(u64, String)>);

    /// Every reader's blocks with their lines, the readers taking one in turn.
    fn drain(source: &FileSource, peers: usize) -> Vec<Vec<Got>> {
        let mut readers = source.read_blocks(peers).unwrap();
        let mut got = vec![Vec::new(); peers];
        let mut done = vec![false; peers];
        while done.contains(&false) {
            for (i, reader) in readers.iter_mut().enumerate() {
                match reader.read_next() {
                    Poll::Block(b) => {
                        let lines = b
                            .lines()
                            .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap()))
                            .collect();
                        got[i].push((b.block, lines));
                        reader.recycle(b);
                    }
                    Poll::Done => done[i] = true,
                    Poll::Failed(e) => panic!("{e}"),
                }
            }
        }
        got
    }

    fn all_lines(source: &FileSource, peers: usize) -> Vec<(u64, String)> {
        let mut lines: Vec<_> = drain(source, peers)
            .into_iter()
            .flatten()
            .flat_map(|(_, lines)| lines)
            .collect();
        lines.sort();
        lines
    }

    /// The blocks of `text`: each ends at the first newline at or after `target - 1` bytes
    /// into it, or at the end.
    fn expected_blocks(text: &str, target: usize) -> Vec<(usize, usize, u64)> {
        let bytes = text.as_bytes();
        let (mut blocks, mut start, mut line) = (Vec::new(), 0, 1);
        while start < bytes.len() {
            let want = start + target - 1;
            let end = (want..bytes.len())
                .find(|&i| bytes[i] == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            blocks.push((start, end, line));
            line += bytes[start..end].iter().filter(|&&b| b == b'\n').count() as u64;
            start = end;
        }
        blocks
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
    fn blocks_end_at_line_ends_and_each_reader_gets_its_blocks_in_file_order() {
        let text: String = (0..500)
            .map(|n| format!("line {n}{}\n", "y".repeat(n % 13)))
            .collect();
        // Targets below, around and above the 4 KiB read past a block's target.
        for target in [1, 3, 40, 100, 999, 4000, 5000, 1 << 20] {
            let (_f, source) = source(&text, target);
            for peers in [1, 2, 3] {
                let got = drain(&source, peers);
                for (i, blocks) in got.iter().enumerate() {
                    assert!(
                        blocks.is_sorted_by_key(|(b, _)| b.start),
                        "reader {i} of {peers}, target {target}"
                    );
                }
                let mut cut: Vec<_> = got
                    .iter()
                    .flatten()
                    .map(|(b, _)| (b.start, b.end, b.first_line))
                    .collect();
                cut.sort_unstable();
                assert_eq!(cut, expected_blocks(&text, target), "target {target}");
            }
        }
    }

    #[test]
    fn a_reader_that_asks_more_often_gets_more_blocks() {
        let text: String = (0..400).map(|n| format!("line {n}\n")).collect();
        let (_f, source) = source(&text, 16);
        let mut readers = source.read_blocks(2).unwrap();
        // Reader 0 asks three times for each time reader 1 asks.
        let (mut got, mut done) = ([0usize; 2], [false; 2]);
        while done.contains(&false) {
            for i in [0, 0, 0, 1] {
                if done[i] {
                    continue;
                }
                match readers[i].read_next() {
                    Poll::Block(b) => {
                        got[i] += 1;
                        readers[i].recycle(b);
                    }
                    Poll::Done => done[i] = true,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(got[0] + got[1], expected_blocks(&text, 16).len());
        assert!(got[0] > 2 * got[1], "{got:?}");
    }

    #[test]
    fn readers_on_their_own_threads_take_every_block_once_in_file_order() {
        let text: String = (0..20_000)
            .map(|n| format!("{n} {}\n", "w".repeat(n % 31)))
            .collect();
        let (_f, source) = source(&text, 512);
        let got: Vec<Vec<Got>> = std::thread::scope(|s| {
            let threads: Vec<_> = (source.read_blocks(3).unwrap().into_iter())
                .map(|mut reader| {
                    s.spawn(move || {
                        let mut got = Vec::new();
                        loop {
                            match reader.read_next() {
                                Poll::Block(b) => {
                                    let lines = (b.lines())
                                        .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap()))
                                        .collect();
                                    got.push((b.block, lines));
                                    reader.recycle(b);
                                }
                                Poll::Done => return got,
                                Poll::Failed(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for blocks in &got {
            assert!(blocks.is_sorted_by_key(|(b, _)| b.seq));
        }
        let mut blocks: Vec<_> = got.iter().flatten().collect();
        blocks.sort_by_key(|(b, _)| b.seq);
        let seqs: Vec<u64> = blocks.iter().map(|(b, _)| b.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        let cut: Vec<_> = (blocks.iter())
            .map(|(b, _)| (b.start, b.end, b.first_line))
            .collect();
        assert_eq!(cut, expected_blocks(&text, 512));
        let lines: Vec<_> = blocks.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
        let expected: Vec<_> = (text.lines().enumerate())
            .map(|(i, l)| (i as u64 + 1, l.to_owned()))
            .collect();
        assert_eq!(lines, expected);
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
    fn a_line_longer_than_a_block_is_one_block() {
        let long = "z".repeat(100_000);
        let text = format!("a\n{long}\nb\n");
        let (_f, source) = source(&text, 10);
        let lines = all_lines(&source, 2);
        assert_eq!(
            lines,
            vec![(1, "a".to_owned()), (2, long), (3, "b".to_owned())]
        );
    }

    #[test]
    fn empty_file_and_missing_file() {
        let (_f, source) = source("", 10);
        assert!(source.is_empty());
        assert!(drain(&source, 2).iter().all(Vec::is_empty));
        let err = FileSource::open(
            Path::new("/nonexistent/x.jsonl"),
            &FileSourceConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    }

    #[test]
    fn a_read_error_reaches_every_reader() {
        // A directory opens, but reading it fails (EISDIR).
        let dir = tempfile::tempdir().unwrap();
        let source = FileSource::open(dir.path(), &FileSourceConfig::default()).unwrap();
        for mut reader in source.read_blocks(3).unwrap() {
            match reader.read_next() {
                Poll::Failed(e) => {
                    assert!(
                        e.to_string().contains(&*dir.path().to_string_lossy()),
                        "{e}"
                    )
                }
                other => panic!("expected the read error, got {other:?}"),
            }
        }
    }
}
