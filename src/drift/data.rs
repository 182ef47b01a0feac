//! Data drift: the distribution of each `ctx` field (and of the served score) over a
//! recent window, against a reference window, scored with PSI or the Jensen–Shannon
//! distance ([`super::distribution`]).
//!
//! # Windows
//!
//! Counts accumulate in slices of `slice_impressions` impressions. The recent window is
//! the last `recent_slices` slices; the reference is either the first `reference_slices`
//! slices, frozen (`warmup`), or the `reference_slices` slices that end `lag_slices`
//! slices before the recent window (`lagging`: follows slow change, such as the daily
//! cycle of the score, and forgets a permanent shift once it is old). Each closed slice is
//! one evaluation.
//!
//! # Bins
//!
//! Categorical fields: the reference's `top_k` values, one bin for every other value
//! (new values land there), one for impressions without the field. Numeric fields: the
//! reference's `quantiles` quantile buckets, computed from fine logarithmic buckets
//! ([`ctrflow_dataflows::detector::numeric_bucket`]), plus "missing". A fine bucket never
//! splits, so a field with few distinct values (a position) gets fewer, uneven bins.
//!
//! # Where the counts come from
//!
//! Field values exist only where events are decoded, on every worker; [`CtxSketch`]
//! counts them there and hands a [`DataSummary`] to the dataflow every
//! `batch_impressions` impressions (or `batch_ms` of event time), so the detector's worker
//! receives a few hundred counts per batch instead of every value.

use std::collections::{BTreeMap, VecDeque};

use compact_str::CompactString;
use ctrflow_dataflows::detector::numeric_bucket;
use ctrflow_dataflows::{
    Alert, AlertKind, AlertState, AlertWindow, DataSummary, EventTime, Severity,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::distribution::{js_distance, js_noise_threshold, psi, psi_noise_threshold};
use super::episode::{Describe, Episode, EpisodeTiming, Status};
use crate::event::{CtxValue, Impression};

/// Which window the recent one is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The first `reference_slices` slices, frozen.
    Warmup,
    /// The `reference_slices` slices ending `lag_slices` before the recent window.
    Lagging,
}

/// Which statistic is compared with the threshold (both are reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Population Stability Index.
    Psi,
    /// Jensen–Shannon distance.
    Js,
}

/// Window and threshold settings shared by the field and score detectors.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSettings {
    /// Impressions per slice.
    pub slice_impressions: u64,
    /// Slices in the recent window.
    pub recent_slices: usize,
    /// Slices in the reference window.
    pub reference_slices: usize,
    /// Slices between reference and recent windows (`lagging` only).
    pub lag_slices: usize,
    /// Which reference.
    pub reference: Reference,
    /// Which statistic alerts.
    pub statistic: Statistic,
    /// Smallest PSI worth an alert.
    pub min_psi: f64,
    /// Smallest JS distance worth an alert.
    pub min_js: f64,
    /// Categorical bins: the reference's most frequent values.
    pub top_k: usize,
    /// Numeric bins: quantiles of the reference.
    pub quantiles: usize,
    /// An episode clears when the statistic falls below this fraction of its threshold.
    pub clear_fraction: f64,
    /// Per-evaluation false-alarm probability (from the budget).
    pub alpha: f64,
}

/// A bin of a field's fine histogram.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bin {
    /// A categorical value.
    Value(CompactString),
    /// Categorical values beyond a worker batch's cap.
    Other,
    /// A fine numeric bucket.
    Num(i32),
}

/// A field, and whether its values are numeric (a field may carry both kinds).
pub type FieldKey = (CompactString, bool);

/// Counts of one slice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Slice {
    from: EventTime,
    to: EventTime,
    impressions: u64,
    fields: BTreeMap<FieldKey, BTreeMap<Bin, u64>>,
}

impl Slice {
    fn merge(&mut self, other: &Slice) {
        if self.impressions == 0 {
            self.from = other.from;
        }
        self.from = self.from.min(other.from);
        self.to = self.to.max(other.to);
        self.impressions += other.impressions;
        for (key, bins) in &other.fields {
            let mine = self.fields.entry(key.clone()).or_default();
            for (bin, n) in bins {
                *mine.entry(bin.clone()).or_default() += n;
            }
        }
    }
}

/// Windowed distribution drift over a set of fields; `serde` so that it can be
/// checkpointed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistributionDrift {
    /// `data_drift` metric names are `<prefix><field>`.
    prefix: CompactString,
    settings: WindowSettings,
    current: Slice,
    slices: VecDeque<Slice>,
    reference: Option<Slice>,
    episodes: BTreeMap<FieldKey, Episode>,
    /// Evaluations done (one per field per closed slice).
    pub evaluations: u64,
}

/// One field's comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// PSI.
    pub psi: f64,
    /// JS distance.
    pub js: f64,
    /// Threshold of the chosen statistic.
    pub threshold: f64,
    /// Bins compared.
    pub bins: usize,
}

impl DistributionDrift {
    /// Empty, with metric names `<prefix><field>`.
    pub fn new(prefix: &str, settings: WindowSettings) -> Self {
        Self {
            prefix: prefix.into(),
            settings,
            current: Slice::default(),
            slices: VecDeque::new(),
            reference: None,
            episodes: BTreeMap::new(),
            evaluations: 0,
        }
    }

    /// Counts `n` of `bin` for `field` in the current slice.
    pub fn add(&mut self, field: &FieldKey, bin: Bin, n: u64) {
        let bins = match self.current.fields.get_mut(field) {
            Some(bins) => bins,
            None => self.current.fields.entry(field.clone()).or_default(),
        };
        *bins.entry(bin).or_default() += n;
    }

    /// Counts `n` impressions seen over `from..=to` in the current slice.
    pub fn add_impressions(&mut self, n: u64, from: EventTime, to: EventTime) {
        let s = &mut self.current;
        if s.impressions == 0 {
            s.from = from;
            s.to = to;
        }
        s.from = s.from.min(from);
        s.to = s.to.max(to);
        s.impressions += n;
    }

    /// Adds a worker's summary.
    pub fn add_summary(&mut self, summary: &DataSummary) {
        for (field, value, n) in &summary.categorical {
            let bin = value.as_ref().map_or(Bin::Other, |v| Bin::Value(v.clone()));
            self.add(&(field.clone(), false), bin, u64::from(*n));
        }
        for (field, bucket, n) in &summary.numeric {
            self.add(&(field.clone(), true), Bin::Num(*bucket), u64::from(*n));
        }
        self.add_impressions(summary.impressions, summary.from, summary.to);
    }

    /// Closes the current slice if it is full, and evaluates.
    pub fn maybe_evaluate(&mut self, timing: &EpisodeTiming, out: &mut Vec<Alert>) {
        let settings = self.settings;
        if self.current.impressions < settings.slice_impressions {
            return;
        }
        let slice = std::mem::take(&mut self.current);
        self.slices.push_back(slice);
        let (reference, recent) = match settings.reference {
            Reference::Warmup => {
                if self.reference.is_none() {
                    if self.slices.len() < settings.reference_slices {
                        return;
                    }
                    let mut r = Slice::default();
                    for s in self.slices.drain(..) {
                        r.merge(&s);
                    }
                    self.reference = Some(r);
                    return;
                }
                while self.slices.len() > settings.recent_slices {
                    self.slices.pop_front();
                }
                if self.slices.len() < settings.recent_slices {
                    return;
                }
                let Some(reference) = self.reference.clone() else {
                    return;
                };
                (reference, merged(self.slices.iter()))
            }
            Reference::Lagging => {
                let keep = settings.reference_slices + settings.lag_slices + settings.recent_slices;
                while self.slices.len() > keep {
                    self.slices.pop_front();
                }
                if self.slices.len() < keep {
                    return;
                }
                let reference = merged(self.slices.iter().take(settings.reference_slices));
                let recent = merged(self.slices.iter().skip(keep - settings.recent_slices));
                (reference, recent)
            }
        };
        let now = recent.to;
        for (key, ref_bins) in &reference.fields {
            let empty = BTreeMap::new();
            let recent_bins = recent.fields.get(key).unwrap_or(&empty);
            let c = compare(
                ref_bins,
                reference.impressions,
                recent_bins,
                recent.impressions,
                key.1,
                &settings,
            );
            self.evaluations += 1;
            let value = match settings.statistic {
                Statistic::Psi => c.psi,
                Statistic::Js => c.js,
            };
            let status = if value > c.threshold {
                Status::Fire(if value > 2.0 * c.threshold {
                    Severity::Critical
                } else {
                    Severity::Warning
                })
            } else if value < settings.clear_fraction * c.threshold {
                Status::Clear
            } else {
                Status::Hold
            };
            let describe = Described {
                metric: format!("{}{}", self.prefix, key.0),
                statistic: settings.statistic,
                comparison: c,
                value,
                reference: (reference.from, reference.to),
                recent: (recent.from, recent.to),
            };
            self.episodes
                .entry(key.clone())
                .or_default()
                .update(now, status, timing, &describe, out);
        }
    }

    /// Episodes rate-limited away, over all fields.
    pub fn suppressed(&self) -> u64 {
        self.episodes.values().map(|e| e.suppressed).sum()
    }
}

impl DistributionDrift {
    /// Appends each field's PSI and JS distance between the reference and the recent
    /// window as of the last closed slice, recomputed from the kept slices (call it now
    /// and then, not per impression); the statistic alerts use carries its threshold.
    pub fn stats(&self, out: &mut Vec<super::DetectorStat>) {
        let settings = self.settings;
        let n = self.slices.len();
        let owned;
        let (reference, recent) = match settings.reference {
            Reference::Warmup => {
                let Some(reference) = self.reference.as_ref() else {
                    return;
                };
                if n < settings.recent_slices {
                    return;
                }
                (
                    reference,
                    merged(self.slices.iter().skip(n - settings.recent_slices)),
                )
            }
            Reference::Lagging => {
                let keep = settings.reference_slices + settings.lag_slices + settings.recent_slices;
                if n < keep {
                    return;
                }
                owned = merged(
                    self.slices
                        .iter()
                        .skip(n - keep)
                        .take(settings.reference_slices),
                );
                (
                    &owned,
                    merged(self.slices.iter().skip(n - settings.recent_slices)),
                )
            }
        };
        let empty = BTreeMap::new();
        for (key, ref_bins) in &reference.fields {
            let recent_bins = recent.fields.get(key).unwrap_or(&empty);
            let c = compare(
                ref_bins,
                reference.impressions,
                recent_bins,
                recent.impressions,
                key.1,
                &settings,
            );
            let metric = format!("{}{}", self.prefix, key.0);
            let (psi, js) = match settings.statistic {
                Statistic::Psi => (Some(c.threshold), None),
                Statistic::Js => (None, Some(c.threshold)),
            };
            out.push(super::DetectorStat::new("psi", &metric, c.psi, psi));
            out.push(super::DetectorStat::new("js", &metric, c.js, js));
        }
    }
}

fn merged<'a>(slices: impl Iterator<Item = &'a Slice>) -> Slice {
    let mut out = Slice::default();
    for s in slices {
        out.merge(s);
    }
    out
}

/// Bins `reference` and `recent` alike and compares them.
pub fn compare(
    reference: &BTreeMap<Bin, u64>,
    reference_impressions: u64,
    recent: &BTreeMap<Bin, u64>,
    recent_impressions: u64,
    numeric: bool,
    settings: &WindowSettings,
) -> Comparison {
    let (r, n) = if numeric {
        numeric_bins(reference, recent, settings.quantiles)
    } else {
        categorical_bins(reference, recent, settings.top_k)
    };
    let (mut r, mut n) = (r, n);
    // Impressions without the field.
    let missing = |bins: &[f64], total: u64| (total as f64 - bins.iter().sum::<f64>()).max(0.0);
    r.push(missing(&r, reference_impressions));
    n.push(missing(&n, recent_impressions));
    let bins = r.len();
    let (rn, nn) = (r.iter().sum::<f64>(), n.iter().sum::<f64>());
    let threshold = match settings.statistic {
        Statistic::Psi => psi_noise_threshold(nn, rn, bins, settings.alpha).max(settings.min_psi),
        Statistic::Js => js_noise_threshold(nn, rn, bins, settings.alpha).max(settings.min_js),
    };
    Comparison {
        psi: psi(&n, &r),
        js: js_distance(&n, &r),
        threshold,
        bins,
    }
}

fn categorical_bins(
    reference: &BTreeMap<Bin, u64>,
    recent: &BTreeMap<Bin, u64>,
    top_k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut top: Vec<(&Bin, u64)> = reference
        .iter()
        .filter(|(b, _)| matches!(b, Bin::Value(_)))
        .map(|(b, n)| (b, *n))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(top_k);
    let index = |bin: &Bin| top.iter().position(|(b, _)| *b == bin).unwrap_or(top.len());
    let mut r = vec![0.0; top.len() + 1];
    let mut n = vec![0.0; top.len() + 1];
    for (bin, c) in reference {
        r[index(bin)] += *c as f64;
    }
    for (bin, c) in recent {
        n[index(bin)] += *c as f64;
    }
    (r, n)
}

fn numeric_bins(
    reference: &BTreeMap<Bin, u64>,
    recent: &BTreeMap<Bin, u64>,
    quantiles: usize,
) -> (Vec<f64>, Vec<f64>) {
    let total: u64 = reference.values().sum();
    // Upper fine bucket of each coarse bin but the last.
    let mut edges = Vec::with_capacity(quantiles);
    let mut cumulative = 0u64;
    let mut next = 1;
    for (bin, c) in reference {
        let Bin::Num(b) = bin else { continue };
        cumulative += c;
        if next < quantiles
            && cumulative < total
            && cumulative * quantiles as u64 >= next as u64 * total
        {
            edges.push(*b);
            while next < quantiles && cumulative * quantiles as u64 >= next as u64 * total {
                next += 1;
            }
        }
    }
    let index = |bin: &Bin| match bin {
        Bin::Num(b) => edges.partition_point(|e| e < b),
        _ => edges.len(),
    };
    let mut r = vec![0.0; edges.len() + 1];
    let mut n = vec![0.0; edges.len() + 1];
    for (bin, c) in reference {
        r[index(bin)] += *c as f64;
    }
    for (bin, c) in recent {
        n[index(bin)] += *c as f64;
    }
    (r, n)
}

struct Described {
    metric: String,
    statistic: Statistic,
    comparison: Comparison,
    value: f64,
    reference: (EventTime, EventTime),
    recent: (EventTime, EventTime),
}

impl Describe for Described {
    fn alert(
        &self,
        state: AlertState,
        severity: Severity,
        now: EventTime,
        since: EventTime,
    ) -> Alert {
        let c = &self.comparison;
        let name = match self.statistic {
            Statistic::Psi => "psi",
            Statistic::Js => "js",
        };
        let message = match state {
            AlertState::Firing => format!(
                "{} moved away from its reference: PSI {:.3}, JS distance {:.3} over {} bins (threshold {:.3}); reference {}..{}",
                self.metric, c.psi, c.js, c.bins, c.threshold, self.reference.0, self.reference.1
            ),
            AlertState::Resolved => format!(
                "{} is back near its reference: PSI {:.3}, JS distance {:.3}; drifted since {since}",
                self.metric, c.psi, c.js
            ),
        };
        Alert {
            kind: AlertKind::DataDrift,
            state,
            severity,
            detector: name.into(),
            metric: self.metric.as_str().into(),
            value: self.value,
            threshold: c.threshold,
            window: AlertWindow {
                from: self.recent.0,
                to: self.recent.1,
            },
            ts: now,
            message,
        }
    }
}

/// Counts the `ctx` values of the impressions one worker decodes, and hands them over in
/// batches ([`DataSummary`]). Reuses its maps, so counting allocates only for a value not
/// seen in the batch so far.
#[derive(Debug)]
pub struct CtxSketch {
    fields: Vec<CompactString>,
    ignore: Vec<CompactString>,
    batch_impressions: u64,
    batch_ms: i64,
    max_values: usize,
    categorical: FxHashMap<(CompactString, CompactString), u32>,
    numeric: FxHashMap<(CompactString, i32), u32>,
    overflow: FxHashMap<CompactString, u32>,
    impressions: u64,
    from: EventTime,
    to: EventTime,
}

impl CtxSketch {
    /// Counts `fields` (every field when empty) except `ignore` and fields starting with
    /// `_`; a batch ends after `batch_impressions` impressions or `batch_ms` of event time.
    pub fn new(
        fields: &[String],
        ignore: &[String],
        batch_impressions: u64,
        batch_ms: u64,
        max_values: usize,
    ) -> Self {
        Self {
            fields: fields.iter().map(|f| f.as_str().into()).collect(),
            ignore: ignore.iter().map(|f| f.as_str().into()).collect(),
            batch_impressions: batch_impressions.max(1),
            batch_ms: batch_ms as i64,
            max_values,
            categorical: FxHashMap::default(),
            numeric: FxHashMap::default(),
            overflow: FxHashMap::default(),
            impressions: 0,
            from: 0,
            to: 0,
        }
    }

    fn wanted(&self, field: &str) -> bool {
        !field.starts_with('_')
            && !self.ignore.iter().any(|f| f == field)
            && (self.fields.is_empty() || self.fields.iter().any(|f| f == field))
    }

    /// Counts one impression's values; returns a summary when a batch is complete.
    pub fn observe(&mut self, imp: &Impression<'_>) -> Option<DataSummary> {
        if self.impressions == 0 {
            self.from = imp.ts;
            self.to = imp.ts;
        }
        self.from = self.from.min(imp.ts);
        self.to = self.to.max(imp.ts);
        self.impressions += 1;
        for (field, value) in &imp.ctx {
            if !self.wanted(field) {
                continue;
            }
            match value {
                CtxValue::Str(s) => {
                    let key = (
                        CompactString::from(field.as_ref()),
                        CompactString::from(s.as_ref()),
                    );
                    if let Some(n) = self.categorical.get_mut(&key) {
                        *n += 1;
                    } else if self.categorical.len() < self.max_values {
                        self.categorical.insert(key, 1);
                    } else {
                        *self.overflow.entry(key.0).or_default() += 1;
                    }
                }
                CtxValue::Num(x) => {
                    let key = (CompactString::from(field.as_ref()), numeric_bucket(*x));
                    *self.numeric.entry(key).or_default() += 1;
                }
            }
        }
        let full = self.impressions >= self.batch_impressions
            || self.to.saturating_sub(self.from) >= self.batch_ms;
        full.then(|| self.take()).flatten()
    }

    /// The counts so far, if any; starts a new batch.
    pub fn take(&mut self) -> Option<DataSummary> {
        if self.impressions == 0 {
            return None;
        }
        let mut categorical: Vec<_> = self
            .categorical
            .drain()
            .map(|((f, v), n)| (f, Some(v), n))
            .chain(self.overflow.drain().map(|(f, n)| (f, None, n)))
            .collect();
        categorical.sort_unstable();
        let mut numeric: Vec<_> = self.numeric.drain().map(|((f, b), n)| (f, b, n)).collect();
        numeric.sort_unstable();
        let summary = DataSummary {
            from: self.from,
            to: self.to,
            impressions: self.impressions,
            categorical,
            numeric,
        };
        self.impressions = 0;
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(reference: Reference) -> WindowSettings {
        WindowSettings {
            slice_impressions: 1000,
            recent_slices: 2,
            reference_slices: 4,
            lag_slices: 0,
            reference,
            statistic: Statistic::Psi,
            min_psi: 0.1,
            min_js: 0.1,
            top_k: 5,
            quantiles: 10,
            clear_fraction: 0.5,
            alpha: 1e-6,
        }
    }

    const TIMING: EpisodeTiming = EpisodeTiming {
        resolve_after_ms: 0,
        min_alert_interval_ms: 0,
    };

    /// Feeds slices of 1000 impressions of a device field whose "web" share is `web(i)`.
    fn feed(d: &mut DistributionDrift, slices: std::ops::Range<i64>, web: f64) -> Vec<Alert> {
        let key: FieldKey = ("device".into(), false);
        let mut out = Vec::new();
        for i in slices {
            let w = (1000.0 * web) as u64;
            d.add(&key, Bin::Value("web".into()), w);
            d.add(&key, Bin::Value("ios".into()), 1000 - w);
            d.add_impressions(1000, i * 1000, i * 1000 + 999);
            d.maybe_evaluate(&TIMING, &mut out);
        }
        out
    }

    #[test]
    fn a_mix_shift_fires_once_and_resolves_when_it_ends() {
        let mut d = DistributionDrift::new("ctx.", settings(Reference::Warmup));
        assert!(feed(&mut d, 0..10, 0.2).is_empty());
        let fired = feed(&mut d, 10..20, 0.5);
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].metric, "ctx.device");
        assert_eq!(fired[0].kind, AlertKind::DataDrift);
        assert!(fired[0].value > 0.1);
        let resolved = feed(&mut d, 20..30, 0.2);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].state, AlertState::Resolved);
    }

    #[test]
    fn a_lagging_reference_forgets_an_old_shift() {
        let mut d = DistributionDrift::new("ctx.", settings(Reference::Lagging));
        assert!(feed(&mut d, 0..10, 0.2).is_empty());
        let alerts = feed(&mut d, 10..30, 0.5);
        let states: Vec<_> = alerts.iter().map(|a| a.state).collect();
        assert_eq!(states, vec![AlertState::Firing, AlertState::Resolved]);
    }

    #[test]
    fn numeric_bins_are_reference_quantiles() {
        let reference: BTreeMap<Bin, u64> = (0..100).map(|b| (Bin::Num(b), 10)).collect();
        let (r, n) = numeric_bins(&reference, &reference, 10);
        assert_eq!(r.len(), 10);
        assert!(r.iter().all(|c| *c == 100.0), "{r:?}");
        assert_eq!(r, n);
        // Few distinct values: fewer bins, never split.
        let few: BTreeMap<Bin, u64> = [(Bin::Num(1), 500), (Bin::Num(2), 500)].into();
        let (r, _) = numeric_bins(&few, &few, 10);
        assert_eq!(r, vec![500.0, 500.0]);
    }

    #[test]
    fn sketch_batches_and_caps_values() {
        let line = br#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"device":"ios","position":3,"_p_true":0.1,"hour":4}}"#;
        let crate::event::Event::Impression(imp) = crate::event::decode(line, 1 << 20).unwrap()
        else {
            panic!()
        };
        let mut sketch = CtxSketch::new(&[], &["hour".into()], 2, 60_000, 100);
        assert!(sketch.observe(&imp).is_none());
        let s = sketch.observe(&imp).expect("a batch of 2");
        assert_eq!(s.impressions, 2);
        assert_eq!(
            s.categorical,
            vec![("device".into(), Some("ios".into()), 2)]
        );
        assert_eq!(s.numeric, vec![("position".into(), numeric_bucket(3.0), 2)]);
        assert!(sketch.take().is_none());
    }
}
