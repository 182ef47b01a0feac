//! ctrflow's operators, one per file, each an extension trait named after its verb.

pub mod learn_online;

pub use learn_online::{
    DelayCorrection, JoinState, JoinStats, LabelConfig, LearnOnline, Watermark,
};
