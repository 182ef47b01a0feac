//! A JSON Lines file sink.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ConnectorError;

/// Appends one record per line to a file, buffered; `flush` makes it durable.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<Self, ConnectorError> {
        let file = File::create(path).map_err(|source| ConnectorError::File {
            action: "creating",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }

    /// Writes one record: `line` must not contain a newline.
    pub fn send(&mut self, line: &[u8]) -> Result<(), ConnectorError> {
        self.out
            .write_all(line)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|source| self.error(source))
    }

    /// Flushes buffered records to the file and syncs it.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data())
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> ConnectorError {
        ConnectorError::File {
            action: "writing to",
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = JsonlSink::create(&path).unwrap();
        sink.send(br#"{"a":1}"#).unwrap();
        sink.send(br#"{"a":2}"#).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
    }
}
