//! The store: a backend (RocksDB, or memory for tests) behind a small batched API.
//!
//! Only batched operations exist: [`Batch`] for writes (applied atomically) and
//! `multi_get` for reads, so callers batch by default. A checkpoint is one batch.

use std::fmt;
use std::sync::Arc;

use crate::error::StateError;
use crate::table::TableId;

/// Size of one table, as the backend estimates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Entries (RocksDB's estimate: exact in memory).
    pub keys: u64,
    /// Bytes on disk (RocksDB's SST files) or in memory.
    pub bytes: u64,
}

/// A storage engine for ctrflow's tables.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Appends to `out` the value of every key of `keys` in `table`, in order.
    fn multi_get(
        &self,
        table: TableId,
        keys: &[Vec<u8>],
        out: &mut Vec<Option<Vec<u8>>>,
    ) -> Result<(), StateError>;
    /// Applies `batch` atomically; durable before returning when `sync`.
    fn write(&self, batch: Batch, sync: bool) -> Result<(), StateError>;
    /// Visits the entries of `table` whose key starts with `prefix`, in key order, until
    /// `visit` returns false.
    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;
    /// How big `table` is.
    fn table_stats(&self, table: TableId) -> TableStats;
    /// Heap memory the engine holds beside the tables' own entries (RocksDB: memtables,
    /// block cache, table readers), in bytes; 0 where there is none.
    fn memory_bytes(&self) -> u64 {
        0
    }
    /// Entries of expiring tables last touched before event time `ts` may be dropped from
    /// now on (RocksDB drops them as it compacts; memory drops them at once).
    fn expire_before(&self, ts: i64);
}

/// One write operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(TableId, Vec<u8>, Vec<u8>),
    /// Remove a key (a no-op if absent).
    Delete(TableId, Vec<u8>),
    /// Add to a counter of [`TableId::Counters`].
    Add(Vec<u8>, u64),
}

/// Writes applied together, atomically.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    bytes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` of `table` to `value`.
    pub fn put(&mut self, table: TableId, key: Vec<u8>, value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(table, key, value));
    }

    /// Removes `key` from `table`.
    pub fn delete(&mut self, table: TableId, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push(Op::Delete(table, key));
    }

    /// Adds `delta` to counter `name` (merge operator: no read).
    pub fn add(&mut self, name: &str, delta: u64) {
        self.bytes += name.len() + 8;
        self.ops.push(Op::Add(name.as_bytes().to_vec(), delta));
    }

    /// Appends `other`'s operations (applied after this batch's).
    pub fn append(&mut self, other: Batch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values in the batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The operations, in order.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}

/// Decodes a counter's value (8 bytes little-endian; anything else reads as 0).
pub fn counter_value(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_le_bytes)
}

/// Handle on the store; cheap to clone, shared by the workers of a process.
#[derive(Clone, Debug)]
pub struct StateStore {
    backend: Arc<dyn Backend>,
}

impl StateStore {
    /// A store over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// A fresh in-memory store (tests, and runs without a state directory).
    pub fn memory() -> Self {
        Self::new(Arc::new(crate::memory::MemoryBackend::default()))
    }

    /// The engine underneath.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Applies `batch` atomically and durably.
    pub fn write(&self, batch: Batch) -> Result<(), StateError> {
        self.backend.write(batch, true)
    }

    /// Applies `batch` atomically without waiting for it to be durable: for scratch
    /// stores that no checkpoint reads.
    pub fn write_unsynced(&self, batch: Batch) -> Result<(), StateError> {
        self.backend.write(batch, false)
    }

    /// Counter `name`'s value.
    pub fn counter(&self, name: &str) -> Result<u64, StateError> {
        let mut out = Vec::new();
        self.backend
            .multi_get(TableId::Counters, &[name.as_bytes().to_vec()], &mut out)?;
        Ok(out.pop().flatten().map_or(0, |v| counter_value(&v)))
    }
}
