//! Online learning: score each impression, join it with its feedback, learn from the label.
//!
//! # Why one operator
//!
//! Scoring, the label join and training share one model and must interleave in event-time
//! order: an impression is scored with every label that became final before it, and with
//! none after. Split into operators, a batch would be scored before the labels of the same
//! batch were learned (or after), so serving would not see the freshest model. Keeping the
//! three steps in one operator makes the order exact, and with one worker the whole run is
//! deterministic. That is `label.score_on = "watermark"`, the default; with `"arrival"`
//! an impression is scored as soon as its batch reaches the operator, with the model of
//! that moment, and only learned in event-time order ([`ScoreOn`]).
//!
//! # Event time
//!
//! The timely timestamp is a watermark in epoch milliseconds: the source sends each record
//! at its current watermark, so a record that is not late has `ts >= ` the time it was sent
//! at. When the input frontier reaches `f`, every record with `ts < f` that will ever
//! arrive on time has arrived, so the operator processes buffered records with `ts < f`
//! in `(ts, pos)` order and then closes the attribution windows that ended before `f`.
//! A record that arrives with `ts` below the frontier already processed is late; it is
//! processed at once, in order among the records of its batch.
//!
//! # Labels (DESIGN.md § Labels)
//!
//! A click or like within `window_ms` is a positive, a skip faster than `fast_skip_ms` an
//! immediate negative, and an impression whose window closes undecided a negative. The
//! first decisive feedback wins; later feedback is counted as a duplicate. Feedback for an
//! impression that already expired is counted as late, for one never seen as an orphan.
//! When the input ends (the frontier is empty) every open window closes.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::rc::Rc;

use compact_str::CompactString;
use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use ctrflow_state::{Batch, StateError, StateStore, Table, TableId};

use super::chains::Chains;
use super::id_index::IdIndex;
use super::pending::{
    BODY_BYTES, Bodies, Body, BodyRef, CHUNK, PENDING, PENDING_IDS, Pending, Ring, STUB_BYTES,
    Spill, Stub,
};
pub use super::pending::{SpillStats, SpillStore, SpillTo};
use crate::enrich::{Enrich, Entities, Signal};
use crate::learner::Learner;
use crate::record::{
    EVENT_FEATURES_INLINE, EventFeatures, EventTime, Example, Feature, Features, Interaction,
    InteractionKind, LabelSource, Score,
};

/// The timely timestamp: a watermark in epoch milliseconds.
pub type Watermark = u64;

/// Label-join settings (`[label]` in the pipeline config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Attribution window: a click or like this long after the impression still counts.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// A skip with `dwell_ms` below this is an immediate negative.
    #[serde(default = "default_fast_skip_ms")]
    pub fast_skip_ms: u32,
    /// How delayed labels reach the model: `"provisional_negatives"` (default: every
    /// impression is learned within `fast_skip_ms`, served scores corrected) or `"none"`
    /// (each label learned once, when final). See the module docs.
    #[serde(default)]
    pub delay_correction: DelayCorrection,
    /// When an impression is scored: `"watermark"` (default: once the watermark passes
    /// it, in event-time order — deterministic, but a score waits for every partition and
    /// the allowed lateness) or `"arrival"` (as soon as it reaches its worker, with the model
    /// of that moment). See [`ScoreOn`].
    #[serde(default)]
    pub score_on: ScoreOn,
    /// Memory for the bodies of pending impressions (the features each was scored with,
    /// its served score, item and category: about 270 bytes each), MiB. Beyond it, bodies
    /// the state store already holds (checkpointed, in `run` with `state.dir`; otherwise
    /// written to a scratch RocksDB in `$TMPDIR`) leave memory and are read back in batches
    /// when their label is decided. The default holds about 4M impressions.
    #[serde(default = "default_pending_memory_mb")]
    pub pending_memory_mb: u64,
    /// Memory for the stubs of pending impressions (id, event time, entity keys and flags,
    /// with their share of the id index: about 96 bytes each), MiB. Beyond it, whole chunks
    /// of stubs older than the newest impressions and younger than the closing ones leave
    /// memory for the same store as the bodies, and come back when their window closes (or
    /// one by one, for their feedback). The default holds about 11M impressions.
    #[serde(default = "default_pending_stubs_memory_mb")]
    pub pending_stubs_memory_mb: u64,
}

const fn default_window_ms() -> u64 {
    30 * 60 * 1000
}

const fn default_fast_skip_ms() -> u32 {
    2000
}

const fn default_pending_memory_mb() -> u64 {
    1024
}

const fn default_pending_stubs_memory_mb() -> u64 {
    1024
}

/// The largest `label.pending_memory_mb` accepted: 1 TiB.
const MAX_PENDING_MEMORY_MB: u64 = 1 << 20;

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            window_ms: default_window_ms(),
            fast_skip_ms: default_fast_skip_ms(),
            delay_correction: DelayCorrection::default(),
            score_on: ScoreOn::default(),
            pending_memory_mb: default_pending_memory_mb(),
            pending_stubs_memory_mb: default_pending_stubs_memory_mb(),
        }
    }
}

impl LabelConfig {
    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window_ms == 0 {
            problems.push("label.window_ms must be > 0, got 0".to_owned());
        }
        if self.window_ms > 30 * 24 * 3600 * 1000 {
            problems.push(format!(
                "label.window_ms must be at most 30 days, got {}",
                self.window_ms
            ));
        }
        if u64::from(self.fast_skip_ms) > self.window_ms {
            problems.push(format!(
                "label.fast_skip_ms ({}) must not exceed label.window_ms ({})",
                self.fast_skip_ms, self.window_ms
            ));
        }
        if self.pending_memory_mb == 0 || self.pending_memory_mb > MAX_PENDING_MEMORY_MB {
            problems.push(format!(
                "label.pending_memory_mb must be between 1 and {MAX_PENDING_MEMORY_MB} (MiB of \
                 pending impressions kept in memory; beyond it they are read back from the \
                 state store), got {}",
                self.pending_memory_mb
            ));
        }
        if self.pending_stubs_memory_mb == 0 || self.pending_stubs_memory_mb > MAX_PENDING_MEMORY_MB
        {
            problems.push(format!(
                "label.pending_stubs_memory_mb must be between 1 and {MAX_PENDING_MEMORY_MB} (MiB \
                 of pending impressions' stubs and id index kept in memory; beyond it they are \
                 read back from the state store), got {}",
                self.pending_stubs_memory_mb
            ));
        }
        problems
    }

    /// Bodies of pending impressions kept in memory at most (`pending_memory_mb`).
    fn pending_bodies(&self) -> usize {
        let mb = self.pending_memory_mb.clamp(1, MAX_PENDING_MEMORY_MB);
        usize::try_from(mb << 20).unwrap_or(usize::MAX) / BODY_BYTES
    }

    /// Stubs of pending impressions kept in memory at most (`pending_stubs_memory_mb`).
    fn pending_stubs(&self) -> usize {
        let mb = self.pending_stubs_memory_mb.clamp(1, MAX_PENDING_MEMORY_MB);
        usize::try_from(mb << 20).unwrap_or(usize::MAX) / STUB_BYTES
    }
}

/// What the label join saw, per worker; summed over workers for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinStats {
    /// Impressions scored (exactly one score each).
    pub impressions: u64,
    /// Positives from a click.
    pub positive_click: u64,
    /// Positives from a like.
    pub positive_like: u64,
    /// Immediate negatives from a fast skip.
    pub negative_fast_skip: u64,
    /// Negatives from a window that closed undecided.
    pub negative_expired: u64,
    /// Skips too slow to decide anything.
    pub slow_skip: u64,
    /// Feedback for an impression already decided.
    pub duplicate_feedback: u64,
    /// Feedback for an impression whose window had closed.
    pub late_feedback: u64,
    /// Feedback for an impression never seen.
    pub orphan_feedback: u64,
    /// Impressions whose id was seen before: not scored again.
    pub duplicate_impressions: u64,
    /// Impressions that arrived after their own window closed: scored, not learned from.
    pub late_impressions: u64,
    /// Provisional negatives learned (impressions undecided `fast_skip_ms` after shown).
    pub provisional_negatives: u64,
}

impl JoinStats {
    /// Labelled examples learned from.
    pub fn examples(&self) -> u64 {
        self.positive_click + self.positive_like + self.negative_fast_skip + self.negative_expired
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &JoinStats) {
        self.impressions += other.impressions;
        self.positive_click += other.positive_click;
        self.positive_like += other.positive_like;
        self.negative_fast_skip += other.negative_fast_skip;
        self.negative_expired += other.negative_expired;
        self.slow_skip += other.slow_skip;
        self.duplicate_feedback += other.duplicate_feedback;
        self.late_feedback += other.late_feedback;
        self.orphan_feedback += other.orphan_feedback;
        self.duplicate_impressions += other.duplicate_impressions;
        self.late_impressions += other.late_impressions;
        self.provisional_negatives += other.provisional_negatives;
    }
}

/// The worker that owns impression `id`'s label join: impressions and their feedback meet
/// there. A fixed hash, so every process of a cluster agrees.
pub fn route(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

/// Extension trait for learning online from a stream of interactions.
pub trait LearnOnline<'scope> {
    /// Scores every impression with `learner` before its label is known, joins it with its
    /// feedback, and updates `learner` with each label as it becomes final. Returns the
    /// scores (one per impression) and the labelled examples; `stats` counts what the join
    /// saw.
    ///
    /// # Examples
    /// ```
    /// use std::{cell::RefCell, rc::Rc};
    /// use ctrflow_dataflows::operators::{DelayCorrection, JoinState, LabelConfig, LearnOnline};
    /// use ctrflow_dataflows::{Feature, Interaction, InteractionKind, Learner, NoEnrich};
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// /// Predicts the running click rate; enough to show the flow.
    /// struct Mean { clicks: f32, seen: f32 }
    /// impl Learner for Mean {
    ///     fn predict(&self, _: &[Feature]) -> f32 { (self.clicks + 1.0) / (self.seen + 2.0) }
    ///     fn update(&mut self, _: &[Feature], positive: bool) {
    ///         self.seen += 1.0;
    ///         self.clicks += f32::from(u8::from(positive));
    ///     }
    ///     fn version(&self) -> u64 { self.seen as u64 }
    /// }
    ///
    /// let event = |ts, id: &str, kind| Interaction { ts, pos: ts as u64, id: id.into(), kind };
    /// let shown = || InteractionKind::Impression {
    ///     user: "u".into(), item: "i".into(), category: "c".into(), features: Default::default(), reference: None,
    ///     entities: Default::default(),
    /// };
    /// let input = vec![
    ///     event(0, "a", shown()),
    ///     event(5, "a", InteractionKind::Click),
    ///     event(10, "b", shown()),
    /// ];
    /// let (scores, examples) = timely::example(move |scope| {
    ///     // Learn each label once, when final, and serve the model's output as is.
    ///     let config = LabelConfig { delay_correction: DelayCorrection::None, ..LabelConfig::default() };
    ///     let state = Rc::new(RefCell::new(JoinState::new(&config)));
    ///     let (scores, examples) = input
    ///         .to_stream(scope)
    ///         .learn_online(Mean { clicks: 0.0, seen: 0.0 }, NoEnrich, state, false);
    ///     (scores.capture(), examples.capture())
    /// });
    /// fn data<D>(events: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<D> {
    ///     let batches = events.try_iter().filter_map(|e| match e {
    ///         Event::Messages(_, batch) => Some(batch),
    ///         Event::Progress(_) => None,
    ///     });
    ///     batches.flatten().collect()
    /// }
    /// let scores = data(scores);
    /// assert_eq!(scores[0].score, 0.5);
    /// assert_eq!(scores[1].score, 2.0 / 3.0, "b is scored after a's click was learned");
    /// let examples = data(examples);
    /// assert_eq!(examples.len(), 2, "a clicked; b expires when the input ends");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// `enrich` supplies entity features as of each impression's event time and learns of
    /// every event; `state` is the join's state, shared with the caller for its counters
    /// and for checkpoints (read it only between steps of the worker).
    fn learn_online<L: Learner + 'static, E: Enrich + 'static>(
        self,
        learner: L,
        enrich: E,
        state: Rc<RefCell<JoinState>>,
        example_features: bool,
    ) -> (
        Stream<'scope, Watermark, Vec<Score>>,
        Stream<'scope, Watermark, Vec<Example>>,
    );

    /// [`learn_online`](LearnOnline::learn_online) with a second input, `local`: records
    /// the worker sending them already owns (`route(id) % peers` is its index), which skip
    /// the exchange: with 2 workers half the records need not cross between threads at all
    /// (those that do cross in whole containers, [`mod@super::route`]). The join is the same
    /// whichever input a record comes by: it orders what it receives by `(ts, pos)`.
    fn learn_online_routed<L: Learner + 'static, E: Enrich + 'static>(
        self,
        local: Stream<'scope, Watermark, Vec<Interaction>>,
        learner: L,
        enrich: E,
        state: Rc<RefCell<JoinState>>,
        example_features: bool,
    ) -> (
        Stream<'scope, Watermark, Vec<Score>>,
        Stream<'scope, Watermark, Vec<Example>>,
    );
}

/// What the join emits in a batch, each kind for its own output: the scores of the
/// impressions it scored, and the examples whose labels became final. Two containers
/// handed on whole, rather than one of both kinds split by a second operator: each record
/// is written once, not three times.
#[derive(Debug, Default)]
struct Emitted {
    scores: Chunks<Score>,
    examples: Chunks<Example>,
}

/// Records to emit, in vectors of at most [`EMIT_CHUNK`]. Timely's local channels do not
/// give a container back, so each step's vectors are new: one vector per step, grown push
/// by push, was copied over several times (2% of a replay's instructions), and reserving
/// for a whole step's records instead made allocations large enough to be mapped and
/// unmapped each time (page faults, and with several workers the other cores interrupted
/// to flush their TLBs). Chunks of a few tens of KiB are reused from the heap.
#[derive(Debug)]
struct Chunks<T> {
    full: Vec<Vec<T>>,
    current: Vec<T>,
}

/// Records per emitted vector.
const EMIT_CHUNK: usize = 256;

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Self {
            full: Vec::new(),
            current: Vec::new(),
        }
    }
}

impl<T> Chunks<T> {
    fn push(&mut self, record: T) {
        if self.current.len() == EMIT_CHUNK {
            self.full.push(std::mem::take(&mut self.current));
        }
        if self.current.capacity() == 0 {
            self.current.reserve_exact(EMIT_CHUNK);
        }
        self.current.push(record);
    }

    fn is_empty(&self) -> bool {
        self.full.is_empty() && self.current.is_empty()
    }

    /// Every vector, full ones first, each left empty (without capacity) once handed on.
    fn vectors(&mut self) -> impl Iterator<Item = &mut Vec<T>> {
        self.full
            .iter_mut()
            .chain(std::iter::once(&mut self.current))
    }

    /// Forgets the vectors handed on.
    fn clear(&mut self) {
        self.full.clear();
        self.current.clear();
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.full.iter().flatten().chain(&self.current)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.iter().count()
    }

    #[cfg(test)]
    fn into_vec(self) -> Vec<T> {
        self.full
            .into_iter()
            .flatten()
            .chain(self.current)
            .collect()
    }
}

impl<'scope> LearnOnline<'scope> for Stream<'scope, Watermark, Vec<Interaction>> {
    fn learn_online<L: Learner + 'static, E: Enrich + 'static>(
        self,
        learner: L,
        enrich: E,
        state: Rc<RefCell<JoinState>>,
        example_features: bool,
    ) -> (
        Stream<'scope, Watermark, Vec<Score>>,
        Stream<'scope, Watermark, Vec<Example>>,
    ) {
        let none = timely::dataflow::operators::generic::operator::empty(self.scope());
        self.learn_online_routed(none, learner, enrich, state, example_features)
    }

    // Scores and examples travel by value in batches: boxing the larger would allocate once
    // per example.
    #[allow(clippy::result_large_err)]
    fn learn_online_routed<L: Learner + 'static, E: Enrich + 'static>(
        self,
        local: Stream<'scope, Watermark, Vec<Interaction>>,
        learner: L,
        enrich: E,
        state: Rc<RefCell<JoinState>>,
        example_features: bool,
    ) -> (
        Stream<'scope, Watermark, Vec<Score>>,
        Stream<'scope, Watermark, Vec<Example>>,
    ) {
        let mut join = LabelJoin::new(learner, enrich, state, example_features);
        let mut builder = OperatorBuilder::new("LearnOnline".to_owned(), self.scope());
        let mut routed = builder.new_input(self, super::route::routed());
        let mut local = builder.new_input(local, Pipeline);
        let (scores_output, scores) = builder.new_output();
        let (examples_output, examples) = builder.new_output();
        let mut scores_output =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Score>>>::from(scores_output);
        let mut examples_output =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Example>>>::from(examples_output);
        builder.build(move |mut capabilities| {
            // One capability per output. Held from the start: records restored from a
            // checkpoint are in the buffer before any input arrives, and must still be
            // emitted for.
            let mut held = capabilities.pop().zip(capabilities.pop());
            let mut out = Emitted::default();
            move |frontiers| {
                routed.for_each(|_cap, data| join.receive(data, &mut out.scores));
                local.for_each(|_cap, data| join.receive(data, &mut out.scores));
                let Some((examples_cap, scores_cap)) = held.as_mut() else {
                    return;
                };
                let (routed_frontier, local_frontier) =
                    (frontiers[0].frontier(), frontiers[1].frontier());
                let watermark = (routed_frontier.iter())
                    .chain(local_frontier.iter())
                    .min()
                    .copied();
                join.advance(watermark.unwrap_or(Watermark::MAX), &mut out);
                // Publish the model version once per batch, so that a checkpoint (taken
                // between steps) records every update applied.
                join.learner.flush();
                if !out.scores.is_empty() {
                    let mut scores = scores_output.activate();
                    let mut session = scores.session(&*scores_cap);
                    out.scores.vectors().for_each(|v| session.give_container(v));
                    out.scores.clear();
                }
                if !out.examples.is_empty() {
                    let mut examples = examples_output.activate();
                    let mut session = examples.session(&*examples_cap);
                    out.examples
                        .vectors()
                        .for_each(|v| session.give_container(v));
                    out.examples.clear();
                }
                match watermark {
                    Some(w) if w > *scores_cap.time() => {
                        scores_cap.downgrade(&w);
                        examples_cap.downgrade(&w);
                    }
                    Some(_) => {}
                    None => {
                        join.learner.flush();
                        held = None;
                    }
                }
            }
        });
        (scores, examples)
    }
}

/// The state of one worker's label join: what it has received and not processed, the open
/// windows, the delay correction's counts and the join's counters. Shared (`Rc`) between
/// the operator and the worker that built it, which reads the counters and takes
/// checkpoints of it between steps.
#[derive(Debug)]
pub struct JoinState {
    fast_skip_ms: u32,
    /// What the join saw.
    pub stats: JoinStats,
    /// Records received and not yet processed.
    buffer: Received,
    /// With `score_on = "arrival"`: the impressions in `buffer` already scored, with the
    /// score served (their features in `buffer` already carry the entity features).
    arrived: HashMap<CompactString, f32, FxBuildHasher>,
    score_on: ScoreOn,
    windows: Windows,
    schedule: Schedule,
    /// Records received since the worker started: a checkpoint waits until every record
    /// sent has been received somewhere.
    pub received: u64,
}

impl JoinState {
    /// An empty join with `config`'s settings.
    pub fn new(config: &LabelConfig) -> Self {
        Self {
            fast_skip_ms: config.fast_skip_ms,
            stats: JoinStats::default(),
            buffer: Received::default(),
            arrived: HashMap::default(),
            score_on: config.score_on,
            windows: Windows::new(config),
            schedule: Schedule::new(config.delay_correction),
            received: 0,
        }
    }

    /// Impressions in the attribution windows (open, or closed and remembered).
    pub fn pending(&self) -> usize {
        self.windows.ring.len()
    }

    /// Impressions whose window is open and label undecided.
    pub fn awaiting_label(&self) -> usize {
        let ring = &self.windows.ring;
        ring.iter().filter(|(_, e)| !e.decided && !e.closed).count()
    }

    /// Records received and not yet processed.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// Records received and not yet processed, in arrival order, as the batches they came in.
///
/// # Why batches, and keys
///
/// A record is 280 bytes (its hashed features are inline). A batch is taken from timely
/// whole, without copying its records, and the records are processed in `(ts, pos)` order
/// through a sorted array of 24-byte keys, not by sorting the records themselves: with
/// several workers the batches of different senders interleave in event time, and sorting
/// the records moved each of them several times per step (a third of a 2-worker replay's
/// memory traffic). Processing takes what it keeps out of a record (ids, features) and the
/// emptied batches go back to timely's channel.
#[derive(Debug, Default)]
struct Received {
    batches: Vec<Vec<Interaction>>,
    /// Emptied batches, kept for their capacity.
    spare: Vec<Vec<Interaction>>,
    /// `(watermark, n)`: the first `n` batches hold no record ready at `watermark`. With
    /// several workers the operator runs once per arriving batch while the watermark
    /// stays; then only the new batches are looked at, not every buffered record again.
    scanned: Option<(EventTime, usize)>,
    /// Scratch for [`Received::ready`]: each batch's ready keys (a segment of the order),
    /// that batch's index, and for merging them.
    segments: Vec<std::ops::Range<usize>>,
    segment_batches: Vec<usize>,
    chains: Chains<OrderKey>,
}

/// A ready record's place in the processing order: `(ts, pos)`, then its arrival (batch,
/// index), so that sorting the keys orders the records as a stable sort by `(ts, pos)` of
/// the arrival order would.
type OrderKey = (EventTime, u64, u32, u32);

/// Most emptied batches kept for reuse.
const SPARE_BATCHES: usize = 4;

impl Received {
    /// Takes timely's batch, leaving an empty one with capacity in its place.
    fn take_batch(&mut self, data: &mut Vec<Interaction>) {
        if data.is_empty() {
            return;
        }
        let mut batch = self.spare.pop().unwrap_or_default();
        std::mem::swap(&mut batch, data);
        self.batches.push(batch);
    }

    /// Appends records as one batch.
    fn extend(&mut self, records: impl IntoIterator<Item = Interaction>) {
        let batch: Vec<Interaction> = records.into_iter().collect();
        if !batch.is_empty() {
            self.batches.push(batch);
        }
    }

    fn len(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    /// The records in arrival order.
    fn iter(&self) -> impl Iterator<Item = &Interaction> {
        self.batches.iter().flatten()
    }

    fn get(&self, &(_, _, batch, index): &OrderKey) -> &Interaction {
        &self.batches[batch as usize][index as usize]
    }

    /// The keys of the records with `ts < watermark`, in processing order.
    fn ready(&mut self, watermark: EventTime, order: &mut Vec<OrderKey>) {
        order.clear();
        self.segments.clear();
        self.segment_batches.clear();
        let from = match self.scanned {
            Some((at, n)) if at == watermark => n.min(self.batches.len()),
            _ => 0,
        };
        for (b, batch) in self.batches.iter().enumerate().skip(from) {
            let start = order.len();
            order.extend(
                (batch.iter().enumerate())
                    .filter(|(_, x)| x.ts < watermark)
                    .map(|(i, x)| (x.ts, x.pos, b as u32, i as u32)),
            );
            if order.len() > start {
                self.segments.push(start..order.len());
                self.segment_batches.push(b);
            }
        }
        // One worker's records usually arrive in order: then nothing to sort. With several
        // the senders' batches interleave, each sender's in its own order: merge them.
        if !order.is_sorted() && !self.chains.merge(order, &self.segments) {
            order.sort_unstable();
        }
        // With some ready, `remove_ready` notes what is left.
        self.scanned = order.is_empty().then_some((watermark, self.batches.len()));
    }

    /// Drops the records [`Received::ready`] found ready at `watermark` (its last call, at
    /// the same watermark), keeping the others in order. Only the batches that had some
    /// are looked at, and only those that had some left are filtered.
    fn remove_ready(&mut self, watermark: EventTime) {
        let mut ready = (self.segment_batches.iter())
            .zip(&self.segments)
            .map(|(&b, range)| (b, range.len()))
            .peekable();
        let spare = &mut self.spare;
        let mut b = 0;
        self.batches.retain_mut(|batch| {
            b += 1;
            let Some((_, n)) = ready.next_if(|&(r, _)| r == b - 1) else {
                return true;
            };
            if n < batch.len() {
                batch.retain(|x| x.ts >= watermark);
                return true;
            }
            if spare.len() < SPARE_BATCHES {
                batch.clear();
                spare.push(std::mem::take(batch));
            }
            false
        });
        // What is left is not ready at `watermark`.
        self.scanned = Some((watermark, self.batches.len()));
    }
}

impl From<Vec<Interaction>> for Received {
    fn from(records: Vec<Interaction>) -> Self {
        let mut received = Self::default();
        received.extend(records);
        received
    }
}

/// The operator's closure state: the maths and the shared [`JoinState`].
struct LabelJoin<L, E> {
    learner: L,
    enrich: E,
    state: Rc<RefCell<JoinState>>,
    /// Examples carry the impression's hashed features (for the `examples` output).
    example_features: bool,
    /// Scratch: the entities of a batch's impressions, for [`Enrich::prepare`].
    entities: Vec<Entities>,
    /// Scratch: the processing order of the ready records.
    order: Vec<OrderKey>,
    /// Scratch: the [`id_hash`] of each record of `order`.
    hashes: Vec<u64>,
    /// Scratch: an impression's features with its entity features, scored on arrival.
    scored: Features,
    /// Heap buffers of records' features that outgrew [`EventFeatures`] (scored on arrival
    /// with entity features), kept for the next ones: see [`travelling`].
    spare_features: Vec<Vec<Feature>>,
}

/// Most heap buffers of features [`LabelJoin`] keeps for reuse.
const SPARE_FEATURES: usize = 4096;

/// `features` as a record carries them: past [`EventFeatures`]' inline 16 on the heap, in
/// a buffer from `spare` (given back when the record is processed) rather than a new
/// allocation per impression.
fn travelling(features: &[Feature], spare: &mut Vec<Vec<Feature>>) -> EventFeatures {
    if features.len() <= EVENT_FEATURES_INLINE {
        return EventFeatures::from_slice(features);
    }
    let mut buffer = spare.pop().unwrap_or_default();
    buffer.clear();
    buffer.extend_from_slice(features);
    // A capacity past 16 stays on the heap: no copy.
    EventFeatures::from_vec(buffer)
}

impl<L: Learner, E: Enrich> LabelJoin<L, E> {
    /// A join over `state`, with empty scratch.
    fn new(learner: L, enrich: E, state: Rc<RefCell<JoinState>>, example_features: bool) -> Self {
        Self {
            learner,
            enrich,
            state,
            example_features,
            entities: Vec::new(),
            order: Vec::new(),
            hashes: Vec::new(),
            scored: Features::new(),
            spare_features: Vec::new(),
        }
    }

    /// Takes a batch from the input; with `score_on = "arrival"`, scores its impressions
    /// first (into `out`), dropping those already open or scored as duplicates.
    fn receive(&mut self, data: &mut Vec<Interaction>, out: &mut Chunks<Score>) {
        let state = &mut *self.state.borrow_mut();
        state.received += data.len() as u64;
        if state.score_on == ScoreOn::Arrival {
            self.entities.clear();
            self.entities
                .extend(data.iter().filter_map(|x| match &x.kind {
                    InteractionKind::Impression { entities, .. } => Some(*entities),
                    _ => None,
                }));
            if !self.entities.is_empty() {
                self.enrich.prepare(&self.entities);
            }
            let JoinState {
                stats,
                arrived,
                windows,
                schedule,
                ..
            } = state;
            let (learner, enrich) = (&self.learner, &mut self.enrich);
            let (scored, spare) = (&mut self.scored, &mut self.spare_features);
            let version = learner.version();
            data.retain_mut(|Interaction { ts, id, kind, .. }| {
                let InteractionKind::Impression {
                    user,
                    item,
                    category,
                    features,
                    entities,
                    ..
                } = kind
                else {
                    return true;
                };
                if windows.is_open(id) || arrived.contains_key(id.as_str()) {
                    stats.duplicate_impressions += 1;
                    return false;
                }
                // Point in time: the aggregates of everything processed so far.
                scored.clear();
                scored.extend_from_slice(features);
                enrich.enrich(entities, *ts, scored);
                let score = schedule.serve(learner.predict(scored));
                // Learned from with these features.
                if scored.len() > features.len() {
                    *features = travelling(scored, spare);
                }
                out.push(Score {
                    id: id.clone(),
                    user: user.clone(),
                    item: item.clone(),
                    category: category.clone(),
                    score,
                    model_version: version,
                    event_ts: *ts,
                });
                arrived.insert(id.clone(), score);
                true
            });
        }
        state.buffer.take_batch(data);
    }

    /// Processes every buffered record with `ts < watermark`, in order, then closes the
    /// windows that ended before `watermark`.
    fn advance(&mut self, watermark: Watermark, out: &mut Emitted) {
        let state = &mut *self.state.borrow_mut();
        let JoinState {
            fast_skip_ms,
            stats,
            buffer,
            arrived,
            windows,
            schedule,
            ..
        } = state;
        let fast_skip_ms = *fast_skip_ms;
        let watermark = EventTime::try_from(watermark).unwrap_or(EventTime::MAX);
        let order = &mut self.order;
        buffer.ready(watermark, order);
        if order.is_empty() && watermark <= windows.processed_to {
            // Nothing ready, no window to close: the common case with several workers, whose
            // batches arrive between frontier moves.
            return;
        }
        windows.fetch_for_feedback(order.iter().map(|key| buffer.get(key)), fast_skip_ms);
        self.entities.clear();
        self.entities
            .extend(order.iter().filter_map(|key| match &buffer.get(key).kind {
                InteractionKind::Impression { entities, .. } => Some(*entities),
                _ => None,
            }));
        self.enrich.prepare(&self.entities);
        let hashes = &mut self.hashes;
        hashes.clear();
        hashes.extend(order.iter().map(|key| id_hash(&buffer.get(key).id)));
        for &hash in hashes.iter().take(PREFETCH_AHEAD) {
            windows.index.prefetch(hash);
        }
        let (spare, score_on) = (&mut self.spare_features, state.score_on);
        let mut step = Step {
            learner: &mut self.learner,
            enrich: &mut self.enrich,
            schedule,
            stats,
            out,
            example_features: self.example_features,
            at_input_end: false,
        };
        for (k, (key, &hash)) in order.iter().zip(hashes.iter()).enumerate() {
            // The model and the id index are far larger than the cache: start fetching the
            // coordinates of an impression, and the index slot of any record, a few records
            // ahead, so that neither its score nor its lookup waits on memory.
            if let Some(ahead) = order.get(k + PREFETCH_AHEAD) {
                windows.index.prefetch(hashes[k + PREFETCH_AHEAD]);
                if let InteractionKind::Impression { features, .. } = &buffer.get(ahead).kind {
                    step.learner.prefetch(features);
                }
            }
            let &(_, _, b, i) = key;
            // What is kept of the record is taken out of it; the rest is dropped with its
            // batch.
            let Interaction { ts, id, kind, .. } = &mut buffer.batches[b as usize][i as usize];
            let ts = *ts;
            windows.close_before(ts, &mut step);
            match kind {
                InteractionKind::Impression {
                    user,
                    item,
                    category,
                    features,
                    reference,
                    entities,
                } => {
                    // Scored on arrival (`score_on = "arrival"`), with these features.
                    let served = if arrived.is_empty() {
                        None
                    } else {
                        arrived.remove(id.as_str())
                    };
                    if windows.get_hashed(id, hash).is_some() {
                        step.stats.duplicate_impressions += 1;
                        continue;
                    }
                    let mut features = {
                        let travelled = std::mem::take(features);
                        let features = Features::from_slice(&travelled);
                        // Only arrival scoring takes buffers from the pool.
                        if travelled.spilled()
                            && score_on == ScoreOn::Arrival
                            && spare.len() < SPARE_FEATURES
                        {
                            spare.push(travelled.into_vec());
                        }
                        features
                    };
                    let (item, category, entities) =
                        (std::mem::take(item), std::mem::take(category), *entities);
                    let score = match served {
                        Some(score) => score,
                        None => {
                            // Point in time: the aggregates of everything before this
                            // impression.
                            step.enrich.enrich(&entities, ts, &mut features);
                            let score = step.schedule.serve(step.learner.predict(&features));
                            step.out.scores.push(Score {
                                id: id.clone(),
                                user: std::mem::take(user),
                                item: item.clone(),
                                category: category.clone(),
                                score,
                                model_version: step.learner.version(),
                                event_ts: ts,
                            });
                            score
                        }
                    };
                    step.enrich.record(&entities, ts, Signal::Impression);
                    step.stats.impressions += 1;
                    let body = Body {
                        served: score,
                        features,
                        reference: *reference,
                        item,
                        category,
                    };
                    if !windows.open(std::mem::take(id), hash, ts, entities, body) {
                        // Its window closed before it arrived: no feedback can be trusted.
                        step.stats.late_impressions += 1;
                    }
                }
                feedback => {
                    let label = match *feedback {
                        InteractionKind::Click => Some(LabelSource::Click),
                        InteractionKind::Like => Some(LabelSource::Like),
                        InteractionKind::Skip { dwell_ms } if dwell_ms < fast_skip_ms => {
                            Some(LabelSource::FastSkip)
                        }
                        _ => None,
                    };
                    let Some((at, entry)) = windows.get_hashed(id, hash) else {
                        step.stats.orphan_feedback += 1;
                        continue;
                    };
                    if entry.closed {
                        step.stats.late_feedback += 1;
                        continue;
                    }
                    // Every click, like and fast skip counts for the entity features, even
                    // one that no longer decides the label.
                    let signal = match label {
                        Some(LabelSource::Click) => Some(Signal::Click),
                        Some(LabelSource::Like) => Some(Signal::Like),
                        Some(LabelSource::FastSkip) => Some(Signal::FastSkip),
                        _ => None,
                    };
                    if let Some(signal) = signal {
                        step.enrich.record(&entry.entities, ts, signal);
                    }
                    let Some(label) = label else {
                        step.stats.slow_skip += 1;
                        continue;
                    };
                    if entry.decided {
                        step.stats.duplicate_feedback += 1;
                        continue;
                    }
                    windows.decide(at, label, ts, &mut step);
                }
            }
        }
        buffer.remove_ready(watermark);
        step.at_input_end = watermark == EventTime::MAX;
        windows.close_before(watermark, &mut step);
        windows.within_budget();
    }
}

/// The hash [`Windows`] indexes an impression id by: [`route`]'s, remixed (murmur3's
/// finalizer), because every id a worker owns shares `route`'s low bits, which the table
/// would otherwise use to place it.
fn id_hash(id: &str) -> u64 {
    let mut h = route(id);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Adds `seq` to the id index under `hash`; a rebuild of the index (see [`IdIndex`]) reads
/// the ids of the other impressions in memory from `ring` (in time proportional to them,
/// however many chunks are out of memory).
fn index_insert(index: &mut IdIndex, ring: &Ring, hash: u64, seq: u64) {
    index.insert(hash, seq, || {
        (ring.iter_seq())
            .filter(move |&(s, _)| s != seq)
            .map(|(s, (id, _))| (id_hash(id), s))
    });
}

/// Stands in, while a chunk is read back, for an impression the chunk has loose.
const PLACEHOLDER: Stub = Stub {
    ts: 0,
    entities: Entities {
        user: 0,
        item: 0,
        user_category: 0,
    },
    body: BodyRef::DEAD,
    decided: true,
    provisional: false,
    closed: true,
    stored: true,
};

/// How many records ahead the model's coordinates are prefetched.
const PREFETCH_AHEAD: usize = 8;

/// When labels reach the learner, and how served scores are corrected for it.
///
/// # Why labels are not simply learned when final
///
/// A positive is final seconds after its impression (the click); most negatives only when
/// the attribution window closes, 30 minutes later. Learning each label when it becomes
/// final therefore feeds the model the positives of the last half hour but not their
/// negatives: every coordinate active in that half hour (a busy user, a trending item)
/// drifts up, and the served scores are over-confident (measured on the generator's
/// stream: calibration 1.24 and logloss 7% above a learner without delay).
///
/// # Provisional negatives (the default)
///
/// The fake-negative scheme of Ktena et al. 2019 ("Addressing delayed feedback for
/// continuous training with neural networks in CTR prediction"), with a short wait as in
/// Gu et al. 2021: an impression with no decisive feedback `fast_skip_ms` after it was
/// shown is learned as a negative then; a click or like that arrives later in the window
/// is learned as a positive on top of it, and the closing window adds nothing. Clicks and
/// fast skips inside the wait are learned once, as usual. The model then fits
/// `q = p / (1 + p (1 - c))`, where `p` is the click probability and `c` the share of
/// positives that arrive within the wait, so serving inverts that:
/// `p = q / (1 - q (1 - c))`, with `c` counted online over the labels seen (plus-one
/// smoothed). Every label reaches the model within seconds and calibration holds. The
/// examples emitted, and the label counters, still follow the contract's label semantics.
///
/// # On final labels
///
/// `delay_correction = "none"` learns each label once, when final, and serves the model's
/// output as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Schedule {
    correction: DelayCorrection,
    /// Positives that became final before their provisional negative was due.
    early_positives: u64,
    /// All positives.
    positives: u64,
    /// `1 - c`, refreshed as positives are counted.
    late_share: f32,
}

impl Schedule {
    fn new(correction: DelayCorrection) -> Self {
        Self {
            correction,
            early_positives: 0,
            positives: 0,
            late_share: 0.5,
        }
    }

    /// The score to serve for the model's output `q`.
    fn serve(&self, q: f32) -> f32 {
        match self.correction {
            DelayCorrection::None => q,
            DelayCorrection::ProvisionalNegatives => {
                let p = q / (1.0 - q * self.late_share);
                p.clamp(f32::MIN_POSITIVE, 1.0 - f32::EPSILON)
            }
        }
    }

    fn count_positive(&mut self, early: bool) {
        self.positives += 1;
        self.early_positives += u64::from(early);
        let c = (self.early_positives + 1) as f32 / (self.positives + 2) as f32;
        self.late_share = 1.0 - c;
    }
}

/// How the learner is protected from the bias of delayed labels (`label.delay_correction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayCorrection {
    /// Learn a provisional negative for every impression undecided after `fast_skip_ms`,
    /// a positive on top when a click comes later, and correct served scores for it.
    #[default]
    ProvisionalNegatives,
    /// Learn each label once, when it is final.
    None,
}

/// When an impression is scored (`label.score_on`).
///
/// Either way it is scored once, before its label is known, and learned from with exactly
/// the features it was scored with; labels are learned in event-time order once the
/// watermark passes them. What differs is which labels its score has seen, and how long it
/// waits:
/// - `Watermark` scores it when the watermark passes its `ts`, after every label final
///   before it and none after. The run is deterministic (a replay gives the same scores
///   bit for bit; after a crash the same scores again), but a score waits for the slowest
///   partition and the allowed lateness.
/// - `Arrival` scores it as soon as it reaches its worker, with the model and entity
///   features of that moment (labels learned so far: final before the watermark). A score
///   waits for nothing, but which labels it has seen depends on timing: scores of records
///   read again after a crash may differ from the first ones, and so may what is learned
///   from them (their served features). Still nothing is lost or applied twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreOn {
    /// Once the watermark passes the impression, in event-time order.
    #[default]
    Watermark,
    /// As soon as the impression reaches its worker.
    Arrival,
}

/// What processing one record may touch besides the windows.
struct Step<'a, L, E> {
    learner: &'a mut L,
    enrich: &'a mut E,
    schedule: &'a mut Schedule,
    stats: &'a mut JoinStats,
    out: &'a mut Emitted,
    example_features: bool,
    /// The input has ended: the windows closing now close because no event will come.
    at_input_end: bool,
}

impl<L: Learner, E> Step<'_, L, E> {
    /// Makes `label` final for `entry` (whose body is `body`): counts it, emits the
    /// example, and learns it unless a provisional negative already stands for it.
    fn finalize(
        &mut self,
        id: &CompactString,
        entry: &mut Stub,
        body: &Body,
        label: LabelSource,
        label_ts: EventTime,
    ) {
        entry.decided = true;
        match label {
            LabelSource::Click => self.stats.positive_click += 1,
            LabelSource::Like => self.stats.positive_like += 1,
            LabelSource::FastSkip => self.stats.negative_fast_skip += 1,
            LabelSource::Expired => self.stats.negative_expired += 1,
        }
        let positive = label.is_positive();
        if positive {
            self.schedule.count_positive(!entry.provisional);
        }
        // A negative after a provisional negative is already learned; a positive is learned
        // on top of it (the correction in `Schedule::serve` accounts for that).
        if positive || !entry.provisional {
            self.learner.update(&body.features, positive);
        }
        self.out.examples.push(Example {
            id: id.clone(),
            impression_ts: entry.ts,
            label_ts,
            served: body.served,
            label,
            at_input_end: self.at_input_end,
            reference: body.reference,
            item: body.item.clone(),
            category: body.category.clone(),
            // Copied only when asked for (one allocation per example then).
            features: if self.example_features {
                body.features.to_vec()
            } else {
                Vec::new()
            },
        });
    }

    /// Learns the provisional negative of an impression still undecided after the wait.
    fn provisional(&mut self, entry: &mut Stub, body: &Body) {
        entry.provisional = true;
        self.stats.provisional_negatives += 1;
        self.learner.update(&body.features, false);
    }
}

/// Attribution windows: the impressions still open, and the recently closed ones.
///
/// Impressions are opened in `ts` order and every window has the same length, so
/// provisional negatives fall due, windows close, and closed impressions are forgotten all
/// in the order the impressions opened. They therefore live in one ring indexed by their
/// opening sequence number, with a cursor per kind of deadline: no lookup and no reordering
/// on the way, and only feedback looks an id up, in a map from id to sequence number. A
/// closed impression stays one more window so that feedback for it counts as late, not as
/// an orphan. (A late impression, opened after newer ones, closes with them: at most one
/// window length late.)
///
/// The ring holds each impression's [`Stub`]; its [`Body`] is in memory while it may still
/// be needed and the budget allows, otherwise in the spill store (see
/// [`pending`](super::pending)). Bodies leave memory newest first among those past their
/// provisional negative, since the close cursor needs the oldest soonest, and come back in
/// batches: all those a batch's feedback needs in one read before the batch, and the next
/// [`FETCH_CHUNK`] the cursors will reach in one read when a cursor meets one. Stubs
/// leave memory too, by whole [`CHUNK`]s of the ring, within `pending_stubs_memory_mb`
/// (see [`pending`](super::pending)): the cursors read their chunks back a chunk ahead,
/// and feedback finds a stub out of memory through the store's id hints, before the batch.
#[derive(Debug)]
struct Windows {
    window_ms: EventTime,
    /// After this long undecided, an impression gets its provisional negative; `None` when
    /// labels are learned only when final.
    wait_ms: Option<EventTime>,
    /// Impressions opened and not yet forgotten, oldest first, by sequence number.
    ring: Ring,
    /// Stubs kept in memory at most, when there is a store to spill to.
    stub_budget: usize,
    /// Stubs written to the store, and chunks read back, so far.
    stubs_written: u64,
    chunks_read_back: u64,
    /// Chunks moved out of memory over the budget, so far.
    chunks_spilled: u64,
    /// Chunks the restore left in the store.
    chunks_left_at_restore: u64,
    /// Most stubs in memory after a batch.
    peak_stubs: usize,
    /// Stubs brought back on their own (loose), for their feedback, so far.
    stubs_fetched: u64,
    /// With labels learned only when final: impressions from here on are younger than
    /// `hot_ms`, so most of their feedback is still to come and their stubs stay in memory.
    hot_cursor: u64,
    hot_ms: EventTime,
    /// The bodies in memory.
    bodies: Bodies,
    /// Bodies kept in memory at most, when there is a store to spill to.
    budget: usize,
    /// Where bodies beyond the budget go; `None`: they all stay in memory.
    spill: Option<Spill>,
    /// Stubs whose body is in the spill store only.
    spilled: usize,
    /// Bodies written to a scratch store, and read back, so far.
    written: u64,
    read_back: u64,
    /// Most bodies in memory after a batch.
    peak_resident: usize,
    /// With checkpoints: the impressions from here on changed since the last checkpoint
    /// (or are newer), so none of them may leave memory yet.
    stored_below: u64,
    /// The next impression whose provisional negative may be due.
    wait_cursor: u64,
    /// The next impression whose window may close.
    close_cursor: u64,
    /// Sequence number of every impression in the ring, found by the hash of its id
    /// ([`id_hash`]) and compared with the id in the ring: 8 bytes an entry rather than a
    /// copy of the id, so that the index of a busy hour stays in cache. Also holds stale
    /// entries of forgotten impressions, which match no id, until it is half full
    /// ([`IdIndex`]).
    index: IdIndex,
    /// Windows ending before this are closed; records before it are processed.
    processed_to: EventTime,
    /// Sequence numbers `persisted.0..persisted.1` are in the last checkpoint.
    persisted: (u64, u64),
    /// Persisted impressions changed since the last checkpoint.
    dirty: Vec<u64>,
}

/// Bodies read back in one batch when a cursor meets one out of memory.
const FETCH_CHUNK: usize = 1024;

impl Windows {
    fn new(config: &LabelConfig) -> Self {
        let wait_ms = match config.delay_correction {
            DelayCorrection::ProvisionalNegatives => Some(EventTime::from(config.fast_skip_ms)),
            DelayCorrection::None => None,
        };
        Self {
            window_ms: EventTime::try_from(config.window_ms).unwrap_or(EventTime::MAX),
            wait_ms,
            ring: Ring::default(),
            stub_budget: config.pending_stubs(),
            stubs_written: 0,
            chunks_read_back: 0,
            chunks_spilled: 0,
            chunks_left_at_restore: 0,
            peak_stubs: 0,
            stubs_fetched: 0,
            hot_cursor: 0,
            hot_ms: EventTime::from(config.fast_skip_ms),
            bodies: Bodies::default(),
            budget: config.pending_bodies(),
            spill: None,
            spilled: 0,
            written: 0,
            read_back: 0,
            peak_resident: 0,
            stored_below: 0,
            wait_cursor: 0,
            close_cursor: 0,
            index: IdIndex::default(),
            processed_to: EventTime::MIN,
            persisted: (0, 0),
            dirty: Vec::new(),
        }
    }

    fn end(&self) -> u64 {
        self.ring.end()
    }

    /// Notes that the impression at ring position `at` changed (for the next checkpoint, if
    /// the last one holds it: until then its body stays in memory).
    fn touched(&mut self, at: usize) {
        let seq = self.ring.first + at as u64;
        if seq < self.persisted.1 {
            self.dirty.push(seq);
        }
        let scratch = self
            .spill
            .as_ref()
            .is_some_and(|s| s.to == SpillTo::Scratch);
        if !scratch && let Some((_, entry)) = self.ring.get_mut(at) {
            entry.stored = false;
        }
    }

    /// Whether impression `id` was seen within the last two windows.
    fn is_open(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The impression `id`'s ring position and stub.
    fn get(&self, id: &str) -> Option<(usize, &Stub)> {
        self.get_hashed(id, id_hash(id))
    }

    /// [`get`](Self::get), with `hash = id_hash(id)` already computed.
    #[inline]
    fn get_hashed(&self, id: &str, hash: u64) -> Option<(usize, &Stub)> {
        let Self { ring, index, .. } = self;
        let seq = index.find(hash, ring.first, |seq| {
            ring.get_seq(seq).is_some_and(|(k, _)| k == id)
        })?;
        let at = usize::try_from(seq - ring.first).ok()?;
        ring.get(at).map(|(_, entry)| (at, entry))
    }

    /// Appends impression `id` (whose [`id_hash`] is `hash`) to the ring and the index (not
    /// yet in the index).
    fn push(&mut self, id: CompactString, hash: u64, entry: Stub) {
        let seq = self.end();
        self.ring.push_back((id, entry));
        index_insert(&mut self.index, &self.ring, hash, seq);
    }

    /// Opens the window of impression `id` (whose [`id_hash`] is `hash`), shown at `ts`;
    /// false if it had already closed by its arrival. A late impression still takes its
    /// place in the ring, closed and decided (nothing to learn, no body), so that a copy of
    /// it arriving later is a duplicate, not a second impression scored again, and its
    /// feedback is late, not an orphan. Its stub is dated by the watermark it arrived at,
    /// not its own `ts`: the ring stays in time order, and it is forgotten with the
    /// impressions that arrived beside it, two windows on.
    fn open(
        &mut self,
        id: CompactString,
        hash: u64,
        ts: EventTime,
        entities: Entities,
        body: Body,
    ) -> bool {
        let late = ts.saturating_add(self.window_ms) < self.processed_to;
        let entry = Stub {
            ts: if late { self.processed_to } else { ts },
            entities,
            body: if late {
                BodyRef::DEAD
            } else {
                self.bodies.insert(body)
            },
            decided: late,
            provisional: false,
            closed: late,
            stored: false,
        };
        self.push(id, hash, entry);
        !late
    }

    /// Makes `label` final for the undecided impression at `at`, and drops its body.
    fn decide<L: Learner, E>(
        &mut self,
        at: usize,
        label: LabelSource,
        label_ts: EventTime,
        step: &mut Step<'_, L, E>,
    ) {
        self.in_memory(at);
        let Self { ring, bodies, .. } = self;
        let Some((id, entry)) = ring.get_mut(at) else {
            return;
        };
        let body = bodies
            .get(entry.body)
            .expect("an undecided impression's body is in memory once fetched");
        step.finalize(id, entry, body, label, label_ts);
        bodies.release(entry.body);
        entry.body = BodyRef::DEAD;
        self.touched(at);
    }

    /// Brings the body at `at` into memory if it left, with the next ones the cursors will
    /// need, in one read.
    fn in_memory(&mut self, at: usize) {
        if self
            .ring
            .get(at)
            .is_none_or(|(_, e)| e.body != BodyRef::SPILLED)
        {
            return;
        }
        let needed = |e: &Stub| e.body == BodyRef::SPILLED && !e.decided && !e.closed;
        let ring = &self.ring;
        let seqs: Vec<u64> = (at..at + FETCH_CHUNK * 8)
            .filter(|&i| ring.get(i).is_some_and(|(_, e)| i == at || needed(e)))
            .map(|i| ring.first + i as u64)
            .take(FETCH_CHUNK)
            .collect();
        self.fetch(&seqs);
    }

    /// Before a batch: brings back, in one read, the bodies its decisive feedback needs.
    fn fetch_for_feedback<'r>(
        &mut self,
        records: impl Iterator<Item = &'r Interaction> + Clone,
        fast_skip_ms: u32,
    ) {
        self.fetch_stubs(records.clone());
        if self.spilled == 0 {
            return;
        }
        let mut seqs: Vec<u64> = records
            .filter(|r| match r.kind {
                InteractionKind::Click | InteractionKind::Like => true,
                InteractionKind::Skip { dwell_ms } => dwell_ms < fast_skip_ms,
                InteractionKind::Impression { .. } => false,
            })
            .filter_map(|r| {
                let (at, e) = self.get(&r.id)?;
                (e.body == BodyRef::SPILLED && !e.decided && !e.closed)
                    .then_some(self.ring.first + at as u64)
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for chunk in seqs.chunks(FETCH_CHUNK) {
            self.fetch(chunk);
        }
    }

    /// Reads the bodies of `seqs` (ascending) back from the spill store.
    ///
    /// # Panics
    /// If the store fails or lacks one: a body leaves memory only once the store holds it,
    /// so the state is broken (a restart resumes from the last checkpoint).
    fn fetch(&mut self, seqs: &[u64]) {
        let Some(spill) = &self.spill else {
            panic!("pending impressions left memory without a store to spill to");
        };
        let keys: Vec<(u32, u64)> = seqs.iter().map(|s| (spill.worker, *s)).collect();
        let values = PENDING
            .multi_get(spill.store.get(), &keys)
            .unwrap_or_else(|e| panic!("reading pending impressions back failed: {e}"));
        for (seq, value) in seqs.iter().zip(values) {
            let Some((_, stored)) = value else {
                panic!(
                    "pending impression {seq} of worker {} left memory but is not in the store",
                    spill.worker
                );
            };
            let at = (seq - self.ring.first) as usize;
            if let Some((_, entry)) = self.ring.get_mut(at)
                && entry.body == BodyRef::SPILLED
            {
                entry.body = self.bodies.insert(stored.split().1);
                self.spilled -= 1;
                self.read_back += 1;
            }
        }
    }

    /// Before a batch, with chunks out of memory: brings back on their own, in one read of
    /// the id hints and one of the impressions, the stubs out of memory that the batch's
    /// records name (feedback for them, or an impression seen again). An id not in memory
    /// costs a hint lookup only while some chunk is out; a run that never spills pays
    /// nothing.
    fn fetch_stubs<'r>(&mut self, records: impl Iterator<Item = &'r Interaction>) {
        if self.ring.spilled_chunks == 0 {
            return;
        }
        let Some(spill) = &self.spill else {
            return;
        };
        let worker = spill.worker;
        let mut ids: Vec<(u32, String)> = records
            .filter(|r| self.get(&r.id).is_none())
            .map(|r| (worker, r.id.to_string()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let store = spill.store.get();
        let hints = PENDING_IDS
            .multi_get(store, &ids)
            .unwrap_or_else(|e| panic!("reading pending impression ids failed: {e}"));
        let mut wanted: Vec<(u64, usize)> = hints
            .iter()
            .enumerate()
            .filter_map(|(i, hint)| hint.filter(|&seq| self.ring.is_out(seq)).map(|s| (s, i)))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Not deduplicated by sequence number: a stale hint of another id may point to the
        // same one, and only the record's own id may claim it.
        wanted.sort_unstable();
        let keys: Vec<(u32, u64)> = wanted.iter().map(|(seq, _)| (worker, *seq)).collect();
        let values = PENDING
            .multi_get(store, &keys)
            .unwrap_or_else(|e| panic!("reading pending impressions back failed: {e}"));
        for ((seq, i), value) in wanted.into_iter().zip(values) {
            // A hint left by an earlier run may point to another impression.
            let Some((id, stored)) = value.filter(|(id, _)| id.as_str() == ids[i].1) else {
                continue;
            };
            let (mut stub, body) = stored.split();
            stub.stored = true;
            stub.body = if stub.decided || stub.closed {
                BodyRef::DEAD
            } else {
                self.bodies.insert(body)
            };
            let hash = id_hash(&id);
            self.ring.insert_loose(seq, (id, stub));
            index_insert(&mut self.index, &self.ring, hash, seq);
            self.stubs_fetched += 1;
        }
    }

    /// A stored impression back in memory as a stub: its body in memory while within the
    /// budget, else left in the store; none once its label is decided or its window closed.
    fn unstore(&mut self, stored: Pending) -> Stub {
        let (mut stub, body) = stored.split();
        stub.stored = true;
        stub.body = if stub.decided || stub.closed {
            BodyRef::DEAD
        } else if self.bodies.resident() < self.budget {
            self.bodies.insert(body)
        } else {
            self.spilled += 1;
            BodyRef::SPILLED
        };
        stub
    }

    /// Brings the chunk of sequence number `cursor` back into memory if it is out, and the
    /// next one: a cursor entering a chunk finds it read one chunk ahead.
    fn read_ahead(&mut self, cursor: u64) {
        let n = cursor / CHUNK;
        for n in [n, n + 1] {
            if self.ring.chunk_out(n * CHUNK) {
                self.load_chunk(n);
            }
        }
    }

    /// Reads chunk `n` back from the store in one batched read; its loose impressions are
    /// kept as they are (they are the truth). Bodies come back within their budget.
    ///
    /// # Panics
    /// If the store fails or lacks one: a chunk leaves memory only once the store holds
    /// all of it.
    fn load_chunk(&mut self, n: u64) {
        let Some(range) = self.ring.chunk_range(n) else {
            return;
        };
        let Some(spill) = &self.spill else {
            panic!("pending impressions left memory without a store to spill to");
        };
        let worker = spill.worker;
        let keys: Vec<(u32, u64)> = range.clone().map(|seq| (worker, seq)).collect();
        let values = PENDING
            .multi_get(spill.store.get(), &keys)
            .unwrap_or_else(|e| panic!("reading pending impressions back failed: {e}"));
        let mut entries = Vec::with_capacity(keys.len());
        for (seq, value) in range.zip(values) {
            if self.ring.is_loose(seq) {
                entries.push((CompactString::default(), PLACEHOLDER));
                continue;
            }
            let Some((id, stored)) = value else {
                panic!(
                    "pending impression {seq} of worker {worker} left memory but is not in the store"
                );
            };
            entries.push((id, self.unstore(stored)));
        }
        for seq in self.ring.restore_chunk(n, entries) {
            let hash = self.ring.get_seq(seq).map_or(0, |(id, _)| id_hash(id));
            index_insert(&mut self.index, &self.ring, hash, seq);
        }
        self.chunks_read_back += 1;
    }

    /// After a batch: if more stubs than their budget are in memory, moves whole chunks
    /// out, newest first, down to seven eighths of the budget. A chunk may go if it lies
    /// before the newest impressions (those younger than `fast_skip_ms`, before their
    /// provisional negative, which most feedback hits), is
    /// not one of the two chunks a cursor (closing, or forgetting) reaches next, and with
    /// checkpoints if all of it is checkpointed unchanged. Open windows go first, then
    /// closed ones (remembered for late feedback): the close cursor needs the first of
    /// either about as soon, and chunks of open windows hold the bodies. A scratch store
    /// gets the chunks' impressions, in sequence order; every store gets their id hints.
    fn stubs_within_budget(&mut self) {
        if self.ring.resident <= self.stub_budget {
            return;
        }
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let scratch = spill.to == SpillTo::Scratch;
        let end = self.ring.end();
        let top = match self.wait_ms {
            Some(_) => self.wait_cursor,
            None => {
                let mut hot = self.hot_cursor.max(self.ring.first);
                while let Some((_, e)) = self.ring.get_seq(hot)
                    && e.ts.saturating_add(self.hot_ms) < self.processed_to
                {
                    hot += 1;
                }
                self.hot_cursor = hot;
                hot
            }
        }
        .min(self.stored_below)
        .min(end);
        let closing = self.close_cursor.max(self.ring.first) / CHUNK;
        let forgetting = self.ring.first / CHUNK;
        let target = self.stub_budget - self.stub_budget / 8;
        let empty = Body::default();
        let open = (closing + 2..top / CHUNK).rev();
        let closed = (forgetting + 2..closing).rev();
        let mut moved = false;
        for n in open.chain(closed) {
            if self.ring.resident <= target {
                break;
            }
            let (Some(range), Some(entries)) =
                (self.ring.chunk_range(n), self.ring.chunk_entries(n))
            else {
                continue;
            };
            if !scratch && entries.iter().any(|(_, e)| !e.stored) {
                continue;
            }
            moved = true;
            self.chunks_spilled += 1;
            // Their index entries stay behind, stale (no lookup matches an impression out
            // of memory), until the index is rebuilt without them (see [`IdIndex`]).
            for (seq, (id, entry)) in range.zip(self.ring.spill_chunk(n)) {
                PENDING_IDS.put(&mut spill.queued, &(spill.worker, id.to_string()), &seq);
                if entry.body == BodyRef::SPILLED {
                    self.spilled -= 1;
                } else if scratch {
                    let body = self.bodies.get(entry.body).unwrap_or(&empty);
                    let value = (id, Pending::of(&entry, body));
                    PENDING.put(&mut spill.queued, &(spill.worker, seq), &value);
                    self.stubs_written += 1;
                }
                self.bodies.release(entry.body);
            }
        }
        if moved {
            // Before anything reads them back.
            let batch = std::mem::take(&mut spill.queued);
            spill
                .store
                .get()
                .write_unsynced(batch)
                .unwrap_or_else(|e| panic!("writing pending impressions out failed: {e}"));
        }
    }

    /// After a batch: if more bodies than the budget are in memory, moves bodies out, newest
    /// first among those that may go (past their provisional negative; with checkpoints,
    /// checkpointed unchanged), down to seven eighths of the budget. A scratch store gets
    /// them in one unsynced write.
    fn within_budget(&mut self) {
        self.peak_stubs = self.peak_stubs.max(self.ring.resident);
        self.stubs_within_budget();
        let resident = self.bodies.resident();
        self.peak_resident = self.peak_resident.max(resident);
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        if resident <= self.budget {
            // Deletes of forgotten impressions go out with spills, or once enough queued.
            if spill.queued.len() >= FETCH_CHUNK {
                let batch = std::mem::take(&mut spill.queued);
                spill
                    .store
                    .get()
                    .write_unsynced(batch)
                    .unwrap_or_else(|e| panic!("writing pending impressions out failed: {e}"));
            }
            return;
        }
        let scratch = spill.to == SpillTo::Scratch;
        let mut excess = resident - (self.budget - self.budget / 8);
        let end = self.ring.end();
        let top = match self.wait_ms {
            Some(_) => self.wait_cursor,
            None => end,
        }
        .min(self.stored_below)
        .min(end);
        let bottom = self.close_cursor.max(self.ring.first);
        // Bounded, so that a budget smaller than what must stay in memory costs little.
        let mut scan = excess.saturating_mul(4).saturating_add(1 << 16);
        let mut seq = top;
        while excess > 0 && scan > 0 && seq > bottom {
            seq -= 1;
            scan -= 1;
            if self.ring.chunk_out(seq) {
                // Its bodies left with it (but those of loose stubs, which stay).
                seq -= seq % CHUNK;
                continue;
            }
            let Some((id, entry)) = self.ring.get_mut((seq - self.ring.first) as usize) else {
                continue;
            };
            let Some(body) = self.bodies.get(entry.body) else {
                continue;
            };
            if !entry.stored {
                if !scratch {
                    continue;
                }
                PENDING.put(
                    &mut spill.queued,
                    &(spill.worker, seq),
                    &(id.clone(), Pending::of(entry, body)),
                );
                entry.stored = true;
                self.written += 1;
            }
            self.bodies.release(entry.body);
            entry.body = BodyRef::SPILLED;
            self.spilled += 1;
            excess -= 1;
        }
        if !spill.queued.is_empty() {
            let batch = std::mem::take(&mut spill.queued);
            spill
                .store
                .get()
                .write_unsynced(batch)
                .unwrap_or_else(|e| panic!("writing pending impressions out failed: {e}"));
        }
    }

    /// The ring position of sequence number `cursor` and the time its deadline `after` the
    /// impression falls, if that is before `until`.
    fn due(&self, cursor: u64, after: EventTime, until: EventTime) -> Option<(usize, EventTime)> {
        let at = usize::try_from(cursor.checked_sub(self.ring.first)?).ok()?;
        let (_, entry) = self.ring.get(at)?;
        Some((at, entry.ts.saturating_add(after))).filter(|(_, t)| *t < until)
    }

    /// For a cursor at ring position `at`: starts loading the ring entry four strides
    /// ahead, the body of the one two strides ahead, and the model coordinates of the one
    /// a stride ahead (each loaded by the time the next step needs it).
    #[inline]
    fn prefetch_ahead<L: Learner, E>(&self, at: usize, step: &Step<'_, L, E>) {
        self.ring.prefetch(at + 4 * PREFETCH_AHEAD);
        if let Some((_, far)) = self.ring.get(at + 2 * PREFETCH_AHEAD) {
            self.bodies.prefetch(far.body);
        }
        // Only for an update: at the close cursor an impression whose provisional negative
        // stands is not learned again, and a prefetch that is not needed takes the place
        // of one that is (with the memory busy, the prefetches themselves wait).
        if let Some((_, ahead)) = self.ring.get(at + PREFETCH_AHEAD)
            && !ahead.provisional
            && let Some(body) = self.bodies.get(ahead.body)
        {
            step.learner.prefetch(&body.features);
        }
    }

    /// Learns the provisional negatives due, and closes the windows that ended, before
    /// `until`, in time order: undecided impressions become negatives. Then forgets the
    /// impressions closed for a whole window.
    fn close_before<L: Learner, E>(&mut self, until: EventTime, step: &mut Step<'_, L, E>) {
        self.processed_to = self.processed_to.max(until);
        loop {
            if self.ring.spilled_chunks > 0 {
                self.read_ahead(self.close_cursor);
                self.read_ahead(self.wait_cursor);
            }
            let wait = self
                .wait_ms
                .and_then(|wait_ms| self.due(self.wait_cursor, wait_ms, until));
            let close = self.due(self.close_cursor, self.window_ms, until);
            match (wait, close) {
                (Some((at, w)), c) if c.is_none_or(|(_, c)| w <= c) => {
                    self.wait_cursor += 1;
                    self.prefetch_ahead(at, step);
                    if self.ring.get(at).is_some_and(|(_, e)| !e.decided) {
                        self.in_memory(at);
                        let Self { ring, bodies, .. } = self;
                        if let Some((_, entry)) = ring.get_mut(at)
                            && let Some(body) = bodies.get(entry.body)
                        {
                            step.provisional(entry, body);
                        }
                        self.touched(at);
                    }
                }
                (_, Some((at, deadline))) => {
                    self.close_cursor += 1;
                    self.prefetch_ahead(at, step);
                    self.wait_cursor = self.wait_cursor.max(self.close_cursor);
                    if self.ring.get(at).is_some_and(|(_, e)| !e.decided) {
                        self.decide(at, LabelSource::Expired, deadline, step);
                    }
                    if let Some((_, entry)) = self.ring.get_mut(at) {
                        entry.closed = true;
                        self.touched(at);
                    }
                }
                _ => break,
            }
        }
        let forget_after = self.window_ms.saturating_mul(2);
        loop {
            if self.ring.spilled_chunks > 0 {
                self.read_ahead(self.ring.first);
            }
            let Some((_, entry)) = self.ring.front() else {
                break;
            };
            if !entry.closed || entry.ts.saturating_add(forget_after) >= until {
                break;
            }
            let first = self.ring.first;
            let Some(((id, entry), hinted)) = self.ring.pop_front() else {
                break;
            };
            // Its index entry stays behind, stale, until the index is rebuilt: see
            // [`IdIndex`].
            self.bodies.release(entry.body);
            if let Some(spill) = self.spill.as_mut() {
                if spill.to == SpillTo::Scratch && entry.stored {
                    PENDING.delete(&mut spill.queued, &(spill.worker, first));
                }
                if hinted {
                    PENDING_IDS.delete(&mut spill.queued, &(spill.worker, id.to_string()));
                }
            }
        }
    }
}

/// The rest of a worker's join state, under `(worker, JOIN_PART)`.
const OPERATORS: Table<(u32, u8), JoinRecord> = Table::new(TableId::Operators);
/// The label join's part of a worker's [`TableId::Operators`] entries.
const JOIN_PART: u8 = 0;
/// Buffered impressions already scored (`score_on = "arrival"`), with the score served; in
/// an entry of its own, so that checkpoints written before it existed still restore.
const ARRIVED: Table<(u32, u8), Vec<(CompactString, f32)>> = Table::new(TableId::Operators);
const ARRIVED_PART: u8 = 6;

/// What a checkpoint keeps of a worker's [`JoinState`] besides its pending impressions.
#[derive(Serialize, Deserialize)]
struct JoinRecord {
    stats: JoinStats,
    buffer: Vec<Interaction>,
    schedule: Schedule,
    /// Sequence numbers `first..end` are in [`PENDING`].
    first: u64,
    end: u64,
    wait_cursor: u64,
    close_cursor: u64,
    processed_to: EventTime,
}

/// # Memory
///
/// Bodies of pending impressions beyond `label.pending_memory_mb` leave memory for a
/// store given with [`spill_to`](Self::spill_to) (a restored join spills to the store it
/// was restored from); see [`pending`](super::pending).
impl JoinState {
    /// Lets bodies beyond the memory budget leave memory for `store`, as worker `worker`'s.
    /// Call on a new join, before it processes anything.
    pub fn spill_to(&mut self, store: impl Into<SpillStore>, worker: u32, to: SpillTo) {
        let w = &mut self.windows;
        debug_assert!(w.ring.is_empty(), "spill_to is for a new join");
        w.stored_below = match to {
            SpillTo::Scratch => u64::MAX,
            SpillTo::Checkpoints => w.stored_below,
        };
        w.spill = Some(Spill {
            store: store.into(),
            worker,
            to,
            queued: Batch::new(),
        });
    }

    /// How the pending impressions use memory.
    pub fn spill_stats(&self) -> SpillStats {
        let w = &self.windows;
        SpillStats {
            resident: w.bodies.resident() as u64,
            peak_resident: w.peak_resident as u64,
            spilled: w.spilled as u64,
            written: w.written,
            read_back: w.read_back,
            stubs_resident: w.ring.in_memory() as u64,
            peak_stubs_resident: w.peak_stubs as u64,
            stubs_spilled: (w.ring.spilled_chunks as u64 * CHUNK)
                .saturating_sub(w.ring.loose() as u64),
            stubs_written: w.stubs_written,
            chunks_read_back: w.chunks_read_back,
            chunks_spilled: w.chunks_spilled,
            chunks_left_at_restore: w.chunks_left_at_restore,
            chunks_in_memory: w.ring.chunks_in_memory() as u64,
            peak_chunks_in_memory: w.ring.peak_chunks() as u64,
        }
    }
}

/// # Checkpoints
///
/// Pending impressions are written incrementally: a checkpoint puts the impressions opened
/// or changed since the last one and deletes those forgotten since, keyed by worker and
/// sequence number; everything else (received but unprocessed records, cursors, counters)
/// is one record per worker. A decided or closed impression is written without its body,
/// which nothing reads again. Between [`checkpoint_into`](Self::checkpoint_into) and
/// [`checkpoint_done`](Self::checkpoint_done) nothing may be processed.
impl JoinState {
    /// Adds what changed since the last checkpoint of worker `worker` to `batch`.
    ///
    /// # Panics
    /// If a changed impression's body is out of memory and cannot be read back: bodies
    /// leave memory only when checkpointed unchanged, so this is a broken state.
    pub fn checkpoint_into(&self, worker: u32, batch: &mut Batch) {
        let w = &self.windows;
        let end = w.end();
        for seq in w.persisted.0..w.ring.first.min(w.persisted.1) {
            PENDING.delete(batch, &(worker, seq));
        }
        let mut changed = w.dirty.clone();
        changed.sort_unstable();
        changed.dedup();
        let new = w.persisted.1.max(w.ring.first)..end;
        let empty = Body::default();
        let mut out_of_memory = Vec::new();
        for seq in changed
            .into_iter()
            .filter(|s| *s >= w.ring.first)
            .chain(new)
        {
            let Some((id, entry)) = w.ring.get_seq(seq) else {
                continue;
            };
            match w.bodies.get(entry.body) {
                Some(body) => PENDING.put(
                    batch,
                    &(worker, seq),
                    &(id.clone(), Pending::of(entry, body)),
                ),
                None if entry.body == BodyRef::SPILLED => out_of_memory.push(seq),
                None => PENDING.put(
                    batch,
                    &(worker, seq),
                    &(id.clone(), Pending::of(entry, &empty)),
                ),
            }
        }
        if let (false, Some(spill)) = (out_of_memory.is_empty(), &w.spill) {
            let keys: Vec<_> = out_of_memory.iter().map(|s| (spill.worker, *s)).collect();
            let values = PENDING
                .multi_get(spill.store.get(), &keys)
                .unwrap_or_else(|e| panic!("reading pending impressions back failed: {e}"));
            for (seq, stored) in out_of_memory.iter().zip(values) {
                let (id, entry) = w
                    .ring
                    .get_seq(*seq)
                    .expect("a changed impression is in memory");
                let Some((_, stored)) = stored else {
                    panic!(
                        "pending impression {seq} of worker {worker} is neither in memory nor in the store"
                    );
                };
                let body = stored.split().1;
                PENDING.put(
                    batch,
                    &(worker, *seq),
                    &(id.clone(), Pending::of(entry, &body)),
                );
            }
        }
        let record = JoinRecord {
            stats: self.stats.clone(),
            buffer: self.buffer.iter().cloned().collect(),
            schedule: self.schedule.clone(),
            first: w.ring.first,
            end,
            wait_cursor: w.wait_cursor,
            close_cursor: w.close_cursor,
            processed_to: w.processed_to,
        };
        OPERATORS.put(batch, &(worker, JOIN_PART), &record);
        let arrived: Vec<(CompactString, f32)> = (self.arrived.iter())
            .map(|(id, score)| (id.clone(), *score))
            .collect();
        ARRIVED.put(batch, &(worker, ARRIVED_PART), &arrived);
    }

    /// The checkpoint [`checkpoint_into`](Self::checkpoint_into) wrote was committed: what
    /// it wrote may now leave memory.
    pub fn checkpoint_done(&mut self) {
        let w = &mut self.windows;
        let end = w.end();
        let first = w.ring.first;
        let new = w.persisted.1.max(first)..end;
        for seq in w.dirty.drain(..).chain(new) {
            if let Some(seq) = seq.checked_sub(first)
                && let Some((_, entry)) = w.ring.get_mut(seq as usize)
            {
                entry.stored = true;
            }
        }
        if w.spill
            .as_ref()
            .is_none_or(|s| s.to == SpillTo::Checkpoints)
        {
            w.stored_below = match w.wait_ms {
                Some(_) => w.wait_cursor,
                None => end,
            };
        }
        w.persisted = (first, end);
    }

    /// Worker `worker`'s join state from the checkpoint in `store`, or `None` if it holds
    /// none. Stubs and bodies beyond their memory budgets stay in `store`, which the join
    /// spills to (see [`Windows::restore_ring`]).
    pub fn restore(
        store: &StateStore,
        worker: u32,
        config: &LabelConfig,
    ) -> Result<Option<Self>, StateError> {
        Self::restore_within(
            store,
            worker,
            config,
            config.pending_stubs(),
            config.pending_bodies(),
        )
    }

    /// [`restore`](Self::restore) within `stub_budget` stubs and `body_budget` bodies.
    fn restore_within(
        store: &StateStore,
        worker: u32,
        config: &LabelConfig,
        stub_budget: usize,
        body_budget: usize,
    ) -> Result<Option<Self>, StateError> {
        let Some(record) = OPERATORS.get(store, &(worker, JOIN_PART))? else {
            return Ok(None);
        };
        let mut state = Self::new(config);
        state.spill_to(store.clone(), worker, SpillTo::Checkpoints);
        let w = &mut state.windows;
        w.stub_budget = stub_budget;
        w.budget = body_budget;
        w.wait_cursor = record.wait_cursor;
        w.close_cursor = record.close_cursor;
        w.processed_to = record.processed_to;
        w.restore_ring(store, worker, record.first, record.end)?;
        w.persisted = (record.first, record.end);
        w.stored_below = match w.wait_ms {
            Some(_) => w.wait_cursor,
            None => record.end,
        };
        state.stats = record.stats;
        state.buffer = record.buffer.into();
        state.arrived = (ARRIVED.get(store, &(worker, ARRIVED_PART))?)
            .unwrap_or_default()
            .into_iter()
            .collect();
        state.schedule = record.schedule;
        Ok(Some(state))
    }
}

/// # Restoring within the budget
impl Windows {
    /// Rebuilds the ring of sequence numbers `first..end` from `store`, one chunk (one
    /// batched read) at a time, keeping in memory only the chunks a worker that never
    /// stopped could hold within its budget: those [`stubs_within_budget`] never moves out
    /// (the two next chunks of each cursor, the newest impressions, a partial chunk), then
    /// the others oldest first while they fit in seven eighths of the budget. The rest stay
    /// in the store, where the checkpoint put them, as chunks out of memory; their ids get
    /// fresh hints, since the hints in the store are not the checkpoint's (a run that
    /// crashed after it may have deleted or overwritten some).
    ///
    /// [`stubs_within_budget`]: Self::stubs_within_budget
    fn restore_ring(
        &mut self,
        store: &StateStore,
        worker: u32,
        first: u64,
        end: u64,
    ) -> Result<(), StateError> {
        let corrupt = |reason: String| StateError::Decode {
            table: TableId::Pending.name(),
            reason: format!("pending impressions of worker {worker}: {reason}"),
        };
        self.ring = Ring::starting_at(first);
        // A checkpoint deletes what it forgets: nothing before `first` nor from `end` on.
        let mut lowest = None;
        PENDING.scan(store, &worker, |(_, seq), _| {
            lowest = Some(seq);
            false
        })?;
        if lowest != (first < end).then_some(first) {
            return Err(corrupt(format!(
                "expected sequence number {first} first, found {lowest:?}"
            )));
        }
        if first == end {
            return Ok(());
        }
        if PENDING.get(store, &(worker, end))?.is_some() {
            return Err(corrupt(format!("expected up to {end}, found {end}")));
        }
        let (oldest, last) = (first / CHUNK, (end - 1) / CHUNK);
        let closing = self.close_cursor.max(first) / CHUNK;
        // With provisional negatives, impressions from the wait cursor on stay; without,
        // those younger than `hot_ms` (found while reading them).
        let top = match self.wait_ms {
            Some(_) => self.wait_cursor.clamp(first, end) / CHUNK,
            None => last,
        };
        let range = |n: u64| n.saturating_mul(CHUNK).max(first)..((n + 1) * CHUNK).min(end);
        let stays = |n: u64| {
            n < oldest + 2
                || (closing..closing + 2).contains(&n)
                || n >= top
                || (n + 1) * CHUNK > end
        };
        let reserved: u64 = (oldest..=last)
            .filter(|&n| stays(n))
            .map(|n| range(n).end - range(n).start)
            .sum();
        let target = (self.stub_budget - self.stub_budget / 8) as u64;
        let mut room = target.saturating_sub(reserved);
        let mut hot = false;
        for n in oldest..=last {
            let seqs = range(n);
            let keys: Vec<(u32, u64)> = seqs.clone().map(|seq| (worker, seq)).collect();
            let values = PENDING.multi_get(store, &keys)?;
            if let Some(i) = values.iter().position(Option::is_none) {
                return Err(corrupt(format!(
                    "sequence number {} is missing",
                    seqs.start + i as u64
                )));
            }
            if self.wait_ms.is_none() && !hot {
                hot = values
                    .iter()
                    .flatten()
                    .any(|(_, p)| p.ts().saturating_add(self.hot_ms) >= self.processed_to);
            }
            let len = seqs.end - seqs.start;
            let keep = stays(n) || hot || room >= len;
            if !keep {
                let mut hints = Batch::new();
                for (seq, (id, _)) in seqs.zip(values.into_iter().flatten()) {
                    PENDING_IDS.put(&mut hints, &(worker, id.to_string()), &seq);
                }
                store.write_unsynced(hints)?;
                self.ring.push_out(n);
                self.chunks_left_at_restore += 1;
                self.hot_cursor = self.ring.end();
                continue;
            }
            if !stays(n) && !hot {
                room -= len;
            }
            for (id, stored) in values.into_iter().flatten() {
                let entry = self.unstore(stored);
                let hash = id_hash(&id);
                self.push(id, hash, entry);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::NoEnrich;
    use crate::record::{Feature, Features};
    use rustc_hash::FxHashMap;

    /// Records every update; predicts from the number of updates so far.
    #[derive(Default)]
    struct Recorder {
        updates: Vec<(Vec<u32>, bool)>,
    }

    impl Learner for Recorder {
        fn predict(&self, _: &[Feature]) -> f32 {
            1.0 / (self.updates.len() as f32 + 2.0)
        }
        fn update(&mut self, x: &[Feature], positive: bool) {
            self.updates
                .push((x.iter().map(|f| f.index).collect(), positive));
        }
        fn version(&self) -> u64 {
            self.updates.len() as u64
        }
    }

    const WINDOW: u64 = 1000;

    fn labelled(learner: Recorder, config: LabelConfig) -> LabelJoin<Recorder, NoEnrich> {
        LabelJoin::new(
            learner,
            NoEnrich,
            Rc::new(RefCell::new(JoinState::new(&config))),
            false,
        )
    }

    /// The tests' label settings: the window [`WINDOW`], fast skips under 100 ms.
    fn join_config(delay_correction: DelayCorrection) -> LabelConfig {
        LabelConfig {
            window_ms: WINDOW,
            fast_skip_ms: 100,
            delay_correction,
            ..LabelConfig::default()
        }
    }

    fn join() -> LabelJoin<Recorder, NoEnrich> {
        let config = join_config(DelayCorrection::None);
        labelled(Recorder::default(), config)
    }

    fn impression(ts: EventTime, id: &str, feature: u32) -> Interaction {
        let features = [Feature {
            index: feature,
            value: 1.0,
        }]
        .into_iter()
        .collect();
        let kind = InteractionKind::Impression {
            user: "u".into(),
            item: "i".into(),
            category: "c".into(),
            features,
            reference: None,
            entities: Entities::default(),
        };
        Interaction {
            ts,
            pos: ts as u64,
            id: id.into(),
            kind,
        }
    }

    fn feedback(ts: EventTime, id: &str, kind: InteractionKind) -> Interaction {
        Interaction {
            ts,
            pos: ts as u64,
            id: id.into(),
            kind,
        }
    }

    /// The keys `ready` gives for `batches` at `watermark` against a plain sort of them,
    /// and again at a later watermark after removing the first ready ones.
    fn check_ready(batches: &[Vec<(EventTime, u64)>], watermarks: [EventTime; 2]) {
        let mut received = Received::default();
        for batch in batches {
            let mut records: Vec<Interaction> = (batch.iter())
                .map(|&(ts, pos)| Interaction {
                    pos,
                    ..feedback(ts, "x", InteractionKind::Click)
                })
                .collect();
            received.take_batch(&mut records);
        }
        let mut order = Vec::new();
        for watermark in watermarks {
            received.ready(watermark, &mut order);
            let mut expected: Vec<OrderKey> = (received.batches.iter().enumerate())
                .flat_map(|(b, batch)| {
                    (batch.iter().enumerate())
                        .filter(|(_, x)| x.ts < watermark)
                        .map(move |(i, x)| (x.ts, x.pos, b as u32, i as u32))
                })
                .collect();
            expected.sort();
            assert_eq!(
                order, expected,
                "watermark {watermark}, batches {batches:?}"
            );
            received.remove_ready(watermark);
            let left: Vec<(EventTime, u64)> = received.iter().map(|x| (x.ts, x.pos)).collect();
            let expected: Vec<(EventTime, u64)> = (batches.iter().flatten())
                .filter(|r| r.0 >= watermark)
                .copied()
                .collect();
            assert_eq!(left, expected, "left after {watermark}");
        }
    }

    /// Batches of `senders` streams, each in its own `(ts, pos)` order, interleaved at
    /// random, with ts ties across and within senders; `disorder` swaps two records in some
    /// batches.
    fn interleaved(seed: u64, senders: usize, disorder: bool) -> Vec<Vec<(EventTime, u64)>> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut clocks: Vec<(EventTime, u64)> = (0..senders as u64).map(|s| (0, s)).collect();
        let mut batches = Vec::new();
        for _ in 0..40 {
            let sender = next(senders as u64) as usize;
            let len = 1 + next(12) as usize;
            let mut batch = Vec::with_capacity(len);
            for _ in 0..len {
                let (ts, pos) = &mut clocks[sender];
                *ts += next(3) as EventTime;
                *pos += senders as u64;
                batch.push((*ts, *pos));
            }
            if disorder && len > 1 && next(4) == 0 {
                batch.swap(0, len - 1);
            }
            batches.push(batch);
        }
        batches
    }

    #[test]
    fn ready_records_come_in_order_whether_merged_or_sorted() {
        for seed in 0..300 {
            // Up to eight senders merge their chains; more, or a batch out of order, sort.
            let senders = 1 + seed as usize % 11;
            let batches = interleaved(seed, senders, seed % 3 == 0);
            let end = batches.iter().flatten().map(|r| r.0).max().unwrap_or(0) + 1;
            check_ready(&batches, [end / 2, end]);
            check_ready(&batches, [end, end + 1]);
        }
    }

    #[test]
    fn interleaved_senders_and_a_batch_below_every_chain_come_out_in_order() {
        // Sender A's records 0..6 and sender B's 100..106 in batches A, B, A, B: two chains,
        // whichever batch comes first; and a batch below both chains starts a third.
        let a = |from: u64| vec![(from as EventTime, from), (from as EventTime + 1, from + 1)];
        check_ready(&[a(0), a(100), a(2), a(102), a(4), a(104)], [1000, 1001]);
        check_ready(&[a(100), a(0), a(102), a(2), a(50), a(4)], [1000, 1001]);
        check_ready(&[a(0), a(10), a(20), a(30), a(40), a(5)], [1000, 1001]);
    }

    /// Hands `records` to the join as one input batch (scored on it with `score_on =
    /// "arrival"`), then advances to `watermark`.
    fn run(
        join: &mut LabelJoin<Recorder, NoEnrich>,
        mut records: Vec<Interaction>,
        watermark: Watermark,
    ) -> (Vec<Score>, Vec<Example>) {
        let mut out = Emitted::default();
        join.receive(&mut records, &mut out.scores);
        join.advance(watermark, &mut out);
        (out.scores.into_vec(), out.examples.into_vec())
    }

    #[test]
    fn click_is_a_positive_learned_with_the_served_features() {
        let mut j = join();
        let (scores, examples) = run(
            &mut j,
            vec![
                impression(10, "a", 7),
                feedback(20, "a", InteractionKind::Click),
            ],
            30,
        );
        assert_eq!(scores.len(), 1);
        assert_eq!(examples.len(), 1);
        assert_eq!(examples[0].label, LabelSource::Click);
        assert_eq!(examples[0].served, scores[0].score);
        assert_eq!(j.learner.updates, vec![(vec![7], true)]);
        assert_eq!(j.state.borrow().stats.positive_click, 1);
    }

    #[test]
    fn fast_skip_is_an_immediate_negative_and_a_slow_skip_decides_nothing() {
        let mut j = join();
        let (_, examples) = run(
            &mut j,
            vec![
                impression(0, "fast", 1),
                impression(0, "slow", 2),
                feedback(50, "fast", InteractionKind::Skip { dwell_ms: 50 }),
                feedback(500, "slow", InteractionKind::Skip { dwell_ms: 500 }),
            ],
            600,
        );
        assert_eq!(
            examples
                .iter()
                .map(|e| (e.id.as_str(), e.label))
                .collect::<Vec<_>>(),
            [("fast", LabelSource::FastSkip)]
        );
        assert_eq!(examples[0].label_ts, 50);
        let stats = j.state.borrow().stats.clone();
        assert_eq!((stats.negative_fast_skip, stats.slow_skip), (1, 1));
        // The slow skip's window closes at 0 + WINDOW: a negative then, not before.
        let (_, examples) = run(&mut j, vec![], WINDOW);
        assert!(
            examples.is_empty(),
            "a deadline equal to the watermark is still open"
        );
        let (_, examples) = run(&mut j, vec![], WINDOW + 1);
        assert_eq!(examples.len(), 1);
        assert_eq!(
            (
                examples[0].id.as_str(),
                examples[0].label,
                examples[0].label_ts
            ),
            ("slow", LabelSource::Expired, WINDOW as i64)
        );
    }

    #[test]
    fn only_windows_closed_by_the_end_of_the_input_are_marked_so() {
        let mut j = join();
        let (_, examples) = run(
            &mut j,
            vec![
                impression(0, "a", 1),
                impression(WINDOW as i64 / 2, "b", 2),
                impression(WINDOW as i64, "c", 3),
                feedback(WINDOW as i64 + 10, "c", InteractionKind::Click),
            ],
            WINDOW + 100,
        );
        let marks = |examples: &[Example]| -> Vec<(String, LabelSource, bool)> {
            let mut m: Vec<_> = (examples.iter())
                .map(|e| (e.id.to_string(), e.label, e.at_input_end))
                .collect();
            m.sort_by(|x, y| x.0.cmp(&y.0));
            m
        };
        assert_eq!(
            marks(&examples),
            [
                ("a".into(), LabelSource::Expired, false),
                ("c".into(), LabelSource::Click, false),
            ]
        );
        // The last batch comes with the end of the input: its records close b's window in
        // event time and decide e; only d is still open when no event can come any more.
        let end = 2 * WINDOW as i64;
        let (_, examples) = run(
            &mut j,
            vec![
                impression(end, "d", 4),
                impression(end, "e", 5),
                feedback(end + 5, "e", InteractionKind::Click),
            ],
            Watermark::MAX,
        );
        assert_eq!(
            marks(&examples),
            [
                ("b".into(), LabelSource::Expired, false),
                ("d".into(), LabelSource::Expired, true),
                ("e".into(), LabelSource::Click, false),
            ]
        );
    }

    #[test]
    fn first_decisive_feedback_wins_and_later_feedback_is_counted() {
        let mut j = join();
        let (_, examples) = run(
            &mut j,
            vec![
                impression(0, "a", 1),
                feedback(10, "a", InteractionKind::Skip { dwell_ms: 10 }),
                feedback(20, "a", InteractionKind::Click),
                feedback(30, "a", InteractionKind::Like),
                feedback(40, "nobody", InteractionKind::Click),
            ],
            100,
        );
        assert_eq!(examples.len(), 1);
        assert_eq!(examples[0].label, LabelSource::FastSkip);
        let stats = j.state.borrow().stats.clone();
        assert_eq!((stats.duplicate_feedback, stats.orphan_feedback), (2, 1));
        assert_eq!(j.learner.updates.len(), 1, "later feedback is not applied");
    }

    /// Across many removals and table growths, an id is found exactly while its
    /// impression is in the ring, and one that comes back after it was forgotten opens
    /// afresh.
    #[test]
    fn the_index_finds_exactly_the_impressions_in_the_ring() {
        let mut j = join();
        let ids: Vec<String> = (0..40_000).map(|n| format!("imp-{n}")).collect();
        // One impression every 0.1 ms of window: the ring holds ~2 windows, ~20 000.
        for (chunk, batch) in ids.chunks(1000).enumerate() {
            let records = batch
                .iter()
                .enumerate()
                .map(|(i, id)| impression(((chunk * 1000 + i) / 10) as EventTime, id, 1))
                .collect();
            run(&mut j, records, ((chunk + 1) * 100) as Watermark);
            let state = j.state.borrow();
            let w = &state.windows;
            for (n, id) in batch.iter().enumerate().step_by(97) {
                assert!(w.is_open(id), "{id} was just opened");
                assert_eq!(
                    w.get(id).map(|(at, _)| w.ring.first + at as u64),
                    Some((chunk * 1000 + n) as u64)
                );
            }
            for id in &ids[..chunk * 1000] {
                let seq: u64 = id["imp-".len()..].parse().unwrap();
                assert_eq!(
                    w.is_open(id),
                    seq >= w.ring.first,
                    "{id}, first {}",
                    w.ring.first
                );
            }
            assert_eq!(w.index.live(w.ring.first, w.ring.end()), w.ring.len());
            assert!(w.index.len() <= w.index.capacity());
        }
        let (first, end) = {
            let w = &j.state.borrow().windows;
            (w.ring.first, w.end())
        };
        assert!(first > 15_000, "impressions were forgotten: first {first}");
        // Feedback for a forgotten one is an orphan; the id opens afresh after it.
        let (scores, _) = run(
            &mut j,
            vec![
                feedback(4000, "imp-0", InteractionKind::Click),
                impression(4001, "imp-0", 1),
                impression(4002, &ids[(end - 1) as usize], 1),
            ],
            4100,
        );
        assert_eq!(
            scores.len(),
            1,
            "imp-0 opens again, the newest is a duplicate"
        );
        let state = j.state.borrow();
        assert_eq!(state.stats.orphan_feedback, 1);
        assert_eq!(state.stats.duplicate_impressions, 1);
        assert_eq!(
            state
                .windows
                .get("imp-0")
                .map(|(at, _)| state.windows.ring.first + at as u64),
            Some(end)
        );
    }

    #[test]
    fn feedback_after_the_window_is_late_not_applied() {
        let mut j = join();
        let records = vec![
            impression(0, "a", 1),
            feedback(WINDOW as i64 + 5, "a", InteractionKind::Click),
        ];
        let (_, examples) = run(&mut j, records, 2 * WINDOW);
        assert_eq!(examples.len(), 1);
        assert_eq!(examples[0].label, LabelSource::Expired);
        assert_eq!(j.state.borrow().stats.late_feedback, 1);
        assert_eq!(j.learner.updates, vec![(vec![1], false)]);
    }

    #[test]
    fn records_wait_for_the_watermark_and_are_processed_in_time_order() {
        let mut j = join();
        // The click comes first in the batch but later in event time than impression b.
        let (scores, _) = run(
            &mut j,
            vec![
                feedback(20, "a", InteractionKind::Click),
                impression(30, "b", 2),
                impression(10, "a", 1),
            ],
            25,
        );
        assert_eq!(
            scores.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["a"],
            "b waits: 30 >= watermark"
        );
        assert_eq!(j.learner.updates.len(), 1, "the click at 20 was processed");
        let (scores, _) = run(&mut j, vec![], 31);
        assert_eq!(scores.len(), 1);
        assert_eq!(
            scores[0].model_version, 1,
            "b is scored after a's click was learned"
        );
        assert_eq!(scores[0].score, 1.0 / 3.0);
    }

    #[test]
    fn duplicate_impressions_are_scored_once_and_late_ones_not_learned() {
        let mut j = join();
        let (scores, _) = run(
            &mut j,
            vec![impression(0, "a", 1), impression(5, "a", 1)],
            10,
        );
        assert_eq!(scores.len(), 1);
        assert_eq!(j.state.borrow().stats.duplicate_impressions, 1);
        run(&mut j, vec![], 5 * WINDOW);
        let (scores, examples) = run(&mut j, vec![impression(10, "old", 3)], 5 * WINDOW + 1);
        assert_eq!(scores.len(), 1, "a late impression is still scored");
        assert!(examples.is_empty());
        assert_eq!(j.state.borrow().stats.late_impressions, 1);
        // A copy of the late impression (a producer's resend) is a duplicate, not scored
        // again; its feedback is late, not an orphan.
        let (scores, examples) = run(
            &mut j,
            vec![
                impression(10, "old", 3),
                feedback(20, "old", InteractionKind::Click),
            ],
            5 * WINDOW + 2,
        );
        assert!(scores.is_empty(), "{scores:?}");
        assert!(examples.is_empty());
        let stats = j.state.borrow().stats.clone();
        assert_eq!(
            (
                stats.duplicate_impressions,
                stats.late_feedback,
                stats.orphan_feedback
            ),
            (2, 1, 0)
        );
        run(&mut j, vec![], Watermark::MAX);
        assert!(
            !j.learner.updates.iter().any(|(x, _)| x == &[3]),
            "nor learned from"
        );
    }

    fn arrival_join() -> LabelJoin<Recorder, NoEnrich> {
        let config = LabelConfig {
            score_on: ScoreOn::Arrival,
            ..join_config(DelayCorrection::None)
        };
        labelled(Recorder::default(), config)
    }

    #[test]
    fn on_arrival_an_impression_is_scored_at_once_and_learned_in_time_order() {
        let mut j = arrival_join();
        // b and its click are ahead of the watermark: b is scored on arrival, with the
        // model of that moment (nothing learned yet); a's click, earlier, is learned now.
        let (scores, _) = run(
            &mut j,
            vec![
                impression(10, "a", 1),
                feedback(20, "a", InteractionKind::Click),
                impression(30, "b", 2),
                feedback(40, "b", InteractionKind::Click),
            ],
            25,
        );
        assert_eq!(
            scores
                .iter()
                .map(|s| (s.id.as_str(), s.model_version))
                .collect::<Vec<_>>(),
            [("a", 0), ("b", 0)],
            "both scored on arrival, before a's click was learned"
        );
        assert_eq!(j.learner.updates, [(vec![1], true)]);
        // Once the watermark passes b and its click: learned with the features it was
        // scored with and the score served, and not scored again.
        let (scores, examples) = run(&mut j, vec![], 41);
        assert!(scores.is_empty(), "b is not scored twice");
        assert_eq!(j.learner.updates, [(vec![1], true), (vec![2], true)]);
        assert_eq!(examples.len(), 1);
        assert_eq!((examples[0].id.as_str(), examples[0].served), ("b", 0.5));
        // A score after a's click: the model of the moment it arrived.
        let (scores, _) = run(&mut j, vec![impression(50, "c", 3)], 41);
        assert_eq!((scores[0].model_version, scores[0].score), (2, 0.25));
        let stats = &j.state.borrow().stats;
        assert_eq!(stats.impressions, 2, "c is counted once processed");
        assert!(j.state.borrow().arrived.contains_key("c"));
    }

    /// Appends 20 features (indices 100..120): with an event's own, more than a record's
    /// [`EventFeatures`] hold inline.
    struct Wide;

    impl Enrich for Wide {
        fn enrich(&mut self, _: &Entities, _: EventTime, features: &mut Features) {
            features.extend((100..120).map(|index| Feature { index, value: 1.0 }));
        }
        fn record(&mut self, _: &Entities, _: EventTime, _: Signal) {}
    }

    #[test]
    fn on_arrival_features_past_the_inline_ones_are_learned_as_scored_in_reused_buffers() {
        let config = LabelConfig {
            score_on: ScoreOn::Arrival,
            ..join_config(DelayCorrection::None)
        };
        let state = Rc::new(RefCell::new(JoinState::new(&config)));
        let mut j = LabelJoin::new(Recorder::default(), Wide, state, false);
        let enriched = |own: u32| [own].into_iter().chain(100..120).collect::<Vec<_>>();
        for (ts, id, own) in [(10, "a", 1), (20, "b", 2), (30, "c", 3)] {
            let mut out = Emitted::default();
            let mut records = vec![
                impression(ts, id, own),
                feedback(ts + 1, id, InteractionKind::Click),
            ];
            j.receive(&mut records, &mut out.scores);
            assert_eq!(out.scores.len(), 1, "{id} scored on arrival");
            // The record carries the features it was scored with, on the heap: from a
            // buffer given back by the impression before it, after the first.
            let state = j.state.borrow();
            let record = &state.buffer.batches.last().expect("the batch is kept")[0];
            let InteractionKind::Impression { features, .. } = &record.kind else {
                unreachable!()
            };
            assert!(features.spilled());
            let indices: Vec<u32> = features.iter().map(|f| f.index).collect();
            assert_eq!(indices, enriched(own));
            drop(state);
            assert!(
                j.spare_features.is_empty(),
                "{id}: the spare buffer was taken"
            );
            j.advance(ts as Watermark + 2, &mut out);
            assert_eq!(j.learner.updates.last(), Some(&(enriched(own), true)));
            assert_eq!(j.spare_features.len(), 1, "{id}: its buffer is given back");
        }
        assert_eq!(j.learner.updates.len(), 3);
    }

    #[test]
    fn on_arrival_duplicates_are_scored_once() {
        let mut j = arrival_join();
        let (scores, _) = run(
            &mut j,
            vec![impression(5, "a", 1), impression(0, "a", 1)],
            1,
        );
        assert_eq!(scores.len(), 1, "the first to arrive is scored");
        assert_eq!(scores[0].event_ts, 5);
        // Processed (its window open), then again: still a duplicate.
        let (scores, _) = run(&mut j, vec![impression(7, "a", 1)], 10);
        assert!(scores.is_empty());
        let state = j.state.borrow();
        assert_eq!(state.stats.duplicate_impressions, 2);
        assert_eq!(state.stats.impressions, 1);
        assert!(state.arrived.is_empty());
    }

    fn provisional_join() -> LabelJoin<Recorder, NoEnrich> {
        let config = join_config(DelayCorrection::ProvisionalNegatives);
        labelled(Recorder::default(), config)
    }

    #[test]
    fn provisional_negatives_reach_the_model_within_the_wait() {
        let mut j = provisional_join();
        let (_, examples) = run(
            &mut j,
            vec![
                impression(0, "silent", 1),
                impression(0, "late_click", 2),
                impression(0, "early_click", 3),
                impression(0, "fast_skip", 4),
                feedback(50, "early_click", InteractionKind::Click),
                feedback(60, "fast_skip", InteractionKind::Skip { dwell_ms: 60 }),
                feedback(500, "late_click", InteractionKind::Click),
            ],
            600,
        );
        // Early decisions are learned once; at the wait (100 ms) the two undecided get a
        // provisional negative; the late click is learned as a positive on top.
        assert_eq!(
            j.learner.updates,
            vec![
                (vec![3], true),
                (vec![4], false),
                (vec![1], false),
                (vec![2], false),
                (vec![2], true)
            ]
        );
        let labels: Vec<_> = examples.iter().map(|e| (e.id.as_str(), e.label)).collect();
        assert_eq!(
            labels,
            [
                ("early_click", LabelSource::Click),
                ("fast_skip", LabelSource::FastSkip),
                ("late_click", LabelSource::Click)
            ]
        );
        assert_eq!(j.state.borrow().stats.provisional_negatives, 2);
        // Expiry emits the contract's negative but learns nothing new.
        let (_, examples) = run(&mut j, vec![], 2 * WINDOW);
        assert_eq!(examples.len(), 1);
        assert_eq!(examples[0].label, LabelSource::Expired);
        assert_eq!(j.learner.updates.len(), 5);
        let stats = j.state.borrow().stats.clone();
        assert_eq!(
            (
                stats.positive_click,
                stats.negative_fast_skip,
                stats.negative_expired
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn served_scores_undo_the_provisional_bias() {
        let mut schedule = Schedule::new(DelayCorrection::ProvisionalNegatives);
        // Half the positives arrive after their provisional negative: c = 1/2.
        for early in [true, false].repeat(500) {
            schedule.count_positive(early);
        }
        // A model fitting q = p / (1 + p (1 - c)) for p = 0.1 serves p back.
        let p = 0.1f32;
        let q = p / (1.0 + p * 0.5);
        assert!(
            (schedule.serve(q) - p).abs() < 1e-3,
            "{}",
            schedule.serve(q)
        );
        let none = Schedule::new(DelayCorrection::None);
        assert_eq!(none.serve(q), q);
        for q in [0.0, 0.5, 0.99, 1.0] {
            let served = schedule.serve(q);
            assert!(served > 0.0 && served < 1.0, "{q} -> {served}");
        }
    }

    /// The whole operator on `workers` timely workers: exactly one score per impression and
    /// one label each, whatever worker the records start on.
    fn every_impression_scored_once_and_labelled(workers: usize) {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::{Inspect, ToStream};

        let seen = Arc::new(Mutex::new((Vec::new(), Vec::new(), JoinStats::default())));
        let collected = Arc::clone(&seen);
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let collected = Arc::clone(&collected);
            let state = Rc::new(RefCell::new(JoinState::new(&LabelConfig::default())));
            let state_out = Rc::clone(&state);
            worker.dataflow::<Watermark, _, _>(|scope| {
                // Each worker starts with a different share, so records cross workers.
                let records: Vec<Interaction> = (0..1000)
                    .filter(|n| n % peers == index)
                    .flat_map(|n| {
                        let id = format!("imp-{n}");
                        let mut records = vec![impression(n as i64 * 10, &id, n as u32)];
                        match n % 4 {
                            0 => records.push(feedback(
                                n as i64 * 10 + 5,
                                &id,
                                InteractionKind::Click,
                            )),
                            1 => records.push(feedback(
                                n as i64 * 10 + 5,
                                &id,
                                InteractionKind::Skip { dwell_ms: 5 },
                            )),
                            _ => {}
                        }
                        records
                    })
                    .collect();
                let (scores, examples) = records.to_stream(scope).learn_online(
                    Recorder::default(),
                    NoEnrich,
                    state,
                    true,
                );
                let sink = Arc::clone(&collected);
                scores.inspect(move |s| sink.lock().unwrap().0.push(s.id.clone()));
                let sink = Arc::clone(&collected);
                examples.inspect(move |e| {
                    // The features it was scored with: `impression` hashes imp-n to index n.
                    let n: u32 = e.id.trim_start_matches("imp-").parse().unwrap();
                    assert_eq!(
                        e.features.as_slice(),
                        [Feature {
                            index: n,
                            value: 1.0
                        }]
                    );
                    sink.lock().unwrap().1.push((e.id.clone(), e.label))
                });
            });
            while worker.step() {}
            collected.lock().unwrap().2.merge(&state_out.borrow().stats);
        })
        .unwrap();
        let (mut scores, mut examples, stats) = std::mem::take(&mut *seen.lock().unwrap());
        scores.sort();
        scores.dedup();
        assert_eq!(scores.len(), 1000);
        assert_eq!(stats.impressions, 1000);
        examples.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(examples.len(), 1000);
        let positives = examples.iter().filter(|(_, l)| l.is_positive()).count();
        assert_eq!(positives, 250);
        assert_eq!(
            (stats.negative_fast_skip, stats.negative_expired),
            (250, 500)
        );
    }

    #[test]
    fn one_score_and_one_label_per_impression_1w() {
        every_impression_scored_once_and_labelled(1);
    }

    #[test]
    fn one_score_and_one_label_per_impression_2w() {
        every_impression_scored_once_and_labelled(2);
    }

    #[test]
    fn one_score_and_one_label_per_impression_4w() {
        every_impression_scored_once_and_labelled(4);
    }

    /// Appends one feature: the clicks recorded so far for the impression's user.
    #[derive(Default)]
    struct ClickCounter {
        clicks: FxHashMap<u64, u32>,
    }

    impl Enrich for ClickCounter {
        fn enrich(&mut self, entities: &Entities, _: EventTime, features: &mut Features) {
            let clicks = self.clicks.get(&entities.user).copied().unwrap_or(0);
            features.push(Feature {
                index: 1_000_000,
                value: clicks as f32,
            });
        }
        fn record(&mut self, entities: &Entities, _: EventTime, signal: Signal) {
            if signal == Signal::Click {
                *self.clicks.entry(entities.user).or_default() += 1;
            }
        }
    }

    fn of_user(mut record: Interaction, user: u64) -> Interaction {
        if let InteractionKind::Impression { entities, .. } = &mut record.kind {
            entities.user = user;
        }
        record
    }

    #[test]
    fn an_impression_is_scored_and_trained_without_its_own_click() {
        let config = join_config(DelayCorrection::None);
        let state = Rc::new(RefCell::new(JoinState::new(&config)));
        let mut j = LabelJoin::new(Recorder::default(), ClickCounter::default(), state, true);
        // a (user 1) is clicked at 20, in the same batch; b (user 1) comes after the click,
        // c (user 2) after it too but for another user.
        j.state.borrow_mut().buffer.extend([
            of_user(impression(10, "a", 1), 1),
            feedback(20, "a", InteractionKind::Click),
            of_user(impression(30, "b", 2), 1),
            of_user(impression(40, "c", 3), 2),
            feedback(50, "b", InteractionKind::Click),
            feedback(60, "c", InteractionKind::Click),
        ]);
        let mut out = Emitted::default();
        j.advance(100, &mut out);
        let clicks_seen = |id: &str| {
            out.examples
                .iter()
                .find(|e| e.id == id)
                .map(|e| {
                    e.features
                        .iter()
                        .find(|f| f.index == 1_000_000)
                        .unwrap()
                        .value
                })
                .unwrap()
        };
        assert_eq!(clicks_seen("a"), 0.0, "a's own click must not leak into a");
        assert_eq!(clicks_seen("b"), 1.0, "b sees a's click, not its own");
        assert_eq!(clicks_seen("c"), 0.0, "another user's clicks are not c's");
        // Trained with exactly those features.
        assert_eq!(j.learner.updates[0], (vec![1, 1_000_000], true));
    }

    /// A stream with clicks, fast and slow skips, duplicates and late feedback.
    fn mixed_stream(n: usize) -> Vec<Interaction> {
        let mut records = Vec::new();
        for i in 0..n {
            let ts = i as i64 * 7;
            let id = format!("imp-{i}");
            records.push(impression(ts, &id, i as u32 % 50));
            match i % 5 {
                0 => records.push(feedback(ts + 30, &id, InteractionKind::Click)),
                1 => records.push(feedback(
                    ts + 40,
                    &id,
                    InteractionKind::Skip { dwell_ms: 20 },
                )),
                2 => records.push(feedback(ts + 300, &id, InteractionKind::Like)),
                3 => records.push(feedback(ts + 2500, &id, InteractionKind::Click)),
                _ => {}
            }
        }
        records.sort_by_key(|r| r.ts);
        for (pos, r) in records.iter_mut().enumerate() {
            r.pos = pos as u64;
        }
        records
    }

    /// Feeds `records` in chunks at rising watermarks; before chunk `k`, `at(k)` may
    /// replace the join (a restart from a checkpoint).
    fn drive(
        mut j: LabelJoin<Recorder, NoEnrich>,
        records: &[Interaction],
        mut at: impl FnMut(usize, LabelJoin<Recorder, NoEnrich>) -> LabelJoin<Recorder, NoEnrich>,
    ) -> (Emitted, LabelJoin<Recorder, NoEnrich>) {
        let mut out = Emitted::default();
        for (k, chunk) in records.chunks(37).enumerate() {
            j = at(k, j);
            j.receive(&mut chunk.to_vec(), &mut out.scores);
            // The watermark trails the chunk: part of it stays buffered.
            let watermark = chunk.first().map_or(0, |r| r.ts.max(0) as u64);
            j.advance(watermark, &mut out);
        }
        j.advance(Watermark::MAX, &mut out);
        (out, j)
    }

    #[test]
    fn a_join_restored_from_its_checkpoints_continues_exactly_like_one_never_stopped() {
        for (correction, score_on) in [
            (DelayCorrection::ProvisionalNegatives, ScoreOn::Watermark),
            (DelayCorrection::None, ScoreOn::Watermark),
            (DelayCorrection::ProvisionalNegatives, ScoreOn::Arrival),
        ] {
            let config = LabelConfig {
                score_on,
                ..join_config(correction)
            };
            let records = mixed_stream(600);
            let (expected, uninterrupted) = drive(
                labelled(Recorder::default(), config.clone()),
                &records,
                |_, j| j,
            );
            let store = StateStore::memory();
            let (got, restarted) = drive(
                labelled(Recorder::default(), config.clone()),
                &records,
                |k, j| {
                    // A checkpoint every 3 chunks (incremental: same store), a restart
                    // from the latest one every 7.
                    if k % 3 == 0 {
                        let mut batch = Batch::new();
                        j.state.borrow().checkpoint_into(2, &mut batch);
                        store.write(batch).unwrap();
                        j.state.borrow_mut().checkpoint_done();
                    }
                    if k % 7 == 6 && k % 3 == 0 {
                        let state = JoinState::restore(&store, 2, &config).unwrap().unwrap();
                        let learner = Recorder {
                            updates: j.learner.updates.clone(),
                        };
                        let mut fresh = labelled(learner, config.clone());
                        fresh.state = Rc::new(RefCell::new(state));
                        return fresh;
                    }
                    j
                },
            );
            let score = |s: &Score| format!("{} {} {}", s.id, s.score, s.model_version);
            let example =
                |e: &Example| format!("{} {:?} {} {}", e.id, e.label, e.label_ts, e.served);
            assert_eq!(
                got.scores.iter().map(score).collect::<Vec<_>>(),
                expected.scores.iter().map(score).collect::<Vec<_>>()
            );
            assert_eq!(
                got.examples.iter().map(example).collect::<Vec<_>>(),
                expected.examples.iter().map(example).collect::<Vec<_>>()
            );
            assert_eq!(restarted.learner.updates, uninterrupted.learner.updates);
            assert_eq!(
                restarted.state.borrow().stats,
                uninterrupted.state.borrow().stats
            );
            // A last checkpoint: the store then holds exactly the join's impressions. The
            // input has ended, so every impression was forgotten and each one persisted by
            // the earlier checkpoints must have been deleted, not left behind.
            let mut batch = Batch::new();
            restarted.state.borrow().checkpoint_into(2, &mut batch);
            store.write(batch).unwrap();
            let mut stored = 0;
            PENDING
                .scan(&store, &2u32, |_, _| {
                    stored += 1;
                    true
                })
                .unwrap();
            assert_eq!(stored, restarted.state.borrow().pending());
        }
    }

    /// What the join emitted, comparable across runs.
    fn emitted(out: &Emitted) -> Vec<String> {
        let scores =
            (out.scores.iter()).map(|s| format!("s {} {} {}", s.id, s.score, s.model_version));
        let examples = out.examples.iter().map(|e| {
            format!(
                "e {} {:?} {} {} {:?} {}",
                e.id, e.label, e.label_ts, e.served, e.features, e.item
            )
        });
        scores.chain(examples).collect()
    }

    /// A scratch directory for a RocksDB store, removed on drop.
    struct ScratchDir(std::path::PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir =
                std::env::temp_dir().join(format!("ctrflow-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn store(&self) -> StateStore {
            let backend = ctrflow_state::rocks::RocksBackend::open(
                &self.0,
                &ctrflow_state::StateConfig::default(),
            )
            .unwrap();
            StateStore::new(std::sync::Arc::new(backend))
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Bodies kept in memory in the tests that force them out.
    const TINY: usize = 16;

    #[test]
    fn bodies_out_of_memory_change_no_score_label_or_update() {
        let dir = ScratchDir::new("pending-scratch");
        let scratch = dir.store();
        for correction in [DelayCorrection::ProvisionalNegatives, DelayCorrection::None] {
            let config = join_config(correction);
            let records = mixed_stream(600);
            let mut reference = labelled(Recorder::default(), config.clone());
            reference.example_features = true;
            let (expected, reference) = drive(reference, &records, |_, j| j);
            let mut bounded = labelled(Recorder::default(), config.clone());
            bounded.example_features = true;
            {
                let mut state = bounded.state.borrow_mut();
                state.spill_to(scratch.clone(), 3, SpillTo::Scratch);
                state.windows.budget = TINY;
            }
            let mut most = 0;
            let (got, bounded) = drive(bounded, &records, |_, j| {
                most = most.max(j.state.borrow().windows.bodies.resident());
                j
            });
            assert_eq!(emitted(&got), emitted(&expected));
            assert_eq!(bounded.learner.updates, reference.learner.updates);
            assert_eq!(bounded.state.borrow().stats, reference.state.borrow().stats);
            let stats = bounded.state.borrow().spill_stats();
            assert!(stats.written > 100 && stats.read_back > 100, "{stats:?}");
            // Between batches, within the budget plus what may not leave yet (the last
            // chunk's impressions before their provisional negative).
            assert!(most <= TINY + 37, "{most} bodies in memory");
            assert_eq!(stats.resident + stats.spilled, 0, "{stats:?}");
        }
    }

    /// Stubs kept in memory in the tests that force them out: two chunks.
    const TINY_STUBS: usize = 2 * CHUNK as usize;

    /// [`mixed_stream`] with, for every 11th impression, feedback after its window closed
    /// (late), a second decisive feedback (a duplicate, or the label of a slow one), the
    /// impression again mid-window (a duplicate impression), and feedback for an id never
    /// shown (an orphan): much of it for impressions in the middle of the ring.
    fn spill_stream(n: usize) -> Vec<Interaction> {
        let mut records = mixed_stream(n);
        for i in (0..n).step_by(11) {
            let ts = i as i64 * 7;
            let id = format!("imp-{i}");
            records.push(feedback(ts + 1500, &id, InteractionKind::Click));
            records.push(feedback(ts + 600, &id, InteractionKind::Like));
            records.push(impression(ts + 500, &id, 3));
            let ghost = format!("ghost-{i}");
            records.push(feedback(ts + 400, &ghost, InteractionKind::Click));
        }
        records.sort_by_key(|r| r.ts);
        for (pos, r) in records.iter_mut().enumerate() {
            r.pos = pos as u64;
        }
        records
    }

    #[test]
    fn gh_4_stubs_out_of_memory_change_no_label_example_or_counter() {
        let dir = ScratchDir::new("pending-stubs");
        let scratch = dir.store();
        for (worker, correction) in [DelayCorrection::ProvisionalNegatives, DelayCorrection::None]
            .into_iter()
            .enumerate()
        {
            let config = join_config(correction);
            let records = spill_stream(1200);
            let mut reference = labelled(Recorder::default(), config.clone());
            reference.example_features = true;
            let mut most_unbounded = 0;
            let (expected, reference) = drive(reference, &records, |_, j| {
                most_unbounded = most_unbounded.max(j.state.borrow().windows.ring.resident);
                j
            });
            let mut bounded = labelled(Recorder::default(), config.clone());
            bounded.example_features = true;
            {
                let mut state = bounded.state.borrow_mut();
                state.spill_to(scratch.clone(), worker as u32, SpillTo::Scratch);
                state.windows.budget = TINY;
                state.windows.stub_budget = TINY_STUBS;
            }
            let mut most = 0;
            let (got, bounded) = drive(bounded, &records, |_, j| {
                most = most.max(j.state.borrow().windows.ring.resident);
                j
            });
            assert_eq!(emitted(&got), emitted(&expected));
            assert_eq!(bounded.learner.updates, reference.learner.updates);
            let stats = bounded.state.borrow().stats.clone();
            assert_eq!(stats, reference.state.borrow().stats);
            assert!(
                stats.late_feedback > 10
                    && stats.orphan_feedback > 10
                    && stats.duplicate_feedback > 10
                    && stats.duplicate_impressions > 10,
                "{stats:?}"
            );
            let spill = bounded.state.borrow().spill_stats();
            assert!(
                spill.stubs_written > 200 && spill.chunks_read_back > 10,
                "{spill:?}"
            );
            let w = &bounded.state.borrow().windows;
            assert!(w.stubs_fetched > 10, "{} fetched alone", w.stubs_fetched);
            assert_eq!(w.ring.loose(), 0, "every chunk came back before the end");
            // Between batches: the budget, plus the chunks the cursors read ahead and the
            // newest impressions (which may not leave).
            assert!(
                most <= TINY_STUBS + 7 * CHUNK as usize && most * 2 < most_unbounded,
                "{most} stubs in memory, {most_unbounded} without a budget"
            );
        }
    }

    #[test]
    fn a_checkpoint_taken_with_bodies_out_of_memory_restores_exactly() {
        for correction in [DelayCorrection::ProvisionalNegatives, DelayCorrection::None] {
            let dir = ScratchDir::new("pending-checkpoint");
            let store = dir.store();
            let config = join_config(correction);
            let records = spill_stream(1200);
            let (expected, uninterrupted) = drive(
                labelled(Recorder::default(), config.clone()),
                &records,
                |_, j| j,
            );
            let mut first = labelled(Recorder::default(), config.clone());
            {
                let mut state = first.state.borrow_mut();
                state.spill_to(store.clone(), 2, SpillTo::Checkpoints);
                state.windows.budget = TINY;
                state.windows.stub_budget = TINY_STUBS;
            }
            first.example_features = false;
            let (mut checkpoints_out, mut restarts, mut chunks_out) = (0, 0, 0);
            let (got, restarted) = drive(first, &records, |k, j| {
                // A checkpoint every 2 chunks, a restart from the latest one every 5.
                if k % 2 == 0 {
                    let mut batch = Batch::new();
                    j.state.borrow().checkpoint_into(2, &mut batch);
                    store.write(batch).unwrap();
                    j.state.borrow_mut().checkpoint_done();
                    checkpoints_out += usize::from(j.state.borrow().windows.spilled > 0);
                    chunks_out += usize::from(j.state.borrow().windows.ring.spilled_chunks > 0);
                }
                if k % 5 == 4 && k % 2 == 0 {
                    restarts += 1;
                    let mut state = JoinState::restore(&store, 2, &config).unwrap().unwrap();
                    state.windows.budget = TINY;
                    state.windows.stub_budget = TINY_STUBS;
                    let learner = Recorder {
                        updates: j.learner.updates.clone(),
                    };
                    let mut fresh = labelled(learner, config.clone());
                    fresh.state = Rc::new(RefCell::new(state));
                    return fresh;
                }
                j
            });
            assert!(
                checkpoints_out > 3 && restarts > 2 && chunks_out > 3,
                "{checkpoints_out} {restarts} {chunks_out}"
            );
            assert_eq!(emitted(&got), emitted(&expected));
            assert_eq!(restarted.learner.updates, uninterrupted.learner.updates);
            assert_eq!(
                restarted.state.borrow().stats,
                uninterrupted.state.borrow().stats
            );
            // A restore with the budget of the config keeps every body it needs in memory
            // and none of a decided or closed impression.
            let mut batch = Batch::new();
            restarted.state.borrow().checkpoint_into(2, &mut batch);
            store.write(batch).unwrap();
            let back = JoinState::restore(&store, 2, &config).unwrap().unwrap();
            assert_eq!(back.pending(), restarted.state.borrow().pending());
            assert_eq!(back.spill_stats().spilled, 0);
        }
    }

    /// Stubs kept in memory by the bounded restore test: twelve chunks, of the ~50 its
    /// three-second window holds (about eleven are the cursors' and the newest).
    const RESTORE_STUBS: usize = 12 * CHUNK as usize;

    #[test]
    fn gh_4_a_restore_within_the_stub_budget_leaves_chunks_in_the_store_and_changes_nothing() {
        for correction in [DelayCorrection::ProvisionalNegatives, DelayCorrection::None] {
            let dir = ScratchDir::new("pending-restore");
            let store = dir.store();
            let config = LabelConfig {
                window_ms: 3 * WINDOW,
                ..join_config(correction)
            };
            let records = spill_stream(2400);
            let (expected, uninterrupted) = drive(
                labelled(Recorder::default(), config.clone()),
                &records,
                |_, j| j,
            );
            let first = labelled(Recorder::default(), config.clone());
            {
                let mut state = first.state.borrow_mut();
                state.spill_to(store.clone(), 2, SpillTo::Checkpoints);
                state.windows.budget = TINY;
                state.windows.stub_budget = RESTORE_STUBS;
            }
            let (mut restores, mut left, mut most_pending) = (0, 0, 0);
            let (got, restarted) = drive(first, &records, |k, j| {
                // A checkpoint every 2 chunks, a restart from the latest one every 5.
                if k % 2 == 0 {
                    let mut batch = Batch::new();
                    j.state.borrow().checkpoint_into(2, &mut batch);
                    store.write(batch).unwrap();
                    j.state.borrow_mut().checkpoint_done();
                }
                if k % 5 == 4 && k % 2 == 0 {
                    let state = JoinState::restore_within(&store, 2, &config, RESTORE_STUBS, TINY)
                        .unwrap()
                        .unwrap();
                    let restored = state.spill_stats();
                    // Never more chunks in memory than the budget holds, while restoring
                    // a ring of up to three times as many.
                    assert!(
                        restored.peak_chunks_in_memory <= (RESTORE_STUBS / CHUNK as usize) as u64,
                        "{restored:?}"
                    );
                    let ring = &state.windows.ring;
                    let chunks = (ring.end() - 1) / CHUNK - ring.first / CHUNK + 1;
                    assert_eq!(
                        restored.chunks_in_memory + restored.chunks_left_at_restore,
                        chunks,
                        "{restored:?}"
                    );
                    restores += 1;
                    left += restored.chunks_left_at_restore;
                    most_pending = most_pending.max(state.pending());
                    let learner = Recorder {
                        updates: j.learner.updates.clone(),
                    };
                    let mut fresh = labelled(learner, config.clone());
                    fresh.state = Rc::new(RefCell::new(state));
                    return fresh;
                }
                j
            });
            assert!(
                restores > 5 && left > 3 * restores && most_pending > 2 * RESTORE_STUBS,
                "{restores} restores left {left} chunks in the store, at most {most_pending} pending"
            );
            // Exactly as if never stopped: scores, examples, updates, every counter.
            assert_eq!(emitted(&got), emitted(&expected));
            assert_eq!(restarted.learner.updates, uninterrupted.learner.updates);
            assert_eq!(
                restarted.state.borrow().stats,
                uninterrupted.state.borrow().stats
            );
            let spill = restarted.state.borrow().spill_stats();
            assert!(spill.chunks_read_back > 0, "{spill:?}");
        }
    }

    #[test]
    fn the_memory_budget_is_validated_naming_its_key() {
        type Set = fn(&mut LabelConfig, u64);
        let budgets: [(&str, Set); 2] = [
            ("label.pending_memory_mb", |c, v| c.pending_memory_mb = v),
            ("label.pending_stubs_memory_mb", |c, v| {
                c.pending_stubs_memory_mb = v
            }),
        ];
        for (key, set) in budgets {
            for bad in [0, MAX_PENDING_MEMORY_MB + 1] {
                let mut config = LabelConfig::default();
                set(&mut config, bad);
                let problems = config.validate();
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert!(problems[0].contains(key), "{problems:?}");
            }
        }
        let config = LabelConfig {
            pending_memory_mb: 1,
            pending_stubs_memory_mb: 1,
            ..LabelConfig::default()
        };
        assert!(config.validate().is_empty());
        assert_eq!(config.pending_stubs(), (1 << 20) / STUB_BYTES);
        assert_eq!(config.pending_bodies(), (1 << 20) / BODY_BYTES);
    }

    #[test]
    fn a_worker_without_a_checkpoint_restores_nothing() {
        let store = StateStore::memory();
        assert!(
            JoinState::restore(&store, 0, &LabelConfig::default())
                .unwrap()
                .is_none()
        );
    }
}
