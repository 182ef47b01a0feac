//! Durable checkpoints: the live database, the copies kept to fall back to, and recovery.
//!
//! # Layout
//!
//! ```text
//! DIR/db/                      the live RocksDB database
//! DIR/checkpoints/EPOCH/       consistent copies of it, newest `keep_checkpoints` kept
//! ```
//!
//! # Why the live database is always a checkpoint
//!
//! Nothing is written to the database between checkpoints: operators keep their working
//! state in memory and hand its changes to [`Durable::commit`] at a checkpoint, which
//! writes them, the source offsets and the [`Manifest`] in one atomic, synced RocksDB
//! batch. So the live database moves from one complete checkpoint to the next, and a
//! `kill -9` at any moment leaves it at the last one: no half-applied epoch, nothing
//! applied twice once the source re-reads from the stored offsets.
//!
//! After each commit a copy is taken with RocksDB's checkpoint facility (table files are
//! hard-linked, so a copy costs a memtable flush, not a rewrite). If the live database is
//! later found damaged (it does not open, its manifest is missing or fails its checksum),
//! recovery says so and restores the newest copy that is intact. If none is usable it
//! refuses to start, rather than silently starting from zero.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::codec::{decode_value, encode_value};
use crate::config::StateConfig;
use crate::error::StateError;
use crate::rocks::RocksBackend;
use crate::store::{Backend, Batch, StateStore};
use crate::table::TableId;

/// Layout version of everything ctrflow stores; a store of another version is refused.
/// 2: pending entries carry item and category. 3: the drift detectors' buffered label
/// observations carry their segment instead of the impression's event time.
pub const FORMAT_VERSION: u32 = 3;

/// Key of the manifest in [`TableId::Meta`].
const MANIFEST_KEY: &[u8] = b"manifest";

/// What makes a checkpoint complete: written in the same batch as its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Checkpoint number, from 1.
    pub epoch: u64,
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Every record with an event time before this was processed into the checkpoint.
    pub watermark: u64,
    /// Workers the checkpoint was taken with (per-worker state is keyed by worker index).
    pub workers: u32,
    /// Model version (updates applied) at the checkpoint.
    pub model_version: u64,
    /// Wall-clock time of the checkpoint, epoch milliseconds.
    pub created_ms: u64,
}

/// The manifest as stored: its encoding and a CRC-32 of it.
#[derive(Serialize, Deserialize)]
struct Sealed {
    manifest: Vec<u8>,
    crc: u32,
}

/// Adds `manifest` to `batch`.
pub fn seal(manifest: &Manifest, batch: &mut Batch) {
    let mut body = Vec::new();
    encode_value(manifest, &mut body);
    let crc = crc32fast::hash(&body);
    let mut sealed = Vec::new();
    encode_value(
        &Sealed {
            manifest: body,
            crc,
        },
        &mut sealed,
    );
    batch.put(TableId::Meta, MANIFEST_KEY.to_vec(), sealed);
}

/// The manifest of `store`: `Ok(None)` if it has none, an error if it is damaged.
pub fn read_manifest(backend: &dyn Backend, path: &Path) -> Result<Option<Manifest>, StateError> {
    let bad = |reason: String| StateError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let mut raw = Vec::new();
    backend.multi_get(TableId::Meta, &[MANIFEST_KEY.to_vec()], &mut raw)?;
    let Some(Some(bytes)) = raw.pop() else {
        return Ok(None);
    };
    let sealed: Sealed =
        decode_value("meta", &bytes).map_err(|e| bad(format!("manifest unreadable: {e}")))?;
    if crc32fast::hash(&sealed.manifest) != sealed.crc {
        return Err(bad("manifest checksum mismatch".to_owned()));
    }
    let manifest: Manifest = decode_value("meta", &sealed.manifest)
        .map_err(|e| bad(format!("manifest unreadable: {e}")))?;
    if manifest.format != FORMAT_VERSION {
        return Err(bad(format!(
            "written by state format {}, this build reads format {FORMAT_VERSION}",
            manifest.format
        )));
    }
    Ok(Some(manifest))
}

/// Where a worker's state came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No state existed: starting from the beginning.
    Fresh,
    /// Resumed from `manifest`.
    Resumed {
        /// The checkpoint resumed from.
        manifest: Manifest,
        /// Why the newest checkpoint was not used, when recovery fell back to an older
        /// copy.
        fell_back: Option<String>,
    },
}

/// What one commit cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommitStats {
    /// Operations written.
    pub ops: usize,
    /// Bytes of keys and values written.
    pub bytes: usize,
    /// Wall time of the write and the copy, seconds.
    pub seconds: f64,
}

/// The state directory: a live database and its retained checkpoint copies.
#[derive(Debug)]
pub struct Durable {
    dir: PathBuf,
    keep: usize,
    backend: Arc<RocksBackend>,
    store: StateStore,
}

impl Durable {
    /// Opens the state in `config.dir`, recovering the newest intact checkpoint.
    pub fn open(config: &StateConfig) -> Result<(Self, Recovery), StateError> {
        let dir = config.dir.clone();
        let live = dir.join("db");
        let copies = dir.join("checkpoints");
        std::fs::create_dir_all(&copies).map_err(|e| StateError::io(&copies, e))?;
        remove_unfinished(&copies)?;
        let retained = checkpoint_dirs(&copies)?;

        let live_state = RocksBackend::open(&live, config).and_then(|backend| {
            let manifest = read_manifest(&backend, &live)?;
            Ok((backend, manifest))
        });
        let fell_back = match live_state {
            Ok((backend, Some(manifest))) => {
                let durable = Self::with(dir, config.keep_checkpoints, backend);
                durable.ensure_copy(&manifest)?;
                return Ok((
                    durable,
                    Recovery::Resumed {
                        manifest,
                        fell_back: None,
                    },
                ));
            }
            Ok((backend, None)) if retained.is_empty() => {
                if let Some(table) = first_nonempty_table(&backend)? {
                    return Err(StateError::Checkpoint {
                        path: live,
                        reason: format!(
                            "the database holds data (table `{}`) but no checkpoint manifest, and \
                             no checkpoint copy exists to fall back to; refusing to start from \
                             zero (move the state directory away to start fresh)",
                            table.name()
                        ),
                    });
                }
                return Ok((
                    Self::with(dir, config.keep_checkpoints, backend),
                    Recovery::Fresh,
                ));
            }
            Ok((backend, None)) => {
                drop(backend);
                "the live database has no checkpoint manifest".to_owned()
            }
            Err(e) => e.to_string(),
        };

        // The live database is damaged: restore the newest intact copy.
        let mut problems = vec![format!("{}: {fell_back}", live.display())];
        for (_, copy) in retained.iter().rev() {
            match Self::restore_from(copy, &live, config) {
                Ok((backend, manifest)) => {
                    let reason = format!(
                        "{}; restored checkpoint {} from {}",
                        problems.join("; "),
                        manifest.epoch,
                        copy.display()
                    );
                    let durable = Self::with(dir, config.keep_checkpoints, backend);
                    return Ok((
                        durable,
                        Recovery::Resumed {
                            manifest,
                            fell_back: Some(reason),
                        },
                    ));
                }
                Err(e) => problems.push(format!("{}: {e}", copy.display())),
            }
        }
        Err(StateError::Checkpoint {
            path: dir,
            reason: format!(
                "no usable checkpoint ({}); refusing to start from zero (move the state \
                 directory away to start fresh)",
                problems.join("; ")
            ),
        })
    }

    fn with(dir: PathBuf, keep: usize, backend: RocksBackend) -> Self {
        let backend = Arc::new(backend);
        let store = StateStore::new(Arc::clone(&backend) as Arc<dyn Backend>);
        Self {
            dir,
            keep: keep.max(1),
            backend,
            store,
        }
    }

    /// Opens `copy`, checks its manifest, and makes a fresh live database of it at `live`
    /// (the damaged one is moved aside, not deleted).
    fn restore_from(
        copy: &Path,
        live: &Path,
        config: &StateConfig,
    ) -> Result<(RocksBackend, Manifest), StateError> {
        let source = RocksBackend::open(copy, config)?;
        let manifest = read_manifest(&source, copy)?.ok_or_else(|| StateError::Checkpoint {
            path: copy.to_path_buf(),
            reason: "no manifest".to_owned(),
        })?;
        if live.exists() {
            let aside = live.with_file_name(format!("db.damaged-{}", now_ms()));
            std::fs::rename(live, &aside).map_err(|e| StateError::io(live, e))?;
        }
        source.checkpoint_to(live)?;
        drop(source);
        let backend = RocksBackend::open(live, config)?;
        Ok((backend, manifest))
    }

    /// The store, for reads at recovery and for inspection.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `batch` and `manifest` atomically and durably, then keeps a copy of the
    /// result and drops copies beyond the newest `keep_checkpoints`.
    pub fn commit(&self, mut batch: Batch, manifest: &Manifest) -> Result<CommitStats, StateError> {
        let started = Instant::now();
        seal(manifest, &mut batch);
        let stats = CommitStats {
            ops: batch.len(),
            bytes: batch.bytes(),
            seconds: 0.0,
        };
        self.store.write(batch)?;
        self.ensure_copy(manifest)?;
        Ok(CommitStats {
            seconds: started.elapsed().as_secs_f64(),
            ..stats
        })
    }

    /// Takes the copy of checkpoint `manifest` (the live database) if it is missing, and
    /// prunes old copies.
    fn ensure_copy(&self, manifest: &Manifest) -> Result<(), StateError> {
        let copies = self.dir.join("checkpoints");
        let target = copies.join(format!("{:020}", manifest.epoch));
        if !target.exists() {
            let unfinished = copies.join(format!("unfinished-{:020}", manifest.epoch));
            if unfinished.exists() {
                std::fs::remove_dir_all(&unfinished).map_err(|e| StateError::io(&unfinished, e))?;
            }
            self.backend.checkpoint_to(&unfinished)?;
            std::fs::rename(&unfinished, &target).map_err(|e| StateError::io(&target, e))?;
        }
        let retained = checkpoint_dirs(&copies)?;
        for (_, old) in retained.iter().rev().skip(self.keep) {
            std::fs::remove_dir_all(old).map_err(|e| StateError::io(old, e))?;
        }
        Ok(())
    }

    /// The retained checkpoint copies, oldest first.
    pub fn retained(&self) -> Result<Vec<(u64, PathBuf)>, StateError> {
        checkpoint_dirs(&self.dir.join("checkpoints"))
    }
}

/// The first table that holds any entry, if one does.
fn first_nonempty_table(backend: &dyn Backend) -> Result<Option<TableId>, StateError> {
    for table in TableId::ALL {
        let mut any = false;
        backend.scan(table, &[], &mut |_, _| {
            any = true;
            false
        })?;
        if any {
            return Ok(Some(table));
        }
    }
    Ok(None)
}

/// Retained copies in `copies`, oldest first.
fn checkpoint_dirs(copies: &Path) -> Result<Vec<(u64, PathBuf)>, StateError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(copies).map_err(|e| StateError::io(copies, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(copies, e))?;
        if let Some(epoch) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((epoch, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes copies a crash interrupted.
fn remove_unfinished(copies: &Path) -> Result<(), StateError> {
    let entries = std::fs::read_dir(copies).map_err(|e| StateError::io(copies, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(copies, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("unfinished-")
        {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| StateError::io(&path, e))?;
        }
    }
    Ok(())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
