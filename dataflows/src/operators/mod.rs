//! ctrflow's operators, one per file, each an extension trait named after its verb.

pub mod aggregates;
mod chains;
pub mod detect;
mod id_index;
pub mod learn_online;
pub mod pending;
pub mod route;

pub use aggregates::{
    Aggregate, Aggregates, AggregatesConfig, AggregatesReport, CategoryCtr, Counts, ItemClicks,
};
pub use detect::{Detect, DetectState, Shards};
pub use learn_online::{
    DelayCorrection, JoinState, JoinStats, LabelConfig, LearnOnline, ScoreOn, SpillStats,
    SpillStore, SpillTo, Watermark, route,
};
