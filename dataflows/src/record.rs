//! Record types that flow between ctrflow's operators.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::enrich::Entities;

/// One hashed feature: the model coordinate it lands in and its value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Bucket in `0..2^bits`.
    pub index: u32,
    /// 1.0 for categorical features, the transformed number for numeric ones.
    pub value: f32,
}

/// The hashed features of one impression as it is scored and learned from. Inline up to 24
/// (a typical event has about 12, plus about 10 entity features), so the hot path does not
/// allocate.
pub type Features = SmallVec<[Feature; 24]>;

/// An impression's hashed features as they travel in an [`Interaction`]: the event's own
/// (the contract's events have about 12), so inline up to 16; an event with more (a `ctx`
/// of more than about ten fields) carries them in a heap buffer. The entity features are
/// appended when it is scored, into [`Features`]. Each record moves several times between
/// decoding and the label join (and crosses to another worker's core with several
/// workers): 64 bytes less of each (280 instead of 344) made a 1-worker replay 1.5–2%
/// faster.
pub type EventFeatures = SmallVec<[Feature; EVENT_FEATURES_INLINE]>;

/// Features an [`EventFeatures`] holds without a heap buffer.
pub const EVENT_FEATURES_INLINE: usize = 16;

/// Event time: epoch milliseconds, from the event's `ts`.
pub type EventTime = i64;

/// One decoded input event, keyed by the impression it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Event time in epoch milliseconds.
    pub ts: EventTime,
    /// Position in the source (line number, or partition and offset packed by the source).
    /// Breaks ties between equal `ts`, so that processing order is deterministic.
    pub pos: u64,
    /// The impression this event is, or answers.
    pub id: CompactString,
    /// What happened.
    pub kind: InteractionKind,
}

/// The kinds of event of the input contract.
// Impressions carry their features inline on purpose: boxing them would allocate per event,
// and most records are impressions anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InteractionKind {
    /// An item was shown to a user; carries the features it is scored and trained with.
    Impression {
        /// User id.
        user: CompactString,
        /// Item id.
        item: CompactString,
        /// The item's category (`ctx.category`; empty when absent), for the global
        /// aggregates ([`crate::operators::Aggregate`]).
        category: CompactString,
        /// Hashed features, computed once: serving and training use exactly these (the
        /// entity features are appended when it is scored; with `score_on = "arrival"`,
        /// to these).
        features: EventFeatures,
        /// Keys of its entity features.
        entities: Entities,
        /// The true click probability, when the source knows it (the generator's
        /// `ctx._p_true`); used only to report the Bayes-optimal loss, never learned from.
        reference: Option<f32>,
    },
    /// The user clicked the item.
    Click,
    /// The user liked the item.
    Like,
    /// The user skipped the item after `dwell_ms` milliseconds.
    Skip {
        /// How long the item was on screen before the skip.
        dwell_ms: u32,
    },
}

/// A score for one impression, computed before its label is known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Impression id.
    pub id: CompactString,
    /// User id.
    pub user: CompactString,
    /// Item id.
    pub item: CompactString,
    /// The item's category (empty when the impression had none), for the global aggregates.
    pub category: CompactString,
    /// Predicted click probability.
    pub score: f32,
    /// Version of the model that produced the score (updates applied so far).
    pub model_version: u64,
    /// The impression's event time.
    pub event_ts: EventTime,
}

/// How an impression's label was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabelSource {
    /// A click inside the attribution window.
    Click,
    /// A like inside the attribution window.
    Like,
    /// A skip faster than `fast_skip_ms`: the instant negative.
    FastSkip,
    /// No decisive feedback before the watermark passed `ts + window`.
    Expired,
}

impl LabelSource {
    /// Whether this label is a positive.
    pub fn is_positive(self) -> bool {
        matches!(self, LabelSource::Click | LabelSource::Like)
    }
}

/// A labelled impression, as learned from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Impression id.
    pub id: CompactString,
    /// The impression's event time.
    pub impression_ts: EventTime,
    /// Event time at which the label became final.
    pub label_ts: EventTime,
    /// The score served for the impression (progressive validation uses this).
    pub served: f32,
    /// How the label was decided.
    pub label: LabelSource,
    /// The impression's true click probability, when the source knows it.
    pub reference: Option<f32>,
    /// The item shown (inline up to 24 bytes: no allocation for typical ids).
    pub item: CompactString,
    /// The item's category (empty when the impression had none).
    pub category: CompactString,
    /// Whether the end of the input made the label final, not event time: the impression's
    /// window would have closed after the last event, and it expired undecided then. Metrics
    /// over a window of recent labels leave these out (the last `window_ms` of expiries at
    /// once, all negatives, whose impressions' positives were counted before them, would
    /// read as a falling click rate); overall metrics count them.
    pub at_input_end: bool,
    /// The hashed features it was scored and trained with, when the dataflow was asked to
    /// emit them (the `examples` output); empty otherwise. A `Vec`, not [`Features`]: empty
    /// it costs 24 bytes in every record of the operator's output, where the inline vector
    /// would double the size of scores and examples alike.
    pub features: Vec<Feature>,
}
