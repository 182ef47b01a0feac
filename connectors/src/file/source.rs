//! A JSON Lines file as a partitioned source.
//!
//! One thread reads the file front to back and cuts it into blocks of whole lines (about
//! `block_bytes` each); each block goes to whichever worker asks for one next, so blocks
//! are taken in file order and all workers move through event time together (a file
//! written in time order stays roughly in time order across workers), while a worker with
//! less else to do takes more of them. Each block arrives as its own buffer, which the
//! worker gives back for reuse: payloads are borrowed from it, nothing is allocated per
//! line, and the file is read once with a few large read calls per block.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver as SpareReceiver, Sender as SpareSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

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

/// Blocks queued per worker before the reading thread waits for the workers.
const QUEUED_BLOCKS: usize = 4;

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

    /// Starts a thread that reads the file once, front to back, cuts it into blocks of
    /// whole lines, and queues them in file order for `peers` readers (returned in
    /// worker order): each block goes to the reader that asks first. The thread stops at
    /// the end of the file, on a read error (which every reader then receives), or when
    /// every reader is dropped.
    ///
    /// Why a thread: the workers get their bytes without a read call of their own, and the
    /// file is read once, as it is cut, rather than scanned for line ends before the run and
    /// read again during it; the queue is short, so a few blocks per worker are in memory
    /// whatever the file size. Why one queue rather than block `k` to worker `k % peers`:
    /// workers do unequal work (worker 0 runs the main drift detectors), and with fixed
    /// shares the others waited for it; now they decode more of the input instead. Why
    /// not a memory map: mapped pages count in the process's resident set, and
    /// `MADV_DONTNEED` on blocks already read did not reliably give them back (on this
    /// kernel a 1.4 GB replay ended with most of the file resident).
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
        let peers = peers.max(1);
        let (spare_tx, spare_rx) = mpsc::channel();
        let (blocks_tx, blocks_rx) = crossbeam_channel::bounded(QUEUED_BLOCKS * peers);
        let failed = Arc::new(OnceLock::new());
        let readers = (0..peers)
            .map(|_| BlockReader {
                blocks: blocks_rx.clone(),
                spare: spare_tx.clone(),
                failed: Arc::clone(&failed),
                path: self.path.clone(),
            })
            .collect();
        let target = self.block_bytes;
        std::thread::Builder::new()
            .name("ctrflow:read".into())
            .spawn(move || read_file(file, target, &blocks_tx, &spare_rx, &failed))
            .map_err(|source| ConnectorError::File {
                action: "starting a thread to read",
                path: self.path.clone(),
                source,
            })?;
        Ok(readers)
    }
}

/// One worker's end of a file's block queue: the blocks it takes come in file order.
#[derive(Debug)]
pub struct BlockReader {
    blocks: Receiver<FilledBlock>,
    spare: SpareSender<Vec<u8>>,
    /// Why reading stopped early, once it has (`io::Error` is not `Clone`: its kind and
    /// message, for every reader).
    failed: Arc<OnceLock<(std::io::ErrorKind, String)>>,
    path: PathBuf,
}

/// What [`BlockReader::wait`] found.
#[derive(Debug)]
pub enum Poll {
    /// The next block.
    Block(FilledBlock),
    /// None read yet.
    Pending,
    /// No more blocks: the file is read (or the reading thread is gone).
    Done,
    /// Reading failed; there will be no more blocks.
    Failed(ConnectorError),
}

impl BlockReader {
    /// The next block, waiting at most `timeout` for it ([`Poll::Pending`] if none came).
    pub fn wait(&self, timeout: Duration) -> Poll {
        match self.blocks.recv_timeout(timeout) {
            Ok(block) => Poll::Block(block),
            Err(RecvTimeoutError::Timeout) => Poll::Pending,
            Err(RecvTimeoutError::Disconnected) => match self.failed.get() {
                Some((kind, message)) => Poll::Failed(ConnectorError::File {
                    action: "reading",
                    path: self.path.clone(),
                    source: std::io::Error::new(*kind, message.clone()),
                }),
                None => Poll::Done,
            },
        }
    }

    /// Gives a read block's buffer back to the reading thread, which reuses it.
    pub fn recycle(&self, block: FilledBlock) {
        // The thread may have finished; then the buffer is simply dropped.
        let _ = self.spare.send(block.bytes);
    }
}

/// A block with its bytes.
#[derive(Debug)]
pub struct FilledBlock {
    /// Where it is in the file.
    pub block: Block,
    bytes: Vec<u8>,
}

impl FilledBlock {
    /// The block's non-empty lines with their 1-based line numbers (see [`Block::lines`]).
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.block.lines(&self.bytes)
    }
}

/// Bytes read past a block's target size, to find its last line end.
const READ_BYTES: usize = 4 * 1024;

/// The reading thread: cuts `file` into blocks that end at the first line end at or after
/// `target - 1` bytes into them (or at the end of the file) and queues them in order.
fn read_file(
    file: File,
    target: usize,
    blocks: &Sender<FilledBlock>,
    spare: &SpareReceiver<Vec<u8>>,
    failed: &OnceLock<(std::io::ErrorKind, String)>,
) {
    let mut carry: Vec<u8> = Vec::new();
    let (mut start, mut first_line) = (0usize, 1u64);
    for seq in 0.. {
        let mut bytes = spare.try_recv().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&carry);
        carry.clear();
        // Where this block's first newline at or after `target - 1` may be, as far as read.
        let mut searched = 0;
        let cut = loop {
            let from = searched.max(target - 1);
            if let Some(at) = bytes.get(from..).and_then(|b| memchr::memchr(b'\n', b)) {
                break from + at + 1;
            }
            searched = bytes.len();
            let len = bytes.len();
            // Up to the target and a little past it, where the block's last line likely
            // ends: what is read beyond the cut is copied to the next block.
            bytes.resize(len + target.saturating_sub(len) + READ_BYTES, 0);
            let n = loop {
                match (&file).read(&mut bytes[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        // Every reader finds it once the queue is drained and closed.
                        let _ = failed.set((source.kind(), source.to_string()));
                        return;
                    }
                }
            };
            bytes.truncate(len + n);
            if n == 0 {
                break len;
            }
        };
        if bytes.is_empty() {
            return;
        }
        carry.extend_from_slice(&bytes[cut..]);
        bytes.truncate(cut);
        let block = Block {
            start,
            end: start + cut,
            first_line,
            seq,
        };
        start += cut;
        first_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
        if blocks.send(FilledBlock { block, bytes }).is_err() {
            // Every worker stopped: so does the run.
            return;
        }
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

    /// Every reader's blocks with their lines, draining the readers in turn (the reading
    /// thread waits on a full queue, as it would on a worker that is behind).
    fn drain(source: &FileSource, peers: usize) -> Vec<Vec<Got>> {
        let readers = source.read_blocks(peers).unwrap();
        let mut got = vec![Vec::new(); peers];
        let mut done = vec![false; peers];
        while done.contains(&false) {
            for (i, reader) in readers.iter().enumerate() {
                match reader.wait(Duration::from_millis(1)) {
                    Poll::Block(b) => {
                        let lines = b
                            .lines()
                            .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap()))
                            .collect();
                        got[i].push((b.block, lines));
                        reader.recycle(b);
                    }
                    Poll::Pending => {}
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
        let readers = source.read_blocks(2).unwrap();
        // Reader 0 asks three times for each time reader 1 asks.
        let (mut got, mut done) = ([0usize; 2], [false; 2]);
        while done.contains(&false) {
            for i in [0, 0, 0, 1] {
                if done[i] {
                    continue;
                }
                match readers[i].wait(Duration::from_secs(10)) {
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
        for reader in source.read_blocks(3).unwrap() {
            match reader.wait(Duration::from_secs(10)) {
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
