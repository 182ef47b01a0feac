//! Drift detection: observations routed to the workers that run the detectors needing
//! them, handed over in event-time order, alerts out.
//!
//! # Why few workers, and which
//!
//! Alerts are global: "the model's loss rose" or "feedback stopped" is one episode for the
//! whole pipeline, not one per worker, and the contract promises one alert per episode. So
//! each detector runs once, on one worker, and sees the whole stream of the observations it
//! needs, in one order: a 1-worker run is deterministic and an N-worker run still raises
//! each alert once.
//!
//! The detectors need not all run on the same worker, though. [`Shards`] splits them into
//! a few *shards*, each with the kinds of observation it needs; shard `s` runs on worker
//! `s % peers`, and every observation is sent to each worker that runs a shard needing its
//! kind (an impression needed by two shards on two workers is sent twice: an
//! [`Observation`] is a few machine words, no ids or features). Each worker's detector
//! runs the shards that worker owns (the caller builds it so; see
//! `ctrflow::drift::Drift::for_worker`), and every worker sorts and feeds only its own
//! share. With one shard ([`Shards::ONE`]) or one worker, everything goes to worker 0, as
//! before shards existed. `ctx` values arrive already summarized per worker batch
//! ([`crate::DataSummary`]).
//!
//! A shard sees exactly the observations of its kinds that one detector seeing everything
//! would, in the same `(ts, kind)` order, so what it computes from them (its detectors, and
//! any state they share, which each shard needing it keeps a copy of) is what one detector
//! would compute.
//!
//! # Event time
//!
//! Observations are buffered until the input frontier (the watermark) passes their time,
//! then handed over in `(ts, kind)` order; `advance` follows with the watermark, so
//! detectors that evaluate event-time windows see every observation of a window before it
//! closes.
//!
//! # Runs, not single observations
//!
//! Each batch of observations travels as one record, a *run*: the sending worker sorts the
//! batch by `(ts, kind)` (stably, so ties keep their order) and hands the whole vector on,
//! so the exchange to the detecting worker and the buffering there move one vector per
//! batch instead of every observation (with 2M impressions, 4M observations each went
//! through a container builder, a copy into the exchange's buffers and one into the
//! operator's buffer). The operator merges the ready prefixes of its runs, ties going to
//! the run that arrived first: the order of a stable sort of everything by `(ts, kind)` in
//! arrival order, as when observations travelled one by one.
//!
//! # Checkpoints
//!
//! [`Detect::detect_shared`] keeps the detector and the observations it has not yet handed
//! over in a [`DetectState`] the worker can read between steps: once the dataflow's probe
//! (which must cover the alert stream) has passed a time, every observation before it is
//! in there, so the state is a consistent part of a checkpoint. Each worker checkpoints
//! its own (its shards'), and a restore needs the same number of workers. The pending
//! observations are stored as one list in arrival order (as before runs existed), and
//! restored as one run.

use std::cell::RefCell;
use std::rc::Rc;

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::Operator;

use super::chains::Chains;
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

    /// [`detect_shared`](Detect::detect_shared) with the detectors split into `shards`:
    /// each observation goes to the workers running a shard that needs its kind, and each
    /// worker's detector (in `state`) must run exactly the shards `s` with
    /// `s % peers == index` ([`Shards::runs`]).
    fn detect_sharded<D: Detector + 'static>(
        self,
        state: Rc<RefCell<DetectState<D>>>,
        shards: Shards,
    ) -> Stream<'scope, Watermark, Vec<Alert>>;
}

/// How the detectors split over workers: up to 8 shards, each needing some kinds of
/// observation; shard `s` runs on worker `s % peers`. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    /// Per kind of observation (indexed by [`kind_order`]), the shards needing it, as a
    /// bit set (bit `s`: shard `s`).
    needs: [u8; 4],
}

impl Shards {
    /// One shard: every observation to worker 0.
    pub const ONE: Shards = Shards { needs: [1; 4] };

    /// The shards (bit sets) needing `ctx` summaries, segments, impressions and labels.
    pub const fn new(data: u8, segment: u8, impression: u8, label: u8) -> Self {
        Self {
            needs: [data, segment, impression, label],
        }
    }

    /// Whether worker `index` of `peers` runs shard `shard`.
    pub fn runs(shard: usize, index: usize, peers: usize) -> bool {
        shard % peers.max(1) == index
    }

    /// The distinct workers (of `peers`) that need `o`, into `out`; returns how many.
    pub fn workers(&self, o: &Observation, peers: usize, out: &mut [u32; 8]) -> usize {
        let mut n = 0;
        let needs = self.needs[usize::from(kind_order(o))];
        for shard in 0..8 {
            if needs & (1 << shard) == 0 {
                continue;
            }
            let w = (shard % peers.max(1)) as u32;
            if !out[..n].contains(&w) {
                out[n] = w;
                n += 1;
            }
        }
        n
    }
}

/// Observations that arrived together (one batch), sorted by `(ts, kind)`; the first
/// `handed` of them were handed to the detector.
#[derive(Clone, Debug)]
struct Run {
    observations: Vec<Observation>,
    handed: usize,
}

impl Run {
    /// The observations not yet handed over.
    fn rest(&self) -> &[Observation] {
        &self.observations[self.handed..]
    }
}

/// A detector with the observations it has received and not yet been handed (ahead of the
/// watermark); `serde`, so that it can be checkpointed.
#[derive(Clone, Debug)]
pub struct DetectState<D> {
    /// The detector.
    pub detector: D,
    /// In arrival order.
    runs: Vec<Run>,
    advanced: EventTime,
}

impl<D> DetectState<D> {
    /// `detector`, with nothing pending.
    pub fn new(detector: D) -> Self {
        Self {
            detector,
            runs: Vec::new(),
            advanced: EventTime::MIN,
        }
    }

    /// The same pending observations with the detector replaced by `f(detector)` (to wrap
    /// a restored detector).
    pub fn map<E>(self, f: impl FnOnce(D) -> E) -> DetectState<E> {
        DetectState {
            detector: f(self.detector),
            runs: self.runs,
            advanced: self.advanced,
        }
    }

    /// A copy with the detector replaced by `f(&detector)` (to checkpoint the part of a
    /// wrapper that is state).
    pub fn project<E>(&self, f: impl FnOnce(&D) -> E) -> DetectState<E> {
        DetectState {
            detector: f(&self.detector),
            runs: self.runs.clone(),
            advanced: self.advanced,
        }
    }

    /// Observations received and not yet handed to the detector.
    pub fn pending(&self) -> usize {
        self.runs.iter().map(|r| r.rest().len()).sum()
    }
}

/// The pending observations of [`DetectState`] as one list, in arrival order of their runs.
struct Pending<'a>(&'a [Run]);

impl Serialize for Pending<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.0.iter().map(|r| r.rest().len()).sum();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for o in self.0.iter().flat_map(Run::rest) {
            seq.serialize_element(o)?;
        }
        seq.end()
    }
}

impl<D: Serialize> Serialize for DetectState<D> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("DetectState", 3)?;
        state.serialize_field("detector", &self.detector)?;
        state.serialize_field("buffer", &Pending(&self.runs))?;
        state.serialize_field("advanced", &self.advanced)?;
        state.end()
    }
}

/// The stored form of [`DetectState`].
#[derive(Deserialize)]
#[serde(rename = "DetectState")]
struct Stored<D> {
    detector: D,
    buffer: Vec<Observation>,
    advanced: EventTime,
}

impl<'de, D: Deserialize<'de>> Deserialize<'de> for DetectState<D> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        let Stored {
            detector,
            buffer,
            advanced,
        } = Stored::deserialize(deserializer)?;
        // One run: stably sorted, ties keep the order they were stored in, which is the
        // order the runs they came from would have handed them over in.
        let runs = if buffer.is_empty() {
            Vec::new()
        } else {
            vec![Run {
                observations: sorted(buffer),
                handed: 0,
            }]
        };
        Ok(Self {
            detector,
            runs,
            advanced,
        })
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
        self.detect_sharded(state, Shards::ONE)
    }

    fn detect_sharded<D: Detector + 'static>(
        self,
        state: Rc<RefCell<DetectState<D>>>,
        shards: Shards,
    ) -> Stream<'scope, Watermark, Vec<Alert>> {
        if shards == Shards::ONE {
            // Every run to worker 0, as it is.
            let runs: Stream<'scope, Watermark, Vec<Vec<Observation>>> =
                self.unary(Pipeline, "DetectRuns", |_cap, _info| {
                    |input, output| {
                        input.for_each(|cap, data| {
                            if !data.is_empty() {
                                output.session(&cap).give(sorted(std::mem::take(data)));
                            }
                        });
                    }
                });
            return detect_in_order(runs, Exchange::new(|_: &Vec<Observation>| 0), state, |r| r);
        }
        let peers = self.scope().peers();
        // On the sending worker: split each run into one per worker that needs some of it.
        let routed: Stream<'scope, Watermark, Vec<(u32, Vec<Observation>)>> =
            self.unary(Pipeline, "DetectRoute", move |_cap, _info| {
                move |input, output| {
                    let mut workers = [0u32; 8];
                    let mut split: Vec<Vec<Observation>> = Vec::new();
                    input.for_each(|cap, data| {
                        split.resize_with(peers, Vec::new);
                        for o in sorted(std::mem::take(data)) {
                            let n = shards.workers(&o, peers, &mut workers);
                            if let Some((&last, rest)) = workers[..n].split_last() {
                                for &w in rest {
                                    split[w as usize].push(o.clone());
                                }
                                split[last as usize].push(o);
                            }
                        }
                        let mut session = output.session(&cap);
                        for (w, run) in split.iter_mut().enumerate() {
                            if !run.is_empty() {
                                session.give((w as u32, std::mem::take(run)));
                            }
                        }
                    });
                }
            });
        let exchange = Exchange::new(|(w, _): &(u32, Vec<Observation>)| u64::from(*w));
        detect_in_order(routed, exchange, state, |(_, r)| r)
    }
}

/// `observations` stably sorted by `(ts, kind)`: a run.
fn sorted(mut observations: Vec<Observation>) -> Vec<Observation> {
    if !observations.is_sorted_by_key(key) {
        observations.sort_by_key(key);
    }
    observations
}

/// What observations are handed over in order of.
type Key = (EventTime, u8);

#[inline]
fn key(o: &Observation) -> Key {
    (o.ts(), kind_order(o))
}

/// The ready parts of several runs merged in `(ts, kind)` order, ties to the run that
/// arrived first (the heads are in arrival order). A linear scan of the heads per
/// observation: a round usually has a few runs ready (the impressions, the labels and the
/// `ctx` summaries of the batches the watermark passed); with more than [`MERGE_HEADS`]
/// (runs piled up behind a watermark held back), their keys are sorted instead.
struct Merge<'a> {
    /// Each run's key of its next observation, and its observations left.
    heads: SmallVec<[(Key, &'a [Observation]); MERGE_HEADS]>,
}

/// Most runs merged by scanning their heads.
const MERGE_HEADS: usize = 8;

impl<'a> Iterator for Merge<'a> {
    type Item = &'a Observation;

    #[inline]
    fn next(&mut self) -> Option<&'a Observation> {
        let mut best = 0;
        let mut best_key = self.heads.first()?.0;
        for (i, (k, _)) in self.heads.iter().enumerate().skip(1) {
            if *k < best_key {
                (best, best_key) = (i, *k);
            }
        }
        let (k, run) = &mut self.heads[best];
        let (first, rest) = run.split_first()?;
        match rest.first() {
            Some(next) => (*k, *run) = (key(next), rest),
            None => {
                self.heads.remove(best);
            }
        }
        Some(first)
    }
}

/// Hands `detector` the observations of `runs[from..]` before `now`, in `(ts, kind)` order
/// (ties to the run that arrived first), and forgets them. The runs before `from` must
/// have none before `now`.
fn observe_before<D: Detector>(
    detector: &mut D,
    runs: &mut Vec<Run>,
    from: usize,
    now: EventTime,
    scratch: &mut Scratch,
) {
    let Scratch {
        ready,
        order,
        segments,
        chains,
    } = scratch;
    // A run is sorted, so its ready observations are a prefix: per run with some, its
    // index and how many.
    ready.clear();
    ready.extend(runs.iter().enumerate().skip(from).filter_map(|(i, r)| {
        let n = r.rest().partition_point(|o| o.ts() < now);
        (n > 0).then_some((i, n))
    }));
    match ready[..] {
        [] => return,
        [(i, n)] => detector.observe_all(runs[i].rest()[..n].iter()),
        _ if ready.len() <= MERGE_HEADS => detector.observe_all(Merge {
            heads: (ready.iter())
                .map(|&(i, n)| {
                    let part = &runs[i].rest()[..n];
                    (key(&part[0]), part)
                })
                .collect(),
        }),
        _ => {
            // `(key, run, position)` is unique and in the order wanted. Each run is a
            // sorted segment, and one sender's runs follow one another: merged as chains.
            order.clear();
            segments.clear();
            for &(i, n) in ready.iter() {
                let (observations, handed) = (&runs[i].observations, runs[i].handed);
                let start = order.len();
                order.extend((handed..handed + n).map(|at| (key(&observations[at]), i, at)));
                segments.push(start..order.len());
            }
            if !chains.merge(order, segments) {
                order.sort_unstable();
            }
            detector.observe_all(order.iter().map(|&(_, i, at)| &runs[i].observations[at]));
        }
    }
    for &(i, n) in ready.iter() {
        runs[i].handed += n;
    }
    runs.retain(|r| r.handed < r.observations.len());
}

/// Scratch space of [`observe_before`].
#[derive(Default)]
struct Scratch {
    ready: Vec<(usize, usize)>,
    order: Vec<(Key, usize, usize)>,
    segments: Vec<std::ops::Range<usize>>,
    chains: Chains<(Key, usize, usize)>,
}

/// The detect operator itself: receives `stream`'s runs through `pact` (`run` takes one
/// out of a record), keeps them until the watermark passes their observations, and hands
/// those to the detector in `(ts, kind)` order.
fn detect_in_order<'scope, R, P, D>(
    stream: Stream<'scope, Watermark, Vec<R>>,
    pact: P,
    state: Rc<RefCell<DetectState<D>>>,
    run: fn(R) -> Vec<Observation>,
) -> Stream<'scope, Watermark, Vec<Alert>>
where
    R: 'static,
    P: ParallelizationContract<Watermark, Vec<R>>,
    D: Detector + 'static,
{
    stream.unary_frontier(pact, "Detect", move |_cap, _info| {
        let mut held = None;
        let mut alerts = Vec::new();
        let mut scratch = Scratch::default();
        // After a round at watermark `.0`, no run before index `.1` had an observation
        // before it left: while the watermark stays (with several workers the operator
        // runs once per arriving batch), only later arrivals are looked at.
        let mut scanned: (EventTime, usize) = (EventTime::MIN, 0);
        move |(input, frontier), output| {
            let mut guard = state.borrow_mut();
            let DetectState {
                detector,
                runs,
                advanced,
            } = &mut *guard;
            input.for_each(|cap, data| {
                if held.is_none() {
                    held = cap.retain_least(0);
                }
                runs.extend(data.drain(..).map(run).filter(|o| !o.is_empty()).map(
                    |observations| Run {
                        observations,
                        handed: 0,
                    },
                ));
            });
            let Some(cap) = held.as_mut() else { return };
            let watermark = frontier.frontier().iter().min().copied();
            let now = watermark.map_or(EventTime::MAX, |w| {
                EventTime::try_from(w).unwrap_or(EventTime::MAX)
            });
            let from = if scanned.0 == now { scanned.1 } else { 0 };
            observe_before(detector, runs, from.min(runs.len()), now, &mut scratch);
            scanned = (now, runs.len());
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
    use timely::dataflow::operators::{Capture, Probe, ToStream};

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

    /// Counts what it observes by kind (data, segment, impression, label), checking order.
    struct Kinds(Rc<RefCell<[u64; 4]>>, EventTime);
    impl Detector for Kinds {
        fn observe(&mut self, o: &Observation) {
            assert!(o.ts() >= self.1, "in order");
            self.1 = o.ts();
            self.0.borrow_mut()[usize::from(kind_order(o))] += 1;
        }
        fn advance(&mut self, _: EventTime, _: &mut Vec<Alert>) {}
    }

    /// Per worker, the observations of each kind its detector saw, when each of `workers`
    /// sends 10 of each kind: segments to shard 1, summaries to shard 0, the rest to both.
    fn sharded(workers: usize) -> Vec<[u64; 4]> {
        let (send, recv) = std::sync::mpsc::channel();
        let send = std::sync::Mutex::new(send);
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let counts = Rc::new(RefCell::new([0; 4]));
            let state = Rc::new(RefCell::new(DetectState::new(Kinds(Rc::clone(&counts), 0))));
            worker.dataflow::<Watermark, _, _>(|scope| {
                let obs: Vec<Observation> = (0..10)
                    .rev()
                    .flat_map(|ts| {
                        [
                            Observation::Impression { ts, score: 0.5 },
                            Observation::Segment {
                                ts,
                                id: 1,
                                value: "a".into(),
                            },
                            Observation::Label {
                                id: 1,
                                segment: Default::default(),
                                label_ts: ts,
                                at_input_end: false,
                                served: 0.5,
                                label: crate::record::LabelSource::Click,
                            },
                            Observation::Data(Box::default()),
                        ]
                    })
                    .collect();
                obs.to_stream(scope)
                    .detect_sharded(state, Shards::new(0b01, 0b10, 0b11, 0b11));
            });
            while worker.step() {}
            send.lock()
                .unwrap()
                .send((index, *counts.borrow()))
                .unwrap();
        })
        .unwrap();
        let mut seen: Vec<(usize, [u64; 4])> = recv.try_iter().collect();
        seen.sort();
        seen.into_iter().map(|(_, c)| c).collect()
    }

    /// Records what it observes.
    struct Log(std::sync::Arc<std::sync::Mutex<Vec<Observation>>>);
    impl Detector for Log {
        fn observe(&mut self, o: &Observation) {
            self.0.lock().unwrap().push(o.clone());
        }
        fn advance(&mut self, _: EventTime, _: &mut Vec<Alert>) {}
    }

    #[test]
    fn ties_in_time_and_kind_keep_arrival_order() {
        let label = |ts, served| Observation::Label {
            id: 0,
            segment: Default::default(),
            label_ts: ts,
            at_input_end: false,
            served,
            label: crate::record::LabelSource::Expired,
        };
        let imp = |ts| Observation::Impression { ts, score: 0.5 };
        let input = vec![label(5, 0.1), imp(5), label(5, 0.2), imp(1), label(5, 0.3)];
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&log);
        timely::example(move |scope| {
            input.to_stream(scope).detect(Log(seen));
        });
        let expected = vec![imp(1), imp(5), label(5, 0.1), label(5, 0.2), label(5, 0.3)];
        assert_eq!(*log.lock().unwrap(), expected);
    }

    fn label(ts: EventTime, served: f32) -> Observation {
        Observation::Label {
            id: 0,
            segment: Default::default(),
            label_ts: ts,
            at_input_end: false,
            served,
            label: crate::record::LabelSource::Expired,
        }
    }

    fn imp(ts: EventTime, score: f32) -> Observation {
        Observation::Impression { ts, score }
    }

    /// Batches sent as they are, each `(input time, observations)`; runs partly handed over
    /// when the watermark passes part of them, with ties across runs.
    fn batches() -> Vec<(Watermark, Vec<Observation>)> {
        vec![
            (
                0,
                vec![label(5, 0.1), imp(5, 0.1), imp(2, 0.2), label(3, 0.2)],
            ),
            (0, vec![imp(5, 0.3), label(5, 0.3), imp(9, 0.4)]),
            (4, vec![label(5, 0.5), imp(4, 0.6), imp(9, 0.7)]),
            (4, vec![imp(9, 0.8), label(12, 0.9), imp(4, 0.9)]),
        ]
    }

    /// What the detector sees of `batches()`: a stable sort of all of them by `(ts, kind)`.
    fn expected() -> Vec<Observation> {
        let mut all: Vec<Observation> = batches().into_iter().flat_map(|(_, b)| b).collect();
        all.sort_by_key(key);
        all
    }

    /// What a detector sees when `batches` are sent one by one, each `(input time,
    /// observations)`, the worker stepping until the watermark reaches each time.
    fn detected(batches: Vec<(Watermark, Vec<Observation>)>) -> Vec<Observation> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&log);
        timely::execute(timely::Config::thread(), move |worker| {
            let mut input = timely::dataflow::InputHandle::<
                Watermark,
                timely::container::CapacityContainerBuilder<Vec<Observation>>,
            >::new();
            let seen = std::sync::Arc::clone(&seen);
            let probe = worker.dataflow::<Watermark, _, _>(|scope| {
                input.to_stream(scope).detect(Log(seen)).probe().0
            });
            for (at, mut batch) in batches.clone() {
                input.advance_to(at);
                input.send_batch(&mut batch);
                worker.step_while(|| probe.less_than(&at));
            }
        })
        .unwrap();
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[test]
    fn runs_merge_in_order_with_ties_to_the_run_that_arrived_first() {
        assert_eq!(detected(batches()), expected());
    }

    /// Sends `runs` runs of `len` observations at once, observation `i` of run `b` being
    /// `observation(b, i, value)`, and checks the detector sees them all in `(ts, kind)`
    /// order, ties to the run that arrived first. More runs than the heads merged by
    /// scanning, all ready together (at the end of the input: the watermark stays at 0
    /// until then).
    fn runs_ready_at_once(runs: i64, len: i64, observation: impl Fn(i64, i64, f32) -> Observation) {
        let many: Vec<(Watermark, Vec<Observation>)> = (0..runs)
            .map(|b| {
                let batch = (0..len)
                    .map(|i| observation(b, i, (b * 10 + i) as f32))
                    .collect();
                (0, batch)
            })
            .collect();
        let mut expected: Vec<Observation> = many.iter().flat_map(|(_, b)| b.clone()).collect();
        expected.sort_by_key(key);
        assert_eq!(detected(many), expected);
    }

    #[test]
    fn many_runs_ready_at_once_merge_in_the_same_order() {
        runs_ready_at_once(20, 10, |b, i, v| {
            let ts = (i * 7 + b * 3) % 11;
            if i % 3 == 0 { label(ts, v) } else { imp(ts, v) }
        });
    }

    /// Two senders' runs (impressions, labels), each sender's in order with ties at the
    /// ends of its runs and across senders: merged as two chains.
    #[test]
    fn two_senders_runs_ready_at_once_merge_as_chains() {
        // Sender b % 2; its runs cover ts 3k..=3k+3 (k its run count): the last ts of a
        // run is the first of its next.
        runs_ready_at_once(24, 4, |b, i, v| {
            let ts = 3 * (b / 2) + i;
            if b % 2 == 0 { imp(ts, v) } else { label(ts, v) }
        });
    }

    #[test]
    fn pending_runs_survive_a_checkpoint_in_order() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut state = DetectState::new(Log(std::sync::Arc::clone(&log)));
        for (_, batch) in batches() {
            state.runs.push(Run {
                observations: sorted(batch),
                handed: 0,
            });
        }
        let mut scratch = Scratch::default();
        let DetectState { detector, runs, .. } = &mut state;
        observe_before(detector, runs, 0, 5, &mut scratch);
        let before = log.lock().unwrap().len();
        assert_eq!(before, 4, "{:?}", log.lock().unwrap());
        assert_eq!(state.pending(), 13 - before);
        // Stored with the detector's part that is state (here: nothing), restored, then
        // the rest handed over: the same order as without the checkpoint.
        let json = serde_json::to_string(&state.project(|_| ())).unwrap();
        let restored: DetectState<()> = serde_json::from_str(&json).unwrap();
        assert_eq!(restored.pending(), state.pending());
        let mut state = restored.map(|()| Log(std::sync::Arc::clone(&log)));
        let DetectState { detector, runs, .. } = &mut state;
        observe_before(detector, runs, 0, EventTime::MAX, &mut scratch);
        assert_eq!(state.pending(), 0);
        assert_eq!(*log.lock().unwrap(), expected());
    }

    #[test]
    fn a_stored_list_in_arrival_order_restores_as_one_sorted_run() {
        // The form checkpoints had before runs: the buffer in arrival order, unsorted.
        let stored = serde_json::json!({
            "detector": null,
            "buffer": [label(5, 0.1), imp(5, 0.1), label(5, 0.2), imp(1, 0.3)],
            "advanced": 0,
        });
        let restored: DetectState<()> = serde_json::from_value(stored).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut state = restored.map(|()| Log(std::sync::Arc::clone(&log)));
        let DetectState { detector, runs, .. } = &mut state;
        observe_before(detector, runs, 0, EventTime::MAX, &mut Scratch::default());
        let expected = vec![imp(1, 0.3), imp(5, 0.1), label(5, 0.1), label(5, 0.2)];
        assert_eq!(*log.lock().unwrap(), expected);
    }

    #[test]
    fn shards_split_the_kinds_over_two_workers() {
        assert_eq!(sharded(2), [[20, 0, 20, 20], [0, 20, 20, 20]]);
    }

    #[test]
    fn with_one_worker_every_shard_is_on_it_once() {
        assert_eq!(sharded(1), [[10, 10, 10, 10]]);
    }

    #[test]
    fn with_three_workers_the_third_gets_nothing() {
        assert_eq!(sharded(3), [[30, 0, 30, 30], [0, 30, 30, 30], [0, 0, 0, 0]]);
    }
}
