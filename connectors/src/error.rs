//! Connector errors.

use std::path::PathBuf;

/// Why a connector failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// A file could not be opened, read, mapped or written.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done ("opening", "writing to", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ConnectorError {
    /// Whether retrying the same call can help (a file error will not go away by itself).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::File { .. } => false,
        }
    }
}
