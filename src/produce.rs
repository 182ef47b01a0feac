//! Producing generated events to Kafka: `ctrflow gen --out kafka://HOST:PORT/TOPIC` and
//! the demo's traffic.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ctrflow_connectors::kafka::{KafkaConfig, KafkaSink};

use crate::generator::{GenConfig, GenStats, Generator};

/// A topic on a broker: `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
}

impl FromStr for KafkaTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("{s:?} is not kafka://HOST:PORT/TOPIC"))?;
        let (brokers, topic) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s:?} names no topic: kafka://HOST:PORT/TOPIC"))?;
        if brokers.is_empty() || topic.is_empty() || topic.contains('/') {
            return Err(format!("{s:?} is not kafka://HOST:PORT/TOPIC"));
        }
        Ok(Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
        })
    }
}

/// Events per rate-limiting step: the producer sleeps at most this often.
const BATCH: usize = 256;

/// Generates what `config` describes into `target`, keyed by user, at `rate` events per
/// second (as fast as possible without one), until done or `stop` is set; counts events
/// produced into `produced` as it goes. Waits for every delivery before returning.
pub fn produce(
    config: &GenConfig,
    target: &KafkaTarget,
    rate: Option<f64>,
    stop: &AtomicBool,
    produced: &AtomicU64,
) -> anyhow::Result<GenStats> {
    let kafka = KafkaConfig {
        brokers: target.brokers.clone(),
        ..KafkaConfig::default()
    };
    produce_paced(config, &kafka, &target.topic, rate, stop, produced, &|_| ())
}

/// [`produce`] with the producer configured by `kafka` (its brokers, librdkafka
/// properties and flush timeout), calling `pace` with the number of events sent after
/// every batch; it may block to hold the producer back (the demo keeps it within reach of
/// the worker).
pub fn produce_paced(
    config: &GenConfig,
    kafka: &KafkaConfig,
    topic: &str,
    rate: Option<f64>,
    stop: &AtomicBool,
    produced: &AtomicU64,
    pace: &dyn Fn(u64),
) -> anyhow::Result<GenStats> {
    let sink = KafkaSink::new(kafka).context("connecting the producer")?;
    let mut generator = Generator::new(config)?;
    let mut line = Vec::with_capacity(512);
    let mut key = Vec::with_capacity(16);
    let started = Instant::now();
    let mut sent = 0u64;
    'outer: while !stop.load(Ordering::Relaxed) {
        for _ in 0..BATCH {
            line.clear();
            let Some(emitted) = generator.next_event(&mut line) else {
                break 'outer;
            };
            key.clear();
            key.push(b'u');
            key.extend_from_slice(itoa::Buffer::new().format(emitted.user).as_bytes());
            let payload = line.strip_suffix(b"\n").unwrap_or(&line);
            sink.send(topic, Some(&key), payload)
                .with_context(|| format!("producing to {topic}"))?;
            sent += 1;
        }
        produced.store(sent, Ordering::Relaxed);
        pace(sent);
        sink.retry_failed()
            .with_context(|| format!("producing to {topic}"))?;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    produced.store(sent, Ordering::Relaxed);
    sink.flush().context("waiting for deliveries")?;
    Ok(generator.stats().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: KafkaTarget = "kafka://127.0.0.1:9092/events".parse().unwrap();
        assert_eq!(t.brokers, "127.0.0.1:9092");
        assert_eq!(t.topic, "events");
        let t: KafkaTarget = "kafka://a:1,b:2/ev.v1".parse().unwrap();
        assert_eq!(t.brokers, "a:1,b:2");
        for bad in [
            "events.jsonl",
            "kafka://host:1",
            "kafka:///t",
            "kafka://h:1/a/b",
        ] {
            assert!(bad.parse::<KafkaTarget>().is_err(), "{bad}");
        }
    }
}
