//! Concept drift: ADWIN and Page-Hinkley on the per-example loss of the served scores.
//!
//! # Which loss
//!
//! The raw logloss of a prediction `p` follows the click rate: with a daily CTR cycle of
//! ±25 %, a perfect model's loss moves by about ±15 % over the day, and a textbook
//! detector calls that drift. The *relative* loss subtracts what the model itself expects
//! to lose, the entropy `H(p) = -p ln p - (1-p) ln(1-p)`: its mean is the KL divergence
//! from the true to the served probability, zero for a perfect model whatever the CTR, so
//! it rises when the model goes wrong and not when the season turns. It is the default
//! metric; the raw loss is available (`metrics = ["logloss"]`) for comparison.
//!
//! Algebra shows where its noise comes from: `ℓ - H(p) = -(y - p)·logit(p)`. With `m` the
//! mean logit (about -3.2 at a 4 % CTR), that is `-(y - p)·m`, the calibration-in-the-large
//! residual scaled by `|m|`, plus `-(y - p)·(logit(p) - m)`, the calibration-slope (ranking)
//! residual. The first term carries most of the variance (`m² ≈ 10` against a logit spread
//! of about 1) and only says what the calibration detector already watches; a change of
//! ranking with the overall rate intact (items that were good turn bad) is in the second.
//! `discrimination` watches the second term alone, with `m` a slow moving average: about
//! ten times less variance, so a ranking change shows up an order of magnitude sooner.
//!
//! # Episodes
//!
//! Either detector's alarm opens an episode (the alert names the first), provided the
//! rise is at least `min_shift` nats (a cut that is significant but smaller is ignored,
//! as ADWIN also cuts when the loss falls while the model learns). The level before the
//! alarm is the slow moving average of the loss; the episode clears when the fast moving
//! average (`recovery_examples`) is back within `min_shift / 2` of it: the model has
//! adapted.

use ctrflow_dataflows::{Alert, AlertKind, AlertState, AlertWindow, EventTime, Severity};
use serde::{Deserialize, Serialize};

use super::adwin::Adwin;
use super::episode::{Describe, Episode, EpisodeTiming, Status};
use super::page_hinkley::PageHinkley;

/// The per-example loss a detector watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossMetric {
    /// `-y ln p - (1-y) ln(1-p)`.
    Logloss,
    /// The logloss minus the entropy of the served `p`.
    RelativeLogloss,
    /// `-(y - p)·(logit(p) - m)`: the relative logloss without its calibration-in-the-large
    /// part.
    Discrimination,
}

impl LossMetric {
    /// The name alerts carry.
    pub fn name(self) -> &'static str {
        match self {
            LossMetric::Logloss => "logloss",
            LossMetric::RelativeLogloss => "relative_logloss",
            LossMetric::Discrimination => "discrimination",
        }
    }

    /// The metric's value for one example; `mean_logit` centres `discrimination`.
    pub fn value(self, served: f64, positive: bool, mean_logit: f64) -> f64 {
        Served::new(served).value(self, positive, mean_logit)
    }
}

/// Settings of [`ConceptDrift`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptSettings {
    /// Examples ignored while the model is young.
    pub warmup_examples: u64,
    /// Smallest rise of the mean loss worth an alert, nats.
    pub min_shift: f64,
    /// ADWIN checks for a cut every this many examples.
    pub adwin_clock: u32,
    /// ADWIN buckets per row.
    pub adwin_max_buckets: usize,
    /// Also run Page-Hinkley.
    pub page_hinkley: bool,
    /// Examples the recovery average spans (its half-life).
    pub recovery_examples: u64,
    /// One false alarm per this many examples at most (on average), per detector.
    pub false_alarm_every: u64,
}

/// Concept-drift detection on one loss metric; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptDrift {
    metric: LossMetric,
    settings: ConceptSettings,
    seen: u64,
    adwin: Adwin,
    page_hinkley: Option<PageHinkley>,
    slow: f64,
    fast: f64,
    baseline: f64,
    mean_logit: f64,
    /// The open episode was opened by Page-Hinkley (its `resolved` names the same one).
    opened_by_page_hinkley: bool,
    since: EventTime,
    episode: Episode,
    /// The smoothing weights, derived from `settings` on first use (not state).
    #[serde(skip)]
    weights: Weights,
}

/// The moving averages' smoothing weights: `weight(n)` is a `powf`, and calling it three
/// times per example was a visible share of the detectors' time. Derived from the
/// settings, so not serialized and equal whatever it holds.
#[derive(Clone, Copy, Debug, Default)]
struct Weights(Option<(f64, f64)>);

impl PartialEq for Weights {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Weights {
    /// `(weight(recovery_examples), weight(10 · recovery_examples))`.
    fn get(&mut self, s: &ConceptSettings) -> (f64, f64) {
        *self.0.get_or_insert_with(|| {
            (
                weight(s.recovery_examples),
                weight(10 * s.recovery_examples),
            )
        })
    }
}

/// A served score with the logarithms every detector watching its example needs, computed
/// once per example: `ln p` and `ln(1 - p)` of the clamped score give its logit and its
/// logloss, and (for a score inside the clamp, as served scores are) its entropy: two
/// logarithms where the detectors took four.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Served {
    /// The served score.
    pub p: f64,
    /// `logit(clamp_probability(p))`.
    pub logit: f64,
    /// `ln` of the clamped score, and of one minus it.
    ln_p: f64,
    ln_q: f64,
}

impl Served {
    /// `p` and its logarithms.
    pub fn new(p: f64) -> Self {
        let c = crate::model::logistic::clamp_probability(p);
        let (ln_p, ln_q) = (c.ln(), (1.0 - c).ln());
        Self {
            p,
            logit: ln_p - ln_q,
            ln_p,
            ln_q,
        }
    }

    /// `metric`'s value for this example ([`LossMetric::value`], from the logarithms
    /// already taken; the same to the last bit for the two loglosses).
    fn value(&self, metric: LossMetric, positive: bool, mean_logit: f64) -> f64 {
        use crate::model::logistic::{clamp_probability, entropy};
        let c = clamp_probability(self.p);
        let logloss = if positive { -self.ln_p } else { -self.ln_q };
        match metric {
            LossMetric::Logloss => logloss,
            LossMetric::RelativeLogloss => {
                // `entropy` takes the score as is; inside the clamp that is `c`.
                let h = if c == self.p {
                    -(c * self.ln_p + (1.0 - c) * self.ln_q)
                } else {
                    entropy(self.p)
                };
                logloss - h
            }
            LossMetric::Discrimination => {
                -(f64::from(u8::from(positive)) - c) * (self.logit - mean_logit)
            }
        }
    }
}

/// Smoothing weight of a moving average with a half-life of `n` items.
fn weight(n: u64) -> f64 {
    1.0 - 0.5f64.powf(1.0 / n.max(1) as f64)
}

impl ConceptDrift {
    /// Watches `metric`.
    pub fn new(metric: LossMetric, settings: ConceptSettings) -> Self {
        let every = settings.false_alarm_every;
        Self {
            metric,
            settings,
            seen: 0,
            adwin: Adwin::for_budget(every, settings.adwin_max_buckets, settings.adwin_clock),
            page_hinkley: settings.page_hinkley.then(|| {
                PageHinkley::new(settings.min_shift / 2.0, settings.recovery_examples, every)
            }),
            slow: 0.0,
            fast: 0.0,
            baseline: 0.0,
            mean_logit: 0.0,
            opened_by_page_hinkley: false,
            since: 0,
            episode: Episode::default(),
            weights: Weights::default(),
        }
    }

    /// Takes one labelled example, final at `ts`.
    pub fn observe(
        &mut self,
        served: f64,
        positive: bool,
        ts: EventTime,
        timing: &EpisodeTiming,
        out: &mut Vec<Alert>,
    ) {
        self.observe_served(Served::new(served), positive, ts, timing, out);
    }

    /// [`observe`](Self::observe) with the served score's logit already computed (once
    /// for every detector watching the example).
    pub fn observe_served(
        &mut self,
        served: Served,
        positive: bool,
        ts: EventTime,
        timing: &EpisodeTiming,
        out: &mut Vec<Alert>,
    ) {
        let s = self.settings;
        let (fast_weight, slow_weight) = self.weights.get(&s);
        // The plain mean at first, then a slow moving average: a short stream (a small
        // segment) is centred on its own mean, not on its first example.
        let w = slow_weight.max(1.0 / (self.seen + 1) as f64);
        self.mean_logit += w * (served.logit - self.mean_logit);
        let x = served.value(self.metric, positive, self.mean_logit);
        self.seen += 1;
        if self.seen == 1 {
            self.slow = x;
            self.fast = x;
            self.since = ts;
        }
        self.fast += fast_weight * (x - self.fast);
        if self.seen <= s.warmup_examples {
            self.slow += fast_weight * (x - self.slow);
            self.since = ts;
            return;
        }
        let open = self.episode.is_open();
        if !open {
            // The level before a drift: ten recovery spans long, so a drift moves it little.
            self.slow += slow_weight * (x - self.slow);
        }
        let cut = self
            .adwin
            .insert(x)
            .filter(|c| c.new_mean - c.old_mean >= s.min_shift);
        let alarm = self.page_hinkley.as_mut().and_then(|ph| ph.insert(x));
        let fired = if let Some(c) = cut {
            let rise = c.new_mean - c.old_mean;
            Some(Fired {
                detector: "adwin",
                value: rise,
                threshold: c.epsilon.max(s.min_shift),
                severity: if rise > 4.0 * s.min_shift {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
            })
        } else {
            alarm.map(|a| Fired {
                detector: "page_hinkley",
                value: a.statistic,
                threshold: a.lambda,
                severity: Severity::Warning,
            })
        };
        let status = match fired {
            Some(f) => {
                if !open {
                    self.baseline = self.slow;
                    self.opened_by_page_hinkley = f.detector == "page_hinkley";
                }
                Some((Status::Fire(f.severity), f))
            }
            // Check for recovery now and then; it is a moving average, not an event.
            None if open && self.seen.is_multiple_of(u64::from(s.adwin_clock.max(1))) => {
                let recovered = self.fast < self.baseline + s.min_shift / 2.0;
                let status = if recovered {
                    Status::Clear
                } else {
                    Status::Hold
                };
                Some((
                    status,
                    Fired {
                        detector: if self.opened_by_page_hinkley {
                            "page_hinkley"
                        } else {
                            "adwin"
                        },
                        value: self.fast - self.baseline,
                        threshold: s.min_shift / 2.0,
                        severity: Severity::Warning,
                    },
                ))
            }
            None => None,
        };
        if let Some((status, fired)) = status {
            let describe = Described {
                metric: self.metric,
                fired,
                baseline: self.baseline,
                level: self.fast,
                from: self.since,
            };
            self.episode.update(ts, status, timing, &describe, out);
        }
        if cut.is_some() || alarm.is_some() {
            self.since = ts;
        }
    }
}

impl ConceptDrift {
    /// Appends the current statistics, computed from the state kept anyway: the loss
    /// level's rise over its pre-drift level (what ADWIN's cuts and the recovery check
    /// measure) against `min_shift`, and Page-Hinkley's `m_t - M_t` against `λ`.
    pub fn stats(&self, out: &mut Vec<super::DetectorStat>) {
        if self.seen == 0 {
            return;
        }
        let before = if self.episode.is_open() {
            self.baseline
        } else {
            self.slow
        };
        let metric = self.metric.name();
        out.push(super::DetectorStat::new(
            "adwin",
            metric,
            self.fast - before,
            Some(self.settings.min_shift),
        ));
        if let Some(ph) = &self.page_hinkley {
            out.push(super::DetectorStat::new(
                "page_hinkley",
                metric,
                ph.statistic(),
                ph.lambda(),
            ));
        }
    }
}

#[derive(Clone, Copy)]
struct Fired {
    detector: &'static str,
    value: f64,
    threshold: f64,
    severity: Severity,
}

struct Described {
    metric: LossMetric,
    fired: Fired,
    baseline: f64,
    level: f64,
    from: EventTime,
}

impl Describe for Described {
    fn alert(
        &self,
        state: AlertState,
        severity: Severity,
        now: EventTime,
        since: EventTime,
    ) -> Alert {
        let f = &self.fired;
        let message = match state {
            AlertState::Firing => format!(
                "{} rose: {} statistic {:.4} over threshold {:.4}; level {:.4} nats, {:.4} before",
                self.metric.name(),
                f.detector,
                f.value,
                f.threshold,
                self.level,
                self.baseline
            ),
            AlertState::Resolved => format!(
                "{} is back at {:.4} nats ({:.4} before the drift); drifting since {since}",
                self.metric.name(),
                self.level,
                self.baseline
            ),
        };
        Alert {
            kind: AlertKind::ConceptDrift,
            state,
            severity,
            detector: f.detector.into(),
            metric: self.metric.name().into(),
            value: f.value,
            threshold: f.threshold,
            window: AlertWindow {
                from: self.from.min(now),
                to: now,
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

    fn settings() -> ConceptSettings {
        ConceptSettings {
            warmup_examples: 10_000,
            min_shift: 0.01,
            adwin_clock: 32,
            adwin_max_buckets: 5,
            page_hinkley: true,
            recovery_examples: 5000,
            false_alarm_every: 100_000_000,
        }
    }

    /// Served `p` from a CTR that follows a ±25 % cycle; the truth is `p` until
    /// `drift_at`, then `p * factor` until `until`.
    fn run(metric: LossMetric, n: i64, drift: Option<(i64, i64, f64)>) -> Vec<Alert> {
        run_with(metric, n, |i, p| match drift {
            Some((at, until, f)) if (at..until).contains(&i) => (p * f).min(1.0),
            _ => p,
        })
    }

    fn run_with(metric: LossMetric, n: i64, truth: impl Fn(i64, f64) -> f64) -> Vec<Alert> {
        let timing = EpisodeTiming {
            resolve_after_ms: 0,
            min_alert_interval_ms: 0,
        };
        let mut rng = StdRng::seed_from_u64(11);
        let mut d = ConceptDrift::new(metric, settings());
        let mut out = Vec::new();
        for i in 0..n {
            let cycle = 1.0 + 0.25 * (i as f64 / 50_000.0 * std::f64::consts::TAU).cos();
            let p: f64 = 0.04 * cycle * rng.random_range(0.3..1.7);
            d.observe(p, rng.random_bool(truth(i, p)), i, &timing, &mut out);
        }
        out
    }

    #[test]
    fn relative_loss_is_quiet_through_the_daily_cycle() {
        assert!(run(LossMetric::RelativeLogloss, 400_000, None).is_empty());
    }

    #[test]
    fn discrimination_is_quiet_through_the_daily_cycle() {
        let a = run(LossMetric::Discrimination, 400_000, None);
        assert!(a.is_empty(), "{a:#?}");
    }

    #[test]
    fn a_ranking_flip_with_the_same_ctr_is_seen_by_discrimination_first() {
        // From 100k on, for a third of the traffic, the truth mirrors the served score
        // around 4 %: good becomes bad, the overall rate stays.
        let flip = |i: i64, p: f64| {
            if i >= 100_000 && i % 3 == 0 {
                (0.04 * 0.04 / p).min(1.0)
            } else {
                p
            }
        };
        let first = |metric| {
            run_with(metric, 250_000, flip)
                .iter()
                .find(|a| a.state == AlertState::Firing)
                .map(|a| a.ts)
        };
        let d = first(LossMetric::Discrimination).expect("discrimination fires");
        assert!(d >= 100_000, "{d}");
        if let Some(r) = first(LossMetric::RelativeLogloss) {
            assert!(d < r, "discrimination at {d}, relative logloss at {r}");
        }
    }

    #[test]
    fn relative_loss_is_the_sum_of_its_two_residuals() {
        for (p, y) in [(0.04, true), (0.04, false), (0.3, true), (0.9, false)] {
            let whole = LossMetric::RelativeLogloss.value(p, y, 0.0);
            let m = -3.0;
            let centred = LossMetric::Discrimination.value(p, y, m);
            let level = -(f64::from(u8::from(y)) - p) * m;
            assert!((whole - (centred + level)).abs() < 1e-9, "{p} {y}");
        }
    }

    #[test]
    fn raw_loss_calls_the_daily_cycle_drift() {
        // The reason the relative loss is the default.
        assert!(!run(LossMetric::Logloss, 400_000, None).is_empty());
    }

    #[test]
    fn a_tripled_ctr_fires_once_and_resolves_after_it_ends() {
        let alerts = run(
            LossMetric::RelativeLogloss,
            300_000,
            Some((100_000, 150_000, 3.0)),
        );
        let got: Vec<_> = alerts.iter().map(|a| (a.state, a.ts)).collect();
        assert_eq!(got.len(), 2, "{alerts:#?}");
        assert_eq!(got[0].0, AlertState::Firing);
        assert!((100_000..110_000).contains(&got[0].1), "{got:?}");
        assert_eq!(got[1].0, AlertState::Resolved);
        assert!(got[1].1 > 150_000, "{got:?}");
    }
}
