//! Point-in-time entity features: the interface through which the dataflow reads them
//! before scoring an impression and updates them from every event; `ctrflow` implements
//! it over its feature store.

use serde::{Deserialize, Serialize};

use crate::record::{EventTime, Features};

/// Hashed identities of what an impression is about: the keys of its entity features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entities {
    /// The user.
    pub user: u64,
    /// The item.
    pub item: u64,
    /// The user with the item's category.
    pub user_category: u64,
}

impl Entities {
    /// No entities: the keys of an impression read while entity features were off (not
    /// hashed then). A real key is a 64-bit hash, all three zero only by a 2^-192 chance.
    pub const NONE: Entities = Entities {
        user: 0,
        item: 0,
        user_category: 0,
    };
}

/// What happened to an impression's entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// It was shown.
    Impression,
    /// The user clicked it.
    Click,
    /// The user liked it.
    Like,
    /// The user skipped it within `fast_skip_ms`.
    FastSkip,
}

/// Entity features, read as of an impression's event time and updated from every event.
///
/// The dataflow calls these in event-time order, so the features an impression is scored
/// with are the aggregates of every event before it and of none of its own feedback
/// (which comes later); the impression keeps those features for training. (With
/// `label.score_on = "arrival"`, `enrich` runs when the impression arrives, on the
/// aggregates of the events processed so far: all before the watermark, none of its own
/// feedback.)
pub trait Enrich {
    /// About to enrich impressions about `entities`: load what is not at hand, in one
    /// batched read.
    fn prepare(&mut self, _entities: &[Entities]) {}
    /// Appends the entity features of `entities` as of event time `ts` to `features`.
    fn enrich(&mut self, entities: &Entities, ts: EventTime, features: &mut Features);
    /// Records that `signal` happened to `entities` at event time `ts`.
    fn record(&mut self, entities: &Entities, ts: EventTime, signal: Signal);
}

/// No entity features: impressions are scored with their hashed event features only.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEnrich;

impl Enrich for NoEnrich {
    fn enrich(&mut self, _: &Entities, _: EventTime, _: &mut Features) {}
    fn record(&mut self, _: &Entities, _: EventTime, _: Signal) {}
}
