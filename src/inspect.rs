//! `ctrflow inspect --state DIR`: what a worker's durable state holds — the checkpoint,
//! tables and their sizes, offsets, the model, the label joins, and one user's or item's
//! features.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use ctrflow_dataflows::operators::{
    Aggregates, AggregatesReport, JoinState, JoinStats, LabelConfig,
};
use ctrflow_state::store::counter_value;
use ctrflow_state::{Durable, Manifest, Recovery, StateConfig, TableId, TableStats};
use serde::Serialize;

use crate::checkpoint::OFFSETS;
use crate::config::PipelineConfig;
use crate::entity::{self, EntityStore, FEATURE_NAMES, Kind};
use crate::model::Model;
use crate::model::checkpoint::{Fnv, ModelShadow, digest, stored_config};

/// What to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// The state directory (`state.dir` of the worker).
    pub state: PathBuf,
    /// The worker's configuration (entity feature settings); defaults when absent.
    pub config: PipelineConfig,
    /// A user whose features to show.
    pub user: Option<String>,
    /// An item whose features to show.
    pub item: Option<String>,
    /// The category for the user×category features (with `user`).
    pub category: Option<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// The state directory.
    pub dir: PathBuf,
    /// The checkpoint the state is at (none when it was never checkpointed).
    pub checkpoint: Option<Manifest>,
    /// Why the newest checkpoint was not usable, if recovery fell back.
    pub fell_back: Option<String>,
    /// Retained checkpoint copies (epochs).
    pub retained: Vec<u64>,
    /// Per table: what it holds, entries and bytes.
    pub tables: BTreeMap<&'static str, TableReport>,
    /// Next offset per partition.
    pub offsets: BTreeMap<i32, i64>,
    /// The model.
    pub model: Option<ModelReport>,
    /// Label joins summed over workers.
    pub join: JoinStats,
    /// Impressions in the attribution windows, over workers.
    pub pending_impressions: u64,
    /// Of those, the ones still awaiting their label (window open, undecided).
    pub awaiting_label: u64,
    /// Records read and not yet processed, over workers.
    pub buffered_records: u64,
    /// Entities stored, and a digest of them (equal digests: identical feature state).
    pub entities: u64,
    /// FNV-1a digest of every entity's key and counts, in key order.
    pub entities_digest: String,
    /// The features asked for, as of the checkpoint's watermark.
    pub features: BTreeMap<String, BTreeMap<&'static str, f32>>,
    /// Lifetime counters of the state (`records_read`, `checkpoints`).
    pub counters: BTreeMap<String, u64>,
    /// The global aggregates as of the checkpoint (when the worker maintained them).
    pub aggregates: Option<AggregatesReport>,
}

/// One table.
#[derive(Debug, Serialize)]
pub struct TableReport {
    /// What it holds.
    pub description: &'static str,
    /// Size.
    #[serde(flatten)]
    pub stats: TableStats,
}

/// The model in the state.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    /// Updates applied.
    pub version: u64,
    /// Non-zero weights.
    pub nonzero_weights: usize,
    /// Euclidean norm of the weights.
    pub weight_norm: f64,
    /// FNV-1a digest of its coordinates (equal digests: bit-identical models).
    pub digest: String,
}

/// Opens the state (recovering as a worker would) and reports on it.
pub fn inspect(options: &InspectOptions) -> anyhow::Result<InspectReport> {
    anyhow::ensure!(
        options.state.join("db").exists(),
        "{} holds no ctrflow state (no db/ in it)",
        options.state.display()
    );
    let state = StateConfig {
        dir: options.state.clone(),
        ..options.config.state.clone()
    };
    let (durable, recovery) = Durable::open(&state)
        .with_context(|| format!("opening the state in {}", options.state.display()))?;
    let store = durable.store();
    let (checkpoint, fell_back) = match recovery {
        Recovery::Fresh => (None, None),
        Recovery::Resumed {
            manifest,
            fell_back,
        } => (Some(manifest), fell_back),
    };
    let tables = TableId::ALL
        .into_iter()
        .map(|t| {
            let report = TableReport {
                description: t.description(),
                stats: store.backend().table_stats(t),
            };
            (t.name(), report)
        })
        .collect();
    let mut offsets = BTreeMap::new();
    OFFSETS.scan_all(store, |p, o| {
        offsets.insert(p, o);
        true
    })?;
    let model = match stored_config(store)? {
        Some(config) => {
            let model = Model::from_config(&config)?;
            let version = checkpoint.as_ref().map_or(0, |m| m.model_version);
            ModelShadow::restore(&model, store, version)?;
            Some(ModelReport {
                version: model.version(),
                nonzero_weights: model.nonzero_weights(),
                weight_norm: model.weight_norm(),
                digest: format!("{:016x}", digest(&model)),
            })
        }
        None => None,
    };
    let mut join = JoinStats::default();
    let (mut pending, mut awaiting, mut buffered) = (0, 0, 0);
    let workers = checkpoint.as_ref().map_or(0, |m| m.workers);
    // Every stub, whatever the worker's budget: awaiting labels are counted in memory, and
    // stubs left in the store would need id hints written.
    let label = LabelConfig {
        pending_stubs_memory_mb: u64::MAX,
        ..options.config.label.clone()
    };
    for w in 0..workers {
        if let Some(state) = JoinState::restore(store, w, &label)? {
            join.merge(&state.stats);
            pending += state.pending() as u64;
            awaiting += state.awaiting_label() as u64;
            buffered += state.buffered() as u64;
        }
    }
    let mut entities = 0;
    let mut h = Fnv::default();
    store.backend().scan(TableId::Entities, &[], &mut |k, v| {
        entities += 1;
        h.write(k);
        h.write(v);
        true
    })?;
    let mut counters = BTreeMap::new();
    store.backend().scan(TableId::Counters, &[], &mut |k, v| {
        counters.insert(String::from_utf8_lossy(k).into_owned(), counter_value(v));
        true
    })?;
    let mut features = BTreeMap::new();
    if options.user.is_some() || options.item.is_some() {
        let entity_store = EntityStore::new(
            &options.config.features.entity,
            options.config.features.bits,
            Some(store.clone()),
        );
        let ts = checkpoint.as_ref().map_or(0, |m| m.watermark as i64);
        let user = options.user.as_deref().unwrap_or("");
        let item = options.item.as_deref().unwrap_or("");
        let category = options.category.as_deref().unwrap_or("");
        let keys = entity::entities(user, item, category);
        let values = entity_store.features_of(&keys, ts);
        let named = |prefix: &str| -> BTreeMap<&'static str, f32> {
            FEATURE_NAMES
                .iter()
                .zip(values)
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(n, v)| (*n, v))
                .collect()
        };
        if let Some(u) = &options.user {
            anyhow::ensure!(
                entity_store.get(Kind::User, keys.user)?.is_some(),
                "user {u} is not in the state"
            );
            features.insert(format!("user {u}"), named("user"));
        }
        if let Some(i) = &options.item {
            anyhow::ensure!(
                entity_store.get(Kind::Item, keys.item)?.is_some(),
                "item {i} is not in the state"
            );
            features.insert(format!("item {i}"), named("item"));
        }
    }
    Ok(InspectReport {
        dir: options.state.clone(),
        checkpoint,
        fell_back,
        retained: durable.retained()?.into_iter().map(|(e, _)| e).collect(),
        tables,
        offsets,
        model,
        join,
        pending_impressions: pending,
        awaiting_label: awaiting,
        buffered_records: buffered,
        entities,
        entities_digest: format!("{:016x}", h.0),
        features,
        counters,
        aggregates: Aggregates::stored_report(store)?,
    })
}

impl InspectReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "state in {}", self.dir.display());
        match &self.checkpoint {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "checkpoint {} (watermark {}, {} worker(s), model version {}, taken at {} ms)",
                    m.epoch, m.watermark, m.workers, m.model_version, m.created_ms
                );
            }
            None => {
                let _ = writeln!(s, "no checkpoint yet");
            }
        }
        if let Some(reason) = &self.fell_back {
            let _ = writeln!(s, "recovered from an older copy: {reason}");
        }
        let _ = writeln!(s, "retained copies: {:?}", self.retained);
        let _ = writeln!(s, "tables:");
        for (name, t) in &self.tables {
            let _ = writeln!(
                s,
                "  {name:<10} {:>10} entries {:>12} bytes  {}",
                t.stats.keys, t.stats.bytes, t.description
            );
        }
        let _ = writeln!(s, "offsets: {:?}", self.offsets);
        if let Some(m) = &self.model {
            let _ = writeln!(
                s,
                "model: version {}, {} non-zero weights, norm {:.4}, digest {}",
                m.version, m.nonzero_weights, m.weight_norm, m.digest
            );
        }
        let j = &self.join;
        let _ = writeln!(
            s,
            "label join: {} impressions, {} examples, {} pending ({} awaiting their label), {} buffered",
            j.impressions,
            j.examples(),
            self.pending_impressions,
            self.awaiting_label,
            self.buffered_records
        );
        let _ = writeln!(
            s,
            "entities: {} (digest {})",
            self.entities, self.entities_digest
        );
        let _ = writeln!(s, "counters: {:?}", self.counters);
        if let Some(aggregates) = &self.aggregates {
            s.push_str(&crate::replay::render_aggregates(aggregates));
        }
        for (who, values) in &self.features {
            let _ = writeln!(s, "{who}:");
            for (name, v) in values {
                let _ = writeln!(s, "  {name:<32} {v:.5}");
            }
        }
        s
    }
}
