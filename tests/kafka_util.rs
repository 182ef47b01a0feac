//! Kafka fixtures: topics, producing, consuming everything, and a `ctrflow run` process.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use ctrflow::generator::GenConfig;
use ctrflow::produce::{KafkaTarget, produce, produce_paced};
use ctrflow_connectors::kafka::KafkaConfig;

use crate::util::ctrflow;

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `topics` (name, partitions) on `brokers` through the Admin API.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = futures_executor::block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

/// A plain producer (not ctrflow's sink), for messages a test writes by hand.
pub fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer")
}

/// Produces `payloads` to `topic` (keyless) and waits for their delivery.
pub fn produce_raw(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer = producer(brokers);
    for payload in payloads {
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).payload(payload))
            .map_err(|(e, _)| e)
            .expect("queue");
    }
    producer.flush(Duration::from_secs(30)).expect("delivered");
}

/// How many partitions `topic` has.
fn partitions(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// Waits until `topic` holds `expected` messages, or until it stopped growing for
/// `quiet` (at most `timeout`); returns how many it holds.
pub fn wait_for(
    brokers: &str,
    topic: &str,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let partitions = partitions(&consumer, topic);
    let deadline = Instant::now() + timeout;
    let mut last = (0, Instant::now());
    loop {
        let mut total = 0;
        for p in 0..partitions {
            if let Ok((low, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                total += (high - low).max(0) as usize;
            }
        }
        if total != last.0 {
            last = (total, Instant::now());
        }
        if total >= expected || last.1.elapsed() >= quiet || Instant::now() >= deadline {
            return total;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived (or `timeout`),
/// then `grace` more to catch any extra; returns them all.
pub fn consume(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    grace: Duration,
) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let partitions = partitions(&consumer, topic);
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    drop(list);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || done_at.is_some_and(|t| now >= t + grace) {
            break;
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            out.push(message.payload().unwrap_or_default().to_vec());
        }
        if out.len() >= expected && done_at.is_none() {
            done_at = Some(Instant::now());
        }
    }
    out
}

/// The JSON of every message.
pub fn json(messages: &[Vec<u8>]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m).expect("JSON"))
        .collect()
}

/// The topics of one test.
pub struct Topics {
    pub events: String,
    pub scores: String,
    pub dead_letters: String,
    /// The `examples` output, when the test asked for it (empty otherwise).
    pub examples: String,
    /// The drift `alerts` output, when the test asked for it (empty: off).
    pub alerts: String,
}

impl Topics {
    /// Fresh topics: `partitions` for events and scores, one for dead letters.
    pub fn create(brokers: &str, partitions: i32) -> Self {
        let topics = Self {
            events: unique("events"),
            scores: unique("scores"),
            dead_letters: unique("dead"),
            examples: String::new(),
            alerts: String::new(),
        };
        create_topics(
            brokers,
            &[
                (&topics.events, partitions),
                (&topics.scores, partitions),
                (&topics.dead_letters, 1),
            ],
        );
        topics
    }

    /// Fresh topics, with the `examples` output too.
    pub fn with_examples(brokers: &str, partitions: i32) -> Self {
        let mut topics = Self::create(brokers, partitions);
        topics.examples = unique("examples");
        create_topics(brokers, &[(&topics.examples, partitions)]);
        topics
    }

    /// Fresh topics, with the drift `alerts` output too (one partition).
    pub fn with_alerts(brokers: &str, partitions: i32) -> Self {
        let mut topics = Self::create(brokers, partitions);
        topics.alerts = unique("alerts");
        create_topics(brokers, &[(&topics.alerts, 1)]);
        topics
    }

    /// A worker config for these topics; `extra` is appended (more TOML). Its metrics
    /// server takes any free port (tests run workers side by side).
    pub fn config(&self, brokers: &str, extra: &str) -> String {
        self.config_serving(brokers, "127.0.0.1:0", extra)
    }

    /// [`config`](Self::config) with the metrics server on `listen`.
    pub fn config_serving(&self, brokers: &str, listen: &str, extra: &str) -> String {
        self.config_full(brokers, &unique("group"), listen, extra)
    }

    /// [`config`](Self::config) in consumer group `group`.
    pub fn config_with_group(&self, brokers: &str, group: &str, extra: &str) -> String {
        self.config_full(brokers, group, "127.0.0.1:0", extra)
    }

    fn config_full(&self, brokers: &str, group: &str, listen: &str, extra: &str) -> String {
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"

[kafka.topics]
events = "{events}"
scores = "{scores}"
dead_letters = "{dead}"
examples = "{examples}"
alerts = "{alerts}"

[telemetry]
listen = "{listen}"

[kafka.consumer]
# Above librdkafka's fetch.wait.max.ms (500): a caught-up partition fetches that often.
idle_timeout_ms = 2000
{extra}
"#,
            events = self.events,
            scores = self.scores,
            dead = self.dead_letters,
            examples = self.examples,
            alerts = self.alerts,
        )
    }
}

/// A `ctrflow run` process.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `ctrflow run --config <dir>/worker.toml --workers N --json`.
    pub fn start(dir: &Path, config: &str, workers: usize) -> Self {
        Self::start_logging(dir, config, workers, "warn", "human")
    }

    /// `ctrflow run --config <dir>/worker.toml --workers N --json` as process `process`
    /// of a cluster of `processes` listening on `hostfile`'s addresses.
    pub fn start_in_cluster(
        dir: &Path,
        config: &str,
        workers: usize,
        (processes, process, hostfile): (usize, usize, &Path),
    ) -> Self {
        let path = dir.join("worker.toml");
        std::fs::write(&path, config).unwrap();
        let child = ctrflow()
            .args(["run", "--json", "--workers", &workers.to_string()])
            .args(["--processes", &processes.to_string()])
            .args(["--process", &process.to_string()])
            .arg("--hostfile")
            .arg(hostfile)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ctrflow run");
        Self { child }
    }

    /// [`start`](Self::start) with `RUST_LOG=<filter>` and `--log-format <format>`.
    pub fn start_logging(
        dir: &Path,
        config: &str,
        workers: usize,
        filter: &str,
        format: &str,
    ) -> Self {
        let path = dir.join("worker.toml");
        std::fs::write(&path, config).unwrap();
        let child = ctrflow()
            .args([
                "--log-format",
                format,
                "run",
                "--json",
                "--workers",
                &workers.to_string(),
                "--config",
            ])
            .arg(&path)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ctrflow run");
        Self { child }
    }

    /// Lets the worker score until `topic` holds `expected` scores or stops growing for 5 s
    /// (at most `timeout`): live, an impression is scored once every partition moved past
    /// it, the tail on shutdown. Then stops it and reads all of `topic`. Returns the report
    /// and the scores.
    pub fn stop_when_scored(
        self,
        brokers: &str,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> (serde_json::Value, Vec<serde_json::Value>) {
        wait_for(brokers, topic, expected, Duration::from_secs(5), timeout);
        let report = self.stop();
        let scores = consume(
            brokers,
            topic,
            expected,
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        (report, json(&scores))
    }

    /// SIGTERM, then the report it prints; fails the test unless it exits 0 within 60 s.
    pub fn stop(self) -> serde_json::Value {
        self.stop_with_logs().0
    }

    /// [`stop`](Self::stop), with what it logged (stderr).
    pub fn stop_with_logs(self) -> (serde_json::Value, String) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_with_logs()
    }

    /// Waits (at most 60 s) for the worker to exit 0 by itself; its report and stderr.
    pub fn wait_with_logs(mut self) -> (serde_json::Value, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ctrflow run did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let tail = &stderr[stderr.len().saturating_sub(3000)..];
        assert!(status.success(), "ctrflow run exited {status}: ...{tail}");
        // The report is the last line (timely may print connection attempts before it).
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        let report =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
        (report, stderr)
    }
}

impl WorkerProcess {
    /// SIGKILL: the process dies wherever it is, with no chance to flush or checkpoint.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// What a consumer group has committed of a topic, read as often as needed through one
/// client.
pub struct Committed {
    consumer: BaseConsumer,
    list: TopicPartitionList,
}

impl Committed {
    /// Reads consumer group `group`'s offsets of `topic`.
    pub fn new(brokers: &str, group: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions(&consumer, topic) {
            list.add_partition(topic, p);
        }
        Self { consumer, list }
    }

    /// Messages committed, over the partitions (0 while the broker does not answer).
    pub fn total(&self) -> i64 {
        let committed = self
            .consumer
            .committed_offsets(self.list.clone(), Duration::from_secs(10))
            .ok();
        let total = committed.as_ref().map_or(0, |c| {
            c.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .sum()
        });
        drop(committed);
        total
    }
}

/// Waits until consumer group `group` has committed, for every partition of `topic`, the
/// partition's end: everything was read and (with checkpoints) checkpointed.
pub fn wait_committed(brokers: &str, group: &str, topic: &str, timeout: Duration) {
    let Committed { consumer, list } = Committed::new(brokers, group, topic);
    let count = list.count() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        let committed = consumer
            .committed_offsets(list.clone(), Duration::from_secs(10))
            .ok();
        let done = committed.as_ref().is_some_and(|c| {
            (0..count).all(|p| {
                let high = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map_or(-1, |(_, h)| h);
                matches!(
                    c.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o == high
                )
            })
        });
        drop(committed);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} did not reach the end of {topic}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks the scores against the generated impressions: exactly one per impression, each
/// a probability with a model version, keyed by the impression's user.
pub fn assert_one_valid_score_per_impression(scores: &[serde_json::Value], impressions: u64) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for s in scores {
        let id = s["id"].as_str().expect("id");
        *seen.entry(id).or_default() += 1;
        let p = s["score"].as_f64().expect("score");
        assert!(p > 0.0 && p < 1.0 && p.is_finite(), "score {p} in {s}");
        assert!(s["model_version"].is_u64(), "{s}");
        assert!(s["event_ts"].is_i64(), "{s}");
        assert!(s["emit_ts"].is_u64(), "{s}");
        assert!(
            s["user"].as_str().is_some_and(|u| u.starts_with('u')),
            "{s}"
        );
        assert!(s["item"].as_str().is_some(), "{s}");
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "scored more than once: {duplicated:?}"
    );
    for i in 0..impressions {
        let id = format!("imp-{i}");
        assert!(
            seen.contains_key(id.as_str()),
            "{id} was not scored ({} scores for {impressions} impressions)",
            scores.len()
        );
    }
    assert_eq!(scores.len() as u64, impressions);
}

/// After a broker restart: every impression is scored, and where a score was written twice
/// (a producer that outlived the broker resends what it could not confirm) the copies are
/// identical, so a consumer can deduplicate by id.
pub fn assert_every_impression_scored_once_or_identically(
    scores: &[serde_json::Value],
    impressions: u64,
) {
    let mut by_id: HashMap<&str, &serde_json::Value> = HashMap::new();
    for s in scores {
        let id = s["id"].as_str().expect("id");
        if let Some(first) = by_id.insert(id, s) {
            assert_eq!(first, s, "two different scores for {id}");
        }
    }
    let distinct: Vec<serde_json::Value> = by_id.into_values().cloned().collect();
    assert_one_valid_score_per_impression(&distinct, impressions);
}

/// A free TCP port on 127.0.0.1 (free a moment ago: bind, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET of `path` on `addr`: the status and body, or `None` when nothing
/// answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// A scrape of `/metrics`: the sum of a metric over its label sets, or of those whose
/// labels contain `labels` (e.g. `type="click"`).
pub struct Scrape(pub String);

impl Scrape {
    /// Scrapes `addr`, failing the test unless it answers 200.
    pub fn take(addr: &str) -> Self {
        let (status, body) = http_get(addr, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        Self(body)
    }

    /// The sum over the series of `name` whose labels contain `labels` (`None`: no
    /// such series).
    pub fn sum(&self, name: &str, labels: &str) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            if series_name == name && series_labels.contains(labels) {
                let value: f64 = value.parse().expect("a number");
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// [`sum`](Self::sum), failing the test when the metric is absent.
    pub fn get(&self, name: &str, labels: &str) -> f64 {
        self.sum(name, labels)
            .unwrap_or_else(|| panic!("{name}{{{labels}}} not in\n{}", self.0))
    }
}

/// Checks what a worker exports once it has read `events` events with `impressions`
/// impressions and `bad` bad ones, and the producer has stopped: counts, the label join,
/// the model, progressive metrics, histograms, lag back to zero.
pub fn assert_metrics_after(scrape: &Scrape, events: u64, impressions: u64, bad: u64) {
    let m = |name: &str| scrape.get(name, "");
    assert_eq!(
        m("ctrflow_events_total") as u64 + m("ctrflow_bad_events_total") as u64,
        events + bad
    );
    assert_eq!(
        scrape.get("ctrflow_events_total", "type=\"impression\"") as u64,
        impressions
    );
    assert!(scrape.get("ctrflow_events_total", "type=\"click\"") > 0.0);
    assert_eq!(
        scrape.get("ctrflow_bad_events_total", "reason=\"malformed_json\"") as u64,
        bad,
        "{}",
        scrape.0
    );
    // Live, an impression is scored once every partition moved past it: nearly all are.
    let scores = m("ctrflow_scores_total");
    assert!(
        scores > 0.9 * impressions as f64 && scores <= impressions as f64,
        "{scores}"
    );
    assert!(scrape.get("ctrflow_label_join_total", "outcome=\"positive_click\"") > 0.0);
    assert!(scrape.get("ctrflow_label_join_total", "outcome=\"negative_fast_skip\"") > 0.0);
    assert!(m("ctrflow_model_version") > 0.0);
    assert!(m("ctrflow_model_nonzero_weights") > 10.0);
    let logloss = scrape.get("ctrflow_progressive_logloss", "window=\"all\"");
    assert!(logloss > 0.01 && logloss < 0.69, "logloss {logloss}");
    let auc = scrape.get("ctrflow_progressive_auc", "window=\"recent\"");
    assert!(auc > 0.5 && auc <= 1.0, "AUC {auc}");
    assert!(scrape.get("ctrflow_progressive_calibration", "window=\"all\"") > 0.0);
    assert_eq!(m("ctrflow_consumer_lag_messages"), 0.0, "{}", scrape.0);
    let latency = m("ctrflow_event_to_score_latency_seconds_count");
    assert!(
        latency > 0.9 * impressions as f64,
        "latency observations {latency}"
    );
    assert!(m("ctrflow_event_to_score_latency_seconds_sum") > 0.0);
    assert!(scrape.get("ctrflow_stage_duration_seconds_count", "stage=\"ingest\"") > 0.0);
    assert!(scrape.get("ctrflow_stage_duration_seconds_sum", "stage=\"dataflow\"") > 0.0);
    assert_eq!(m("ctrflow_ready"), 1.0);
}

/// Settings under which a stream of a few thousand impressions (minutes of event time)
/// already gives every drift detector's statistic and the metrics records: short
/// attribution window, small data-drift slices, 10 s metrics intervals.
pub const SMALL_DRIFT: &str = r#"
[label]
window_ms = 60000
[drift.data]
slice_impressions = 500
recent_slices = 4
reference_slices = 4
"#;

/// Whether a scrape shows what the drift detectors and the durable state export (see
/// [`assert_drift_and_state_metrics`]).
pub fn has_drift_and_state_metrics(scrape: &Scrape) -> bool {
    scrape
        .sum("ctrflow_drift_statistic", "detector=\"psi\"")
        .is_some()
        && scrape
            .sum("ctrflow_drift_statistic", "detector=\"adwin\"")
            .is_some()
        && scrape.sum("ctrflow_state_size_bytes", "").unwrap_or(0.0) > 0.0
}

/// Checks the drift and state metrics of a worker run with [`SMALL_DRIFT`] and a state
/// directory, on a stationary stream: every alert kind exported and quiet, each
/// detector's statistic beside its threshold, the state's size per table.
pub fn assert_drift_and_state_metrics(scrape: &Scrape) {
    for kind in ["concept_drift", "data_drift", "calibration", "label_delay"] {
        assert_eq!(
            scrape.sum("ctrflow_alerts_firing", &format!("kind=\"{kind}\"")),
            Some(0.0),
            "{kind}: {}",
            scrape.0
        );
    }
    assert_eq!(scrape.sum("ctrflow_alerts_total", ""), None, "no alerts");
    for (detector, metric) in [
        ("adwin", "relative_logloss"),
        ("psi", "ctx.country"),
        ("js", "ctx.device"),
    ] {
        let labels = format!("detector=\"{detector}\",metric=\"{metric}\"");
        let value = scrape.get("ctrflow_drift_statistic", &labels);
        assert!(value.is_finite(), "{labels}: {value}");
    }
    let psi = scrape.get(
        "ctrflow_drift_statistic",
        "detector=\"psi\",metric=\"ctx.country\"",
    );
    let threshold = scrape.get(
        "ctrflow_drift_threshold",
        "detector=\"psi\",metric=\"ctx.country\"",
    );
    assert!(
        (0.0..threshold).contains(&psi),
        "PSI {psi}, threshold {threshold}"
    );
    let min_shift = scrape.get(
        "ctrflow_drift_threshold",
        "detector=\"adwin\",metric=\"relative_logloss\"",
    );
    assert_eq!(min_shift, 0.01);
    for table in ["model", "offsets"] {
        let bytes = scrape.sum("ctrflow_state_size_bytes", &format!("table=\"{table}\""));
        assert!(bytes.is_some_and(|b| b > 0.0), "{table}: {}", scrape.0);
    }
}

/// Waits (at most `timeout`) until `check` holds of a scrape of `addr`; returns that
/// scrape, or fails the test with the last one.
pub fn scrape_until(addr: &str, timeout: Duration, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let scrape = Scrape::take(addr);
        if check(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; last scrape:\n{}",
            scrape.0
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (at most `timeout`) until `/readyz` on `addr` answers 200.
pub fn wait_ready(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while http_get(addr, "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(
            Instant::now() < deadline,
            "{addr}/readyz never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produces `impressions` generated impressions (and their feedback, seeded by `seed`) to
/// `topic`, at `rate` messages per second or as fast as possible.
pub fn generate_into(
    brokers: &str,
    topic: &str,
    impressions: u64,
    seed: u64,
    rate: Option<f64>,
) -> ctrflow::generator::GenStats {
    generate_config_into(
        brokers,
        topic,
        &GenConfig {
            count: impressions,
            seed,
            ..GenConfig::default()
        },
        rate,
    )
}

/// Produces what `config` generates to `topic`, at `rate` messages per second or as fast
/// as possible.
pub fn generate_config_into(
    brokers: &str,
    topic: &str,
    config: &GenConfig,
    rate: Option<f64>,
) -> ctrflow::generator::GenStats {
    let target = KafkaTarget {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
    };
    produce(
        config,
        &target,
        rate,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("producing generated events")
}

/// [`generate_into`] by a producer that waits up to `patience` for its last deliveries
/// (instead of `kafka.producer.flush_timeout_ms`' default), for tests whose broker may be
/// down for a while.
pub fn generate_into_patiently(
    brokers: &str,
    topic: &str,
    impressions: u64,
    seed: u64,
    rate: Option<f64>,
    patience: Duration,
) -> ctrflow::generator::GenStats {
    let mut kafka = KafkaConfig {
        brokers: brokers.to_owned(),
        ..KafkaConfig::default()
    };
    kafka.producer.flush_timeout_ms = patience.as_millis() as u64;
    let config = GenConfig {
        count: impressions,
        seed,
        ..GenConfig::default()
    };
    produce_paced(
        &config,
        &kafka,
        topic,
        rate,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
        &|_| (),
    )
    .expect("producing generated events")
}
