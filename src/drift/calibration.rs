//! Calibration drift: over a sliding window of labelled examples, the ratio of the mean
//! served score to the observed click rate leaves a band.
//!
//! The band (`lower..upper`) says how much miscalibration matters; chance must not be what
//! takes the ratio out of it. With `Σp` predicted and `Σy` observed clicks in the window,
//! a calibrated model gives `Σy ≈ Σp ± sqrt(Σ p(1-p))`, so the ratio also has to be
//! significant: `|Σp - Σy| / sqrt(Σ p(1-p)) > z_{1-α/2}`, with `α` from the false-alarm
//! budget (one evaluation per slice). The episode clears when the ratio is back inside the
//! band shrunk towards 1 by `clear_fraction` (in log space).

use std::collections::VecDeque;

use ctrflow_dataflows::{Alert, AlertKind, AlertState, AlertWindow, EventTime, Severity};
use serde::{Deserialize, Serialize};

use super::episode::{Describe, Episode, EpisodeTiming, Status};
use super::stats::normal_quantile;

/// Sums of one slice of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Sums {
    n: u64,
    predicted: f64,
    variance: f64,
    clicks: f64,
    from: EventTime,
    to: EventTime,
}

/// The calibration detector; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationDrift {
    slice: u64,
    slices: usize,
    lower: f64,
    upper: f64,
    clear_fraction: f64,
    z: f64,
    current: Sums,
    window: VecDeque<Sums>,
    episode: Episode,
}

impl CalibrationDrift {
    /// A window of `slices` slices of `slice` examples, the band `lower..upper`, and a
    /// false-alarm probability `alpha` per evaluation.
    pub fn new(
        slice: u64,
        slices: usize,
        lower: f64,
        upper: f64,
        clear_fraction: f64,
        alpha: f64,
    ) -> Self {
        Self {
            slice: slice.max(1),
            slices: slices.max(1),
            lower,
            upper,
            clear_fraction,
            z: normal_quantile(1.0 - alpha / 2.0),
            current: Sums::default(),
            window: VecDeque::new(),
            episode: Episode::default(),
        }
    }

    /// Takes one labelled example; evaluates when a slice fills.
    pub fn observe(
        &mut self,
        served: f64,
        positive: bool,
        ts: EventTime,
        timing: &EpisodeTiming,
        out: &mut Vec<Alert>,
    ) {
        let c = &mut self.current;
        if c.n == 0 {
            c.from = ts;
        }
        c.n += 1;
        c.to = ts;
        c.predicted += served;
        c.variance += served * (1.0 - served);
        c.clicks += f64::from(u8::from(positive));
        if c.n < self.slice {
            return;
        }
        self.window.push_back(std::mem::take(&mut self.current));
        if self.window.len() > self.slices {
            self.window.pop_front();
        }
        if self.window.len() < self.slices {
            return;
        }
        let mut sum = Sums::default();
        for s in &self.window {
            sum.predicted += s.predicted;
            sum.variance += s.variance;
            sum.clicks += s.clicks;
        }
        let ratio = sum.predicted / sum.clicks.max(0.5);
        let z = (sum.predicted - sum.clicks).abs() / sum.variance.max(1e-12).sqrt();
        let outside = ratio < self.lower || ratio > self.upper;
        let clear_lower = self.lower.powf(self.clear_fraction);
        let clear_upper = self.upper.powf(self.clear_fraction);
        let status = if outside && z > self.z {
            let far = ratio < self.lower * self.lower || ratio > self.upper * self.upper;
            Status::Fire(if far {
                Severity::Critical
            } else {
                Severity::Warning
            })
        } else if (clear_lower..=clear_upper).contains(&ratio) {
            Status::Clear
        } else {
            Status::Hold
        };
        let threshold = if ratio < 1.0 { self.lower } else { self.upper };
        let describe = Described {
            ratio,
            threshold,
            z,
            predicted: sum.predicted,
            clicks: sum.clicks,
            from: self.window.front().map_or(0, |s| s.from),
            to: ts,
        };
        self.episode.update(ts, status, timing, &describe, out);
    }
}

impl CalibrationDrift {
    /// Appends the ratio over the last full window against the band edge on its side.
    pub fn stats(&self, out: &mut Vec<super::DetectorStat>) {
        if self.window.len() < self.slices {
            return;
        }
        let predicted: f64 = self.window.iter().map(|s| s.predicted).sum();
        let clicks: f64 = self.window.iter().map(|s| s.clicks).sum();
        let ratio = predicted / clicks.max(0.5);
        let threshold = if ratio < 1.0 { self.lower } else { self.upper };
        out.push(super::DetectorStat::new(
            "ratio_band",
            "calibration",
            ratio,
            Some(threshold),
        ));
    }
}

struct Described {
    ratio: f64,
    threshold: f64,
    z: f64,
    predicted: f64,
    clicks: f64,
    from: EventTime,
    to: EventTime,
}

impl Describe for Described {
    fn alert(
        &self,
        state: AlertState,
        severity: Severity,
        now: EventTime,
        since: EventTime,
    ) -> Alert {
        let message = match state {
            AlertState::Firing => format!(
                "mean predicted CTR / observed CTR is {:.3}, outside the band ({:.0} predicted vs {:.0} observed clicks, {:.1} sigma)",
                self.ratio, self.predicted, self.clicks, self.z
            ),
            AlertState::Resolved => format!(
                "calibration is back at {:.3}; it was off since {since}",
                self.ratio
            ),
        };
        Alert {
            kind: AlertKind::Calibration,
            state,
            severity,
            detector: "ratio_band".into(),
            metric: "calibration".into(),
            value: self.ratio,
            threshold: self.threshold,
            window: AlertWindow {
                from: self.from,
                to: self.to,
            },
            ts: now,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_calibrated_model_is_quiet_and_a_doubled_ctr_fires() {
        let timing = EpisodeTiming {
            resolve_after_ms: 0,
            min_alert_interval_ms: 0,
        };
        let mut rng = StdRng::seed_from_u64(9);
        let mut c = CalibrationDrift::new(2000, 10, 0.8, 1.25, 0.5, 1e-6);
        let mut out = Vec::new();
        for i in 0..200_000 {
            c.observe(0.04, rng.random_bool(0.04), i, &timing, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        for i in 200_000..230_000 {
            c.observe(0.04, rng.random_bool(0.08), i, &timing, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].value < 0.8);
        assert_eq!(out[0].threshold, 0.8);
        for i in 230_000..300_000 {
            c.observe(0.04, rng.random_bool(0.04), i, &timing, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].state, AlertState::Resolved);
    }
}
