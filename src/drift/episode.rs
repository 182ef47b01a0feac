//! The alert state machine: one alert when a condition starts, one `resolved` when it has
//! stayed clear for a while, nothing in between; rate-limited per metric.
//!
//! Detectors report one [`Status`] per evaluation: `Fire` past the threshold, `Clear`
//! back past the (lower) clearing threshold, `Hold` in between. The gap between the two
//! thresholds (hysteresis) and the `resolve_after_ms` hold keep a value that hovers around
//! a threshold from opening and closing episodes over and over.

use ctrflow_dataflows::{Alert, AlertState, EventTime, Severity};
use serde::{Deserialize, Serialize};

/// One evaluation's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Past the threshold, with this severity.
    Fire(Severity),
    /// Between the clearing threshold and the threshold: no change of state.
    Hold,
    /// Back on the healthy side of the clearing threshold.
    Clear,
}

/// Timing of episodes (shared by every detector).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeTiming {
    /// An episode ends after its condition stayed clear this long (event time).
    pub resolve_after_ms: u64,
    /// At most one firing alert per metric in this span; an episode starting sooner is
    /// counted in `suppressed` and neither announced nor resolved.
    pub min_alert_interval_ms: u64,
}

/// The episode state of one metric; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    open: Option<Open>,
    last_announced: Option<EventTime>,
    /// Episodes not announced because of the rate limit.
    pub suppressed: u64,
    /// Episodes opened (announced or not).
    pub episodes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Open {
    since: EventTime,
    severity: Severity,
    announced: bool,
    clear_since: Option<EventTime>,
}

/// What an alert needs besides its state and severity; built only when one is sent.
pub trait Describe {
    /// The alert for `state`, with `severity`, raised at `now`; `since` is when the
    /// episode started.
    fn alert(
        &self,
        state: AlertState,
        severity: Severity,
        now: EventTime,
        since: EventTime,
    ) -> Alert;
}

impl Episode {
    /// Whether an episode is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Applies one evaluation at `now`; an alert, if one is due, is described by `what` and
    /// appended to `out`.
    pub fn update(
        &mut self,
        now: EventTime,
        status: Status,
        timing: &EpisodeTiming,
        what: &dyn Describe,
        out: &mut Vec<Alert>,
    ) {
        match (&mut self.open, status) {
            (None, Status::Fire(severity)) => {
                self.episodes += 1;
                let limited = self.last_announced.is_some_and(|t| {
                    now.saturating_sub(t) < timing.min_alert_interval_ms as EventTime
                });
                if limited {
                    self.suppressed += 1;
                } else {
                    self.last_announced = Some(now);
                    out.push(what.alert(AlertState::Firing, severity, now, now));
                }
                self.open = Some(Open {
                    since: now,
                    severity,
                    announced: !limited,
                    clear_since: None,
                });
            }
            (None, _) => {}
            (Some(open), Status::Fire(severity)) => {
                open.severity = open.severity.max(severity);
                open.clear_since = None;
            }
            (Some(open), Status::Hold) => open.clear_since = None,
            (Some(open), Status::Clear) => {
                let since = *open.clear_since.get_or_insert(now);
                if now.saturating_sub(since) >= timing.resolve_after_ms as EventTime {
                    if open.announced {
                        out.push(what.alert(AlertState::Resolved, open.severity, now, open.since));
                    }
                    self.open = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctrflow_dataflows::{AlertKind, AlertWindow};

    struct Plain;
    impl Describe for Plain {
        fn alert(&self, state: AlertState, severity: Severity, now: i64, since: i64) -> Alert {
            Alert {
                kind: AlertKind::Calibration,
                state,
                severity,
                detector: "t".into(),
                metric: "m".into(),
                value: 0.0,
                threshold: 0.0,
                window: AlertWindow {
                    from: since,
                    to: now,
                },
                ts: now,
                message: String::new(),
            }
        }
    }

    const TIMING: EpisodeTiming = EpisodeTiming {
        resolve_after_ms: 100,
        min_alert_interval_ms: 1000,
    };

    fn run(statuses: &[(i64, Status)]) -> (Vec<(i64, AlertState)>, Episode) {
        let mut e = Episode::default();
        let mut out = Vec::new();
        for &(t, s) in statuses {
            e.update(t, s, &TIMING, &Plain, &mut out);
        }
        (out.iter().map(|a| (a.ts, a.state)).collect(), e)
    }

    #[test]
    fn one_alert_per_episode_and_its_resolved() {
        let warn = Status::Fire(Severity::Warning);
        let (alerts, _) = run(&[
            (0, Status::Clear),
            (10, warn),
            (20, warn),
            (30, Status::Hold),
            (40, warn),
            (50, Status::Clear),
            (60, Status::Hold), // hysteresis: the hold restarts
            (70, Status::Clear),
            (150, Status::Clear),
            (170, Status::Clear),
            (180, Status::Clear),
        ]);
        assert_eq!(
            alerts,
            vec![(10, AlertState::Firing), (170, AlertState::Resolved)]
        );
    }

    #[test]
    fn episodes_within_the_rate_limit_are_counted_not_sent() {
        let warn = Status::Fire(Severity::Warning);
        let (alerts, e) = run(&[
            (0, warn),
            (100, Status::Clear),
            (200, Status::Clear),
            (300, warn), // within 1000 ms of the last alert
            (400, Status::Clear),
            (500, Status::Clear),
            (1500, warn),
        ]);
        assert_eq!(
            alerts,
            vec![
                (0, AlertState::Firing),
                (200, AlertState::Resolved),
                (1500, AlertState::Firing)
            ]
        );
        assert_eq!(e.suppressed, 1);
        assert_eq!(e.episodes, 3);
    }

    #[test]
    fn resolved_carries_the_worst_severity() {
        let mut e = Episode::default();
        let mut out = Vec::new();
        e.update(
            0,
            Status::Fire(Severity::Warning),
            &TIMING,
            &Plain,
            &mut out,
        );
        e.update(
            5,
            Status::Fire(Severity::Critical),
            &TIMING,
            &Plain,
            &mut out,
        );
        e.update(10, Status::Clear, &TIMING, &Plain, &mut out);
        e.update(200, Status::Clear, &TIMING, &Plain, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].severity, Severity::Critical);
        assert_eq!(out[1].window.from, 0);
    }
}
