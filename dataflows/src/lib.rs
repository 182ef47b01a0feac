//! ctrflow's timely dataflow: the record types and the operators that join impressions with
//! their feedback, score and train.
#![warn(missing_docs)]

pub mod learner;
pub mod record;

pub use learner::Learner;
pub use record::{
    EventTime, Example, Feature, Features, Interaction, InteractionKind, LabelSource, Score,
};
