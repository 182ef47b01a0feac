//! Through a real broker on loopback: sustained events/s of the worker, and event-to-score
//! latency (p50/p99) at fixed input rates. Measured, never asserted.
//!
//! Run: `bash bench/kafka.sh` (starts a tansu broker, then `cargo bench --bench kafka`).
//! Without `CTRFLOW_BENCH_BROKER` it prints how to run it and exits (so that
//! `cargo test --all-targets` can build and run it as a no-op).
//!
//! - Throughput: the events topic is filled first; then the worker starts and the clock runs
//!   until every impression is scored: events / seconds.
//! - Latency: the worker runs; events are produced at a fixed rate; a reader of the events
//!   topic notes each impression's Kafka timestamp (set by the producer when it sent it), a
//!   reader of the scores topic notes when each score arrived. Event-to-score latency is the
//!   difference: producer → broker → worker → broker → consumer, all on one machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctrflow::config::PipelineConfig;
use ctrflow::generator::GenConfig;
use ctrflow::produce::{KafkaTarget, produce};
use ctrflow::run::{RunOptions, start};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const WORKERS: usize = 2;

fn main() {
    let Ok(brokers) = std::env::var("CTRFLOW_BENCH_BROKER") else {
        eprintln!("kafka bench skipped: run `bash bench/kafka.sh` (it starts a broker)");
        return;
    };
    // `cargo test --all-targets` runs bench binaries in test mode: nothing to measure.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let impressions: u64 = env_or("CTRFLOW_BENCH_IMPRESSIONS", 300_000);
    let seconds: u64 = env_or("CTRFLOW_BENCH_SECONDS", 20);

    let (events, secs) = throughput(&brokers, impressions);
    println!(
        "throughput: {events} events in {secs:.2} s = {:.0} events/s ({WORKERS} workers, {PARTITIONS} partitions)",
        events as f64 / secs
    );
    for rate in [10_000.0, 50_000.0] {
        let l = latency(&brokers, rate, seconds);
        println!(
            "latency at {rate:.0} events/s offered ({:.0} achieved), after the first {WARMUP_MS} ms: {} impressions, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (first {WARMUP_MS} ms: max {:.0} ms)",
            l.achieved, l.count, l.p50, l.p99, l.max, l.warmup_max
        );
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

fn topics(brokers: &str, tag: &str) -> Topics {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let t = Topics {
        events: format!("bench-events-{tag}-{nanos}"),
        scores: format!("bench-scores-{tag}-{nanos}"),
        dead: format!("bench-dead-{tag}-{nanos}"),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
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
fn config(brokers: &str, t: &Topics) -> PipelineConfig {
    let mut config = PipelineConfig::default();
    config.input.allowed_lateness_ms = 0;
    config.input.watermark_step_ms = 1;
    config.kafka.brokers = brokers.to_owned();
    config.kafka.group_id = format!("{}-group", t.events);
    config.kafka.topics.events = t.events.clone();
    config.kafka.topics.scores = t.scores.clone();
    config.kafka.topics.dead_letters = t.dead.clone();
    config.kafka.consumer.idle_timeout_ms = 2000;
    config.kafka.producer.linger_ms = 1;
    // A caught-up fetch waits up to this long for data (librdkafka default 500 ms; brokers
    // that do not answer early make it the latency floor).
    let wait = std::env::var("CTRFLOW_BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "5".to_owned());
    config
        .kafka
        .consumer
        .properties
        .insert("fetch.wait.max.ms".to_owned(), wait);
    config
}

fn generated(count: u64) -> GenConfig {
    GenConfig {
        count,
        seed: 1,
        ..GenConfig::default()
    }
}

fn throughput(brokers: &str, impressions: u64) -> (u64, f64) {
    let t = topics(brokers, "tput");
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
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let running = start(&RunOptions {
        config: config(brokers, &t),
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

struct Latency {
    achieved: f64,
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
    warmup_max: f64,
}

/// Traffic of the first seconds, while the worker settles, reported apart.
const WARMUP_MS: i64 = 2000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Reads `topic` from the beginning until `stop`, calling `f` with each message's payload
/// and Kafka timestamp.
fn read(brokers: &str, topic: &str, stop: &AtomicBool, mut f: impl FnMut(&[u8], i64)) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    drop(list);
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            let ts = m.timestamp().to_millis().unwrap_or(0);
            f(m.payload().unwrap_or_default(), ts);
        }
    }
}

/// The `id` of an impression or a score (both are written without escapes by ctrflow's
/// generator and encoder); `None` for feedback. A scan, not a JSON parse: the measuring
/// readers share the 2 cores with what they measure.
fn id_of(payload: &[u8]) -> Option<String> {
    let is_impression = payload.starts_with(br#"{"type":"impression""#);
    let is_score = payload.starts_with(br#"{"id":""#);
    if !is_impression && !is_score {
        return None;
    }
    let key = br#""id":""#;
    let start = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    let id = std::str::from_utf8(&payload[start..start + len]).ok()?;
    Some(id.to_owned())
}

fn latency(brokers: &str, rate: f64, seconds: u64) -> Latency {
    let t = topics(brokers, &format!("lat{rate}"));
    let stop = Arc::new(AtomicBool::new(false));
    let running = start(&RunOptions {
        config: config(brokers, &t),
        workers: WORKERS,
        stop: Arc::clone(&stop),
    })
    .expect("worker");
    let readers_stop = Arc::new(AtomicBool::new(false));
    let sent = {
        let (brokers, topic, stop) = (
            brokers.to_owned(),
            t.events.clone(),
            Arc::clone(&readers_stop),
        );
        std::thread::spawn(move || {
            let mut sent = HashMap::new();
            read(&brokers, &topic, &stop, |payload, ts| {
                if let Some(id) = id_of(payload) {
                    sent.insert(id, ts);
                }
            });
            sent
        })
    };
    let scored = {
        let (brokers, topic, stop) = (
            brokers.to_owned(),
            t.scores.clone(),
            Arc::clone(&readers_stop),
        );
        std::thread::spawn(move || {
            let mut scored = HashMap::new();
            read(&brokers, &topic, &stop, |payload, _| {
                if let Some(id) = id_of(payload) {
                    scored.insert(id, now_ms());
                }
            });
            scored
        })
    };
    // Enough impressions for `seconds` of traffic at `rate` events/s (about 1.6 events per
    // impression), produced at that rate.
    let count = (rate * seconds as f64 / 1.6) as u64;
    let target = KafkaTarget {
        brokers: brokers.to_owned(),
        topic: t.events.clone(),
    };
    let began = Instant::now();
    let stats = produce(
        &generated(count),
        &target,
        Some(rate),
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("produce at rate");
    let achieved = stats.events as f64 / began.elapsed().as_secs_f64();
    let status = Arc::clone(running.status());
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.scores.load(Ordering::Relaxed) < stats.impressions && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    readers_stop.store(true, Ordering::Relaxed);
    let sent = sent.join().expect("events reader");
    let scored = scored.join().expect("scores reader");
    stop.store(true, Ordering::Relaxed);
    running.join().expect("clean stop");

    // The first seconds include the worker's start on its partitions (the watermark waits
    // for every partition's first data or idleness): reported apart.
    let first = sent.values().copied().min().unwrap_or(0);
    let (mut warm, mut steady): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for (id, at) in &scored {
        if let Some(s) = sent.get(id) {
            if s - first < WARMUP_MS {
                &mut warm
            } else {
                &mut steady
            }
            .push(at - s);
        }
    }
    warm.sort_unstable();
    steady.sort_unstable();
    let q = |v: &[i64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
    };
    Latency {
        achieved,
        count: steady.len(),
        p50: q(&steady, 0.5),
        p99: q(&steady, 0.99),
        max: steady.last().copied().unwrap_or(0) as f64,
        warmup_max: warm.last().copied().unwrap_or(0) as f64,
    }
}
