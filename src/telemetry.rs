//! Operating a worker: Prometheus metrics, `/healthz` and `/readyz` over HTTP, and logs.
//!
//! # Metrics
//!
//! `ctrflow run` installs a [`metrics`] recorder that renders the Prometheus text format
//! ([`metrics_exporter_prometheus`]) and serves it with [`tiny_http`] on
//! `telemetry.listen` (127.0.0.1 by default): `/metrics`, `/healthz` (the process is alive)
//! and `/readyz` (every worker is consuming, and checkpointing is healthy: see
//! [`Health::set_checkpointing`]). The exporter's own listener serves metrics on every
//! path and cannot answer health checks, hence the small server here.
//!
//! Nothing on the hot path touches the recorder per event: workers count in plain
//! variables, add them to shared atomics once per poll round or publish tick, and
//! [`publish`] turns a [`Snapshot`] of those counters into metrics every
//! `telemetry.publish_interval_ms`. The two histograms are observed once per poll round.
//! [`METRICS`] lists every name with its help text; the dashboard and the alerting rules
//! in `configs/` use these names (a test checks it).
//!
//! # Drift and state
//!
//! The drift detectors run on worker 0 ([`crate::timeline`]): `ctrflow_alerts_firing{kind}`
//! (open episodes) and `ctrflow_alerts_total{kind,state,severity}` follow each alert as it
//! is raised; `ctrflow_drift_statistic{detector,metric}` and `ctrflow_drift_threshold`
//! are refreshed once per `telemetry.metrics_interval_ms` of event time.
//! `ctrflow_state_size_bytes{table}` is read from RocksDB at each checkpoint.
//!
//! # Logs
//!
//! [`init_logging`]: `tracing` to stderr, human-readable or one JSON object per line;
//! `RUST_LOG` filters (default `info`). Nothing logs per event at `info`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use anyhow::Context;
use ctrflow_dataflows::operators::{JoinStats, SpillStats};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

use crate::progressive::Summary;

/// Metrics, health endpoints and logs (`[telemetry]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`; empty: none.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How often the worker's counters are published as metrics.
    #[serde(default = "default_publish_interval_ms")]
    pub publish_interval_ms: u64,
    /// JSON Lines file the worker appends the metrics over time to (one record per
    /// `metrics_interval_ms` of event time; `ctrflow report` plots it); empty: none.
    /// `replay --metrics-out FILE` overrides it.
    #[serde(default)]
    pub metrics_out: String,
    /// Event time per metrics record, milliseconds.
    #[serde(default = "default_metrics_interval_ms")]
    pub metrics_interval_ms: u64,
}

const fn default_metrics_interval_ms() -> u64 {
    60_000
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

const fn default_publish_interval_ms() -> u64 {
    1000
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            publish_interval_ms: default_publish_interval_ms(),
            metrics_out: String::new(),
            metrics_interval_ms: default_metrics_interval_ms(),
        }
    }
}

impl TelemetryConfig {
    /// Appends every problem, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "telemetry.listen must be an IP address and port such as \"127.0.0.1:9464\" (or \"\" for no server), got {:?}",
                self.listen
            ));
        }
        if !(100..=60_000).contains(&self.publish_interval_ms) {
            problems.push(format!(
                "telemetry.publish_interval_ms must be in 100..=60000, got {}",
                self.publish_interval_ms
            ));
        }
        if self.metrics_interval_ms < 1000 {
            problems.push(format!(
                "telemetry.metrics_interval_ms must be at least 1000 (one record per second of event time), got {}",
                self.metrics_interval_ms
            ));
        }
    }
}

/// What a metric is, for its `# TYPE` line and for checking dashboards against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Event-to-score latency (histogram, seconds).
pub const LATENCY: &str = "ctrflow_event_to_score_latency_seconds";
/// Time per poll round in each stage (histogram, seconds).
pub const STAGE: &str = "ctrflow_stage_duration_seconds";

/// Every metric `ctrflow run` exports: name, kind, help.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "ctrflow_events_total",
        Kind::Counter,
        "Valid events read, by type (impression, click, like, skip).",
    ),
    (
        "ctrflow_bad_events_total",
        Kind::Counter,
        "Bad events sent to the dead-letter topic, by reason.",
    ),
    (
        "ctrflow_scores_total",
        Kind::Counter,
        "Scores handed to the producer (one per impression).",
    ),
    (
        "ctrflow_send_errors_total",
        Kind::Counter,
        "Scores, dead letters or examples the producer refused to queue.",
    ),
    (
        "ctrflow_deliveries_total",
        Kind::Counter,
        "Produced messages by outcome: delivered, or failed (and sent again).",
    ),
    (
        "ctrflow_consumer_lag_messages",
        Kind::Gauge,
        "Messages behind the high watermark, per partition of the events topic.",
    ),
    (
        "ctrflow_watermark_timestamp_seconds",
        Kind::Gauge,
        "Event-time watermark of the slowest worker, as a Unix timestamp.",
    ),
    (
        LATENCY,
        Kind::Histogram,
        "From reading an impression to handing its score to the producer (observed per 2 ms of poll rounds, weighted by impressions; includes the wait for every partition's watermark to pass it).",
    ),
    (
        STAGE,
        Kind::Histogram,
        "Time per poll round by stage: ingest (poll, decode, hash), dataflow (score, join, learn, produce, and waiting for the dataflow when reading ahead), commit.",
    ),
    (
        "ctrflow_label_join_total",
        Kind::Counter,
        "Label-join outcomes: positive_click, positive_like, negative_fast_skip, negative_expired, provisional_negative, slow_skip, late_feedback, orphan_feedback, duplicate_feedback, late_impression, duplicate_impression.",
    ),
    (
        "ctrflow_pending_stub_chunks_spilled_total",
        Kind::Counter,
        "Chunks of pending impressions' stubs (4,096 each) that left memory over label.pending_stubs_memory_mb, since the process started.",
    ),
    (
        "ctrflow_pending_stub_chunks_loaded_total",
        Kind::Counter,
        "Chunks of stubs read back into memory from the store, since the process started.",
    ),
    (
        "ctrflow_pending_stub_chunks_in_memory",
        Kind::Gauge,
        "Chunks of stubs in memory (peak=\"true\": the most at once since the process started, restore included).",
    ),
    (
        "ctrflow_model_version",
        Kind::Gauge,
        "Model updates published by all workers.",
    ),
    (
        "ctrflow_model_nonzero_weights",
        Kind::Gauge,
        "Non-zero model weights, bias included.",
    ),
    (
        "ctrflow_progressive_examples",
        Kind::Gauge,
        "Examples in the progressive metrics (window=all: since start; window=recent: the sliding window).",
    ),
    (
        "ctrflow_progressive_logloss",
        Kind::Gauge,
        "Progressive log loss in nats (scored before learned from).",
    ),
    (
        "ctrflow_progressive_normalized_entropy",
        Kind::Gauge,
        "Progressive log loss over the entropy of the observed CTR (1 = no better than the base rate).",
    ),
    ("ctrflow_progressive_auc", Kind::Gauge, "Progressive AUC."),
    (
        "ctrflow_progressive_calibration",
        Kind::Gauge,
        "Mean prediction over observed CTR (1 = calibrated).",
    ),
    (
        "ctrflow_progressive_ctr",
        Kind::Gauge,
        "Observed click-through rate.",
    ),
    ("ctrflow_workers", Kind::Gauge, "Timely worker threads."),
    (
        "ctrflow_checkpoint_duration_seconds",
        Kind::Histogram,
        "How long reading was paused for a checkpoint: waiting for nothing in flight, writing the batch, syncing, copying.",
    ),
    (
        "ctrflow_checkpoint_size_bytes",
        Kind::Gauge,
        "Bytes of keys and values the last checkpoint wrote (changed state only).",
    ),
    (
        "ctrflow_checkpoints_total",
        Kind::Counter,
        "Checkpoints by outcome: ok, or failed (the previous one stands).",
    ),
    (
        "ctrflow_state_size_bytes",
        Kind::Gauge,
        "Bytes of the durable state per table (RocksDB SST files plus memtables), as of the last checkpoint.",
    ),
    (
        "ctrflow_alerts_firing",
        Kind::Gauge,
        "Drift alert episodes open (fired, not yet resolved) by kind.",
    ),
    (
        "ctrflow_alerts_total",
        Kind::Counter,
        "Drift alerts raised by kind, state (firing, resolved) and severity.",
    ),
    (
        "ctrflow_drift_statistic",
        Kind::Gauge,
        "Each drift detector's statistic at the last metrics interval (telemetry.metrics_interval_ms of event time).",
    ),
    (
        "ctrflow_drift_threshold",
        Kind::Gauge,
        "The threshold each drift detector's statistic alerts at.",
    ),
    (
        "ctrflow_ready",
        Kind::Gauge,
        "1 while /readyz answers 200 (consuming, checkpoints healthy).",
    ),
];

/// Names reserved for components still being built (see the module doc); the dashboard
/// and alerting rules may already use them. None at the moment.
pub const RESERVED: &[&str] = &[];

/// Bucket bounds of every `*_seconds` histogram: 100 µs to 60 s.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The process-wide Prometheus recorder, installed on first use: later calls return the
/// same handle (a process has one global recorder; tests may start several workers).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = builder()?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The recorder's configuration: real histograms (buckets) for `*_seconds`.
pub fn builder() -> anyhow::Result<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
        .context("histogram buckets")
}

/// Registers the help text of every metric in [`METRICS`] with the current recorder.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
}

/// A worker process's counters at one moment, as [`publish`] exports them. Counters are
/// totals since the start (exported with `absolute`, so publishing is idempotent).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Timely workers.
    pub workers: usize,
    /// Valid events by type.
    pub events_by_type: [(&'static str, u64); 4],
    /// Bad events by reason.
    pub bad_by_reason: BTreeMap<&'static str, u64>,
    /// Scores handed to the producer.
    pub scores: u64,
    /// Sends the producer refused.
    pub send_errors: u64,
    /// Messages the broker acknowledged.
    pub delivered: u64,
    /// Deliveries that failed (and were sent again).
    pub failed_deliveries: u64,
    /// The events topic.
    pub topic: String,
    /// Lag per partition, where known.
    pub lag: Vec<(i32, i64)>,
    /// The slowest worker's watermark, epoch ms.
    pub watermark_ms: u64,
    /// Label-join counters of all workers.
    pub join: JoinStats,
    /// Pending impressions in memory and out of it, all workers.
    pub pending: SpillStats,
    /// Model updates published.
    pub model_version: u64,
    /// Non-zero weights (`None`: not computed this time; it scans every coordinate).
    pub nonzero_weights: Option<usize>,
    /// Progressive metrics since the start.
    pub overall: Summary,
    /// Over the sliding window.
    pub recent: Summary,
    /// Whether `/readyz` says ready.
    pub ready: bool,
    /// Alerts and detector statistics, when `[drift]` is enabled.
    pub drift: Option<crate::timeline::DriftMetrics>,
}

/// Exports `s` to the current recorder (the global one, or a local one in tests).
pub fn publish(s: &Snapshot) {
    gauge!("ctrflow_workers").set(s.workers as f64);
    for &(kind, n) in &s.events_by_type {
        counter!("ctrflow_events_total", "type" => kind).absolute(n);
    }
    for (&reason, &n) in &s.bad_by_reason {
        counter!("ctrflow_bad_events_total", "reason" => reason).absolute(n);
    }
    counter!("ctrflow_scores_total").absolute(s.scores);
    counter!("ctrflow_send_errors_total").absolute(s.send_errors);
    counter!("ctrflow_deliveries_total", "outcome" => "delivered").absolute(s.delivered);
    counter!("ctrflow_deliveries_total", "outcome" => "failed").absolute(s.failed_deliveries);
    for &(partition, lag) in &s.lag {
        gauge!(
            "ctrflow_consumer_lag_messages",
            "topic" => s.topic.clone(),
            "partition" => partition.to_string()
        )
        .set(lag as f64);
    }
    gauge!("ctrflow_watermark_timestamp_seconds").set(s.watermark_ms as f64 / 1000.0);
    let j = &s.join;
    for (outcome, n) in [
        ("positive_click", j.positive_click),
        ("positive_like", j.positive_like),
        ("negative_fast_skip", j.negative_fast_skip),
        ("negative_expired", j.negative_expired),
        ("provisional_negative", j.provisional_negatives),
        ("slow_skip", j.slow_skip),
        ("late_feedback", j.late_feedback),
        ("orphan_feedback", j.orphan_feedback),
        ("duplicate_feedback", j.duplicate_feedback),
        ("late_impression", j.late_impressions),
        ("duplicate_impression", j.duplicate_impressions),
    ] {
        counter!("ctrflow_label_join_total", "outcome" => outcome).absolute(n);
    }
    let p = &s.pending;
    counter!("ctrflow_pending_stub_chunks_spilled_total").absolute(p.chunks_spilled);
    counter!("ctrflow_pending_stub_chunks_loaded_total").absolute(p.chunks_read_back);
    gauge!("ctrflow_pending_stub_chunks_in_memory").set(p.chunks_in_memory as f64);
    gauge!("ctrflow_pending_stub_chunks_in_memory", "peak" => "true")
        .set(p.peak_chunks_in_memory as f64);
    gauge!("ctrflow_model_version").set(s.model_version as f64);
    if let Some(n) = s.nonzero_weights {
        gauge!("ctrflow_model_nonzero_weights").set(n as f64);
    }
    for (window, m) in [("all", &s.overall), ("recent", &s.recent)] {
        gauge!("ctrflow_progressive_examples", "window" => window).set(m.count as f64);
        for (name, value) in [
            ("ctrflow_progressive_logloss", m.logloss),
            (
                "ctrflow_progressive_normalized_entropy",
                m.normalized_entropy,
            ),
            ("ctrflow_progressive_auc", m.auc),
            ("ctrflow_progressive_calibration", m.calibration),
            ("ctrflow_progressive_ctr", m.ctr),
        ] {
            // An undefined metric (no examples yet, one class only) is left out rather
            // than exported as a number that would read as a real value.
            if let Some(v) = value {
                gauge!(name, "window" => window).set(v);
            }
        }
    }
    gauge!("ctrflow_ready").set(if s.ready { 1.0 } else { 0.0 });
    if let Some(d) = &s.drift {
        for &(kind, open) in &d.firing {
            gauge!("ctrflow_alerts_firing", "kind" => kind).set(open as f64);
        }
        for (&(kind, state, severity), &n) in &d.alerts_total {
            counter!("ctrflow_alerts_total", "kind" => kind, "state" => state, "severity" => severity)
                .absolute(n);
        }
        for stat in &d.stats {
            let labels = [
                ("detector", stat.detector.to_string()),
                ("metric", stat.metric.to_string()),
            ];
            gauge!("ctrflow_drift_statistic", &labels).set(stat.value);
            if let Some(t) = stat.threshold {
                gauge!("ctrflow_drift_threshold", &labels).set(t);
            }
        }
    }
}

/// What `/readyz` reports. `/healthz` needs nothing: answering is being alive.
#[derive(Debug)]
pub struct Health {
    consuming: AtomicBool,
    checkpointing: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consuming: AtomicBool::new(false),
            checkpointing: AtomicBool::new(true),
        }
    }
}

impl Health {
    /// Every worker has its partitions and reads (set by `run`).
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// Hook for checkpoints (`[state]`): set false when the last checkpoint failed or is
    /// overdue, true once one succeeds. Healthy until someone says otherwise.
    pub fn set_checkpointing(&self, healthy: bool) {
        self.checkpointing.store(healthy, Ordering::Relaxed);
    }

    /// `Ok` when ready to be sent traffic, or why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.consuming.load(Ordering::Relaxed) {
            Err("not consuming: starting, stopping, or a worker has no assignment yet")
        } else if !self.checkpointing.load(Ordering::Relaxed) {
            Err("checkpoints failing or overdue")
        } else {
            Ok(())
        }
    }
}

/// The HTTP server for `/metrics`, `/healthz` and `/readyz`; stops when dropped.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Serves `handle` and `health` on `listen` from a thread of its own.
    pub fn start(
        listen: &str,
        handle: PrometheusHandle,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let server = tiny_http::Server::http(listen).map_err(|e| {
            anyhow::anyhow!("telemetry.listen: cannot listen on {listen}: {e} (another process on that port? set telemetry.listen to a free address, or \"\" for no server)")
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("telemetry.listen is not an IP address")?;
        let server = Arc::new(server);
        let thread = {
            let server = Arc::clone(&server);
            std::thread::Builder::new()
                .name("ctrflow-http".to_owned())
                .spawn(move || serve(&server, &handle, &health))
                .context("starting the telemetry thread")?
        };
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
        Ok(Self {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, handle: &PrometheusHandle, health: &Health) {
    use tiny_http::{Header, Method, Response};
    let text = |ct: &'static str| {
        Header::from_bytes(&b"Content-Type"[..], ct.as_bytes()).expect("a valid header")
    };
    // `recv` fails once `unblock` is called: the server is being dropped.
    while let Ok(request) = server.recv() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = match (request.method(), path) {
            (Method::Get, "/metrics") => {
                handle.run_upkeep();
                Response::from_string(handle.render())
                    .with_header(text("text/plain; version=0.0.4; charset=utf-8"))
            }
            (Method::Get, "/healthz") => Response::from_string("ok\n"),
            (Method::Get, "/readyz") => match health.ready() {
                Ok(()) => Response::from_string("ready\n"),
                Err(why) => {
                    Response::from_string(format!("not ready: {why}\n")).with_status_code(503)
                }
            },
            (Method::Get, _) => {
                Response::from_string("not found: try /metrics, /healthz or /readyz\n")
                    .with_status_code(404)
            }
            _ => Response::from_string("method not allowed\n").with_status_code(405),
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!(%error, "A telemetry client went away.");
        }
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per message.
    #[default]
    Human,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

/// Logs to stderr in `format`; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(snapshot: &Snapshot) -> String {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            publish(snapshot);
        });
        handle.render()
    }

    #[test]
    fn a_snapshot_renders_prometheus_names_labels_and_values() {
        let mut s = Snapshot {
            workers: 2,
            events_by_type: [("impression", 10), ("click", 3), ("like", 1), ("skip", 2)],
            scores: 10,
            topic: "events".to_owned(),
            lag: vec![(0, 5), (1, 0)],
            model_version: 42,
            nonzero_weights: Some(7),
            ready: true,
            ..Snapshot::default()
        };
        s.bad_by_reason.insert("not_json", 4);
        s.join.positive_click = 3;
        s.pending.chunks_spilled = 6;
        s.pending.peak_chunks_in_memory = 4;
        s.overall.count = 9;
        s.overall.logloss = Some(0.25);
        let text = render(&s);
        for line in [
            "ctrflow_events_total{type=\"impression\"} 10",
            "ctrflow_events_total{type=\"click\"} 3",
            "ctrflow_bad_events_total{reason=\"not_json\"} 4",
            "ctrflow_scores_total 10",
            "ctrflow_consumer_lag_messages{topic=\"events\",partition=\"0\"} 5",
            "ctrflow_label_join_total{outcome=\"positive_click\"} 3",
            "ctrflow_pending_stub_chunks_spilled_total 6",
            "ctrflow_pending_stub_chunks_in_memory{peak=\"true\"} 4",
            "ctrflow_model_version 42",
            "ctrflow_model_nonzero_weights 7",
            "ctrflow_progressive_logloss{window=\"all\"} 0.25",
            "ctrflow_ready 1",
            "# TYPE ctrflow_events_total counter",
            "# HELP ctrflow_scores_total Scores handed to the producer",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // Undefined metrics are absent, not zero.
        assert!(!text.contains("ctrflow_progressive_auc"), "{text}");
    }

    #[test]
    fn seconds_histograms_have_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            counter!("ctrflow_scores_total").absolute(10);
            metrics::histogram!(LATENCY).record_many(0.003, 5);
        });
        handle.run_upkeep();
        let text = handle.render();
        assert!(
            text.contains("ctrflow_event_to_score_latency_seconds_bucket{le=\"0.005\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("ctrflow_event_to_score_latency_seconds_count 5"),
            "{text}"
        );
    }

    #[test]
    fn the_server_answers_metrics_health_and_readiness() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || counter!("ctrflow_scores_total").absolute(3));
        let health = Arc::new(Health::default());
        let server = Server::start("127.0.0.1:0", handle, Arc::clone(&health)).unwrap();
        let get = |path: &str| http_get(server.addr(), path);
        assert_eq!(get("/healthz").0, 200);
        let (status, body) = get("/readyz");
        assert_eq!(status, 503, "{body}");
        health.set_consuming(true);
        assert_eq!(get("/readyz").0, 200);
        health.set_checkpointing(false);
        assert!(get("/readyz").1.contains("checkpoints"));
        let (status, body) = get("/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("ctrflow_scores_total 3"), "{body}");
        assert_eq!(get("/nope").0, 404);
        drop(server);
    }

    /// A minimal HTTP/1.0 GET: status and body.
    fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }

    #[test]
    fn listen_must_be_an_address() {
        let mut problems = Vec::new();
        TelemetryConfig {
            listen: "localhost".to_owned(),
            publish_interval_ms: 5,
            metrics_out: String::new(),
            metrics_interval_ms: 10,
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("telemetry.listen"));
        assert!(problems[1].contains("telemetry.publish_interval_ms"));
        assert!(problems[2].contains("telemetry.metrics_interval_ms"));
    }
}
