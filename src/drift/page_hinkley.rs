//! The Page-Hinkley test (Page 1954; Hinkley 1971) for a rise in the mean of a stream.
//!
//! `m_t = Σ (x_i - x̄_i - δ)` with `x̄_i` the running mean, `M_t = min m_t`; an alarm when
//! `m_t - M_t > λ`. `δ` is the rise too small to matter (half the smallest rise worth an
//! alarm), `λ` the evidence needed.
//!
//! # λ from a false-alarm budget
//!
//! On a stationary stream with variance `σ²`, `m_t` is a random walk with drift `-δ`; the
//! mean number of items before it first climbs `λ` above its minimum (the average run
//! length, ARL) is, by Wald's/Siegmund's approximation for CUSUM,
//!
//! ```text
//! ARL(λ) ≈ (e^{a} - 1 - a) / (2δ²/σ²),   a = 2δλ/σ²
//! ```
//!
//! For "at most one false alarm per `N` items", solve `ARL(λ) = N` for `λ` (by bisection;
//! `ARL` grows with `λ`). `σ²` is not known in advance: it is estimated over the first
//! `warmup` items, during which the test does not alarm, and then again every `warmup`
//! items over all items since the last alarm (never below the first estimate).

use serde::{Deserialize, Serialize};

/// A one-sided Page-Hinkley test for an increase; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    delta: f64,
    budget: u64,
    warmup: u64,
    lambda: Option<f64>,
    /// The first estimate of `λ`: later ones may rise above it, never fall below (a stream
    /// gone flat, such as a loss while feedback is missing, would otherwise make any
    /// wobble an alarm).
    #[serde(default)]
    floor: f64,
    n: u64,
    mean: f64,
    m2: f64,
    cumulative: f64,
    minimum: f64,
}

/// An alarm: the statistic and the threshold it crossed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alarm {
    /// `m_t - M_t`.
    pub statistic: f64,
    /// `λ`.
    pub lambda: f64,
    /// Running mean before the alarm.
    pub mean: f64,
}

/// Solves `ARL(λ) = every` for `λ` (see the module docs).
pub fn lambda_for_budget(sigma2: f64, delta: f64, every: u64) -> f64 {
    let sigma2 = sigma2.max(1e-12);
    let delta = delta.max(1e-12);
    let arl = |lambda: f64| {
        let a = 2.0 * delta * lambda / sigma2;
        (a.exp() - 1.0 - a) / (2.0 * delta * delta / sigma2)
    };
    let target = every.max(2) as f64;
    let (mut lo, mut hi) = (0.0, sigma2 / delta);
    while arl(hi) < target {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if arl(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

impl PageHinkley {
    /// A test ignoring rises below `2 delta`, estimating `σ²` over `warmup` items, and then
    /// raising at most one false alarm per `every` items on average.
    pub fn new(delta: f64, warmup: u64, every: u64) -> Self {
        Self {
            delta,
            budget: every,
            warmup: warmup.max(2),
            lambda: None,
            floor: 0.0,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
        }
    }

    /// The threshold, once the warm-up has estimated the variance.
    pub fn lambda(&self) -> Option<f64> {
        self.lambda
    }

    /// Running mean since the last alarm.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The statistic `m_t - M_t` compared with `λ` (for metrics and reports).
    pub fn statistic(&self) -> f64 {
        self.cumulative - self.minimum
    }

    /// Adds `x`; an alarm restarts the test (keeping `λ`).
    pub fn insert(&mut self, x: f64) -> Option<Alarm> {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.cumulative += x - self.mean - self.delta;
        self.minimum = self.minimum.min(self.cumulative);
        let lambda = match self.lambda {
            // The variance keeps being estimated (over everything since the last alarm),
            // and λ follows it: a stream whose spread changes after the first items
            // (a daily cycle, a model still settling) keeps its false-alarm budget.
            Some(_) if self.n.is_multiple_of(self.warmup) => {
                let sigma2 = self.m2 / (self.n - 1) as f64;
                let l = lambda_for_budget(sigma2, self.delta, self.budget).max(self.floor);
                self.lambda = Some(l);
                l
            }
            Some(l) => l,
            None if self.n >= self.warmup => {
                let sigma2 = self.m2 / (self.n - 1) as f64;
                let l = lambda_for_budget(sigma2, self.delta, self.budget);
                self.lambda = Some(l);
                self.floor = l;
                // Start the evidence afresh with the estimated scale.
                self.cumulative = 0.0;
                self.minimum = 0.0;
                l
            }
            None => return None,
        };
        let statistic = self.cumulative - self.minimum;
        if statistic > lambda {
            let alarm = Alarm {
                statistic,
                lambda,
                mean: self.mean,
            };
            self.n = 0;
            self.mean = 0.0;
            self.m2 = 0.0;
            self.cumulative = 0.0;
            self.minimum = 0.0;
            return Some(alarm);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn lambda_meets_its_budget() {
        let l = lambda_for_budget(0.25, 0.005, 10_000_000);
        let a = 2.0 * 0.005 * l / 0.25;
        let arl = (a.exp() - 1.0 - a) / (2.0 * 0.005 * 0.005 / 0.25);
        assert!((arl / 1e7 - 1.0).abs() < 1e-6, "{arl}");
        assert!(lambda_for_budget(0.25, 0.005, 100_000_000) > l);
    }

    #[test]
    fn detects_a_rise_and_ignores_a_stationary_stream() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut ph = PageHinkley::new(0.01, 5000, 10_000_000);
        for i in 0..200_000 {
            let x: f64 = rng.random::<f64>();
            assert!(ph.insert(x).is_none(), "false alarm at {i}");
        }
        let mut at = None;
        for i in 0..20_000 {
            let x: f64 = rng.random::<f64>() + 0.1;
            if ph.insert(x).is_some() {
                at = Some(i);
                break;
            }
        }
        let at = at.expect("the rise is found");
        assert!(at < 5000, "found {at} items after the rise");
    }

    #[test]
    fn a_stream_gone_flat_keeps_its_threshold() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut ph = PageHinkley::new(0.005, 5000, 100_000_000);
        for _ in 0..20_000 {
            assert!(ph.insert(rng.random::<f64>()).is_none());
        }
        let first = ph.lambda().unwrap();
        // Nearly constant, with a blip barely above delta: too little evidence at the
        // scale the stream had (a threshold from the flat part alone would be ~0).
        for i in 0..50_000 {
            let blip = if (25_000..27_000).contains(&i) {
                0.006
            } else {
                0.0
            };
            let x = 0.5 + blip + 1e-4 * rng.random::<f64>();
            assert!(ph.insert(x).is_none(), "alarm at {i}");
        }
        assert!(
            ph.lambda().unwrap() > first / 2.0,
            "{:?} {first}",
            ph.lambda()
        );
    }

    #[test]
    fn a_fall_is_not_an_alarm() {
        let mut ph = PageHinkley::new(0.01, 1000, 1_000_000);
        for i in 0..50_000 {
            let x = if i < 10_000 { 1.0 } else { 0.0 };
            assert!(ph.insert(x).is_none());
        }
    }
}
