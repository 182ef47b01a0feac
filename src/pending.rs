//! Where the label join's pending impressions go beyond `label.pending_memory_mb`: the
//! checkpointed store with `state.dir`; otherwise (`replay`, `run` without `state.dir`) a
//! scratch RocksDB in a new temporary directory, opened when the first body leaves memory
//! (a run that never spills pays nothing for it) and removed when the process is done.
//! See `ctrflow_dataflows::operators::pending`.

use std::sync::Arc;

use anyhow::Context;
use ctrflow_dataflows::operators::{SpillStore, SpillTo};
use ctrflow_state::rocks::RocksBackend;
use ctrflow_state::{StateConfig, StateStore};

/// Block cache of the scratch store, MiB: bodies are read back about once each, so the
/// OS page cache does the caching.
const SCRATCH_BLOCK_CACHE_MB: usize = 4;
/// Memtable of the scratch store, MiB. Small: every table (column family) gets one, and
/// bodies are written once and read back once, so larger ones buy little.
const SCRATCH_WRITE_BUFFER_MB: usize = 4;

/// Where the workers of a process spill pending impressions (each under its own worker
/// number), and what keeps a scratch store's directory alive.
#[derive(Debug)]
pub struct PendingSpill {
    /// The store.
    pub store: SpillStore,
    /// What kind of store it is.
    pub to: SpillTo,
    /// Removed on drop; the store (in the workers' joins) is dropped before the process
    /// ends with it.
    _scratch_dir: Option<tempfile::TempDir>,
}

impl PendingSpill {
    /// The checkpointed store `store` (`run` with `state.dir`).
    pub fn checkpoints(store: StateStore) -> Self {
        Self {
            store: store.into(),
            to: SpillTo::Checkpoints,
            _scratch_dir: None,
        }
    }

    /// A scratch store in a new temporary directory (created now, so that an unusable
    /// `$TMPDIR` fails the command at once), tuned by `state` within a small memory budget,
    /// opened on first use.
    pub fn scratch(state: &StateConfig) -> anyhow::Result<Self> {
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
        let path = dir.path().to_path_buf();
        let store = SpillStore::lazy(move || {
            let backend = RocksBackend::open(&path, &config)?;
            Ok(StateStore::new(Arc::new(backend)))
        });
        Ok(Self {
            store,
            to: SpillTo::Scratch,
            _scratch_dir: Some(dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_store_is_opened_on_first_use_and_removed_with_the_spill() {
        let spill = PendingSpill::scratch(&StateConfig::default()).unwrap();
        let dir = spill._scratch_dir.as_ref().unwrap().path().to_path_buf();
        let files = || std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert_eq!(files(), 0, "nothing opened before a body leaves memory");
        let store = spill.store.clone();
        let _ = store.get();
        assert!(files() > 0, "RocksDB opened in the scratch directory");
        drop(store);
        drop(spill);
        assert!(!dir.exists());
    }
}
