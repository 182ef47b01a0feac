//! The model interface the dataflow trains and scores with; `ctrflow` implements it.

use crate::record::Feature;

/// An online binary classifier over hashed features.
///
/// Each worker owns one handle. Handles of one process may share their weights (the FTRL
/// model does, lock-free), so `update` through one handle is seen by `predict` on another.
pub trait Learner {
    /// Click probability of `x` under the current weights; always finite, in `(0, 1)`.
    fn predict(&self, x: &[Feature]) -> f32;
    /// Learns from one labelled example.
    fn update(&mut self, x: &[Feature], positive: bool);
    /// Model version: the number of updates applied so far. A function of the examples
    /// learned, never of wall-clock time, so replays are deterministic.
    fn version(&self) -> u64;
    /// A hint that `x` will be predicted or learned shortly: the model may start fetching
    /// its coordinates, so that the memory latency of a large model overlaps other work.
    fn prefetch(&self, _x: &[Feature]) {}
    /// Publishes whatever the handle buffers (counts, pending updates) to the shared model;
    /// called when the input ends, and before a checkpoint.
    fn flush(&mut self) {}
}
