//! Drift detection: the maths behind the `Detect` operator (`ctrflow_dataflows`), one
//! module per detector, and the `[drift]` configuration.
//!
//! | kind | detector | watches | module |
//! |---|---|---|---|
//! | `concept_drift` | ADWIN, Page-Hinkley | per-example relative logloss, its ranking part (`discrimination`), or raw logloss | [`concept`], [`adwin`], [`page_hinkley`] |
//! | `concept_drift` | ADWIN, Page-Hinkley per segment | `discrimination` within each value of a `ctx` field (the category) | [`segment`] |
//! | `calibration` | ratio band | Σ served / Σ clicks over a sliding window of examples | [`calibration`] |
//! | `label_delay` | feedback rate | decisive feedback per impression, per event-time span | [`outage`] |
//! | `data_drift` | PSI or JS distance | each `ctx` field, and the served score, recent vs reference | [`data`], [`distribution`] |
//!
//! # Thresholds from a false-alarm budget
//!
//! `drift.false_alarm_every = N` says: on a stationary stream, each detector raises at
//! most one false alarm per `N` impressions (on average). Each detector turns that into
//! its own threshold — ADWIN's `δ`, Page-Hinkley's `λ`, the significance level of the
//! calibration, feedback and distribution tests — as derived in its module. The other
//! numbers (`min_shift`, the calibration band, `min_psi`, `max_fraction`) are effect
//! sizes: how large a change must be to matter to the people paged, not how sure we are.
//!
//! # Episodes
//!
//! Every detector reports through [`episode::Episode`]: one alert when a condition starts,
//! one `resolved` when it has stayed clear for `resolve_after_ms`, rate-limited to one
//! firing alert per metric per `min_alert_interval_ms`. All state is `serde`.

pub mod adwin;
pub mod calibration;
pub mod concept;
pub mod data;
pub mod distribution;
pub mod episode;
pub mod outage;
pub mod page_hinkley;
pub mod response;
pub mod segment;
pub mod sinks;
pub mod stats;

use ctrflow_connectors::webhook::WebhookConfig;
use ctrflow_dataflows::operators::Shards;
use ctrflow_dataflows::{Alert, Detector, EventTime, LabelSource, Observation};
use serde::{Deserialize, Serialize};

use self::calibration::CalibrationDrift;
use self::concept::{ConceptDrift, ConceptSettings, LossMetric, Served};
use self::data::{CtxSketch, DistributionDrift, FieldKey, Reference, Statistic, WindowSettings};
use self::episode::EpisodeTiming;
use self::outage::{FeedbackOutage, OutageSettings};
use self::response::ResponseConfig;
use self::segment::SegmentDrift;

/// Drift detection and alerting (`[drift]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Run the detectors at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The false-alarm budget: at most one false alarm per this many impressions per
    /// detector on a stationary stream (on average); thresholds are derived from it.
    #[serde(default = "default_false_alarm_every")]
    pub false_alarm_every: u64,
    /// An episode ends (`resolved`) after its condition stayed clear this long.
    #[serde(default = "default_resolve_after_ms")]
    pub resolve_after_ms: u64,
    /// At most one firing alert per metric in this span; episodes starting sooner are
    /// counted, not announced.
    #[serde(default = "default_min_alert_interval_ms")]
    pub min_alert_interval_ms: u64,
    /// Concept drift on the loss.
    #[serde(default)]
    pub concept: ConceptConfig,
    /// Concept drift on the loss per segment.
    #[serde(default)]
    pub segments: SegmentsConfig,
    /// Calibration drift.
    #[serde(default)]
    pub calibration: CalibrationConfig,
    /// Feedback outage.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// Data drift of the `ctx` fields.
    #[serde(default)]
    pub data: DataConfig,
    /// Data drift of the served score.
    #[serde(default)]
    pub score: ScoreConfig,
    /// The response policy: a challenger model on confirmed concept drift (off by default).
    #[serde(default)]
    pub response: ResponseConfig,
    /// Webhooks every alert is POSTed to (`[[drift.webhooks]]`); alerts are logged too.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

const fn yes() -> bool {
    true
}
const fn default_false_alarm_every() -> u64 {
    100_000_000
}
const fn default_resolve_after_ms() -> u64 {
    10 * 60 * 1000
}
const fn default_min_alert_interval_ms() -> u64 {
    60 * 60 * 1000
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            false_alarm_every: default_false_alarm_every(),
            resolve_after_ms: default_resolve_after_ms(),
            min_alert_interval_ms: default_min_alert_interval_ms(),
            concept: ConceptConfig::default(),
            segments: SegmentsConfig::default(),
            calibration: CalibrationConfig::default(),
            feedback: FeedbackConfig::default(),
            data: DataConfig::default(),
            score: ScoreConfig::default(),
            response: ResponseConfig::default(),
            webhooks: Vec::new(),
        }
    }
}

/// Concept drift (`[drift.concept]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Losses watched: `relative_logloss` (logloss minus the served score's entropy:
    /// immune to the daily CTR cycle), `discrimination` (its ranking part alone: less
    /// noisy) and/or `logloss` (raw: moves with the cycle).
    #[serde(default = "default_concept_metrics")]
    pub metrics: Vec<LossMetric>,
    /// Examples ignored while the model is young (counted from one attribution window
    /// after the first impression, when expired negatives start to arrive).
    #[serde(default = "default_concept_warmup")]
    pub warmup_examples: u64,
    /// Smallest rise of the mean loss worth an alert, nats.
    #[serde(default = "default_min_shift")]
    pub min_shift: f64,
    /// ADWIN checks for a cut every this many examples.
    #[serde(default = "default_adwin_clock")]
    pub adwin_clock: u32,
    /// ADWIN's buckets per size (memory `adwin_max_buckets · log2 W`).
    #[serde(default = "default_adwin_max_buckets")]
    pub adwin_max_buckets: usize,
    /// The metrics (of `metrics`) Page-Hinkley also watches, beside ADWIN. Not
    /// `discrimination` by default: its level wanders with the traffic mix by about its
    /// own `min_shift`, which breaks the stationarity Page-Hinkley's threshold assumes
    /// (four false alarms on a stationary 1M-impression stream), while ADWIN's cut test
    /// holds.
    #[serde(default = "default_page_hinkley")]
    pub page_hinkley: Vec<LossMetric>,
    /// Half-life, in examples, of the loss average that decides recovery; also
    /// Page-Hinkley's variance warm-up.
    #[serde(default = "default_recovery_examples")]
    pub recovery_examples: u64,
}

fn default_page_hinkley() -> Vec<LossMetric> {
    vec![LossMetric::RelativeLogloss]
}
fn default_concept_metrics() -> Vec<LossMetric> {
    vec![LossMetric::RelativeLogloss, LossMetric::Discrimination]
}
const fn default_concept_warmup() -> u64 {
    100_000
}
const fn default_min_shift() -> f64 {
    0.01
}
const fn default_adwin_clock() -> u32 {
    32
}
const fn default_adwin_max_buckets() -> usize {
    5
}
const fn default_recovery_examples() -> u64 {
    5000
}

impl Default for ConceptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics: default_concept_metrics(),
            warmup_examples: default_concept_warmup(),
            min_shift: default_min_shift(),
            adwin_clock: default_adwin_clock(),
            adwin_max_buckets: default_adwin_max_buckets(),
            page_hinkley: default_page_hinkley(),
            recovery_examples: default_recovery_examples(),
        }
    }
}

/// Concept drift per segment (`[drift.segments]`): `discrimination` within each value of
/// one `ctx` field, with `[drift.concept]`'s `min_shift`, `warmup_examples` (overall),
/// `recovery_examples` (also each segment's warm-up) and ADWIN settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The categorical `ctx` field whose values are the segments.
    #[serde(default = "default_segment_field")]
    pub field: String,
    /// Values watched: the first this many seen; later ones are counted, not watched.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
}

fn default_segment_field() -> String {
    "category".to_owned()
}
const fn default_max_segments() -> usize {
    64
}

impl SegmentsConfig {
    /// Whether labels carry their impression's segment: the label join keeps every
    /// impression's `category` for its example, so for that field (the default) no
    /// per-impression [`Observation::Segment`] is needed (see [`segment`]).
    pub fn carried_by_labels(&self) -> bool {
        self.field == "category"
    }
}

impl Default for SegmentsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            field: default_segment_field(),
            max_segments: default_max_segments(),
        }
    }
}

/// Calibration drift (`[drift.calibration]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Examples ignored while the model is young (counted as for `drift.concept`).
    #[serde(default = "default_calibration_warmup")]
    pub warmup_examples: u64,
    /// The window slides by this many examples (one evaluation each).
    #[serde(default = "default_slice_examples")]
    pub slice_examples: u64,
    /// Slices in the window.
    #[serde(default = "default_calibration_slices")]
    pub slices: usize,
    /// Alert when mean predicted / observed CTR falls below this...
    #[serde(default = "default_lower")]
    pub lower: f64,
    /// ...or rises above this.
    #[serde(default = "default_upper")]
    pub upper: f64,
    /// Clear when the ratio is inside the band shrunk by this power (0.5: 0.89..1.12).
    #[serde(default = "default_clear_fraction")]
    pub clear_fraction: f64,
}

const fn default_calibration_warmup() -> u64 {
    50_000
}
const fn default_slice_examples() -> u64 {
    2000
}
const fn default_calibration_slices() -> usize {
    10
}
const fn default_lower() -> f64 {
    0.8
}
const fn default_upper() -> f64 {
    1.25
}
const fn default_clear_fraction() -> f64 {
    0.5
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            warmup_examples: default_calibration_warmup(),
            slice_examples: default_slice_examples(),
            slices: default_calibration_slices(),
            lower: default_lower(),
            upper: default_upper(),
            clear_fraction: default_clear_fraction(),
        }
    }
}

/// Feedback outage (`[drift.feedback]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Counting bucket (one evaluation each), event-time milliseconds.
    #[serde(default = "default_bucket_ms")]
    pub bucket_ms: u64,
    /// The span whose decisive-feedback rate is judged.
    #[serde(default = "default_span_ms")]
    pub span_ms: u64,
    /// The span before it that sets the usual rate.
    #[serde(default = "default_baseline_ms")]
    pub baseline_ms: u64,
    /// Fire below this fraction of the usual rate.
    #[serde(default = "default_max_fraction")]
    pub max_fraction: f64,
    /// Clear above this fraction of the usual rate.
    #[serde(default = "default_outage_clear_fraction")]
    pub clear_fraction: f64,
    /// No verdict with fewer impressions than this in the span or the baseline.
    #[serde(default = "default_min_impressions")]
    pub min_impressions: u64,
}

const fn default_bucket_ms() -> u64 {
    10_000
}
const fn default_span_ms() -> u64 {
    5 * 60 * 1000
}
const fn default_baseline_ms() -> u64 {
    60 * 60 * 1000
}
const fn default_max_fraction() -> f64 {
    0.2
}
const fn default_outage_clear_fraction() -> f64 {
    0.5
}
const fn default_min_impressions() -> u64 {
    500
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bucket_ms: default_bucket_ms(),
            span_ms: default_span_ms(),
            baseline_ms: default_baseline_ms(),
            max_fraction: default_max_fraction(),
            clear_fraction: default_outage_clear_fraction(),
            min_impressions: default_min_impressions(),
        }
    }
}

/// Data drift of the `ctx` fields (`[drift.data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fields watched; empty: every field (but `ignore_fields` and names starting `_`).
    #[serde(default)]
    pub fields: Vec<String>,
    /// Fields never watched: those that follow the clock by design.
    #[serde(default = "default_ignore_fields")]
    pub ignore_fields: Vec<String>,
    /// Workers summarize this many impressions per batch...
    #[serde(default = "default_batch_impressions")]
    pub batch_impressions: u64,
    /// ...or this much event time, whichever comes first.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Distinct categorical values per worker batch; more are counted as "other".
    #[serde(default = "default_max_values")]
    pub max_values: usize,
    /// `warmup` (the first `reference_slices` slices, frozen) or `lagging`.
    #[serde(default = "default_data_reference")]
    pub reference: Reference,
    /// Impressions per slice (one evaluation per field each).
    #[serde(default = "default_slice_impressions")]
    pub slice_impressions: u64,
    /// Slices in the recent window.
    #[serde(default = "default_recent_slices")]
    pub recent_slices: usize,
    /// Slices in the reference window.
    #[serde(default = "default_data_reference_slices")]
    pub reference_slices: usize,
    /// `lagging`: slices between the reference and the recent window.
    #[serde(default)]
    pub lag_slices: usize,
    /// `psi` or `js`: the statistic compared with the threshold (both are reported).
    #[serde(default = "default_statistic")]
    pub statistic: Statistic,
    /// Smallest PSI worth an alert (0.1: "moderate shift" in credit scoring practice).
    #[serde(default = "default_min_psi")]
    pub min_psi: f64,
    /// Smallest JS distance worth an alert.
    #[serde(default = "default_min_js")]
    pub min_js: f64,
    /// Categorical bins: the reference's most frequent values, plus "other".
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Numeric bins: quantile buckets of the reference.
    #[serde(default = "default_quantiles")]
    pub quantiles: usize,
    /// An episode clears below this fraction of the threshold.
    #[serde(default = "default_clear_fraction")]
    pub clear_fraction: f64,
}

fn default_ignore_fields() -> Vec<String> {
    vec!["hour".to_owned()]
}
const fn default_batch_impressions() -> u64 {
    1000
}
const fn default_batch_ms() -> u64 {
    10_000
}
const fn default_max_values() -> usize {
    1024
}
const fn default_data_reference() -> Reference {
    Reference::Warmup
}
const fn default_slice_impressions() -> u64 {
    5000
}
const fn default_recent_slices() -> usize {
    4
}
const fn default_data_reference_slices() -> usize {
    20
}
const fn default_statistic() -> Statistic {
    Statistic::Psi
}
const fn default_min_psi() -> f64 {
    0.1
}
const fn default_min_js() -> f64 {
    0.1
}
const fn default_top_k() -> usize {
    20
}
const fn default_quantiles() -> usize {
    10
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fields: Vec::new(),
            ignore_fields: default_ignore_fields(),
            batch_impressions: default_batch_impressions(),
            batch_ms: default_batch_ms(),
            max_values: default_max_values(),
            reference: default_data_reference(),
            slice_impressions: default_slice_impressions(),
            recent_slices: default_recent_slices(),
            reference_slices: default_data_reference_slices(),
            lag_slices: 0,
            statistic: default_statistic(),
            min_psi: default_min_psi(),
            min_js: default_min_js(),
            top_k: default_top_k(),
            quantiles: default_quantiles(),
            clear_fraction: default_clear_fraction(),
        }
    }
}

/// Data drift of the served score (`[drift.score]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Run it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Impressions ignored while the model is young (its scores move as it learns).
    #[serde(default = "default_score_warmup")]
    pub warmup_impressions: u64,
    /// `lagging` (default: the score follows the daily cycle) or `warmup`.
    #[serde(default = "default_score_reference")]
    pub reference: Reference,
    /// Impressions per slice (one evaluation each).
    #[serde(default = "default_slice_impressions")]
    pub slice_impressions: u64,
    /// Slices in the recent window.
    #[serde(default = "default_recent_slices")]
    pub recent_slices: usize,
    /// Slices in the reference window.
    #[serde(default = "default_score_reference_slices")]
    pub reference_slices: usize,
    /// `lagging`: slices between the reference and the recent window.
    #[serde(default)]
    pub lag_slices: usize,
    /// `psi` or `js`.
    #[serde(default = "default_statistic")]
    pub statistic: Statistic,
    /// Smallest PSI worth an alert.
    #[serde(default = "default_min_psi")]
    pub min_psi: f64,
    /// Smallest JS distance worth an alert.
    #[serde(default = "default_min_js")]
    pub min_js: f64,
    /// Bins: quantile buckets of the reference scores.
    #[serde(default = "default_quantiles")]
    pub quantiles: usize,
    /// An episode clears below this fraction of the threshold.
    #[serde(default = "default_clear_fraction")]
    pub clear_fraction: f64,
}

const fn default_score_warmup() -> u64 {
    100_000
}
const fn default_score_reference() -> Reference {
    Reference::Lagging
}
const fn default_score_reference_slices() -> usize {
    12
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            warmup_impressions: default_score_warmup(),
            reference: default_score_reference(),
            slice_impressions: default_slice_impressions(),
            recent_slices: default_recent_slices(),
            reference_slices: default_score_reference_slices(),
            lag_slices: 0,
            statistic: default_statistic(),
            min_psi: default_min_psi(),
            min_js: default_min_js(),
            quantiles: default_quantiles(),
            clear_fraction: default_clear_fraction(),
        }
    }
}

fn positive(problems: &mut Vec<String>, key: &str, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        problems.push(format!("{key} must be > 0, got {value}"));
    }
}

fn at_least_one(problems: &mut Vec<String>, key: &str, value: u64) {
    if value == 0 {
        problems.push(format!("{key} must be at least 1, got 0"));
    }
}

fn fraction(problems: &mut Vec<String>, key: &str, value: f64) {
    if !(value > 0.0 && value < 1.0) {
        problems.push(format!("{key} must be in (0, 1), got {value}"));
    }
}

impl DriftConfig {
    /// These settings with every detector off (what hosts the metrics over time when drift
    /// detection is disabled).
    pub fn all_off(&self) -> Self {
        let mut c = self.clone();
        c.concept.enabled = false;
        c.segments.enabled = false;
        c.calibration.enabled = false;
        c.feedback.enabled = false;
        c.data.enabled = false;
        c.score.enabled = false;
        c.response.enabled = false;
        c
    }

    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.false_alarm_every < 1000 {
            p.push(format!(
                "drift.false_alarm_every must be at least 1000 impressions, got {}",
                self.false_alarm_every
            ));
        }
        let c = &self.concept;
        if c.enabled && c.metrics.is_empty() {
            p.push("drift.concept.metrics is empty: list at least one of \"relative_logloss\", \"discrimination\", \"logloss\" (or set drift.concept.enabled = false)".to_owned());
        }
        for m in &c.page_hinkley {
            if !c.metrics.contains(m) {
                p.push(format!(
                    "drift.concept.page_hinkley lists {:?}, which drift.concept.metrics does not: add it there or remove it here",
                    m.name()
                ));
            }
        }
        positive(&mut p, "drift.concept.min_shift", c.min_shift);
        at_least_one(&mut p, "drift.concept.adwin_clock", c.adwin_clock.into());
        if c.adwin_max_buckets < 2 {
            p.push(format!(
                "drift.concept.adwin_max_buckets must be at least 2, got {}",
                c.adwin_max_buckets
            ));
        }
        at_least_one(
            &mut p,
            "drift.concept.recovery_examples",
            c.recovery_examples,
        );
        let g = &self.segments;
        if g.enabled && g.field.is_empty() {
            p.push("drift.segments.field is empty: name a categorical ctx field (such as \"category\") or set drift.segments.enabled = false".to_owned());
        }
        if g.enabled && !(1..=usize::from(u16::MAX)).contains(&g.max_segments) {
            p.push(format!(
                "drift.segments.max_segments must be in 1..=65535, got {}",
                g.max_segments
            ));
        }
        let k = &self.calibration;
        at_least_one(&mut p, "drift.calibration.slice_examples", k.slice_examples);
        at_least_one(&mut p, "drift.calibration.slices", k.slices as u64);
        if !(k.lower > 0.0 && k.lower < 1.0) {
            p.push(format!(
                "drift.calibration.lower must be in (0, 1), got {}",
                k.lower
            ));
        }
        if !(k.upper > 1.0 && k.upper.is_finite()) {
            p.push(format!(
                "drift.calibration.upper must be > 1, got {}",
                k.upper
            ));
        }
        fraction(&mut p, "drift.calibration.clear_fraction", k.clear_fraction);
        let f = &self.feedback;
        at_least_one(&mut p, "drift.feedback.bucket_ms", f.bucket_ms);
        if f.span_ms < f.bucket_ms || f.baseline_ms < f.bucket_ms {
            p.push(format!(
                "drift.feedback.span_ms ({}) and drift.feedback.baseline_ms ({}) must be at least drift.feedback.bucket_ms ({})",
                f.span_ms, f.baseline_ms, f.bucket_ms
            ));
        }
        fraction(&mut p, "drift.feedback.max_fraction", f.max_fraction);
        if !(f.clear_fraction > f.max_fraction && f.clear_fraction < 1.0) {
            p.push(format!(
                "drift.feedback.clear_fraction ({}) must be in (drift.feedback.max_fraction ({}), 1)",
                f.clear_fraction, f.max_fraction
            ));
        }
        let d = &self.data;
        at_least_one(&mut p, "drift.data.batch_impressions", d.batch_impressions);
        at_least_one(&mut p, "drift.data.max_values", d.max_values as u64);
        self.windows_valid(
            &mut p,
            "drift.data",
            &d.window(self.alpha(d.slice_impressions)),
        );
        if d.top_k == 0 {
            p.push("drift.data.top_k must be at least 1, got 0".to_owned());
        }
        let s = &self.score;
        self.windows_valid(
            &mut p,
            "drift.score",
            &s.window(self.alpha(s.slice_impressions)),
        );
        if self.response.enabled {
            p.extend(self.response.validate());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate(&format!("drift.webhooks[{i}]"), &mut p);
        }
        p
    }

    fn windows_valid(&self, p: &mut Vec<String>, section: &str, w: &WindowSettings) {
        at_least_one(
            p,
            &format!("{section}.slice_impressions"),
            w.slice_impressions,
        );
        at_least_one(
            p,
            &format!("{section}.recent_slices"),
            w.recent_slices as u64,
        );
        at_least_one(
            p,
            &format!("{section}.reference_slices"),
            w.reference_slices as u64,
        );
        positive(p, &format!("{section}.min_psi"), w.min_psi);
        if !(w.min_js > 0.0 && w.min_js < 1.0) {
            p.push(format!(
                "{section}.min_js must be in (0, 1), got {}",
                w.min_js
            ));
        }
        if w.quantiles < 2 {
            p.push(format!(
                "{section}.quantiles must be at least 2, got {}",
                w.quantiles
            ));
        }
        fraction(p, &format!("{section}.clear_fraction"), w.clear_fraction);
    }

    /// The false-alarm probability per evaluation of a test run every `every` impressions.
    fn alpha(&self, every: u64) -> f64 {
        (every.max(1) as f64 / self.false_alarm_every.max(1) as f64).min(0.5)
    }

    fn timing(&self) -> EpisodeTiming {
        EpisodeTiming {
            resolve_after_ms: self.resolve_after_ms,
            min_alert_interval_ms: self.min_alert_interval_ms,
        }
    }
}

impl DataConfig {
    fn window(&self, alpha: f64) -> WindowSettings {
        WindowSettings {
            slice_impressions: self.slice_impressions,
            recent_slices: self.recent_slices,
            reference_slices: self.reference_slices,
            lag_slices: self.lag_slices,
            reference: self.reference,
            statistic: self.statistic,
            min_psi: self.min_psi,
            min_js: self.min_js,
            top_k: self.top_k,
            quantiles: self.quantiles,
            clear_fraction: self.clear_fraction,
            alpha,
        }
    }

    /// The per-worker counter of `ctx` values these settings ask for.
    pub fn sketch(&self) -> CtxSketch {
        CtxSketch::new(
            &self.fields,
            &self.ignore_fields,
            self.batch_impressions,
            self.batch_ms,
            self.max_values,
        )
    }
}

impl ScoreConfig {
    fn window(&self, alpha: f64) -> WindowSettings {
        WindowSettings {
            slice_impressions: self.slice_impressions,
            recent_slices: self.recent_slices,
            reference_slices: self.reference_slices,
            lag_slices: self.lag_slices,
            reference: self.reference,
            statistic: self.statistic,
            min_psi: self.min_psi,
            min_js: self.min_js,
            top_k: 1,
            quantiles: self.quantiles,
            clear_fraction: self.clear_fraction,
            alpha,
        }
    }
}

/// The fine bucket of a served score: 1/20 of a logit unit, which resolves a CTR model's
/// scores (mostly between 0.1 % and 50 %) into a few hundred buckets.
pub fn score_bucket(p: f32) -> i32 {
    let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
    ((p / (1.0 - p)).ln() * 20.0).floor() as i32
}

/// See [`Drift::newest_impression`].
const FLUSH_SLACK_MS: EventTime = 60_000;

/// The shard ([`Shards`]) of every detector but the per-segment one.
const MAIN_SHARD: usize = 0;
/// The shard of the per-segment detector ([`segment`]): the costliest per observation (a
/// segment and a label to join per impression, a detector per segment), so with two
/// workers or more it runs beside the others, not after them.
const SEGMENT_SHARD: usize = 1;

impl DriftConfig {
    /// How [`Drift`]'s detectors split over workers (see the `Detect` operator): the
    /// per-segment detector apart when it is on and its segments come as observations of
    /// their own. Both shards count impressions and settled labels ([`Drift`]'s shared
    /// state), so both get every impression and label; segments go to the segment shard
    /// alone, `ctx` summaries to the main one.
    ///
    /// When labels carry their segment (the default field, `category`), one shard: there
    /// the per-segment detector costs ~60 ns per label (`cargo bench --bench drift`), less
    /// than handing every impression and label to a second worker as well (measured on a
    /// 2-worker replay of the generator's 2M impressions: 7% less CPU with one shard; the
    /// wall time gains only once the other workers take more of the decoding, which the
    /// replay's shared block queue lets them do).
    pub fn shards(&self) -> Shards {
        if self.enabled && self.segments.enabled && !self.segments.carried_by_labels() {
            let (main, segment) = (1 << MAIN_SHARD, 1 << SEGMENT_SHARD);
            Shards::new(main, segment, main | segment, main | segment)
        } else {
            Shards::ONE
        }
    }
}

/// Every detector `[drift]` enables, behind the dataflow's [`Detector`] interface; `serde`
/// so that it can be checkpointed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drift {
    timing: EpisodeTiming,
    concept: Vec<ConceptDrift>,
    segments: Option<SegmentDrift>,
    concept_warmup: u64,
    calibration: Option<CalibrationDrift>,
    calibration_warmup: u64,
    outage: Option<FeedbackOutage>,
    data: Option<DistributionDrift>,
    score: Option<DistributionDrift>,
    score_warmup: u64,
    examples: u64,
    impressions: u64,
    /// The attribution window (`label.window_ms`).
    label_window_ms: u64,
    /// Label detectors wait until the first expired negatives arrive, one attribution
    /// window after the first impression: before that, only decisive labels are final, and
    /// every loss and click rate is biased.
    labels_from: Option<EventTime>,
    /// The newest impression seen: labels final more than [`FLUSH_SLACK_MS`] after it
    /// are the end-of-input flush of every open window, which says nothing about the
    /// model (in a running stream a label is final before the watermark, which trails the
    /// newest event).
    newest_impression: EventTime,
    /// Alerts raised while observing, handed out at the next `advance`.
    pending: Vec<Alert>,
    score_key: FieldKey,
}

impl Drift {
    /// The detectors `config` enables (validated), for labels with an attribution window
    /// of `label_window_ms`.
    pub fn new(config: &DriftConfig, label_window_ms: u64) -> Self {
        let c = &config.concept;
        let concept_settings = ConceptSettings {
            warmup_examples: c.warmup_examples,
            min_shift: c.min_shift,
            adwin_clock: c.adwin_clock,
            adwin_max_buckets: c.adwin_max_buckets,
            page_hinkley: false,
            recovery_examples: c.recovery_examples,
            false_alarm_every: config.false_alarm_every,
        };
        let concept = if c.enabled {
            c.metrics
                .iter()
                .map(|m| {
                    let settings = ConceptSettings {
                        page_hinkley: c.page_hinkley.contains(m),
                        ..concept_settings
                    };
                    ConceptDrift::new(*m, settings)
                })
                .collect()
        } else {
            Vec::new()
        };
        let g = &config.segments;
        let segments = g.enabled.then(|| {
            let settings = ConceptSettings {
                warmup_examples: c.recovery_examples,
                page_hinkley: true,
                ..concept_settings
            };
            SegmentDrift::new(&g.field, g.max_segments, settings, label_window_ms)
        });
        let k = &config.calibration;
        let f = &config.feedback;
        let d = &config.data;
        let s = &config.score;
        Self {
            timing: config.timing(),
            concept,
            segments,
            concept_warmup: c.warmup_examples,
            calibration: k.enabled.then(|| {
                CalibrationDrift::new(
                    k.slice_examples,
                    k.slices,
                    k.lower,
                    k.upper,
                    k.clear_fraction,
                    config.alpha(k.slice_examples),
                )
            }),
            calibration_warmup: k.warmup_examples,
            outage: f.enabled.then(|| {
                FeedbackOutage::new(OutageSettings {
                    bucket_ms: f.bucket_ms,
                    span_ms: f.span_ms,
                    baseline_ms: f.baseline_ms,
                    max_fraction: f.max_fraction,
                    clear_fraction: f.clear_fraction,
                    min_impressions: f.min_impressions,
                    false_alarm_every: config.false_alarm_every,
                })
            }),
            data: d.enabled.then(|| {
                DistributionDrift::new("ctx.", d.window(config.alpha(d.slice_impressions)))
            }),
            score: s
                .enabled
                .then(|| DistributionDrift::new("", s.window(config.alpha(s.slice_impressions)))),
            score_warmup: s.warmup_impressions,
            examples: 0,
            impressions: 0,
            label_window_ms,
            labels_from: None,
            newest_impression: EventTime::MIN,
            pending: Vec::new(),
            score_key: ("score".into(), true),
        }
    }
}

impl Drift {
    /// These detectors (made from `config`, for labels with an attribution window of
    /// `label_window_ms`) less those that worker `index` of `peers` does not run under
    /// [`DriftConfig::shards`]: what that worker's `Detect` operator must hold. Also
    /// applied to restored detectors, so that a checkpoint taken with other shards runs
    /// no detector twice; a per-segment detector that ran on another worker then starts
    /// afresh on this one (and warms up again).
    pub fn for_worker(
        mut self,
        index: usize,
        peers: usize,
        config: &DriftConfig,
        label_window_ms: u64,
    ) -> Self {
        let segment_shard = if config.shards() == Shards::ONE {
            MAIN_SHARD
        } else {
            SEGMENT_SHARD
        };
        if !Shards::runs(segment_shard, index, peers) {
            self.segments = None;
        } else if self.segments.is_none() && config.enabled && config.segments.enabled {
            self.segments = Drift::new(config, label_window_ms).segments;
        }
        if !Shards::runs(MAIN_SHARD, index, peers) {
            self.concept.clear();
            self.calibration = None;
            self.outage = None;
            self.data = None;
            self.score = None;
        }
        self
    }
}

/// One detector's statistic now, beside the threshold it alerts at (`None`: not set yet,
/// or a statistic reported but not alerted on): what `--metrics-out` records and
/// `/metrics` exports as `ctrflow_drift_statistic` / `ctrflow_drift_threshold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorStat {
    /// As alerts name it: `adwin`, `page_hinkley`, `ratio_band`, `feedback_rate`, `psi`, `js`.
    pub detector: compact_str::CompactString,
    /// As alerts name it: `relative_logloss`, `calibration`, `ctx.device`, `score`, ...
    pub metric: compact_str::CompactString,
    /// The statistic.
    pub value: f64,
    /// The threshold it alerts above (below, for `calibration` under 1 and the feedback
    /// rate).
    pub threshold: Option<f64>,
}

impl DetectorStat {
    fn new(detector: &str, metric: &str, value: f64, threshold: Option<f64>) -> Self {
        Self {
            detector: detector.into(),
            metric: metric.into(),
            value,
            threshold,
        }
    }
}

impl Drift {
    /// Appends every enabled detector's current statistic. Computed from the detectors'
    /// state on demand (the data-drift part re-bins its windows): for interval ends and
    /// metric publishing, not per observation.
    pub fn stats(&self, out: &mut Vec<DetectorStat>) {
        for c in &self.concept {
            c.stats(out);
        }
        if let Some(c) = &self.calibration {
            c.stats(out);
        }
        if let Some(o) = &self.outage {
            o.stats(out);
        }
        if let Some(d) = &self.data {
            d.stats(out);
        }
        if let Some(s) = &self.score {
            s.stats(out);
        }
    }
}

impl Detector for Drift {
    fn observe(&mut self, observation: &Observation) {
        self.observe_one(observation);
    }

    fn observe_all<'o>(&mut self, observations: impl Iterator<Item = &'o Observation>) {
        for o in observations {
            self.observe_one(o);
        }
    }

    fn advance(&mut self, now: EventTime, alerts: &mut Vec<Alert>) {
        if let Some(o) = &mut self.outage {
            o.advance(now, &self.timing, &mut self.pending);
        }
        if let Some(g) = &mut self.segments {
            g.advance(now);
        }
        alerts.append(&mut self.pending);
    }
}

impl Drift {
    /// [`Detector::observe`], inlined into the loop over a run of observations.
    #[inline(always)]
    fn observe_one(&mut self, observation: &Observation) {
        let timing = self.timing;
        match observation {
            Observation::Impression { ts, score } => {
                self.impressions += 1;
                self.newest_impression = self.newest_impression.max(*ts);
                self.labels_from
                    .get_or_insert(ts.saturating_add(self.label_window_ms as EventTime));
                if let Some(o) = &mut self.outage {
                    o.impression(*ts);
                }
                if let Some(d) = &mut self.score
                    && self.impressions > self.score_warmup
                {
                    d.add_num(&self.score_key, score_bucket(*score));
                    d.add_impressions(1, *ts, *ts);
                    d.maybe_evaluate(&timing, &mut self.pending);
                }
            }
            Observation::Segment { ts, id, value } => {
                if let Some(g) = &mut self.segments {
                    g.impression(*ts, *id, value);
                }
            }
            Observation::Label {
                id,
                label_ts,
                served,
                label,
                segment,
                ..
            } => {
                if let Some(o) = &mut self.outage
                    && *label != LabelSource::Expired
                {
                    o.decisive(*label_ts);
                }
                let settled = self.labels_from.is_some_and(|t| *label_ts >= t)
                    && *label_ts <= self.newest_impression.saturating_add(FLUSH_SLACK_MS);
                if !settled && self.segments.is_none() {
                    return;
                }
                let positive = label.is_positive();
                let served = f64::from(*served);
                let with_logit = Served::new(served);
                if let Some(g) = &mut self.segments {
                    let settled = settled && self.examples >= self.concept_warmup;
                    g.label(
                        *id,
                        segment,
                        with_logit,
                        positive,
                        *label_ts,
                        settled,
                        &timing,
                        &mut self.pending,
                    );
                }
                if !settled {
                    return;
                }
                self.examples += 1;
                for c in &mut self.concept {
                    c.observe_served(with_logit, positive, *label_ts, &timing, &mut self.pending);
                }
                if let Some(c) = &mut self.calibration
                    && self.examples > self.calibration_warmup
                {
                    c.observe(served, positive, *label_ts, &timing, &mut self.pending);
                }
            }
            Observation::Data(summary) => {
                if let Some(d) = &mut self.data {
                    d.add_summary(summary);
                    d.maybe_evaluate(&timing, &mut self.pending);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrflow_dataflows::AlertState;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(DriftConfig::default().validate().is_empty());
        let mut c = DriftConfig::default();
        c.calibration.lower = 1.5;
        c.feedback.clear_fraction = 0.1;
        c.concept.metrics.clear();
        c.data.quantiles = 1;
        let problems = c.validate();
        for key in [
            "drift.calibration.lower",
            "drift.feedback.clear_fraction",
            "drift.concept.metrics",
            "drift.concept.page_hinkley",
            "drift.data.quantiles",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key}: {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    /// Impressions at 25/s from `from` to `to` (ms), each with a decisive fast skip a second
    /// later when `feedback`; the watermark advances every 10 s.
    fn stream(d: &mut Drift, from: i64, to: i64, feedback: bool, alerts: &mut Vec<Alert>) {
        for ts in (from..to).step_by(40) {
            d.observe(&Observation::Impression { ts, score: 0.04 });
            if feedback && ts % 120 == 0 {
                d.observe(&Observation::Label {
                    id: ts as u64,
                    segment: Default::default(),
                    label_ts: ts,
                    at_input_end: false,
                    served: 0.04,
                    label: LabelSource::FastSkip,
                });
            }
            if ts % 10_000 == 0 {
                d.advance(ts, alerts);
            }
        }
    }

    #[test]
    fn gh_5_restored_detectors_continue_their_episode() {
        use ctrflow_dataflows::AlertKind;
        use ctrflow_dataflows::operators::DetectState;
        use ctrflow_state::codec::{decode_value, encode_value};
        let hour = 3_600_000;
        let mut config = DriftConfig::default();
        config.data.enabled = false;
        config.score.enabled = false;
        let mut state = DetectState::new(Drift::new(&config, 1_800_000));
        let mut alerts = Vec::new();
        // Two hours of feedback, then half an hour of none: the episode opens.
        stream(&mut state.detector, 0, 2 * hour, true, &mut alerts);
        stream(
            &mut state.detector,
            2 * hour,
            5 * hour / 2,
            false,
            &mut alerts,
        );
        let outage = |alerts: &[Alert]| -> Vec<AlertState> {
            alerts
                .iter()
                .filter(|a| a.kind == AlertKind::LabelDelay)
                .map(|a| a.state)
                .collect()
        };
        assert_eq!(outage(&alerts), [AlertState::Firing], "{alerts:#?}");
        // Checkpointed in the state's encoding, restored, fed the rest: feedback is back.
        let mut bytes = Vec::new();
        encode_value(&state, &mut bytes);
        let mut restored: DetectState<Drift> = decode_value("operators", &bytes).unwrap();
        let mut after = Vec::new();
        stream(
            &mut restored.detector,
            5 * hour / 2,
            3 * hour,
            true,
            &mut after,
        );
        assert_eq!(outage(&after), [AlertState::Resolved], "{after:#?}");
        // A detector started afresh knows no episode: nothing to resolve.
        let mut fresh = Drift::new(&config, 1_800_000);
        let mut none = Vec::new();
        stream(&mut fresh, 5 * hour / 2, 3 * hour, true, &mut none);
        assert!(outage(&none).is_empty(), "{none:#?}");
    }

    /// A stream of 10 segments at one impression per 10 ms, each labelled 5 ms later,
    /// whose segments 0..3 turn their ranking around at impression `flip_at`, in the
    /// order the `Detect` operator hands observations over.
    fn segmented_stream(n: u64, flip_at: u64) -> Vec<Observation> {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(5);
        let mut out = Vec::new();
        for i in 0..n {
            let ts = i as EventTime * 10;
            let segment = rng.random_range(0..10u32);
            let p: f64 = 0.04 * (rng.random_range(-1.5..1.5f64)).exp();
            let truth = if i >= flip_at && segment < 3 {
                0.04 * 0.04 / p
            } else {
                p
            };
            out.push(Observation::Segment {
                ts,
                id: i,
                value: format!("c{segment}").into(),
            });
            out.push(Observation::Impression {
                ts,
                score: p as f32,
            });
            let label = if rng.random_bool(truth.min(1.0)) {
                LabelSource::Click
            } else {
                LabelSource::Expired
            };
            out.push(Observation::Label {
                id: i,
                segment: Default::default(),
                label_ts: ts + 5,
                at_input_end: false,
                served: p as f32,
                label,
            });
        }
        out
    }

    #[test]
    fn sharded_detectors_raise_what_one_raises() {
        let mut config = DriftConfig::default();
        config.concept.warmup_examples = 2000;
        config.concept.recovery_examples = 2000;
        config.calibration.warmup_examples = 2000;
        config.score.enabled = false;
        config.data.enabled = false;
        config.resolve_after_ms = 0;
        config.min_alert_interval_ms = 0;
        // Segments as observations of their own, as for any field but `category`: the
        // per-segment detector then runs on a shard of its own.
        config.segments.field = "genre".into();
        assert_ne!(config.shards(), Shards::ONE);
        let stream = segmented_stream(200_000, 100_000);
        // Feeds each worker's detectors its share, as the `Detect` operator routes it.
        let run = |peers: usize| -> Vec<(String, AlertState, EventTime)> {
            let shards = config.shards();
            let mut workers: Vec<Drift> = (0..peers)
                .map(|w| Drift::new(&config, 1000).for_worker(w, peers, &config, 1000))
                .collect();
            let mut alerts = Vec::new();
            let mut targets = [0; 8];
            for o in &stream {
                let n = shards.workers(o, peers, &mut targets);
                for &w in &targets[..n] {
                    workers[w as usize].observe(o);
                }
                if o.ts() % 10_000 == 5 {
                    for d in &mut workers {
                        d.advance(o.ts() + 1, &mut alerts);
                    }
                }
            }
            let mut got: Vec<_> = alerts
                .into_iter()
                .map(|a| (a.metric.to_string(), a.state, a.ts))
                .collect();
            got.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
            got
        };
        let one = run(1);
        assert!(
            one.iter().any(
                |(m, s, _)| m.starts_with("discrimination{genre=c") && *s == AlertState::Firing
            ),
            "{one:#?}"
        );
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
    }

    #[test]
    fn each_worker_runs_its_shards() {
        let mut config = DriftConfig::default();
        config.segments.field = "genre".into();
        let all = Drift::new(&config, 1000);
        let main = all.clone().for_worker(0, 2, &config, 1000);
        let segments = all.clone().for_worker(1, 2, &config, 1000);
        assert!(main.segments.is_none() && main.outage.is_some() && !main.concept.is_empty());
        assert!(segments.segments.is_some() && segments.outage.is_none());
        assert!(segments.concept.is_empty() && segments.data.is_none());
        let alone = all.clone().for_worker(0, 1, &config, 1000);
        assert!(alone.segments.is_some() && alone.outage.is_some());
        // Labels carry the default field's segments: one shard, on worker 0; restored from
        // a checkpoint of two shards, worker 0 gets a fresh per-segment detector.
        let carried = DriftConfig::default();
        assert_eq!(carried.shards(), Shards::ONE);
        let first = all.clone().for_worker(0, 2, &carried, 1000);
        let second = all.for_worker(1, 2, &carried, 1000);
        assert!(first.segments.is_some() && first.outage.is_some());
        assert!(second.segments.is_none() && second.outage.is_none());
        let restored = main.for_worker(0, 2, &carried, 1000);
        assert!(restored.segments.is_some() && restored.outage.is_some());
        let mut off = config.clone();
        off.segments.enabled = false;
        assert_eq!(off.shards(), Shards::ONE);
    }

    #[test]
    fn score_buckets_resolve_small_probabilities() {
        assert!(score_bucket(0.03) < score_bucket(0.031));
        assert_eq!(score_bucket(0.5), 0);
        assert!(score_bucket(0.0) > i32::MIN);
    }
}
