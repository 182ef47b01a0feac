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
        self.merge_span(other);
        for (key, bins) in &other.fields {
            let mine = self.fields.entry(key.clone()).or_default();
            for (bin, n) in bins {
                *mine.entry(bin.clone()).or_default() += n;
            }
        }
    }

    /// The span and impressions of [`merge`](Slice::merge).
    fn merge_span(&mut self, other: &Slice) {
        if self.impressions == 0 {
            self.from = other.from;
        }
        self.from = self.from.min(other.from);
        self.to = self.to.max(other.to);
        self.impressions += other.impressions;
    }

    /// Takes back `other`'s counts, which were merged in: a bin whose count falls to 0
    /// goes, and a field with no bin left, so the result is what merging the other slices
    /// alone gives (a slice's counts are all positive). The span is left as it was.
    fn remove(&mut self, other: &Slice) {
        self.impressions -= other.impressions;
        for (key, bins) in &other.fields {
            let Some(mine) = self.fields.get_mut(key) else {
                continue;
            };
            for (bin, n) in bins {
                if let Some(count) = mine.get_mut(bin) {
                    *count -= n;
                    if *count == 0 {
                        mine.remove(bin);
                    }
                }
            }
            if mine.is_empty() {
                self.fields.remove(key);
            }
        }
    }

    /// Sets the span to that of `slices` merged.
    fn set_span<'a>(&mut self, slices: impl Iterator<Item = &'a Slice>) {
        let mut span = Slice::default();
        for s in slices {
            span.merge_span(s);
        }
        (self.from, self.to) = (span.from, span.to);
        debug_assert_eq!(self.impressions, span.impressions);
    }
}

/// Windowed distribution drift over a set of fields; `serde` so that it can be
/// checkpointed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistributionDrift {
    /// `data_drift` metric names are `<prefix><field>`.
    prefix: CompactString,
    settings: WindowSettings,
    current: Current,
    slices: VecDeque<Slice>,
    reference: Option<Slice>,
    /// With a lagging reference, the reference and recent windows' counts, kept as the
    /// slices slide by (a merge and a removal each per closed slice, not a merge of every
    /// slice of both windows: the score's histogram has a few hundred bins); rebuilt from
    /// the slices after a restore.
    #[serde(skip)]
    windows: Option<(Slice, Slice)>,
    episodes: BTreeMap<FieldKey, Episode>,
    /// Evaluations done (one per field per closed slice).
    pub evaluations: u64,
}

/// The slice being filled, with the fine buckets of one numeric field counted one at a
/// time ([`DistributionDrift::add_num`]) held back as a plain list and folded into its
/// counts when it closes: one push per impression instead of a tree insertion. Serialized
/// as the [`Slice`] with those folded in, so that checkpoints keep their form.
#[derive(Clone, Debug, Default)]
struct Current {
    slice: Slice,
    deferred: Vec<i32>,
    /// The field of `deferred`.
    deferred_key: Option<FieldKey>,
}

impl Current {
    /// Folds the deferred buckets into the slice's counts.
    fn fold(&mut self) {
        let Some(key) = &self.deferred_key else {
            return;
        };
        if self.deferred.is_empty() {
            return;
        }
        self.deferred.sort_unstable();
        let bins = match self.slice.fields.get_mut(key) {
            Some(bins) => bins,
            None => self.slice.fields.entry(key.clone()).or_default(),
        };
        for run in self.deferred.chunk_by(|a, b| a == b) {
            *bins.entry(Bin::Num(run[0])).or_default() += run.len() as u64;
        }
        self.deferred.clear();
    }
}

impl Serialize for Current {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.deferred.is_empty() {
            self.slice.serialize(serializer)
        } else {
            let mut folded = self.clone();
            folded.fold();
            folded.slice.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Current {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            slice: Slice::deserialize(deserializer)?,
            deferred: Vec::new(),
            deferred_key: None,
        })
    }
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
            current: Current::default(),
            slices: VecDeque::new(),
            reference: None,
            windows: None,
            episodes: BTreeMap::new(),
            evaluations: 0,
        }
    }

    /// Counts one value in fine bucket `bucket` of numeric `field` in the current slice,
    /// like `add(field, Bin::Num(bucket), 1)`; meant for the one field a detector counts
    /// per impression (the score): a second field is counted by [`Self::add`].
    pub fn add_num(&mut self, field: &FieldKey, bucket: i32) {
        let c = &mut self.current;
        match &c.deferred_key {
            Some(key) if key == field => c.deferred.push(bucket),
            Some(_) => self.add(field, Bin::Num(bucket), 1),
            None => {
                c.deferred_key = Some(field.clone());
                c.deferred.push(bucket);
            }
        }
    }

    /// Counts `n` of `bin` for `field` in the current slice.
    pub fn add(&mut self, field: &FieldKey, bin: Bin, n: u64) {
        let bins = match self.current.slice.fields.get_mut(field) {
            Some(bins) => bins,
            None => self.current.slice.fields.entry(field.clone()).or_default(),
        };
        *bins.entry(bin).or_default() += n;
    }

    /// Counts `n` impressions seen over `from..=to` in the current slice.
    pub fn add_impressions(&mut self, n: u64, from: EventTime, to: EventTime) {
        let s = &mut self.current.slice;
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
        // A summary's values come grouped by field (sorted): the field's bins are looked
        // up once per field, not once per value (any order counts the same).
        for group in summary.categorical.chunk_by(|a, b| a.0 == b.0) {
            let field = (group[0].0.clone(), false);
            let bins = self.current.slice.fields.entry(field).or_default();
            for (_, value, n) in group {
                let bin = value.as_ref().map_or(Bin::Other, |v| Bin::Value(v.clone()));
                *bins.entry(bin).or_default() += u64::from(*n);
            }
        }
        for group in summary.numeric.chunk_by(|a, b| a.0 == b.0) {
            let field = (group[0].0.clone(), true);
            let bins = self.current.slice.fields.entry(field).or_default();
            for (_, bucket, n) in group {
                *bins.entry(Bin::Num(*bucket)).or_default() += u64::from(*n);
            }
        }
        self.add_impressions(summary.impressions, summary.from, summary.to);
    }

    /// Closes the current slice if it is full, and evaluates.
    pub fn maybe_evaluate(&mut self, timing: &EpisodeTiming, out: &mut Vec<Alert>) {
        let settings = self.settings;
        if self.current.slice.impressions < settings.slice_impressions {
            return;
        }
        self.current.fold();
        let slice = std::mem::take(&mut self.current.slice);
        let owned_recent;
        let (reference, recent) = match settings.reference {
            Reference::Warmup => {
                self.slices.push_back(slice);
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
                let Some(reference) = self.reference.as_ref() else {
                    return;
                };
                owned_recent = merged(self.slices.iter());
                (reference, &owned_recent)
            }
            Reference::Lagging => {
                let (r, l) = (settings.reference_slices, settings.recent_slices);
                let keep = r + settings.lag_slices + l;
                match &mut self.windows {
                    Some((reference, recent)) if self.slices.len() == keep => {
                        // One step: the oldest slice leaves the reference and the one after
                        // it (the lag's first, or the recent window's) joins it; the recent
                        // window's oldest leaves it and the new slice joins.
                        reference.merge(&self.slices[r]);
                        reference.remove(&self.slices[0]);
                        recent.merge(&slice);
                        recent.remove(&self.slices[keep - l]);
                    }
                    _ => self.windows = None,
                }
                self.slices.push_back(slice);
                while self.slices.len() > keep {
                    self.slices.pop_front();
                }
                if self.slices.len() < keep {
                    self.windows = None;
                    return;
                }
                let slices = &self.slices;
                let (reference, recent) = self.windows.get_or_insert_with(|| {
                    (
                        merged(slices.iter().take(r)),
                        merged(slices.iter().skip(keep - l)),
                    )
                });
                reference.set_span(slices.iter().take(r));
                recent.set_span(slices.iter().skip(keep - l));
                (&*reference, &*recent)
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
/// batches ([`DataSummary`]). Counts per field, so that a value already seen in the batch
/// is one hash lookup by `&str` (no key built); the fields stay from batch to batch with
/// their maps, so counting allocates only for a value not seen in the batch so far.
#[derive(Debug)]
pub struct CtxSketch {
    fields: Vec<CompactString>,
    ignore: Vec<CompactString>,
    batch_impressions: u64,
    batch_ms: i64,
    max_values: usize,
    /// The fields met lately (those of the current batch, and of the previous one until it
    /// ends), wanted or not, in order of first appearance: events mostly list their fields
    /// in one order, so the field at the same position is tried first.
    seen: Vec<FieldCounts>,
    /// Distinct categorical values counted in the batch, over every field (the cap).
    distinct: usize,
    /// `numeric_bucket(k)` of the small integers `k` (positions, hours, counts: most
    /// numeric `ctx` values), which would otherwise cost a logarithm each.
    small_buckets: [i32; SMALL_INTEGERS],
    impressions: u64,
    from: EventTime,
    to: EventTime,
}

/// Integers `0..SMALL_INTEGERS` get their fine bucket from a table.
const SMALL_INTEGERS: usize = 128;

/// A string of at most 15 bytes (most `ctx` field names and categorical values: devices,
/// countries, categories) as one integer: its bytes, then its length in the top byte. Two
/// such strings are equal exactly when their integers are, so they are compared and
/// hashed as integers, without a call to `memcmp` or hashing byte by byte; longer strings
/// are `None` and go the slow way.
///
/// Built from two overlapping loads rather than a copy into a buffer, which was a
/// variable-length `memcpy` call per field name and per value (a dozen per impression).
#[inline]
fn packed(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| {
        u64::from(u32::from_le_bytes(
            b[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let (low, high) = match n {
        // The last 8 bytes end with bytes 8..n, the top n - 8 of them.
        8..=15 => (
            word(0),
            word(n - 8).checked_shr(8 * (16 - n as u32)).unwrap_or(0),
        ),
        // The same within the low word, with 4-byte loads.
        4..=7 => {
            let rest = half(n - 4).checked_shr(8 * (8 - n as u32)).unwrap_or(0);
            (half(0) | rest << 32, 0)
        }
        0..=3 => (b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)), 0),
        _ => return None,
    };
    Some(u128::from(low) | u128::from(high) << 64 | (n as u128) << 120)
}

/// The string [`packed`] into `key`.
fn unpacked(key: u128) -> CompactString {
    let buf = key.to_le_bytes();
    let bytes = &buf[..usize::from(buf[15])];
    // Packed from a `&str`, whole: valid UTF-8.
    CompactString::from_utf8(bytes).expect("packed from a str")
}

/// One field's counts in the current batch.
#[derive(Debug)]
struct FieldCounts {
    /// `name` [`packed`], if it is short.
    key: Option<u128>,
    name: CompactString,
    wanted: bool,
    /// Met in the current batch (fields not met in a batch are forgotten at its end, so
    /// that a stream of ever new field names does not grow the list).
    used: bool,
    /// Counts of the values of at most 15 bytes, by their [`packed`] form.
    short: FxHashMap<u128, u32>,
    /// Counts of the longer values.
    categorical: FxHashMap<CompactString, u32>,
    /// Values beyond the cap on distinct values.
    overflow: u32,
    numeric: FxHashMap<i32, u32>,
}

impl FieldCounts {
    /// Whether this is field `name`, whose [`packed`] form is `key`.
    fn is(&self, key: Option<u128>, name: &str) -> bool {
        self.key == key && (key.is_some() || self.name == name)
    }
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
            seen: Vec::new(),
            distinct: 0,
            small_buckets: std::array::from_fn(|k| numeric_bucket(k as f64)),
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

    /// The index in `seen` of `field`, the `position`-th field of its event; added when new.
    fn field(&mut self, position: usize, field: &str) -> usize {
        let key = packed(field);
        let found = match self.seen.get(position) {
            Some(f) if f.is(key, field) => Some(position),
            _ => self.seen.iter().position(|f| f.is(key, field)),
        };
        let i = found.unwrap_or_else(|| {
            self.seen.push(FieldCounts {
                key,
                name: field.into(),
                wanted: self.wanted(field),
                used: false,
                short: FxHashMap::default(),
                categorical: FxHashMap::default(),
                overflow: 0,
                numeric: FxHashMap::default(),
            });
            self.seen.len() - 1
        });
        self.seen[i].used = true;
        i
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
        for (position, (field, value)) in imp.ctx.iter().enumerate() {
            let i = self.field(position, field);
            let counts = &mut self.seen[i];
            if !counts.wanted {
                continue;
            }
            match value {
                CtxValue::Str(s) => {
                    let s: &str = s.as_ref();
                    let n = match packed(s) {
                        Some(key) => counts.short.get_mut(&key),
                        None => counts.categorical.get_mut(s),
                    };
                    if let Some(n) = n {
                        *n += 1;
                    } else if self.distinct < self.max_values {
                        match packed(s) {
                            Some(key) => counts.short.insert(key, 1),
                            None => counts.categorical.insert(s.into(), 1),
                        };
                        self.distinct += 1;
                    } else {
                        counts.overflow += 1;
                    }
                }
                CtxValue::Num(x) => {
                    let x = *x;
                    // `-0.0` is 0 and NaN fails the test, as `numeric_bucket` has them.
                    let bucket = if (0.0..SMALL_INTEGERS as f64).contains(&x) && x.fract() == 0.0 {
                        self.small_buckets[x as usize]
                    } else {
                        numeric_bucket(x)
                    };
                    *counts.numeric.entry(bucket).or_default() += 1;
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
        // Sorted by field, then value: the fields in name order, each field's values
        // sorted on their own (the keys are unique, so this is the order of sorting the
        // whole lists, without comparing the field names of every pair).
        let mut fields: Vec<usize> = (0..self.seen.len()).collect();
        fields.sort_unstable_by(|&a, &b| self.seen[a].name.cmp(&self.seen[b].name));
        let mut categorical = Vec::new();
        let mut numeric = Vec::new();
        for i in fields {
            let f = &mut self.seen[i];
            let name = &f.name;
            let start = categorical.len();
            categorical.extend(
                (f.short.drain())
                    .map(|(v, n)| (name.clone(), Some(unpacked(v)), n))
                    .chain(
                        f.categorical
                            .drain()
                            .map(|(v, n)| (name.clone(), Some(v), n)),
                    ),
            );
            if f.overflow > 0 {
                categorical.push((name.clone(), None, std::mem::take(&mut f.overflow)));
            }
            categorical[start..].sort_unstable_by(|a, b| a.1.cmp(&b.1));
            let start = numeric.len();
            numeric.extend(f.numeric.drain().map(|(b, n)| (name.clone(), b, n)));
            numeric[start..].sort_unstable_by_key(|e| e.1);
        }
        debug_assert!(categorical.is_sorted() && numeric.is_sorted());
        self.seen.retain_mut(|f| std::mem::take(&mut f.used));
        let summary = DataSummary {
            from: self.from,
            to: self.to,
            impressions: self.impressions,
            categorical,
            numeric,
        };
        self.impressions = 0;
        self.distinct = 0;
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`packed`] as first written: the bytes copied into a buffer.
    fn packed_by_copy(s: &str) -> Option<u128> {
        let bytes = s.as_bytes();
        if bytes.len() > 15 {
            return None;
        }
        let mut buf = [0u8; 16];
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[15] = bytes.len() as u8;
        Some(u128::from_le_bytes(buf))
    }

    #[test]
    fn packing_with_loads_is_packing_by_copy() {
        let alphabet = ["a", "Z", "0", "\0", "é", "\u{7f}", "\u{ff}", "日"];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 19) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (3 * i % 60)) % 8) as usize])
                .collect::<String>();
            for cut in 0..=s.len() {
                if let Some(prefix) = s.get(..cut) {
                    assert_eq!(packed(prefix), packed_by_copy(prefix), "{prefix:?}");
                    if let Some(key) = packed(prefix) {
                        assert_eq!(unpacked(key), prefix);
                    }
                }
            }
        }
    }

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

    /// Scores counted one at a time (deferred to the slice's end) give the slices, stats
    /// and alerts of the same counts added directly.
    #[test]
    fn deferred_numeric_counts_equal_direct_ones() {
        let key: FieldKey = ("score".into(), true);
        let settings = WindowSettings {
            top_k: 1,
            ..settings(Reference::Lagging)
        };
        let (mut direct, mut deferred) = (
            DistributionDrift::new("", settings),
            DistributionDrift::new("", settings),
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..40_000i64 {
            // A level that moves after 25k, with ties and negative buckets.
            let bucket = (i * 7919 % 13) as i32 - 6 + if i > 25_000 { 4 } else { 0 };
            direct.add(&key, Bin::Num(bucket), 1);
            direct.add_impressions(1, i, i);
            direct.maybe_evaluate(&TIMING, &mut a);
            deferred.add_num(&key, bucket);
            deferred.add_impressions(1, i, i);
            deferred.maybe_evaluate(&TIMING, &mut b);
            if i == 12_345 {
                // A checkpoint mid-slice has the form of the direct one, and resumes.
                use ctrflow_state::codec::{decode_value, encode_value};
                let (mut saved, mut expected) = (Vec::new(), Vec::new());
                encode_value(&deferred, &mut saved);
                encode_value(&direct, &mut expected);
                assert_eq!(saved, expected);
                deferred = decode_value("drift", &saved).unwrap();
            }
        }
        assert!(!a.is_empty(), "the shift is seen");
        assert_eq!(a, b);
        assert_eq!(direct.slices, deferred.slices);
        let (mut sa, mut sb) = (Vec::new(), Vec::new());
        direct.stats(&mut sa);
        deferred.stats(&mut sb);
        assert_eq!(sa, sb);
    }

    #[test]
    fn sliding_windows_are_the_merged_slices() {
        // Fields and values come and go, slices overlap in time, a restore drops the
        // windows: after every closed slice they equal the merge of their slices.
        let mut settings = settings(Reference::Lagging);
        settings.lag_slices = 2;
        settings.slice_impressions = 10;
        let (r, l) = (settings.reference_slices, settings.recent_slices);
        let mut d = DistributionDrift::new("ctx.", settings);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut out = Vec::new();
        let mut checked = 0;
        for i in 0..300i64 {
            for _ in 0..1 + next(4) {
                let field = format!("f{}", next(3));
                if next(2) == 0 {
                    let bin = Bin::Value(format!("v{}", next(6 + i as u64 / 50)).into());
                    d.add(&(field.into(), false), bin, 1 + next(3));
                } else {
                    d.add_num(&(field.into(), true), next(20) as i32 - 10);
                }
            }
            let ts = i * 100 - next(300) as i64;
            d.add_impressions(1 + next(5), ts, ts + next(50) as i64);
            d.maybe_evaluate(&TIMING, &mut out);
            if i == 150 {
                let mut bytes = Vec::new();
                ctrflow_state::codec::encode_value(&d, &mut bytes);
                d = ctrflow_state::codec::decode_value("operators", &bytes).unwrap();
                assert!(d.windows.is_none());
            }
            if let Some((reference, recent)) = &d.windows {
                let n = d.slices.len();
                assert_eq!(*reference, merged(d.slices.iter().take(r)), "slice {i}");
                assert_eq!(*recent, merged(d.slices.iter().skip(n - l)), "slice {i}");
                checked += 1;
            }
        }
        assert!(checked > 20, "{checked} windows checked");
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

    #[test]
    fn long_field_names_sharing_their_first_bytes_are_told_apart() {
        let line = br#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"category_a":"x","category_b":"y","cat":"z"}}"#;
        let crate::event::Event::Impression(imp) = crate::event::decode(line, 1 << 20).unwrap()
        else {
            panic!()
        };
        let mut sketch = CtxSketch::new(&[], &[], 2, 60_000, 100);
        assert!(sketch.observe(&imp).is_none());
        let s = sketch.observe(&imp).expect("a batch of 2");
        assert_eq!(
            s.categorical,
            vec![
                ("cat".into(), Some("z".into()), 2),
                ("category_a".into(), Some("x".into()), 2),
                ("category_b".into(), Some("y".into()), 2),
            ]
        );
    }

    #[test]
    fn small_integer_buckets_are_numeric_buckets() {
        let sketch = CtxSketch::new(&[], &[], 1, 1, 1);
        for (k, b) in sketch.small_buckets.iter().enumerate() {
            assert_eq!(*b, numeric_bucket(k as f64));
        }
        assert_eq!(numeric_bucket(-0.0), sketch.small_buckets[0]);
    }

    /// Fields in any order, a field with both kinds of value, and the cap on distinct
    /// values shared by every field.
    #[test]
    fn sketch_counts_fields_in_any_order_and_caps_values_over_all_fields() {
        let lines: [&[u8]; 3] = [
            br#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"device":"ios","country":"JP","position":3}}"#,
            br#"{"type":"impression","id":"b","ts":6,"user":"u","item":"i","ctx":{"position":"top","country":"US","device":"ios"}}"#,
            br#"{"type":"impression","id":"c","ts":7,"user":"u","item":"i","ctx":{"country":"FR","device":"web","position":3}}"#,
        ];
        let mut sketch = CtxSketch::new(&[], &[], 3, 60_000, 3);
        let mut summary = None;
        for line in lines {
            let crate::event::Event::Impression(imp) = crate::event::decode(line, 1 << 20).unwrap()
            else {
                panic!()
            };
            summary = sketch.observe(&imp);
        }
        let s = summary.expect("a batch of 3");
        // The first three distinct values fit (ios, JP, top); US, FR and web do not.
        assert_eq!(
            s.categorical,
            vec![
                ("country".into(), None, 2),
                ("country".into(), Some("JP".into()), 1),
                ("device".into(), None, 1),
                ("device".into(), Some("ios".into()), 2),
                ("position".into(), Some("top".into()), 1),
            ]
        );
        assert_eq!(s.numeric, vec![("position".into(), numeric_bucket(3.0), 2)]);
        assert!(sketch.take().is_none());
    }

    #[test]
    fn values_and_names_short_and_long_are_counted_apart_and_capped_together() {
        // 15 bytes and under are packed into integers, longer ones are not: values equal in
        // their first 15 bytes, an empty value, a NUL, multi-byte UTF-8, and field names
        // differing past byte 15 stay apart, and the cap counts both kinds.
        let lines: [&[u8]; 3] = [
            br#"{"type":"impression","id":"a","ts":5,"user":"u","item":"i","ctx":{"a_long_field_name_1":"fifteen_bytes_x","a_long_field_name_2":"sixteen_bytes_xx","v":""}}"#,
            br#"{"type":"impression","id":"b","ts":6,"user":"u","item":"i","ctx":{"a_long_field_name_1":"sixteen_bytes_xy","a_long_field_name_2":"sixteen_bytes_xx","v":"\u0000"}}"#,
            br#"{"type":"impression","id":"c","ts":7,"user":"u","item":"i","ctx":{"a_long_field_name_1":"fifteen_bytes_x","a_long_field_name_2":"caf\u00e9","v":""}}"#,
        ];
        let summary = |cap| {
            let mut sketch = CtxSketch::new(&[], &[], 3, 60_000, cap);
            let mut summary = None;
            for line in lines {
                let crate::event::Event::Impression(imp) =
                    crate::event::decode(line, 1 << 20).unwrap()
                else {
                    panic!()
                };
                summary = sketch.observe(&imp);
            }
            summary.expect("a batch of 3").categorical
        };
        let name = |n: u8| CompactString::from(format!("a_long_field_name_{n}"));
        assert_eq!(
            summary(100),
            vec![
                (name(1), Some("fifteen_bytes_x".into()), 2),
                (name(1), Some("sixteen_bytes_xy".into()), 1),
                (name(2), Some("caf\u{e9}".into()), 1),
                (name(2), Some("sixteen_bytes_xx".into()), 2),
                ("v".into(), Some("".into()), 2),
                ("v".into(), Some("\0".into()), 1),
            ]
        );
        // Three distinct values fit: the first three met (two short, one long).
        assert_eq!(
            summary(3),
            vec![
                (name(1), None, 1),
                (name(1), Some("fifteen_bytes_x".into()), 2),
                (name(2), None, 1),
                (name(2), Some("sixteen_bytes_xx".into()), 2),
                ("v".into(), None, 1),
                ("v".into(), Some("".into()), 2),
            ]
        );
    }
}
