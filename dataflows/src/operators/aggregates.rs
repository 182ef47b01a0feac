//! Global aggregates over a sliding event-time window: per-category impressions, clicks
//! and CTR, and the top-K items by clicks, over the last `window_ms` (default an hour).
//!
//! # Why differential
//!
//! The aggregates change with every labelled impression and again when its minute leaves
//! the window. Differential dataflow keeps them as collections that take insertions *and*
//! retractions and emits only what changed: a minute leaving the window is one retraction
//! per (category, minute) and per (item, minute), not a recount of the hour, and the top-K
//! is re-ranked only in the shards whose items changed.
//!
//! # Time and differences
//!
//! The timely time is the pipeline's [`Watermark`] (event-time milliseconds), so every
//! update carries the event time at which it takes effect. Differences are `isize` counts.
//! Each labelled [`Example`] counts in the bucket of its impression's `ts`
//! (`impression_ts / bucket_ms`). A bucket `b` is in the window until the watermark reaches
//! `retire(b) = (b + 1) * bucket_ms + window_ms`: its counts are inserted at the time they
//! arrive and retracted at `retire(b)`. At a watermark `w` the aggregates therefore
//! cover the impressions of the buckets that end after `w - window_ms`: between `window_ms`
//! and `window_ms + bucket_ms` of event time. An impression counts when it is scored, a
//! click when its positive label is final (seconds later, as a rule): counting impressions
//! from their labels instead would leave the last half hour's negatives out (they are final
//! only when the attribution window closes) and inflate the recent CTR. A click that
//! arrives after its impression's bucket retired is counted as late and left out.
//!
//! # Batching
//!
//! Updates take effect at the first bucket boundary at or after their event time (an
//! impression's `ts`, a click's label time) — or the time they arrive, if that is later (a
//! late record) — not at that time itself: the differential operators then see one time per
//! bucket (with the updates of all the batches in it consolidated) however finely the
//! watermark moves (`run` advances it per poll, `replay` per block), and their work per time
//! (re-ranking a top-K shard, replaying a key's history) is done once per bucket. The price:
//! between boundaries the aggregates lag by less than one bucket (the window's state, which
//! a checkpoint stores, is always complete); when the input ends everything takes effect.
//! Event time, not arrival, so that what the aggregates show at a watermark does not depend
//! on how reading was batched: a worker killed and restarted shows at its last checkpoint
//! exactly what one never stopped does (arrival times differ between such runs; with them,
//! a click arriving just before a boundary in one run and just after it in the other was
//! shown in one checkpoint and not the other).
//!
//! # Shape
//!
//! 1. `AggregatePrepare` (every worker): sums its scores (impressions) and positive examples
//!    (clicks) per (bucket, category) and its clicks per (bucket, item), once per batch, and
//!    sends those sums to worker 0.
//! 2. `AggregateWindow` (worker 0): keeps the window's sums per bucket (the state a
//!    checkpoint stores: categories × buckets plus clicked items × buckets), turns them into
//!    differential updates, and retracts a bucket when the frontier reaches its
//!    retirement time. It retracts nothing when the input ends, so after a replay the
//!    aggregates are those of the last watermark. After a restore it re-inserts every bucket
//!    it was restored with, so the sliding window is exact again.
//! 3. Differential: `reduce` per category into (impressions, clicks); `count` per item, a
//!    top-K `reduce` per shard of items, then a top-K `reduce` over the shards' winners.
//! 4. `AggregatesView` (worker 0): accumulates the outputs into [`Aggregates`], which
//!    reports and checkpoints read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::rc::Rc;

use compact_str::CompactString;
use differential_dataflow::AsCollection;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Exchange as _, Inspect};

use ctrflow_state::{Batch, StateError, StateStore, Table, TableId};

use super::learn_online::Watermark;
use crate::record::{EventTime, Example, Score};

/// Global aggregates settings (`[aggregates]` in the pipeline config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatesConfig {
    /// Maintain the aggregates. Off by default: they cost about 17% more instructions per
    /// event in `replay` (and more wall-clock time; see the README).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Length of the sliding window, in event time.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Granularity of the window: it slides one bucket at a time. Divides `window_ms`.
    #[serde(default = "default_bucket_ms")]
    pub bucket_ms: u64,
    /// How many items the top-items-by-clicks aggregate keeps.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

const fn default_enabled() -> bool {
    false
}

const fn default_window_ms() -> u64 {
    60 * 60 * 1000
}

const fn default_bucket_ms() -> u64 {
    60 * 1000
}

const fn default_top_k() -> usize {
    10
}

impl Default for AggregatesConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            window_ms: default_window_ms(),
            bucket_ms: default_bucket_ms(),
            top_k: default_top_k(),
        }
    }
}

/// Most buckets a window may hold: the checkpoint stores each of them.
const MAX_BUCKETS: u64 = 10_000;
/// Most items the top-K may keep.
const MAX_TOP_K: usize = 1000;

impl AggregatesConfig {
    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bucket_ms == 0 {
            problems.push("aggregates.bucket_ms must be > 0, got 0".to_owned());
        }
        if self.window_ms == 0 {
            problems.push("aggregates.window_ms must be > 0, got 0".to_owned());
        }
        if self.bucket_ms > 0 && self.window_ms > 0 {
            if !self.window_ms.is_multiple_of(self.bucket_ms) {
                problems.push(format!(
                    "aggregates.window_ms ({}) must be a multiple of aggregates.bucket_ms ({})",
                    self.window_ms, self.bucket_ms
                ));
            }
            if self.window_ms / self.bucket_ms > MAX_BUCKETS {
                problems.push(format!(
                    "aggregates.window_ms / aggregates.bucket_ms must be at most {MAX_BUCKETS} \
                     buckets, got {} (raise bucket_ms)",
                    self.window_ms / self.bucket_ms
                ));
            }
        }
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            problems.push(format!(
                "aggregates.top_k must be in 1..={MAX_TOP_K}, got {}",
                self.top_k
            ));
        }
        problems
    }

    /// The bucket of event time `ts`.
    fn bucket(&self, ts: EventTime) -> i64 {
        ts.div_euclid(self.bucket_ms as i64)
    }

    /// The watermark at which bucket `b` leaves the window (saturating at the ends of time).
    fn retire(&self, b: i64) -> Watermark {
        let end = i128::from(b + 1) * i128::from(self.bucket_ms) + i128::from(self.window_ms);
        end.clamp(0, i128::from(Watermark::MAX)) as Watermark
    }

    /// The first bucket boundary at or after `t`: when an update arriving at `t` takes
    /// effect (see the module docs, "Batching").
    fn boundary(&self, t: Watermark) -> Watermark {
        t.div_ceil(self.bucket_ms).saturating_mul(self.bucket_ms)
    }
}

/// Impressions and clicks of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Labelled impressions.
    pub impressions: u64,
    /// Of which positive (a click or like: the label the model learns).
    pub clicks: u64,
}

/// One bucket's sums, as the window keeps and a checkpoint stores them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Bucket {
    categories: BTreeMap<CompactString, Counts>,
    /// Clicks per item (items without clicks are not kept).
    items: BTreeMap<CompactString, u64>,
}

/// What `AggregatePrepare` sends to the window: one batch's sums of one bucket that take
/// effect at one boundary (`effect`, see the module docs, "Batching").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Delta {
    Category {
        bucket: i64,
        category: CompactString,
        counts: Counts,
        effect: Watermark,
    },
    Item {
        bucket: i64,
        item: CompactString,
        clicks: u64,
        effect: Watermark,
    },
}

/// The records of the differential collections: one per impression or click counted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Key {
    /// An impression of this category.
    Shown(CompactString),
    /// A click on an impression of this category.
    Clicked(CompactString),
    /// A click on this item.
    ItemClick(CompactString),
}

/// What the differential computation outputs, accumulated into the view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Output {
    /// A category's (impressions, clicks).
    Category(CompactString, u64, u64),
    /// One of the top items: minus its clicks (so that the most clicked sorts first), item.
    Top(i64, CompactString),
}

/// Shards of the first top-K stage: each ranks its share of the items, so one changed
/// item re-ranks 1/SHARDS of them; the second stage ranks `SHARDS × K` winners.
const SHARDS: u64 = 64;

/// The aggregates of one worker's dataflow: the window (on worker 0) and the current
/// outputs (on worker 0). Shared (`Rc`) between the operators and the worker, which reads
/// it for reports and checkpoints between steps.
#[derive(Debug)]
pub struct Aggregates {
    config: AggregatesConfig,
    /// Sums per bucket of the buckets not yet retired.
    window: BTreeMap<i64, Bucket>,
    /// Buckets with `retire(b) <= retired_to` have been retracted: the last frontier seen.
    retired_to: Watermark,
    /// The window was restored and its buckets are still to be re-inserted.
    reinsert: bool,
    /// Impressions and clicks left out because their bucket had retired when they arrived.
    late: u64,
    /// The differential outputs, accumulated.
    view: BTreeMap<Output, isize>,
}

/// The aggregates at one watermark, for reports and `inspect`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AggregatesReport {
    /// The watermark they are as of: impressions in buckets ending after
    /// `watermark - window_ms` count.
    pub watermark: Watermark,
    /// The window's length.
    pub window_ms: u64,
    /// Its granularity.
    pub bucket_ms: u64,
    /// Per category (empty name: impressions without one), by name.
    pub category_ctr_1h: Vec<CategoryCtr>,
    /// The most clicked items, most clicks first (ties by item id).
    pub top_items_1h: Vec<ItemClicks>,
    /// Impressions and clicks left out because their bucket had left the window when they
    /// arrived (a click later than `window_ms` after its impression, a very late impression).
    pub late: u64,
}

/// One category's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryCtr {
    /// The category.
    pub category: String,
    /// Labelled impressions in the window.
    pub impressions: u64,
    /// Positives among them.
    pub clicks: u64,
    /// `clicks / impressions`.
    pub ctr: f64,
}

/// One of the top items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemClicks {
    /// The item.
    pub item: String,
    /// Its clicks in the window.
    pub clicks: u64,
}

/// What a checkpoint keeps of the aggregates (worker 0's window and its report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AggregatesRecord {
    retired_to: Watermark,
    late: u64,
    window: Vec<(i64, Bucket)>,
    report: AggregatesReport,
}

/// The aggregates' entry in [`TableId::Operators`], under `(0, AGGREGATES_PART)`.
const RECORD: Table<(u32, u8), AggregatesRecord> = Table::new(TableId::Operators);
/// The aggregates' part of worker 0's [`TableId::Operators`] entries (the label join
/// uses 0; `ctrflow`'s checkpoint 1 and 2).
const AGGREGATES_PART: u8 = 3;

impl Aggregates {
    /// Empty aggregates with `config`'s settings.
    pub fn new(config: &AggregatesConfig) -> Self {
        Self {
            config: config.clone(),
            window: BTreeMap::new(),
            retired_to: 0,
            reinsert: false,
            late: 0,
            view: BTreeMap::new(),
        }
    }

    /// The current aggregates.
    pub fn report(&self) -> AggregatesReport {
        let mut category_ctr_1h = Vec::new();
        let mut top_items_1h = Vec::new();
        for (output, &diff) in &self.view {
            if diff <= 0 {
                continue;
            }
            match output {
                Output::Category(category, impressions, clicks) => {
                    category_ctr_1h.push(CategoryCtr {
                        category: category.to_string(),
                        impressions: *impressions,
                        clicks: *clicks,
                        ctr: *clicks as f64 / (*impressions).max(1) as f64,
                    });
                }
                Output::Top(minus_clicks, item) => top_items_1h.push(ItemClicks {
                    item: item.to_string(),
                    clicks: minus_clicks.unsigned_abs(),
                }),
            }
        }
        AggregatesReport {
            watermark: self.retired_to,
            window_ms: self.config.window_ms,
            bucket_ms: self.config.bucket_ms,
            category_ctr_1h,
            top_items_1h,
            late: self.late,
        }
    }

    /// Adds worker 0's aggregates to a checkpoint `batch`: the window's buckets (to slide
    /// on after a restore) and the current report (for `ctrflow inspect`).
    pub fn checkpoint_into(&self, batch: &mut Batch) {
        let record = AggregatesRecord {
            retired_to: self.retired_to,
            late: self.late,
            window: self.window.iter().map(|(b, s)| (*b, s.clone())).collect(),
            report: self.report(),
        };
        RECORD.put(batch, &(0, AGGREGATES_PART), &record);
    }

    /// Worker 0's aggregates as of the checkpoint in `store`, to build the dataflow with
    /// (their buckets are re-inserted when it starts); `None` if it holds none.
    pub fn restore(
        store: &StateStore,
        config: &AggregatesConfig,
    ) -> Result<Option<Self>, StateError> {
        let Some(record) = RECORD.get(store, &(0, AGGREGATES_PART))? else {
            return Ok(None);
        };
        let mut restored = Self::new(config);
        restored.retired_to = record.retired_to;
        restored.late = record.late;
        // Settings may have changed since: the next frontier retires what is now out.
        restored.window = record.window.into_iter().collect();
        restored.reinsert = !restored.window.is_empty();
        Ok(Some(restored))
    }

    /// The report stored with the checkpoint in `store`, if any (for `ctrflow inspect`).
    pub fn stored_report(store: &StateStore) -> Result<Option<AggregatesReport>, StateError> {
        Ok(RECORD
            .get(store, &(0, AGGREGATES_PART))?
            .map(|record| record.report))
    }

    /// Adds `delta` to the window, unless its bucket retired before `time`; appends the
    /// differential updates it makes (at `time`) to `out`.
    fn insert(&mut self, delta: Delta, time: Watermark, out: &mut Vec<(Key, Watermark, isize)>) {
        let (bucket, effect) = match &delta {
            Delta::Category { bucket, effect, .. } | Delta::Item { bucket, effect, .. } => {
                (*bucket, *effect)
            }
        };
        // Before `retire(bucket)` (a boundary) or not at all.
        let time = self.config.boundary(time.max(effect));
        let retire = self.config.retire(bucket);
        if retire <= time || retire <= self.retired_to {
            if let Delta::Category { counts, .. } = delta {
                self.late += counts.impressions + counts.clicks;
            }
            return;
        }
        let sums = self.window.entry(bucket).or_default();
        match delta {
            Delta::Category {
                category, counts, ..
            } => {
                let c = sums.categories.entry(category.clone()).or_default();
                c.impressions += counts.impressions;
                c.clicks += counts.clicks;
                push_counts(out, &category, counts, time, 1);
            }
            Delta::Item { item, clicks, .. } => {
                *sums.items.entry(item.clone()).or_default() += clicks;
                out.push((Key::ItemClick(item), time, count(clicks)));
            }
        }
    }

    /// Re-inserts a restored window at `time` (once).
    fn reinsert(&mut self, time: Watermark, out: &mut Vec<(Key, Watermark, isize)>) {
        if !std::mem::take(&mut self.reinsert) {
            return;
        }
        let time = self.config.boundary(time);
        for sums in self.window.values() {
            push_bucket(out, sums, time, 1);
        }
    }

    /// Retracts the buckets that leave the window by `frontier`, each at its retirement
    /// time (not before `at`, the earliest time the operator may still send at).
    fn retire(
        &mut self,
        frontier: Watermark,
        at: Watermark,
        out: &mut Vec<(Key, Watermark, isize)>,
    ) {
        while let Some(entry) = self.window.first_entry() {
            let retire = self.config.retire(*entry.key());
            if retire > frontier {
                break;
            }
            push_bucket(out, entry.get(), retire.max(at), -1);
            entry.remove();
        }
        self.retired_to = self.retired_to.max(frontier);
    }
}

fn count(n: u64) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

fn push_counts(
    out: &mut Vec<(Key, Watermark, isize)>,
    category: &CompactString,
    counts: Counts,
    time: Watermark,
    sign: isize,
) {
    if counts.impressions > 0 {
        out.push((
            Key::Shown(category.clone()),
            time,
            sign * count(counts.impressions),
        ));
    }
    if counts.clicks > 0 {
        out.push((
            Key::Clicked(category.clone()),
            time,
            sign * count(counts.clicks),
        ));
    }
}

fn push_bucket(
    out: &mut Vec<(Key, Watermark, isize)>,
    sums: &Bucket,
    time: Watermark,
    sign: isize,
) {
    for (category, counts) in &sums.categories {
        push_counts(out, category, *counts, time, sign);
    }
    for (item, clicks) in &sums.items {
        out.push((Key::ItemClick(item.clone()), time, sign * count(*clicks)));
    }
}

/// Moves the sums of one batch into `out`, emptying the maps.
fn drain_sums(
    categories: &mut FxHashMap<(i64, CompactString, Watermark), Counts>,
    items: &mut FxHashMap<(i64, CompactString, Watermark), u64>,
    out: &mut Vec<Delta>,
) {
    out.extend(
        categories
            .drain()
            .map(|((bucket, category, effect), counts)| Delta::Category {
                bucket,
                category,
                counts,
                effect,
            }),
    );
    out.extend(
        items
            .drain()
            .map(|((bucket, item, effect), clicks)| Delta::Item {
                bucket,
                item,
                clicks,
                effect,
            }),
    );
}

/// A top-K value: minus the item's clicks (so that the most clicked sorts first), the item.
type Ranked = (i64, CompactString);

/// Keeps the first `k` values of a top-K group (values sort most clicks first).
fn keep_top(k: usize, input: &[(&Ranked, isize)], output: &mut Vec<(Ranked, isize)>) {
    output.extend(
        input
            .iter()
            .filter(|(_, n)| *n > 0)
            .take(k)
            .map(|(v, _)| ((*v).clone(), 1)),
    );
}

/// Extension trait for maintaining global aggregates over the scores and labelled examples
/// of [`LearnOnline`](super::LearnOnline).
pub trait Aggregate<'scope> {
    /// Maintains per-category impressions and clicks (with CTR), and the top-K items by
    /// clicks, over the sliding window of `state`'s settings, in `state` (worker 0's is
    /// complete). An impression counts when it is scored (`self`), a click when its positive
    /// label is final (`examples`), both in the bucket of the impression's event time: the
    /// recent minutes' CTR is that of the clicks seen so far. Returns a stream that a probe
    /// can watch: once it passes a time, the aggregates are those of that watermark.
    ///
    /// # Examples
    /// ```
    /// use std::{cell::RefCell, rc::Rc};
    /// use ctrflow_dataflows::operators::{Aggregate, Aggregates, AggregatesConfig};
    /// use ctrflow_dataflows::{Example, LabelSource, Score};
    /// use timely::dataflow::operators::ToStream;
    ///
    /// let score = |ts, item: &str| Score {
    ///     id: "i".into(), user: "u".into(), item: item.into(), category: "music".into(),
    ///     score: 0.5, model_version: 0, event_ts: ts,
    /// };
    /// let example = |ts, item: &str, label| Example {
    ///     id: "i".into(), impression_ts: ts, label_ts: ts, served: 0.5, label,
    ///     reference: None, item: item.into(), category: "music".into(),
    ///     at_input_end: false, features: vec![],
    /// };
    /// let scores = vec![score(1_000, "a"), score(2_000, "b")];
    /// let examples = vec![example(1_000, "a", LabelSource::Click)];
    /// let report = timely::execute_directly(move |worker| {
    ///     let config = AggregatesConfig { enabled: true, ..AggregatesConfig::default() };
    ///     let state = Rc::new(RefCell::new(Aggregates::new(&config)));
    ///     let shared = Rc::clone(&state);
    ///     worker.dataflow::<u64, _, _>(move |scope| {
    ///         let examples = examples.to_stream(scope);
    ///         scores.to_stream(scope).aggregate(examples, shared);
    ///     });
    ///     while worker.step() {}
    ///     let report = state.borrow().report();
    ///     report
    /// });
    /// assert_eq!(report.category_ctr_1h[0].impressions, 2);
    /// assert_eq!(report.category_ctr_1h[0].clicks, 1);
    /// assert_eq!(report.top_items_1h[0].item, "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn aggregate(
        self,
        examples: Stream<'scope, Watermark, Vec<Example>>,
        state: Rc<RefCell<Aggregates>>,
    ) -> Stream<'scope, Watermark, Vec<()>>;
}

impl<'scope> Aggregate<'scope> for Stream<'scope, Watermark, Vec<Score>> {
    fn aggregate(
        self,
        examples: Stream<'scope, Watermark, Vec<Example>>,
        state: Rc<RefCell<Aggregates>>,
    ) -> Stream<'scope, Watermark, Vec<()>> {
        let config = state.borrow().config.clone();
        let prepare_config = config.clone();
        let deltas: Stream<'scope, Watermark, Vec<Delta>> = self.binary(
            examples,
            Pipeline,
            Pipeline,
            "AggregatePrepare",
            move |_cap, _info| {
                let config = prepare_config;
                let mut categories: FxHashMap<(i64, CompactString, Watermark), Counts> =
                    FxHashMap::default();
                let mut items: FxHashMap<(i64, CompactString, Watermark), u64> =
                    FxHashMap::default();
                let mut out = Vec::new();
                // When an update made at event time `ts` and sent at `sent` takes effect.
                let bounds = config.clone();
                let effect = move |ts: EventTime, sent: Watermark| {
                    bounds.boundary(Watermark::try_from(ts).unwrap_or(0).max(sent))
                };
                move |scores, examples, output| {
                    scores.for_each(|cap, data| {
                        for s in data.iter() {
                            let bucket = config.bucket(s.event_ts);
                            let at = effect(s.event_ts, cap.least().copied().unwrap_or(0));
                            categories
                                .entry((bucket, s.category.clone(), at))
                                .or_default()
                                .impressions += 1;
                        }
                        drain_sums(&mut categories, &mut items, &mut out);
                        output.session(&cap).give_iterator(out.drain(..));
                    });
                    examples.for_each(|cap, data| {
                        for e in data.iter().filter(|e| e.label.is_positive()) {
                            let bucket = config.bucket(e.impression_ts);
                            let at = effect(e.label_ts, cap.least().copied().unwrap_or(0));
                            categories
                                .entry((bucket, e.category.clone(), at))
                                .or_default()
                                .clicks += 1;
                            *items.entry((bucket, e.item.clone(), at)).or_default() += 1;
                        }
                        drain_sums(&mut categories, &mut items, &mut out);
                        output.session(&cap).give_iterator(out.drain(..));
                    });
                }
            },
        );
        let window = Rc::clone(&state);
        let updates: Stream<'scope, Watermark, Vec<(Key, Watermark, isize)>> = deltas
            .unary_frontier(
                Exchange::new(|_: &Delta| 0),
                "AggregateWindow",
                move |cap, _info| {
                    let mut held = Some(cap);
                    let mut out = Vec::new();
                    move |(input, frontier), output| {
                        let Some(cap) = held.as_mut() else {
                            input.for_each(|_, _| {});
                            return;
                        };
                        let window = &mut *window.borrow_mut();
                        window.reinsert(*cap.time(), &mut out);
                        if !out.is_empty() {
                            output.session(&*cap).give_iterator(out.drain(..));
                        }
                        // Sent at the held capability (the last frontier, at or before every
                        // message's time), each update at its message's time.
                        input.for_each(|time, data| {
                            let t = time.least().copied().unwrap_or(*cap.time());
                            for delta in data.drain(..) {
                                window.insert(delta, t.max(*cap.time()), &mut out);
                            }
                        });
                        match frontier.frontier().iter().min().copied() {
                            Some(f) => {
                                window.retire(f, *cap.time(), &mut out);
                                if !out.is_empty() {
                                    output.session(&*cap).give_iterator(out.drain(..));
                                }
                                if f > *cap.time() {
                                    cap.downgrade(&f);
                                }
                            }
                            None => {
                                // The input ended: keep the last watermark's window.
                                if !out.is_empty() {
                                    output.session(&*cap).give_iterator(out.drain(..));
                                }
                                held = None;
                            }
                        }
                    }
                },
            );
        let updates = updates.as_collection();
        let categories = updates
            .clone()
            .flat_map(|key| match key {
                Key::Shown(c) => Some((c, false)),
                Key::Clicked(c) => Some((c, true)),
                Key::ItemClick(_) => None,
            })
            .reduce_named("CategoryCtr", |_category, input, output| {
                let (mut shown, mut clicked) = (0, 0);
                for (was_click, n) in input {
                    if **was_click {
                        clicked = *n;
                    } else {
                        shown = *n;
                    }
                }
                output.push(((shown.max(0) as u64, clicked.max(0) as u64), 1isize));
            })
            .map(|(category, (shown, clicked))| Output::Category(category, shown, clicked));
        let k = config.top_k;
        let top = updates
            .flat_map(|key| match key {
                Key::ItemClick(item) => Some(item),
                _ => None,
            })
            .count()
            .map(|(item, clicks)| {
                let shard = FxBuildHasher.hash_one(&item) % SHARDS;
                (shard, (-(clicks as i64), item))
            })
            .reduce_named("TopItemsShard", move |_, input, output| {
                keep_top(k, input, output)
            })
            .map(|(_shard, top)| (0u64, top))
            .reduce_named("TopItems", move |_, input, output| {
                keep_top(k, input, output)
            })
            .map(|(_, (minus_clicks, item))| Output::Top(minus_clicks, item));
        let view = Rc::clone(&state);
        categories
            .concat(top)
            .inner
            .exchange(|_| 0)
            .inspect(move |(output, _time, diff)| {
                let mut view = view.borrow_mut();
                let n = view.view.entry(output.clone()).or_default();
                *n += diff;
                if *n == 0 {
                    view.view.remove(output);
                }
            })
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "AggregatesView",
                |_cap, _info| |input, _output| input.for_each(|_, _| {}),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LabelSource;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::vec::Map;

    const MIN: i64 = 60_000;

    fn example(ts: EventTime, category: &str, item: &str, clicked: bool) -> Example {
        Example {
            id: "x".into(),
            impression_ts: ts,
            label_ts: ts,
            served: 0.5,
            label: if clicked {
                LabelSource::Click
            } else {
                LabelSource::Expired
            },
            at_input_end: false,
            reference: None,
            item: item.into(),
            category: category.into(),
            features: Vec::new(),
        }
    }

    fn config() -> AggregatesConfig {
        AggregatesConfig {
            enabled: true,
            window_ms: 10 * MIN as u64,
            bucket_ms: MIN as u64,
            top_k: 2,
        }
    }

    /// Drives the operator on `workers` workers: sends each batch of examples at its time
    /// (split round-robin between the workers), steps until the probe passes it, and
    /// returns worker 0's report after each batch.
    fn run(
        workers: usize,
        config: AggregatesConfig,
        restored: Option<AggregatesRecord>,
        batches: Vec<(Watermark, Vec<Example>)>,
    ) -> Vec<(AggregatesReport, Option<AggregatesRecord>)> {
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let state = Rc::new(RefCell::new(Aggregates::new(&config)));
            if let (0, Some(r)) = (index, restored.clone()) {
                let mut s = state.borrow_mut();
                s.retired_to = r.retired_to;
                s.window = r.window.into_iter().collect();
                s.reinsert = true;
            }
            let mut input = InputHandle::<Watermark, CapacityContainerBuilder<Vec<Example>>>::new();
            let shared = Rc::clone(&state);
            let probe = worker.dataflow(|scope| {
                // Each example stands for an impression scored and labelled at once.
                let examples = input.to_stream(scope);
                let scores = examples.clone().map(|e| Score {
                    id: e.id,
                    user: "u".into(),
                    item: e.item,
                    category: e.category,
                    score: e.served,
                    model_version: 0,
                    event_ts: e.impression_ts,
                });
                let (probe, _) = scores.aggregate(examples, shared).probe();
                probe
            });
            let mut reports = Vec::new();
            for (time, batch) in &batches {
                input.advance_to(*time);
                for (i, e) in batch.iter().enumerate() {
                    if i % peers == index {
                        input.send(e.clone());
                    }
                }
                input.advance_to(*time + 1);
                while probe.less_than(input.time()) {
                    worker.step();
                }
                let s = state.borrow();
                let record = AggregatesRecord {
                    retired_to: s.retired_to,
                    late: s.late,
                    window: s.window.iter().map(|(b, x)| (*b, x.clone())).collect(),
                    report: s.report(),
                };
                reports.push((s.report(), Some(record)));
            }
            reports
        })
        .unwrap();
        guards.join().into_iter().next().unwrap().unwrap()
    }

    fn ctr(report: &AggregatesReport, category: &str) -> (u64, u64) {
        report
            .category_ctr_1h
            .iter()
            .find(|c| c.category == category)
            .map_or((0, 0), |c| (c.impressions, c.clicks))
    }

    fn top(report: &AggregatesReport) -> Vec<(&str, u64)> {
        report
            .top_items_1h
            .iter()
            .map(|i| (i.item.as_str(), i.clicks))
            .collect()
    }

    /// A category's counts rise, then fall back to zero as its minutes leave the window;
    /// the top items change as their clicks leave it.
    fn window_slides(workers: usize) {
        let t = |m: i64| (m * MIN) as Watermark;
        // Each batch sent at the first boundary its examples take effect at (they are of
        // the minute before it).
        let batches = vec![
            (
                t(2),
                vec![
                    example(MIN, "music", "a", true),
                    example(MIN + 5, "music", "a", true),
                    example(MIN + 9, "music", "b", false),
                    example(MIN + 10, "news", "c", true),
                ],
            ),
            (
                t(6),
                vec![
                    example(5 * MIN, "music", "b", true),
                    example(5 * MIN + 1, "news", "c", true),
                    example(5 * MIN + 2, "news", "c", true),
                    example(5 * MIN + 3, "news", "d", false),
                ],
            ),
            // Minute 1 retires at 2 + 10 = 12 minutes.
            (t(11), vec![]),
            (t(12), vec![]),
            // Minute 5 retires at 16.
            (t(16), vec![example(15 * MIN, "news", "d", true)]),
            // A late example: its minute (3) retired at 14.
            (t(20), vec![example(3 * MIN, "music", "z", true)]),
            (t(26), vec![]),
        ];
        let reports: Vec<AggregatesReport> = run(workers, config(), None, batches)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(ctr(&reports[0], "music"), (3, 2));
        assert_eq!(ctr(&reports[0], "news"), (1, 1));
        assert_eq!(top(&reports[0]), vec![("a", 2), ("c", 1)]);
        assert_eq!(ctr(&reports[1], "music"), (4, 3));
        assert_eq!(ctr(&reports[1], "news"), (4, 3));
        assert_eq!(top(&reports[1]), vec![("c", 3), ("a", 2)]);
        assert_eq!(
            reports[2],
            AggregatesReport {
                watermark: t(11) + 1,
                ..reports[1].clone()
            }
        );
        // Minute 1 left the window: its clicks on a and c with it.
        assert_eq!(ctr(&reports[3], "music"), (1, 1));
        assert_eq!(ctr(&reports[3], "news"), (3, 2));
        assert_eq!(top(&reports[3]), vec![("c", 2), ("b", 1)]);
        assert_eq!(ctr(&reports[4], "music"), (0, 0), "back to zero");
        assert_eq!(ctr(&reports[4], "news"), (1, 1));
        assert_eq!(top(&reports[4]), vec![("d", 1)]);
        assert_eq!(reports[5].late, 2, "its impression and its click");
        assert_eq!(top(&reports[5]), vec![("d", 1)]);
        assert!(reports[6].category_ctr_1h.is_empty());
        assert!(reports[6].top_items_1h.is_empty());
    }

    #[test]
    fn window_slides_1w() {
        window_slides(1);
    }

    #[test]
    fn window_slides_2w() {
        window_slides(2);
    }

    #[test]
    fn window_slides_4w() {
        window_slides(4);
    }

    /// A restored window is re-inserted and keeps sliding as if uninterrupted.
    #[test]
    fn restored_window_slides_on() {
        let t = |m: i64| (m * MIN) as Watermark;
        let first = vec![
            (t(1), vec![example(MIN, "music", "a", true)]),
            (t(5), vec![example(5 * MIN, "music", "b", true)]),
        ];
        let runs = run(1, config(), None, first);
        let record = runs[1].1.clone();
        let after = vec![(t(6), vec![]), (t(12), vec![]), (t(16), vec![])];
        let reports: Vec<AggregatesReport> = run(1, config(), record, after)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(ctr(&reports[0], "music"), (2, 2));
        assert_eq!(top(&reports[0]), vec![("a", 1), ("b", 1)]);
        assert_eq!(ctr(&reports[1], "music"), (1, 1));
        assert_eq!(top(&reports[1]), vec![("b", 1)]);
        assert!(reports[2].category_ctr_1h.is_empty());
    }

    /// Updates wait for the next bucket boundary, so differential sees one time per bucket.
    #[test]
    fn updates_take_effect_at_the_next_boundary() {
        let t = |m: i64| (m * MIN) as Watermark;
        let batches = vec![
            (t(1) + 500, vec![example(MIN + 400, "music", "a", true)]),
            (t(2) - 1, vec![]),
            (t(2), vec![]),
        ];
        let reports: Vec<AggregatesReport> = run(1, config(), None, batches)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(reports[0].category_ctr_1h.is_empty());
        assert_eq!(
            ctr(&reports[1], "music"),
            (0, 0),
            "the boundary is not passed"
        );
        assert_eq!(ctr(&reports[2], "music"), (1, 1));
        assert_eq!(top(&reports[2]), vec![("a", 1)]);
    }

    /// When an update takes effect follows its event time, not when it was sent: two runs
    /// that send the same impression at different times before its `ts` (reading batched
    /// differently) show the same aggregates at every watermark.
    #[test]
    fn updates_take_effect_by_event_time_not_arrival() {
        let t = |m: i64| (m * MIN) as Watermark;
        let runs: Vec<Vec<AggregatesReport>> = [t(1) + 500, t(2) + 50]
            .into_iter()
            .map(|sent| {
                let batches = vec![
                    (sent, vec![example(2 * MIN + 100, "music", "a", true)]),
                    (t(2) + 1000, vec![]),
                    (t(3), vec![]),
                ];
                run(1, config(), None, batches)
                    .into_iter()
                    .map(|(r, _)| r)
                    .collect()
            })
            .collect();
        for run in &runs {
            assert!(run[0].category_ctr_1h.is_empty());
            assert_eq!(
                ctr(&run[1], "music"),
                (0, 0),
                "its boundary (3 min) is not passed, whether it was sent before 2 min or after"
            );
            assert_eq!(ctr(&run[2], "music"), (1, 1));
        }
        assert_eq!(runs[0][1..], runs[1][1..]);
    }

    #[test]
    fn validate_names_keys() {
        assert!(AggregatesConfig::default().validate().is_empty());
        let bad = AggregatesConfig {
            enabled: true,
            window_ms: 1000,
            bucket_ms: 300,
            top_k: 0,
        };
        let problems = bad.validate().join("\n");
        assert!(problems.contains("aggregates.window_ms (1000) must be a multiple"));
        assert!(problems.contains("aggregates.top_k"));
    }
}
