//! Drift detection: every observation routed to one worker, handed to the detector in
//! event-time order, alerts out.
//!
//! # Why one worker
//!
//! Alerts are global: "the model's loss rose" or "feedback stopped" is one episode for the
//! whole pipeline, not one per worker, and the contract promises one alert per episode.
//! Sending every observation to worker 0 gives one detector that sees the whole stream,
//! in one order, so a 1-worker run is deterministic and an N-worker run still raises each
//! alert once. The cost is bounded: an [`Observation`] is a few machine words (no ids, no
//! features), and `ctx` values arrive already summarized per worker batch
//! ([`crate::DataSummary`]).
//!
//! # Event time
//!
//! Observations are buffered until the input frontier (the watermark) passes their time,
//! then sorted by `(ts, kind)` and handed over; `advance` follows with the watermark, so
//! detectors that evaluate event-time windows see every observation of a window before it
//! closes.
//!
//! # Checkpoints
//!
//! [`Detect::detect_shared`] keeps the detector and the observations it has not yet handed
//! over in a [`DetectState`] the worker can read between steps: once the dataflow's probe
//! (which must cover the alert stream) has passed a time, every observation before it is
//! in there, so the state is a consistent part of a checkpoint.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::detector::{Alert, Detector, Observation};
use crate::operators::Watermark;
use crate::record::EventTime;

/// Extension trait for watching a stream of observations for drift.
pub trait Detect<'scope> {
    /// Routes every observation to worker 0, hands them to `detector` in event-time order
    /// and emits the alerts it raises.
    ///
    /// # Examples
    /// ```
    /// use ctrflow_dataflows::operators::Detect;
    /// use ctrflow_dataflows::{Alert, AlertKind, AlertState, AlertWindow, Detector, Observation, Severity};
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// /// Alerts on the first score above 0.9.
    /// struct High(bool);
    /// impl Detector for High {
    ///     fn observe(&mut self, o: &Observation) {
    ///         self.0 |= matches!(o, Observation::Impression { score, .. } if *score > 0.9);
    ///     }
    ///     fn advance(&mut self, now: i64, alerts: &mut Vec<Alert>) {
    ///         if std::mem::take(&mut self.0) {
    ///             alerts.push(Alert {
    ///                 kind: AlertKind::Calibration, state: AlertState::Firing,
    ///                 severity: Severity::Warning, detector: "high".into(), metric: "score".into(),
    ///                 value: 1.0, threshold: 0.9, window: AlertWindow { from: now, to: now },
    ///                 ts: now, message: String::new(),
    ///             });
    ///         }
    ///     }
    /// }
    ///
    /// let captured = timely::example(|scope| {
    ///     let obs = vec![
    ///         Observation::Impression { ts: 1, score: 0.1 },
    ///         Observation::Impression { ts: 2, score: 0.95 },
    ///     ];
    ///     obs.to_stream(scope).detect(High(false)).capture()
    /// });
    /// let alerts: Vec<Alert> = captured
    ///     .try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, a) => a, Event::Progress(_) => vec![] })
    ///     .collect();
    /// assert_eq!(alerts.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn detect<D: Detector + 'static>(self, detector: D) -> Stream<'scope, Watermark, Vec<Alert>>;

    /// [`detect`](Detect::detect) with the detector and its pending observations in `state`,
    /// shared with the worker (for checkpoints; see the module docs).
    fn detect_shared<D: Detector + 'static>(
        self,
        state: Rc<RefCell<DetectState<D>>>,
    ) -> Stream<'scope, Watermark, Vec<Alert>>;
}

/// A detector with the observations it has received and not yet been handed (ahead of the
/// watermark); `serde`, so that it can be checkpointed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectState<D> {
    /// The detector.
    pub detector: D,
    buffer: Vec<Observation>,
    advanced: EventTime,
}

impl<D> DetectState<D> {
    /// `detector`, with nothing pending.
    pub fn new(detector: D) -> Self {
        Self {
            detector,
            buffer: Vec::new(),
            advanced: EventTime::MIN,
        }
    }

    /// The same pending observations with the detector replaced by `f(detector)` (to wrap
    /// a restored detector).
    pub fn map<E>(self, f: impl FnOnce(D) -> E) -> DetectState<E> {
        DetectState {
            detector: f(self.detector),
            buffer: self.buffer,
            advanced: self.advanced,
        }
    }

    /// A copy with the detector replaced by `f(&detector)` (to checkpoint the part of a
    /// wrapper that is state).
    pub fn project<E>(&self, f: impl FnOnce(&D) -> E) -> DetectState<E> {
        DetectState {
            detector: f(&self.detector),
            buffer: self.buffer.clone(),
            advanced: self.advanced,
        }
    }

    /// Observations received and not yet handed to the detector.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

impl<'scope> Detect<'scope> for Stream<'scope, Watermark, Vec<Observation>> {
    fn detect<D: Detector + 'static>(self, detector: D) -> Stream<'scope, Watermark, Vec<Alert>> {
        self.detect_shared(Rc::new(RefCell::new(DetectState::new(detector))))
    }

    fn detect_shared<D: Detector + 'static>(
        self,
        state: Rc<RefCell<DetectState<D>>>,
    ) -> Stream<'scope, Watermark, Vec<Alert>> {
        let exchange = Exchange::new(|_: &Observation| 0);
        self.unary_frontier(exchange, "Detect", move |_cap, _info| {
            let mut held = None;
            let mut alerts = Vec::new();
            move |(input, frontier), output| {
                let mut guard = state.borrow_mut();
                let DetectState {
                    detector,
                    buffer,
                    advanced,
                } = &mut *guard;
                input.for_each(|cap, data| {
                    if held.is_none() {
                        held = cap.retain_least(0);
                    }
                    buffer.append(data);
                });
                let Some(cap) = held.as_mut() else { return };
                let watermark = frontier.frontier().iter().min().copied();
                let now = watermark.map_or(EventTime::MAX, |w| {
                    EventTime::try_from(w).unwrap_or(EventTime::MAX)
                });
                // Sorting waits until something is ready: with several workers most
                // schedules bring a few observations ahead of the watermark, and a stable
                // sort of a sorted prefix plus the rest gives the order of one later sort.
                if buffer.iter().any(|o| o.ts() < now) {
                    buffer.sort_by_key(|o| (o.ts(), kind_order(o)));
                    let ready = buffer.partition_point(|o| o.ts() < now);
                    for o in buffer.drain(..ready) {
                        detector.observe(&o);
                    }
                }
                if now > *advanced {
                    // At the end of the input, evaluate up to the last observation seen.
                    *advanced = now;
                    detector.advance(now, &mut alerts);
                }
                if !alerts.is_empty() {
                    output.session(&cap).give_iterator(alerts.drain(..));
                }
                match watermark {
                    Some(w) if w > *cap.time() => cap.downgrade(&w),
                    Some(_) => {}
                    None => held = None,
                }
            }
        })
    }
}

/// Ties in event time: data summaries, then segments and impressions, then labels, so an
/// impression is seen before a label with the same timestamp.
fn kind_order(o: &Observation) -> u8 {
    match o {
        Observation::Data(_) => 0,
        Observation::Segment { .. } => 1,
        Observation::Impression { .. } => 2,
        Observation::Label { .. } => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{AlertKind, AlertState, AlertWindow, Severity};
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, ToStream};

    /// Records the order it saw, and raises one alert per advance that saw anything.
    struct Recorder(Vec<EventTime>);
    impl Detector for Recorder {
        fn observe(&mut self, o: &Observation) {
            self.0.push(o.ts());
        }
        fn advance(&mut self, now: EventTime, alerts: &mut Vec<Alert>) {
            if self.0.is_empty() {
                return;
            }
            let seen = std::mem::take(&mut self.0);
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "in order: {seen:?}");
            alerts.push(Alert {
                kind: AlertKind::ConceptDrift,
                state: AlertState::Firing,
                severity: Severity::Warning,
                detector: "recorder".into(),
                metric: "count".into(),
                value: seen.len() as f64,
                threshold: 0.0,
                window: AlertWindow {
                    from: seen[0],
                    to: seen[seen.len() - 1],
                },
                ts: now,
                message: String::new(),
            });
        }
    }

    fn run(workers: usize) -> f64 {
        let (send, recv) = std::sync::mpsc::channel();
        let send = std::sync::Mutex::new(send);
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index() as i64;
            let send = send.lock().unwrap().clone();
            worker.dataflow::<Watermark, _, _>(|scope| {
                // Each worker sees a different, unsorted share.
                let obs: Vec<Observation> = (0..100)
                    .rev()
                    .map(|i| Observation::Impression {
                        ts: i * 10 + index,
                        score: 0.5,
                    })
                    .collect();
                obs.to_stream(scope)
                    .detect(Recorder(Vec::new()))
                    .capture_into(send);
            });
        })
        .unwrap();
        recv.try_iter()
            .flat_map(|event| match event {
                Event::Messages(_, alerts) => alerts,
                Event::Progress(_) => Vec::new(),
            })
            .map(|a| a.value)
            .sum()
    }

    #[test]
    fn every_observation_reaches_one_detector_in_order_1w() {
        assert_eq!(run(1), 100.0);
    }

    #[test]
    fn every_observation_reaches_one_detector_in_order_2w() {
        assert_eq!(run(2), 200.0);
    }
}
