//! Kafka settings (`[kafka]` in the pipeline config).

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// Where ctrflow reads and writes Kafka, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: a comma-separated list of `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group: offsets are committed under it (for lag tools; positions of record
    /// live in ctrflow's own checkpoints).
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Reading `events`.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// Writing `scores`, `dead-letters` and `examples`.
    #[serde(default)]
    pub producer: ProducerConfig,
    /// librdkafka properties for every client, passed through as they are (security
    /// settings included: `security.protocol`, `sasl.*`, `ssl.*`). See librdkafka's
    /// CONFIGURATION.md.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}

fn default_group_id() -> String {
    "ctrflow".to_owned()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            group_id: default_group_id(),
            topics: TopicsConfig::default(),
            consumer: ConsumerConfig::default(),
            producer: ProducerConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// Topic names (`[kafka.topics]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Input events.
    #[serde(default = "default_events")]
    pub events: String,
    /// One score per impression.
    #[serde(default = "default_scores")]
    pub scores: String,
    /// Bad events with their reason and source position.
    #[serde(default = "default_dead_letters")]
    pub dead_letters: String,
    /// Every labelled impression with the hashed features it was scored with; empty: not
    /// written.
    #[serde(default)]
    pub examples: String,
    /// Drift alerts (DESIGN.md § Outputs), keyed by kind; empty: not written (they still
    /// go to the log and the webhooks). A topic the broker does not know at start is
    /// skipped with a warning.
    #[serde(default = "default_alerts")]
    pub alerts: String,
}

fn default_events() -> String {
    "events".to_owned()
}

fn default_scores() -> String {
    "scores".to_owned()
}

fn default_dead_letters() -> String {
    "dead-letters".to_owned()
}

fn default_alerts() -> String {
    "alerts".to_owned()
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            events: default_events(),
            scores: default_scores(),
            dead_letters: default_dead_letters(),
            examples: String::new(),
            alerts: default_alerts(),
        }
    }
}

/// Where a partition starts when the group has no committed offset for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained message.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// Reading the input topic (`[kafka.consumer]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Messages taken per poll round before the worker moves on to process them.
    #[serde(default = "default_poll_batch")]
    pub poll_batch: usize,
    /// A partition with no new message for this long, and everything it holds read, no
    /// longer holds the watermark back (otherwise one quiet partition would stall every
    /// attribution window); one whose messages wait unread is never idle.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Where to start without a committed offset.
    #[serde(default)]
    pub start: StartFrom,
    /// How often processed offsets are committed to the group (asynchronously).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long to wait at startup for the input topic's metadata before giving up.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// librdkafka properties for the consumer only (override `kafka.properties`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

const fn default_poll_batch() -> usize {
    4096
}

const fn default_idle_timeout_ms() -> u64 {
    1000
}

const fn default_commit_interval_ms() -> u64 {
    5000
}

const fn default_startup_timeout_ms() -> u64 {
    30_000
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            poll_batch: default_poll_batch(),
            idle_timeout_ms: default_idle_timeout_ms(),
            start: StartFrom::default(),
            commit_interval_ms: default_commit_interval_ms(),
            startup_timeout_ms: default_startup_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }
}

/// Writing outputs (`[kafka.producer]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// `linger.ms`: how long librdkafka waits to fill a batch. Trades latency for
    /// throughput.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// `queue.buffering.max.messages`: messages queued in the client before `send` waits
    /// (backpressure instead of unbounded memory).
    #[serde(default = "default_queue_messages")]
    pub queue_messages: usize,
    /// How long shutdown waits for outstanding deliveries.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
    /// librdkafka properties for the producer only (override `kafka.properties`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

const fn default_linger_ms() -> u64 {
    5
}

const fn default_queue_messages() -> usize {
    100_000
}

const fn default_flush_timeout_ms() -> u64 {
    30_000
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger_ms: default_linger_ms(),
            queue_messages: default_queue_messages(),
            flush_timeout_ms: default_flush_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Adds every problem with these settings to `problems`, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            problems.push(
                "kafka.brokers must name at least one broker, e.g. \"127.0.0.1:9092\"".to_owned(),
            );
        }
        if self.group_id.trim().is_empty() {
            problems.push("kafka.group_id must not be empty".to_owned());
        }
        let examples = (!self.topics.examples.is_empty())
            .then_some(("kafka.topics.examples", &self.topics.examples));
        for (key, topic) in [
            ("kafka.topics.events", &self.topics.events),
            ("kafka.topics.scores", &self.topics.scores),
            ("kafka.topics.dead_letters", &self.topics.dead_letters),
        ]
        .into_iter()
        .chain(examples)
        {
            if !valid_topic(topic) {
                problems.push(format!(
                    "{key} = {topic:?} is not a valid topic name (1-249 characters of [a-zA-Z0-9._-])"
                ));
            }
        }
        if self.consumer.poll_batch == 0 {
            problems.push("kafka.consumer.poll_batch must be > 0, got 0".to_owned());
        }
        if self.consumer.commit_interval_ms == 0 {
            problems.push("kafka.consumer.commit_interval_ms must be > 0, got 0".to_owned());
        }
        if self.producer.queue_messages == 0 {
            problems.push("kafka.producer.queue_messages must be > 0, got 0".to_owned());
        }
        let owned = [
            "bootstrap.servers",
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "enable.idempotence",
        ];
        for (section, props) in [
            ("kafka.properties", &self.properties),
            ("kafka.consumer.properties", &self.consumer.properties),
            ("kafka.producer.properties", &self.producer.properties),
        ] {
            for key in props.keys() {
                if owned.contains(&key.as_str()) {
                    problems.push(format!(
                        "{section}.\"{key}\" is set by ctrflow itself; use kafka.brokers / kafka.group_id, or remove it"
                    ));
                }
            }
        }
    }

    /// The consumer's librdkafka configuration.
    pub fn consumer_client(&self) -> ClientConfig {
        let mut client = self.common_client();
        client
            .set("group.id", &self.group_id)
            // Positions are ctrflow's to manage: committed only behind processed data.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.consumer.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        for (key, value) in &self.consumer.properties {
            client.set(key, value);
        }
        client
    }

    /// The producer's librdkafka configuration.
    pub fn producer_client(&self) -> ClientConfig {
        let mut client = self.common_client();
        client
            .set("enable.idempotence", "true")
            .set("linger.ms", self.producer.linger_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.producer.queue_messages.to_string(),
            );
        for (key, value) in &self.producer.properties {
            client.set(key, value);
        }
        client
    }

    fn common_client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let mut problems = Vec::new();
        KafkaConfig::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn every_problem_names_its_key() {
        let mut config = KafkaConfig::default();
        config.topics.scores = "no spaces".to_owned();
        config.consumer.poll_batch = 0;
        config
            .producer
            .properties
            .insert("enable.idempotence".to_owned(), "false".to_owned());
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("kafka.topics.scores"));
        assert!(problems[1].contains("kafka.consumer.poll_batch"));
        assert!(problems[2].contains("kafka.producer.properties.\"enable.idempotence\""));
    }

    #[test]
    fn passthrough_properties_reach_librdkafka_and_section_ones_win() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
        config
            .properties
            .insert("client.id".to_owned(), "all".to_owned());
        config
            .consumer
            .properties
            .insert("client.id".to_owned(), "reader".to_owned());
        let consumer = config.consumer_client();
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(consumer.get("client.id"), Some("reader"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        let producer = config.producer_client();
        assert_eq!(producer.get("client.id"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }
}
