//! Connector errors.

use std::path::PathBuf;
use std::time::Duration;

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
    /// The Kafka client refused a call.
    #[error("Kafka: {action}: {source}")]
    Kafka {
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The input topic did not show up in the broker's metadata in time.
    #[error(
        "Kafka topic {topic:?} is not available after {waited:?} ({last}); create it, or fix kafka.topics.events / kafka.brokers"
    )]
    TopicUnavailable {
        /// The topic.
        topic: String,
        /// How long we waited.
        waited: Duration,
        /// The last answer.
        last: String,
    },
    /// Messages were still undelivered when the flush timeout ran out.
    #[error(
        "{messages} message(s) not delivered after {waited:?} (kafka.producer.flush_timeout_ms)"
    )]
    Undelivered {
        /// How many.
        messages: usize,
        /// How long we waited.
        waited: Duration,
    },
}

impl ConnectorError {
    /// A Kafka client error while doing `action`.
    pub fn kafka(action: &'static str, source: rdkafka::error::KafkaError) -> Self {
        ConnectorError::Kafka { action, source }
    }

    /// Whether retrying the same call can help (a file error will not go away by itself).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::File { .. } => false,
            ConnectorError::Kafka { .. }
            | ConnectorError::TopicUnavailable { .. }
            | ConnectorError::Undelivered { .. } => true,
        }
    }
}
