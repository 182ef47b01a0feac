//! The response policy (`[drift.response]`): on confirmed concept drift, a challenger model
//! trained beside the champion, promoted when it predicts the new concept better.
//!
//! # Why a warm start (with fresh learning rates) by default
//!
//! FTRL's per-coordinate learning rate `α / (β + √n)` shrinks with every gradient the
//! coordinate has seen, so after a long stationary stretch the champion adapts to a new
//! concept slowly: its popular coordinates have large `n`. A challenger with fresh rates
//! adapts at full speed. Started from zero (`start = "zero"`) it must also relearn
//! everything that did not change (most users, items, contexts); started warm
//! (`start = "warm"`: the champion's weights, every `n` reset to 0) it predicts like the
//! champion at the drift point and only has to move where the concept moved. On the
//! generator's flip-items stream (1M, drift at 500k) the warm challenger won sooner (53k
//! examples after the alert against 73k) and served a lower logloss after the drift.
//!
//! # Progressive comparison
//!
//! While a challenger runs, every labelled example is scored by both models before either
//! learns from it (progressive validation, on the same examples), and both learn from it.
//! The two losses are summed per handle in chunks of [`CHUNK`] examples and published to a
//! sliding window of the last `window` examples. The challenger is promoted when it has
//! learned `min_examples`, the window is full, and its mean logloss over the window is at
//! most the champion's × (1 − `margin`); it is dropped, unannounced, if that has not happened
//! after `max_examples`.
//!
//! # Promotion and versions
//!
//! Promotion copies the challenger's coordinates into the champion's table, so every
//! worker serves (and the checkpoint writes) the promoted model without swapping handles,
//! and bumps the generation: a score's `model_version` is `generation × 2^48 + updates`
//! (the updates the serving table received), a function of the examples processed only.
//!
//! # Determinism
//!
//! The `Detect` operator (on the worker whose detector raised the alert) confirms drift by calling [`Response::confirm`] when a
//! `concept_drift` alert fires; each learner handle notices at its next update (one atomic
//! load per example) and the challenger learns from that update on. With one worker the
//! operators run in one thread in an order fixed by the input, and decisions happen at
//! count boundaries ([`CHUNK`]), so a replay is deterministic. With `N` workers a handle
//! may start up to one of its batches late, and a promotion races with at most the
//! examples the other workers update during the copy (the model is lock-free anyway).
//!
//! # Checkpoints
//!
//! With durable state (`state.dir`) the checkpoint holds the policy ([`ResponseState`]:
//! the serving generation, the running challenger's window and announcements pending) and
//! the challenger's coordinates, incrementally like the champion's (`crate::checkpoint`).
//! Each worker's partial chunk (fewer than [`CHUNK`] examples not yet published to the
//! window) is kept too: a handle mirrors it into a slot the checkpoint reads (three
//! relaxed stores per example while a challenger runs, no lock). A restart rebuilds the
//! challenger, hands every worker its partial chunk back, and the comparison continues
//! exactly where it stood.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, MutexGuard};

use ctrflow_dataflows::record::Feature;
use ctrflow_dataflows::{Alert, AlertKind, AlertState, AlertWindow, EventTime, Learner, Severity};
use serde::{Deserialize, Serialize};

use crate::model::logistic::logloss;
use crate::model::{Model, ModelHandle};

/// Examples a handle sums before publishing them to the shared window: one lock per
/// `CHUNK` examples while a challenger runs, none otherwise.
pub const CHUNK: u64 = 256;

/// The generation of the serving model sits above this many bits of `model_version`.
pub const GENERATION_SHIFT: u32 = 48;

/// The detector name promotions are reported under.
pub const DETECTOR: &str = "challenger";

/// How a challenger starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengerStart {
    /// All-zero weights: nothing of the old concept.
    Zero,
    /// The champion's weights with fresh learning rates (FTRL's `n` reset to 0): it
    /// predicts like the champion at the drift point and adapts like a new model.
    #[default]
    Warm,
}

/// The response policy (`[drift.response]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Start a challenger on confirmed concept drift. Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// How the challenger starts: `"zero"` or `"warm"` (see [`ChallengerStart`]).
    #[serde(default)]
    pub start: ChallengerStart,
    /// The challenger is promoted when its windowed logloss is at most the champion's ×
    /// (1 − margin). In (0, 1).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Examples in the sliding window the two losses are compared over. >= 256.
    #[serde(default = "default_window")]
    pub window: u64,
    /// Examples the challenger must have learned before it can be promoted. >= window.
    #[serde(default = "default_min_examples")]
    pub min_examples: u64,
    /// A challenger not promoted after this many examples is dropped. > min_examples.
    #[serde(default = "default_max_examples")]
    pub max_examples: u64,
}

const fn default_margin() -> f64 {
    0.002
}
const fn default_window() -> u64 {
    20_000
}
const fn default_min_examples() -> u64 {
    20_000
}
const fn default_max_examples() -> u64 {
    1_000_000
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            start: ChallengerStart::default(),
            margin: default_margin(),
            window: default_window(),
            min_examples: default_min_examples(),
            max_examples: default_max_examples(),
        }
    }
}

impl ResponseConfig {
    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.margin > 0.0 && self.margin < 1.0) {
            p.push(format!(
                "drift.response.margin must be in (0, 1), got {}",
                self.margin
            ));
        }
        if self.window < CHUNK {
            p.push(format!(
                "drift.response.window must be at least {CHUNK} examples, got {}",
                self.window
            ));
        }
        if self.min_examples < self.window {
            p.push(format!(
                "drift.response.min_examples ({}) must be at least drift.response.window ({})",
                self.min_examples, self.window
            ));
        }
        if self.max_examples <= self.min_examples {
            p.push(format!(
                "drift.response.max_examples ({}) must be greater than drift.response.min_examples ({})",
                self.max_examples, self.min_examples
            ));
        }
        p
    }

    /// The problems of running the policy with the rest of the pipeline: it needs the
    /// concept detectors to trigger it.
    pub fn validate_with(&self, concept_enabled: bool) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if !concept_enabled {
            p.push("drift.response.enabled = true needs the concept-drift detectors (drift.enabled and drift.concept.enabled = true) to start a challenger; enable them or set drift.response.enabled = false".to_owned());
        }
        p
    }
}

/// What a decision over the window says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Keep comparing.
    Wait,
    /// The challenger wins: promote it.
    Promote,
    /// The challenger had its chance: drop it.
    Retire,
}

/// Losses summed over a run of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Examples.
    pub n: u64,
    /// The champion's summed logloss.
    pub champion: f64,
    /// The challenger's summed logloss.
    pub challenger: f64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.n += other.n;
        self.champion += other.champion;
        self.challenger += other.challenger;
    }

    fn sub(&mut self, other: &Tally) {
        self.n -= other.n;
        self.champion -= other.champion;
        self.challenger -= other.challenger;
    }

    /// Mean logloss of (champion, challenger).
    pub fn means(&self) -> (f64, f64) {
        let n = self.n.max(1) as f64;
        (self.champion / n, self.challenger / n)
    }
}

/// The last `window` examples' losses, in published chunks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossWindow {
    chunks: VecDeque<Tally>,
    total: Tally,
    /// Every example ever added.
    learned: u64,
}

impl LossWindow {
    /// Adds a chunk, dropping the oldest chunks that the window no longer needs.
    pub fn push(&mut self, chunk: Tally, window: u64) {
        self.learned += chunk.n;
        self.total.add(&chunk);
        self.chunks.push_back(chunk);
        while let Some(front) = self.chunks.front() {
            if self.total.n - front.n < window {
                break;
            }
            self.total.sub(front);
            self.chunks.pop_front();
        }
    }

    /// The losses over the window.
    pub fn total(&self) -> Tally {
        self.total
    }

    /// The policy's decision after the latest chunk.
    pub fn verdict(&self, config: &ResponseConfig) -> Verdict {
        let (champion, challenger) = self.total.means();
        if self.learned >= config.min_examples
            && self.total.n >= config.window
            && challenger <= champion * (1.0 - config.margin)
        {
            Verdict::Promote
        } else if self.learned >= config.max_examples {
            Verdict::Retire
        } else {
            Verdict::Wait
        }
    }
}

/// A promotion, for the `Detect` operator to announce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// The generation now serving.
    pub generation: u64,
    /// Event time of the drift alert that started the challenger.
    pub from: EventTime,
    /// Examples the challenger learned.
    pub learned: u64,
    /// Examples in the compared window.
    pub window: u64,
    /// The champion's mean logloss over the window.
    pub champion_logloss: f64,
    /// The challenger's.
    pub challenger_logloss: f64,
}

struct Challenger {
    /// Which challenger this is: challengers started before it (over the state's life).
    serial: u64,
    model: Model,
    from: EventTime,
    losses: LossWindow,
}

#[derive(Default)]
struct Shared {
    challenger: Option<Challenger>,
    promotions: Vec<Promotion>,
    /// Challengers started so far.
    started: u64,
    /// Every handle's partial chunk, by worker.
    partials: Vec<(u32, Arc<Partial>)>,
    /// Partial chunks restored from a checkpoint, for the handles to take when created.
    restored: HashMap<u32, Tally>,
}

/// A handle's partial chunk, mirrored for checkpoints: written by its worker only.
#[derive(Debug, Default)]
struct Partial {
    n: AtomicU64,
    champion: AtomicU64,
    challenger: AtomicU64,
}

impl Partial {
    #[inline]
    fn store(&self, t: &Tally) {
        self.n.store(t.n, Relaxed);
        self.champion.store(t.champion.to_bits(), Relaxed);
        self.challenger.store(t.challenger.to_bits(), Relaxed);
    }

    fn load(&self) -> Tally {
        Tally {
            n: self.n.load(Relaxed),
            champion: f64::from_bits(self.champion.load(Relaxed)),
            challenger: f64::from_bits(self.challenger.load(Relaxed)),
        }
    }
}

/// The policy's state in a checkpoint (the challenger's coordinates are stored apart).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseState {
    /// The serving generation: promotions so far.
    pub generation: u64,
    /// Challengers started so far.
    pub started: u64,
    /// The running challenger, if any.
    pub challenger: Option<ChallengerState>,
    /// Promotions not announced yet.
    pub promotions: Vec<Promotion>,
    /// The running challenger's partial chunks, by worker (none without a challenger).
    pub partials: Vec<(u32, Tally)>,
}

/// A running challenger, but for its model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChallengerState {
    /// Which challenger (see [`ResponseState::started`]): a checkpoint tells by it whether
    /// the stored coordinates are this challenger's.
    pub serial: u64,
    /// Event time of the drift alert that started it.
    pub from: EventTime,
    /// Its comparison window.
    pub losses: LossWindow,
}

/// The policy's state, shared by the `Detect` operator and every worker's learner.
pub struct Response {
    config: ResponseConfig,
    champion: Model,
    /// Moves whenever a challenger starts or ends: handles re-read [`Shared`] then.
    epoch: AtomicU64,
    /// Promotions so far.
    generation: AtomicU64,
    shared: Mutex<Shared>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("config", &self.config)
            .field("epoch", &self.epoch)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The policy for `champion` when `config` enables it.
    pub fn new(config: &ResponseConfig, champion: &Model) -> Option<Arc<Self>> {
        config.enabled.then(|| {
            Arc::new(Self {
                config: config.clone(),
                champion: champion.clone(),
                epoch: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                shared: Mutex::new(Shared::default()),
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Promotions so far: the serving model's generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Whether a challenger is running.
    pub fn challenging(&self) -> bool {
        self.lock().challenger.is_some()
    }

    /// The champion the policy serves through.
    pub fn champion(&self) -> &Model {
        &self.champion
    }

    /// The policy's state and the running challenger's model, for a checkpoint (taken
    /// while no handle learns, so the two agree).
    pub fn snapshot(&self) -> (ResponseState, Option<Model>) {
        let shared = self.lock();
        let state = ResponseState {
            generation: self.generation.load(Relaxed),
            started: shared.started,
            challenger: shared.challenger.as_ref().map(|c| ChallengerState {
                serial: c.serial,
                from: c.from,
                losses: c.losses.clone(),
            }),
            promotions: shared.promotions.clone(),
            partials: match shared.challenger {
                Some(_) => shared
                    .partials
                    .iter()
                    .map(|(w, p)| (*w, p.load()))
                    .filter(|(_, t)| t.n > 0)
                    .collect(),
                None => Vec::new(),
            },
        };
        (state, shared.challenger.as_ref().map(|c| c.model.clone()))
    }

    /// Continues from a checkpoint: `state`, with `model` the challenger's coordinates
    /// when `state` has one (a challenger without its model is dropped, logged). Call
    /// before creating the handles: each takes its worker's partial chunk back.
    pub fn restore(&self, state: ResponseState, model: Option<Model>) {
        let mut shared = self.lock();
        self.generation.store(state.generation, Relaxed);
        shared.started = state.started;
        shared.promotions = state.promotions;
        shared.restored = state.partials.into_iter().collect();
        shared.challenger = match (state.challenger, model) {
            (Some(c), Some(model)) => Some(Challenger {
                serial: c.serial,
                model,
                from: c.from,
                losses: c.losses,
            }),
            (Some(_), None) => {
                tracing::error!("The checkpointed challenger has no model: it is dropped.");
                None
            }
            (None, _) => None,
        };
        self.epoch.fetch_add(1, Release);
    }

    /// Concept drift was confirmed at event time `ts`: start a challenger from zero, unless
    /// one is running already.
    pub fn confirm(&self, ts: EventTime) {
        let mut shared = self.lock();
        if shared.challenger.is_some() {
            return;
        }
        let model = match self.config.start {
            ChallengerStart::Zero => Model::from_config(&self.champion.config()),
            ChallengerStart::Warm => self.champion.warm_started(),
        };
        let model = match model {
            Ok(model) => model,
            Err(error) => {
                // The champion was built from the same config, so this cannot happen.
                tracing::error!(%error, "Cannot build a challenger model.");
                return;
            }
        };
        tracing::info!(ts, "Concept drift confirmed: a challenger model starts.");
        shared.started += 1;
        shared.challenger = Some(Challenger {
            serial: shared.started,
            model,
            from: ts,
            losses: LossWindow::default(),
        });
        self.epoch.fetch_add(1, Release);
    }

    /// Watches the alerts the detectors just raised (starting a challenger on a firing
    /// `concept_drift`), then appends the promotions since the last call as alerts at
    /// event time `now`: a `firing` announcing it and a `resolved` closing the episode.
    pub fn after_advance(&self, now: EventTime, alerts: &mut Vec<Alert>, from: usize) {
        if let Some(alert) = alerts[from..].iter().find(|a| {
            a.kind == AlertKind::ConceptDrift
                && a.state == AlertState::Firing
                && a.detector != DETECTOR
        }) {
            self.confirm(alert.ts);
        }
        let promotions = std::mem::take(&mut self.lock().promotions);
        for p in promotions {
            let threshold = p.champion_logloss * (1.0 - self.config.margin);
            let window = AlertWindow {
                from: p.from,
                to: now.max(p.from),
            };
            let base = Alert {
                kind: AlertKind::ConceptDrift,
                state: AlertState::Firing,
                severity: Severity::Warning,
                detector: DETECTOR.into(),
                metric: "windowed_logloss".into(),
                value: p.challenger_logloss,
                threshold,
                window,
                ts: now,
                message: format!(
                    "challenger promoted: model generation {} now serves; windowed logloss {:.5} vs champion {:.5} over the last {} examples ({} learned since the drift alert)",
                    p.generation, p.challenger_logloss, p.champion_logloss, p.window, p.learned
                ),
            };
            let resolved = Alert {
                state: AlertState::Resolved,
                message: format!(
                    "challenger episode closed: generation {} promoted",
                    p.generation
                ),
                ..base.clone()
            };
            alerts.push(base);
            alerts.push(resolved);
        }
    }

    /// Adds a handle's chunk to the window of challenger `epoch` (if it still runs) and
    /// acts on the verdict.
    fn publish(&self, epoch: u64, chunk: &Tally) {
        let mut shared = self.lock();
        if self.epoch.load(Relaxed) != epoch {
            return;
        }
        let Some(challenger) = shared.challenger.as_mut() else {
            return;
        };
        challenger.losses.push(*chunk, self.config.window);
        let verdict = challenger.losses.verdict(&self.config);
        if challenger.losses.learned % (CHUNK * 64) < CHUNK {
            let (champion_logloss, challenger_logloss) = challenger.losses.total().means();
            tracing::debug!(
                learned = challenger.losses.learned,
                champion_logloss,
                challenger_logloss,
                "Challenger status."
            );
        }
        match verdict {
            Verdict::Wait => {}
            Verdict::Promote => {
                let challenger = shared.challenger.take().expect("checked above");
                self.champion.copy_from(&challenger.model);
                let generation = self.generation.fetch_add(1, Relaxed) + 1;
                let (champion_logloss, challenger_logloss) = challenger.losses.total().means();
                tracing::info!(
                    generation,
                    champion_logloss,
                    challenger_logloss,
                    "Challenger promoted."
                );
                shared.promotions.push(Promotion {
                    generation,
                    from: challenger.from,
                    learned: challenger.losses.learned,
                    window: challenger.losses.total().n,
                    champion_logloss,
                    challenger_logloss,
                });
                self.epoch.fetch_add(1, Release);
            }
            Verdict::Retire => {
                let (champion_logloss, challenger_logloss) = challenger.losses.total().means();
                tracing::info!(
                    champion_logloss,
                    challenger_logloss,
                    "Challenger dropped: it did not beat the champion by the margin."
                );
                shared.challenger = None;
                self.epoch.fetch_add(1, Release);
            }
        }
    }
}

/// One worker's learner: the champion's handle, plus the challenger's while one runs.
/// Scores always come from the champion's table (which a promotion overwrites).
#[derive(Debug)]
pub struct Serving {
    champion: ModelHandle,
    policy: Option<PolicyHandle>,
}

#[derive(Debug)]
struct PolicyHandle {
    response: Arc<Response>,
    epoch: u64,
    challenger: Option<ModelHandle>,
    tally: Tally,
    /// `tally`, for checkpoints.
    partial: Arc<Partial>,
}

impl Serving {
    /// Worker `worker`'s learner: serves and learns through `champion`, under `response`
    /// when there is one (continuing its partial chunk if `response` was restored).
    pub fn new(champion: ModelHandle, response: Option<Arc<Response>>, worker: usize) -> Self {
        let policy = response.map(|response| {
            let partial = Arc::new(Partial::default());
            let (epoch, challenger, tally) = {
                let mut shared = response.lock();
                let w = worker as u32;
                shared.partials.push((w, Arc::clone(&partial)));
                let tally = shared.restored.remove(&w).unwrap_or_default();
                (
                    response.epoch.load(Acquire),
                    shared.challenger.as_ref().map(|c| c.model.handle()),
                    tally,
                )
            };
            partial.store(&tally);
            PolicyHandle {
                response,
                epoch,
                challenger,
                tally,
                partial,
            }
        });
        Self { champion, policy }
    }
}

impl PolicyHandle {
    /// Re-reads which challenger runs, dropping a partial chunk of the previous one.
    #[cold]
    fn sync(&mut self) {
        let shared = self.response.lock();
        // Read under the lock: the epoch and the challenger change together.
        self.epoch = self.response.epoch.load(Acquire);
        self.challenger = shared.challenger.as_ref().map(|c| c.model.handle());
        self.tally = Tally::default();
        self.partial.store(&self.tally);
    }
}

impl Learner for Serving {
    #[inline]
    fn predict(&self, x: &[Feature]) -> f32 {
        self.champion.predict(x)
    }

    #[inline]
    fn update(&mut self, x: &[Feature], positive: bool) {
        let Some(policy) = self.policy.as_mut() else {
            self.champion.update(x, positive);
            return;
        };
        if policy.response.epoch.load(Acquire) != policy.epoch {
            policy.sync();
        }
        let Some(challenger) = policy.challenger.as_mut() else {
            self.champion.update(x, positive);
            return;
        };
        let champion = self.champion.predict_and_update(x, positive);
        let candidate = challenger.predict_and_update(x, positive);
        let t = &mut policy.tally;
        t.n += 1;
        t.champion += logloss(f64::from(champion), positive);
        t.challenger += logloss(f64::from(candidate), positive);
        if t.n >= CHUNK {
            let chunk = std::mem::take(t);
            policy.response.publish(policy.epoch, &chunk);
        }
        policy.partial.store(&policy.tally);
    }

    #[inline]
    fn version(&self) -> u64 {
        let generation = self
            .policy
            .as_ref()
            .map_or(0, |p| p.response.generation.load(Relaxed));
        (generation << GENERATION_SHIFT) | self.champion.version()
    }

    #[inline]
    fn prefetch(&self, x: &[Feature]) {
        self.champion.prefetch(x);
    }

    fn flush(&mut self) {
        self.champion.flush();
        if let Some(c) = self.policy.as_mut().and_then(|p| p.challenger.as_mut()) {
            c.flush();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn config() -> ResponseConfig {
        ResponseConfig {
            enabled: true,
            start: ChallengerStart::Zero,
            margin: 0.05,
            window: 1000,
            min_examples: 2000,
            max_examples: 10_000,
        }
    }

    fn chunk(n: u64, champion: f64, challenger: f64) -> Tally {
        Tally {
            n,
            champion: champion * n as f64,
            challenger: challenger * n as f64,
        }
    }

    #[test]
    fn defaults_are_valid_and_off_and_bad_values_are_named() {
        let c = ResponseConfig::default();
        assert!(!c.enabled);
        assert!(c.validate().is_empty());
        let bad = ResponseConfig {
            enabled: true,
            start: ChallengerStart::Zero,
            margin: 0.0,
            window: 10,
            min_examples: 5,
            max_examples: 5,
        };
        let problems = bad.validate();
        for key in ["margin", "window", "min_examples", "max_examples"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("drift.response.{key}"))),
                "{key}: {problems:?}"
            );
        }
        let with = c.validate_with(false);
        assert!(with.is_empty(), "disabled: no demands");
        let with = config().validate_with(false);
        assert_eq!(with.len(), 1, "{with:?}");
        assert!(with[0].contains("drift.concept.enabled"));
        assert!(config().validate_with(true).is_empty());
    }

    #[test]
    fn promotes_only_when_better_by_the_margin_over_enough_examples() {
        let c = config();
        // 4% better: not by the 5% margin, however long it runs, until it is retired.
        let mut w = LossWindow::default();
        for _ in 0..39 {
            w.push(chunk(256, 0.20, 0.192), c.window);
            assert_eq!(w.verdict(&c), Verdict::Wait);
        }
        w.push(chunk(256, 0.20, 0.192), c.window);
        assert_eq!(w.verdict(&c), Verdict::Retire, "{} learned", w.learned);
        // 10% better, but before min_examples: wait; after: promote.
        let mut w = LossWindow::default();
        for _ in 0..7 {
            w.push(chunk(256, 0.20, 0.18), c.window);
            assert_eq!(w.verdict(&c), Verdict::Wait, "{} learned", w.learned);
        }
        w.push(chunk(256, 0.20, 0.18), c.window);
        assert_eq!(w.verdict(&c), Verdict::Promote);
        // Early losses fall out of the window: a bad start does not count forever.
        let mut w = LossWindow::default();
        for _ in 0..8 {
            w.push(chunk(256, 0.20, 0.60), c.window);
        }
        assert_eq!(w.verdict(&c), Verdict::Wait);
        for _ in 0..3 {
            w.push(chunk(256, 0.20, 0.18), c.window);
        }
        assert_eq!(
            w.verdict(&c),
            Verdict::Wait,
            "the window still holds a bad chunk"
        );
        w.push(chunk(256, 0.20, 0.18), c.window);
        assert!(w.total().n >= c.window && w.total().n < c.window + 256);
        assert_eq!(w.verdict(&c), Verdict::Promote);
    }

    /// Examples over 20 "items", one feature each plus a shared one; item `i` is clicked
    /// with probability 0.8 when its parity matches `flipped`, 0.05 otherwise (also the
    /// checkpoint tests' stream).
    pub(crate) fn examples(n: usize, flipped: bool, seed: u64) -> Vec<(Vec<Feature>, bool)> {
        let mut state = seed;
        (0..n)
            .map(|k| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                let item = (k * 7 + (state >> 40) as usize) % 20;
                let hot = item.is_multiple_of(2) != flipped;
                let x = vec![
                    Feature {
                        index: item as u32,
                        value: 1.0,
                    },
                    Feature {
                        index: 100,
                        value: 1.0,
                    },
                ];
                (x, u < if hot { 0.8 } else { 0.05 })
            })
            .collect()
    }

    /// A 2^10-coordinate champion, the policy of [`config`] over it, and worker 0's learner.
    fn policy() -> (Model, Arc<Response>, Serving) {
        let model = Model::from_config(&ModelConfig {
            bits: 10,
            ..ModelConfig::default()
        })
        .unwrap();
        let response = Response::new(&config(), &model).unwrap();
        let serving = Serving::new(model.handle(), Some(Arc::clone(&response)), 0);
        (model, response, serving)
    }

    fn run(serving: &mut Serving, examples: &[(Vec<Feature>, bool)]) {
        for (x, y) in examples {
            serving.update(x, *y);
        }
    }

    #[test]
    fn a_challenger_from_the_drift_point_takes_over_a_flipped_concept() {
        let (_model, response, mut serving) = policy();
        run(&mut serving, &examples(200_000, false, 1));
        assert_eq!(serving.version(), 200_000, "generation 0 before any drift");
        let before = serving.predict(&examples(1, false, 3)[0].0);
        response.confirm(1234);
        assert!(response.challenging());
        run(&mut serving, &examples(20_000, true, 2));
        assert!(!response.challenging(), "promoted");
        assert_eq!(response.generation(), 1);
        assert_eq!(serving.version() >> GENERATION_SHIFT, 1);
        let mut alerts = Vec::new();
        response.after_advance(5678, &mut alerts, 0);
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(
            (a.kind, a.state),
            (AlertKind::ConceptDrift, AlertState::Firing)
        );
        assert_eq!(a.detector, DETECTOR);
        assert_eq!(
            a.window,
            AlertWindow {
                from: 1234,
                to: 5678
            }
        );
        assert!(a.value < a.threshold, "{a:?}");
        assert!(a.message.contains("promoted"), "{}", a.message);
        assert_eq!(alerts[1].state, AlertState::Resolved);
        // The champion's table now holds the challenger: it serves the new concept.
        let x = &examples(1, false, 3)[0].0;
        let hot_now = x[0].index % 2 == 1;
        let after = serving.predict(x);
        assert!(
            if hot_now {
                after > before
            } else {
                after < before
            },
            "{before} -> {after}"
        );
        // Announced once.
        let mut again = Vec::new();
        response.after_advance(6000, &mut again, 0);
        assert!(again.is_empty());
    }

    #[test]
    fn a_warm_challenger_predicts_like_the_champion_and_learns_faster() {
        let model = Model::from_config(&ModelConfig {
            bits: 10,
            ..ModelConfig::default()
        })
        .unwrap();
        let mut champion = model.handle();
        for (x, y) in examples(50_000, false, 1) {
            champion.update(&x, y);
        }
        let warm = model.warm_started().unwrap();
        let mut challenger = warm.handle();
        let probe = examples(200, false, 5);
        for (x, _) in &probe {
            let (a, b) = (champion.predict(x), challenger.predict(x));
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // After the flip, the same examples move the warm model further.
        let flipped = examples(2000, true, 6);
        let before: Vec<f32> = probe.iter().map(|(x, _)| champion.predict(x)).collect();
        for (x, y) in &flipped {
            champion.update(x, *y);
            challenger.update(x, *y);
        }
        let moved = |h: &ModelHandle| -> f32 {
            probe
                .iter()
                .zip(&before)
                .map(|((x, _), b)| (h.predict(x) - b).abs())
                .sum()
        };
        assert!(moved(&challenger) > moved(&champion));
    }

    #[test]
    fn a_challenger_on_an_unchanged_concept_is_dropped_not_promoted() {
        let (_model, response, mut serving) = policy();
        run(&mut serving, &examples(50_000, false, 1));
        // A drift alert from the detectors starts the challenger; its own alerts do not.
        let mut alerts = vec![Alert {
            kind: AlertKind::ConceptDrift,
            state: AlertState::Firing,
            severity: Severity::Warning,
            detector: "adwin".into(),
            metric: "relative_logloss".into(),
            value: 1.0,
            threshold: 0.5,
            window: AlertWindow { from: 0, to: 10 },
            ts: 10,
            message: String::new(),
        }];
        response.after_advance(10, &mut alerts, 0);
        assert!(response.challenging());
        run(&mut serving, &examples(12_000, false, 2));
        assert!(!response.challenging(), "dropped after max_examples");
        assert_eq!(response.generation(), 0);
        let mut alerts = Vec::new();
        response.after_advance(20, &mut alerts, 0);
        assert!(alerts.is_empty(), "{alerts:?}");
        assert_eq!(serving.version(), 62_000);
    }
}
