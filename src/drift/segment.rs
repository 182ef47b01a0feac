//! Concept drift per segment: the ranking residual (`discrimination`) watched separately
//! for each value of one `ctx` field (the item category by default).
//!
//! # Why segments
//!
//! A change that turns good items bad and bad items good in a few categories (the
//! generator's `flip-items`) leaves the overall click rate where it was, and the overall
//! loss rises by a few thousandths of a nat while the model relearns the flipped items:
//! below any effect size worth a page. Inside a flipped category the model ranks its items
//! backwards, and the same residual rises ten times as much. So each segment runs its own
//! [`ConceptDrift`] on `discrimination`, centred on the segment's own mean logit (which also
//! takes the traffic mix out of its level: the reason the overall `discrimination` has no
//! Page-Hinkley test).
//!
//! # Threshold
//!
//! Every segment test is set for one false alarm per `false_alarm_every` of *its* examples;
//! the segments split the examples between them, so together they raise one per
//! `false_alarm_every` examples, the budget of any other detector.
//!
//! # Episodes
//!
//! Each segment has its own episode; the detector announces the union: one alert when the
//! first segment fires (naming it), one `resolved` when the last one has recovered (naming
//! every segment that drifted), rate-limited like every metric.
//!
//! # Joining labels with their segment
//!
//! When the segmenting field is `category` (the default), every label carries its
//! impression's category from the label join (which keeps it for the example anyway), and
//! the detector finds the segment by value: nothing to remember per impression. (A label
//! whose impression had no string `category`, or an empty one, is not segmented.) This
//! was a twentieth of a replay: a hash insert and remove per impression, and one more
//! observation per impression to route, sort and hand over.
//!
//! Labels do not carry other `ctx` fields: for another segmenting field the workers that
//! decode an impression send its id (hashed) with the segment value
//! ([`Observation::Segment`](ctrflow_dataflows::Observation)), and the detector keeps the
//! pending ones, dropping those older than two attribution windows (whose label will not
//! come). Its checkpointed state is the same either way.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use ctrflow_dataflows::{Alert, AlertKind, AlertState, EventTime};
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use super::concept::{ConceptDrift, ConceptSettings, LossMetric, Served};
use super::episode::EpisodeTiming;

/// The key joining an impression's segment with its label: a hash of its id.
pub fn id_key(id: &str) -> u64 {
    let mut h = FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// Per-segment concept drift; `serde` so that it can be checkpointed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentDrift {
    field: CompactString,
    max_segments: usize,
    settings: ConceptSettings,
    segments: Vec<Segment>,
    /// Segment value → index into `segments`: one hash lookup per impression instead of
    /// a string comparison with every segment. Derived from `segments` (rebuilt after a
    /// restore), so not serialized.
    #[serde(skip)]
    by_value: FxHashMap<CompactString, u16>,
    /// Impression id key → segment index, for impressions awaiting their label.
    pending: FxHashMap<u64, u16>,
    /// `(impression ts, id key)` in arrival order, to forget labels that never come.
    arrivals: VecDeque<(EventTime, u64)>,
    /// Forget pending impressions this much older than the watermark.
    keep_ms: EventTime,
    /// Segments whose episode is open.
    firing: Vec<u16>,
    /// Segments that drifted in the current union episode.
    drifted: Vec<u16>,
    union_since: EventTime,
    union_announced: bool,
    last_announced: Option<EventTime>,
    /// Values beyond `max_segments`, not watched (counted per impression, or per label
    /// when labels carry their segment).
    pub unwatched: u64,
    /// Union episodes not announced because of the rate limit.
    pub suppressed: u64,
    scratch: Vec<Alert>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Segment {
    value: CompactString,
    drift: ConceptDrift,
}

impl SegmentDrift {
    /// Watches `field`'s first `max_segments` values, each with `settings` (whose warm-up
    /// is per segment); labels are final at most `label_window_ms` after their impression.
    pub fn new(
        field: &str,
        max_segments: usize,
        settings: ConceptSettings,
        label_window_ms: u64,
    ) -> Self {
        Self {
            field: field.into(),
            max_segments: max_segments.min(usize::from(u16::MAX)),
            settings: ConceptSettings {
                page_hinkley: true,
                ..settings
            },
            segments: Vec::new(),
            by_value: FxHashMap::default(),
            pending: FxHashMap::default(),
            arrivals: VecDeque::new(),
            keep_ms: (2 * label_window_ms).max(60_000) as EventTime,
            firing: Vec::new(),
            drifted: Vec::new(),
            union_since: 0,
            union_announced: false,
            last_announced: None,
            unwatched: 0,
            suppressed: 0,
            scratch: Vec::new(),
        }
    }

    /// The index of segment `value`, watched from now on if there is room; `None` (and
    /// counted) for a value beyond `max_segments`.
    fn index_of(&mut self, value: &str) -> Option<u16> {
        if self.by_value.len() != self.segments.len() {
            self.by_value = (self.segments.iter().enumerate())
                .map(|(i, s)| (s.value.clone(), i as u16))
                .collect();
        }
        match self.by_value.get(value) {
            Some(&i) => Some(i),
            None if self.segments.len() < self.max_segments => {
                self.segments.push(Segment {
                    value: value.into(),
                    drift: ConceptDrift::new(LossMetric::Discrimination, self.settings),
                });
                // `max_segments` is at most `u16::MAX`.
                let i = (self.segments.len() - 1) as u16;
                self.by_value.insert(value.into(), i);
                Some(i)
            }
            None => {
                self.unwatched += 1;
                None
            }
        }
    }

    /// The impression `id` (its [`id_key`]), at `ts`, belongs to segment `value` (for a
    /// label that will not carry its segment).
    pub fn impression(&mut self, ts: EventTime, id: u64, value: &str) {
        let Some(index) = self.index_of(value) else {
            return;
        };
        self.pending.insert(id, index);
        self.arrivals.push_back((ts, id));
    }

    /// The impression `id` got its label, final at `ts`; `settled`: past the warm-up, so
    /// it is learned from (otherwise it is only forgotten). `segment` is the impression's
    /// segment when the label carries it; empty, it is the one [`impression`](Self::impression)
    /// gave for `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn label(
        &mut self,
        id: u64,
        segment: &str,
        served: Served,
        positive: bool,
        ts: EventTime,
        settled: bool,
        timing: &EpisodeTiming,
        out: &mut Vec<Alert>,
    ) {
        let index = if segment.is_empty() {
            self.pending.remove(&id)
        } else {
            self.index_of(segment)
        };
        let Some(index) = index else {
            return;
        };
        if !settled {
            return;
        }
        let segment = &mut self.segments[usize::from(index)];
        segment
            .drift
            .observe_served(served, positive, ts, timing, &mut self.scratch);
        for alert in std::mem::take(&mut self.scratch) {
            self.union(index, alert, timing, out);
        }
    }

    /// Forgets pending impressions older than the watermark `now` allows a label for.
    pub fn advance(&mut self, now: EventTime) {
        let horizon = now.saturating_sub(self.keep_ms);
        while let Some(&(ts, id)) = self.arrivals.front() {
            if ts >= horizon {
                break;
            }
            self.arrivals.pop_front();
            self.pending.remove(&id);
        }
    }

    /// Impressions awaiting their label.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn name(&self, index: u16) -> String {
        format!(
            "{}{{{}={}}}",
            LossMetric::Discrimination.name(),
            self.field,
            self.segments[usize::from(index)].value
        )
    }

    /// Folds one segment's alert into the union episode.
    fn union(
        &mut self,
        index: u16,
        mut alert: Alert,
        timing: &EpisodeTiming,
        out: &mut Vec<Alert>,
    ) {
        match alert.state {
            AlertState::Firing => {
                let opens = self.firing.is_empty();
                if !self.firing.contains(&index) {
                    self.firing.push(index);
                }
                if !self.drifted.contains(&index) {
                    self.drifted.push(index);
                }
                if !opens {
                    return;
                }
                self.union_since = alert.ts;
                let limited = self.last_announced.is_some_and(|t| {
                    alert.ts.saturating_sub(t) < timing.min_alert_interval_ms as EventTime
                });
                self.union_announced = !limited;
                if limited {
                    self.suppressed += 1;
                    return;
                }
                self.last_announced = Some(alert.ts);
                alert.metric = self.name(index).into();
                alert.message = format!(
                    "ranking within {}={} went wrong ({} of {} segments watched): {}",
                    self.field,
                    self.segments[usize::from(index)].value,
                    self.firing.len(),
                    self.segments.len(),
                    alert.message
                );
                out.push(alert);
            }
            AlertState::Resolved => {
                self.firing.retain(|&i| i != index);
                if !self.firing.is_empty() {
                    return;
                }
                let drifted: Vec<&str> = self
                    .drifted
                    .iter()
                    .map(|&i| self.segments[usize::from(i)].value.as_str())
                    .collect();
                let first = self.drifted.first().copied().unwrap_or(index);
                if self.union_announced {
                    alert.metric = self.name(first).into();
                    alert.window.from = self.union_since.min(alert.ts);
                    alert.kind = AlertKind::ConceptDrift;
                    alert.message = format!(
                        "ranking recovered in every segment of {}; drifted: {}",
                        self.field,
                        drifted.join(", ")
                    );
                    out.push(alert);
                }
                self.drifted.clear();
                self.union_announced = false;
            }
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
            warmup_examples: 2000,
            min_shift: 0.01,
            adwin_clock: 32,
            adwin_max_buckets: 5,
            page_hinkley: true,
            recovery_examples: 2000,
            false_alarm_every: 100_000_000,
        }
    }

    /// Ten segments; each served `p` is right, until `flip_at`, when segments 0..3 turn
    /// their ranking around (the truth mirrors the score around 4 %), the overall rate kept.
    fn run(n: u64, flip_at: Option<u64>) -> (Vec<Alert>, SegmentDrift) {
        run_carrying(n, flip_at, |i| i % 2 == 0)
    }

    /// [`run`], where the labels of the impressions `carried` picks carry their segment
    /// and the others are joined with it by id.
    fn run_carrying(
        n: u64,
        flip_at: Option<u64>,
        carried: impl Fn(u64) -> bool,
    ) -> (Vec<Alert>, SegmentDrift) {
        let timing = EpisodeTiming {
            resolve_after_ms: 0,
            min_alert_interval_ms: 0,
        };
        let mut d = SegmentDrift::new("category", 8, settings(), 1000);
        let mut rng = StdRng::seed_from_u64(5);
        let mut out = Vec::new();
        for i in 0..n {
            let ts = i as EventTime;
            let segment = rng.random_range(0..10u32);
            let id = id_key(&format!("imp-{i}"));
            let value = format!("c{segment}");
            let carried = carried(i);
            if !carried {
                d.impression(ts, id, &value);
            }
            let p: f64 = 0.04 * (rng.random_range(-1.5..1.5f64)).exp();
            let truth = match flip_at {
                Some(at) if i >= at && segment < 3 => 0.04 * 0.04 / p,
                _ => p,
            };
            d.label(
                id,
                if carried { &value } else { "" },
                Served::new(p),
                rng.random_bool(truth.min(1.0)),
                ts,
                true,
                &timing,
                &mut out,
            );
            d.advance(ts);
        }
        (out, d)
    }

    #[test]
    fn a_ranking_flip_in_some_segments_fires_once_naming_a_flipped_one() {
        let (alerts, d) = run(300_000, Some(150_000));
        let firing: Vec<_> = alerts
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .collect();
        assert_eq!(firing.len(), 1, "{alerts:#?}");
        assert!(firing[0].ts >= 150_000, "{alerts:#?}");
        let m = firing[0].metric.as_str();
        assert!(
            ["c0", "c1", "c2"]
                .iter()
                .any(|c| m == format!("discrimination{{category={c}}}")),
            "{m}"
        );
        // Values beyond the first 8 are counted, not watched.
        assert!(d.unwatched > 0);
        // Labels arrive at once here: nothing stays pending.
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn labels_carrying_their_segment_judge_it_as_labels_joined_by_id() {
        let (carried, c) = run_carrying(200_000, Some(100_000), |_| true);
        let (joined, j) = run_carrying(200_000, Some(100_000), |_| false);
        assert!(!carried.is_empty());
        assert_eq!(carried, joined);
        assert_eq!((c.unwatched, c.pending()), (j.unwatched, 0));
        assert_eq!(c.arrivals.len(), 0, "nothing remembered per impression");
    }

    #[test]
    fn a_stationary_stream_is_quiet() {
        let (alerts, _) = run(300_000, None);
        assert!(alerts.is_empty(), "{alerts:#?}");
    }

    #[test]
    fn a_restored_detector_finds_its_segments_by_value() {
        let mut d = SegmentDrift::new("category", 8, settings(), 1000);
        d.impression(0, 1, "a");
        d.impression(1, 2, "b");
        let mut bytes = Vec::new();
        ctrflow_state::codec::encode_value(&d, &mut bytes);
        let mut restored: SegmentDrift =
            ctrflow_state::codec::decode_value("operators", &bytes).unwrap();
        restored.impression(2, 3, "b");
        restored.impression(3, 4, "c");
        assert_eq!(restored.pending.get(&3), Some(&1));
        assert_eq!(restored.pending.get(&4), Some(&2));
        assert_eq!(restored.segments.len(), 3);
    }

    #[test]
    fn impressions_without_a_label_are_forgotten() {
        let mut d = SegmentDrift::new("category", 8, settings(), 1000);
        for i in 0..100 {
            d.impression(i, i as u64, "a");
        }
        assert_eq!(d.pending(), 100);
        // Kept for two attribution windows, at least a minute.
        d.advance(60_050);
        assert_eq!(d.pending(), 50);
    }
}
