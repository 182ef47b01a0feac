//! ctrflow's timely dataflow: the record types that flow between operators, and the
//! operators that join impressions with their feedback, score and train.
//!
//! The maths comes in through [`Learner`] and [`Detector`], which `ctrflow` implements, so
//! this crate never depends on it.
#![warn(missing_docs)]

pub mod detector;
pub mod enrich;
pub mod learner;
pub mod operators;
pub mod record;

pub use detector::{
    Alert, AlertKind, AlertState, AlertWindow, DataSummary, Detector, Observation, Severity,
};
pub use enrich::{Enrich, Entities, NoEnrich, Signal};
pub use learner::Learner;
pub use record::{
    EventFeatures, EventTime, Example, Feature, Features, Interaction, InteractionKind,
    LabelSource, Score,
};
