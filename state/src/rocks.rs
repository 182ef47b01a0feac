//! The RocksDB backend: one column family per [`TableId`], tuned from [`StateConfig`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    IteratorMode, MergeOperands, Options, WriteBatch, WriteOptions,
};

use crate::config::{Compression, StateConfig};
use crate::error::StateError;
use crate::store::{Backend, Batch, Op, TableStats, counter_value};
use crate::table::TableId;

/// A RocksDB database holding every table.
pub struct RocksBackend {
    db: DB,
    /// The block cache every table shares (for its usage).
    cache: Cache,
    path: PathBuf,
    /// Entities last touched before this event time are dropped by compaction.
    expire_before: Arc<AtomicI64>,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Whether an expiring value (last-touched event time in its first 8 bytes) was last
/// touched before `ts`.
pub(crate) fn expired(value: &[u8], ts: i64) -> bool {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| i64::from_le_bytes(b) < ts)
}

/// The counters' merge operator: values and operands are u64 little-endian, summed.
fn add_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map_or(0, counter_value);
    for op in operands {
        sum = sum.wrapping_add(counter_value(op));
    }
    Some(sum.to_le_bytes().to_vec())
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path, config: &StateConfig) -> Result<Self, StateError> {
        let rocks = |source| StateError::Rocks {
            path: path.to_path_buf(),
            source,
        };
        let cache = Cache::new_lru_cache(config.block_cache_mb << 20);
        let expire_before = Arc::new(AtomicI64::new(i64::MIN));
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        // Background flushes and compactions: the two cores are the dataflow's.
        db_options.increase_parallelism(2);
        db_options.set_keep_log_file_num(4);
        let families = TableId::ALL.map(|table| {
            let mut options = Options::default();
            let mut blocks = BlockBasedOptions::default();
            blocks.set_block_cache(&cache);
            blocks.set_bloom_filter(10.0, false);
            // Indexes and filters partitioned, charged to the block cache with only their
            // small top levels pinned: a point lookup reads one 4 KiB partition of a file's
            // filter, not the whole filter (a MiB per 1M keys), which a block cache smaller
            // than the filters would otherwise re-read and checksum on every lookup (most of
            // the time of a replay whose entities spill, as profiled).
            blocks.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            blocks.set_partition_filters(true);
            blocks.set_metadata_block_size(4096);
            blocks.set_cache_index_and_filter_blocks(true);
            blocks.set_pin_top_level_index_and_filter(true);
            // Recently flushed files' filters and indexes stay cached: point lookups of
            // keys that are not there (new entities) are the common miss.
            blocks.set_pin_l0_filter_and_index_blocks_in_cache(true);
            options.set_block_based_table_factory(&blocks);
            // A bloom filter over the memtable too, for the same lookups.
            options.set_memtable_whole_key_filtering(true);
            options.set_memtable_prefix_bloom_ratio(0.05);
            options.set_write_buffer_size(config.write_buffer_mb << 20);
            options.set_compression_type(match config.compression {
                Compression::None => DBCompressionType::None,
                Compression::Lz4 => DBCompressionType::Lz4,
                Compression::Zstd => DBCompressionType::Zstd,
                Compression::Snappy => DBCompressionType::Snappy,
            });
            if table == TableId::Counters {
                options.set_merge_operator_associative("ctrflow_add_u64", add_merge);
            }
            if table.expires() {
                let horizon = Arc::clone(&expire_before);
                options.set_compaction_filter(
                    "ctrflow_expire",
                    move |_level, _key, value: &[u8]| {
                        if expired(value, horizon.load(Ordering::Relaxed)) {
                            Decision::Remove
                        } else {
                            Decision::Keep
                        }
                    },
                );
            }
            ColumnFamilyDescriptor::new(table.name(), options)
        });
        let db = DB::open_cf_descriptors(&db_options, path, families).map_err(rocks)?;
        Ok(Self {
            db,
            cache,
            path: path.to_path_buf(),
            expire_before,
        })
    }

    fn cf(&self, table: TableId) -> &rocksdb::ColumnFamily {
        // Every table's family is created when the database is opened.
        self.db
            .cf_handle(table.name())
            .expect("every table's column family exists once opened")
    }

    fn err(&self, source: rocksdb::Error) -> StateError {
        StateError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes a consistent, openable copy of the database into `dir` (which must not
    /// exist): table files are hard-linked, so a copy costs little beyond a memtable flush.
    pub fn checkpoint_to(&self, dir: &Path) -> Result<(), StateError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| self.err(e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| self.err(e))
    }

    /// Compacts every table now (expiry and tombstones take effect); for tests and
    /// `inspect --compact`.
    pub fn compact_all(&self) {
        for table in TableId::ALL {
            self.db
                .compact_range_cf(self.cf(table), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for RocksBackend {
    fn multi_get(
        &self,
        table: TableId,
        keys: &[Vec<u8>],
        out: &mut Vec<Option<Vec<u8>>>,
    ) -> Result<(), StateError> {
        // RocksDB's batched MultiGet: the keys are looked up together, file by file (one
        // pass over each file's filter and index partitions, its data blocks read once),
        // instead of one `Get` per key.
        let cf = self.cf(table);
        for value in self.db.batched_multi_get_cf(cf, keys, false) {
            out.push(value.map_err(|e| self.err(e))?.map(|v| v.to_vec()));
        }
        Ok(())
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), StateError> {
        let mut rocks = WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                Op::Put(t, k, v) => rocks.put_cf(self.cf(t), k, v),
                Op::Delete(t, k) => rocks.delete_cf(self.cf(t), k),
                Op::Add(k, delta) => {
                    rocks.merge_cf(self.cf(TableId::Counters), k, delta.to_le_bytes())
                }
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(rocks, &options).map_err(|e| self.err(e))
    }

    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(table), mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn table_stats(&self, table: TableId) -> TableStats {
        let cf = self.cf(table);
        let int = |name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        TableStats {
            keys: int("rocksdb.estimate-num-keys"),
            bytes: int("rocksdb.total-sst-files-size") + int("rocksdb.size-all-mem-tables"),
        }
    }

    fn memory_bytes(&self) -> u64 {
        let per_table = |name: &str| -> u64 {
            TableId::ALL
                .iter()
                .filter_map(|&t| {
                    self.db
                        .property_int_value_cf(self.cf(t), name)
                        .ok()
                        .flatten()
                })
                .sum()
        };
        per_table("rocksdb.cur-size-all-mem-tables")
            + per_table("rocksdb.estimate-table-readers-mem")
            + self.cache.get_usage() as u64
    }

    fn expire_before(&self, ts: i64) {
        self.expire_before.fetch_max(ts, Ordering::Relaxed);
    }
}
