//! The drift-detector interface the dataflow feeds and the alert records it emits;
//! `ctrflow` implements the detector (`src/drift`), as it implements [`crate::Learner`].
//!
//! The [`Detect`](crate::operators::Detect) operator turns the learning dataflow's outputs
//! into small [`Observation`]s, routes them all to one worker and hands them to the
//! detector in event-time order, so that every alert is raised once for the whole dataflow.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::record::{EventTime, LabelSource};

/// One thing the detector observes: the projection of a dataflow record onto what drift
/// detection needs (no ids, no features), so routing everything to one worker stays cheap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Observation {
    /// An impression was scored.
    Impression {
        /// Its event time.
        ts: EventTime,
        /// The served score.
        score: f32,
    },
    /// The segment (value of the segmenting `ctx` field) of an impression, sent by the
    /// worker that decoded it, so that the detector can judge its label per segment.
    Segment {
        /// The impression's event time.
        ts: EventTime,
        /// A hash of the impression's id, as its label carries it.
        id: u64,
        /// The value of the segmenting field.
        value: CompactString,
    },
    /// An impression got its final label.
    Label {
        /// A hash of the impression's id (the same hash as [`Observation::Segment`]'s), when
        /// the label does not carry its segment.
        id: u64,
        /// Event time at which the label became final.
        label_ts: EventTime,
        /// The score served for it.
        served: f32,
        /// How the label was decided.
        label: LabelSource,
        /// The end of the input made it final ([`Example::at_input_end`](crate::Example)).
        at_input_end: bool,
        /// The impression's segment (value of the segmenting `ctx` field) when the label
        /// carries it; empty: the detector finds it by `id`, from the impression's
        /// [`Observation::Segment`].
        segment: CompactString,
    },
    /// One worker's summary of the `ctx` values of the impressions it decoded lately; boxed
    /// (one per thousand impressions) so that the other, per-impression variants, which
    /// the detect operator moves and sorts by the million, stay 48 bytes instead of 80.
    Data(Box<DataSummary>),
}

impl Observation {
    /// The event time the detector orders observations by.
    pub fn ts(&self) -> EventTime {
        match self {
            Observation::Impression { ts, .. } | Observation::Segment { ts, .. } => *ts,
            Observation::Label { label_ts, .. } => *label_ts,
            Observation::Data(d) => d.to,
        }
    }
}

/// Counts of `ctx` values over a batch of impressions decoded by one worker: categorical
/// values exactly (up to a cap per field, the rest as "other"), numbers in fine
/// logarithmic buckets. Summing these is all the detector needs to build histograms, so
/// workers send a few hundred counts per batch instead of every value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Event time of the first impression summarized.
    pub from: EventTime,
    /// Event time of the last impression summarized.
    pub to: EventTime,
    /// Impressions summarized.
    pub impressions: u64,
    /// `(field, value, count)` of categorical values; `value` is `None` for values beyond
    /// the per-batch cap.
    pub categorical: Vec<(CompactString, Option<CompactString>, u32)>,
    /// `(field, bucket, count)` of numeric values, bucketed by [`numeric_bucket`].
    pub numeric: Vec<(CompactString, i32, u32)>,
}

/// Relative width of a fine numeric bucket: values within 2 % of each other may share one.
pub const NUMERIC_BUCKET_GROWTH: f64 = 1.02;

/// The fine bucket of a number: sign-symmetric logarithmic buckets of `ln(1 + |x|)`, so
/// small integers (positions, hours) each get their own bucket and large values keep 2 %
/// relative resolution. Non-finite values land in the extreme buckets.
pub fn numeric_bucket(x: f64) -> i32 {
    let magnitude = (x.abs().ln_1p() / NUMERIC_BUCKET_GROWTH.ln()).floor();
    let b = if magnitude.is_finite() {
        magnitude.min(f64::from(i32::MAX - 1)) as i32 + 1
    } else {
        i32::MAX - 1
    };
    if x < 0.0 {
        -b
    } else if x == 0.0 {
        0
    } else {
        b
    }
}

/// Watches the dataflow for drift; implemented outside this crate.
///
/// The operator calls `observe` with every observation whose event time is below the
/// watermark, in `(ts, kind)` order, then `advance` with the watermark; alerts raised are
/// appended to `alerts`.
pub trait Detector {
    /// Takes one observation.
    fn observe(&mut self, observation: &Observation);
    /// Takes observations in order, as [`observe`](Detector::observe) one at a time would;
    /// the operator hands over each ready run this way, so that a detector can save the
    /// call per observation.
    fn observe_all<'o>(&mut self, observations: impl Iterator<Item = &'o Observation>)
    where
        Self: Sized,
    {
        for o in observations {
            self.observe(o);
        }
    }
    /// Event time has reached `now` (the watermark): evaluate, and append alerts.
    fn advance(&mut self, now: EventTime, alerts: &mut Vec<Alert>);
}

/// What went wrong, as the contract names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The model's loss rose: the relation between features and clicks changed.
    ConceptDrift,
    /// A feature's (or the score's) distribution moved away from its reference.
    DataDrift,
    /// Mean predicted CTR and observed CTR disagree.
    Calibration,
    /// Impressions arrive but their feedback stopped (broken tracking).
    LabelDelay,
}

/// Whether an alert opens or closes an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition started.
    Firing,
    /// The condition ended.
    Resolved,
}

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Past the threshold.
    Warning,
    /// Far past it.
    Critical,
}

/// The event-time span of data an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertWindow {
    /// First event time, epoch milliseconds.
    pub from: EventTime,
    /// Last event time, epoch milliseconds.
    pub to: EventTime,
}

/// An alert in the contract's form (DESIGN.md § Outputs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What went wrong.
    pub kind: AlertKind,
    /// Opening or closing an episode.
    pub state: AlertState,
    /// How bad.
    pub severity: Severity,
    /// The detector that raised it (`adwin`, `page_hinkley`, `psi`, `js`, `ratio_band`,
    /// `feedback_rate`).
    pub detector: CompactString,
    /// What it watched (`relative_logloss`, `ctx.device`, `score`, ...).
    pub metric: CompactString,
    /// The statistic's value when raised.
    pub value: f64,
    /// The threshold it crossed (for `resolved`: the one it came back under).
    pub threshold: f64,
    /// The data the statistic was computed on.
    pub window: AlertWindow,
    /// Event time at which it was raised.
    pub ts: EventTime,
    /// For people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_buckets_separate_small_integers_and_keep_order() {
        let buckets: Vec<i32> = (0..=30).map(|x| numeric_bucket(f64::from(x))).collect();
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        assert_eq!(numeric_bucket(-3.0), -numeric_bucket(3.0));
        assert_eq!(numeric_bucket(f64::INFINITY), i32::MAX - 1);
        assert_eq!(numeric_bucket(f64::NAN), i32::MAX - 1);
    }

    #[test]
    fn observations_stay_small() {
        // The detect operator moves and sorts several per impression.
        assert!(std::mem::size_of::<Observation>() <= 48);
    }

    #[test]
    fn alerts_serialize_in_the_contract_form() {
        let alert = Alert {
            kind: AlertKind::LabelDelay,
            state: AlertState::Firing,
            severity: Severity::Critical,
            detector: "feedback_rate".into(),
            metric: "decisive_feedback_rate".into(),
            value: 0.01,
            threshold: 0.2,
            window: AlertWindow { from: 1, to: 2 },
            ts: 2,
            message: "m".into(),
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["kind"], "label_delay");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["window"]["from"], 1);
    }
}
