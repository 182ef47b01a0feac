//! ADWIN (Bifet & Gavaldà 2007, "Learning from time-changing data with adaptive
//! windowing"): an adaptive window over a real-valued stream that drops its older part as
//! soon as the two parts' means differ more than chance allows.
//!
//! # Memory: exponential histogram
//!
//! The window is kept as buckets of `2^i` items (row `i`), at most `max_buckets` per row;
//! when a row overflows, its two oldest buckets merge into one of the next row. Each
//! bucket keeps its sum and its sum of squared deviations (merged exactly, Chan et al.),
//! so a window of `W` items takes `O(max_buckets · log W)` memory and a check for a cut
//! `O(max_buckets · log W)` time. A cut is checked only every `clock` items (ADWIN2).
//!
//! # The cut and the false-alarm budget
//!
//! For a split of the window into an older part of `n0` items and a newer one of `n1`,
//! with `m = 1/n0 + 1/n1`, window variance `σ²`, `δ' = δ / ln W` and `R` the range of the
//! values, the means differ by chance more than
//!
//! ```text
//! ε = sqrt(2 m σ² ln(2/δ')) + (2/3) R m ln(2/δ')
//! ```
//!
//! with probability at most `δ'` (Bernstein's inequality, as in the paper's ADWIN2 and
//! MOA, which assume values in `[0, 1]`, so `R = 1`; losses are not, and a heavy tail
//! without the `R` makes short older parts cut: `R` here is the range seen so far), so on a stationary stream each check cuts wrongly with probability at most `δ`.
//! With a check every `clock` items, at most one false cut per `N` items on average
//! needs `δ = clock / N`: [`Adwin::for_budget`] sets it so.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One bucket: `2^row` items summarized.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Bucket {
    sum: f64,
    /// Sum of squared deviations from the bucket's mean.
    m2: f64,
}

/// A change ADWIN found: the window was cut between an older and a newer part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    /// Mean of the dropped, older part.
    pub old_mean: f64,
    /// Mean of the newer part that remains.
    pub new_mean: f64,
    /// The difference chance allowed at this split.
    pub epsilon: f64,
    /// Items dropped.
    pub dropped: u64,
}

/// An ADWIN2 detector; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    delta: f64,
    max_buckets: usize,
    clock: u32,
    min_side: u64,
    /// `rows[i]` holds buckets of `2^i` items, newest first.
    rows: Vec<VecDeque<Bucket>>,
    width: u64,
    sum: f64,
    m2: f64,
    ticks: u32,
    /// Smallest and largest value seen.
    low: f64,
    high: f64,
}

impl Adwin {
    /// A detector that checks every `clock` items and cuts wrongly with probability at
    /// most `delta` per check.
    pub fn new(delta: f64, max_buckets: usize, clock: u32) -> Self {
        Self {
            delta,
            max_buckets: max_buckets.max(2),
            clock: clock.max(1),
            min_side: 32,
            rows: Vec::new(),
            width: 0,
            sum: 0.0,
            m2: 0.0,
            ticks: 0,
            low: f64::INFINITY,
            high: f64::NEG_INFINITY,
        }
    }

    /// A detector with at most one false cut per `every` items on a stationary stream (on
    /// average): `δ = clock / every`.
    pub fn for_budget(every: u64, max_buckets: usize, clock: u32) -> Self {
        let delta = (f64::from(clock.max(1)) / every.max(1) as f64).min(0.5);
        Self::new(delta, max_buckets, clock)
    }

    /// The confidence parameter in use.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// Items in the window.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Mean of the window (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.width == 0 {
            0.0
        } else {
            self.sum / self.width as f64
        }
    }

    /// Buckets held: `O(max_buckets · log width)`.
    pub fn buckets(&self) -> usize {
        self.rows.iter().map(VecDeque::len).sum()
    }

    /// Adds `x`; returns the cut if the window was cut (the last one, when several).
    pub fn insert(&mut self, x: f64) -> Option<Cut> {
        if self.width > 0 {
            // `(x - mean)² · n / (n + 1)` with `mean = sum / n`, in one division.
            let n = self.width as f64;
            let d = x * n - self.sum;
            self.m2 += d * d / (n * (n + 1.0));
        }
        self.width += 1;
        self.sum += x;
        self.low = self.low.min(x);
        self.high = self.high.max(x);
        if self.rows.is_empty() {
            self.rows
                .push(VecDeque::with_capacity(self.max_buckets + 1));
        }
        self.rows[0].push_front(Bucket { sum: x, m2: 0.0 });
        self.compress();
        self.ticks += 1;
        if self.ticks < self.clock {
            return None;
        }
        self.ticks = 0;
        let mut last = None;
        while let Some(cut) = self.find_cut() {
            last = Some(cut);
        }
        last
    }

    fn compress(&mut self) {
        let mut row = 0;
        while row < self.rows.len() && self.rows[row].len() > self.max_buckets {
            let (Some(older), Some(newer)) = (self.rows[row].pop_back(), self.rows[row].pop_back())
            else {
                break;
            };
            // Chan et al.'s `d² n / 2` with `d = (s_old - s_new) / n`: `n` is a power of
            // two, so scaling by it is exact and this is `(s_old - s_new)² / 2n` to the last
            // bit, without the two divisions (about one merge per insert).
            let half_inverse = 0.5 / (1u64 << row) as f64;
            let diff = older.sum - newer.sum;
            let merged = Bucket {
                sum: older.sum + newer.sum,
                m2: older.m2 + newer.m2 + diff * diff * half_inverse,
            };
            if row + 1 == self.rows.len() {
                self.rows
                    .push(VecDeque::with_capacity(self.max_buckets + 1));
            }
            self.rows[row + 1].push_front(merged);
            row += 1;
        }
    }

    /// Looks for a split whose means differ beyond chance; drops the oldest bucket if so.
    fn find_cut(&mut self) -> Option<Cut> {
        if self.width < 2 * self.min_side {
            return None;
        }
        let total = self.width as f64;
        let variance = self.m2 / total;
        let ln_term = (2.0 * total.ln().max(1.0) / self.delta).ln();
        let range = (self.high - self.low).max(f64::MIN_POSITIVE);
        // The test `|u0 - u1| > ε` multiplied through by `n0·n1` (with `m = W / (n0·n1)`):
        // `|s0·n1 - s1·n0| - (2/3)·R·W·ln > sqrt(2·W·σ²·ln · n0·n1)`, squared. No division
        // and no square root per bucket: the scan is most of an insert's cost.
        let spread = 2.0 * total * variance * ln_term;
        let bias = 2.0 / 3.0 * range * total * ln_term;
        let mut n0 = 0u64;
        let mut s0 = 0.0;
        // Oldest first: highest row, from its back.
        for (row, buckets) in self.rows.iter().enumerate().rev() {
            for b in buckets.iter().rev() {
                n0 += 1u64 << row;
                s0 += b.sum;
                let n1 = self.width - n0;
                if n1 < self.min_side {
                    return None;
                }
                if n0 < self.min_side {
                    continue;
                }
                let (f0, f1) = (n0 as f64, n1 as f64);
                let excess = (s0 * f1 - (self.sum - s0) * f0).abs() - bias;
                if excess <= 0.0 || excess * excess <= spread * f0 * f1 {
                    continue;
                }
                let (u0, u1) = (s0 / f0, (self.sum - s0) / f1);
                let m = 1.0 / f0 + 1.0 / f1;
                let epsilon =
                    (2.0 * m * variance * ln_term).sqrt() + 2.0 / 3.0 * range * m * ln_term;
                let dropped = self.drop_oldest();
                return Some(Cut {
                    old_mean: u0,
                    new_mean: u1,
                    epsilon,
                    dropped,
                });
            }
        }
        None
    }

    fn drop_oldest(&mut self) -> u64 {
        let Some(row) = self.rows.iter().rposition(|r| !r.is_empty()) else {
            return 0;
        };
        let Some(b) = self.rows[row].pop_back() else {
            return 0;
        };
        let n = (1u64 << row) as f64;
        self.width -= 1u64 << row;
        self.sum -= b.sum;
        let rest = self.width as f64;
        if rest > 0.0 {
            let d = b.sum / n - self.sum / rest;
            self.m2 = (self.m2 - b.m2 - d * d * n * rest / (n + rest)).max(0.0);
        } else {
            self.m2 = 0.0;
        }
        if self.rows[row].is_empty() && row + 1 == self.rows.len() {
            self.rows.pop();
        }
        1u64 << row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn detects_a_mean_shift_soon_after_it_and_not_before() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut adwin = Adwin::for_budget(10_000_000, 5, 32);
        let mut found = None;
        for i in 0..40_000u64 {
            let mean = if i < 20_000 { 0.2 } else { 0.4 };
            let x = f64::from(u8::from(rng.random_bool(mean)));
            if let Some(cut) = adwin.insert(x) {
                assert!(i >= 20_000, "false cut at {i}: {cut:?}");
                assert!(cut.new_mean > cut.old_mean);
                found = Some(i);
                break;
            }
        }
        let at = found.expect("the shift is found");
        assert!(at < 21_000, "found {} items after the shift", at - 20_000);
    }

    #[test]
    fn merging_by_the_exact_reciprocal_is_the_textbook_formula_to_the_bit() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100_000 {
            let row = rng.random_range(0..40u32);
            let n = (1u64 << row) as f64;
            let scale = 10f64.powi(rng.random_range(-3..8));
            let (a, b) = (
                rng.random::<f64>() * scale * n,
                rng.random::<f64>() * scale * n,
            );
            let d = a / n - b / n;
            let textbook = d * d * n / 2.0;
            let diff = a - b;
            let ours = diff * diff * (0.5 / n);
            assert_eq!(textbook.to_bits(), ours.to_bits(), "{a} {b} {row}");
        }
    }

    #[test]
    fn memory_is_logarithmic_in_the_window() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut adwin = Adwin::for_budget(10_000_000, 5, 32);
        for _ in 0..1_000_000 {
            assert!(adwin.insert(rng.random::<f64>()).is_none());
        }
        assert_eq!(adwin.width(), 1_000_000);
        // log2(1e6) ≈ 20 rows of at most 5 buckets.
        assert!(adwin.buckets() <= 5 * 20, "{} buckets", adwin.buckets());
        assert!((adwin.mean() - 0.5).abs() < 0.01);
    }

    #[test]
    fn window_statistics_survive_merges_and_drops() {
        let mut adwin = Adwin::new(0.01, 2, 1);
        let mut values = VecDeque::new();
        for i in 0..1000u32 {
            let x = f64::from(i % 7);
            values.push_back(x);
            if let Some(cut) = adwin.insert(x) {
                for _ in 0..cut.dropped {
                    values.pop_front();
                }
            }
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let m2: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        assert_eq!(adwin.width(), values.len() as u64);
        assert!((adwin.mean() - mean).abs() < 1e-9);
        assert!((adwin.m2 - m2).abs() < 1e-6 * m2.max(1.0));
    }
}
