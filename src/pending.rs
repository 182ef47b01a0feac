//! Where the label join's pending impressions go beyond `label.pending_memory_mb` when
//! state is not durable (`replay`, `run` without `state.dir`): a scratch RocksDB in a new
//! temporary directory, removed when the process is done with it. With durable state they
//! go to the checkpointed store instead (see `ctrflow_dataflows::operators::pending`).

use std::sync::Arc;

use anyhow::Context;
use ctrflow_dataflows::operators::SpillTo;
use ctrflow_state::rocks::RocksBackend;
use ctrflow_state::{StateConfig, StateStore};

/// Block cache of the scratch store, MiB: bodies are read back about once each, so the
/// OS page cache does the caching.
const SCRATCH_BLOCK_CACHE_MB: usize = 8;
/// Memtable of the scratch store, MiB (two at most while one flushes).
const SCRATCH_WRITE_BUFFER_MB: usize = 16;

/// A scratch store for pending impressions, shared by the workers of a process (each
/// writes under its own worker number).
#[derive(Debug)]
pub struct PendingScratch {
    store: StateStore,
    /// Removed on drop, after `store` (fields drop in order).
    _dir: tempfile::TempDir,
}

impl PendingScratch {
    /// Opens an empty scratch store, tuned by `state` within a small memory budget.
    pub fn open(state: &StateConfig) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ctrflow-pending-")
            .tempdir()
            .context(
                "creating a scratch directory for pending impressions (set TMPDIR to move it)",
            )?;
        let config = StateConfig {
            block_cache_mb: SCRATCH_BLOCK_CACHE_MB,
            write_buffer_mb: SCRATCH_WRITE_BUFFER_MB,
            ..state.clone()
        };
        let backend = RocksBackend::open(dir.path(), &config)?;
        Ok(Self {
            store: StateStore::new(Arc::new(backend)),
            _dir: dir,
        })
    }

    /// The store, for [`JoinState::spill_to`](ctrflow_dataflows::operators::JoinState::spill_to).
    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

/// Where the workers of a process spill pending impressions, and what keeps it alive.
#[derive(Debug)]
pub struct PendingSpill {
    /// The store.
    pub store: StateStore,
    /// What kind of store it is.
    pub to: SpillTo,
    _scratch: Option<PendingScratch>,
}

impl PendingSpill {
    /// The checkpointed store `store` (`run` with `state.dir`).
    pub fn checkpoints(store: StateStore) -> Self {
        Self {
            store,
            to: SpillTo::Checkpoints,
            _scratch: None,
        }
    }

    /// A new scratch store ([`PendingScratch::open`]).
    pub fn scratch(state: &StateConfig) -> anyhow::Result<Self> {
        let scratch = PendingScratch::open(state)?;
        Ok(Self {
            store: scratch.store().clone(),
            to: SpillTo::Scratch,
            _scratch: Some(scratch),
        })
    }
}
