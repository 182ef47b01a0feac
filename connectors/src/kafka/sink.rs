//! Writing outputs: one idempotent, batching producer per process, shared by its workers.
//!
//! `send` never blocks on the network: librdkafka batches (`linger.ms`) and delivers in the
//! background, retrying on its own. Three things are ctrflow's: when the client's queue is
//! full, `send` waits (backpressure instead of unbounded memory); a message whose delivery
//! finally fails (after librdkafka's own retries, `delivery.timeout.ms`) is kept and sent
//! again by [`KafkaSink::retry_failed`], counted each time, never dropped; and when
//! deliveries keep failing (an idempotent producer whose broker lost its producer state
//! in a restart is refused for good, and librdkafka may declare it fatal), the producer is
//! replaced by a new one, and whatever the old one still held is sent again through it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::config::KafkaConfig;
use crate::ConnectorError;

/// Counters shared with whoever reports on the sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages handed to the client.
    pub sent: AtomicU64,
    /// Messages the broker acknowledged.
    pub delivered: AtomicU64,
    /// Deliveries that failed after the client's own retries (each is sent again).
    pub failed: AtomicU64,
    /// Times `send` waited for room in the client's queue.
    pub queue_full_waits: AtomicU64,
    /// Times the producer was replaced because deliveries kept failing.
    pub producer_restarts: AtomicU64,
}

/// A message whose delivery failed, kept to be sent again.
#[derive(Debug)]
struct Failed {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// What every producer of a sink shares: counters and the failed messages.
#[derive(Debug, Default)]
struct Shared {
    stats: Arc<SinkStats>,
    failed: Mutex<Vec<Failed>>,
}

/// Counts deliveries and keeps the failed ones.
#[derive(Debug)]
pub struct SinkContext {
    shared: Arc<Shared>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka producer error (the client retries by itself).");
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                let n = self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(%error, topic = message.topic(), failed = n + 1, "Deliveries failed; they are sent again (logged at powers of two).");
                }
                if let Ok(mut failed) = self.shared.failed.lock() {
                    failed.push(Failed {
                        topic: message.topic().to_owned(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().unwrap_or_default().to_vec(),
                    });
                }
            }
        }
    }
}

/// The process's producer.
pub struct KafkaSink {
    producer: RwLock<ThreadedProducer<SinkContext>>,
    client: ClientConfig,
    shared: Arc<Shared>,
    flush_timeout: Duration,
    /// Consecutive retry rounds that found failures and no delivery in between.
    failing_rounds: AtomicU32,
    /// Deliveries as of the last retry round.
    delivered_before: AtomicU64,
    /// Deliveries as of the last stall check.
    delivered_seen: AtomicU64,
    /// When deliveries last progressed (or nothing was in flight), in ms since `started`.
    progress_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

/// Retry rounds in a row with failures and no delivery before the producer is replaced.
const FAILING_ROUNDS_BEFORE_RESTART: u32 = 3;

/// How long messages may sit in flight with no delivery at all before the producer is
/// replaced (librdkafka would otherwise retry a producer the broker no longer accepts
/// until `delivery.timeout.ms`, 5 minutes by default).
const STALL: Duration = Duration::from_secs(10);

/// How long `send` sleeps when the client's queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

impl KafkaSink {
    /// Creates the producer (idempotent; `kafka.producer` and pass-through properties).
    pub fn new(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        let client = config.producer_client();
        let shared = Arc::new(Shared::default());
        let producer = create(&client, &shared)?;
        Ok(Self {
            producer: RwLock::new(producer),
            client,
            shared,
            flush_timeout: Duration::from_millis(config.producer.flush_timeout_ms),
            failing_rounds: AtomicU32::new(0),
            delivered_before: AtomicU64::new(0),
            delivered_seen: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Counters, to share with a reporter.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Queues one message for `topic`; waits while the client's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        let stats = &self.shared.stats;
        let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    stats.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(QUEUE_FULL_WAIT);
                }
                Err((error, _)) => {
                    return Err(ConnectorError::kafka("producing to a topic", error));
                }
            }
        }
    }

    /// Sends again every message whose delivery failed, first replacing the producer if
    /// deliveries keep failing. Returns how many. Call it regularly (the worker does,
    /// every half second).
    pub fn retry_failed(&self) -> Result<usize, ConnectorError> {
        self.restart_if_stalled()?;
        if self.no_failed() {
            self.failing_rounds.store(0, Ordering::Relaxed);
            return Ok(0);
        }
        let delivered = self.shared.stats.delivered.load(Ordering::Relaxed);
        let progress = delivered != self.delivered_before.swap(delivered, Ordering::Relaxed);
        let rounds = if progress {
            self.failing_rounds.store(1, Ordering::Relaxed);
            1
        } else {
            self.failing_rounds.fetch_add(1, Ordering::Relaxed) + 1
        };
        let fatal = self
            .producer
            .read()
            .map_or(None, |p| p.client().fatal_error());
        if fatal.is_some() || rounds >= FAILING_ROUNDS_BEFORE_RESTART {
            self.restart(fatal)?;
        }
        // After a restart this includes what the old producer still held (purged).
        let failed = match self.shared.failed.lock() {
            Ok(mut failed) => std::mem::take(&mut *failed),
            Err(_) => return Ok(0),
        };
        for f in &failed {
            self.send(&f.topic, f.key.as_deref(), &f.payload)?;
        }
        Ok(failed.len())
    }

    /// Replaces the producer when messages are in flight and none was delivered for
    /// [`STALL`].
    fn restart_if_stalled(&self) -> Result<(), ConnectorError> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let delivered = self.shared.stats.delivered.load(Ordering::Relaxed);
        let moved = delivered != self.delivered_seen.swap(delivered, Ordering::Relaxed);
        if moved || self.in_flight() == 0 {
            self.progress_ms.store(now_ms, Ordering::Relaxed);
            return Ok(());
        }
        let since = now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed));
        if since >= STALL.as_millis() as u64 {
            self.progress_ms.store(now_ms, Ordering::Relaxed);
            self.restart(None)?;
        }
        Ok(())
    }

    fn no_failed(&self) -> bool {
        self.shared.failed.lock().map_or(true, |f| f.is_empty())
    }

    /// Replaces the producer; the old one's undelivered messages come back as failures.
    fn restart(&self, fatal: Option<(RDKafkaErrorCode, String)>) -> Result<(), ConnectorError> {
        let fresh = create(&self.client, &self.shared)?;
        let old = {
            let mut producer = self.producer.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *producer, fresh)
        };
        self.shared
            .stats
            .producer_restarts
            .fetch_add(1, Ordering::Relaxed);
        self.failing_rounds.store(0, Ordering::Relaxed);
        tracing::warn!(
            ?fatal,
            "Deliveries keep failing: replaced the Kafka producer; undelivered messages are sent again."
        );
        // Dropping purges what it still queues; the purged messages are reported failed.
        drop(old);
        Ok(())
    }

    /// Whether the broker knows `topic` (with at least one partition), asked once, within
    /// `timeout`: why not, if it does not.
    pub fn check_topic(&self, topic: &str, timeout: Duration) -> Result<(), ConnectorError> {
        let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
        let last = match producer.client().fetch_metadata(Some(topic), timeout) {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => return Ok(()),
                Some(t) => format!("the broker reports {:?} for it", t.error()),
                None => "the broker does not know it".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        Err(ConnectorError::TopicUnavailable {
            topic: topic.to_owned(),
            waited: timeout,
            last,
        })
    }

    /// Messages queued in the client and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.read().map_or(0, |p| p.in_flight_count())
    }

    /// Waits until every message sent so far is delivered (failed ones sent again), up to
    /// `kafka.producer.flush_timeout_ms`.
    pub fn flush(&self) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + self.flush_timeout;
        loop {
            if self.retry_failed()? > 0 {
                // Give the retried messages a moment before judging them.
                std::thread::sleep(Duration::from_millis(200));
            }
            // Short rounds, so that failures are retried and stalls noticed meanwhile.
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            let flushed = self
                .producer
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .flush(remaining);
            let pending_retries = self.shared.failed.lock().map_or(0, |f| f.len());
            match flushed {
                Ok(()) if pending_retries == 0 => return Ok(()),
                _ if Instant::now() < deadline => continue,
                Ok(()) | Err(_) => {
                    return Err(ConnectorError::Undelivered {
                        messages: self.in_flight().max(0) as usize + pending_retries,
                        waited: self.flush_timeout,
                    });
                }
            }
        }
    }
}

fn create(
    client: &ClientConfig,
    shared: &Arc<Shared>,
) -> Result<ThreadedProducer<SinkContext>, ConnectorError> {
    client
        .create_with_context(SinkContext {
            shared: Arc::clone(shared),
        })
        .map_err(|e| ConnectorError::kafka("creating the producer", e))
}
