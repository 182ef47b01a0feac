//! Kafka (librdkafka through `rdkafka`): the input source, the output sink, and their
//! settings.

mod config;
mod sink;
mod source;

pub use config::{ConsumerConfig, KafkaConfig, ProducerConfig, StartFrom, TopicsConfig};
/// librdkafka's in-process Kafka-protocol broker (for `ctrflow demo` and fault tests).
pub use rdkafka::mocking::MockCluster;
pub use sink::{KafkaSink, SinkStats};
pub use source::{KafkaSource, Message, SourceStats, SourceTime};
