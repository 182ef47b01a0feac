//! `ctrflow run`: the long-running worker — Kafka `events` in, `scores` and `dead-letters`
//! out, through the same learning dataflow as `replay` ([`crate::pipeline`]).
//!
//! # Event time across partitions and workers
//!
//! Each worker reads its share of the partitions ([`KafkaSource`]) and sends records at
//! its watermark: the oldest newest event time among its active partitions, minus
//! `input.allowed_lateness_ms`. A partition that the client's statistics have reported
//! caught up, with no message since, for `kafka.consumer.idle_timeout_ms` stops holding it
//! back; a worker whose partitions are
//! all idle (or that has none) follows the slowest worker still reading, so a quiet worker
//! never stalls the others; when all are idle, the watermark follows the newest event time
//! read. An impression is therefore scored once every partition has moved past it (plus
//! the allowed lateness), or at the latest when the worker stops.
//!
//! # Reading ahead
//!
//! A worker reads at most `MAX_ROUNDS_AHEAD` (4) poll rounds ahead of what the dataflow has
//! processed. That bounds memory when a backlog is read faster than it is learned, and how
//! far one worker's learning can run ahead, in event time, of another worker's scoring
//! (workers share the model): unbounded, a 2-worker catch-up scored `imp-2` with 41,984
//! updates already learned; bounded, the earliest impressions of a 66k backlog see at most
//! ~5k, and a 2-worker live run matches a 2-worker replay of the same events (logloss
//! 0.16329 vs 0.16330, calibration 1.020 vs 1.019).
//!
//! # Shutdown
//!
//! On SIGINT/SIGTERM (or [`RunOptions::stop`]) every worker stops reading; once all have,
//! they advance to just past the newest event time read, so every impression read is
//! scored, take a last checkpoint (with `[state]`), commit their positions, and leave.
//! Impressions still waiting for feedback are not expired (that would learn false
//! negatives): with durable state they are in the checkpoint and get their labels after
//! a restart; without, they are lost with the process.
//!
//! # Checkpoints
//!
//! With `state.dir` set, every `state.checkpoint_interval_ms` the workers take a
//! checkpoint together and a restart resumes from the newest one, re-reading Kafka from
//! its offsets: see [`crate::checkpoint`]. Offsets are then committed to the consumer
//! group only at checkpoints (for lag tools); the checkpoint, not the group, says where to
//! resume.
//!
//! # Cluster mode
//!
//! With `--processes P` (see [`crate::cluster`]) the same workers run as one timely
//! computation over P processes: worker indices, partitions and the per-worker watermark,
//! idle and stop flags below are over all `P * N` peers, the other processes' through
//! [`crate::cluster::Link`], and each process keeps a model replica that exchanges deltas
//! with the others. Without it nothing of that is built.
//!
//! # Telemetry
//!
//! Workers keep their counters in plain variables and publish them to [`RunStatus`] once
//! per poll round (event counts) or every `PUBLISH_EVERY` (join counters, lag, metrics);
//! [`run`] exports a [`telemetry::Snapshot`] of it every `telemetry.publish_interval_ms`
//! and serves it on `telemetry.listen` ([`crate::telemetry`]). Event-to-score latency is
//! observed per poll round in two groups: the impressions older than the watermark the
//! round reached (scored by the next step), and the others (scored once the probe passes
//! the newest of them); feedback read with them does not hold them back.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ctrflow_connectors::kafka::{KafkaSink, KafkaSource, SourceTime};
use ctrflow_dataflows::operators::{JoinStats, ScoreOn, SpillStats, Watermark};
use serde::Serialize;

use crate::checkpoint::Checkpointer;
use crate::cluster::{Link, PeerStatus, Topology};
use crate::config::PipelineConfig;
use crate::drift::sinks::AlertSinks;
use crate::entity::EntityStore;
use crate::model::Model;
use crate::pending::PendingSpill;
use crate::pipeline::{self, At, BadEvents, BadSample, Ingest, Restored};
use crate::progressive::{Progressive, Summary};
use crate::telemetry::{self, Health};
use crate::timeline::{DriftMetrics, TimelineOutput};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Pipeline settings (`[kafka]` says where).
    pub config: PipelineConfig,
    /// Timely worker threads.
    pub workers: usize,
    /// Set to stop: read no more, score what was read, flush, return.
    pub stop: Arc<AtomicBool>,
}

/// Live counters of a running worker process, readable from any thread.
#[derive(Debug)]
pub struct RunStatus {
    started: Instant,
    /// Messages read.
    pub events: AtomicU64,
    /// Bad events sent to the dead-letter topic.
    pub bad_events: AtomicU64,
    /// Scores sent.
    pub scores: AtomicU64,
    /// Scores or dead letters the producer refused (logged).
    pub send_errors: AtomicU64,
    /// Newest event time read by any worker (of any process, in a cluster).
    newest_ts: AtomicI64,
    /// Per peer (global worker index; the other processes' as they last reported): it
    /// stopped reading.
    stopped: Vec<AtomicBool>,
    /// Workers of this process that finished.
    finished: AtomicUsize,
    /// Per local worker: messages behind the partitions' high watermarks (-1: unknown).
    lag: Vec<AtomicI64>,
    /// Per peer: the watermark its input stands at.
    watermark: Vec<AtomicU64>,
    /// Per peer: all its partitions are idle (or it has none).
    idle: Vec<AtomicBool>,
    /// Per worker: its latest progressive metrics.
    progressive: Vec<Mutex<Option<Progressive>>>,
    /// Valid events read, by [`EVENT_TYPES`].
    events_by_type: [AtomicU64; 4],
    /// Per worker: bad events by reason, as of its last publish.
    bad_by_reason: Vec<Mutex<BTreeMap<&'static str, u64>>>,
    /// Per worker: label-join counters, as of its last publish.
    join: Vec<Mutex<JoinStats>>,
    /// Per worker: pending impressions in and out of memory, as of its last publish.
    pending: Vec<Mutex<SpillStats>>,
    /// Per worker: lag per partition, as of its last publish.
    partition_lag: Vec<Mutex<PartitionLags>>,
    /// Per local worker: it has completed a poll round.
    polled: Vec<AtomicBool>,
    /// What the drift detectors (worker 0) report to `/metrics`.
    drift: Arc<Mutex<DriftMetrics>>,
    /// Drift alerts raised, in order (few: one per episode and its `resolved`).
    alerts: Mutex<Vec<ctrflow_dataflows::Alert>>,
    /// `alerts.len()`, readable without the lock.
    alerts_raised: AtomicU64,
}

/// Messages behind the high watermark per partition (`None`: not known yet).
type PartitionLags = Vec<(i32, Option<i64>)>;

/// The `type` label of `ctrflow_events_total`, indexed as [`event_type`] says.
const EVENT_TYPES: [&str; 4] = ["impression", "click", "like", "skip"];

/// The index of a record's type in [`EVENT_TYPES`].
fn event_type(kind: &ctrflow_dataflows::InteractionKind) -> usize {
    use ctrflow_dataflows::InteractionKind as K;
    match kind {
        K::Impression { .. } => 0,
        K::Click => 1,
        K::Like => 2,
        K::Skip { .. } => 3,
    }
}

impl RunStatus {
    /// `workers` of this process, `peers` in all.
    fn new(workers: usize, peers: usize) -> Self {
        Self {
            started: Instant::now(),
            events: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
            scores: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            newest_ts: AtomicI64::new(i64::MIN),
            stopped: (0..peers).map(|_| AtomicBool::new(false)).collect(),
            finished: AtomicUsize::new(0),
            lag: (0..workers).map(|_| AtomicI64::new(-1)).collect(),
            watermark: (0..peers).map(|_| AtomicU64::new(0)).collect(),
            idle: (0..peers).map(|_| AtomicBool::new(false)).collect(),
            progressive: (0..workers).map(|_| Mutex::new(None)).collect(),
            events_by_type: Default::default(),
            bad_by_reason: (0..workers).map(|_| Mutex::default()).collect(),
            join: (0..workers).map(|_| Mutex::default()).collect(),
            pending: (0..workers).map(|_| Mutex::default()).collect(),
            partition_lag: (0..workers).map(|_| Mutex::default()).collect(),
            polled: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            drift: Arc::default(),
            alerts: Mutex::default(),
            alerts_raised: AtomicU64::new(0),
        }
    }

    /// Records a drift alert raised (on the detecting worker).
    fn alert(&self, alert: &ctrflow_dataflows::Alert) {
        if let Ok(mut alerts) = self.alerts.lock() {
            alerts.push(alert.clone());
            self.alerts_raised
                .store(alerts.len() as u64, Ordering::Relaxed);
        }
    }

    /// The drift alerts raised after the first `skip`.
    pub fn alerts_after(&self, skip: usize) -> Vec<ctrflow_dataflows::Alert> {
        if self.alerts_raised.load(Ordering::Relaxed) as usize <= skip {
            return Vec::new();
        }
        self.alerts
            .lock()
            .map(|a| a.get(skip..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    /// Counts a message the producer refused; true when it should be logged: the 1st,
    /// 2nd, 4th, 8th, ... so that a persistent failure does not log a line per event
    /// (`ctrflow_send_errors_total` counts them all).
    fn send_failed(&self) -> bool {
        (self.send_errors.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
    }

    /// Every worker is reading: each has completed a poll round and none has stopped.
    pub fn consuming(&self) -> bool {
        !self.any_stopped() && self.polled.iter().all(|p| p.load(Ordering::Relaxed))
    }

    /// Some peer stopped reading (in a cluster, a stop anywhere stops every process).
    fn any_stopped(&self) -> bool {
        self.stopped.iter().any(|s| s.load(Ordering::SeqCst))
    }

    /// Every peer stopped reading: their input times and newest event times are final.
    fn all_stopped(&self) -> bool {
        self.stopped.iter().all(|s| s.load(Ordering::SeqCst))
    }

    /// Records what a worker of another process reported ([`crate::cluster::Link`]).
    fn peer_reported(&self, peer: &PeerStatus) {
        let i = peer.peer as usize;
        let (Some(watermark), Some(idle), Some(stopped)) =
            (self.watermark.get(i), self.idle.get(i), self.stopped.get(i))
        else {
            return;
        };
        watermark.store(peer.watermark, Ordering::SeqCst);
        idle.store(peer.idle, Ordering::SeqCst);
        self.newest_ts.fetch_max(peer.newest, Ordering::SeqCst);
        if peer.stopped {
            stopped.store(true, Ordering::SeqCst);
        }
    }

    /// Where a worker whose partitions are all idle moves its input: along with the
    /// slowest worker that is still reading (it must not hold the others back, nor run
    /// ahead of them: records its partitions get later would be late), or, when every
    /// worker is idle, to the watermark of the newest event time read (the lateness
    /// allowance still applies: producers may deliver older events to other partitions).
    fn idle_target(&self, me: usize, input: &crate::config::InputConfig) -> Option<Watermark> {
        let active = (0..self.idle.len())
            .filter(|&w| w != me && !self.idle[w].load(Ordering::Relaxed))
            .map(|w| self.watermark[w].load(Ordering::Relaxed))
            .min();
        match active {
            Some(w) => Some(w),
            None => {
                let newest = self.newest_ts.load(Ordering::Relaxed);
                (newest != i64::MIN).then(|| input.watermark(newest))
            }
        }
    }

    /// A snapshot for a progress line.
    pub fn snapshot(&self, config: &PipelineConfig) -> Progress {
        let mut merged = pipeline::progressive(config);
        for slot in &self.progressive {
            if let Ok(slot) = slot.lock()
                && let Some(p) = slot.as_ref()
            {
                merged.merge(p);
            }
        }
        let lags: Vec<i64> = self.lag.iter().map(|l| l.load(Ordering::Relaxed)).collect();
        Progress {
            elapsed: self.started.elapsed(),
            events: self.events.load(Ordering::Relaxed),
            bad_events: self.bad_events.load(Ordering::Relaxed),
            scores: self.scores.load(Ordering::Relaxed),
            lag: lags.iter().all(|l| *l >= 0).then(|| lags.iter().sum()),
            watermark: self
                .watermark
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0),
            overall: merged.summary(),
            recent: merged.window_summary(),
            alerts: self.alerts_raised.load(Ordering::Relaxed),
        }
    }
}

/// Where a running worker process stands.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Since the start.
    #[serde(skip)]
    pub elapsed: Duration,
    /// Messages read.
    pub events: u64,
    /// Bad events.
    pub bad_events: u64,
    /// Scores sent.
    pub scores: u64,
    /// Messages behind the end of the input topic, when known.
    pub lag: Option<i64>,
    /// The oldest watermark among the workers (event time, epoch ms).
    pub watermark: u64,
    /// Progressive metrics over all examples.
    pub overall: Summary,
    /// Over the recent window.
    pub recent: Summary,
    /// Drift alerts raised so far (`firing` and `resolved`).
    pub alerts: u64,
}

/// The end-of-run report.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Timely workers used (in this process).
    pub workers: usize,
    /// Processes in the cluster (1 without one); this report covers this process only.
    pub processes: usize,
    /// This process's index in the cluster.
    pub process: usize,
    /// Messages read.
    pub events: u64,
    /// Impressions scored.
    pub impressions: u64,
    /// Labelled examples learned from.
    pub examples: u64,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
    /// Messages read per second.
    pub events_per_sec: f64,
    /// Scores sent.
    pub scores: u64,
    /// Messages the broker acknowledged: scores, dead letters, alerts and examples.
    pub delivered: u64,
    /// Deliveries that failed and were sent again.
    pub failed_deliveries: u64,
    /// Bad events (sent to the dead-letter topic).
    pub bad_events: u64,
    /// Bad events by reason.
    pub bad_events_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// The first bad events with their partition and offset.
    pub bad_event_samples: Vec<BadSample>,
    /// Label-join counters.
    #[serde(flatten)]
    pub join: JoinStats,
    /// Progressive metrics over all examples.
    pub overall: Summary,
    /// Over the recent window.
    pub recent: Summary,
    /// Checkpoints, when state is durable.
    pub checkpoints: Option<crate::checkpoint::CheckpointReport>,
    /// Pending impressions' bodies in memory and out of it (`label.pending_memory_mb`)
    /// at the end, and how many came back from the store.
    pub pending: SpillStats,
    /// Drift alerts raised, in the contract's form, in order.
    pub alerts: Vec<ctrflow_dataflows::Alert>,
}

struct WorkerResult {
    join: JoinStats,
    pending: SpillStats,
    progressive: Progressive,
    bad: BadEvents,
}

/// How long a worker with nothing to do sleeps at most. It wakes earlier when a record or
/// progress arrives from another worker (timely unparks it) or messages arrive from Kafka
/// ([`KafkaSource::wake_on_arrival`]), so this only bounds how late it notices timers (a
/// checkpoint request, the stop flag, idle partitions).
const IDLE_WAIT: Duration = Duration::from_millis(2);

/// Poll rounds a worker may read ahead of what the dataflow has processed.
const MAX_ROUNDS_AHEAD: usize = 4;

/// Poll rounds read this close together are one latency observation.
const LATENCY_GRAIN: Duration = Duration::from_millis(2);

/// Latency observations waiting for their impressions' scores, at most: 32 s of grains
/// (512 KiB per worker when full).
const MAX_UNSCORED_ROUNDS: usize = 16_384;

/// How often a worker publishes its metrics and lag to [`RunStatus`].
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// A running worker process: its status, and the handle to wait for its report.
pub struct Running {
    status: Arc<RunStatus>,
    guards: timely::communication::WorkerGuards<WorkerResult>,
    sink: Arc<KafkaSink>,
    /// Drift alerts go to the log and the webhooks of `[drift]`.
    alerts: Arc<AlertSinks>,
    model: Model,
    config: PipelineConfig,
    topology: Topology,
    workers: usize,
    checkpointer: Option<Arc<Checkpointer>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Connects to Kafka and starts the workers; returns at once.
pub fn start(options: &RunOptions) -> anyhow::Result<Running> {
    start_in(options, &Topology::single(options.workers))
}

/// [`start`] as one process of a cluster (`topology`; `options.workers` is ignored for
/// `topology.workers`). Returns once every process of the cluster is connected.
pub fn start_in(options: &RunOptions, topology: &Topology) -> anyhow::Result<Running> {
    let config = options.config.clone();
    let workers = topology.workers.max(1);
    let (first, peers) = (topology.first(), topology.peers());
    let problems = topology.check(&config);
    if !problems.is_empty() {
        anyhow::bail!(
            "cannot run process {} of {}:\n  - {}",
            topology.process,
            topology.processes,
            problems.join("\n  - ")
        );
    }
    Ingest::new(&config)?;
    let (checkpointer, model, entities, offsets) = if config.state.is_durable() {
        let (checkpointer, resumed) = Checkpointer::open(&config, workers)?;
        match &resumed.recovery {
            ctrflow_state::Recovery::Fresh => {
                tracing::info!(dir = %config.state.dir.display(), "No checkpoint: starting fresh.");
            }
            ctrflow_state::Recovery::Resumed {
                manifest,
                fell_back,
            } => {
                if let Some(reason) = fell_back {
                    tracing::warn!(%reason, "The newest checkpoint is unusable: resuming from an older one.");
                }
                tracing::info!(
                    epoch = manifest.epoch,
                    watermark = manifest.watermark,
                    model_version = manifest.model_version,
                    offsets = ?resumed.offsets,
                    "Resuming from a checkpoint."
                );
            }
        }
        (
            Some(Arc::new(checkpointer)),
            resumed.model,
            resumed.entities,
            resumed.offsets,
        )
    } else {
        let model = Model::from_config(&config.model)?;
        let entities =
            EntityStore::scratch(&config.features.entity, config.features.bits, &config.state)?;
        (None, model, entities, Default::default())
    };
    let mut restored = Vec::with_capacity(workers);
    for worker in 0..workers {
        let state = match &checkpointer {
            Some(c) => c.restore_worker(worker, &config)?,
            None => None,
        };
        restored.push(Mutex::new(state));
    }
    let restored = Arc::new(restored);
    let sink = Arc::new(KafkaSink::new(&config.kafka).context("connecting the producer")?);
    // Sources are created here, not in the workers, so that a bad broker address or a
    // missing topic fails the command before any dataflow exists.
    let mut sources = Vec::with_capacity(workers);
    for worker in 0..workers {
        sources.push(Mutex::new(Some(
            KafkaSource::new(&config.kafka, first + worker, peers, &offsets)
                .context("connecting the consumer")?,
        )));
    }
    let sources = Arc::new(sources);
    let status = Arc::new(RunStatus::new(workers, peers));
    let alerts = Arc::new(AlertSinks::start(&config.drift));
    // Worker 0 runs the detectors and keeps the metrics over time: records appended to
    // `telemetry.metrics_out` (a restart adds to them), drift metrics for `/metrics`.
    let telemetry_config = &config.telemetry;
    let records = !telemetry_config.metrics_out.is_empty();
    let timeline = if records || config.drift.enabled {
        let mut output = if records {
            TimelineOutput::append(
                Path::new(&telemetry_config.metrics_out),
                telemetry_config.metrics_interval_ms,
            )
            .context("telemetry.metrics_out")?
        } else {
            TimelineOutput {
                interval_ms: telemetry_config.metrics_interval_ms,
                ..TimelineOutput::default()
            }
        };
        output.metrics = Some(Arc::clone(&status.drift));
        Some(output)
    } else {
        None
    };
    let timeline = Mutex::new(timeline);
    // Where pending impressions beyond `label.pending_memory_mb` go: the checkpointed store,
    // or a scratch store without durable state.
    let pending = match &checkpointer {
        Some(c) => PendingSpill::checkpoints(c.store().clone()),
        None => PendingSpill::scratch(&config.state)?,
    };
    let alerts_topic = alerts_topic(&config, &sink);
    // In a cluster, updates mark the model pages they change, for the delta exchange
    // (before any worker learns; one process marks nothing).
    if let (true, Model::Ftrl(m)) = (topology.is_cluster(), &model) {
        m.track_changes();
    }
    let response = crate::drift::response::Response::new(&config.drift.response, &model);
    if let Some(c) = &checkpointer {
        c.resume_response(response.as_ref())?;
    }
    let guards = {
        let config = config.clone();
        let checkpointer = checkpointer.clone();
        let status = Arc::clone(&status);
        let sink = Arc::clone(&sink);
        let alerts = Arc::clone(&alerts);
        let stop = Arc::clone(&options.stop);
        let model = model.clone();
        let topology = topology.clone();
        if topology.is_cluster() {
            tracing::info!(
                process = topology.process,
                processes = topology.processes,
                addresses = ?topology.addresses,
                "Connecting to the other processes of the cluster."
            );
        }
        timely::execute(topology.timely_config(), move |worker| {
            let local = worker.index() - topology.first();
            let source = sources[local]
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .expect("one source per worker");
            let restored = restored[local].lock().ok().and_then(|mut r| r.take());
            let link = topology.is_cluster().then(|| {
                let status = Arc::clone(&status);
                Link::build(worker, &topology, &config, &model, move |peer| {
                    status.peer_reported(peer);
                })
            });
            let shared = Shared {
                model: &model,
                entities: &entities,
                checkpointer: checkpointer.as_deref(),
                sink: &sink,
                status: &status,
                timeline: &timeline,
                response: &response,
                pending: &pending,
                first: topology.first(),
                link,
            };
            let on_alert = {
                let alerts = Arc::clone(&alerts);
                let sink = Arc::clone(&sink);
                let topic = alerts_topic.clone();
                let status = Arc::clone(&status);
                move |alert: &ctrflow_dataflows::Alert| {
                    status.alert(alert);
                    alerts.send(alert);
                    if !topic.is_empty() {
                        let key = crate::drift::sinks::kind_name(alert);
                        let json = serde_json::to_vec(alert).unwrap_or_default();
                        if let Err(error) = sink.send(&topic, Some(key.as_bytes()), &json) {
                            tracing::error!(%error, "A drift alert could not be queued.");
                        }
                    }
                }
            };
            work(worker, source, &config, shared, restored, &stop, on_alert)
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
    };
    Ok(Running {
        status,
        guards,
        sink,
        alerts,
        model,
        config,
        topology: topology.clone(),
        workers,
        checkpointer,
    })
}

/// The topic drift alerts go to: `kafka.topics.alerts` if drift detection is on and the
/// broker knows the topic; otherwise none, with a warning (the alerts still reach the log
/// and the webhooks, and a missing topic must not hold every delivery and the shutdown
/// flush back).
fn alerts_topic(config: &PipelineConfig, sink: &KafkaSink) -> String {
    let topic = &config.kafka.topics.alerts;
    if !config.drift.enabled || topic.is_empty() {
        return String::new();
    }
    match sink.check_topic(topic, Duration::from_secs(10)) {
        Ok(()) => topic.clone(),
        Err(error) => {
            tracing::warn!(
                topic = %topic,
                %error,
                "Drift alerts will not be written to Kafka: create the topic, or set kafka.topics.alerts = \"\" to silence this."
            );
            String::new()
        }
    }
}

impl Running {
    /// Live counters.
    pub fn status(&self) -> &Arc<RunStatus> {
        &self.status
    }

    /// Whether checkpoints are healthy (always, without durable state): see
    /// [`Checkpointer::healthy`].
    pub fn checkpoints_healthy(&self) -> bool {
        self.checkpointer.as_ref().is_none_or(|c| c.healthy())
    }

    /// Whether every worker has returned.
    pub fn is_finished(&self) -> bool {
        self.status.finished.load(Ordering::Relaxed) == self.workers
    }

    /// The counters for [`telemetry::publish`]; `nonzero_weights` scans every model
    /// coordinate, so ask for it sparingly.
    pub fn metrics(&self, nonzero_weights: bool, health: &Health) -> telemetry::Snapshot {
        let status = &self.status;
        let progress = status.snapshot(&self.config);
        let mut s = telemetry::Snapshot {
            workers: self.workers,
            scores: progress.scores,
            send_errors: status.send_errors.load(Ordering::Relaxed),
            topic: self.config.kafka.topics.events.clone(),
            watermark_ms: progress.watermark,
            model_version: self.model.version(),
            nonzero_weights: nonzero_weights.then(|| self.model.nonzero_weights()),
            overall: progress.overall,
            recent: progress.recent,
            ready: health.ready().is_ok(),
            drift: self
                .config
                .drift
                .enabled
                .then(|| status.drift.lock().map(|d| d.clone()).unwrap_or_default()),
            ..telemetry::Snapshot::default()
        };
        for (slot, (name, counter)) in s
            .events_by_type
            .iter_mut()
            .zip(EVENT_TYPES.iter().zip(&status.events_by_type))
        {
            *slot = (name, counter.load(Ordering::Relaxed));
        }
        let stats = self.sink.stats();
        s.delivered = stats.delivered.load(Ordering::Relaxed);
        s.failed_deliveries = stats.failed.load(Ordering::Relaxed);
        for w in 0..self.workers {
            if let Ok(bad) = status.bad_by_reason[w].lock() {
                for (reason, n) in bad.iter() {
                    *s.bad_by_reason.entry(reason).or_default() += n;
                }
            }
            if let Ok(join) = status.join[w].lock() {
                s.join.merge(&join);
            }
            if let Ok(pending) = status.pending[w].lock() {
                s.pending.merge(&pending);
            }
            if let Ok(lag) = status.partition_lag[w].lock() {
                s.lag.extend(lag.iter().filter_map(|&(p, l)| Some((p, l?))));
            }
        }
        s
    }

    /// Waits for the workers, flushes the producer and reports.
    pub fn join(self) -> anyhow::Result<RunReport> {
        let mut join = JoinStats::default();
        let mut pending = SpillStats::default();
        let mut progressive = pipeline::progressive(&self.config);
        let mut bad = BadEvents::default();
        for result in self.guards.join() {
            let result = result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
            join.merge(&result.join);
            pending.merge(&result.pending);
            progressive.merge(&result.progressive);
            bad.merge(result.bad);
        }
        self.sink
            .flush()
            .context("flushing scores and dead letters")?;
        // The workers are joined: this is the last reference.
        if let Ok(alerts) = Arc::try_unwrap(self.alerts) {
            alerts.close();
        }
        let elapsed = self.status.started.elapsed().as_secs_f64().max(1e-9);
        let stats = self.sink.stats();
        let events = self.status.events.load(Ordering::Relaxed);
        Ok(RunReport {
            workers: self.workers,
            processes: self.topology.processes,
            process: self.topology.process,
            events,
            impressions: join.impressions,
            examples: join.examples(),
            elapsed_secs: elapsed,
            events_per_sec: events as f64 / elapsed,
            scores: self.status.scores.load(Ordering::Relaxed),
            delivered: stats.delivered.load(Ordering::Relaxed),
            failed_deliveries: stats.failed.load(Ordering::Relaxed),
            bad_events: bad.count,
            bad_events_by_reason: bad.by_reason,
            bad_event_samples: bad.samples,
            join,
            overall: progressive.summary(),
            recent: progressive.window_summary(),
            checkpoints: self.checkpointer.as_ref().map(|c| c.report()),
            pending,
            alerts: std::mem::take(
                &mut *self.status.alerts.lock().unwrap_or_else(|e| e.into_inner()),
            ),
        })
    }
}

/// How often `run` logs where it stands.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often `run` counts the model's non-zero weights (a scan of every coordinate).
const NONZERO_EVERY: Duration = Duration::from_secs(5);

/// Runs until `options.stop` is set, serving metrics and health on `telemetry.listen` and
/// logging a status line every 10 s, then reports.
pub fn run(options: &RunOptions) -> anyhow::Result<RunReport> {
    run_in(options, &Topology::single(options.workers))
}

/// [`run`] as one process of a cluster ([`start_in`]).
pub fn run_in(options: &RunOptions, topology: &Topology) -> anyhow::Result<RunReport> {
    let health = Arc::new(Health::default());
    let listen = &options.config.telemetry.listen;
    // The recorder is installed before the workers start: they take their histogram
    // handles from it once.
    let server = if listen.is_empty() {
        None
    } else {
        let handle = telemetry::install()?;
        Some(telemetry::Server::start(
            listen,
            handle,
            Arc::clone(&health),
        )?)
    };
    let running = start_in(options, topology)?;
    let publish_every = Duration::from_millis(options.config.telemetry.publish_interval_ms);
    let mut last = Instant::now();
    let mut last_publish: Option<Instant> = None;
    let mut last_nonzero: Option<Instant> = None;
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        health.set_consuming(running.status().consuming());
        health.set_checkpointing(running.checkpoints_healthy());
        if server.is_some() && last_publish.is_none_or(|t| t.elapsed() >= publish_every) {
            last_publish = Some(Instant::now());
            let nonzero = last_nonzero.is_none_or(|t| t.elapsed() >= NONZERO_EVERY);
            if nonzero {
                last_nonzero = Some(Instant::now());
            }
            telemetry::publish(&running.metrics(nonzero, &health));
        }
        if last.elapsed() >= LOG_EVERY {
            last = Instant::now();
            let p = running.status().snapshot(&options.config);
            tracing::info!(
                events = p.events,
                scores = p.scores,
                bad_events = p.bad_events,
                lag = ?p.lag,
                watermark = p.watermark,
                logloss = ?p.overall.logloss,
                auc = ?p.overall.auc,
                "Running."
            );
        }
    }
    health.set_consuming(false);
    let report = running.join();
    // Served until the report is ready: a scrape during shutdown sees /readyz fail.
    drop(server);
    report
}

/// Packs a Kafka position into the dataflow's tie-breaking `pos`: records of one partition
/// keep their order; partitions interleave deterministically.
fn position(partition: i32, offset: i64) -> u64 {
    ((offset.max(0) as u64) << 16) | (partition as u64 & 0xffff)
}

/// The first multiple of `step` above `ts`: a watermark that has passed `ts`.
fn past(ts: i64, step: u64) -> Watermark {
    let step = step.max(1);
    (ts.max(0) as u64 / step + 1) * step
}

/// What the workers of a process share.
struct Shared<'a> {
    model: &'a Model,
    entities: &'a EntityStore,
    checkpointer: Option<&'a Checkpointer>,
    sink: &'a Arc<KafkaSink>,
    status: &'a Arc<RunStatus>,
    /// Taken by worker 0.
    timeline: &'a Mutex<Option<TimelineOutput>>,
    /// The response policy, when `[drift.response]` enables it.
    response: &'a Option<Arc<crate::drift::response::Response>>,
    /// Where pending impressions beyond `label.pending_memory_mb` go.
    pending: &'a PendingSpill,
    /// The global index of the process's first worker (0 without a cluster).
    first: usize,
    /// The worker's end of the cluster dataflow, in a cluster.
    link: Option<Link>,
}

/// One worker: poll, ingest, advance the watermark, step; until told to stop.
fn work(
    worker: &mut timely::worker::Worker,
    mut source: KafkaSource,
    config: &PipelineConfig,
    shared: Shared<'_>,
    restored: Option<Restored>,
    stop: &AtomicBool,
    on_alert: impl FnMut(&ctrflow_dataflows::Alert) + 'static,
) -> WorkerResult {
    let Shared {
        model,
        entities,
        checkpointer,
        sink,
        status,
        timeline,
        response,
        pending,
        first,
        mut link,
    } = shared;
    {
        let me = std::thread::current();
        source.wake_on_arrival(move || me.unpark());
    }
    // Resuming: the input starts where it stood at the checkpoint.
    let resumed_at = restored.as_ref().map(|r| (r.newest, r.input_time));
    // `index` is the global worker index (peers of all processes); `local` indexes this
    // process's slots of `status`.
    let index = worker.index();
    let local = index - first;
    let scores_topic = config.kafka.topics.scores.clone();
    let dead_topic = config.kafka.topics.dead_letters.clone();
    let events_topic = source.topic().to_owned();
    let on_examples = examples_output(config, sink, status);
    let mut dataflow = {
        let sink = Arc::clone(sink);
        let status = Arc::clone(status);
        let mut buf = Vec::with_capacity(256);
        let on_scores = move |batch: &[ctrflow_dataflows::Score]| {
            let emit_ts = pipeline::now_ms();
            for score in batch {
                pipeline::encode_score(score, emit_ts, &mut buf);
                if let Err(error) = sink.send(&scores_topic, Some(score.user.as_bytes()), &buf)
                    && status.send_failed()
                {
                    tracing::error!(%error, id = %score.id, failures = status.send_errors.load(Ordering::Relaxed), "A score could not be queued.");
                }
            }
            status
                .scores
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        };
        let context = pipeline::Context {
            entities: Some(entities),
            restored,
            timeline: if index == 0 {
                timeline.lock().ok().and_then(|mut t| t.take())
            } else {
                None
            },
            response: response.clone(),
        };
        pipeline::build_detecting(
            worker,
            config,
            model,
            context,
            on_scores,
            on_examples,
            on_alert,
        )
    };
    if resumed_at.is_none() {
        // A join restored from a checkpoint already spills to the store it came from.
        dataflow
            .join
            .borrow_mut()
            .spill_to(pending.store.clone(), index as u32, pending.to);
    }
    // Records sent into the dataflow, and checkpoint rounds taken part in.
    let mut sent: u64 = 0;
    let mut rounds_done: u64 = 0;
    let round_due = |done: u64| checkpointer.is_some_and(|c| c.requested() > done);
    let mut ingest = Ingest::new(config)
        .expect("validated before start")
        .sketching(config);
    let mut bad = BadEvents::default();
    let mut dead = Vec::with_capacity(1024);
    let mut newest = i64::MIN;
    if let Some((at_newest, input_time)) = resumed_at {
        newest = at_newest;
        status.newest_ts.fetch_max(newest, Ordering::Relaxed);
        dataflow.advance_to(input_time);
    }
    let step = config.input.watermark_step_ms;
    let on_arrival = config.label.score_on == ScoreOn::Arrival;
    let commit_every = Duration::from_millis(config.kafka.consumer.commit_interval_ms);
    let mut commits: VecDeque<(Watermark, Vec<(i32, i64)>)> = VecDeque::new();
    let mut last_snapshot = Instant::now();
    let mut last_publish = Instant::now();
    let poll_batch = config.kafka.consumer.poll_batch;
    let mut rounds: VecDeque<Watermark> = VecDeque::new();
    // Poll rounds whose impressions are not all scored yet: (scored once the probe passes
    // this, read at, impressions).
    let mut unscored: VecDeque<(Watermark, Instant, usize)> = VecDeque::new();
    // Event times of the impressions of the current poll round.
    let mut impression_ts: Vec<i64> = Vec::with_capacity(poll_batch);
    let latency = metrics::histogram!(telemetry::LATENCY);
    let stage_ingest = metrics::histogram!(telemetry::STAGE, "stage" => "ingest");
    let stage_dataflow = metrics::histogram!(telemetry::STAGE, "stage" => "dataflow");
    let stage_commit = metrics::histogram!(telemetry::STAGE, "stage" => "commit");

    // A stop anywhere in the cluster stops every worker (`any_stopped`).
    while !stop.load(Ordering::Relaxed) && !status.any_stopped() {
        if let Some(c) = checkpointer {
            if index == 0 {
                c.request_if_due();
            }
            if round_due(rounds_done) {
                rounds_done += 1;
                checkpoint_round(
                    worker,
                    &mut dataflow,
                    &source,
                    sink,
                    c,
                    rounds_done,
                    (sent, newest),
                );
            }
        }
        let mut types = [0u64; 4];
        impression_ts.clear();
        let read_at = Instant::now();
        let sent_at = dataflow.time();
        // Never block in the client: waiting happens in `step_or_park` below, which also
        // wakes for other workers' records and progress.
        let read = source.poll(poll_batch, Duration::ZERO, |message| {
            let pos = position(message.partition, message.offset);
            match ingest.send(message.payload, pos, &mut dataflow) {
                Ok(record) => {
                    let ts = record.ts;
                    let kind = event_type(&record.kind);
                    types[kind] += 1;
                    if kind == 0 {
                        impression_ts.push(ts);
                    }
                    newest = newest.max(ts);
                    sent += 1;
                    Some(ts)
                }
                Err(error) => {
                    let at = At::Offset {
                        partition: message.partition,
                        offset: message.offset,
                    };
                    bad.record(at, &error);
                    pipeline::encode_dead_letter(
                        &error,
                        &events_topic,
                        message.partition,
                        message.offset,
                        message.payload,
                        &mut dead,
                    );
                    if let Err(error) = sink.send(&dead_topic, None, &dead)
                        && status.send_failed()
                    {
                            tracing::error!(%error, ?at, failures = status.send_errors.load(Ordering::Relaxed), "A dead letter could not be queued.");
                    }
                    status.bad_events.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        });
        let ingested_at = Instant::now();
        if read > 0 {
            status.events.fetch_add(read as u64, Ordering::Relaxed);
            status.newest_ts.fetch_max(newest, Ordering::Relaxed);
            for (counter, n) in status.events_by_type.iter().zip(types) {
                if n > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
            }
            stage_ingest.record(ingested_at.duration_since(read_at).as_secs_f64());
        }
        status.polled[local].store(true, Ordering::Relaxed);
        let time = source.time();
        let idle = matches!(time, SourceTime::Idle | SourceTime::Unassigned);
        status.idle[index].store(idle, Ordering::Relaxed);
        let target = match time {
            SourceTime::Active(ts) => Some(config.input.watermark(ts)),
            SourceTime::Idle | SourceTime::Unassigned => status.idle_target(index, &config.input),
            SourceTime::Unknown => None,
        };
        for summary in ingest.take_summaries(false) {
            dataflow.send_summary(summary);
        }
        if let Some(t) = target {
            dataflow.advance_to(t);
        }
        // Records sent at a time that did not move (late ones, or a watermark standing
        // still) would otherwise wait in the input's buffer for the next advance.
        dataflow.flush();
        status.watermark[index].store(dataflow.time(), Ordering::Relaxed);
        if let Some(link) = link.as_mut() {
            link.tick(PeerStatus {
                peer: index as u32,
                watermark: dataflow.time(),
                idle,
                newest,
                stopped: false,
            });
        }
        // The round's impressions older than the watermark just reached are scored by the
        // next step; the others once the watermark passes the newest of them.
        // With `label.score_on = "arrival"` all of them are scored by the next step.
        let now_at = dataflow.time();
        let waits = |ts: i64| !on_arrival && (ts < 0 || ts as u64 >= now_at);
        let scored_now = impression_ts.iter().filter(|&&ts| !waits(ts)).count();
        let waiting_newest = impression_ts.iter().copied().filter(|&ts| waits(ts)).max();
        let groups = [
            (now_at.max(sent_at + 1), scored_now),
            (
                waiting_newest.map_or(0, |ts| past(ts, 1)).max(sent_at + 1),
                impression_ts.len() - scored_now,
            ),
        ];
        for (scored_at, n) in groups {
            if n == 0 {
                continue;
            }
            // Rounds read within LATENCY_GRAIN of each other share an entry when that does
            // not delay it (measured from the first: overstated by less than the grain);
            // this bounds the queue, and beyond MAX_UNSCORED_ROUNDS entries rounds merge
            // into the newest, their latency overstated, never understated.
            let full = unscored.len() >= MAX_UNSCORED_ROUNDS;
            match unscored.back_mut() {
                Some(back)
                    if full
                        || (scored_at <= back.0
                            && read_at.duration_since(back.1) < LATENCY_GRAIN) =>
                {
                    back.0 = back.0.max(scored_at);
                    back.2 += n;
                }
                _ => unscored.push_back((scored_at, read_at, n)),
            }
        }
        if read > 0 {
            worker.step();
        } else {
            // Nothing new from Kafka: step, and sleep if no operator has work, until a
            // record, progress or a Kafka message arrives (a busy loop here burnt a core
            // per worker while waiting for the other workers' progress, which the broker
            // and the other workers then lacked).
            worker.step_or_park(Some(IDLE_WAIT));
        }

        // Read at most MAX_ROUNDS_AHEAD poll rounds ahead of what the dataflow has
        // processed: bounds the records buffered when a backlog is read faster than it is
        // processed (or another worker lags), and how far in event time one worker's
        // learning can run ahead of another worker's scoring (they share the model).
        if read > 0 {
            rounds.push_back(dataflow.time());
        }
        while rounds.len() > MAX_ROUNDS_AHEAD
            && !stop.load(Ordering::Relaxed)
            && !status.any_stopped()
            && !round_due(rounds_done)
        {
            match rounds.front() {
                Some(t) if dataflow.probe.less_than(t) => {
                    worker.step_or_park(Some(IDLE_WAIT));
                }
                _ => {
                    rounds.pop_front();
                }
            }
        }

        let stepped_at = Instant::now();
        if read > 0 {
            stage_dataflow.record(stepped_at.duration_since(ingested_at).as_secs_f64());
        }
        while let Some(&(t, at, n)) = unscored.front()
            && !dataflow.probe.less_than(&t)
        {
            latency.record_many(stepped_at.duration_since(at).as_secs_f64(), n);
            unscored.pop_front();
        }

        // Offsets go to the group only once everything read before them was processed
        // (with checkpoints, at checkpoints instead).
        if checkpointer.is_none() && last_snapshot.elapsed() >= commit_every {
            last_snapshot = Instant::now();
            let processed_at = past(newest, 1).max(dataflow.time() + 1);
            commits.push_back((processed_at, source.positions()));
        }
        while let Some((t, _)) = commits.front()
            && !dataflow.probe.less_than(t)
        {
            if let Some((_, positions)) = commits.pop_front() {
                let started = Instant::now();
                source.commit(&positions);
                stage_commit.record(started.elapsed().as_secs_f64());
            }
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            last_publish = Instant::now();
            publish(status, local, &source, &dataflow, &bad);
            if let Err(error) = sink.retry_failed() {
                tracing::error!(%error, "Failed deliveries could not be queued again.");
            }
        }
    }

    // Everyone stops reading first, so that the newest event time and the workers' input
    // times are final...
    status.watermark[index].store(dataflow.time(), Ordering::SeqCst);
    status.stopped[index].store(true, Ordering::SeqCst);
    let last_status = PeerStatus {
        peer: index as u32,
        watermark: dataflow.time(),
        idle: true,
        newest,
        stopped: true,
    };
    if let Some(link) = link.as_mut() {
        link.tick(last_status);
    }
    while !status.all_stopped() {
        if let Some(link) = link.as_mut() {
            link.tick(last_status);
        }
        if let Some(c) = checkpointer
            && round_due(rounds_done)
        {
            rounds_done += 1;
            checkpoint_round(
                worker,
                &mut dataflow,
                &source,
                sink,
                c,
                rounds_done,
                (sent, newest),
            );
        }
        worker.step_or_park(Some(IDLE_WAIT));
    }
    // ...then all advance to the same time, just past both: every record read is scored
    // (records sent at a time complete only when the frontier passes it), no window closes
    // early, and the probe tells when it is done.
    let newest = status.newest_ts.load(Ordering::SeqCst);
    let inputs = status.watermark.iter().map(|w| w.load(Ordering::SeqCst));
    let mut last = inputs.max().unwrap_or(0) + 1;
    if newest != i64::MIN {
        last = last.max(past(newest, step));
    }
    for summary in ingest.take_summaries(true) {
        dataflow.send_summary(summary);
    }
    dataflow.advance_to(last);
    while dataflow.probe.less_than(&last) {
        worker.step_or_park(Some(IDLE_WAIT));
    }
    // The impressions still waiting were scored just now.
    let now = Instant::now();
    for (_, at, n) in unscored.drain(..) {
        latency.record_many(now.duration_since(at).as_secs_f64(), n);
    }
    match checkpointer {
        Some(c) => {
            rounds_done += 1;
            c.request(rounds_done);
            checkpoint_round(
                worker,
                &mut dataflow,
                &source,
                sink,
                c,
                rounds_done,
                (sent, newest),
            );
        }
        None => source.commit(&source.positions()),
    }
    publish(status, local, &source, &dataflow, &bad);
    let result = WorkerResult {
        join: dataflow.join.borrow().stats.clone(),
        pending: dataflow.join.borrow().spill_stats(),
        progressive: dataflow.progressive.replace(Progressive::with_window(1, 1)),
        bad,
    };
    // Leave without closing the input: closing would expire every open attribution window.
    worker.drop_dataflow(dataflow.id);
    // In a cluster, leave once every peer has: then nothing more is sent to this process,
    // and its connections close cleanly.
    if let Some(mut link) = link {
        link.close();
        while !link.done() {
            worker.step_or_park(Some(IDLE_WAIT));
        }
        worker.drop_dataflow(link.id());
    }
    status.finished.fetch_add(1, Ordering::SeqCst);
    result
}

/// One checkpoint round on this worker (see [`crate::checkpoint`]): stop, wait until the
/// dataflow is still, add this worker's part, let worker 0 commit, resume. Returns whether
/// the checkpoint was committed.
fn checkpoint_round(
    worker: &mut timely::worker::Worker,
    dataflow: &mut pipeline::Dataflow,
    source: &KafkaSource,
    sink: &KafkaSink,
    checkpointer: &Checkpointer,
    round: u64,
    (sent, newest): (u64, i64),
) -> bool {
    let index = worker.index();
    let started = Instant::now();
    dataflow.flush();
    checkpointer.pause(index, sent, dataflow.time());
    let watermark = loop {
        worker.step_or_park(Some(CHECKPOINT_WAIT));
        checkpointer.received(index, dataflow.join.borrow().received);
        if let Some(t) = checkpointer.settled(round)
            && !dataflow.probe.less_than(&t)
        {
            break t;
        }
    };
    let positions = source.positions();
    if let (0, Some(aggregates)) = (index, &dataflow.aggregates) {
        checkpointer.contribute_aggregates(&aggregates.borrow());
    }
    // Every worker: each runs its shards of the detectors (`DriftConfig::shards`).
    if let Some(detect) = &dataflow.detect {
        checkpointer.contribute_detect(index, &detect.borrow().project(|w| w.drift().clone()));
    }
    checkpointer.contribute(
        index,
        &dataflow.join.borrow(),
        &dataflow.progressive.borrow(),
        &positions,
        (newest, dataflow.time()),
    );
    if index == 0 {
        while !checkpointer.all_contributed(round) {
            worker.step_or_park(Some(CHECKPOINT_WAIT));
        }
        let flush = || {
            sink.flush()
                .context("flushing outputs before the checkpoint")
        };
        match checkpointer.commit(round, watermark, flush) {
            Ok(stats) => tracing::debug!(
                epoch = checkpointer.epoch(),
                watermark,
                ops = stats.ops,
                bytes = stats.bytes,
                write_secs = stats.seconds,
                pause_secs = started.elapsed().as_secs_f64(),
                "Checkpoint committed."
            ),
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "Checkpoint failed; the previous one stands, the next is tried at the next interval."
            ),
        }
    }
    let committed = loop {
        if let Some(ok) = checkpointer.outcome(round) {
            break ok;
        }
        worker.step_or_park(Some(CHECKPOINT_WAIT));
    };
    if index == 0 {
        let paused = started.elapsed().as_secs_f64();
        checkpointer.paused_for(paused);
        metrics::histogram!("ctrflow_checkpoint_duration_seconds").record(paused);
        let outcome = if committed { "ok" } else { "failed" };
        metrics::counter!("ctrflow_checkpoints_total", "outcome" => outcome).increment(1);
        if let Some(stats) = checkpointer.last_commit() {
            metrics::gauge!("ctrflow_checkpoint_size_bytes").set(stats.bytes as f64);
        }
        for (table, bytes) in checkpointer.table_sizes() {
            metrics::gauge!("ctrflow_state_size_bytes", "table" => table).set(bytes as f64);
        }
    }
    if committed {
        dataflow.join.borrow_mut().checkpoint_done();
        source.commit(&positions);
    }
    committed
}

/// How long a worker parks while waiting for the others during a checkpoint.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(1);

/// The `examples` output, when `kafka.topics.examples` names a topic: keyed by impression id.
fn examples_output(
    config: &PipelineConfig,
    sink: &Arc<KafkaSink>,
    status: &Arc<RunStatus>,
) -> Option<pipeline::OnExamples> {
    let topic = config.kafka.topics.examples.clone();
    if topic.is_empty() {
        return None;
    }
    let sink = Arc::clone(sink);
    let status = Arc::clone(status);
    let mut buf = Vec::with_capacity(512);
    let mut pairs = Vec::with_capacity(32);
    Some(Box::new(move |batch| {
        for example in batch {
            pipeline::encode_example(example, &mut pairs, &mut buf);
            if let Err(error) = sink.send(&topic, Some(example.id.as_bytes()), &buf)
                && status.send_failed()
            {
                tracing::error!(%error, id = %example.id, failures = status.send_errors.load(Ordering::Relaxed), "An example could not be queued.");
            }
        }
    }))
}

fn publish(
    status: &RunStatus,
    index: usize,
    source: &KafkaSource,
    dataflow: &pipeline::Dataflow,
    bad: &BadEvents,
) {
    let lags = source.lag();
    let lag = if lags.iter().all(|(_, l)| l.is_some()) {
        lags.iter().map(|(_, l)| l.unwrap_or(0)).sum()
    } else {
        -1
    };
    status.lag[index].store(lag, Ordering::Relaxed);
    if let Ok(mut slot) = status.progressive[index].lock() {
        *slot = Some(dataflow.progressive.borrow().clone());
    }
    if let Ok(mut slot) = status.join[index].lock() {
        *slot = dataflow.join.borrow().stats.clone();
    }
    if let Ok(mut slot) = status.pending[index].lock() {
        *slot = dataflow.join.borrow().spill_stats();
    }
    if let Ok(mut slot) = status.bad_by_reason[index].lock() {
        slot.clone_from(&bad.by_reason);
    }
    if let Ok(mut slot) = status.partition_lag[index].lock() {
        *slot = lags;
    }
}

impl RunReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.d$}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "run with {} worker(s): {} events, {} impressions scored, {} examples in {:.1} s ({:.0} events/s)",
            self.workers,
            self.events,
            self.impressions,
            self.examples,
            self.elapsed_secs,
            self.events_per_sec
        );
        let _ = writeln!(
            s,
            "  logloss {}, normalized entropy {}, AUC {}, calibration {}",
            f(self.overall.logloss, 5),
            f(self.overall.normalized_entropy, 4),
            f(self.overall.auc, 4),
            f(self.overall.calibration, 4)
        );
        let _ = writeln!(
            s,
            "  last {} examples: logloss {}, AUC {}, calibration {}",
            self.recent.count,
            f(self.recent.logloss, 5),
            f(self.recent.auc, 4),
            f(self.recent.calibration, 4)
        );
        let _ = writeln!(
            s,
            "  outputs: {} scores; {} messages delivered (scores, dead letters, alerts, examples), {} failed deliveries (sent again); {} bad events",
            self.scores, self.delivered, self.failed_deliveries, self.bad_events
        );
        for (reason, n) in &self.bad_events_by_reason {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        if let Some(c) = &self.checkpoints {
            let _ = writeln!(
                s,
                "  checkpoints: epoch {}, {} committed, {} failed; last wrote {} ops, {} bytes in {:.3} s; reading paused {:.3} s on average, {:.3} s at most",
                c.epoch,
                c.committed,
                c.failed,
                c.last_ops,
                c.last_bytes,
                c.last_commit_secs,
                c.mean_pause_secs,
                c.max_pause_secs
            );
        }
        let firing = self
            .alerts
            .iter()
            .filter(|a| a.state == ctrflow_dataflows::AlertState::Firing)
            .count();
        let _ = writeln!(
            s,
            "  drift alerts: {firing} firing, {} resolved",
            self.alerts.len() - firing
        );
        for alert in &self.alerts {
            let _ = writeln!(s, "    {}", crate::drift::sinks::text(alert));
        }
        s
    }
}
