//! `ctrflow replay`: the learning dataflow over a JSON Lines file, as fast as it goes.
//!
//! Each timely worker reads its share of the file's blocks (see
//! [`ctrflow_connectors::file::FileSource`]), decodes and featurizes its lines, and sends
//! them into the dataflow at its watermark; [`LearnOnline`] routes every record to the
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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ctrflow_connectors::file::{FileSource, JsonlSink};
use ctrflow_dataflows::operators::{JoinStats, LearnOnline, Watermark};
use ctrflow_dataflows::{Features, Interaction, InteractionKind, Score};
use serde::Serialize;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::config::PipelineConfig;
use crate::event::{self, CtxValue, DecodeError, Event, FeedbackKind};
use crate::features::Featurizer;
use crate::model::Model;
use crate::progressive::{Progressive, Summary};

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
    /// Where to save the trained model, if anywhere.
    pub model_out: Option<PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
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
    pub bad_event_samples: Vec<BadLine>,
    /// Label-join counters.
    #[serde(flatten)]
    pub join: JoinStats,
    /// Progressive metrics over all examples.
    pub overall: Summary,
    /// Progressive metrics over the most recent window of examples.
    pub recent: Summary,
    /// The model after the run.
    pub model: ModelReport,
}

/// A rejected line.
#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: u64,
    /// Why it was rejected.
    pub reason: String,
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

/// Rejected lines of one worker.
#[derive(Debug, Default)]
struct BadEvents {
    count: u64,
    by_reason: BTreeMap<&'static str, u64>,
    samples: Vec<BadLine>,
}

/// Rejected lines kept as samples in the report.
const BAD_SAMPLES: usize = 20;

impl BadEvents {
    fn record(&mut self, line: u64, error: &DecodeError) {
        self.count += 1;
        *self.by_reason.entry(error.reason()).or_default() += 1;
        if self.samples.len() < BAD_SAMPLES {
            let mut reason = error.to_string();
            truncate_utf8(&mut reason, 200);
            self.samples.push(BadLine { line, reason });
        }
    }

    fn merge(&mut self, other: BadEvents) {
        self.count += other.count;
        for (reason, n) in other.by_reason {
            *self.by_reason.entry(reason).or_default() += n;
        }
        self.samples.extend(other.samples);
    }
}

/// What one worker hands back when the input is done.
struct WorkerResult {
    events: u64,
    join: JoinStats,
    progressive: Progressive,
    bad: BadEvents,
}

/// Blocks a worker may read ahead of the slowest worker's progress; bounds buffered data.
const MAX_BLOCKS_AHEAD: usize = 8;

fn progressive(config: &PipelineConfig) -> Progressive {
    Progressive::with_window(config.metrics.window, config.metrics.window_slices)
}

/// Runs the replay and returns its report.
pub fn run(options: &ReplayOptions) -> anyhow::Result<ReplayReport> {
    let config = &options.config;
    let source = Arc::new(
        FileSource::open(&options.input, &config.input.file)
            .with_context(|| format!("reading {}", options.input.display()))?,
    );
    // Fail on a bad feature config before starting any thread.
    Featurizer::new(&config.features)?;
    let model = Model::from_config(&config.model)?;
    let scores = match &options.scores_out {
        Some(path) => Some(Arc::new(Mutex::new(JsonlSink::create(path)?))),
        None => None,
    };
    let dead_letters = match &options.dead_letters_out {
        Some(path) => Some(Arc::new(Mutex::new(JsonlSink::create(path)?))),
        None => None,
    };
    let bytes_read = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(options.progress, source.len() as u64);

    let started = Instant::now();
    let workers = options.workers.max(1);
    let results = {
        let config = config.clone();
        let source = Arc::clone(&source);
        let model = model.clone();
        let scores = scores.clone();
        let dead_letters = dead_letters.clone();
        let bytes_read = Arc::clone(&bytes_read);
        let bar = bar.clone();
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let mut input = InputHandle::<Watermark, _>::new();
            let probe = ProbeHandle::new();
            let join = Rc::new(RefCell::new(JoinStats::default()));
            let progressive = Rc::new(RefCell::new(progressive(&config)));
            worker.dataflow::<Watermark, _, _>(|scope| {
                let (scored, examples) = input
                    .to_stream(scope)
                    .container::<Vec<Interaction>>()
                    .learn_online(model.handle(), &config.label, Rc::clone(&join));
                let sink = scores.clone();
                let mut line = Vec::new();
                let scored = scored.inspect_core(move |event| {
                    if let (Some(sink), Ok((_, batch))) = (&sink, event) {
                        write_scores(sink, batch, &mut line);
                    }
                });
                let metrics = Rc::clone(&progressive);
                examples
                    .inspect(move |e| {
                        metrics
                            .borrow_mut()
                            .observe(e.served, e.label.is_positive(), e.reference)
                    })
                    .probe_with(&probe);
                scored.probe_with(&probe);
            });

            let mut featurizer = Featurizer::new(&config.features).expect("validated before start");
            let mut bad = BadEvents::default();
            let mut events = 0u64;
            let mut max_ts = i64::MIN;
            let mut features = Features::new();
            let mut sent_at = std::collections::VecDeque::new();
            let mut dead = Vec::new();
            for block in source.share(index, peers) {
                for (line, payload) in source.lines(block) {
                    events += 1;
                    let record = match event::decode(payload, config.input.max_event_bytes) {
                        Ok(event) => interaction(event, line, &mut featurizer, &mut features),
                        Err(error) => {
                            bad.record(line, &error);
                            if let Some(sink) = &dead_letters {
                                dead_letter(sink, &source, line, payload, &error, &mut dead);
                            }
                            continue;
                        }
                    };
                    max_ts = max_ts.max(record.ts);
                    input.send(record);
                }
                source.release(block);
                let watermark = config.input.watermark(max_ts);
                if watermark > *input.time() {
                    input.advance_to(watermark);
                }
                sent_at.push_back(*input.time());
                while sent_at.len() > MAX_BLOCKS_AHEAD {
                    let Some(t) = sent_at.pop_front() else { break };
                    while probe.less_than(&t) {
                        worker.step();
                    }
                }
                worker.step();
                let done =
                    bytes_read.fetch_add((block.end - block.start) as u64, Ordering::Relaxed);
                if index == 0 {
                    bar.set_position(done);
                }
            }
            input.close();
            while worker.step() {}
            let join = join.borrow().clone();
            let progressive = progressive.replace(Progressive::with_window(1, 1));
            WorkerResult {
                events,
                join,
                progressive,
                bad,
            }
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
        .join()
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let mut events = 0;
    let mut join = JoinStats::default();
    let mut progressive = progressive(config);
    let mut bad = BadEvents::default();
    for result in results {
        let result = result.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
        events += result.events;
        join.merge(&result.join);
        progressive.merge(&result.progressive);
        bad.merge(result.bad);
    }
    bad.samples.sort_by_key(|b| b.line);
    bad.samples.truncate(BAD_SAMPLES);
    for sink in [&scores, &dead_letters].into_iter().flatten() {
        sink.lock()
            .map_err(|_| anyhow::anyhow!("a worker panicked while writing"))?
            .flush()?;
    }
    if let Some(path) = &options.model_out {
        model
            .save(path)
            .with_context(|| format!("saving the model to {}", path.display()))?;
    }
    Ok(report(
        options,
        workers,
        events,
        elapsed,
        join,
        &progressive,
        bad,
        &model,
    ))
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
    }
}

/// Turns a decoded event into the dataflow's record, hashing an impression's features.
fn interaction(
    event: Event<'_>,
    line: u64,
    featurizer: &mut Featurizer,
    features: &mut Features,
) -> Interaction {
    match event {
        Event::Impression(imp) => {
            featurizer.featurize(&imp, features);
            let reference = match imp.ctx_get("_p_true") {
                Some(CtxValue::Num(p)) if (0.0..=1.0).contains(p) => Some(*p as f32),
                _ => None,
            };
            Interaction {
                ts: imp.ts,
                pos: line,
                id: imp.id.as_ref().into(),
                kind: InteractionKind::Impression {
                    user: imp.user.as_ref().into(),
                    item: imp.item.as_ref().into(),
                    features: std::mem::take(features),
                    reference,
                },
            }
        }
        Event::Feedback(fb) => Interaction {
            ts: fb.ts,
            pos: line,
            id: fb.id.as_ref().into(),
            kind: match fb.kind {
                FeedbackKind::Click => InteractionKind::Click,
                FeedbackKind::Like => InteractionKind::Like,
                FeedbackKind::Skip { dwell_ms } => InteractionKind::Skip { dwell_ms },
            },
        },
    }
}

/// The contract's score record.
#[derive(Serialize)]
struct ScoreRecord<'a> {
    id: &'a str,
    user: &'a str,
    item: &'a str,
    score: f32,
    model_version: u64,
    event_ts: i64,
    emit_ts: u64,
}

fn write_scores(sink: &Mutex<JsonlSink>, batch: &[Score], line: &mut Vec<u8>) {
    let emit_ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let Ok(mut sink) = sink.lock() else { return };
    for s in batch {
        line.clear();
        let record = ScoreRecord {
            id: &s.id,
            user: &s.user,
            item: &s.item,
            score: s.score,
            model_version: s.model_version,
            event_ts: s.event_ts,
            emit_ts,
        };
        if serde_json::to_writer(&mut *line, &record).is_ok() && sink.send(line).is_err() {
            tracing::warn!("Failed to write scores; the rest of the run goes on.");
            return;
        }
    }
}

/// The contract's dead-letter record.
#[derive(Serialize)]
struct DeadLetter<'a> {
    error: String,
    source: DeadLetterSource<'a>,
    payload: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct DeadLetterSource<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
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
    let record = DeadLetter {
        error: error.to_string(),
        source: DeadLetterSource {
            topic: &topic,
            partition: 0,
            offset: line,
        },
        payload: String::from_utf8_lossy(payload),
    };
    buf.clear();
    if serde_json::to_writer(&mut *buf, &record).is_ok()
        && let Ok(mut sink) = sink.lock()
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

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
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
        let _ = writeln!(
            s,
            "  model: version {}, {} non-zero weights, norm {:.3}",
            self.model.version, self.model.nonzero_weights, self.model.weight_norm
        );
        let _ = writeln!(s, "  bad events: {}", self.bad_events);
        for (reason, n) in &self.bad_events_by_reason {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        for b in &self.bad_event_samples {
            let _ = writeln!(s, "    line {}: {}", b.line, b.reason);
        }
        s
    }
}
