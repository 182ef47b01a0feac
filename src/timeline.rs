//! Metrics over time: one record per interval of event time with the progressive metrics,
//! the throughput, every drift detector's statistic and the alerts raised, written as JSON
//! Lines by `replay --metrics-out FILE` and by the worker (`telemetry.metrics_out`), read
//! back by `ctrflow report` ([`crate::report`]).
//!
//! # Where the records come from
//!
//! [`Timeline`] wraps the drift detectors ([`Drift`]) inside the `Detect` operator, which
//! already receives every impression and every final label of the whole dataflow on worker
//! 0, in event-time order. So the records are global and exact for any number of workers,
//! and an alert lands in the interval of its own event time. Per observation the timeline
//! adds a counter and, for labels, one progressive-metrics update (O(1), no allocation,
//! no lock, no syscall; only when records are written); everything else — summaries, AUC,
//! the detectors' statistics, the wall clock, the write — happens once per interval.
//!
//! # Why event-time intervals
//!
//! An interval is `telemetry.metrics_interval_ms` of event time (one minute by default),
//! not N impressions or N wall seconds: the records of a replay and of the live worker over
//! the same events line up, the x axis is the time people reason in ("the loss jumped at
//! 14:20"), alerts (stamped in event time) fall on it, and a replay's records do not
//! depend on how fast the machine is or how many workers ran. The throughput of each
//! interval is measured in wall-clock time. Intervals without any observation are skipped.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use compact_str::CompactString;
use ctrflow_dataflows::{Alert, AlertKind, AlertState, Detector, EventTime, Observation};
use serde::{Deserialize, Serialize};

use crate::drift::{DetectorStat, Drift};
use crate::model::logistic::logloss;
use crate::progressive::{Progressive, Summary};

/// One interval of event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Start of the interval, event time (epoch ms).
    pub from: EventTime,
    /// End of the interval (exclusive); for the last record of a finished input, just
    /// after the last observation.
    pub ts: EventTime,
    /// Wall-clock seconds since the dataflow started when the interval closed.
    pub wall_secs: f64,
    /// Impressions scored so far.
    pub impressions: u64,
    /// Labelled examples so far.
    pub examples: u64,
    /// This interval's impressions per wall-clock second.
    pub impressions_per_sec: f64,
    /// This interval's examples per wall-clock second.
    pub examples_per_sec: f64,
    /// The examples whose label became final in this interval alone.
    pub interval: IntervalMetrics,
    /// Progressive metrics over every example so far.
    pub overall: Summary,
    /// Progressive metrics over the last `metrics.window` examples.
    pub recent: Summary,
    /// Every drift detector's statistic at the interval's end.
    pub drift: Vec<DetectorStat>,
    /// Alerts raised in this interval (by their event time), in the contract's form.
    pub alerts: Vec<Alert>,
}

/// Metrics of the examples of one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalMetrics {
    /// Impressions in the interval.
    pub impressions: u64,
    /// Examples in the interval.
    pub examples: u64,
    /// Positives among them.
    pub positives: u64,
    /// Their mean log loss, nats.
    pub logloss: Option<f64>,
    /// Their mean served score divided by their click rate.
    pub calibration: Option<f64>,
    /// Their click rate.
    pub ctr: Option<f64>,
}

/// What the drift detectors report to `/metrics` (`ctrflow_alerts_*`,
/// `ctrflow_drift_*`); updated by the [`Timeline`] when an alert is raised and at interval
/// ends.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftMetrics {
    /// Open (announced, not yet resolved) episodes per alert kind.
    pub firing: [(&'static str, u64); 4],
    /// Alerts raised per `(kind, state, severity)`.
    pub alerts_total: std::collections::BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// Every detector's latest statistic.
    pub stats: Vec<DetectorStat>,
}

/// Where a [`Timeline`] sends what it builds.
#[derive(Debug, Default)]
pub struct TimelineOutput {
    /// The JSON Lines file records are written to, if any.
    pub records: Option<BufWriter<File>>,
    /// Shared with the telemetry publisher, if any.
    pub metrics: Option<Arc<Mutex<DriftMetrics>>>,
    /// Interval length, event-time milliseconds.
    pub interval_ms: u64,
}

impl TimelineOutput {
    /// Records to `path` (created or truncated) every `interval_ms` of event time.
    pub fn file(path: &Path, interval_ms: u64) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self::to(file, interval_ms))
    }

    /// Records appended to `path` (created if missing): a restarted worker continues the
    /// file. Its overall metrics restart from zero with the process.
    pub fn append(path: &Path, interval_ms: u64) -> anyhow::Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} to append", path.display()))?;
        Ok(Self::to(file, interval_ms))
    }

    fn to(file: File, interval_ms: u64) -> Self {
        Self {
            records: Some(BufWriter::new(file)),
            metrics: None,
            interval_ms,
        }
    }
}

/// Sums over one interval's examples.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    impressions: u64,
    examples: u64,
    positives: u64,
    predicted: f64,
    loss: f64,
}

impl Sums {
    fn metrics(&self) -> IntervalMetrics {
        let n = self.examples as f64;
        IntervalMetrics {
            impressions: self.impressions,
            examples: self.examples,
            positives: self.positives,
            logloss: (self.examples > 0).then(|| self.loss / n),
            calibration: (self.positives > 0).then(|| self.predicted / self.positives as f64),
            ctr: (self.examples > 0).then(|| self.positives as f64 / n),
        }
    }
}

/// The drift detectors plus the metrics over time: a [`Detector`] for the `Detect`
/// operator (see the module doc).
pub struct Timeline {
    drift: Drift,
    output: TimelineOutput,
    interval: EventTime,
    /// End of the interval being filled; `None` before the first observation.
    end: Option<EventTime>,
    last_ts: EventTime,
    progressive: Option<Progressive>,
    sums: Sums,
    impressions: u64,
    examples: u64,
    started: Instant,
    last_wall: Instant,
    /// Records closed since the last `advance`, waiting for the alerts of their span.
    closed: Vec<Record>,
    /// Alerts not yet in a record.
    alerts: Vec<Alert>,
    raised: Vec<Alert>,
    open: BTreeSet<(&'static str, CompactString)>,
    line: Vec<u8>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("interval", &self.interval)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Timeline {
    /// The detectors inside.
    pub fn drift(&self) -> &Drift {
        &self.drift
    }

    /// Wraps `drift`; `progressive` (empty, as configured) is kept only when records are
    /// written.
    pub fn new(drift: Drift, output: TimelineOutput, progressive: Progressive) -> Self {
        let now = Instant::now();
        Self {
            drift,
            interval: output.interval_ms.max(1) as EventTime,
            progressive: output.records.is_some().then_some(progressive),
            output,
            end: None,
            last_ts: EventTime::MIN,
            sums: Sums::default(),
            impressions: 0,
            examples: 0,
            started: now,
            last_wall: now,
            closed: Vec::new(),
            alerts: Vec::new(),
            raised: Vec::new(),
            open: BTreeSet::new(),
            line: Vec::new(),
        }
    }

    /// Closes every interval that ends at or before `ts`.
    fn roll(&mut self, ts: EventTime) {
        let interval = self.interval;
        let end = *self.end.get_or_insert_with(|| interval_end(ts, interval));
        if ts < end {
            return;
        }
        self.close(end.saturating_sub(interval), end);
        // The next interval is the one holding `ts`: empty ones in between are skipped.
        self.end = Some(interval_end(ts, interval));
    }

    /// Builds the record of `from..to` (unless nothing happened in it).
    fn close(&mut self, from: EventTime, to: EventTime) {
        let sums = std::mem::take(&mut self.sums);
        if sums.impressions == 0 && sums.examples == 0 {
            return;
        }
        let now = Instant::now();
        let secs = now.duration_since(self.last_wall).as_secs_f64().max(1e-9);
        self.last_wall = now;
        let mut drift = Vec::new();
        self.drift.stats(&mut drift);
        if let Some(metrics) = &self.output.metrics
            && let Ok(mut m) = metrics.lock()
        {
            m.stats.clone_from(&drift);
        }
        if self.output.records.is_none() {
            return;
        }
        let (overall, recent) = self
            .progressive
            .as_ref()
            .map(|p| (p.summary(), p.window_summary()))
            .unwrap_or_default();
        self.closed.push(Record {
            from,
            ts: to,
            wall_secs: now.duration_since(self.started).as_secs_f64(),
            impressions: self.impressions,
            examples: self.examples,
            impressions_per_sec: sums.impressions as f64 / secs,
            examples_per_sec: sums.examples as f64 / secs,
            interval: sums.metrics(),
            overall,
            recent,
            drift,
            alerts: Vec::new(),
        });
    }

    /// Counts the alerts just raised, and files them under the record of their time.
    fn file_alerts(&mut self) {
        for alert in self.raised.drain(..) {
            let key = (kind_name(alert.kind), alert.metric.clone());
            match alert.state {
                AlertState::Firing => self.open.insert(key),
                AlertState::Resolved => self.open.remove(&key),
            };
            if let Some(metrics) = &self.output.metrics
                && let Ok(mut m) = metrics.lock()
            {
                *m.alerts_total
                    .entry((
                        kind_name(alert.kind),
                        state_name(alert.state),
                        severity_name(alert.severity),
                    ))
                    .or_default() += 1;
                for (kind, open) in &mut m.firing {
                    *open = self.open.iter().filter(|(k, _)| k == kind).count() as u64;
                }
            }
            match self.closed.iter_mut().find(|r| alert.ts < r.ts) {
                Some(record) => record.alerts.push(alert),
                None => self.alerts.push(alert),
            }
        }
    }

    /// Writes the closed records; the alerts still waiting go to the first one.
    fn write(&mut self) {
        let Some(out) = self.output.records.as_mut() else {
            self.closed.clear();
            return;
        };
        if self.closed.is_empty() {
            return;
        }
        for mut record in self.closed.drain(..) {
            let mut early: Vec<Alert> = self.alerts.extract_if(.., |a| a.ts < record.ts).collect();
            early.append(&mut record.alerts);
            early.sort_by_key(|a| a.ts);
            record.alerts = early;
            self.line.clear();
            // A record is plain data: serializing it cannot fail.
            let _ = serde_json::to_writer(&mut self.line, &record);
            self.line.push(b'\n');
            if let Err(error) = out.write_all(&self.line) {
                tracing::warn!(%error, "Failed to write a metrics record; stopping the records.");
                self.output.records = None;
                return;
            }
        }
        if let Err(error) = out.flush() {
            tracing::warn!(%error, "Failed to write metrics records; stopping the records.");
            self.output.records = None;
        }
    }
}

impl Detector for Timeline {
    fn observe(&mut self, observation: &Observation) {
        let ts = observation.ts();
        self.roll(ts);
        self.last_ts = self.last_ts.max(ts);
        match observation {
            Observation::Impression { .. } => {
                self.impressions += 1;
                self.sums.impressions += 1;
            }
            Observation::Label {
                served,
                label,
                at_input_end,
                ..
            } => {
                let positive = label.is_positive();
                self.examples += 1;
                if let Some(p) = self.progressive.as_mut() {
                    p.observe_label(*served, positive, None, *at_input_end);
                    let s = &mut self.sums;
                    s.examples += 1;
                    s.positives += u64::from(positive);
                    s.predicted += f64::from(*served);
                    s.loss += logloss(f64::from(served.clamp(0.0, 1.0)), positive);
                } else {
                    self.sums.examples += 1;
                }
            }
            Observation::Data(_) | Observation::Segment { .. } => {}
        }
        self.drift.observe(observation);
    }

    fn advance(&mut self, now: EventTime, alerts: &mut Vec<Alert>) {
        self.drift.advance(now, &mut self.raised);
        alerts.extend(self.raised.iter().cloned());
        if now == EventTime::MAX {
            // The input ended: the last, partial interval closes after its last observation.
            if let Some(end) = self.end.take() {
                self.close(
                    end.saturating_sub(self.interval),
                    self.last_ts.saturating_add(1),
                );
            }
        } else if self.end.is_some() {
            self.roll(now);
        }
        self.file_alerts();
        self.write();
    }
}

/// The end of the interval holding `ts`; saturating, since a bad event may carry any time.
fn interval_end(ts: EventTime, interval: EventTime) -> EventTime {
    ts.div_euclid(interval)
        .saturating_add(1)
        .saturating_mul(interval)
}

/// The contract's name of an alert kind.
pub fn kind_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::ConceptDrift => "concept_drift",
        AlertKind::DataDrift => "data_drift",
        AlertKind::Calibration => "calibration",
        AlertKind::LabelDelay => "label_delay",
    }
}

fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

fn severity_name(severity: ctrflow_dataflows::Severity) -> &'static str {
    match severity {
        ctrflow_dataflows::Severity::Warning => "warning",
        ctrflow_dataflows::Severity::Critical => "critical",
    }
}

impl Default for DriftMetrics {
    /// No alerts, no statistics: every kind at 0 firing.
    fn default() -> Self {
        Self {
            firing: [
                ("concept_drift", 0),
                ("data_drift", 0),
                ("calibration", 0),
                ("label_delay", 0),
            ],
            alerts_total: Default::default(),
            stats: Vec::new(),
        }
    }
}

/// Reads the records of a `--metrics-out` file; a line that is not a record is an error
/// naming its line number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftConfig;
    use ctrflow_dataflows::{AlertWindow, LabelSource, Severity};

    fn quiet_drift() -> Drift {
        Drift::new(&DriftConfig::default().all_off(), 1000)
    }

    fn alert(state: AlertState, ts: EventTime) -> Alert {
        Alert {
            kind: AlertKind::Calibration,
            state,
            severity: Severity::Warning,
            detector: "ratio_band".into(),
            metric: "calibration".into(),
            value: 0.7,
            threshold: 0.8,
            window: AlertWindow { from: 0, to: ts },
            ts,
            message: String::new(),
        }
    }

    #[test]
    fn interval_ends_hold_at_the_extremes() {
        assert_eq!(interval_end(0, 1000), 1000);
        assert_eq!(interval_end(999, 1000), 1000);
        assert_eq!(interval_end(-1, 1000), 0);
        assert_eq!(interval_end(EventTime::MAX - 1, 60_000), EventTime::MAX);
        assert!(interval_end(EventTime::MIN, 60_000) <= EventTime::MIN + 60_000);
    }

    #[test]
    fn one_record_per_interval_with_data_and_alerts_in_the_record_of_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut output = TimelineOutput::file(&path, 1000).unwrap();
        let metrics = Arc::new(Mutex::new(DriftMetrics::default()));
        output.metrics = Some(Arc::clone(&metrics));
        let mut t = Timeline::new(quiet_drift(), output, Progressive::with_window(10, 2));
        let mut out = Vec::new();
        let label = |ts, served, label| Observation::Label {
            id: 0,
            segment: Default::default(),
            label_ts: ts,
            at_input_end: false,
            served,
            label,
        };
        // Interval 1000..2000: two impressions, two labels; 2000..3000 empty;
        // 3000..4000: one impression and a label, seen in one watermark step with the rest.
        for o in [
            Observation::Impression {
                ts: 1100,
                score: 0.5,
            },
            Observation::Impression {
                ts: 1200,
                score: 0.2,
            },
            label(1500, 0.5, LabelSource::Click),
            label(1600, 0.2, LabelSource::Expired),
        ] {
            t.observe(&o);
        }
        t.advance(1700, &mut out);
        t.observe(&Observation::Impression {
            ts: 3100,
            score: 0.1,
        });
        t.observe(&label(3200, 0.1, LabelSource::FastSkip));
        // The detector raised these as it observed (they come out at the next advance).
        t.raised.push(alert(AlertState::Firing, 1650));
        t.raised.push(alert(AlertState::Resolved, 3150));
        t.advance(3500, &mut out);
        assert_eq!(out.len(), 2, "alerts pass through");
        t.advance(EventTime::MAX, &mut out);
        drop(t);

        let records = read(&path).unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        let (a, b) = (&records[0], &records[1]);
        assert_eq!((a.from, a.ts), (1000, 2000));
        assert_eq!(
            (b.from, b.ts),
            (3000, 3201),
            "the last closes after its last observation"
        );
        assert_eq!((a.impressions, a.examples), (2, 2));
        assert_eq!((b.impressions, b.examples), (3, 3));
        assert_eq!(b.interval.examples, 1);
        let expected = (logloss(0.5, true) + logloss(f64::from(0.2f32), false)) / 2.0;
        assert!((a.interval.logloss.unwrap() - expected).abs() < 1e-12);
        assert_eq!(a.overall.count, 2);
        assert_eq!(b.overall.count, 3);
        assert_eq!(a.alerts, vec![alert(AlertState::Firing, 1650)]);
        assert_eq!(b.alerts, vec![alert(AlertState::Resolved, 3150)]);
        let m = metrics.lock().unwrap();
        assert_eq!(m.firing[2], ("calibration", 0), "fired, then resolved");
        assert_eq!(m.alerts_total.len(), 2);
    }
}
