//! The tables of ctrflow's state, declared up front, and typed access to them.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Key, append_value, decode_value, encode_value};

use crate::error::StateError;
use crate::store::{Batch, StateStore};

/// Room for most keys (a few fixed-width fields) and values (an entity's aggregate with its
/// touch time) without growing the buffer.
const KEY_CAPACITY: usize = 24;
const VALUE_CAPACITY: usize = 96;

/// One kind of state: a RocksDB column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TableId {
    /// Checkpoint manifests and other single records.
    Meta,
    /// Source positions: the next offset to read, per partition.
    Offsets,
    /// Decayed per-user, per-item and per-user×category counters. Values start with the
    /// event time they were last touched (8 bytes, little-endian), which expiry reads.
    Entities,
    /// Impressions whose attribution window is open, per worker.
    Pending,
    /// Where a pending impression out of memory is, by its id: a hint (checked against
    /// [`Pending`](TableId::Pending)) written when impressions leave memory, outside
    /// checkpoints.
    PendingIds,
    /// Model coordinates, in fixed-size blocks.
    Model,
    /// Per-worker operator state: unprocessed input, label-join cursors and counters,
    /// progressive metrics, detectors.
    Operators,
    /// Monotonic counters, updated with an add merge operator (never read-modify-write).
    Counters,
}

impl TableId {
    /// Every table, in the order their column families are created.
    pub const ALL: [TableId; 8] = [
        TableId::Meta,
        TableId::Offsets,
        TableId::Entities,
        TableId::Pending,
        TableId::PendingIds,
        TableId::Model,
        TableId::Operators,
        TableId::Counters,
    ];

    /// The column family's name.
    pub const fn name(self) -> &'static str {
        match self {
            TableId::Meta => "meta",
            TableId::Offsets => "offsets",
            TableId::Entities => "entities",
            TableId::Pending => "pending",
            TableId::PendingIds => "pending_ids",
            TableId::Model => "model",
            TableId::Operators => "operators",
            TableId::Counters => "counters",
        }
    }

    /// What it holds, for `ctrflow inspect`.
    pub const fn description(self) -> &'static str {
        match self {
            TableId::Meta => "checkpoint manifest",
            TableId::Offsets => "source offsets (next to read) per partition",
            TableId::Entities => "decayed per-user, per-item, per-user×category counters",
            TableId::Pending => "impressions awaiting their label",
            TableId::PendingIds => "id -> sequence number of pending impressions out of memory",
            TableId::Model => "model coordinates, in blocks",
            TableId::Operators => "per-worker operator state",
            TableId::Counters => "monotonic counters (merge-add)",
        }
    }

    /// Values carry their last-touched event time in the first 8 bytes and expire.
    pub const fn expires(self) -> bool {
        matches!(self, TableId::Entities)
    }
}

/// A typed view of one table: keys of type `K`, values of type `V`.
#[derive(Debug)]
pub struct Table<K, V> {
    id: TableId,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Serialize + DeserializeOwned> Table<K, V> {
    /// The typed view of `id`.
    pub const fn new(id: TableId) -> Self {
        Self {
            id,
            _types: PhantomData,
        }
    }

    /// The table viewed.
    pub fn id(&self) -> TableId {
        self.id
    }

    /// Adds "`key` is `value`" to `batch`. For an expiring table use
    /// [`put_touched`](Self::put_touched).
    pub fn put(&self, batch: &mut Batch, key: &K, value: &V) {
        debug_assert!(!self.id.expires(), "{} needs put_touched", self.id.name());
        let mut k = Vec::with_capacity(KEY_CAPACITY);
        key.encode_key(&mut k);
        let mut v = Vec::with_capacity(VALUE_CAPACITY);
        encode_value(value, &mut v);
        batch.put(self.id, k, v);
    }

    /// Adds "`key` is `value`, last touched at event time `touched`" to `batch`, for an
    /// expiring table: the entry may be dropped once the store expires entries touched
    /// before a later time.
    pub fn put_touched(&self, batch: &mut Batch, key: &K, touched: i64, value: &V) {
        let mut k = Vec::with_capacity(KEY_CAPACITY);
        key.encode_key(&mut k);
        let mut v = Vec::with_capacity(VALUE_CAPACITY);
        v.extend_from_slice(&touched.to_le_bytes());
        append_value(value, &mut v);
        batch.put(self.id, k, v);
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, StateError> {
        let body = if self.id.expires() {
            bytes.get(8..).ok_or_else(|| StateError::Decode {
                table: self.id.name(),
                reason: "value shorter than its 8-byte touch time".to_owned(),
            })?
        } else {
            bytes
        };
        decode_value(self.id.name(), body)
    }

    /// Adds "`key` is gone" to `batch` (deleting a missing key is a no-op).
    pub fn delete(&self, batch: &mut Batch, key: &K) {
        let mut k = Vec::new();
        key.encode_key(&mut k);
        batch.delete(self.id, k);
    }

    /// The values of `keys`, in order, `None` where absent: one batched read.
    pub fn multi_get(&self, store: &StateStore, keys: &[K]) -> Result<Vec<Option<V>>, StateError> {
        let encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut out = Vec::new();
                k.encode_key(&mut out);
                out
            })
            .collect();
        let mut raw = Vec::with_capacity(keys.len());
        store.backend().multi_get(self.id, &encoded, &mut raw)?;
        raw.into_iter()
            .map(|v| v.map(|v| self.decode(&v)).transpose())
            .collect()
    }

    /// The value of `key`, if any.
    pub fn get(&self, store: &StateStore, key: &K) -> Result<Option<V>, StateError> {
        Ok(self
            .multi_get(store, std::slice::from_ref(key))?
            .pop()
            .flatten())
    }

    /// Visits every entry whose encoded key starts with `prefix`'s encoding, in key order,
    /// until `visit` returns false.
    pub fn scan<P: Key>(
        &self,
        store: &StateStore,
        prefix: &P,
        mut visit: impl FnMut(K, V) -> bool,
    ) -> Result<(), StateError> {
        let mut p = Vec::new();
        prefix.encode_key(&mut p);
        let mut failure = None;
        store.backend().scan(self.id, &p, &mut |k, v| {
            let Some(key) = K::decode_key(k) else {
                failure = Some(StateError::Decode {
                    table: self.id.name(),
                    reason: format!("undecodable key {k:02x?}"),
                });
                return false;
            };
            match self.decode(v) {
                Ok(value) => visit(key, value),
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Every entry of the table, in key order.
    pub fn scan_all(
        &self,
        store: &StateStore,
        visit: impl FnMut(K, V) -> bool,
    ) -> Result<(), StateError> {
        self.scan(store, &Empty, visit)
    }
}

/// The empty prefix.
#[derive(Clone, Copy, Debug)]
pub struct Empty;

impl Key for Empty {
    fn encode_key(&self, _out: &mut Vec<u8>) {}
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        bytes.is_empty().then_some(Empty)
    }
}
