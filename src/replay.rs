//! `ctrflow replay`: the learning dataflow over a JSON Lines file, as fast as it goes.
//!
//! Each timely worker reads its share of the file's blocks (see
//! [`ctrflow_connectors::file::FileSource`]), decodes and featurizes its lines, and sends
//! them into the dataflow at its watermark; [`LearnOnline`](ctrflow_dataflows::operators::LearnOnline) routes every record to the
//! worker that owns its impression, scores, joins labels and trains.
//!
//! # Workers and the model
//!
//! All workers of the process train one model: [`Model`] keeps its coordinates in shared
//! memory and every worker's handle updates them lock-free (Hogwild!, Niu et al. 2011).
//! A worker's update is visible to every other worker's next prediction, so with N workers
//! the model is still a single online learner that has seen (nearly) every label so far.
//! The costs: two workers can race on a coordinate and lose one of the two updates, which
//! for sparse CTR features is rare; and the interleaving of updates across workers depends
//! on thread timing, so only a 1-worker run is bit-for-bit reproducible. The logloss
//! difference against one worker is measured in `bench/` and quoted in the README.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ctrflow_connectors::file::{BlockReader, FileSource, JsonlSink, Poll};
use ctrflow_dataflows::operators::{AggregatesReport, JoinStats, SpillStats, SpillTo};
use ctrflow_dataflows::{Alert, Score};
use serde::Serialize;

use crate::baseline::{self, BaselineOptions, BaselineReport, Served};
use crate::config::PipelineConfig;
use crate::drift::sinks::{AlertSinks, SinkReport};
use crate::entity::EntityStore;
use crate::event::DecodeError;
use crate::model::Model;
use crate::pending::PendingSpill;
use crate::pipeline::{self, At, BadEvents, BadSample, Ingest};
use crate::progressive::{Progressive, Summary};
use crate::timeline::TimelineOutput;

/// What `replay` was asked to do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The JSON Lines input.
    pub input: PathBuf,
    /// Timely worker threads.
    pub workers: usize,
    /// Pipeline settings.
    pub config: PipelineConfig,
    /// Where to write one score per impression (JSON Lines), if anywhere.
    pub scores_out: Option<PathBuf>,
    /// Where to write rejected lines in the dead-letter form, if anywhere.
    pub dead_letters_out: Option<PathBuf>,
    /// Where to write every labelled impression with the hashed features it was scored
    /// and trained with (JSON Lines, the `examples` topic's form), if anywhere.
    pub examples_out: Option<PathBuf>,
    /// Where to save the trained model, if anywhere.
    pub model_out: Option<PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Also fit a batch baseline on the early part and compare ([`crate::baseline`]).
    pub baseline: Option<BaselineOptions>,
    /// Where to write the metrics over time ([`crate::timeline`]); `None`:
    /// `telemetry.metrics_out`, if set.
    pub metrics_out: Option<PathBuf>,
}

/// The end-of-run report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The input file.
    pub input: String,
    /// Timely workers used.
    pub workers: usize,
    /// Lines read (events and bad lines).
    pub events: u64,
    /// Impressions scored.
    pub impressions: u64,
    /// Labelled examples learned from.
    pub examples: u64,
    /// Wall-clock seconds from the first read to the last update.
    pub elapsed_secs: f64,
    /// Input events per second.
    pub events_per_sec: f64,
    /// Labelled examples per second.
    pub examples_per_sec: f64,
    /// Progressive logloss over all examples (nats).
    pub logloss: Option<f64>,
    /// Logloss divided by the entropy of the observed click rate; below 1 means the model
    /// knows more than the base rate.
    pub normalized_entropy: Option<f64>,
    /// Area under the ROC curve of the served scores.
    pub auc: Option<f64>,
    /// Mean served score divided by the observed click rate.
    pub calibration: Option<f64>,
    /// Logloss of the true probabilities (when the input carries `ctx._p_true`): the best
    /// any model could do.
    pub reference_logloss: Option<f64>,
    /// Lines rejected.
    pub bad_events: u64,
    /// Rejected lines by reason.
    pub bad_events_by_reason: BTreeMap<&'static str, u64>,
    /// The first rejected lines, with their line numbers.
    pub bad_event_samples: Vec<BadSample>,
    /// Label-join counters.
    #[serde(flatten)]
    pub join: JoinStats,
    /// Progressive metrics over all examples.
    pub overall: Summary,
    /// Progressive metrics over the most recent window of examples.
    pub recent: Summary,
    /// The model after the run.
    pub model: ModelReport,
    /// Entity features at the end: how many were in memory, and how many writes went to
    /// the scratch store because memory was full (`features.entity.cache_mb`).
    pub entities: EntitiesReport,
    /// Pending impressions at the end, and how many of their bodies left memory beyond
    /// `label.pending_memory_mb` (written to the scratch store) and came back.
    pub pending: SpillStats,
    /// Drift alerts raised, in event-time order, in the contract's form (`resolved`
    /// messages included).
    pub alerts: Vec<Alert>,
    /// What the webhooks of `[[drift.webhooks]]` did with them.
    pub webhooks: SinkReport,
    /// The batch baseline beside the online model (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineReport>,
    /// The global aggregates as of the last watermark (`[aggregates]`, when enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregates: Option<AggregatesReport>,
}

/// The model at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Updates applied.
    pub version: u64,
    /// Coordinates with a non-zero weight.
    pub nonzero_weights: usize,
    /// Euclidean norm of the weights.
    pub weight_norm: f64,
}

/// Where the entity features were at the end of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EntitiesReport {
    /// Entities in memory.
    pub in_memory: usize,
    /// Entity writes to the scratch store by eviction.
    pub spilled: u64,
    /// Bytes of the in-memory entities' maps.
    pub cache_bytes: usize,
    /// Bytes RocksDB holds in memory for the scratch store (memtables, block cache, table
    /// readers).
    pub store_memory_bytes: u64,
}

/// What one worker hands back when the input is done.
struct WorkerResult {
    events: u64,
    join: JoinStats,
    pending: SpillStats,
    progressive: Progressive,
    bad: BadEvents,
    alerts: Vec<Alert>,
    /// Worker 0's: the complete aggregates.
    aggregates: Option<AggregatesReport>,
}

/// Rounds of blocks (as many blocks as workers) a worker may read ahead of the slowest
/// worker's progress; bounds buffered data.
const MAX_BLOCKS_AHEAD: usize = 8;

/// How long a worker waiting for the others sleeps at most. Timely wakes it as soon as data
/// or progress arrives; the bound only guards against a wake-up that never comes (a parked
/// worker with no deadline would hang the replay silently).
const PARK: Duration = Duration::from_millis(5);

/// Runs the replay and returns its report.
pub fn run(options: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let config = &options.config;
    let source = Arc::new(
        FileSource::open(&options.input, &config.input.file)
            .with_context(|| format!("reading {}", options.input.display()))?,
    );
    // Fail on a bad feature config before starting any thread.
    Ingest::new(config)?;
    let model = Model::from_config(&config.model)?;
    let response = crate::drift::response::Response::new(&config.drift.response, &model);
    let entities =
        EntityStore::scratch(&config.features.entity, config.features.bits, &config.state)?;
    let pending = PendingSpill::scratch(&config.state)?;
    let scores = match &options.scores_out {
        Some(path) => Some(Arc::new(Mutex::new(JsonlSink::create(path)?))),
        None => None,
    };
    let dead_letters = match &options.dead_letters_out {
        Some(path) => Some(Arc::new(Mutex::new(JsonlSink::create(path)?))),
        None => None,
    };
    let examples = match &options.examples_out {
        Some(path) => Some(Arc::new(Mutex::new(JsonlSink::create(path)?))),
        None => None,
    };
    let bytes_read = Arc::new(AtomicU64::new(0));
    // The first failed block read: the workers stop reading and the replay fails.
    let read_error: Arc<OnceLock<String>> = Arc::default();
    let sinks = Arc::new(AlertSinks::start(&config.drift));
    // Every labelled impression with its served score, for the baseline.
    let served: Option<Arc<Mutex<Vec<Served>>>> = options.baseline.as_ref().map(|_| Arc::default());
    let bar = progress_bar(options.progress, source.len() as u64);
    let metrics_out = options.metrics_out.clone().or_else(|| {
        (!config.telemetry.metrics_out.is_empty())
            .then(|| PathBuf::from(&config.telemetry.metrics_out))
    });
    // Worker 0 runs the detectors, so it keeps the timeline.
    let timeline = match &metrics_out {
        Some(path) => Some(TimelineOutput::file(
            path,
            config.telemetry.metrics_interval_ms,
        )?),
        None => None,
    };
    let timeline = Arc::new(Mutex::new(timeline));

    let started = Instant::now();
    let workers = options.workers.max(1);
    let readers: Mutex<Vec<Option<BlockReader>>> = Mutex::new(
        source
            .read_blocks(workers)
            .with_context(|| format!("reading {}", options.input.display()))?
            .into_iter()
            .map(Some)
            .collect(),
    );
    let readers = Arc::new(readers);
    let results = {
        let readers = Arc::clone(&readers);
        let config = config.clone();
        let source = Arc::clone(&source);
        let model = model.clone();
        let response = response.clone();
        let entities = entities.clone();
        let pending = pending.store.clone();
        let scores = scores.clone();
        let dead_letters = dead_letters.clone();
        let examples = examples.clone();
        let bytes_read = Arc::clone(&bytes_read);
        let read_error = Arc::clone(&read_error);
        let bar = bar.clone();
        let sinks = Arc::clone(&sinks);
        let served = served.clone();
        let timeline = Arc::clone(&timeline);
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let sink = scores.clone();
            let mut line = Vec::new();
            let on_scores = move |batch: &[Score]| {
                if let Some(sink) = &sink {
                    write_scores(sink, batch, &mut line);
                }
            };
            let on_examples = examples_output(served.clone(), examples.clone());
            let sinks = Arc::clone(&sinks);
            let on_alert = move |alert: &Alert| sinks.send(alert);
            let context = pipeline::Context {
                entities: Some(&entities),
                restored: None,
                timeline: if index == 0 {
                    timeline.lock().ok().and_then(|mut t| t.take())
                } else {
                    None
                },
                response: response.clone(),
            };
            let mut dataflow = pipeline::build_detecting(
                worker,
                &config,
                &model,
                context,
                on_scores,
                on_examples,
                on_alert,
            );
            dataflow
                .join
                .borrow_mut()
                .spill_to(pending.clone(), index as u32, SpillTo::Scratch);
            let mut ingest = Ingest::new(&config)
                .expect("validated before start")
                .sketching(&config);
            let mut bad = BadEvents::default();
            let mut events = 0u64;
            let mut max_ts = i64::MIN;
            let mut sent_at = std::collections::VecDeque::new();
            let mut dead = Vec::new();
            let mut reader = readers
                .lock()
                .ok()
                .and_then(|mut r| r.get_mut(index).and_then(Option::take))
                .expect("one block reader per worker");
            loop {
                let filled = match reader.read_next() {
                    Poll::Block(filled) => filled,
                    Poll::Failed(error) => {
                        read_error.get_or_init(|| error.to_string());
                        break;
                    }
                    Poll::Done => break,
                };
                let block = filled.block;
                for (line, payload) in filled.lines() {
                    events += 1;
                    match ingest.send(payload, line, &mut dataflow) {
                        Ok(record) => max_ts = max_ts.max(record.ts),
                        Err(error) => {
                            bad.record(At::Line { line }, &error);
                            if let Some(sink) = &dead_letters {
                                dead_letter(sink, &source, line, payload, &error, &mut dead);
                            }
                        }
                    }
                }
                for summary in ingest.take_summaries(false) {
                    dataflow.send_summary(summary);
                }
                dataflow.advance_to(config.input.watermark(max_ts));
                // Blocks are taken in file order by whichever worker asks first: wait until
                // the dataflow is past this worker's blocks `MAX_BLOCKS_AHEAD` rounds back.
                sent_at.push_back((block.seq, dataflow.time()));
                let behind = (MAX_BLOCKS_AHEAD * workers) as u64;
                while sent_at
                    .front()
                    .is_some_and(|&(seq, _)| seq + behind <= block.seq)
                {
                    let Some((_, t)) = sent_at.pop_front() else {
                        break;
                    };
                    // Park rather than spin while other workers catch up: on a busy
                    // machine a spinning worker takes the core the others need (the
                    // channels wake a parked worker when data or progress arrives).
                    while dataflow.probe.less_than(&t) {
                        worker.step_or_park(Some(PARK));
                    }
                }
                // One step: the operators see this block's watermark only at the next one,
                // so `LearnOnline` holds a block it cannot process yet. Stepping twice here
                // saves about 3% of instructions, but moves the learner a block ahead of the
                // drift detectors, which a challenger's promotion is timed against
                // (`tests/drift.rs`, gh_5): not without changing how the two are aligned.
                worker.step();
                let done =
                    bytes_read.fetch_add((block.end - block.start) as u64, Ordering::Relaxed);
                if index == 0 {
                    bar.set_position(done);
                }
                reader.recycle(filled);
            }
            for summary in ingest.take_summaries(true) {
                dataflow.send_summary(summary);
            }
            // Let the dataflow catch up with the last watermark before the input closes, so
            // that the aggregates are those of that watermark.
            let last = dataflow.time();
            while dataflow.probe.less_than(&last) {
                worker.step_or_park(Some(PARK));
            }
            dataflow.close();
            while worker.step_or_park(Some(PARK)) {}
            let aggregates = match (index, &dataflow.aggregates) {
                (0, Some(a)) => Some(a.borrow().report()),
                _ => None,
            };
            let join = dataflow.join.borrow().stats.clone();
            let pending = dataflow.join.borrow().spill_stats();
            let alerts = dataflow.alerts.take();
            let progressive = dataflow.progressive.replace(Progressive::with_window(1, 1));
            WorkerResult {
                events,
                join,
                pending,
                progressive,
                bad,
                alerts,
                aggregates,
            }
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
        .join()
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(error) = read_error.get() {
        anyhow::bail!("{error}");
    }

    let mut events = 0;
    let mut join = JoinStats::default();
    let mut pending = SpillStats::default();
    let mut progressive = pipeline::progressive(config);
    let mut bad = BadEvents::default();
    let mut alerts = Vec::new();
    let mut aggregates = None;
    for result in results {
        let result = result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        events += result.events;
        join.merge(&result.join);
        pending.merge(&result.pending);
        progressive.merge(&result.progressive);
        bad.merge(result.bad);
        alerts.extend(result.alerts);
        aggregates = aggregates.or(result.aggregates);
    }
    alerts.sort_by_key(|a| a.ts);
    // The workers are joined: this is the last reference.
    let webhooks = Arc::try_unwrap(sinks).map_or_else(|_| SinkReport::default(), AlertSinks::close);
    for sink in [&scores, &dead_letters, &examples].into_iter().flatten() {
        sink.lock()
            .map_err(|_| anyhow::anyhow!("a worker panicked while writing"))?
            .flush()?;
    }
    if let Some(path) = &options.model_out {
        model
            .save(path)
            .with_context(|| format!("saving the model to {}", path.display()))?;
    }
    let mut report = report(
        options,
        workers,
        events,
        elapsed,
        join,
        &progressive,
        bad,
        &model,
        EntitiesReport {
            in_memory: entities.len(),
            spilled: entities.spilled(),
            cache_bytes: entities.cache_bytes(),
            store_memory_bytes: entities.store_memory_bytes(),
        },
        alerts,
        webhooks,
    );
    report.aggregates = aggregates;
    report.pending = pending;
    if let (Some(baseline_options), Some(served)) = (&options.baseline, served) {
        let served = std::mem::take(
            &mut *served
                .lock()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))?,
        );
        report.baseline = Some(
            baseline::evaluate(
                &options.input,
                config.input.max_event_bytes,
                served,
                baseline_options,
            )
            .context("the batch baseline")?,
        );
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn report(
    options: &ReplayOptions,
    workers: usize,
    events: u64,
    elapsed: Duration,
    join: JoinStats,
    progressive: &Progressive,
    bad: BadEvents,
    model: &Model,
    entities: EntitiesReport,
    alerts: Vec<Alert>,
    webhooks: SinkReport,
) -> ReplayReport {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let overall = progressive.summary();
    let recent = progressive.window_summary();
    ReplayReport {
        input: options.input.display().to_string(),
        workers,
        events,
        impressions: join.impressions,
        examples: join.examples(),
        elapsed_secs: secs,
        events_per_sec: events as f64 / secs,
        examples_per_sec: join.examples() as f64 / secs,
        logloss: overall.logloss,
        normalized_entropy: overall.normalized_entropy,
        auc: overall.auc,
        calibration: overall.calibration,
        reference_logloss: overall.reference_logloss,
        bad_events: bad.count,
        bad_events_by_reason: bad.by_reason,
        bad_event_samples: bad.samples,
        join,
        overall,
        recent,
        model: ModelReport {
            version: model.version(),
            nonzero_weights: model.nonzero_weights(),
            weight_norm: model.weight_norm(),
        },
        entities,
        pending: SpillStats::default(),
        alerts,
        webhooks,
        baseline: None,
        aggregates: None,
    }
}

/// What the dataflow does with labelled examples: keeps them for the baseline and/or
/// writes them to `--examples-out` (`None` when neither: the dataflow then does not
/// collect their features at all).
fn examples_output(
    served: Option<Arc<Mutex<Vec<Served>>>>,
    file: Option<Arc<Mutex<JsonlSink>>>,
) -> Option<pipeline::OnExamples> {
    if served.is_none() && file.is_none() {
        return None;
    }
    let (mut pairs, mut line) = (Vec::new(), Vec::new());
    Some(Box::new(move |batch| {
        if let Some(Ok(mut served)) = served.as_ref().map(|s| s.lock()) {
            served.extend(batch.iter().map(|e| Served {
                id: e.id.clone(),
                ts: e.impression_ts,
                positive: e.label.is_positive(),
                served: e.served,
            }));
        }
        if let Some(Ok(mut sink)) = file.as_ref().map(|s| s.lock()) {
            for example in batch {
                pipeline::encode_example(example, &mut pairs, &mut line);
                if sink.send(&line).is_err() {
                    tracing::warn!("Failed to write examples; the rest of the run goes on.");
                    return;
                }
            }
        }
    }))
}

fn write_scores(sink: &Mutex<JsonlSink>, batch: &[Score], line: &mut Vec<u8>) {
    let emit_ts = pipeline::now_ms();
    let Ok(mut sink) = sink.lock() else { return };
    for score in batch {
        pipeline::encode_score(score, emit_ts, line);
        if sink.send(line).is_err() {
            tracing::warn!("Failed to write scores; the rest of the run goes on.");
            return;
        }
    }
}

fn dead_letter(
    sink: &Mutex<JsonlSink>,
    source: &FileSource,
    line: u64,
    payload: &[u8],
    error: &DecodeError,
    buf: &mut Vec<u8>,
) {
    let topic = source.path().to_string_lossy();
    pipeline::encode_dead_letter(error, &topic, 0, line as i64, payload, buf);
    if let Ok(mut sink) = sink.lock()
        && sink.send(buf).is_err()
    {
        tracing::warn!(line, "Failed to write a dead letter.");
    }
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// A metric for people: `-` when undefined (no examples, or one class only).
fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

impl ReplayReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "replay of {} with {} worker(s)",
            self.input, self.workers
        );
        let _ = writeln!(
            s,
            "  {} events, {} impressions, {} examples in {:.2} s: {:.0} events/s, {:.0} examples/s",
            self.events,
            self.impressions,
            self.examples,
            self.elapsed_secs,
            self.events_per_sec,
            self.examples_per_sec
        );
        let _ = writeln!(s, "  progressive logloss   {}", fmt(self.logloss, 5));
        if let Some(reference) = self.reference_logloss {
            let _ = writeln!(
                s,
                "  Bayes-optimal logloss {reference:.5}  (true probabilities from ctx._p_true)"
            );
        }
        let _ = writeln!(
            s,
            "  normalized entropy    {}",
            fmt(self.normalized_entropy, 4)
        );
        let _ = writeln!(s, "  AUC                   {}", fmt(self.auc, 4));
        let _ = writeln!(
            s,
            "  calibration           {}  (mean score {} / observed CTR {})",
            fmt(self.calibration, 4),
            fmt(self.overall.mean_prediction, 4),
            fmt(self.overall.ctr, 4)
        );
        let _ = writeln!(
            s,
            "  last {} examples: logloss {}, AUC {}, calibration {}",
            self.recent.count,
            fmt(self.recent.logloss, 5),
            fmt(self.recent.auc, 4),
            fmt(self.recent.calibration, 4)
        );
        let j = &self.join;
        let _ = writeln!(
            s,
            "  labels: {} click, {} like, {} fast-skip, {} expired; {} slow skips, {} duplicate, {} late, {} orphan feedback; {} duplicate, {} late impressions",
            j.positive_click,
            j.positive_like,
            j.negative_fast_skip,
            j.negative_expired,
            j.slow_skip,
            j.duplicate_feedback,
            j.late_feedback,
            j.orphan_feedback,
            j.duplicate_impressions,
            j.late_impressions
        );
        if self.pending.written > 0 {
            let _ = writeln!(
                s,
                "  pending impressions: at most {} in memory; {} left memory (label.pending_memory_mb), {} read back",
                self.pending.peak_resident, self.pending.written, self.pending.read_back
            );
        }
        let _ = writeln!(
            s,
            "  model: version {}, {} non-zero weights, norm {:.3}",
            self.model.version, self.model.nonzero_weights, self.model.weight_norm
        );
        let _ = writeln!(s, "  drift alerts: {}", self.alerts.len());
        for a in &self.alerts {
            let _ = writeln!(s, "    ts {}: {}", a.ts, crate::drift::sinks::text(a));
        }
        let _ = writeln!(s, "  bad events: {}", self.bad_events);
        for (reason, n) in &self.bad_events_by_reason {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        for b in &self.bad_event_samples {
            match b.at {
                At::Line { line } => {
                    let _ = writeln!(s, "    line {line}: {}", b.reason);
                }
                At::Offset { partition, offset } => {
                    let _ = writeln!(s, "    partition {partition} offset {offset}: {}", b.reason);
                }
            }
        }
        if let Some(aggregates) = &self.aggregates {
            s.push_str(&render_aggregates(aggregates));
        }
        if let Some(baseline) = &self.baseline {
            s.push_str(&baseline.render());
        }
        s
    }
}

/// The global aggregates for people (the replay report and `inspect`).
pub fn render_aggregates(a: &AggregatesReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  aggregates as of watermark {} (last {} s, in {} s buckets; {} late impressions or clicks left out):",
        a.watermark,
        a.window_ms / 1000,
        a.bucket_ms / 1000,
        a.late
    );
    for c in &a.category_ctr_1h {
        let name = if c.category.is_empty() {
            "(none)"
        } else {
            &c.category
        };
        let _ = writeln!(
            s,
            "    {name:<16} {:>9} impressions {:>7} clicks  CTR {:.4}",
            c.impressions, c.clicks, c.ctr
        );
    }
    let top: Vec<String> = a
        .top_items_1h
        .iter()
        .map(|i| format!("{} ({})", i.item, i.clicks))
        .collect();
    let _ = writeln!(s, "    top items by clicks: {}", top.join(", "));
    s
}
