//! The state crate's one error type.

use std::path::PathBuf;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// RocksDB refused an operation (I/O error, corruption it detected, a lock held by
    /// another process).
    #[error("state store {path}: {source}")]
    Rocks {
        /// The database directory.
        path: PathBuf,
        /// What RocksDB said.
        #[source]
        source: rocksdb::Error,
    },
    /// A stored value could not be decoded: written by another format version, or damaged.
    #[error("state table `{table}`: undecodable value: {reason}")]
    Decode {
        /// The table it was read from.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A checkpoint record is missing, damaged or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// Where the checkpoint was looked for.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system operation around the database failed.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.into(),
            source,
        }
    }
}
