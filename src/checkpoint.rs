//! Checkpoints of a running worker process, and resuming from them.
//!
//! # What a checkpoint holds
//!
//! One atomic RocksDB batch ([`ctrflow_state::Durable::commit`]) with: the next offset of
//! every partition read; per worker, its label join (records received but not yet
//! processed, the attribution windows' impressions with the features they were scored
//! with — incrementally, see `JoinState` — cursors and counters) and its progressive
//! metrics; the model blocks changed since the last checkpoint ([`ModelShadow`]); the
//! entity counters changed since ([`EntityStore::checkpoint_into`]); the response policy
//! ([`ResponseState`]) and its running challenger's changed blocks, when the policy is on;
//! and the manifest.
//!
//! # A consistent cut, without stopping the world for long
//!
//! Workers share the model and the entity counters, so a checkpoint must catch every
//! worker between the same two records. When one is due, worker 0 requests a round; every
//! worker then stops reading (so no new record enters the dataflow), publishes how many
//! records it sent in and its input time, and keeps stepping until (1) every record sent
//! by any worker has been received by its label join (sent and received counts agree) and
//! (2) the probe has passed the smallest input time, so every join has processed all it
//! can. Nothing is in flight and nothing more can happen until reading resumes: each worker
//! adds its part to the batch, worker 0 adds the shared parts, flushes the producer (a
//! score of a checkpointed impression must not be lost with the process), commits, and all
//! resume. Records read but not yet processable (ahead of the watermark) are part of the
//! checkpoint, so the stored offsets are simply the next ones to read.
//!
//! # After a crash
//!
//! A restart opens the newest intact checkpoint (falling back to an older copy if the
//! newest is damaged), restores the model, the entity counters (read through on demand)
//! and every worker's join, and re-reads each partition from its stored offset. Records
//! processed after the checkpoint are processed again from the same state, so nothing is
//! lost and nothing is applied twice to the model or the features. Scores of those records
//! are emitted again with the same impression ids: output is at-least-once, and consumers
//! deduplicate by `id` (Kafka transactions could make it exactly-once, at the price of a
//! transaction per checkpoint and consumers in `read_committed`; not done yet).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ctrflow_dataflows::operators::{Aggregates, DetectState, JoinState};
use ctrflow_state::{Batch, CommitStats, Durable, Manifest, Recovery, Table, TableId};

use crate::config::PipelineConfig;
use crate::drift::Drift;
use crate::drift::response::{Response, ResponseState};
use crate::entity::EntityStore;
use crate::model::Model;
use crate::model::checkpoint::{CHALLENGER, ModelChanges, ModelShadow};
use crate::pipeline::Restored;
use crate::progressive::Progressive;

/// Next offset to read, per partition.
pub const OFFSETS: Table<i32, i64> = Table::new(TableId::Offsets);
/// A worker's progressive metrics, under `(worker, PROGRESS_PART)`.
const PROGRESS: Table<(u32, u8), Progressive> = Table::new(TableId::Operators);
const PROGRESS_PART: u8 = 1;
/// A worker's input position in event time, under `(worker, INPUT_PART)`: the newest event
/// time it had read and the time its input stood at.
const INPUT: Table<(u32, u8), (i64, u64)> = Table::new(TableId::Operators);
const INPUT_PART: u8 = 2;
/// The drift detectors and their pending observations, under `(worker, DETECT_PART)`: each
/// worker's shards of them (`DriftConfig::shards`; with one shard, only worker 0's hold
/// anything).
const DETECT: Table<(u32, u8), DetectState<Drift>> = Table::new(TableId::Operators);
const DETECT_PART: u8 = 4;
/// The response policy, under `(0, RESPONSE_PART)` (one per process, kept by worker 0).
const RESPONSE: Table<(u32, u8), ResponseState> = Table::new(TableId::Operators);
const RESPONSE_PART: u8 = 5;
/// The topic the offsets are of, in [`TableId::Meta`]: a state directory belongs to one.
const SOURCE: Table<String, String> = Table::new(TableId::Meta);
const SOURCE_KEY: &str = "source_topic";
/// Counter: records read into the dataflow over the state's lifetime (records re-read after
/// a crash count again).
pub const RECORDS_READ: &str = "records_read";
/// Counter: checkpoints committed over the state's lifetime.
pub const CHECKPOINTS: &str = "checkpoints";

/// The state a process resumes with.
#[derive(Debug)]
pub struct Resumed {
    /// Where it came from.
    pub recovery: Recovery,
    /// The model, restored.
    pub model: Model,
    /// The entity counters, over the durable copy.
    pub entities: EntityStore,
    /// Next offset per partition.
    pub offsets: HashMap<i32, i64>,
}

/// The checkpoints of one worker process: the durable state and the round protocol.
#[derive(Debug)]
pub struct Checkpointer {
    durable: Durable,
    model: Model,
    entities: EntityStore,
    shadow: Mutex<ModelShadow>,
    policy: Mutex<PolicyCheckpoint>,
    workers: usize,
    interval: Duration,
    topic: String,
    /// Epoch of the checkpoint resumed from (0: none).
    base_epoch: u64,
    /// Rounds requested since the process started.
    requested: AtomicU64,
    /// Workers that paused, over all rounds (`rounds × workers` once all paused).
    paused: AtomicUsize,
    /// Workers that added their part, over all rounds.
    contributed: AtomicUsize,
    /// Per worker: records sent into the dataflow, and received by its label join.
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    /// Per worker: its input time while paused.
    input_time: Vec<AtomicU64>,
    parts: Mutex<Batch>,
    /// Last round committed, and last round that failed.
    committed: AtomicU64,
    failed: AtomicU64,
    last_due: Mutex<Instant>,
    last_commit: Mutex<Option<CommitStats>>,
    /// Rounds that failed, and (total, longest) seconds workers were paused for rounds.
    failures: AtomicU64,
    pauses: Mutex<(f64, f64)>,
    /// When the last checkpoint was committed (or the state opened).
    last_ok: Mutex<Instant>,
    /// Records sent in by all workers of this process as of the last commit.
    sent_committed: AtomicU64,
}

/// What the checkpoints of a run did, for its report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckpointReport {
    /// Epoch of the last checkpoint (committed by this run, or resumed from).
    pub epoch: u64,
    /// Checkpoints this run committed.
    pub committed: u64,
    /// Checkpoints that failed (the previous one stood).
    pub failed: u64,
    /// Operations and bytes the last commit wrote.
    pub last_ops: usize,
    /// Bytes of keys and values the last commit wrote.
    pub last_bytes: usize,
    /// Seconds the last commit (write, sync, copy) took.
    pub last_commit_secs: f64,
    /// Mean and longest time reading was paused for a checkpoint, seconds.
    pub mean_pause_secs: f64,
    /// Longest pause, seconds.
    pub max_pause_secs: f64,
}

impl Checkpointer {
    /// Opens the state directory of `config` for `workers` workers: the newest intact
    /// checkpoint, or a fresh state. Fails, saying why, if the state cannot be used.
    pub fn open(config: &PipelineConfig, workers: usize) -> anyhow::Result<(Self, Resumed)> {
        let (durable, recovery) = Durable::open(&config.state)
            .with_context(|| format!("opening the state in {}", config.state.dir.display()))?;
        let model = Model::from_config(&config.model)?;
        let store = durable.store().clone();
        let (shadow, base_epoch) = match &recovery {
            Recovery::Fresh => (ModelShadow::fresh(&model), 0),
            Recovery::Resumed { manifest, .. } => {
                anyhow::ensure!(
                    manifest.workers as usize == workers,
                    "the checkpoint in {} was taken with {} worker(s); run with --workers {} \
                     (changing the number of workers of a state directory is not supported yet)",
                    config.state.dir.display(),
                    manifest.workers,
                    manifest.workers
                );
                let topic = SOURCE.get(&store, &SOURCE_KEY.to_owned())?;
                anyhow::ensure!(
                    topic.as_deref() == Some(config.kafka.topics.events.as_str()),
                    "the state in {} belongs to topic {:?}, this configuration reads {:?}: \
                     offsets and state of one topic cannot resume another (use another state.dir)",
                    config.state.dir.display(),
                    topic.unwrap_or_default(),
                    config.kafka.topics.events
                );
                let shadow = ModelShadow::restore(&model, &store, manifest.model_version)
                    .context("restoring the model")?;
                (shadow, manifest.epoch)
            }
        };
        let entities = EntityStore::new(
            &config.features.entity,
            config.features.bits,
            Some(store.clone()),
        );
        let mut offsets = HashMap::new();
        OFFSETS.scan_all(&store, |p, o| {
            offsets.insert(p, o);
            true
        })?;
        let checkpointer = Self {
            durable,
            model: model.clone(),
            entities: entities.clone(),
            shadow: Mutex::new(shadow),
            policy: Mutex::new(PolicyCheckpoint::default()),
            workers,
            interval: Duration::from_millis(config.state.checkpoint_interval_ms),
            topic: config.kafka.topics.events.clone(),
            base_epoch,
            requested: AtomicU64::new(0),
            paused: AtomicUsize::new(0),
            contributed: AtomicUsize::new(0),
            sent: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            received: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            input_time: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            parts: Mutex::new(Batch::new()),
            committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_due: Mutex::new(Instant::now()),
            last_commit: Mutex::new(None),
            failures: AtomicU64::new(0),
            pauses: Mutex::new((0.0, 0.0)),
            last_ok: Mutex::new(Instant::now()),
            sent_committed: AtomicU64::new(0),
        };
        Ok((
            checkpointer,
            Resumed {
                recovery,
                model,
                entities,
                offsets,
            },
        ))
    }

    /// Worker `worker`'s join and metrics from the checkpoint resumed from, if any.
    pub fn restore_worker(
        &self,
        worker: usize,
        config: &PipelineConfig,
    ) -> anyhow::Result<Option<Restored>> {
        let store = self.durable.store();
        let w = worker as u32;
        let Some(join) = JoinState::restore(store, w, &config.label)? else {
            anyhow::ensure!(
                self.base_epoch == 0,
                "checkpoint {} holds no state for worker {worker}",
                self.base_epoch
            );
            return Ok(None);
        };
        let progressive = PROGRESS
            .get(store, &(w, PROGRESS_PART))?
            .unwrap_or_else(|| crate::pipeline::progressive(config));
        let (newest, input_time) = INPUT.get(store, &(w, INPUT_PART))?.unwrap_or((i64::MIN, 0));
        let aggregates = match worker {
            0 if config.aggregates.enabled => Aggregates::restore(store, &config.aggregates)?,
            _ => None,
        };
        let detect = DETECT.get(store, &(w, DETECT_PART))?;
        Ok(Some(Restored {
            join,
            progressive,
            newest,
            input_time,
            aggregates,
            detect,
        }))
    }

    /// Restores the response policy `response` (`None`: off) from the checkpoint resumed
    /// from, and checkpoints it from now on. Call once, before the workers start.
    pub fn resume_response(&self, response: Option<&Arc<Response>>) -> anyhow::Result<()> {
        let policy = PolicyCheckpoint::restore(self.durable.store(), &self.model, response)
            .context("restoring the response policy")?;
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
        Ok(())
    }

    /// The live state store checkpoints are committed to.
    pub fn store(&self) -> &ctrflow_state::StateStore {
        self.durable.store()
    }

    /// Rounds requested so far.
    pub fn requested(&self) -> u64 {
        self.requested.load(SeqCst)
    }

    /// Worker 0: requests a round if the interval has passed since the last one.
    pub fn request_if_due(&self) {
        let mut last = self.last_due.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= self.interval {
            *last = Instant::now();
            self.requested.fetch_max(
                self.committed.load(SeqCst).max(self.failed.load(SeqCst)) + 1,
                SeqCst,
            );
        }
    }

    /// Requests round `round` (the final checkpoint on shutdown; idempotent).
    pub fn request(&self, round: u64) {
        self.requested.fetch_max(round, SeqCst);
    }

    /// Phase 1 of `round` for worker `index`: it stopped reading after sending `sent`
    /// records in, its input stands at `input_time`.
    pub fn pause(&self, index: usize, sent: u64, input_time: u64) {
        self.sent[index].store(sent, SeqCst);
        self.input_time[index].store(input_time, SeqCst);
        self.paused.fetch_add(1, SeqCst);
    }

    /// Publishes how many records worker `index`'s join received.
    pub fn received(&self, index: usize, received: u64) {
        self.received[index].store(received, SeqCst);
    }

    /// Once every worker paused for `round` and every record sent was received: the
    /// smallest input time, which the probe must pass before the state is still.
    pub fn settled(&self, round: u64) -> Option<u64> {
        if self.paused.load(SeqCst) < round as usize * self.workers {
            return None;
        }
        let sent: u64 = self.sent.iter().map(|s| s.load(SeqCst)).sum();
        let received: u64 = self.received.iter().map(|s| s.load(SeqCst)).sum();
        (sent == received).then(|| {
            self.input_time
                .iter()
                .map(|t| t.load(SeqCst))
                .min()
                .unwrap_or(0)
        })
    }

    /// Phase 2: worker `index` adds its part: its join, metrics, partitions' positions, and
    /// where its input stands (the newest event time read, the input time).
    pub fn contribute(
        &self,
        index: usize,
        join: &JoinState,
        progressive: &Progressive,
        positions: &[(i32, i64)],
        input: (i64, u64),
    ) {
        let mut part = Batch::new();
        let w = index as u32;
        join.checkpoint_into(w, &mut part);
        PROGRESS.put(&mut part, &(w, PROGRESS_PART), progressive);
        INPUT.put(&mut part, &(w, INPUT_PART), &input);
        for (p, o) in positions {
            OFFSETS.put(&mut part, p, o);
        }
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(part);
        self.contributed.fetch_add(1, SeqCst);
    }

    /// Worker 0, phase 2, before [`Checkpointer::contribute`]: adds the global aggregates
    /// (their window, to slide on after a restore, and their values, for `inspect`).
    pub fn contribute_aggregates(&self, aggregates: &Aggregates) {
        let mut part = Batch::new();
        aggregates.checkpoint_into(&mut part);
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(part);
    }

    /// Worker `index` adds its drift detectors to the round (before [`Self::contribute`]).
    pub fn contribute_detect(&self, index: usize, detect: &DetectState<Drift>) {
        let mut part = Batch::new();
        DETECT.put(&mut part, &(index as u32, DETECT_PART), detect);
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(part);
    }

    /// Whether every worker has added its part to `round`.
    pub fn all_contributed(&self, round: u64) -> bool {
        self.contributed.load(SeqCst) >= round as usize * self.workers
    }

    /// Worker 0, phase 3: adds the shared state, runs `before_commit` (flushing outputs; an
    /// error fails the round), and commits round `round` taken at `watermark`.
    pub fn commit(
        &self,
        round: u64,
        watermark: u64,
        before_commit: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<CommitStats> {
        let result = (|| {
            let mut batch =
                std::mem::take(&mut *self.parts.lock().unwrap_or_else(|e| e.into_inner()));
            let mut shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
            let changes = shadow.changes_into(&self.model, &mut batch);
            let mut policy = self.policy.lock().unwrap_or_else(|e| e.into_inner());
            let policy_changes = policy.changes_into(&mut batch);
            self.entities
                .checkpoint_into(&mut batch, watermark.min(i64::MAX as u64) as i64);
            // Lifetime totals of the state, by merge (no read-modify-write).
            let sent: u64 = self.sent.iter().map(|s| s.load(SeqCst)).sum();
            batch.add(RECORDS_READ, sent - self.sent_committed.load(SeqCst));
            batch.add(CHECKPOINTS, 1);
            SOURCE.put(&mut batch, &SOURCE_KEY.to_owned(), &self.topic);
            before_commit()?;
            let manifest = Manifest {
                epoch: self.base_epoch + round,
                format: ctrflow_state::checkpoint::FORMAT_VERSION,
                watermark,
                workers: self.workers as u32,
                model_version: self.model.version(),
                created_ms: crate::pipeline::now_ms(),
            };
            let stats = self.durable.commit(batch, &manifest)?;
            shadow.confirm(changes);
            policy.confirm(policy_changes);
            self.entities.checkpoint_done();
            self.sent_committed.store(sent, SeqCst);
            Ok(stats)
        })();
        match &result {
            Ok(stats) => {
                *self.last_commit.lock().unwrap_or_else(|e| e.into_inner()) = Some(*stats);
                *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                self.committed.store(round, SeqCst);
            }
            Err(_) => {
                self.failed.store(round, SeqCst);
                self.failures.fetch_add(1, SeqCst);
            }
        }
        result
    }

    /// Phase 4: `Some(true)` once `round` is committed, `Some(false)` if it failed.
    pub fn outcome(&self, round: u64) -> Option<bool> {
        if self.committed.load(SeqCst) >= round {
            Some(true)
        } else if self.failed.load(SeqCst) >= round {
            Some(false)
        } else {
            None
        }
    }

    /// Epoch of the last checkpoint committed (or resumed from).
    pub fn epoch(&self) -> u64 {
        self.base_epoch + self.committed.load(SeqCst)
    }

    /// Whether checkpoints are healthy (for `/readyz`): the last round committed, and the
    /// last commit is not overdue (three intervals, at least 30 s).
    pub fn healthy(&self) -> bool {
        let overdue = (self.interval * 3).max(Duration::from_secs(30));
        let last_ok = *self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        self.committed.load(SeqCst) >= self.failed.load(SeqCst) && last_ok.elapsed() < overdue
    }

    /// What the last commit cost.
    pub fn last_commit(&self) -> Option<CommitStats> {
        *self.last_commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that worker 0 was paused `seconds` for a round.
    pub fn paused_for(&self, seconds: f64) {
        let mut p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        p.0 += seconds;
        p.1 = p.1.max(seconds);
    }

    /// Bytes per table of the live state (RocksDB: SST files plus memtables), for
    /// `ctrflow_state_size_bytes`; a few property reads, for checkpoint time.
    pub fn table_sizes(&self) -> Vec<(&'static str, u64)> {
        let backend = self.durable.store().backend();
        TableId::ALL
            .iter()
            .map(|&t| (t.name(), backend.table_stats(t).bytes))
            .collect()
    }

    /// What the checkpoints of this run did.
    pub fn report(&self) -> CheckpointReport {
        let last =
            (*self.last_commit.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default();
        let (total, max) = *self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        let committed = self.committed.load(SeqCst);
        let failed = self.failures.load(SeqCst);
        CheckpointReport {
            epoch: self.epoch(),
            committed,
            failed,
            last_ops: last.ops,
            last_bytes: last.bytes,
            last_commit_secs: last.seconds,
            mean_pause_secs: total / (committed + failed).max(1) as f64,
            max_pause_secs: max,
        }
    }
}

/// What the checkpoints hold of the response policy: its state, and the running
/// challenger's coordinates (incremental, under [`CHALLENGER`] in the model table).
#[derive(Debug, Default)]
struct PolicyCheckpoint {
    response: Option<Arc<Response>>,
    /// The stored challenger: its serial and its coordinates as of the last checkpoint.
    challenger: Option<(u64, ModelShadow)>,
    /// Whether the store holds a [`RESPONSE`] part.
    stored: bool,
}

/// A round's changes to the stored policy, to confirm once committed.
#[derive(Debug)]
struct PolicyChanges {
    challenger: ChallengerChanges,
    stored: bool,
}

#[derive(Debug)]
enum ChallengerChanges {
    /// Same challenger (or none, as before): these blocks changed.
    Blocks(ModelChanges),
    /// The stored challenger ended; another (or none) is stored from now on.
    Replaced(Option<(u64, ModelShadow, ModelChanges)>),
}

impl PolicyCheckpoint {
    /// Reads the policy stored in `store` into `response` (rebuilding a stored challenger
    /// from `champion`'s config). With the policy off, a stored challenger is deleted by
    /// the next checkpoint.
    fn restore(
        store: &ctrflow_state::StateStore,
        champion: &Model,
        response: Option<&Arc<Response>>,
    ) -> anyhow::Result<Self> {
        let state = RESPONSE.get(store, &(0, RESPONSE_PART))?;
        let mut policy = Self {
            response: response.cloned(),
            challenger: None,
            stored: state.is_some(),
        };
        let Some(state) = state else {
            return Ok(policy);
        };
        let model = match &state.challenger {
            Some(c) => {
                let model = Model::from_config(&champion.config())?;
                let shadow = ModelShadow::restore_at(&model, store, CHALLENGER)?;
                policy.challenger = Some((c.serial, shadow));
                Some(model)
            }
            None => None,
        };
        match response {
            Some(response) => {
                tracing::info!(
                    generation = state.generation,
                    challenger = state.challenger.is_some(),
                    "Resuming the response policy."
                );
                response.restore(state, model);
            }
            None => tracing::warn!(
                generation = state.generation,
                challenger = state.challenger.is_some(),
                "The checkpoint holds a response policy but drift.response is off: it is dropped."
            ),
        }
        Ok(policy)
    }

    /// Adds the policy's changes since the last checkpoint to `batch`: its state, the
    /// challenger's changed blocks; when the stored challenger ended, the deletion of its
    /// blocks (before the next one's).
    fn changes_into(&self, batch: &mut Batch) -> PolicyChanges {
        let (state, model) = match &self.response {
            Some(response) => {
                let (state, model) = response.snapshot();
                (Some(state), model)
            }
            None => (None, None),
        };
        let serial = state
            .as_ref()
            .and_then(|s| s.challenger.as_ref())
            .map(|c| c.serial);
        let current = serial.zip(model);
        let challenger = match (&self.challenger, current) {
            (Some((stored, shadow)), Some((serial, model))) if *stored == serial => {
                ChallengerChanges::Blocks(shadow.changes_into(&model, batch))
            }
            (None, None) => ChallengerChanges::Blocks(ModelChanges::default()),
            (old, new) => {
                if let Some((_, shadow)) = old {
                    shadow.delete_into(batch);
                }
                ChallengerChanges::Replaced(new.map(|(serial, model)| {
                    let shadow = ModelShadow::fresh_at(&model, CHALLENGER);
                    let changes = shadow.changes_into(&model, batch);
                    (serial, shadow, changes)
                }))
            }
        };
        match &state {
            Some(state) => RESPONSE.put(batch, &(0, RESPONSE_PART), state),
            None if self.stored => RESPONSE.delete(batch, &(0, RESPONSE_PART)),
            None => {}
        }
        PolicyChanges {
            challenger,
            stored: state.is_some(),
        }
    }

    /// The changes were committed.
    fn confirm(&mut self, changes: PolicyChanges) {
        self.stored = changes.stored;
        match changes.challenger {
            ChallengerChanges::Blocks(blocks) => {
                if let Some((_, shadow)) = &mut self.challenger {
                    shadow.confirm(blocks);
                }
            }
            ChallengerChanges::Replaced(next) => {
                self.challenger = next.map(|(serial, mut shadow, blocks)| {
                    shadow.confirm(blocks);
                    (serial, shadow)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ctrflow_dataflows::Learner;
    use ctrflow_dataflows::record::Feature;
    use ctrflow_state::StateStore;

    use super::*;
    use crate::drift::response::tests::examples;
    use crate::drift::response::{ChallengerStart, ResponseConfig, Serving};
    use crate::model::ModelConfig;
    use crate::model::checkpoint::{digest, stored_blocks};

    fn response_config() -> ResponseConfig {
        ResponseConfig {
            enabled: true,
            start: ChallengerStart::Warm,
            margin: 0.05,
            window: 1000,
            min_examples: 2000,
            max_examples: 100_000,
        }
    }

    fn model() -> Model {
        Model::from_config(&ModelConfig {
            bits: 10,
            ..ModelConfig::default()
        })
        .unwrap()
    }

    fn learn(serving: &mut Serving, examples: &[(Vec<Feature>, bool)]) {
        for (x, y) in examples {
            serving.update(x, *y);
        }
        serving.flush();
    }

    /// One process's checkpointed parts: the champion's shadow and the policy's.
    struct Process {
        model: Model,
        response: Arc<Response>,
        serving: Serving,
        shadow: ModelShadow,
        policy: PolicyCheckpoint,
    }

    impl Process {
        fn fresh() -> Self {
            let model = model();
            let response = Response::new(&response_config(), &model).unwrap();
            let policy =
                PolicyCheckpoint::restore(&StateStore::memory(), &model, Some(&response)).unwrap();
            let shadow = ModelShadow::fresh(&model);
            Self::with(model, response, shadow, policy)
        }

        fn with(
            model: Model,
            response: Arc<Response>,
            shadow: ModelShadow,
            policy: PolicyCheckpoint,
        ) -> Self {
            let serving = Serving::new(model.handle(), Some(Arc::clone(&response)), 0);
            Self {
                model,
                response,
                serving,
                shadow,
                policy,
            }
        }

        /// A restart from the checkpoint in `store`, taken at champion `version`.
        fn resumed(store: &StateStore, version: u64) -> Self {
            let model = model();
            let response = Response::new(&response_config(), &model).unwrap();
            let shadow = ModelShadow::restore(&model, store, version).unwrap();
            let policy = PolicyCheckpoint::restore(store, &model, Some(&response)).unwrap();
            Self::with(model, response, shadow, policy)
        }

        fn checkpoint(&mut self, store: &StateStore) -> usize {
            let mut batch = Batch::new();
            let changes = self.shadow.changes_into(&self.model, &mut batch);
            let policy = self.policy.changes_into(&mut batch);
            let ops = batch.len();
            store.write(batch).unwrap();
            self.shadow.confirm(changes);
            self.policy.confirm(policy);
            ops
        }

        /// The policy's state and the digests of the champion and the challenger.
        fn state(&self) -> (ResponseState, u64, Option<u64>) {
            let (state, challenger) = self.response.snapshot();
            (state, digest(&self.model), challenger.as_ref().map(digest))
        }
    }

    #[test]
    fn a_running_challenger_is_checkpointed_restored_and_continues_exactly() {
        let store = StateStore::memory();
        let mut a = Process::fresh();
        learn(&mut a.serving, &examples(20_000, false, 1));
        a.checkpoint(&store);
        assert_eq!(
            stored_blocks(&store, CHALLENGER),
            0,
            "no challenger, no blocks"
        );
        let stored = RESPONSE.get(&store, &(0, RESPONSE_PART)).unwrap().unwrap();
        assert_eq!(stored, ResponseState::default());

        // A challenger runs; checkpoint it twice, the second time with a partial chunk.
        a.response.confirm(1234);
        learn(&mut a.serving, &examples(512, true, 2));
        a.checkpoint(&store);
        assert!(stored_blocks(&store, CHALLENGER) > 0);
        learn(&mut a.serving, &examples(300, true, 3));
        a.checkpoint(&store);
        let (state, champion, challenger) = a.state();
        let window = state.challenger.as_ref().expect("running").losses.clone();
        assert_eq!(window.total().n, 768);
        assert_eq!(state.partials.len(), 1);
        assert_eq!(state.partials[0].1.n, 44, "{:?}", state.partials);

        // Restored: the same champion, challenger, window and generation.
        let mut b = Process::resumed(&store, a.model.version());
        assert_eq!(b.state(), (state, champion, challenger));

        // Both continue alike, to the promotion.
        let more = examples(4096, true, 4);
        learn(&mut a.serving, &more);
        learn(&mut b.serving, &more);
        assert_eq!(a.response.generation(), 1, "promoted");
        assert_eq!(a.state(), b.state());
        assert_eq!(a.serving.version(), b.serving.version());
        assert_eq!(b.serving.version() >> 48, 1);

        // The ended challenger's blocks go with the checkpoint that follows; the
        // generation stays.
        a.checkpoint(&store);
        assert_eq!(stored_blocks(&store, CHALLENGER), 0);
        let c = Process::resumed(&store, a.model.version());
        assert_eq!(c.response.generation(), 1);
        assert!(!c.response.challenging());
        assert_eq!(c.state(), a.state());

        // With the policy off nothing of it is stored, and a stored one is deleted.
        let mut off = PolicyCheckpoint::default();
        let mut batch = Batch::new();
        let changes = off.changes_into(&mut batch);
        assert!(batch.is_empty());
        off.confirm(changes);
        let mut off = PolicyCheckpoint::restore(&store, &model(), None).unwrap();
        let mut batch = Batch::new();
        let changes = off.changes_into(&mut batch);
        assert_eq!(batch.len(), 1, "the policy part is deleted");
        store.write(batch).unwrap();
        off.confirm(changes);
        assert!(RESPONSE.get(&store, &(0, RESPONSE_PART)).unwrap().is_none());
    }

    /// Through [`Checkpointer`] on RocksDB: a commit holds the running challenger, a
    /// reopened state gives it back to the policy.
    #[test]
    fn a_checkpointer_commits_the_challenger_and_a_reopened_state_resumes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PipelineConfig::default();
        config.state.dir = dir.path().join("state");
        config.model.bits = 10;
        config.drift.response = response_config();
        let open = || {
            let (checkpointer, resumed) = Checkpointer::open(&config, 1).unwrap();
            let response = Response::new(&config.drift.response, &resumed.model).unwrap();
            checkpointer.resume_response(Some(&response)).unwrap();
            (checkpointer, resumed.model, response)
        };
        let (checkpointer, model, response) = open();
        let mut serving = Serving::new(model.handle(), Some(Arc::clone(&response)), 0);
        learn(&mut serving, &examples(5_000, false, 1));
        response.confirm(99);
        learn(&mut serving, &examples(1_024, true, 2));
        checkpointer.commit(1, 0, || Ok(())).unwrap();
        let before = response.snapshot();
        assert!(before.0.challenger.is_some());
        drop((serving, checkpointer));

        let (checkpointer, restored, again) = open();
        assert_eq!(checkpointer.epoch(), 1);
        assert_eq!(digest(&restored), digest(&model));
        let after = again.snapshot();
        assert_eq!(after.0, before.0);
        assert_eq!(
            after.1.as_ref().map(digest),
            before.1.as_ref().map(digest),
            "the challenger's coordinates"
        );
    }
}
