//! Progressive validation: metrics of the scores served *before* each label was learned.
//!
//! Online learning has no held-out set: every example is scored by the model as it was
//! before learning from it, so the stream of (served score, label) pairs is an honest test
//! set (Blum, Kalai and Langford 1999; McMahan et al. 2013, §5.1). [`Progressive`]
//! accumulates over that stream, in O(1) time per example and bounded memory:
//!
//! - count, positives, observed CTR;
//! - mean log loss, and **normalized entropy** `NE = logloss / H(ctr)`, `H(q) = -q ln q -
//!   (1-q) ln(1-q)`: the loss relative to always predicting the observed base rate (1.0 is
//!   no better than the base rate, lower is better);
//! - **calibration** `= mean prediction / observed CTR` (1.0 is calibrated);
//! - **AUC**, from a histogram of predictions (below);
//! - when a reference probability is given (the generator's ground truth), the reference
//!   (Bayes-optimal) log loss over the examples that had one: the floor to compare with.
//!
//! The same metrics are kept over a sliding window of the last `W` examples (default
//! 100 000), in the order their labels became final. Labels made final by the end of the
//! input ([`Progressive::observe_label`]) count overall but not in the window: they are
//! the expiries of the last attribution window, all negatives, whose positives were final
//! before them, and the window would read them as a falling click rate.
//!
//! # AUC with bounded memory
//!
//! Predictions are counted into bins, positives and negatives separately, and the AUC is the
//! Mann–Whitney statistic over bins: a positive beats every negative in a lower bin and half
//! of the negatives in its own bin. Pairs in different bins are therefore counted exactly;
//! only a positive–negative pair sharing a bin can be off, by at most ½. Hence
//!
//! ```text
//! |AUC_binned − AUC_exact| ≤ ½ · Σ_b pos_b · neg_b / (P · N)
//! ```
//!
//! which [`Summary::auc_max_error`] reports from the histogram itself.
//!
//! Bins are laid on `min(p, 1-p)` on a log scale, read straight off the `f32` bit pattern
//! (exponent and top mantissa bits, so monotonic in `p`, with no logarithm): CTR predictions
//! crowd near 0, where uniform bins over `p` would lump them together. The overall
//! histogram has 2^11 bins per factor of two of `min(p, 1-p)` over 32 factors of two
//! (`2^-33 ≤ min(p, 1-p) ≤ ½`, 2^17 bins, 2 MiB), so a bin spans 0.05 % of its `p`; the
//! window's histograms have 2^7 bins per factor of two (0.8 %, 8 192 bins). Predictions
//! closer to 0 or 1 than `2^-33` share the end bins.
//!
//! # Window
//!
//! The window is a ring of `K` slices (default 10) of `⌈W/K⌉` examples each; the window
//! metrics cover the full slices plus the one being filled, i.e. between `W·(K-1)/K` and `W`
//! examples. When a slice is recycled its counts are subtracted from the window histogram,
//! which costs O(bins) once per `W/K` examples: amortized O(1).
//!
//! # Merging
//!
//! [`Progressive::merge`] combines per-worker accumulators. The overall metrics merge
//! exactly (sums and histograms add). The windows merge approximately: slices are added
//! by age (newest to newest), so the merged window covers the last ~`W` examples of *each*
//! worker rather than the last `W` of the merged stream.

use serde::{Deserialize, Serialize};

use crate::model::logistic::{entropy, logloss};

/// Default window length in examples.
pub const DEFAULT_WINDOW: usize = 100_000;

/// Default number of slices the window is kept in.
pub const DEFAULT_SLICES: usize = 10;

/// `f32` bits of `2^-33`, the smallest `min(p, 1-p)` with a bin of its own.
const MIN_BITS: u32 = (127 - 33) << 23;

/// Factors of two of `min(p, 1-p)` the histograms cover: `2^-33 ..= 2^-1`.
const BINADES: usize = 32;

/// Mantissa bits dropped by the overall histogram: 2^(23-12) = 2048 bins per binade.
const OVERALL_SHIFT: u32 = 12;

/// Mantissa bits dropped by the window histograms: 128 bins per binade.
const WINDOW_SHIFT: u32 = 16;

/// A histogram of predictions, `[negatives, positives]` per bin, bins increasing in `p`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Histogram {
    shift: u32,
    #[serde(with = "sparse_bins")]
    bins: Box<[[u64; 2]]>,
}

/// Histograms are checkpointed as their non-empty bins: most of the 2^17 are empty.
mod sparse_bins {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(bins: &[[u64; 2]], s: S) -> Result<S::Ok, S::Error> {
        let nonzero: Vec<(u32, [u64; 2])> = bins
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != [0, 0])
            .map(|(i, b)| (i as u32, *b))
            .collect();
        (bins.len() as u32, nonzero).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Box<[[u64; 2]]>, D::Error> {
        let (len, nonzero) = <(u32, Vec<(u32, [u64; 2])>)>::deserialize(d)?;
        let mut bins = vec![[0u64; 2]; len as usize].into_boxed_slice();
        for (i, b) in nonzero {
            let slot = bins
                .get_mut(i as usize)
                .ok_or_else(|| serde::de::Error::custom(format!("bin {i} out of {len}")))?;
            *slot = b;
        }
        Ok(bins)
    }
}

impl Histogram {
    fn new(shift: u32) -> Self {
        let half = BINADES << (23 - shift);
        Self {
            shift,
            bins: vec![[0u64; 2]; 2 * half].into_boxed_slice(),
        }
    }

    /// The bin of `p`, which must be in `[0, 1]` (not NaN).
    #[inline(always)]
    fn bin(&self, p: f32) -> usize {
        let half = self.bins.len() / 2;
        let upper = p > 0.5;
        let q = if upper { 1.0 - p } else { p };
        let bits = if q > 0.0 { q.to_bits() } else { 0 };
        let b = ((bits.saturating_sub(MIN_BITS) >> self.shift) as usize).min(half - 1);
        if upper { 2 * half - 1 - b } else { b }
    }

    #[inline(always)]
    fn add(&mut self, p: f32, positive: bool) {
        let b = self.bin(p);
        self.bins[b][usize::from(positive)] += 1;
    }

    fn add_all(&mut self, other: &Histogram) {
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            a[0] += b[0];
            a[1] += b[1];
        }
    }

    fn subtract_all(&mut self, other: &Histogram) {
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            a[0] -= b[0];
            a[1] -= b[1];
        }
    }

    fn clear(&mut self) {
        self.bins.fill([0, 0]);
    }

    /// `(auc, max_error)`, or `None` without both classes.
    fn auc(&self) -> Option<(f64, f64)> {
        // Twice the Mann–Whitney count, and twice the count of same-bin pairs, exactly.
        let (mut wins2, mut ties, mut neg_below) = (0u128, 0u128, 0u128);
        let (mut negatives, mut positives) = (0u128, 0u128);
        for &[neg, pos] in self.bins.iter() {
            let (neg, pos) = (u128::from(neg), u128::from(pos));
            wins2 += pos * (2 * neg_below + neg);
            ties += pos * neg;
            neg_below += neg;
            negatives += neg;
            positives += pos;
        }
        let pairs = positives * negatives;
        (pairs > 0).then(|| {
            let pairs = pairs as f64;
            (wins2 as f64 / (2.0 * pairs), ties as f64 / (2.0 * pairs))
        })
    }
}

/// Scalar sums over a set of examples.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Totals {
    count: u64,
    positives: u64,
    sum_p: f64,
    sum_logloss: f64,
    reference_count: u64,
    reference_sum_logloss: f64,
}

impl Totals {
    #[inline(always)]
    fn add(&mut self, p: f32, positive: bool, loss: f64, reference_loss: Option<f64>) {
        self.count += 1;
        self.positives += u64::from(positive);
        self.sum_p += f64::from(p);
        self.sum_logloss += loss;
        if let Some(r) = reference_loss {
            self.reference_count += 1;
            self.reference_sum_logloss += r;
        }
    }

    fn merge(&mut self, o: &Totals) {
        self.count += o.count;
        self.positives += o.positives;
        self.sum_p += o.sum_p;
        self.sum_logloss += o.sum_logloss;
        self.reference_count += o.reference_count;
        self.reference_sum_logloss += o.reference_sum_logloss;
    }

    fn summary(&self, histogram: &Histogram) -> Summary {
        let n = self.count as f64;
        let some = |v: f64| (self.count > 0).then_some(v);
        let ctr = self.positives as f64 / n;
        let logloss = self.sum_logloss / n;
        let h = entropy(ctr);
        let auc = histogram.auc();
        Summary {
            count: self.count,
            positives: self.positives,
            ctr: some(ctr),
            mean_prediction: some(self.sum_p / n),
            logloss: some(logloss),
            normalized_entropy: (self.count > 0 && h > 0.0).then(|| logloss / h),
            calibration: (self.positives > 0).then(|| self.sum_p / self.positives as f64),
            auc: auc.map(|a| a.0),
            auc_max_error: auc.map(|a| a.1),
            reference_count: self.reference_count,
            reference_logloss: (self.reference_count > 0)
                .then(|| self.reference_sum_logloss / self.reference_count as f64),
        }
    }
}

/// Progressive-validation metrics over a set of examples (all so far, or the window).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Examples observed.
    pub count: u64,
    /// Positive examples observed.
    pub positives: u64,
    /// Observed click-through rate, `positives / count`.
    pub ctr: Option<f64>,
    /// Mean predicted probability.
    pub mean_prediction: Option<f64>,
    /// Mean log loss in nats, predictions clamped to `[1e-7, 1 - 1e-7]`.
    pub logloss: Option<f64>,
    /// `logloss / H(ctr)`: 1.0 is no better than predicting the base rate; lower is better.
    /// `None` while all labels are equal.
    pub normalized_entropy: Option<f64>,
    /// `mean_prediction / ctr`: 1.0 is calibrated, above 1 over-predicts. `None` without
    /// positives.
    pub calibration: Option<f64>,
    /// Area under the ROC curve, from the prediction histogram. `None` without both classes.
    pub auc: Option<f64>,
    /// Upper bound on `|auc - exact AUC|`: half the fraction of positive–negative pairs
    /// sharing a histogram bin.
    pub auc_max_error: Option<f64>,
    /// Examples that came with a reference (true) probability.
    pub reference_count: u64,
    /// Mean log loss of the reference probabilities over those examples: the Bayes-optimal
    /// floor when the reference is the ground truth.
    pub reference_logloss: Option<f64>,
}

/// Progressive-validation accumulator: overall and sliding-window metrics. See the module
/// doc. Serializable, for checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progressive {
    overall: Totals,
    overall_hist: Histogram,
    /// Per-slice totals and histograms of the window ring.
    slices: Vec<(Totals, Histogram)>,
    /// Sum of the slices' histograms.
    window_hist: Histogram,
    /// Slice being filled.
    current: usize,
    /// Examples per slice.
    slice_len: u64,
}

impl Default for Progressive {
    fn default() -> Self {
        Self::new()
    }
}

impl Progressive {
    /// An empty accumulator with the default window ([`DEFAULT_WINDOW`] examples in
    /// [`DEFAULT_SLICES`] slices).
    pub fn new() -> Self {
        Self::with_window(DEFAULT_WINDOW, DEFAULT_SLICES)
    }

    /// An empty accumulator whose window covers the last `window` examples in `slices`
    /// slices. Both are raised to at least 1, and `slices` is capped at `window`.
    pub fn with_window(window: usize, slices: usize) -> Self {
        let window = window.max(1);
        let slices = slices.clamp(1, window);
        Self {
            overall: Totals::default(),
            overall_hist: Histogram::new(OVERALL_SHIFT),
            slices: (0..slices)
                .map(|_| (Totals::default(), Histogram::new(WINDOW_SHIFT)))
                .collect(),
            window_hist: Histogram::new(WINDOW_SHIFT),
            current: 0,
            slice_len: window.div_ceil(slices) as u64,
        }
    }

    /// Records one example: the probability `p` served for it, its label, and optionally
    /// the reference probability `p_true`. O(1), no allocation. A NaN `p` counts as 0.5 and
    /// out-of-range values are clamped to `[0, 1]`.
    #[inline]
    pub fn observe(&mut self, p: f32, positive: bool, reference: Option<f32>) {
        let (p, loss, reference_loss) = self.add_overall(p, positive, reference);
        if self.slices[self.current].0.count >= self.slice_len {
            self.rotate();
        }
        let (totals, hist) = &mut self.slices[self.current];
        totals.add(p, positive, loss, reference_loss);
        hist.add(p, positive);
        self.window_hist.add(p, positive);
    }

    /// [`observe`](Self::observe) for a label of the join: one the end of the input made
    /// final (`Example::at_input_end`) counts in the overall metrics only, not the window.
    pub fn observe_label(
        &mut self,
        p: f32,
        positive: bool,
        reference: Option<f32>,
        at_input_end: bool,
    ) {
        if at_input_end {
            self.add_overall(p, positive, reference);
        } else {
            self.observe(p, positive, reference);
        }
    }

    /// Adds an example to the overall metrics; returns the clamped `p`, its loss and the
    /// reference's, for the window.
    #[inline]
    fn add_overall(
        &mut self,
        p: f32,
        positive: bool,
        reference: Option<f32>,
    ) -> (f32, f64, Option<f64>) {
        let p = if p.is_nan() { 0.5 } else { p.clamp(0.0, 1.0) };
        let loss = logloss(f64::from(p), positive);
        let reference_loss = reference.map(|r| logloss(f64::from(r), positive));
        self.overall.add(p, positive, loss, reference_loss);
        self.overall_hist.add(p, positive);
        (p, loss, reference_loss)
    }

    /// Moves to the next slice, dropping its old contents from the window.
    #[cold]
    fn rotate(&mut self) {
        self.current = (self.current + 1) % self.slices.len();
        let (totals, hist) = &mut self.slices[self.current];
        self.window_hist.subtract_all(hist);
        hist.clear();
        *totals = Totals::default();
    }

    /// Examples observed so far.
    pub fn count(&self) -> u64 {
        self.overall.count
    }

    /// Metrics over every example observed (and merged).
    pub fn summary(&self) -> Summary {
        self.overall.summary(&self.overall_hist)
    }

    /// Metrics over the sliding window.
    pub fn window_summary(&self) -> Summary {
        let mut totals = Totals::default();
        for (t, _) in &self.slices {
            totals.merge(t);
        }
        totals.summary(&self.window_hist)
    }

    /// Adds `other`'s examples to this accumulator: exactly for the overall metrics,
    /// approximately for the window (see the module doc).
    pub fn merge(&mut self, other: &Self) {
        self.overall.merge(&other.overall);
        self.overall_hist.add_all(&other.overall_hist);
        let (mine, theirs) = (self.slices.len(), other.slices.len());
        for age in 0..mine.min(theirs) {
            let (t, h) = &mut self.slices[(self.current + mine - age) % mine];
            let (ot, oh) = &other.slices[(other.current + theirs - age) % theirs];
            t.merge(ot);
            h.add_all(oh);
        }
        self.window_hist.clear();
        for (_, h) in &self.slices {
            self.window_hist.add_all(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    /// Mann–Whitney AUC by sorting, ties counted as half.
    fn exact_auc(data: &[(f32, bool)]) -> f64 {
        let mut sorted = data.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut wins2, mut neg_below, mut i) = (0u128, 0u128, 0);
        let (mut pos_total, mut neg_total) = (0u128, 0u128);
        while i < sorted.len() {
            let mut j = i;
            let (mut pos, mut neg) = (0u128, 0u128);
            while j < sorted.len() && sorted[j].0 == sorted[i].0 {
                if sorted[j].1 {
                    pos += 1
                } else {
                    neg += 1
                }
                j += 1;
            }
            wins2 += pos * (2 * neg_below + neg);
            neg_below += neg;
            pos_total += pos;
            neg_total += neg;
            i = j;
        }
        wins2 as f64 / (2.0 * (pos_total * neg_total) as f64)
    }

    #[test]
    fn empty() {
        let s = Progressive::new().summary();
        assert_eq!(s.count, 0);
        assert_eq!(
            (s.logloss, s.auc, s.normalized_entropy, s.calibration),
            (None, None, None, None)
        );
        // Serializes (no NaN anywhere).
        assert!(serde_json::to_string(&s).unwrap().contains("\"auc\":null"));
    }

    #[test]
    fn constant_predictions() {
        let mut m = Progressive::new();
        for i in 0..1000 {
            m.observe(0.5, i % 4 == 0, None);
        }
        let s = m.summary();
        assert_eq!((s.count, s.positives), (1000, 250));
        assert!(close(s.auc, 0.5));
        assert!(close(s.logloss, std::f64::consts::LN_2));
        assert!(close(s.calibration, 0.5 / 0.25));
        assert!(close(s.auc_max_error, 0.5)); // every pair is a tie
    }

    #[test]
    fn base_rate_prediction_has_ne_one() {
        let mut m = Progressive::new();
        for i in 0..1000 {
            m.observe(0.1, i % 10 == 0, None);
        }
        let s = m.summary();
        assert!((s.normalized_entropy.unwrap() - 1.0).abs() < 1e-6, "{s:?}");
        assert!((s.calibration.unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn perfect_and_reversed_ranking() {
        let mut perfect = Progressive::new();
        let mut reversed = Progressive::new();
        for i in 0..1000 {
            let y = i % 3 == 0;
            perfect.observe(if y { 0.03 } else { 0.0299 }, y, None);
            reversed.observe(if y { 0.0299 } else { 0.03 }, y, None);
        }
        assert!(close(perfect.summary().auc, 1.0));
        assert!(close(perfect.summary().auc_max_error, 0.0));
        assert!(close(reversed.summary().auc, 0.0));
    }

    #[test]
    fn labels_of_the_input_end_count_overall_not_in_the_window() {
        let mut m = Progressive::with_window(100, 4);
        for i in 0..1000 {
            m.observe(0.1, i % 10 == 0, Some(0.1));
        }
        // The end of the input closes the last windows: 60 negatives at once.
        for _ in 0..60 {
            m.observe_label(0.1, false, Some(0.1), true);
        }
        let (all, window) = (m.summary(), m.window_summary());
        assert_eq!(
            (all.count, all.positives, all.reference_count),
            (1060, 100, 1060)
        );
        assert_eq!((window.count, window.positives), (100, 10));
        assert!(
            (window.calibration.unwrap() - 1.0).abs() < 1e-6,
            "{window:?}"
        );
        assert!(all.calibration.unwrap() > 1.05, "{all:?}");
    }

    #[test]
    fn reference_logloss() {
        let mut m = Progressive::new();
        m.observe(0.5, true, Some(0.25));
        m.observe(0.5, false, None);
        let s = m.summary();
        assert_eq!(s.reference_count, 1);
        assert!(close(s.reference_logloss, -(0.25f64.ln())));
    }

    #[test]
    fn auc_within_stated_bound_of_exact() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut data = Vec::new();
        for _ in 0..200_000 {
            // CTR-like: logits around -3.5, with signal.
            let y = rng.random_bool(0.04);
            let logit = -3.5 + if y { 0.8 } else { 0.0 } + 1.5 * (rng.random::<f32>() - 0.5) * 2.0;
            data.push((1.0 / (1.0 + (-logit).exp()), y));
        }
        // Also coarse predictions with many exact ties, and extremes.
        for k in 0..20_000 {
            let p = (k % 100) as f32 / 100.0;
            data.push((p, rng.random_bool(f64::from(p).clamp(0.01, 0.99))));
        }
        data.push((1e-20, false));
        data.push((1.0, true));
        let mut m = Progressive::new();
        for &(p, y) in &data {
            m.observe(p, y, None);
        }
        let s = m.summary();
        let exact = exact_auc(&data);
        let (auc, bound) = (s.auc.unwrap(), s.auc_max_error.unwrap());
        assert!(
            (auc - exact).abs() <= bound + 1e-12,
            "{auc} vs {exact}, bound {bound}"
        );
        assert!(bound < 1e-3, "bound {bound}");
        // Coarse predictions alone: every distinct value has its own bin, so exact.
        let coarse = &data[200_000..220_000];
        let mut m = Progressive::new();
        for &(p, y) in coarse {
            m.observe(p, y, None);
        }
        assert!((m.summary().auc.unwrap() - exact_auc(coarse)).abs() < 1e-12);
    }

    #[test]
    fn window_follows_recent_examples() {
        let mut m = Progressive::with_window(1000, 10);
        for i in 0..4000 {
            let y = i % 5 == 0;
            m.observe(if y { 0.9 } else { 0.1 }, y, None);
        }
        for i in 0..1000 {
            let y = i % 5 == 0;
            m.observe(if y { 0.1 } else { 0.9 }, y, None);
        }
        let w = m.window_summary();
        assert!((900..=1000).contains(&w.count), "{}", w.count);
        assert!(close(w.auc, 0.0), "{w:?}");
        assert!(close(w.ctr, 0.2));
        let s = m.summary();
        assert_eq!(s.count, 5000);
        assert!(close(s.auc, 0.8));
    }

    #[test]
    fn merge_overall_is_exact() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut whole = Progressive::with_window(500, 5);
        let mut parts = [
            Progressive::with_window(500, 5),
            Progressive::with_window(500, 5),
        ];
        for i in 0..10_000 {
            let p: f32 = rng.random();
            let y = rng.random_bool(f64::from(p));
            whole.observe(p, y, Some(p));
            parts[i % 2].observe(p, y, Some(p));
        }
        let [mut a, b] = parts;
        a.merge(&b);
        let (s, t) = (whole.summary(), a.summary());
        assert_eq!(
            (s.count, s.positives, s.reference_count),
            (t.count, t.positives, t.reference_count)
        );
        assert_eq!(s.auc, t.auc);
        assert!((s.logloss.unwrap() - t.logloss.unwrap()).abs() < 1e-9);
        // Windows merge by age: about 500 examples from each part.
        let w = a.window_summary();
        assert!((800..=1000).contains(&w.count), "{}", w.count);
    }
}
