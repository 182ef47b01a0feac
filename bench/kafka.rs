//! Through a real broker on loopback: sustained events/s of the worker, and event-to-score
//! latency (p50/p99) at fixed input rates. Measured, never asserted.
//!
//! Run: `bash bench/kafka.sh` (starts a tansu broker, then `cargo bench --bench kafka`).
//! Environment: `CTRFLOW_BENCH_IMPRESSIONS` (throughput run, default 300000, with the mock
//! 60000: it keeps about 5 MB per partition and drops the oldest messages beyond; 0 skips it),
//! `CTRFLOW_BENCH_RATES` (latency runs, events/s, default `10000,50000`),
//! `CTRFLOW_BENCH_SECONDS` (per latency run, default 20), `CTRFLOW_BENCH_SCORE_ON` (the
//! worker's `label.score_on` for the latency runs, each rate run once per mode listed;
//! default `watermark,arrival`; the throughput run uses `watermark`), `CTRFLOW_BENCH_PRODUCER_LINGER_MS`
//! (the bench's producer, default 5 = librdkafka's default: at 1 ms its client took ~50% of
//! a core at 50k events/s, which the worker and the broker then lacked), `CTRFLOW_BENCH_FETCH_WAIT_MS` (the worker's
//! `fetch.wait.max.ms`, default 5), `CTRFLOW_BENCH_WORKER_LINGER_MS` (the worker's score
//! producer's `linger.ms`, default 1: fewer, larger produce requests for the broker), `CTRFLOW_BENCH_NAGLE=off` (`socket.nagle.disable` on every
//! client: measured, no difference on loopback).
//! `CTRFLOW_BENCH_BROKER=mock` runs against librdkafka's `MockCluster` in this process
//! instead of a broker (what the worker costs without tansu's own latency).
//! `CTRFLOW_BENCH_ECHO=1` adds, per rate, the broker's own floor: the same events produced
//! at the same rate and read straight back from the events topic by the same reader, no
//! worker — one trip through the broker, where a score makes two.
//! Without `CTRFLOW_BENCH_BROKER` it prints how to run it and exits (so that
//! `cargo test --all-targets` can build and run it as a no-op).
//!
//! - Throughput: the events topic is filled first; then the worker starts and the clock runs
//!   until every impression is scored: events / seconds.
//! - Latency: the worker runs; the bench produces events at a fixed rate, paced every
//!   millisecond, noting when it handed each impression to its producer; a reader of the
//!   scores topic notes when each score arrived. Event-to-score latency is the difference:
//!   producer → broker → worker → broker → consumer, all on one machine. Impressions are
//!   numbered (`imp-N`), so both sides note times in arrays, not maps: the measuring code
//!   shares the 2 cores with what it measures and should cost little. Each score's Kafka
//!   `CreateTime` (set when the worker produced it) splits the time into two legs, so that
//!   the worker's share (fetch, watermark, dataflow) shows apart from the scores' trip back.
//! - CPU: for each latency run, the CPU time used per thread group (timely workers,
//!   librdkafka threads, the bench's producer and reader) and by the broker process
//!   (`CTRFLOW_BENCH_BROKER_PID`, set by bench/kafka.sh), as a share of one core: when the
//!   sum nears the machine's cores, latency is queueing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctrflow::config::PipelineConfig;
use ctrflow::generator::{EventKind, GenConfig, Generator};
use ctrflow::produce::{KafkaTarget, produce};
use ctrflow::run::{RunOptions, start};
use ctrflow_connectors::kafka::{KafkaConfig, KafkaSink};
use ctrflow_dataflows::operators::ScoreOn;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const WORKERS: usize = 2;

/// The broker the bench talks to: a real one, or librdkafka's mock in this process.
struct Broker {
    addr: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

fn main() {
    let Ok(brokers) = std::env::var("CTRFLOW_BENCH_BROKER") else {
        eprintln!("kafka bench skipped: run `bash bench/kafka.sh` (it starts a broker)");
        return;
    };
    // `cargo test --all-targets` runs bench binaries in test mode: nothing to measure.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    // `mock`: librdkafka's MockCluster, to see what the worker costs without tansu.
    let broker = if brokers == "mock" {
        let mock = MockCluster::new(1).expect("mock cluster");
        Broker {
            addr: mock.bootstrap_servers(),
            mock: Some(mock),
        }
    } else {
        Broker {
            addr: brokers,
            mock: None,
        }
    };
    // The mock keeps about 5 MB per partition: 60k impressions (~95k events) fit in 4.
    let default_impressions = if broker.mock.is_some() {
        60_000
    } else {
        300_000
    };
    let impressions: u64 = env_or("CTRFLOW_BENCH_IMPRESSIONS", default_impressions);
    let seconds: u64 = env_or("CTRFLOW_BENCH_SECONDS", 20);

    if impressions > 0 {
        let (events, secs) = throughput(&broker, impressions);
        println!(
            "throughput: {events} events in {secs:.2} s = {:.0} events/s ({WORKERS} workers, {PARTITIONS} partitions)",
            events as f64 / secs
        );
    }
    let rates = std::env::var("CTRFLOW_BENCH_RATES").unwrap_or_else(|_| "10000,50000".to_owned());
    let modes: Vec<ScoreOn> = std::env::var("CTRFLOW_BENCH_SCORE_ON")
        .unwrap_or_else(|_| "watermark,arrival".to_owned())
        .split(',')
        .map(|m| match m.trim() {
            "watermark" => ScoreOn::Watermark,
            "arrival" => ScoreOn::Arrival,
            other => panic!("CTRFLOW_BENCH_SCORE_ON: {other:?} is neither watermark nor arrival"),
        })
        .collect();
    for (rate, score_on) in rates
        .split(',')
        .filter_map(|r| r.trim().parse::<f64>().ok())
        .flat_map(|rate| modes.iter().map(move |m| (rate, *m)))
    {
        let l = latency(&broker, rate, seconds, score_on);
        println!(
            "latency at {rate:.0} events/s offered ({:.0} achieved), score_on = {score_on:?}, after the first {WARMUP_MS} ms: {} impressions ({} unscored), p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (first {WARMUP_MS} ms: max {:.1} ms)",
            l.achieved, l.count, l.unscored, l.p50, l.p90, l.p99, l.max, l.warmup_max
        );
        println!(
            "  legs (p50 / p99, ms resolution): sent → score produced {:.0} / {:.0} ms (in the worker, read → scored: ≤ {} / ≤ {} ms), score produced → read {:.0} / {:.0} ms",
            l.upstream.0,
            l.upstream.1,
            l.in_worker.0,
            l.in_worker.1,
            l.downstream.0,
            l.downstream.1
        );
        let cpu: Vec<String> = l
            .cpu
            .iter()
            .map(|(g, c)| format!("{g} {:.0}%", c * 100.0))
            .collect();
        println!("  CPU (share of one core): {}", cpu.join(", "));
        if std::env::var("CTRFLOW_BENCH_ECHO").is_ok_and(|v| v == "1")
            && modes.last() == Some(&score_on)
        {
            let e = echo(&broker, rate, seconds);
            println!(
                "  broker alone at {rate:.0} events/s ({:.0} achieved): produced → read back {} impressions ({} unread), p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; broker CPU {:.0}%",
                e.achieved,
                e.count,
                e.unscored,
                e.p50,
                e.p90,
                e.p99,
                e.max,
                e.cpu
                    .iter()
                    .find(|(g, _)| g == "broker")
                    .map_or(f64::NAN, |(_, c)| c * 100.0)
            );
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Topics {
    events: String,
    scores: String,
    dead: String,
}

fn topics(broker: &Broker, tag: &str) -> Topics {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let t = Topics {
        events: format!("bench-events-{tag}-{nanos}"),
        scores: format!("bench-scores-{tag}-{nanos}"),
        dead: format!("bench-dead-{tag}-{nanos}"),
    };
    if let Some(mock) = &broker.mock {
        for (topic, partitions) in [
            (&t.events, PARTITIONS),
            (&t.scores, PARTITIONS),
            (&t.dead, 1),
        ] {
            mock.create_topic(topic, partitions, 1)
                .expect("topic created");
        }
        return t;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("admin client");
    let new = [
        NewTopic::new(&t.events, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&t.scores, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&t.dead, 1, TopicReplication::Fixed(1)),
    ];
    for r in futures_executor::block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
    t
}

/// The worker's configuration for the bench: configs/local.toml's latency settings
/// (no lateness allowance, 1 ms watermark steps, 1 ms producer linger, 5 ms fetch wait).
fn config(brokers: &str, t: &Topics, score_on: ScoreOn) -> PipelineConfig {
    let mut config = PipelineConfig::default();
    config.label.score_on = score_on;
    config.input.allowed_lateness_ms = 0;
    config.input.watermark_step_ms = 1;
    config.kafka.brokers = brokers.to_owned();
    config.kafka.group_id = format!("{}-group", t.events);
    config.kafka.topics.events = t.events.clone();
    config.kafka.topics.scores = t.scores.clone();
    config.kafka.topics.dead_letters = t.dead.clone();
    config.kafka.consumer.idle_timeout_ms = 2000;
    config.kafka.producer.linger_ms = env_or("CTRFLOW_BENCH_WORKER_LINGER_MS", 1);
    // A caught-up fetch waits up to this long for data (librdkafka default 500 ms; brokers
    // that do not answer early make it the latency floor).
    let wait = std::env::var("CTRFLOW_BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "5".to_owned());
    config
        .kafka
        .consumer
        .properties
        .insert("fetch.wait.max.ms".to_owned(), wait);
    for (k, v) in client_properties() {
        config.kafka.properties.insert(k.to_owned(), v.to_owned());
    }
    config
}

/// librdkafka properties for every client of the bench, the worker's included.
fn client_properties() -> Vec<(&'static str, &'static str)> {
    match std::env::var("CTRFLOW_BENCH_NAGLE").as_deref() {
        Ok("off") => vec![("socket.nagle.disable", "true")],
        _ => Vec::new(),
    }
}

fn generated(count: u64) -> GenConfig {
    GenConfig {
        count,
        seed: 1,
        ..GenConfig::default()
    }
}

fn throughput(broker: &Broker, impressions: u64) -> (u64, f64) {
    let t = topics(broker, "tput");
    let brokers = broker.addr.as_str();
    let target = KafkaTarget {
        brokers: brokers.to_owned(),
        topic: t.events.clone(),
    };
    let stats = produce(
        &generated(impressions),
        &target,
        None,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("fill the events topic");
    // A broker that dropped the oldest messages before the worker started would leave it
    // short of `stats.events` for ever (the wait below): librdkafka's mock keeps about
    // 5 MB per partition (`rd_kafka_mock_partition` `max_size`). A fresh topic's low
    // watermarks say (its high ones do not: tansu's memory storage reports them behind).
    let deleted = deleted_events(brokers, &t.events);
    assert!(
        deleted == 0,
        "the broker deleted the oldest {deleted} of the {} events produced (librdkafka's \
         mock cluster keeps about 5 MB per partition); lower CTRFLOW_BENCH_IMPRESSIONS",
        stats.events
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let running = start(&RunOptions {
        config: config(brokers, &t, ScoreOn::Watermark),
        workers: WORKERS,
        stop: Arc::clone(&stop),
    })
    .expect("worker");
    let status = Arc::clone(running.status());
    // The last impressions are scored once the partitions go idle; count to the read.
    while status.events.load(Ordering::Relaxed) < stats.events {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    running.join().expect("clean stop");
    (stats.events, secs)
}

/// Messages deleted from the start of `topic` (its partitions' low watermarks: a fresh
/// topic starts at 0).
fn deleted_events(brokers: &str, topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            let (low, _) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            low.max(0) as u64
        })
        .sum()
}

struct Latency {
    achieved: f64,
    count: usize,
    unscored: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    warmup_max: f64,
    /// p50 and p99 of the two legs, split where the worker produced the score (its
    /// Kafka `CreateTime`, ms resolution): sent → score produced (the bench's producer,
    /// broker, the worker's fetch, watermark and dataflow) and score produced → read
    /// (the worker's producer, broker, the bench's reader).
    upstream: (f64, f64),
    downstream: (f64, f64),
    /// The worker's own share, read → scored (`ctrflow_event_to_score_latency_seconds`):
    /// the bucket bounds (ms) below which half and 99% of the impressions were scored
    /// (the whole run, its first seconds included).
    in_worker: (f64, f64),
    /// CPU time per thread group over the run, as a share of one core.
    cpu: Vec<(String, f64)>,
}

/// Traffic of the first seconds, while the worker settles, reported apart.
const WARMUP_MS: u64 = 2000;

/// Not (yet) seen, in the per-impression time arrays.
const NEVER: u64 = u64::MAX;

/// Microseconds since `epoch`.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The impression number `N` of a score (`{"id":"imp-N",...}`, as ctrflow encodes it).
fn impression_of(payload: &[u8]) -> Option<usize> {
    number(payload.strip_prefix(br#"{"id":"imp-"#)?)
}

/// The impression number `N` of a generated impression event
/// (`{"type":"impression","id":"imp-N",...}`; feedback is `None`).
fn impression_event(payload: &[u8]) -> Option<usize> {
    number(payload.strip_prefix(br#"{"type":"impression","id":"imp-"#)?)
}

fn number(digits: &[u8]) -> Option<usize> {
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Reads `topic` from the beginning until `stop`, noting in `at[N]` when the message
/// `which` says is about `imp-N` arrived and in `produced[N]` when it was produced (its
/// `CreateTime`), both in microseconds since `epoch` (`epoch_ms`: the wall clock then,
/// Unix ms).
fn read_scores(
    brokers: &str,
    topic: &str,
    which: fn(&[u8]) -> Option<usize>,
    stop: &AtomicBool,
    (epoch, epoch_ms): (Instant, i64),
    at: &mut [u64],
    produced: &mut [u64],
) {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1");
    for (k, v) in client_properties() {
        client.set(k, v);
    }
    let consumer: BaseConsumer = client.create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    drop(list);
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            let now = micros(epoch);
            if let Some(n) = m.payload().and_then(which)
                && let Some(slot) = at.get_mut(n)
                && *slot == NEVER
            {
                *slot = now;
                if let Some(ms) = m.timestamp().to_millis() {
                    produced[n] = ((ms - epoch_ms).max(0) * 1000) as u64;
                }
            }
        }
    }
}

/// Produces `config`'s events to `topic` at `rate` events/s, a millisecond's worth at a
/// time, noting in `at[N]` when `imp-N` was handed to the producer. Returns events sent.
fn produce_timed(
    brokers: &str,
    topic: &str,
    config: &GenConfig,
    rate: f64,
    epoch: Instant,
    at: &mut [u64],
) -> u64 {
    let linger = env_or("CTRFLOW_BENCH_PRODUCER_LINGER_MS", 5);
    let mut kafka = KafkaConfig {
        brokers: brokers.to_owned(),
        ..KafkaConfig::default()
    };
    for (k, v) in client_properties() {
        kafka.properties.insert(k.to_owned(), v.to_owned());
    }
    kafka.producer.linger_ms = linger;
    let sink = KafkaSink::new(&kafka).expect("producer");
    let mut generator = Generator::new(config).expect("generator");
    let (mut line, mut key) = (Vec::with_capacity(512), Vec::with_capacity(16));
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        // Everything due by now, then sleep to the next millisecond.
        let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
        while sent < due {
            line.clear();
            let Some(e) = generator.next_event(&mut line) else {
                sink.flush().expect("deliveries");
                return sent;
            };
            key.clear();
            key.push(b'u');
            key.extend_from_slice(itoa::Buffer::new().format(e.user).as_bytes());
            if e.kind == EventKind::Impression
                && let Some(slot) = at.get_mut(e.impression as usize)
            {
                *slot = micros(epoch);
            }
            let payload = line.strip_suffix(b"\n").unwrap_or(&line);
            sink.send(topic, Some(&key), payload).expect("produce");
            sent += 1;
        }
        sink.retry_failed().expect("produce");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The cumulative buckets of the worker's event-to-score histogram: (bound in ms, count).
fn latency_buckets(text: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{}_bucket{{le=\"", ctrflow::telemetry::LATENCY);
    text.lines()
        .filter_map(|line| {
            let (bound, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse::<f64>().ok()? * 1000.0
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bounds below which 50% and 99% of the observations between two renders fell
/// (NaN without observations).
fn bucket_quantiles(before: &[(f64, u64)], after: &[(f64, u64)]) -> (f64, f64) {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, n)| *n);
            (bound, n.saturating_sub(was))
        })
        .collect();
    let total = counts.last().map_or(0, |(_, n)| *n) as f64;
    let at = |p: f64| {
        if total == 0.0 {
            return f64::NAN;
        }
        counts
            .iter()
            .find(|(_, n)| *n as f64 >= total * p)
            .map_or(f64::NAN, |(b, _)| *b)
    };
    (at(0.5), at(0.99))
}

/// CPU time (user + system, seconds) per thread group of this process, and of `broker`.
fn cpu_times(broker: Option<u32>) -> BTreeMap<String, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let parse = |stat: &str| -> Option<f64> {
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
    };
    let mut groups = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let group = match name.trim() {
                n if n.starts_with("timely") => "timely workers",
                n if n.starts_with("rdk:mock") => "mock broker",
                n if n.starts_with("rdk:") => "librdkafka",
                n if n.starts_with("bench-") => "bench producer+reader",
                _ => "other threads",
            };
            if let Some(t) = std::fs::read_to_string(path.join("stat"))
                .ok()
                .as_deref()
                .and_then(parse)
            {
                *groups.entry(group.to_owned()).or_insert(0.0) += t;
            }
        }
    }
    // Threads that have ended (the bench producer's client) count in the process's total.
    let live: f64 = groups.values().sum();
    if let Some(total) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse)
    {
        groups.insert(
            "ended threads (bench producer client)".to_owned(),
            total - live,
        );
    }
    if let Some(t) = broker
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .as_deref()
        .and_then(parse)
    {
        groups.insert("broker".to_owned(), t);
    }
    groups
}

fn latency(broker: &Broker, rate: f64, seconds: u64, score_on: ScoreOn) -> Latency {
    let t = topics(broker, &format!("lat{rate}-{score_on:?}"));
    let brokers = broker.addr.as_str();
    let metrics = ctrflow::telemetry::install().expect("metrics recorder");
    let buckets_before = latency_buckets(&metrics.render());
    let broker_pid = std::env::var("CTRFLOW_BENCH_BROKER_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let stop = Arc::new(AtomicBool::new(false));
    let running = start(&RunOptions {
        config: config(brokers, &t, score_on),
        workers: WORKERS,
        stop: Arc::clone(&stop),
    })
    .expect("worker");
    // Enough impressions for `seconds` of traffic at `rate` events/s (about 1.6 events per
    // impression).
    let count = (rate * seconds as f64 / 1.6) as u64;
    let epoch = Instant::now();
    let epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let readers_stop = Arc::new(AtomicBool::new(false));
    let scored = spawn_reader(
        "bench-scores",
        brokers,
        &t.scores,
        impression_of,
        &readers_stop,
        (epoch, epoch_ms),
        count,
    );
    let cpu_before = cpu_times(broker_pid);
    let began = Instant::now();
    let (sent_events, sent) = produce_at_rate(brokers, &t.events, count, rate, epoch);
    let achieved = sent_events as f64 / began.elapsed().as_secs_f64();
    let status = Arc::clone(running.status());
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.scores.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let wall = began.elapsed().as_secs_f64();
    let cpu_after = cpu_times(broker_pid);
    let in_worker = bucket_quantiles(&buckets_before, &latency_buckets(&metrics.render()));
    readers_stop.store(true, Ordering::Relaxed);
    let (scored, produced) = scored.join().expect("scores reader");
    stop.store(true, Ordering::Relaxed);
    running.join().expect("clean stop");

    // The first seconds include the worker's start on its partitions (the watermark waits
    // for every partition's first data or idleness): reported apart.
    let first = sent.iter().copied().min().unwrap_or(0);
    let (mut warm, mut steady): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    let (mut upstream, mut downstream) = (Vec::new(), Vec::new());
    let mut unscored = 0;
    for ((&s, &at), &p) in sent.iter().zip(&scored).zip(&produced) {
        if s == NEVER {
            continue;
        }
        if at == NEVER {
            unscored += 1;
            continue;
        }
        let l = at.saturating_sub(s);
        if s - first < WARMUP_MS * 1000 {
            warm.push(l);
        } else {
            steady.push(l);
            if p != NEVER {
                upstream.push(p.saturating_sub(s));
                downstream.push(at.saturating_sub(p));
            }
        }
    }
    for v in [&mut warm, &mut steady, &mut upstream, &mut downstream] {
        v.sort_unstable();
    }
    let q = quantile_ms;
    let cpu = cpu_shares(&cpu_before, &cpu_after, wall);
    Latency {
        achieved,
        count: steady.len(),
        unscored,
        p50: q(&steady, 0.5),
        p90: q(&steady, 0.9),
        p99: q(&steady, 0.99),
        max: steady.last().copied().unwrap_or(0) as f64 / 1000.0,
        warmup_max: warm.last().copied().unwrap_or(0) as f64 / 1000.0,
        upstream: (q(&upstream, 0.5), q(&upstream, 0.99)),
        downstream: (q(&downstream, 0.5), q(&downstream, 0.99)),
        in_worker,
        cpu,
    }
}

/// The broker alone at `rate`: events produced as in [`latency`], read back from the events
/// topic by the same reader, no worker. Only the fields of [`Latency`] that mean something
/// without a worker are filled.
fn echo(broker: &Broker, rate: f64, seconds: u64) -> Latency {
    let t = topics(broker, &format!("echo{rate}"));
    let brokers = broker.addr.as_str();
    let broker_pid = std::env::var("CTRFLOW_BENCH_BROKER_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let count = (rate * seconds as f64 / 1.6) as u64;
    let epoch = Instant::now();
    let epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(
        "bench-echo",
        brokers,
        &t.events,
        impression_event,
        &stop,
        (epoch, epoch_ms),
        count,
    );
    let cpu_before = cpu_times(broker_pid);
    let began = Instant::now();
    let (sent_events, sent) = produce_at_rate(brokers, &t.events, count, rate, epoch);
    let achieved = sent_events as f64 / began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let wall = began.elapsed().as_secs_f64();
    let cpu_after = cpu_times(broker_pid);
    stop.store(true, Ordering::Relaxed);
    let (read, _) = reader.join().expect("echo reader");
    let first = sent.iter().copied().min().unwrap_or(0);
    let mut steady = Vec::new();
    let mut unread = 0;
    for (&s, &at) in sent.iter().zip(&read) {
        if s == NEVER || s - first < WARMUP_MS * 1000 {
            continue;
        }
        if at == NEVER {
            unread += 1;
        } else {
            steady.push(at.saturating_sub(s));
        }
    }
    steady.sort_unstable();
    let cpu = cpu_shares(&cpu_before, &cpu_after, wall);
    Latency {
        achieved,
        count: steady.len(),
        unscored: unread,
        p50: quantile_ms(&steady, 0.5),
        p90: quantile_ms(&steady, 0.9),
        p99: quantile_ms(&steady, 0.99),
        max: steady.last().copied().unwrap_or(0) as f64 / 1000.0,
        warmup_max: f64::NAN,
        upstream: (f64::NAN, f64::NAN),
        downstream: (f64::NAN, f64::NAN),
        in_worker: (f64::NAN, f64::NAN),
        cpu,
    }
}

/// Produces `count` impressions' events to `topic` at `rate` on a thread of its own (the
/// CPU groups tell it apart); returns the events sent and when each impression was sent.
fn produce_at_rate(
    brokers: &str,
    topic: &str,
    count: u64,
    rate: f64,
    epoch: Instant,
) -> (u64, Vec<u64>) {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    std::thread::Builder::new()
        .name("bench-produce".to_owned())
        .spawn(move || {
            let mut at = vec![NEVER; count as usize];
            let events = produce_timed(&brokers, &topic, &generated(count), rate, epoch, &mut at);
            (events, at)
        })
        .expect("producer thread")
        .join()
        .expect("producer")
}

/// [`read_scores`] on a thread named `name`, for `count` impressions, until `stop`.
fn spawn_reader(
    name: &str,
    brokers: &str,
    topic: &str,
    which: fn(&[u8]) -> Option<usize>,
    stop: &Arc<AtomicBool>,
    epoch: (Instant, i64),
    count: u64,
) -> std::thread::JoinHandle<(Vec<u64>, Vec<u64>)> {
    let (brokers, topic, stop) = (brokers.to_owned(), topic.to_owned(), Arc::clone(stop));
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut at = vec![NEVER; count as usize];
            let mut produced = vec![NEVER; count as usize];
            read_scores(
                &brokers,
                &topic,
                which,
                &stop,
                epoch,
                &mut at,
                &mut produced,
            );
            (at, produced)
        })
        .expect("reader thread")
}

/// The `p` quantile of sorted microseconds, in milliseconds (0 when empty).
fn quantile_ms(sorted: &[u64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0) as f64
        / 1000.0
}

/// CPU time per group between two readings, as a share of one core over `wall` seconds.
fn cpu_shares(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    wall: f64,
) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(g, a)| {
            (
                g.clone(),
                (a - before.get(g).copied().unwrap_or(0.0)) / wall,
            )
        })
        .collect()
}
