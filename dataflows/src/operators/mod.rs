//! ctrflow's operators, one per file, each an extension trait named after its verb.

pub mod detect;
pub mod learn_online;

pub use detect::{Detect, DetectState};
pub use learn_online::{
    DelayCorrection, JoinState, JoinStats, LabelConfig, LearnOnline, Watermark,
};
