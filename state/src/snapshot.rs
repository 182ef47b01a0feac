//! Snapshot files: one framed, versioned, checksummed payload per file, written atomically.
//!
//! # Layout
//!
//! All integers are little-endian.
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 8    | magic, `b"CTRFSNAP"`                                         |
//! | 8      | 4    | format version of this framing ([`FORMAT_VERSION`])          |
//! | 12     | 4    | kind tag, e.g. `b"FTRL"`: what the payload is                |
//! | 16     | 4    | payload version: the writer's schema version for the payload |
//! | 20     | 8    | payload length `L` in bytes                                  |
//! | 28     | `L`  | payload                                                      |
//! | 28 + L | 4    | CRC-32 (IEEE) of bytes `0 .. 28 + L`                         |
//!
//! The framing knows nothing about the payload; its owner (the model, say) versions the
//! payload itself and gets the version back from [`read_snapshot`].
//!
//! # Durability
//!
//! [`write_snapshot`] writes to a temporary file in the destination's directory, fsyncs it,
//! renames it over the destination and (on Unix) fsyncs the directory. A reader therefore
//! sees either the previous complete file or the new complete file, never a mix; a torn or
//! bit-rotted file is caught by the length check or the checksum.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"CTRFSNAP";

/// Version of the framing this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 28;

/// Bytes after the payload (the checksum).
const TRAILER_LEN: usize = 4;

/// A four-byte tag naming what a snapshot's payload is, e.g. `*b"FTRL"`.
pub type Kind = [u8; 4];

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file system refused an operation on `path`.
    #[error("snapshot i/o on {path}: {source}", path = path.display())]
    Io {
        /// The file (or directory) involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the snapshot magic: it is not a ctrflow snapshot.
    #[error("{path} is not a ctrflow snapshot (bad magic bytes)", path = path.display())]
    BadMagic {
        /// The file read.
        path: PathBuf,
    },
    /// The snapshot holds another kind of payload than the one asked for.
    #[error("{path} holds a {found} snapshot, expected {expected}", path = path.display(),
        found = DisplayKind(found), expected = DisplayKind(expected))]
    WrongKind {
        /// The file read.
        path: PathBuf,
        /// Kind tag in the file.
        found: Kind,
        /// Kind tag the caller asked for.
        expected: Kind,
    },
    /// The framing was written by a newer (or unknown) format version.
    #[error("{path} has snapshot format version {found}, this build reads version {supported}",
        path = path.display())]
    UnsupportedVersion {
        /// The file read.
        path: PathBuf,
        /// Format version in the file.
        found: u32,
        /// Format version this build reads.
        supported: u32,
    },
    /// The file is shorter than its header says it should be (e.g. a torn copy).
    #[error("{path} is truncated: expected {expected} bytes, got {got}", path = path.display())]
    Truncated {
        /// The file read.
        path: PathBuf,
        /// Length the header announces (or the minimum length of a header).
        expected: u64,
        /// Actual length of the file.
        got: u64,
    },
    /// The file is longer than its header says: something was appended to it.
    #[error("{path} has trailing bytes: expected {expected} bytes, got {got}",
        path = path.display())]
    TrailingBytes {
        /// The file read.
        path: PathBuf,
        /// Length the header announces.
        expected: u64,
        /// Actual length of the file.
        got: u64,
    },
    /// The stored checksum does not match the contents: the file is corrupt.
    #[error("{path} is corrupt: checksum {found:#010x}, computed {computed:#010x}",
        path = path.display())]
    ChecksumMismatch {
        /// The file read.
        path: PathBuf,
        /// Checksum stored in the file.
        found: u32,
        /// Checksum of the bytes actually read.
        computed: u32,
    },
}

/// Shows a kind tag as text when it is printable ASCII, else as escaped bytes.
struct DisplayKind<'a>(&'a Kind);

impl fmt::Display for DisplayKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        f.write_str("\"")
    }
}

/// A snapshot as read back: its kind, payload version and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Kind tag of the payload.
    pub kind: Kind,
    /// Payload version, as given to [`write_snapshot`].
    pub version: u32,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `payload` as a snapshot of `kind` at payload `version` to `path`, atomically.
///
/// The destination's directory must exist. On error the destination is untouched (the
/// temporary file is removed).
pub fn write_snapshot(
    path: impl AsRef<Path>,
    kind: Kind,
    version: u32,
    payload: &[u8],
) -> Result<(), SnapshotError> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };

    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&kind);
    header[16..20].copy_from_slice(&version.to_le_bytes());
    header[20..28].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(payload);
    let crc = crc.finalize();

    let mut tmp = tempfile::Builder::new()
        .prefix(".snapshot-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        w.write_all(&header)
            .and_then(|()| w.write_all(payload))
            .and_then(|()| w.write_all(&crc.to_le_bytes()))
            .and_then(|()| w.flush())
            .map_err(io_err(&tmp_path))?;
    }
    tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
    tmp.persist(path).map_err(|e| SnapshotError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Makes the rename durable: on Unix a directory entry is only on disk once the directory is
/// fsynced.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), SnapshotError> {
    Ok(())
}

/// Reads the snapshot at `path`, checks that it holds `expected_kind`, and returns its
/// payload version and payload.
pub fn read_snapshot(
    path: impl AsRef<Path>,
    expected_kind: Kind,
) -> Result<(u32, Vec<u8>), SnapshotError> {
    let path = path.as_ref();
    let snap = read_snapshot_any(path)?;
    if snap.kind != expected_kind {
        return Err(SnapshotError::WrongKind {
            path: path.to_path_buf(),
            found: snap.kind,
            expected: expected_kind,
        });
    }
    Ok((snap.version, snap.payload))
}

/// Reads the snapshot at `path` whatever its kind, for callers that dispatch on the kind.
///
/// Checks, in order: magic, format version, length, checksum.
pub fn read_snapshot_any(path: impl AsRef<Path>) -> Result<Snapshot, SnapshotError> {
    let path = path.as_ref();
    let mut buf = std::fs::read(path).map_err(io_err(path))?;
    decode(path, &mut buf).map(|(kind, version)| Snapshot {
        kind,
        version,
        payload: buf,
    })
}

/// Validates the framing in `buf` and strips it, leaving the payload in `buf`.
fn decode(path: &Path, buf: &mut Vec<u8>) -> Result<(Kind, u32), SnapshotError> {
    let got = buf.len() as u64;
    let magic_len = MAGIC.len().min(buf.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    if buf.len() < HEADER_LEN + TRAILER_LEN {
        return Err(SnapshotError::Truncated {
            path: path.to_path_buf(),
            expected: (HEADER_LEN + TRAILER_LEN) as u64,
            got,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let format = u32_at(8);
    if format != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let kind: Kind = [buf[12], buf[13], buf[14], buf[15]];
    let version = u32_at(16);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&buf[20..28]);
    let payload_len = u64::from_le_bytes(len_bytes);
    let expected = payload_len.saturating_add((HEADER_LEN + TRAILER_LEN) as u64);
    if got < expected {
        return Err(SnapshotError::Truncated {
            path: path.to_path_buf(),
            expected,
            got,
        });
    }
    if got > expected {
        return Err(SnapshotError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            got,
        });
    }
    // `expected == got` fits in memory, so these casts are exact.
    let end = HEADER_LEN + payload_len as usize;
    let found = u32_at(end);
    let computed = crc32fast::hash(&buf[..end]);
    if found != computed {
        return Err(SnapshotError::ChecksumMismatch {
            path: path.to_path_buf(),
            found,
            computed,
        });
    }
    buf.truncate(end);
    buf.drain(..HEADER_LEN);
    Ok((kind, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(dir: &Path) -> PathBuf {
        let path = dir.join("x.snap");
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        write_snapshot(&path, *b"FTRL", 7, &payload).unwrap();
        path
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let (version, payload) = read_snapshot(&path, *b"FTRL").unwrap();
        assert_eq!(version, 7);
        assert_eq!(
            payload,
            (0..1000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>()
        );
        let any = read_snapshot_any(&path).unwrap();
        assert_eq!(any.kind, *b"FTRL");
        // Only the snapshot itself is left in the directory: the temp file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn empty_payload_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        write_snapshot(&path, *b"FTRL", 8, &[]).unwrap();
        assert_eq!(read_snapshot(&path, *b"FTRL").unwrap(), (8, vec![]));
    }

    #[test]
    fn corrupt_byte_is_checksum_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 500] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_snapshot(&path, *b"FTRL").unwrap_err();
        assert!(
            matches!(err, SnapshotError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("corrupt"));
    }

    #[test]
    fn truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, 600, HEADER_LEN + 1, 10] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match read_snapshot(&path, *b"FTRL").unwrap_err() {
                SnapshotError::Truncated { got, expected, .. } => {
                    assert_eq!(got, cut as u64);
                    assert!(expected > got);
                }
                other => panic!("cut at {cut}: {other}"),
            }
        }
    }

    #[test]
    fn trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        let err = read_snapshot(&path, *b"FTRL").unwrap_err();
        assert!(matches!(err, SnapshotError::TrailingBytes { .. }), "{err}");
    }

    #[test]
    fn foreign_file_is_bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign.json");
        for content in [
            &b"{\"not\": \"a snapshot\", \"padding\": 123456789}"[..],
            b"{}",
            b"",
        ] {
            std::fs::write(&path, content).unwrap();
            let err = read_snapshot(&path, *b"FTRL").unwrap_err();
            // An empty file has no wrong magic, it is just short.
            if content.is_empty() {
                assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
            } else {
                assert!(matches!(err, SnapshotError::BadMagic { .. }), "{err}");
                assert!(err.to_string().contains("not a ctrflow snapshot"));
            }
        }
    }

    #[test]
    fn wrong_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let err = read_snapshot(&path, *b"SGD\0").unwrap_err();
        match &err {
            SnapshotError::WrongKind {
                found, expected, ..
            } => {
                assert_eq!(found, b"FTRL");
                assert_eq!(expected, b"SGD\0");
            }
            other => panic!("{other}"),
        }
        assert!(
            err.to_string()
                .contains(r#"holds a "FTRL" snapshot, expected "SGD\x00""#),
            "{err}"
        );
    }

    #[test]
    fn unsupported_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read_snapshot(&path, *b"FTRL").unwrap_err();
        assert!(
            matches!(err, SnapshotError::UnsupportedVersion { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.snap");
        let err = read_snapshot(&path, *b"FTRL").unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }));
        assert!(err.to_string().contains("nope.snap"));
    }
}
