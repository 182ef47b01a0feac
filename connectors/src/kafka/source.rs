//! Reading the input topic: a deterministic share of its partitions per worker.
//!
//! Partitions are assigned manually (`p % workers == worker`), not by the group protocol:
//! which worker reads what must not change under it, because positions are checkpointed
//! with the state built from them. Offsets are committed to the group only behind data
//! the caller has processed, as a convenience for lag tools.
//!
//! The source also keeps the event-time watermark of its partitions: the minimum, over
//! partitions that are not idle, of the newest event time read from each. The caller
//! decodes payloads, so it reports each message's event time back from the callback.
//!
//! # Idleness
//!
//! A partition is idle when nothing was read from it for `consumer.idle_timeout_ms` *and*
//! everything it holds has been handed on: its position as the application sees it (the
//! next offset to hand on) has reached its high watermark. Both halves are needed. Silence
//! alone is not idleness: a partition whose messages wait in the client's queue behind a
//! busy partition's is silent, and taking it for idle would let the watermark pass records
//! that then arrive late. Being caught up alone is not either: a partition read a moment
//! ago may get more in a moment.
//!
//! The high watermark is the one the client keeps from its latest fetch response for the
//! partition (`rd_kafka_get_watermark_offsets`: local, no request), read when the
//! watermark is computed. What was fetched is below it, so a position at or past it means
//! nothing is waiting in the client's queue either. Two other signals were tried and
//! dropped:
//! - The client's *fetch* position against the high watermark (session 9) runs ahead of
//!   what the application read: everything fetched into the queue counts as read, which is
//!   the starvation bug above. librdkafka's per-partition `fetchq_cnt` does not help: the
//!   partitions' queues forward to the consumer's one queue and the statistic reports that
//!   whole queue's length, for every partition.
//! - Statistics (`app_offset` against `hi_offset`, every `statistics.interval.ms`) are
//!   snapshots: one taken before data arrived, served after, makes a partition idle that has
//!   data now; and a user setting the interval to 0 would have disabled idleness.
//! - End-of-partition events (`enable.partition.eof`, session 10) also reach the context's
//!   error callback as a warning per partition end, and some of them (at startup) arrive as
//!   global errors without a partition, leaving a silent partition never idle.
//!
//! Positions: every partition's start is resolved when it is assigned (the checkpoint's
//! offset, else the group's committed one, else the low or high watermark as
//! `consumer.start` says), so that a partition with nothing to read, never read from, has a
//! position to compare. The position is the larger of the next offset to hand on and the
//! client's own application position, which moves past transaction markers (control
//! records are never handed to the application), and, until the first message, the log
//! start offset: a checkpoint's offset that retention has since deleted is reset by the
//! client to the earliest message that exists.
//!
//! What it cannot see: a message produced to an idle partition is seen only once a fetch
//! response brings it (loopback: a millisecond; while the client's queue is over
//! `queued.min.messages`, fetches pause up to `fetch.queue.backoff.ms`), and while a
//! broker is unreachable its partitions' high watermarks stand still, so its partitions go
//! idle and what was produced meanwhile may arrive behind the watermark. That is what an
//! idle timeout means; `input.allowed_lateness_ms` is the margin for it. An idle partition
//! becomes active on its first unread message (its high watermark moves past its
//! position), before the message is read: from then on it holds the watermark at its
//! newest event time until its data is read.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::{KafkaConfig, StartFrom};
use crate::ConnectorError;

/// One message of the input topic, borrowed for the duration of the callback.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The payload (empty for a tombstone).
    pub payload: &'a [u8],
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

/// Where the source's partitions stand in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceTime {
    /// Nothing read yet from some partition that is not idle: no watermark.
    Unknown,
    /// The oldest newest event time among active partitions.
    Active(i64),
    /// Every partition is idle.
    Idle,
    /// This worker owns no partition (more workers than partitions).
    Unassigned,
}

/// Counters shared with whoever reports on the source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Messages handed to the caller.
    pub messages: AtomicU64,
    /// Errors reported by the client (broker down, transport failures, ...). The client
    /// reconnects by itself; reading resumes where it stopped.
    pub errors: AtomicU64,
    /// Offset commits that failed (retried at the next interval).
    pub commit_failures: AtomicU64,
}

#[derive(Debug)]
struct Partition {
    id: i32,
    /// Offset of the next message to hand on: where reading started (resolved when the
    /// partition was assigned), then last read + 1.
    next_offset: i64,
    /// Nothing read from it since the source started.
    unread: bool,
    /// Newest event time read; `i64::MIN` before the first event.
    max_ts: i64,
    /// When the last message arrived (or the source started).
    last_message: Instant,
    /// A message arrived in the current poll (`last_message` is set once per poll).
    touched: bool,
}

/// The client context: logs the client's errors (it retries by itself).
#[derive(Debug)]
pub struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error (the client retries by itself).");
    }
}

impl ConsumerContext for SourceContext {}

/// Consecutive empty polls that end a non-blocking [`KafkaSource::poll`].
const EMPTY_POLLS: u32 = 4;

/// A worker's share of the input topic.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    topic: String,
    /// `topic` for librdkafka's C API.
    topic_c: CString,
    partitions: Vec<Partition>,
    /// Slot in `partitions` by partition id.
    slot: HashMap<i32, usize>,
    idle_timeout: Duration,
    stats: Arc<SourceStats>,
    last_error_log: Option<Instant>,
    errors_since_log: u64,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Connects, waits for the topic's metadata (up to `consumer.startup_timeout_ms`), and
    /// assigns this worker's partitions, each starting at its offset in `start` (a
    /// checkpoint's), else at the group's committed offset or, without one, where
    /// `consumer.start` says.
    pub fn new(
        config: &KafkaConfig,
        worker: usize,
        workers: usize,
        start: &HashMap<i32, i64>,
    ) -> Result<Self, ConnectorError> {
        let topic = config.topics.events.clone();
        let topic_c =
            CString::new(topic.as_str()).map_err(|_| ConnectorError::TopicUnavailable {
                topic: topic.clone(),
                waited: Duration::ZERO,
                last: "the name contains a NUL byte".to_owned(),
            })?;
        let consumer: BaseConsumer<SourceContext> = config
            .consumer_client()
            .create_with_context(SourceContext)
            .map_err(|e| ConnectorError::kafka("creating the consumer", e))?;
        let timeout = Duration::from_millis(config.consumer.startup_timeout_ms);
        let deadline = Instant::now() + timeout;
        let count = partition_count(&consumer, &topic, timeout)?;
        let mine: Vec<i32> = (0..count)
            .filter(|p| *p as usize % workers.max(1) == worker)
            .collect();
        let starts = resolve_starts(&consumer, config, &mine, start, deadline)?;
        let mut assignment = TopicPartitionList::new();
        for &(p, offset) in &starts {
            assignment
                .add_partition_offset(&topic, p, Offset::Offset(offset))
                .map_err(|e| ConnectorError::kafka("assigning partitions", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| ConnectorError::kafka("assigning partitions", e))?;
        drop(assignment);
        let now = Instant::now();
        let slot = starts
            .iter()
            .enumerate()
            .map(|(i, &(id, _))| (id, i))
            .collect();
        let partitions = starts
            .iter()
            .map(|&(id, offset)| Partition {
                id,
                next_offset: offset,
                unread: true,
                max_ts: i64::MIN,
                last_message: now,
                touched: false,
            })
            .collect();
        tracing::info!(topic, worker, partitions = ?starts, "Reading (partition, offset).");
        Ok(Self {
            consumer,
            topic,
            topic_c,
            partitions,
            slot,
            idle_timeout: Duration::from_millis(config.consumer.idle_timeout_ms),
            stats: Arc::new(SourceStats::default()),
            last_error_log: None,
            errors_since_log: 0,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions this worker reads.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.iter().map(|p| p.id)
    }

    /// Counters, to share with a reporter.
    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// Calls `wake` (from a client thread) whenever messages arrive in an empty queue: a
    /// worker can then sleep on its own terms (timely's `step_or_park`) instead of
    /// spinning on `poll` or blocking in it while other workers' records wait. `wake` must
    /// be cheap and must not call into the client (e.g. `Thread::unpark`).
    pub fn wake_on_arrival(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        self.consumer.set_nonempty_callback(wake);
    }

    /// Reads up to `max` messages, waiting up to `wait` for the first, and hands each to
    /// `on_message`, which returns the message's event time when it has one (a bad event
    /// has none). Returns the number of messages read.
    pub fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        mut on_message: impl FnMut(Message<'_>) -> Option<i64>,
    ) -> usize {
        let mut read = 0;
        let mut timeout = wait;
        let mut empty = 0;
        while read < max {
            let Some(result) = self.consumer.poll(timeout) else {
                // `None` also means "served one event that was not a message" (a commit
                // result, statistics): with no wait, messages may be queued behind it. A few
                // more tries get past such events without spinning on an empty queue (a
                // worker polling once between back-to-back checkpoints read nothing for
                // minutes, each try eaten by the previous checkpoint's commit result).
                empty += 1;
                if empty >= EMPTY_POLLS || !timeout.is_zero() {
                    break;
                }
                continue;
            };
            timeout = Duration::ZERO;
            match result {
                Ok(message) => {
                    read += 1;
                    let partition = message.partition();
                    let offset = message.offset();
                    let ts = on_message(Message {
                        payload: message.payload().unwrap_or_default(),
                        partition,
                        offset,
                    });
                    if let Some(&slot) = self.slot.get(&partition) {
                        let p = &mut self.partitions[slot];
                        p.next_offset = offset + 1;
                        p.touched = true;
                        if let Some(ts) = ts {
                            p.max_ts = p.max_ts.max(ts);
                        }
                    }
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.log_error(&error);
                    break;
                }
            }
        }
        if read > 0 {
            self.stats
                .messages
                .fetch_add(read as u64, Ordering::Relaxed);
            // One clock read per batch: idleness needs no finer resolution.
            let now = Instant::now();
            for p in &mut self.partitions {
                if std::mem::take(&mut p.touched) {
                    p.last_message = now;
                    p.unread = false;
                }
            }
        }
        read
    }

    /// Where this worker's partitions stand in event time.
    ///
    /// A partition is idle when nothing was read from it for `idle_timeout` and its
    /// position has reached the high watermark of the client's latest fetch response
    /// (module doc, § Idleness): one whose messages wait unread in the client's queue, or
    /// whose first fetch has not come back, is never idle.
    pub fn time(&mut self) -> SourceTime {
        if self.partitions.is_empty() {
            return SourceTime::Unassigned;
        }
        let now = Instant::now();
        let mut active = None::<i64>;
        let mut read_any = false;
        for i in 0..self.partitions.len() {
            let p = &self.partitions[i];
            read_any |= p.max_ts != i64::MIN;
            let idle = now.saturating_duration_since(p.last_message) >= self.idle_timeout
                && self.caught_up(p);
            if !idle {
                if p.max_ts == i64::MIN {
                    return SourceTime::Unknown;
                }
                active = Some(active.map_or(p.max_ts, |a| a.min(p.max_ts)));
            }
        }
        match (active, read_any) {
            (Some(ts), _) => SourceTime::Active(ts),
            (None, true) => SourceTime::Idle,
            (None, false) => SourceTime::Unknown,
        }
    }

    /// Whether everything `p` holds has been handed on: its position is at or past the
    /// high watermark of the client's latest fetch response for it (`false` before the
    /// first).
    fn caught_up(&self, p: &Partition) -> bool {
        let Some((low, high)) = self.watermarks(p.id) else {
            return false;
        };
        // Until the first message, the client may have reset a start that retention
        // deleted to the earliest message that exists.
        let position = if p.unread {
            p.next_offset.max(low)
        } else {
            p.next_offset
        };
        if position >= high {
            return true;
        }
        // Behind: unless the gap is records the client never hands on (transaction
        // markers), which move its own application position. Asked only here, for a silent
        // partition that looks behind.
        self.consumer.position().is_ok_and(|list| {
            list.find_partition(&self.topic, p.id)
                .and_then(|e| e.offset().to_raw())
                .is_some_and(|app| app >= high)
        })
    }

    /// The low and high watermarks of `partition` as of the client's latest fetch response
    /// for it (a local read, no request); `None` before the first.
    fn watermarks(&self, partition: i32) -> Option<(i64, i64)> {
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client handle lives as long as `self.consumer`, `topic_c` is a
        // NUL-terminated string owned by `self`, and librdkafka only writes the two
        // integers, under the partition's lock.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                self.topic_c.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some((low, high))
    }

    /// Next offsets to read, per partition: where reading started, or after the last
    /// message read.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|p| (p.id, p.next_offset))
            .collect()
    }

    /// Messages behind the high watermark, per partition, as of the client's latest fetch
    /// response for it; `None` before the first.
    pub fn lag(&self) -> Vec<(i32, Option<i64>)> {
        self.partitions
            .iter()
            .map(|p| {
                let lag = self
                    .watermarks(p.id)
                    .map(|(_, high)| (high - p.next_offset).max(0));
                (p.id, lag)
            })
            .collect()
    }

    /// Commits `positions` (from [`positions`](Self::positions), taken when the data
    /// before them was read) to the group, asynchronously. Call it only once that data
    /// has been processed.
    pub fn commit(&self, positions: &[(i32, i64)]) {
        if positions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in positions {
            if list
                .add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .is_err()
            {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "Committing offsets failed; retried at the next interval.");
        }
    }

    fn log_error(&mut self, error: &KafkaError) {
        self.errors_since_log += 1;
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            tracing::warn!(
                %error,
                errors = self.errors_since_log,
                "Reading from Kafka failed; retrying (logged at most every 5 s)."
            );
            self.last_error_log = Some(now);
            self.errors_since_log = 0;
        }
    }
}

/// Waits, retrying with backoff, until the broker reports `topic` with its partitions.
fn partition_count(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, ConnectorError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match consumer.fetch_metadata(Some(topic), remaining.min(Duration::from_secs(5)))
        {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().len() as i32);
                }
                Some(t) => format!("the broker reports {:?} for it", t.error()),
                None => "the broker does not know it".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        if Instant::now() + backoff >= deadline {
            return Err(ConnectorError::TopicUnavailable {
                topic: topic.to_owned(),
                waited: timeout,
                last,
            });
        }
        tracing::info!(topic, %last, "Waiting for the input topic.");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Where each of `partitions` starts: its offset in `start` (a checkpoint's), else the
/// group's committed offset, else the low or high watermark as `consumer.start` says.
/// Resolved here rather than left to the client, so that a partition never read from has
/// a position to compare with its high watermark (module doc, § Idleness).
fn resolve_starts(
    consumer: &BaseConsumer<SourceContext>,
    config: &KafkaConfig,
    partitions: &[i32],
    start: &HashMap<i32, i64>,
    deadline: Instant,
) -> Result<Vec<(i32, i64)>, ConnectorError> {
    let topic = config.topics.events.as_str();
    let missing: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| !start.contains_key(p))
        .collect();
    let mut committed = HashMap::new();
    if !missing.is_empty() {
        let mut list = TopicPartitionList::new();
        for &p in &missing {
            list.add_partition(topic, p);
        }
        let found = retry(deadline, "reading the group's committed offsets", |wait| {
            consumer.committed_offsets(list.clone(), wait)
        })?;
        for e in found.elements() {
            if let Offset::Offset(offset) = e.offset() {
                committed.insert(e.partition(), offset);
            }
        }
    }
    partitions
        .iter()
        .map(|&p| {
            if let Some(&offset) = start.get(&p).or_else(|| committed.get(&p)) {
                return Ok((p, offset));
            }
            let (low, high) = retry(deadline, "reading the partitions' watermarks", |wait| {
                consumer.fetch_watermarks(topic, p, wait)
            })?;
            Ok((
                p,
                match config.consumer.start {
                    StartFrom::Earliest => low,
                    StartFrom::Latest => high,
                },
            ))
        })
        .collect()
}

/// Calls `request` (given how long it may wait) until it succeeds, with backoff, and fails
/// with its last error at `deadline`.
fn retry<T>(
    deadline: Instant,
    action: &'static str,
    mut request: impl FnMut(Duration) -> KafkaResult<T>,
) -> Result<T, ConnectorError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match request(remaining.clamp(Duration::from_millis(100), Duration::from_secs(5))) {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() + backoff >= deadline => {
                return Err(ConnectorError::kafka(action, error));
            }
            Err(error) => {
                tracing::info!(%error, "Retrying: {action}.");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    /// Produces one message with `payload` to `partition` of `topic`.
    fn produce(brokers: &str, topic: &str, partition: i32, payloads: &[&str]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for payload in payloads {
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(partition)
                        .payload(payload),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    fn source(brokers: &str, topic: &str) -> KafkaSource {
        let mut config = KafkaConfig {
            brokers: brokers.to_owned(),
            group_id: format!("{topic}-group"),
            ..KafkaConfig::default()
        };
        config.topics.events = topic.to_owned();
        config.consumer.idle_timeout_ms = 300;
        KafkaSource::new(&config, 0, 1, &HashMap::new()).unwrap()
    }

    /// Event time = the payload, a number.
    fn ts(m: Message<'_>) -> Option<i64> {
        std::str::from_utf8(m.payload).ok()?.parse().ok()
    }

    /// Issue 3's starvation bug: a partition whose messages the client has already
    /// fetched but the worker has not yet read (they wait in the client's queue behind
    /// another partition's) must not be taken for idle — the client's fetch position says
    /// "caught up" — or the watermark runs ahead of it (here to the read partition's 1000
    /// while the other's 500s wait). Read to its end, a partition goes idle; a new message
    /// makes it active again.
    #[test]
    fn a_partition_with_unread_messages_is_never_idle_and_a_read_one_goes_idle() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        cluster.create_topic("t", 2, 1).unwrap();
        produce(&brokers, "t", 0, &["1000", "1001", "1002"]);
        produce(&brokers, "t", 1, &["500", "501", "502"]);
        let mut source = source(&brokers, "t");
        // The client fetches both partitions into its queue, statistics come; nothing read.
        std::thread::sleep(Duration::from_millis(1500));
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.is_none() {
            assert!(Instant::now() < deadline, "nothing read");
            source.poll(1, Duration::from_millis(100), |m| {
                first = Some(m.partition);
                ts(m)
            });
        }
        // Longer than the idle timeout: the other partition, unread, must not be idle, so
        // there is no watermark yet (it would be the read partition's time otherwise).
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(source.time(), SourceTime::Unknown, "first read: {first:?}");

        // Read everything: both partitions active, the watermark is the older one's.
        let mut read = 1;
        while read < 6 {
            assert!(Instant::now() < deadline, "read {read} of 6");
            read += source.poll(6, Duration::from_millis(100), ts);
        }
        assert_eq!(source.time(), SourceTime::Active(502));
        // Both read to their end: idle once the timeout has passed (a poll delivers the
        // end-of-partition events).
        let deadline = Instant::now() + Duration::from_secs(10);
        while source.time() != SourceTime::Idle {
            assert!(Instant::now() < deadline, "never idle: {:?}", source.time());
            assert_eq!(source.poll(6, Duration::from_millis(50), ts), 0);
        }
        // A new message wakes its partition; the idle one does not hold the watermark.
        produce(&brokers, "t", 1, &["2000"]);
        while source.poll(6, Duration::from_millis(100), ts) == 0 {
            assert!(Instant::now() < deadline, "the new message never came");
        }
        assert_eq!(source.time(), SourceTime::Active(2000));
    }

    /// Waits (polling) until `source.time()` is `want`, for up to 10 s.
    fn wait_for(source: &mut KafkaSource, want: SourceTime) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while source.time() != want {
            assert!(
                Instant::now() < deadline,
                "never {want:?}: {:?}",
                source.time()
            );
            source.poll(6, Duration::from_millis(50), ts);
        }
    }

    /// A partition that never had a message has nothing to read: it goes idle after the
    /// timeout (its start, resolved at assignment, is its high watermark), and the
    /// watermark follows the other partition.
    #[test]
    fn a_partition_empty_from_the_start_goes_idle() {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        cluster.create_topic("e", 2, 1).unwrap();
        let mut source = source(&brokers, "e");
        assert_eq!(source.positions(), vec![(0, 0), (1, 0)]);
        // Past the idle timeout, both empty partitions are idle; nothing read: no time.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(source.poll(6, Duration::from_millis(50), ts), 0);
        assert_eq!(source.time(), SourceTime::Unknown);
        // Partition 0 gets messages: the empty one does not hold the watermark.
        produce(&brokers, "e", 0, &["1000", "1001"]);
        wait_for(&mut source, SourceTime::Active(1001));
        // Then both idle, and a new message on the empty one makes it active alone.
        wait_for(&mut source, SourceTime::Idle);
        produce(&brokers, "e", 1, &["1500"]);
        wait_for(&mut source, SourceTime::Active(1500));
        assert_eq!(source.positions(), vec![(0, 2), (1, 1)]);
    }
}
