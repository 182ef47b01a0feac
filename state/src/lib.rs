//! ctrflow's durable state: RocksDB tables, atomic checkpoints, and snapshot files.
//!
//! - [`store`]: a [`StateStore`] over a [`Backend`] — RocksDB ([`rocks`]) or memory
//!   ([`memory`], for tests) — with only batched operations: [`Batch`] writes applied
//!   atomically, and `multi_get` reads.
//! - [`table`]: the tables, declared up front as [`TableId`]s (one RocksDB column family
//!   each), and typed access through [`Table`] over the key/value [`codec`].
//! - [`checkpoint`]: [`Durable`], the state directory: every checkpoint is one atomic
//!   batch with its [`Manifest`], copies are kept, and recovery falls back to the newest
//!   intact copy (or refuses to start) when the newest is damaged.
//! - [`snapshot`]: a framed, versioned, checksummed single-file format (saved models).
//!
//! ```
//! use ctrflow_state::{Batch, StateStore, Table, TableId};
//!
//! let store = StateStore::memory();
//! let offsets: Table<i32, i64> = Table::new(TableId::Offsets);
//! let mut batch = Batch::new();
//! offsets.put(&mut batch, &0, &1200);
//! offsets.put(&mut batch, &1, &977);
//! batch.add("events", 2177);
//! store.write(batch)?;
//! assert_eq!(offsets.multi_get(&store, &[1, 0, 7])?, vec![Some(977), Some(1200), None]);
//! assert_eq!(store.counter("events")?, 2177);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod error;
pub mod memory;
pub mod rocks;
pub mod snapshot;
pub mod store;
pub mod table;

pub use checkpoint::{CommitStats, Durable, Manifest, Recovery};
pub use config::StateConfig;
pub use error::StateError;
pub use store::{Backend, Batch, StateStore, TableStats};
pub use table::{Table, TableId};

#[cfg(test)]
mod tests;
