//! An in-memory backend with the same behaviour as RocksDB's, for tests and for runs
//! without durable state.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::StateError;
use crate::store::{Backend, Batch, Op, TableStats, counter_value};
use crate::table::TableId;

type Tables = BTreeMap<TableId, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Tables in ordered maps behind one lock (state is touched in batches, so the lock is
/// taken once per batch).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<Tables>,
}

impl MemoryBackend {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves consistent maps (every op is one insert).
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn multi_get(
        &self,
        table: TableId,
        keys: &[Vec<u8>],
        out: &mut Vec<Option<Vec<u8>>>,
    ) -> Result<(), StateError> {
        let tables = self.tables();
        let t = tables.get(&table);
        out.extend(keys.iter().map(|k| t.and_then(|t| t.get(k)).cloned()));
        Ok(())
    }

    fn write(&self, batch: Batch, _sync: bool) -> Result<(), StateError> {
        let mut tables = self.tables();
        for op in batch.into_ops() {
            match op {
                Op::Put(t, k, v) => {
                    tables.entry(t).or_default().insert(k, v);
                }
                Op::Delete(t, k) => {
                    if let Some(t) = tables.get_mut(&t) {
                        t.remove(&k);
                    }
                }
                Op::Add(k, delta) => {
                    let counters = tables.entry(TableId::Counters).or_default();
                    let value = counters.entry(k).or_default();
                    let sum = counter_value(value).wrapping_add(delta);
                    *value = sum.to_le_bytes().to_vec();
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let tables = self.tables();
        if let Some(t) = tables.get(&table) {
            for (k, v) in t.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) || !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn table_stats(&self, table: TableId) -> TableStats {
        let tables = self.tables();
        tables
            .get(&table)
            .map_or_else(TableStats::default, |t| TableStats {
                keys: t.len() as u64,
                bytes: t.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            })
    }

    fn expire_before(&self, ts: i64) {
        let mut tables = self.tables();
        for (id, t) in tables.iter_mut() {
            if id.expires() {
                t.retain(|_, v| !crate::rocks::expired(v, ts));
            }
        }
    }
}
