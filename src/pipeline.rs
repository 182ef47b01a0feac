//! What `replay` and `run` share: the learning dataflow of one worker, turning payloads
//! into its records, and the contract's output records.
//!
//! The two commands differ only in where payloads come from (a file's blocks, Kafka
//! partitions) and where outputs go (files, topics); everything between is built here, so
//! a replay measures exactly the dataflow a worker runs.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use ctrflow_dataflows::operators::{
    Aggregate, Aggregates, Detect, DetectState, JoinState, LearnOnline, Watermark, route,
};
use ctrflow_dataflows::{
    Alert, Detector, Entities, EventFeatures, EventTime, Example, Features, Interaction,
    InteractionKind, Observation, Score,
};
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Concat;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Stream};
use timely::worker::Worker;

use crate::config::PipelineConfig;
use crate::drift::Drift;
use crate::drift::data::CtxSketch;
use crate::drift::response::{Response, Serving};
use crate::drift::segment::id_key;
use crate::entity::{EntityStore, MaybeEntities};
use crate::event::{self, CtxValue, DecodeError, Event, FeedbackKind};
use crate::features::Featurizer;
use crate::model::Model;
use crate::progressive::Progressive;
use crate::timeline::{Timeline, TimelineOutput};

/// The dataflow's input.
pub type Input = InputHandle<Watermark, CapacityContainerBuilder<Vec<Interaction>>>;

/// The drift detectors' own input: per-worker summaries of decoded `ctx` values.
pub type DriftInput = InputHandle<Watermark, CapacityContainerBuilder<Vec<Observation>>>;

/// One worker's learning dataflow and the handles to drive and observe it.
pub struct Dataflow {
    /// Where records go in, at the worker's watermark ([`Ingest::send`], which routes
    /// them between the two, [`Dataflow::advance_to`], [`Dataflow::close`]): this one
    /// crosses to the worker that owns each record's impression...
    input: Input,
    /// ...and this one takes the records this worker owns, which skip the exchange
    /// ([`LearnOnline::learn_online_routed`]).
    local: Input,
    /// This worker's index and the number of workers, to route records.
    worker: (u64, u64),
    /// Per worker (this one included), the records on their way there, sent as one
    /// container when [`STAGED`] are (and before the inputs advance or flush): the
    /// exchange passes a container bound for one worker on whole instead of copying its
    /// records apart ([`ctrflow_dataflows::operators::route`]), and each record is copied
    /// once on the way in, not once more into timely's 8 KiB containers.
    staged: Vec<Vec<Interaction>>,
    /// Passes a time once every record before it is scored and learned from.
    pub probe: ProbeHandle<Watermark>,
    /// This worker's label join: its counters, and its state for checkpoints.
    pub join: Rc<RefCell<JoinState>>,
    /// Progressive metrics of the examples this worker learned from.
    pub progressive: Rc<RefCell<Progressive>>,
    /// Where `ctx` summaries go in, when the dataflow detects drift ([`build_detecting`]);
    /// advance it with [`Dataflow::advance_to`], close it with [`Dataflow::close`].
    pub drift_input: Option<DriftInput>,
    /// Drift alerts raised on this worker (by the detectors it runs), in the order raised.
    pub alerts: Rc<RefCell<Vec<Alert>>>,
    /// The global aggregates, when enabled (`[aggregates]`); complete on worker 0.
    pub aggregates: Option<Rc<RefCell<Aggregates>>>,
    /// The drift detectors and what they have not yet observed, when the dataflow detects
    /// (this worker's shards of them); read it between steps, for checkpoints.
    pub detect: Option<Rc<RefCell<DetectState<Watch>>>>,
    /// The dataflow's identifier, to drop it on shutdown.
    pub id: usize,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataflow")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Empty progressive metrics as configured.
pub fn progressive(config: &PipelineConfig) -> Progressive {
    Progressive::with_window(config.metrics.window, config.metrics.window_slices)
}

/// What the `examples` output does with a batch of labelled impressions.
pub type OnExamples = Box<dyn FnMut(&[Example])>;

/// What happens to each drift alert as it is raised.
pub type OnAlert = Box<dyn FnMut(&Alert)>;

/// What a worker resumes from: its label join and progressive metrics as checkpointed.
#[derive(Debug)]
pub struct Restored {
    /// The label join.
    pub join: JoinState,
    /// The progressive metrics.
    pub progressive: Progressive,
    /// The newest event time the worker had read.
    pub newest: i64,
    /// The time its input stood at.
    pub input_time: Watermark,
    /// The global aggregates' window (worker 0, when the checkpoint holds them).
    pub aggregates: Option<Aggregates>,
    /// The drift detectors (this worker's shards of them, when it detects).
    pub detect: Option<DetectState<Drift>>,
}

/// What the workers of a process share, and what one worker resumes from.
#[derive(Debug, Default)]
pub struct Context<'a> {
    /// The entity features, when enabled (`features.entity`).
    pub entities: Option<&'a EntityStore>,
    /// The worker's checkpointed state, when resuming.
    pub restored: Option<Restored>,
    /// Metrics over time and drift metrics ([`crate::timeline`]): give it to worker 0
    /// only, which runs the detectors that report statistics (the main shard of
    /// `DriftConfig::shards`) and gets every impression and label. With it, the `Detect` operator runs even when
    /// `[drift]` is disabled (then with no detector).
    pub timeline: Option<TimelineOutput>,
    /// The response policy (`[drift.response]`), shared by every worker of the process
    /// ([`Response::new`]); `None` when it is off.
    pub response: Option<Arc<Response>>,
}

/// Builds the learning dataflow on `worker`: records in, one score per impression handed
/// to `on_scores` (in batches), examples into the progressive metrics and, with their
/// hashed features, to `on_examples` when there is one. `context` supplies the entity
/// features and the worker's checkpointed state.
pub fn build(
    worker: &mut Worker,
    config: &PipelineConfig,
    model: &Model,
    context: Context<'_>,
    on_scores: impl FnMut(&[Score]) + 'static,
    on_examples: Option<OnExamples>,
) -> Dataflow {
    build_inner(worker, config, model, context, on_scores, on_examples, None)
}

/// [`build`], plus the drift detectors of `[drift]` (when enabled) watching the scores,
/// the examples and the `ctx` summaries sent to [`Dataflow::drift_input`]; each alert is
/// handed to `on_alert` as it is raised and collects in [`Dataflow::alerts`]. The caller
/// must advance and close the drift input with the main one ([`Dataflow::advance_to`],
/// [`Dataflow::close`]).
pub fn build_detecting(
    worker: &mut Worker,
    config: &PipelineConfig,
    model: &Model,
    context: Context<'_>,
    on_scores: impl FnMut(&[Score]) + 'static,
    on_examples: Option<OnExamples>,
    on_alert: impl FnMut(&Alert) + 'static,
) -> Dataflow {
    let detect = config.drift.enabled || context.timeline.is_some();
    let on_alert: Option<OnAlert> = Some(Box::new(on_alert));
    build_inner(
        worker,
        config,
        model,
        context,
        on_scores,
        on_examples,
        on_alert.filter(|_| detect),
    )
}

fn build_inner(
    worker: &mut Worker,
    config: &PipelineConfig,
    model: &Model,
    context: Context<'_>,
    mut on_scores: impl FnMut(&[Score]) + 'static,
    mut on_examples: Option<OnExamples>,
    on_alert: Option<OnAlert>,
) -> Dataflow {
    let mut input = Input::new();
    let mut local = Input::new();
    let mut drift_input = on_alert.is_some().then(DriftInput::new);
    let alerts = Rc::new(RefCell::new(Vec::new()));
    let probe = ProbeHandle::new();
    let (join, progressive, aggregates, detect) = match context.restored {
        Some(r) => (r.join, r.progressive, r.aggregates, r.detect),
        None => (
            JoinState::new(&config.label),
            progressive(config),
            None,
            None,
        ),
    };
    let aggregates = config.aggregates.enabled.then(|| {
        Rc::new(RefCell::new(
            aggregates.unwrap_or_else(|| Aggregates::new(&config.aggregates)),
        ))
    });
    let timeline = context.timeline;
    let response = context.response;
    let detect = drift_input.is_some().then(|| {
        let drift_config = if config.drift.enabled {
            config.drift.clone()
        } else {
            config.drift.all_off()
        };
        let window_ms = config.label.window_ms;
        let state =
            detect.unwrap_or_else(|| DetectState::new(Drift::new(&drift_config, window_ms)));
        // Each worker runs its shards of the detectors (`DriftConfig::shards`).
        let state = state.map(|drift| {
            drift.for_worker(worker.index(), worker.peers(), &drift_config, window_ms)
        });
        Rc::new(RefCell::new(state.map(|drift| Watch {
            detectors: match timeline {
                Some(output) => Watching::Recorded(Box::new(Timeline::new(
                    drift,
                    output,
                    self::progressive(config),
                ))),
                None => Watching::Plain(Box::new(drift)),
            },
            response: response.clone(),
        })))
    });
    let join = Rc::new(RefCell::new(join));
    let progressive = Rc::new(RefCell::new(progressive));
    let enrich = match context.entities {
        Some(store) if config.features.entity.enabled => MaybeEntities::On(store.handle()),
        _ => MaybeEntities::Off,
    };
    let id = worker.next_dataflow_index();
    let index = worker.index();
    let mut handle = model.handle();
    if worker.peers() > 1 {
        // Workers writing the same frequent coordinates take their cache lines from each
        // other at every update (up to 10% of 2 workers' CPU): each batches its writes.
        handle.hold_frequent_updates();
    }
    worker.dataflow::<Watermark, _, _>(|scope| {
        let owned = local.to_stream(scope).container::<Vec<Interaction>>();
        let (scored, examples) = input
            .to_stream(scope)
            .container::<Vec<Interaction>>()
            .learn_online_routed(
                owned,
                Serving::new(handle, response, index),
                enrich,
                Rc::clone(&join),
                on_examples.is_some(),
            );
        let scored = scored.inspect_core(move |event| {
            if let Ok((_, batch)) = event {
                on_scores(batch);
            }
        });
        let metrics = Rc::clone(&progressive);
        let examples = examples
            .inspect_core(move |event| {
                if let Ok((_, batch)) = event {
                    let mut metrics = metrics.borrow_mut();
                    for e in batch {
                        let positive = e.label.is_positive();
                        metrics.observe_label(e.served, positive, e.reference, e.at_input_end);
                    }
                    if let Some(out) = on_examples.as_mut() {
                        out(batch);
                    }
                }
            })
            .probe_with(&probe);
        if let Some(state) = &aggregates {
            scored
                .clone()
                .aggregate(examples.clone(), Rc::clone(state))
                .probe_with(&probe);
        }
        let scored = scored.probe_with(&probe);
        if let (Some(drift_input), Some(detect), Some(mut on_alert)) =
            (drift_input.as_mut(), detect.as_ref(), on_alert)
        {
            // One vector of observations per batch, handed on whole: the `Detect`
            // operator moves batches (runs), not observations.
            let impressions: Stream<'_, Watermark, Vec<Observation>> =
                scored.unary(Pipeline, "ImpressionObservations", |_cap, _info| {
                    |input, output| {
                        input.for_each(|cap, batch| {
                            let mut run: Vec<Observation> = (batch.iter())
                                .map(|s| Observation::Impression {
                                    ts: s.event_ts,
                                    score: s.score,
                                })
                                .collect();
                            output.session(&cap).give_container(&mut run);
                        });
                    }
                });
            // Labels carry their segment when it is the category the example has; else
            // the detector joins them with it by the id's hash.
            let carried = config.drift.segments.carried_by_labels();
            let labels: Stream<'_, Watermark, Vec<Observation>> =
                examples.unary(Pipeline, "LabelObservations", move |_cap, _info| {
                    move |input, output| {
                        input.for_each(|cap, batch| {
                            let mut run: Vec<Observation> = (batch.iter_mut())
                                .map(|e| Observation::Label {
                                    id: if carried { 0 } else { id_key(&e.id) },
                                    label_ts: e.label_ts,
                                    served: e.served,
                                    label: e.label,
                                    at_input_end: e.at_input_end,
                                    segment: if carried {
                                        std::mem::take(&mut e.category)
                                    } else {
                                        CompactString::default()
                                    },
                                })
                                .collect();
                            output.session(&cap).give_container(&mut run);
                        });
                    }
                });
            let sink = Rc::clone(&alerts);
            impressions
                .concat(labels)
                .concat(drift_input.to_stream(scope))
                .detect_sharded(Rc::clone(detect), config.drift.shards())
                .inspect(move |alert| {
                    on_alert(alert);
                    sink.borrow_mut().push(alert.clone());
                })
                // Past the probe, the detectors hold every observation before it (their
                // state is then part of a checkpoint).
                .probe_with(&probe);
        }
    });
    Dataflow {
        input,
        local,
        worker: (index as u64, worker.peers() as u64),
        staged: (0..worker.peers()).map(|_| Vec::new()).collect(),
        probe,
        join,
        progressive,
        drift_input,
        detect,
        alerts,
        aggregates,
        id,
    }
}

/// What the `Detect` operator runs: the drift detectors, with the metrics over time
/// recorded around them when asked (`Timeline`), and the response policy they trigger.
/// Checkpoints keep the detectors only.
#[derive(Debug)]
pub struct Watch {
    detectors: Watching,
    response: Option<Arc<Response>>,
}

/// The detectors, plain or recorded.
#[derive(Debug)]
enum Watching {
    /// The detectors alone.
    Plain(Box<Drift>),
    /// The detectors inside the metrics-over-time recorder.
    Recorded(Box<Timeline>),
}

impl Watch {
    /// The detectors.
    pub fn drift(&self) -> &Drift {
        match &self.detectors {
            Watching::Plain(drift) => drift,
            Watching::Recorded(timeline) => timeline.drift(),
        }
    }
}

impl Detector for Watch {
    fn observe(&mut self, observation: &Observation) {
        match &mut self.detectors {
            Watching::Plain(d) => d.observe(observation),
            Watching::Recorded(t) => t.observe(observation),
        }
    }

    fn observe_all<'o>(&mut self, observations: impl Iterator<Item = &'o Observation>) {
        match &mut self.detectors {
            Watching::Plain(d) => d.observe_all(observations),
            Watching::Recorded(t) => t.observe_all(observations),
        }
    }

    fn advance(&mut self, now: EventTime, alerts: &mut Vec<Alert>) {
        let from = alerts.len();
        match &mut self.detectors {
            Watching::Plain(d) => d.advance(now, alerts),
            Watching::Recorded(t) => t.advance(now, alerts),
        }
        // A firing concept_drift starts a challenger; promotions become alerts here, on
        // the way to every sink.
        if let Some(response) = &self.response {
            response.after_advance(now, alerts, from);
        }
    }
}

/// Records staged per worker before they are sent: containers of ~90 KB (timely's own
/// hold 8 KiB, 23 records). Measured, 2M impressions, alternated rounds: 2 workers −3.5%
/// wall time at 64, 256 or 1,024 alike, 1 worker −1 to −2%.
const STAGED: usize = 256;

impl Dataflow {
    /// The records staged for the worker that owns impression `id`, with room for one more:
    /// [`Ingest::send`] builds its record there. Records go at the inputs' time
    /// ([`Dataflow::time`]) to the worker that owns their impression, straight to this
    /// worker's label join or across the exchange, in containers of [`STAGED`] (a full one
    /// goes when the next record for its worker comes, or when the inputs advance, flush or
    /// close).
    fn staging_for(&mut self, id: &str) -> &mut Vec<Interaction> {
        let (index, peers) = self.worker;
        let owner = if peers <= 1 { index } else { route(id) % peers } as usize;
        if self.staged[owner].len() >= STAGED {
            self.send_staged_for(owner);
        }
        let staged = &mut self.staged[owner];
        if staged.capacity() == 0 {
            // Sending a container leaves none behind: one allocation per container, not a
            // doubling (and copy) every few records.
            staged.reserve_exact(STAGED);
        }
        staged
    }

    /// Sends the records staged for worker `w`: its own straight to its label join, the
    /// others' across the exchange.
    fn send_staged_for(&mut self, w: usize) {
        let staged = &mut self.staged[w];
        if w as u64 == self.worker.0 {
            self.local.send_batch(staged);
        } else {
            self.input.send_batch(staged);
        }
        staged.clear();
    }

    /// Sends the records staged.
    fn send_staged(&mut self) {
        for w in 0..self.staged.len() {
            self.send_staged_for(w);
        }
    }

    /// The time records are sent at: the worker's watermark.
    pub fn time(&self) -> Watermark {
        *self.input.time()
    }

    /// Moves every input to `t` (no-op for inputs already there).
    pub fn advance_to(&mut self, t: Watermark) {
        if t > *self.input.time() {
            self.send_staged();
            self.input.advance_to(t);
        }
        if t > *self.local.time() {
            self.local.advance_to(t);
        }
        if let Some(drift) = self.drift_input.as_mut()
            && t > *drift.time()
        {
            drift.advance_to(t);
        }
    }

    /// Hands what a worker's [`Ingest`] observed (`ctx` summaries, segments) to the drift
    /// detectors (dropped without them).
    pub fn send_summary(&mut self, observation: Observation) {
        if let Some(drift) = self.drift_input.as_mut() {
            drift.send(observation);
        }
    }

    /// Sends what the inputs buffer at their current time.
    pub fn flush(&mut self) {
        self.send_staged();
        self.input.flush();
        self.local.flush();
        if let Some(drift) = self.drift_input.as_mut() {
            drift.flush();
        }
    }

    /// Closes every input: the dataflow finishes once what was sent is processed.
    pub fn close(&mut self) {
        self.send_staged();
        std::mem::replace(&mut self.input, Input::new()).close();
        std::mem::replace(&mut self.local, Input::new()).close();
        if let Some(drift) = self.drift_input.take() {
            drift.close();
        }
    }
}

/// Turns payloads into the dataflow's records: decode, validate, hash an impression's
/// features. Owns the buffers, so that a typical event allocates nothing.
#[derive(Debug)]
pub struct Ingest {
    featurizer: Featurizer,
    features: Features,
    max_event_bytes: usize,
    /// Whether impressions get their entity keys: only entity features use them, and
    /// hashing them was 1.5% of a replay without.
    entity_keys: bool,
    /// Counts `ctx` values for data drift, when asked to ([`Ingest::sketching`]).
    sketch: Option<CtxSketch>,
    /// The `ctx` field whose value is each impression's segment, for per-segment concept
    /// drift ([`crate::drift::segment`]), when asked to and labels do not carry it.
    segment_field: Option<CompactString>,
    /// `ctx` summaries and segments, for the drift detectors.
    summaries: Vec<Observation>,
}

impl Ingest {
    /// Ready for `config` (validated: the featurizer cannot fail here).
    pub fn new(config: &PipelineConfig) -> anyhow::Result<Self> {
        Ok(Self {
            featurizer: Featurizer::new(&config.features)?,
            features: Features::new(),
            max_event_bytes: config.input.max_event_bytes,
            entity_keys: config.features.entity.enabled,
            sketch: None,
            segment_field: None,
            summaries: Vec::new(),
        })
    }

    /// Also counts impressions' `ctx` values for the data-drift detector, when `[drift]`
    /// enables it; collect the summaries with [`Ingest::take_summaries`].
    pub fn sketching(mut self, config: &PipelineConfig) -> Self {
        if config.drift.enabled && config.drift.data.enabled {
            self.sketch = Some(config.drift.data.sketch());
        }
        let segments = &config.drift.segments;
        if config.drift.enabled && segments.enabled && !segments.carried_by_labels() {
            self.segment_field = Some(segments.field.as_str().into());
        }
        self
    }

    /// The `ctx` summaries completed and the segments seen since the last call; with
    /// `flush`, the incomplete summary too (at the end of the input).
    pub fn take_summaries(&mut self, flush: bool) -> std::vec::Drain<'_, Observation> {
        if flush && let Some(last) = self.sketch.as_mut().and_then(CtxSketch::take) {
            self.summaries.push(Observation::Data(Box::new(last)));
        }
        self.summaries.drain(..)
    }

    /// Decodes `payload`, found at position `pos` of its source, and stages its record in
    /// `dataflow`; returns the record as staged, or why the payload is bad. Built where it
    /// is staged: a record is ~280 bytes, and each move of it on the way (out of a
    /// function, out of its `Result`, into a send) was a `memcpy`.
    pub fn send<'d>(
        &mut self,
        payload: &[u8],
        pos: u64,
        dataflow: &'d mut Dataflow,
    ) -> Result<&'d Interaction, DecodeError> {
        // Borrowed where it was decoded: moving the event out of its `Result` was one more
        // copy of ~500 bytes.
        let decoded = event::decode(payload, self.max_event_bytes);
        let event = match decoded {
            Ok(ref event) => event,
            Err(error) => return Err(error),
        };
        self.observe(event);
        let staged = dataflow.staging_for(event.id());
        staged.push(interaction(
            event,
            pos,
            &mut self.featurizer,
            &mut self.features,
            self.entity_keys,
        ));
        Ok(&staged[staged.len() - 1])
    }

    /// Counts an impression's `ctx` values for data drift, and notes its segment.
    fn observe(&mut self, event: &Event<'_>) {
        if let (Some(sketch), Event::Impression(imp)) = (self.sketch.as_mut(), event)
            && let Some(summary) = sketch.observe(imp)
        {
            self.summaries.push(Observation::Data(Box::new(summary)));
        }
        if let (Some(field), Event::Impression(imp)) = (self.segment_field.as_deref(), event)
            && let Some(CtxValue::Str(value)) = imp.ctx_get(field)
        {
            self.summaries.push(Observation::Segment {
                ts: imp.ts,
                id: id_key(&imp.id),
                value: CompactString::from(value.as_ref()),
            });
        }
    }
}

/// Turns a decoded event into the dataflow's record, hashing an impression's features
/// (and its entity keys, with `entity_keys`; else [`Entities::NONE`]). By reference: an
/// event is ~500 bytes, and passed by value it was copied for the call.
fn interaction(
    event: &Event<'_>,
    pos: u64,
    featurizer: &mut Featurizer,
    features: &mut Features,
    entity_keys: bool,
) -> Interaction {
    match event {
        Event::Impression(imp) => {
            features.clear();
            featurizer.featurize(imp, features);
            let reference = match imp.ctx_get("_p_true") {
                Some(CtxValue::Num(p)) if (0.0..=1.0).contains(p) => Some(*p as f32),
                _ => None,
            };
            let category = match imp.ctx_get("category") {
                Some(CtxValue::Str(c)) => c.as_ref(),
                _ => "",
            };
            let entities = if entity_keys {
                crate::entity::entities(&imp.user, &imp.item, category)
            } else {
                Entities::NONE
            };
            Interaction {
                ts: imp.ts,
                pos,
                id: imp.id.as_ref().into(),
                kind: InteractionKind::Impression {
                    user: imp.user.as_ref().into(),
                    item: imp.item.as_ref().into(),
                    category: category.into(),
                    features: EventFeatures::from_slice(features),
                    reference,
                    entities,
                },
            }
        }
        Event::Feedback(fb) => Interaction {
            ts: fb.ts,
            pos,
            id: fb.id.as_ref().into(),
            kind: match fb.kind {
                FeedbackKind::Click => InteractionKind::Click,
                FeedbackKind::Like => InteractionKind::Like,
                FeedbackKind::Skip { dwell_ms } => InteractionKind::Skip { dwell_ms },
            },
        },
    }
}

/// Rejected events of one worker: counted by reason, the first few kept as samples.
#[derive(Debug, Default)]
pub struct BadEvents {
    /// How many.
    pub count: u64,
    /// How many per reason.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// The first ones, with their position.
    pub samples: Vec<BadSample>,
}

/// A rejected event.
#[derive(Debug, Clone, Serialize)]
pub struct BadSample {
    /// Where it was.
    #[serde(flatten)]
    pub at: At,
    /// Why it was rejected.
    pub reason: String,
}

/// Where a rejected event was in its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum At {
    /// A file's 1-based line.
    Line {
        /// The line.
        line: u64,
    },
    /// A topic's partition and offset.
    Offset {
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
    },
}

/// Rejected events kept as samples in a report.
pub const BAD_SAMPLES: usize = 20;

impl BadEvents {
    /// Counts one rejected event found `at`.
    pub fn record(&mut self, at: At, error: &DecodeError) {
        self.count += 1;
        *self.by_reason.entry(error.reason()).or_default() += 1;
        if self.samples.len() < BAD_SAMPLES {
            let mut reason = error.to_string();
            truncate_utf8(&mut reason, 200);
            self.samples.push(BadSample { at, reason });
        }
    }

    /// Adds another worker's.
    pub fn merge(&mut self, other: BadEvents) {
        self.count += other.count;
        for (reason, n) in other.by_reason {
            *self.by_reason.entry(reason).or_default() += n;
        }
        self.samples.extend(other.samples);
        self.samples.sort_by_key(|b| b.at);
        self.samples.truncate(BAD_SAMPLES);
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The contract's score record.
#[derive(Serialize)]
struct ScoreRecord<'a> {
    id: &'a str,
    user: &'a str,
    item: &'a str,
    score: f32,
    model_version: u64,
    event_ts: i64,
    emit_ts: u64,
}

/// Writes `score` in the contract's form into `buf` (cleared first).
pub fn encode_score(score: &Score, emit_ts: u64, buf: &mut Vec<u8>) {
    buf.clear();
    let record = ScoreRecord {
        id: &score.id,
        user: &score.user,
        item: &score.item,
        score: score.score,
        model_version: score.model_version,
        event_ts: score.event_ts,
        emit_ts,
    };
    // Serializing plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &record);
}

/// The contract's dead-letter record, plus `payload_bytes`: the original's length, which
/// tells when `payload` was cut to [`DEAD_LETTER_PAYLOAD_BYTES`].
#[derive(Serialize)]
struct DeadLetter<'a> {
    error: String,
    source: DeadLetterSource<'a>,
    payload: Cow<'a, str>,
    payload_bytes: usize,
}

/// Bytes of a bad payload kept in its dead letter: enough to see what was wrong, small
/// enough that a 10 MB junk message does not make a dead letter the broker refuses.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct DeadLetterSource<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// Writes the dead letter of `payload`, rejected for `error`, from `topic`, `partition`
/// at `offset`, into `buf` (cleared first).
pub fn encode_dead_letter(
    error: &DecodeError,
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    buf: &mut Vec<u8>,
) {
    buf.clear();
    let record = DeadLetter {
        error: error.to_string(),
        source: DeadLetterSource {
            topic,
            partition,
            offset,
        },
        payload: String::from_utf8_lossy(&payload[..payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)]),
        payload_bytes: payload.len(),
    };
    let _ = serde_json::to_writer(&mut *buf, &record);
}

/// The `examples` record: a labelled impression with the hashed features it was scored and
/// trained with, for offline training on exactly the served features.
#[derive(Serialize)]
struct ExampleRecord<'a> {
    id: &'a str,
    impression_ts: i64,
    label_ts: i64,
    /// 1 for a click or like, 0 otherwise.
    label: u8,
    /// `click`, `like`, `fast_skip` or `expired`.
    label_source: &'static str,
    served: f32,
    /// `[index, value]` pairs.
    features: &'a [(u32, f32)],
}

/// Writes `example` as an `examples` record into `buf` (cleared first); `pairs` is scratch.
pub fn encode_example(example: &Example, pairs: &mut Vec<(u32, f32)>, buf: &mut Vec<u8>) {
    use ctrflow_dataflows::LabelSource;
    buf.clear();
    pairs.clear();
    pairs.extend(example.features.iter().map(|f| (f.index, f.value)));
    let record = ExampleRecord {
        id: &example.id,
        impression_ts: example.impression_ts,
        label_ts: example.label_ts,
        label: u8::from(example.label.is_positive()),
        label_source: match example.label {
            LabelSource::Click => "click",
            LabelSource::Like => "like",
            LabelSource::FastSkip => "fast_skip",
            LabelSource::Expired => "expired",
        },
        served: example.served,
        features: pairs,
    };
    let _ = serde_json::to_writer(&mut *buf, &record);
}
