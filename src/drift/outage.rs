//! Feedback outage (`label_delay`): impressions keep arriving while their decisive
//! feedback (clicks, likes, fast skips) nearly stops — the broken-tracking incident.
//!
//! Impressions are counted by their event time and decisive labels by the event time they
//! became final, in buckets of `bucket_ms`. At each closed bucket, the decisive rate over
//! the last `span_ms` (`D` labels for `I` impressions) is compared with the rate `b` over
//! the `baseline_ms` before it (buckets that belonged to an episode excluded, so a long
//! outage does not become its own baseline). It fires when the rate falls below
//! `max_fraction` of the baseline and that is not chance: under the baseline rate, `D`
//! is about Poisson(`b·I`), and Chernoff's bound on `P(X ≤ D)` must be below `α`, the
//! false-alarm budget per evaluation. It clears above `clear_fraction` of the baseline.

use std::collections::VecDeque;

use ctrflow_dataflows::{Alert, AlertKind, AlertState, AlertWindow, EventTime, Severity};
use serde::{Deserialize, Serialize};

use super::episode::{Describe, Episode, EpisodeTiming, Status};
use super::stats::poisson_lower_tail_bound;

/// Counts of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Bucket {
    index: i64,
    impressions: u64,
    decisive: u64,
    /// Evaluated during an episode: not part of any later baseline.
    excluded: bool,
}

/// Settings of [`FeedbackOutage`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutageSettings {
    /// Bucket width, event-time milliseconds.
    pub bucket_ms: u64,
    /// The span whose rate is judged.
    pub span_ms: u64,
    /// The span before it that sets the usual rate.
    pub baseline_ms: u64,
    /// Fires below this fraction of the usual rate.
    pub max_fraction: f64,
    /// Clears above this fraction.
    pub clear_fraction: f64,
    /// Fewer impressions than this in the span or the baseline: no verdict.
    pub min_impressions: u64,
    /// One false alarm per this many impressions at most (on average).
    pub false_alarm_every: u64,
}

/// The feedback-outage detector; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackOutage {
    settings: OutageSettings,
    buckets: VecDeque<Bucket>,
    /// Closed buckets at the front already evaluated.
    evaluated: usize,
    episode: Episode,
}

impl FeedbackOutage {
    /// Empty.
    pub fn new(settings: OutageSettings) -> Self {
        Self {
            settings,
            buckets: VecDeque::new(),
            evaluated: 0,
            episode: Episode::default(),
        }
    }

    fn capacity(&self) -> usize {
        let s = &self.settings;
        ((s.span_ms + s.baseline_ms) / s.bucket_ms.max(1)) as usize + 2
    }

    fn bucket(&mut self, ts: EventTime) -> Option<&mut Bucket> {
        let index = ts.div_euclid(self.settings.bucket_ms.max(1) as i64);
        match self.buckets.back() {
            None => self.buckets.push_back(Bucket {
                index,
                ..Bucket::default()
            }),
            Some(last) if index > last.index => {
                let gap = (index - last.index) as usize;
                if gap > self.capacity() {
                    self.buckets.clear();
                    self.evaluated = 0;
                    self.buckets.push_back(Bucket {
                        index,
                        ..Bucket::default()
                    });
                } else {
                    let start = last.index + 1;
                    for i in start..=index {
                        self.buckets.push_back(Bucket {
                            index: i,
                            ..Bucket::default()
                        });
                    }
                }
            }
            Some(_) => {}
        }
        let front = self.buckets.front()?.index;
        let at = usize::try_from(index - front).ok()?;
        self.buckets.get_mut(at)
    }

    /// An impression shown at `ts`.
    pub fn impression(&mut self, ts: EventTime) {
        if let Some(b) = self.bucket(ts) {
            b.impressions += 1;
        }
    }

    /// A decisive label final at `ts`.
    pub fn decisive(&mut self, ts: EventTime) {
        if let Some(b) = self.bucket(ts) {
            b.decisive += 1;
        }
    }

    /// Event time reached `now`: evaluates every bucket that closed.
    pub fn advance(&mut self, now: EventTime, timing: &EpisodeTiming, out: &mut Vec<Alert>) {
        if now == EventTime::MAX {
            // The input ended: nothing comes after, which is not an outage.
            return;
        }
        let width = self.settings.bucket_ms.max(1) as i64;
        // Make sure a bucket exists up to now, so silence is seen too.
        let Some(last) = self.buckets.back().map(|b| b.index) else {
            return;
        };
        let now_index = now.div_euclid(width);
        if now_index > last {
            self.bucket(now);
        }
        // Buckets with index < now_index are closed; evaluate those not yet evaluated:
        // the evaluation marker is the bucket count before `now_index`.
        let closed = self.buckets.iter().filter(|b| b.index < now_index).count();
        let evaluated = self.evaluated.min(closed);
        for i in evaluated..closed {
            self.evaluate(i, timing, out);
        }
        self.evaluated = closed;
        while self.buckets.len() > self.capacity() {
            self.buckets.pop_front();
            self.evaluated = self.evaluated.saturating_sub(1);
        }
    }

    fn evaluate(&mut self, i: usize, timing: &EpisodeTiming, out: &mut Vec<Alert>) {
        let s = self.settings;
        let width = s.bucket_ms.max(1);
        let span = (s.span_ms / width).max(1) as usize;
        let baseline = (s.baseline_ms / width).max(1) as usize;
        if i + 1 < span + baseline {
            return;
        }
        let span_range = i + 1 - span..=i;
        let (mut imp, mut dec) = (0u64, 0u64);
        for b in self.buckets.range(span_range.clone()) {
            imp += b.impressions;
            dec += b.decisive;
        }
        let (mut base_imp, mut base_dec) = (0u64, 0u64);
        for b in self.buckets.range(i + 1 - span - baseline..i + 1 - span) {
            if !b.excluded {
                base_imp += b.impressions;
                base_dec += b.decisive;
            }
        }
        let bucket = self.buckets[i];
        let now = (bucket.index + 1) * width as i64;
        if imp < s.min_impressions || base_imp < s.min_impressions || base_dec == 0 {
            return;
        }
        let base_rate = base_dec as f64 / base_imp as f64;
        let rate = dec as f64 / imp as f64;
        let fraction = rate / base_rate;
        let alpha = bucket.impressions.max(1) as f64 / s.false_alarm_every.max(1) as f64;
        let p = poisson_lower_tail_bound(dec as f64, base_rate * imp as f64);
        let status = if fraction < s.max_fraction && p < alpha {
            Status::Fire(if fraction < s.max_fraction / 4.0 {
                Severity::Critical
            } else {
                Severity::Warning
            })
        } else if fraction > s.clear_fraction {
            Status::Clear
        } else {
            Status::Hold
        };
        let describe = Described {
            fraction,
            threshold: s.max_fraction,
            rate,
            base_rate,
            impressions: imp,
            decisive: dec,
            from: self.buckets[i + 1 - span].index * width as i64,
            to: now,
        };
        self.episode.update(now, status, timing, &describe, out);
        if self.episode.is_open() {
            self.buckets[i].excluded = true;
        }
    }
}

impl FeedbackOutage {
    /// Appends the decisive-feedback rate of the last evaluated span as a fraction of the
    /// usual rate, against `max_fraction`.
    pub fn stats(&self, out: &mut Vec<super::DetectorStat>) {
        let s = self.settings;
        let width = s.bucket_ms.max(1);
        let span = (s.span_ms / width).max(1) as usize;
        let baseline = (s.baseline_ms / width).max(1) as usize;
        let closed = self.evaluated.min(self.buckets.len());
        if closed < span + baseline {
            return;
        }
        let (mut imp, mut dec, mut base_imp, mut base_dec) = (0u64, 0u64, 0u64, 0u64);
        for b in self.buckets.range(closed - span..closed) {
            imp += b.impressions;
            dec += b.decisive;
        }
        for b in self.buckets.range(closed - span - baseline..closed - span) {
            if !b.excluded {
                base_imp += b.impressions;
                base_dec += b.decisive;
            }
        }
        if imp == 0 || base_imp == 0 || base_dec == 0 {
            return;
        }
        let fraction = (dec as f64 / imp as f64) / (base_dec as f64 / base_imp as f64);
        out.push(super::DetectorStat::new(
            "feedback_rate",
            "decisive_feedback_rate",
            fraction,
            Some(s.max_fraction),
        ));
    }
}

struct Described {
    fraction: f64,
    threshold: f64,
    rate: f64,
    base_rate: f64,
    impressions: u64,
    decisive: u64,
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
                "feedback nearly stopped: {} decisive labels for {} impressions ({:.4} per impression, usually {:.4}: {:.0} % of normal)",
                self.decisive,
                self.impressions,
                self.rate,
                self.base_rate,
                100.0 * self.fraction
            ),
            AlertState::Resolved => format!(
                "feedback is back at {:.0} % of its usual rate; it had stopped since {since}",
                100.0 * self.fraction
            ),
        };
        Alert {
            kind: AlertKind::LabelDelay,
            state,
            severity,
            detector: "feedback_rate".into(),
            metric: "decisive_feedback_rate".into(),
            value: self.fraction,
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

    fn settings() -> OutageSettings {
        OutageSettings {
            bucket_ms: 10_000,
            span_ms: 60_000,
            baseline_ms: 600_000,
            max_fraction: 0.2,
            clear_fraction: 0.5,
            min_impressions: 200,
            false_alarm_every: 10_000_000,
        }
    }

    /// 10 impressions a second; every third gets decisive feedback unless `outage(t)`.
    fn run(seconds: std::ops::Range<i64>, outage: impl Fn(i64) -> bool) -> Vec<Alert> {
        let timing = EpisodeTiming {
            resolve_after_ms: 30_000,
            min_alert_interval_ms: 0,
        };
        let mut d = FeedbackOutage::new(settings());
        let mut out = Vec::new();
        for s in seconds {
            for k in 0..10 {
                let ts = s * 1000 + k * 100;
                d.impression(ts);
                if k % 3 == 0 && !outage(s) {
                    d.decisive(ts + 50);
                }
            }
            d.advance(s * 1000 + 999, &timing, &mut out);
        }
        out
    }

    #[test]
    fn steady_feedback_is_quiet() {
        assert!(run(0..7200, |_| false).is_empty());
    }

    #[test]
    fn an_outage_fires_once_and_resolves() {
        let alerts = run(0..7200, |s| (3600..4500).contains(&s));
        let got: Vec<_> = alerts.iter().map(|a| (a.state, a.ts / 1000)).collect();
        assert_eq!(got.len(), 2, "{alerts:?}");
        assert_eq!(got[0].0, AlertState::Firing);
        assert!((3600..3660).contains(&got[0].1), "{got:?}");
        assert_eq!(got[1].0, AlertState::Resolved);
        assert!((4530..4700).contains(&got[1].1), "{got:?}");
        assert_eq!(alerts[0].kind, AlertKind::LabelDelay);
    }
}
