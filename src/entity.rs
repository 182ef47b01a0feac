//! Incremental entity features: exponentially decayed counts of impressions, clicks, likes
//! and fast skips per user, per item and per user×category, and the features the model
//! reads from them.
//!
//! # Counts
//!
//! Each entity keeps, for each of two half-lives `h` (defaults 1 h and 24 h), four counts
//! decayed to the event time it was last touched, `t`: an event at `t' ≥ t` first decays
//! them by `2^(-(t' - t) / h)` and then adds 1 to its own count. An event older than `t`
//! (out of order across workers) is added undecayed. So a count is a sum over events of
//! `2^(-age / h)`: recent events weigh 1, an event one half-life old ½.
//!
//! # Features
//!
//! Read as of an impression's event time and before any of its own feedback (the dataflow
//! calls [`Enrich::enrich`] in event-time order, see `ctrflow_dataflows::enrich`), appended
//! to its hashed features, and kept with it for training:
//!
//! - per entity kind and half-life, the smoothed CTR as a *lift* over the prior:
//!   `logit((clicks + w·p₀) / (impressions + w)) − logit(p₀)` — 0 for an entity never seen,
//!   additive in the logit as a logistic model wants it (6 features);
//! - the fast-skip rate of the user and of the user×category, short half-life, smoothed
//!   the same way (2);
//! - `log1p` of the seconds since the user's last click (30 days when never) (1);
//! - item popularity, `log1p` of its short-half-life impression count (1).
//!
//! Each feature has a fixed index, hashed from its name in its own namespace.
//!
//! # Where the counts live
//!
//! In memory, shared by the workers of a process (sharded maps, one lock per entity
//! access; with one worker the run is deterministic). With durable state, changed entities
//! are written at each checkpoint, entities not in memory are read through from RocksDB in
//! one batched read per batch of impressions, and clean (already checkpointed) entities are
//! evicted when the cache is full, so memory is bounded by `cache_mb`, not by the
//! number of users. Entities untouched for `expire_after_ms` of event time are dropped
//! (from memory at once, from RocksDB as it compacts).
//!
//! Without durable state (`replay`, or `run` with no `state.dir`) the store is a scratch
//! RocksDB in a temporary directory ([`EntityStore::scratch`]): no checkpoint reads it, so
//! entities changed since they were read are written to it when they are evicted, and
//! memory is bounded the same way. Counts round-trip exactly, so eviction never changes a
//! feature value.
//!
//! The default budget is small (32 MiB): the active entities of a long stream outgrow any
//! fixed budget, so memory is flat only once the cache is full, and that should happen
//! early. A miss costs a RocksDB point read: partitioned filters and indexes keep that a
//! read of small blocks (see `ctrflow_state::rocks`), and one batched read per batch of
//! impressions fetches the entities it misses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ctrflow_dataflows::{Enrich, Entities, EventTime, Feature, Features, Signal};
use ctrflow_state::config::Compression;
use ctrflow_state::rocks::RocksBackend;
use ctrflow_state::{Batch, StateConfig, StateError, StateStore, Table, TableId};
use hashbrown::HashTable;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::features::hash::hash_scalar;

/// Entity features (`[features.entity]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Append the entity features to every impression.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The two half-lives of the decayed counts, short then long, in milliseconds.
    #[serde(default = "default_half_lives_ms")]
    pub half_lives_ms: [u64; 2],
    /// Prior click-through rate that smoothed rates shrink towards.
    #[serde(default = "default_prior_ctr")]
    pub prior_ctr: f64,
    /// Weight of the prior, in impressions.
    #[serde(default = "default_prior_weight")]
    pub prior_weight: f64,
    /// Entities untouched for this long (event time) are forgotten.
    #[serde(default = "default_expire_after_ms")]
    pub expire_after_ms: u64,
    /// Memory for entity counters per process, MiB (about [`ENTRY_BYTES`] per entity in
    /// memory). Beyond it the least recently used entities are evicted (with durable state
    /// once checkpointed; otherwise through a scratch RocksDB, whose block cache takes an
    /// eighth of this budget and memtables a sixteenth each) and read back when needed.
    /// Small by default so that memory is flat early in a stream: the active entities of
    /// a long stream do not fit in any fixed budget, and a miss is a cheap RocksDB read.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: usize,
}

const fn default_enabled() -> bool {
    true
}
const fn default_half_lives_ms() -> [u64; 2] {
    [3_600_000, 86_400_000]
}
const fn default_prior_ctr() -> f64 {
    0.04
}
const fn default_prior_weight() -> f64 {
    20.0
}
const fn default_expire_after_ms() -> u64 {
    7 * 86_400_000
}
const fn default_cache_mb() -> usize {
    32
}

/// Largest `cache_mb` (1 TiB).
const MAX_CACHE_MB: usize = 1 << 20;

/// Memory per entity in the in-memory cache at its cap: a 64-byte slot and its control
/// byte, in tables filled to 7/8 (hashbrown's most) when the cache is full and to between
/// 3/4 and 7/8 as it evicts (see [`shard_caps`]).
pub const ENTRY_BYTES: usize = 75;

impl Default for EntityConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            half_lives_ms: default_half_lives_ms(),
            prior_ctr: default_prior_ctr(),
            prior_weight: default_prior_weight(),
            expire_after_ms: default_expire_after_ms(),
            cache_mb: default_cache_mb(),
        }
    }
}

impl EntityConfig {
    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let [short, long] = self.half_lives_ms;
        if short == 0 || long == 0 {
            problems.push(format!(
                "features.entity.half_lives_ms must be > 0, got [{short}, {long}]"
            ));
        } else if short > long {
            problems.push(format!(
                "features.entity.half_lives_ms must be [short, long], got [{short}, {long}]"
            ));
        }
        if !(self.prior_ctr > 0.0 && self.prior_ctr < 1.0) {
            problems.push(format!(
                "features.entity.prior_ctr must be in (0, 1), got {}",
                self.prior_ctr
            ));
        }
        if !(self.prior_weight > 0.0 && self.prior_weight.is_finite()) {
            problems.push(format!(
                "features.entity.prior_weight must be > 0, got {}",
                self.prior_weight
            ));
        }
        if self.expire_after_ms < long {
            problems.push(format!(
                "features.entity.expire_after_ms ({}) must be at least the long half-life ({long})",
                self.expire_after_ms
            ));
        }
        if !(1..=MAX_CACHE_MB).contains(&self.cache_mb) {
            problems.push(format!(
                "features.entity.cache_mb must be in 1..={MAX_CACHE_MB}, got {}",
                self.cache_mb
            ));
        }
        problems
    }

    /// Bytes of in-memory entity tables: all of `cache_mb` with durable state (RocksDB is
    /// tuned by `[state]`), three quarters of it with a scratch store (see
    /// [`Self::scratch_state`]).
    pub fn cache_bytes(&self, scratch: bool) -> usize {
        let bytes = self.cache_mb.min(MAX_CACHE_MB) << 20;
        if scratch { bytes / 4 * 3 } else { bytes }
    }

    /// Entities kept in memory (about 340k at the default with a scratch store, 450k with
    /// durable state): what [`Self::cache_bytes`] holds.
    pub fn cache_entries(&self, scratch: bool) -> usize {
        shard_caps(self.cache_bytes(scratch)).iter().sum()
    }

    /// The scratch store's RocksDB settings: `state` with an eighth of `cache_mb` for the
    /// block cache (the index and filter partitions of its files; a data block cached
    /// there holds one wanted entity among fifty, so memory does more as table slots) and
    /// a sixteenth for the memtable (two of them at most while one flushes), so a replay's
    /// memory stays within `cache_mb` however many entities it evicts. Data blocks are
    /// read from the OS page cache. Uncompressed: counts barely compress, and every miss
    /// would decompress a block (the files are temporary). Measured on the generator's
    /// 2M impressions: tables at half, block cache at a quarter, memtables at an eighth
    /// took 20% longer.
    pub fn scratch_state(&self, state: &StateConfig) -> StateConfig {
        StateConfig {
            block_cache_mb: (self.cache_mb / 8).max(1),
            write_buffer_mb: (self.cache_mb / 16).max(1),
            compression: Compression::None,
            ..state.clone()
        }
    }
}

/// Which entity a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A user.
    User = 0,
    /// An item.
    Item = 1,
    /// A user with a category.
    UserCategory = 2,
}

const KINDS: [Kind; 3] = [Kind::User, Kind::Item, Kind::UserCategory];

/// Hashes of an impression's entities: stable across builds and machines (MurmurHash3,
/// two seeds for 64 bits), since they key durable state.
pub fn entities(user: &str, item: &str, category: &str) -> Entities {
    let h64 = |seed: u32, bytes: &[u8]| {
        u64::from(hash_scalar(seed, bytes)) << 32 | u64::from(hash_scalar(!seed, bytes))
    };
    let user_hash = h64(0x7573_6572, user.as_bytes());
    Entities {
        user: user_hash,
        item: h64(0x6974_656d, item.as_bytes()),
        user_category: h64(0x7563_6174 ^ (user_hash as u32), category.as_bytes())
            ^ user_hash.rotate_left(17),
    }
}

/// Counts indices: impressions, clicks, likes, fast skips.
const IMPRESSIONS: usize = 0;
const CLICKS: usize = 1;
const LIKES: usize = 2;
const FAST_SKIPS: usize = 3;

/// One entity's decayed counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Event time the counts are decayed to.
    pub touched: EventTime,
    /// Event time of the last click, if any.
    pub last_click: Option<EventTime>,
    /// Per half-life (short, long): impressions, clicks, likes, fast skips.
    pub counts: [[f32; 4]; 2],
}

impl Aggregate {
    fn new(ts: EventTime) -> Self {
        Self {
            touched: ts,
            last_click: None,
            counts: [[0.0; 4]; 2],
        }
    }

    /// The counts decayed to `ts` (unchanged for a `ts` before the last touch).
    fn decayed(&self, ts: EventTime, inv_half_lives: &[f64; 2]) -> [[f32; 4]; 2] {
        let dt = ts.saturating_sub(self.touched);
        if dt <= 0 {
            return self.counts;
        }
        let mut counts = self.counts;
        for (h, inv) in counts.iter_mut().zip(inv_half_lives) {
            let f = (-(dt as f64) * inv).exp2() as f32;
            for c in h.iter_mut() {
                *c *= f;
            }
        }
        counts
    }

    fn add(&mut self, ts: EventTime, what: usize, inv_half_lives: &[f64; 2]) {
        if ts > self.touched {
            self.counts = self.decayed(ts, inv_half_lives);
            self.touched = ts;
        }
        for h in &mut self.counts {
            h[what] += 1.0;
        }
        if what == CLICKS {
            self.last_click = Some(self.last_click.map_or(ts, |c| c.max(ts)));
        }
    }
}

/// Number of entity features appended to an impression.
pub const FEATURES: usize = 10;

/// Names of the entity features, in the order they are appended.
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "user.ctr_short",
    "user.ctr_long",
    "item.ctr_short",
    "item.ctr_long",
    "user_category.ctr_short",
    "user_category.ctr_long",
    "user.fast_skip_rate",
    "user_category.fast_skip_rate",
    "user.log_secs_since_click",
    "item.log_popularity",
];

/// The index of entity feature `name` (one of [`FEATURE_NAMES`]) in a `2^bits` space.
pub fn feature_index(name: &str, bits: u8) -> u32 {
    let mask = ((1u64 << bits) - 1) as u32;
    hash_scalar(ENTITY_DOMAIN, name.as_bytes()) & mask
}

/// Namespace seed of the entity features.
const ENTITY_DOMAIN: u32 = 0x656e_7431;

/// Seconds reported since the last click when there was none: 30 days.
const NEVER_CLICKED_SECS: f64 = 30.0 * 86_400.0;

/// One entity in memory: its [`Aggregate`] laid out flat (no `Option` tag, no padding
/// beyond the flags) so a map slot with its key is 64 bytes, not 80.
#[derive(Debug)]
struct Entry {
    touched: EventTime,
    /// Last click's event time; meaningful only with `clicked`.
    last_click: EventTime,
    counts: [[f32; 4]; 2],
    /// The shard's clock when the entry was last used: eviction takes the least recently
    /// used (not the least recently updated: an entity just read back is old by that
    /// measure, and would be evicted again before its reader gets to it).
    used: u32,
    clicked: bool,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Its [`Kind`] (in what would be padding), so one table holds every kind.
    kind: u8,
}

impl Entry {
    fn new(kind: u8, agg: &Aggregate, dirty: bool, used: u32) -> Self {
        Self {
            touched: agg.touched,
            last_click: agg.last_click.unwrap_or_default(),
            counts: agg.counts,
            used,
            clicked: agg.last_click.is_some(),
            dirty,
            kind,
        }
    }

    fn agg(&self) -> Aggregate {
        Aggregate {
            touched: self.touched,
            last_click: self.clicked.then_some(self.last_click),
            counts: self.counts,
        }
    }

    fn set(&mut self, agg: &Aggregate) {
        self.touched = agg.touched;
        self.last_click = agg.last_click.unwrap_or_default();
        self.clicked = agg.last_click.is_some();
        self.counts = agg.counts;
    }
}

/// One shard of the in-memory entities, with its use clock: one table of `(key, entry)`
/// slots for every [`Kind`] (the kind is in the entry), so a slot is 64 bytes and the
/// shard's memory follows its entity count, not the mix of kinds (one map per kind would
/// each keep its largest size as the mix drifts: hash tables do not shrink).
#[derive(Debug, Default)]
struct Shard {
    table: HashTable<(u64, Entry)>,
    clock: u32,
    /// Keys a batched read just found in neither memory nor the store, so the impressions
    /// of the batch do not look them up again one by one (a new entity would otherwise
    /// cost three lookups). Sound because the store is only ever written from memory: a
    /// key leaves this set when it enters memory, so until then the store cannot have it.
    absent: FxHashSet<(u8, u64)>,
    /// Bumped whenever the store may have received a write of this shard's entities (or a
    /// clean entity became evictable): a batched read started under an older generation
    /// may be stale, and is not used.
    generation: u64,
    /// Entities the shard holds before it evicts.
    cap: usize,
    /// The table has reached its final size (eviction has run). From then on, when
    /// evictions' tombstones have used up its free slots, it is rebuilt at the same size
    /// ([`Self::rebuild`]): hashbrown would rehash a table at most half full in place but
    /// double a fuller one, however few entries it holds, so without this a table must be
    /// kept half empty for memory to stay flat.
    sized: bool,
}

// A slot (key and entry) fills a 64-byte cache line; ENTRY_BYTES counts on it.
const _: () = assert!(std::mem::size_of::<(u64, Entry)>() == 64);

/// Absent-key hints kept per shard: beyond this they are dropped (always safe).
const ABSENT_HINTS: usize = 1024;

/// The table hash of `k`: keys are already uniform 64-bit hashes; the multiply spreads
/// the kind and the key's low bits into the high bits the table's control bytes use (the
/// bits [`shard_of`] took are the same for every key of a shard).
fn slot_hash(k: &(u8, u64)) -> u64 {
    (k.1 ^ u64::from(k.0)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn slot_hash_of(slot: &(u64, Entry)) -> u64 {
    slot_hash(&(slot.1.kind, slot.0))
}

/// Bytes one slot of a shard's table takes: the key and entry, and a control byte.
const SLOT_BYTES: usize = 65;

/// Fewest slots in a shard's table.
const MIN_SLOTS: usize = 32;

/// Each shard's cap for `bytes` of tables. A table has a power of two of slots and holds
/// at most 7/8 of them (hashbrown's load limit), which is the cap; so that the tables
/// together use the budget instead of rounding it down by up to half, shards get either
/// of the two powers of two around an even share.
fn shard_caps(bytes: usize) -> [usize; SHARDS] {
    let slots = bytes / SLOT_BYTES;
    let even = (slots / SHARDS).max(MIN_SLOTS);
    let base = if even.is_power_of_two() {
        even
    } else {
        even.next_power_of_two() / 2
    };
    let doubled = (slots.saturating_sub(base * SHARDS) / base).min(SHARDS);
    std::array::from_fn(|i| if i < doubled { 2 * base } else { base } / 8 * 7)
}

impl Shard {
    fn with_cap(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Moves every entry into a fresh table of the final size: no tombstones, room for
    /// `cap - len` inserts. Costs one shard's table twice for a moment (1/64 of the cache).
    fn rebuild(&mut self) {
        let old = std::mem::replace(&mut self.table, HashTable::with_capacity(self.cap));
        for slot in old {
            self.table
                .insert_unique(slot_hash_of(&slot), slot, slot_hash_of);
        }
    }

    /// The next tick of the use clock (wrapping: ages are compared modulo 2^32).
    fn tick(&mut self) -> u32 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// Inserts `k` (not in the table), used now.
    fn insert(&mut self, k: (u8, u64), agg: Aggregate, dirty: bool) {
        if !self.absent.is_empty() {
            self.absent.remove(&k);
        }
        // No free slot left, though below the cap: tombstones took them (see `sized`).
        if self.sized && self.table.len() < self.cap && self.table.capacity() == self.table.len() {
            self.rebuild();
        }
        let used = self.tick();
        let entry = Entry::new(k.0, &agg, dirty, used);
        match self.table.entry(
            slot_hash(&k),
            |s| s.0 == k.1 && s.1.kind == k.0,
            slot_hash_of,
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().1 = entry,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((k.1, entry));
            }
        }
    }

    fn get(&self, k: &(u8, u64)) -> Option<&Entry> {
        self.table
            .find(slot_hash(k), |s| s.0 == k.1 && s.1.kind == k.0)
            .map(|s| &s.1)
    }

    fn get_mut(&mut self, k: &(u8, u64)) -> Option<&mut Entry> {
        self.table
            .find_mut(slot_hash(k), |s| s.0 == k.1 && s.1.kind == k.0)
            .map(|s| &mut s.1)
    }

    fn contains_key(&self, k: &(u8, u64)) -> bool {
        self.get(k).is_some()
    }

    fn remove(&mut self, k: &(u8, u64)) {
        if let Ok(slot) = self
            .table
            .find_entry(slot_hash(k), |s| s.0 == k.1 && s.1.kind == k.0)
        {
            slot.remove();
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes of the table's slots and control bytes, whatever its load.
    fn bytes(&self) -> usize {
        self.table.allocation_size()
    }

    /// Every entry with its key.
    fn iter(&self) -> impl Iterator<Item = ((u8, u64), &Entry)> {
        self.table.iter().map(|(key, e)| ((e.kind, *key), e))
    }

    fn retain(&mut self, mut keep: impl FnMut(&(u8, u64), &mut Entry) -> bool) {
        self.table.retain(|(key, e)| keep(&(e.kind, *key), e));
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.table.iter_mut().map(|(_, e)| e)
    }
}

/// Shards of the in-memory map: enough that workers rarely contend.
const SHARDS: usize = 64;

#[derive(Debug)]
struct Shared {
    config: EntityConfig,
    inv_half_lives: [f64; 2],
    indices: [u32; FEATURES],
    prior_logit: f64,
    shards: Vec<Mutex<Shard>>,
    /// The durable copy, when state is durable; the scratch copy otherwise.
    store: Option<StateStore>,
    /// `store` is a scratch store: evicted entities are written to it at once.
    spill: bool,
    /// Entities written by eviction (scratch store only).
    spilled: AtomicU64,
    /// The scratch store's directory, removed when the store is dropped (after `store`:
    /// fields drop in order, and RocksDB must close before its files go).
    _scratch_dir: Option<tempfile::TempDir>,
}

/// The entity table in RocksDB: `(kind, key)` → counts, expiring on the touch time.
const ENTITIES: Table<(u8, u64), Aggregate> = Table::new(TableId::Entities);

/// The entity features of a process, shared by its workers; [`handle`](Self::handle)
/// gives each worker its [`Enrich`] implementation.
#[derive(Clone, Debug)]
pub struct EntityStore {
    shared: Arc<Shared>,
}

fn shard_of(key: &(u8, u64)) -> usize {
    (key.1.rotate_left(7) ^ u64::from(key.0)) as usize % SHARDS
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // Every critical section leaves the map consistent, so a panic elsewhere does not
    // poison its contents.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl EntityStore {
    /// An empty store for `config`, hashing feature indices into `2^bits`, backed by
    /// `store` when state is durable.
    pub fn new(config: &EntityConfig, bits: u8, store: Option<StateStore>) -> Self {
        Self::with_store(config, bits, store, None)
    }

    /// An empty store for `config` whose entities beyond its cache go to a scratch
    /// RocksDB in a new temporary directory (removed when the store is dropped), tuned by
    /// `state` within the entity budget ([`EntityConfig::scratch_state`]). For runs without durable state; nothing survives the process. Without
    /// entity features, nothing is created.
    pub fn scratch(config: &EntityConfig, bits: u8, state: &StateConfig) -> anyhow::Result<Self> {
        if !config.enabled {
            return Ok(Self::new(config, bits, None));
        }
        let dir = tempfile::Builder::new()
            .prefix("ctrflow-entities-")
            .tempdir()
            .context("creating a scratch directory for entity features (set TMPDIR to move it)")?;
        let backend = RocksBackend::open(dir.path(), &config.scratch_state(state))?;
        let store = StateStore::new(Arc::new(backend));
        Ok(Self::with_store(config, bits, Some(store), Some(dir)))
    }

    fn with_store(
        config: &EntityConfig,
        bits: u8,
        store: Option<StateStore>,
        scratch_dir: Option<tempfile::TempDir>,
    ) -> Self {
        let indices = FEATURE_NAMES.map(|name| feature_index(name, bits));
        let p = config.prior_ctr;
        Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                inv_half_lives: config.half_lives_ms.map(|h| 1.0 / h.max(1) as f64),
                indices,
                prior_logit: (p / (1.0 - p)).ln(),
                shards: shard_caps(config.cache_bytes(scratch_dir.is_some()))
                    .into_iter()
                    .map(|cap| Mutex::new(Shard::with_cap(cap)))
                    .collect(),
                store,
                spill: scratch_dir.is_some(),
                spilled: AtomicU64::new(0),
                _scratch_dir: scratch_dir,
            }),
        }
    }

    /// This store with its cache capped at about `entries` instead of `cache_mb`: for
    /// tests and benches of eviction at small sizes. Call it before taking handles.
    ///
    /// # Panics
    /// If the store is already shared (a handle or clone exists).
    #[must_use]
    pub fn capped(mut self, entries: usize) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("capped before the store is shared");
        for shard in &shared.shards {
            lock(shard).cap = (entries / SHARDS).max(16);
        }
        self
    }

    /// A worker's handle.
    pub fn handle(&self) -> EntityHandle {
        EntityHandle {
            shared: Arc::clone(&self.shared),
            missing: Vec::new(),
            generations: Vec::with_capacity(SHARDS),
        }
    }

    /// Entities in memory.
    pub fn len(&self) -> usize {
        self.shared.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no entity is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the in-memory entities take: their maps' allocated slots (each a key, an
    /// entry and a control byte), whatever their load.
    pub fn cache_bytes(&self) -> usize {
        self.shared.shards.iter().map(|s| lock(s).bytes()).sum()
    }

    /// Bytes the store behind the cache holds in memory (RocksDB's memtables, block cache
    /// and table readers); 0 without one.
    pub fn store_memory_bytes(&self) -> u64 {
        self.shared
            .store
            .as_ref()
            .map_or(0, |s| s.backend().memory_bytes())
    }

    /// Entities written to the scratch store by eviction so far (0 with durable state,
    /// where only checkpoints write).
    pub fn spilled(&self) -> u64 {
        self.shared.spilled.load(Ordering::Relaxed)
    }

    /// The counts of one entity, from memory or the durable copy.
    pub fn get(&self, kind: Kind, key: u64) -> Result<Option<Aggregate>, StateError> {
        let k = (kind as u8, key);
        if let Some(e) = lock(&self.shared.shards[shard_of(&k)]).get(&k) {
            return Ok(Some(e.agg()));
        }
        match self.shared.readable_store() {
            Some(store) => ENTITIES.get(store, &k),
            None => Ok(None),
        }
    }

    /// The feature values (in [`FEATURE_NAMES`] order) of `entities` as of `ts`, reading
    /// through to the durable copy.
    pub fn features_of(&self, entities: &Entities, ts: EventTime) -> [f32; FEATURES] {
        let aggs = KINDS.map(|kind| {
            let k = (kind as u8, key_of(entities, kind));
            let mut shard = lock(&self.shared.shards[shard_of(&k)]);
            self.shared.load(&mut shard, k).map(|e| e.agg())
        });
        self.shared.values(&aggs, ts)
    }

    /// Adds every entity changed since the last checkpoint to `batch`, and lets the
    /// durable copy drop entities untouched since `watermark - expire_after_ms`. Returns
    /// how many were written.
    pub fn checkpoint_into(&self, batch: &mut Batch, watermark: EventTime) -> usize {
        let horizon = watermark.saturating_sub(self.shared.config.expire_after_ms as i64);
        let mut written = 0;
        for shard in &self.shared.shards {
            let mut shard = lock(shard);
            shard.generation += 1;
            shard.retain(|k, e| {
                if e.touched < horizon {
                    if e.dirty {
                        ENTITIES.delete(batch, k);
                    }
                    return false;
                }
                if e.dirty {
                    ENTITIES.put_touched(batch, k, e.touched, &e.agg());
                    written += 1;
                }
                true
            });
        }
        if let Some(store) = &self.shared.store {
            store.backend().expire_before(horizon);
        }
        written
    }

    /// The checkpoint [`checkpoint_into`](Self::checkpoint_into) wrote was committed:
    /// every entity is clean (evictable) again.
    pub fn checkpoint_done(&self) {
        for shard in &self.shared.shards {
            let mut shard = lock(shard);
            shard.generation += 1;
            for e in shard.values_mut() {
                e.dirty = false;
            }
        }
    }
}

fn key_of(entities: &Entities, kind: Kind) -> u64 {
    match kind {
        Kind::User => entities.user,
        Kind::Item => entities.item,
        Kind::UserCategory => entities.user_category,
    }
}

impl Shared {
    /// The copy to read entities back from: none while a scratch store has had nothing
    /// written to it (the common replay, whose entities all fit), so that new entities do
    /// not cost a lookup there.
    fn readable_store(&self) -> Option<&StateStore> {
        let store = self.store.as_ref()?;
        (!self.spill || self.spilled.load(Ordering::Relaxed) > 0).then_some(store)
    }

    /// Whether `agg` has expired by `ts`: it then reads as never seen, whether or not it
    /// was physically dropped yet, so expiry does not depend on when checkpoints ran.
    fn expired(&self, agg: &Aggregate, ts: EventTime) -> bool {
        agg.touched < ts.saturating_sub(self.config.expire_after_ms as i64)
    }

    fn values(&self, aggs: &[Option<Aggregate>; 3], ts: EventTime) -> [f32; FEATURES] {
        let aggs = aggs.map(|a| a.filter(|a| !self.expired(a, ts)));
        let w = self.config.prior_weight;
        let p0 = self.config.prior_ctr;
        let counts = aggs.map(|a| a.map(|a| a.decayed(ts, &self.inv_half_lives)));
        let lift = |c: Option<[[f32; 4]; 2]>, h: usize| {
            let Some(c) = c else { return 0.0 };
            let (n, k) = (f64::from(c[h][IMPRESSIONS]), f64::from(c[h][CLICKS]));
            let p = ((k + w * p0) / (n + w)).clamp(1e-6, 1.0 - 1e-6);
            ((p / (1.0 - p)).ln() - self.prior_logit) as f32
        };
        let skip_rate = |c: Option<[[f32; 4]; 2]>| {
            let Some(c) = c else { return 0.0 };
            let (n, s) = (f64::from(c[0][IMPRESSIONS]), f64::from(c[0][FAST_SKIPS]));
            (s / (n + w)) as f32
        };
        let [user, item, user_cat] = counts;
        let since_click = aggs[0]
            .and_then(|a| a.last_click)
            .map_or(NEVER_CLICKED_SECS, |c| {
                (ts.saturating_sub(c).max(0) as f64) / 1000.0
            });
        let popularity = item.map_or(0.0, |c| f64::from(c[0][IMPRESSIONS]));
        [
            lift(user, 0),
            lift(user, 1),
            lift(item, 0),
            lift(item, 1),
            lift(user_cat, 0),
            lift(user_cat, 1),
            skip_rate(user),
            skip_rate(user_cat),
            since_click.ln_1p() as f32,
            popularity.ln_1p() as f32,
        ]
    }

    /// The entry of `k`, read through from the durable copy if it is not in memory
    /// (making room first); `None` for an entity never seen.
    fn load<'a>(&self, shard: &'a mut Shard, k: (u8, u64)) -> Option<&'a mut Entry> {
        if !shard.contains_key(&k) {
            let store = self.readable_store()?;
            if shard.absent.contains(&k) {
                return None;
            }
            let agg = match ENTITIES.get(store, &k) {
                Ok(agg) => agg?,
                Err(error) => {
                    tracing::error!(%error, "Reading entity features failed.");
                    return None;
                }
            };
            self.evict(shard);
            shard.insert(k, agg, false);
        }
        let now = shard.tick();
        let entry = shard.get_mut(&k)?;
        entry.used = now;
        Some(entry)
    }

    /// Evicts the least recently used eighth of a full shard: only clean entities
    /// with a durable copy (changed ones wait for the next checkpoint), any with a scratch
    /// copy (changed ones are written to it first, in one batch). Without a copy to read
    /// them back from, nothing is evicted. Called before inserting, so an entity just
    /// loaded is not the one evicted; amortized, a few entries examined per insert.
    fn evict(&self, shard: &mut Shard) {
        let cap = shard.cap;
        let Some(store) = &self.store else {
            return;
        };
        if shard.len() < cap {
            return;
        }
        if !shard.sized {
            // Normally a no-op: the table doubled to its final size on its way to the cap.
            let room = cap.saturating_sub(shard.len());
            shard.table.reserve(room, slot_hash_of);
            shard.sized = true;
        }
        let excess = shard.len() - (cap - cap / 8);
        let clock = shard.clock;
        // Oldest use first (largest age on the wrapping clock).
        let mut victims: Vec<(std::cmp::Reverse<u32>, (u8, u64))> = shard
            .iter()
            .filter(|(_, e)| self.spill || !e.dirty)
            .map(|(k, e)| (std::cmp::Reverse(clock.wrapping_sub(e.used)), k))
            .collect();
        if victims.len() > excess {
            victims.select_nth_unstable(excess);
            victims.truncate(excess);
        }
        if self.spill {
            // In key order (the keys' byte order): RocksDB's memtable inserts a sorted run
            // next to the previous insert instead of searching its skip list from the top
            // for each entity (that search was most of the cost of an eviction).
            victims.sort_unstable_by_key(|&(_, k)| k);
            let mut batch = Batch::new();
            for (_, k) in &victims {
                if let Some(e) = shard.get(k).filter(|e| e.dirty) {
                    ENTITIES.put_touched(&mut batch, k, e.touched, &e.agg());
                }
            }
            let written = batch.len() as u64;
            if let Err(error) = store.write_unsynced(batch) {
                // Nothing is lost: changed entities stay in memory (which then grows) and
                // only clean ones are evicted.
                tracing::error!(%error, "Writing evicted entity features to the scratch store failed.");
                victims.retain(|(_, k)| shard.get(k).is_some_and(|e| !e.dirty));
            } else {
                self.spilled.fetch_add(written, Ordering::Relaxed);
            }
            shard.generation += 1;
        }
        for (_, k) in &victims {
            shard.remove(k);
        }
    }
}

/// One worker's access to the [`EntityStore`]; implements [`Enrich`].
#[derive(Debug)]
pub struct EntityHandle {
    shared: Arc<Shared>,
    missing: Vec<(u8, u64)>,
    /// Each shard's generation when the batched read started.
    generations: Vec<u64>,
}

impl Enrich for EntityHandle {
    fn prepare(&mut self, batch: &[Entities]) {
        let Some(store) = self.shared.readable_store() else {
            return;
        };
        self.missing.clear();
        for entities in batch {
            for kind in KINDS {
                let k = (kind as u8, key_of(entities, kind));
                if !lock(&self.shared.shards[shard_of(&k)]).contains_key(&k) {
                    self.missing.push(k);
                }
            }
        }
        if self.missing.is_empty() {
            return;
        }
        // By shard, so each shard's results are applied under one lock, all or none.
        self.missing.sort_unstable_by_key(|k| (shard_of(k), *k));
        self.missing.dedup();
        self.generations.clear();
        self.generations
            .extend(self.shared.shards.iter().map(|s| lock(s).generation));
        match ENTITIES.multi_get(store, &self.missing) {
            Ok(found) => {
                let mut results = self.missing.iter().zip(found).peekable();
                while let Some((first, _)) = results.peek() {
                    let index = shard_of(first);
                    let mut shard = lock(&self.shared.shards[index]);
                    // Another worker wrote to the store meanwhile: its single-key reads
                    // will see the truth.
                    let fresh = shard.generation == self.generations[index];
                    while let Some((k, agg)) = results.next_if(|(k, _)| shard_of(k) == index) {
                        if !fresh || shard.contains_key(k) {
                            continue;
                        }
                        match agg {
                            Some(agg) => {
                                self.shared.evict(&mut shard);
                                shard.insert(*k, agg, false);
                            }
                            None => {
                                if shard.absent.len() >= ABSENT_HINTS {
                                    shard.absent.clear();
                                }
                                shard.absent.insert(*k);
                            }
                        }
                    }
                }
            }
            // A failed read loses nothing durable: the entities start from the prior and
            // the next checkpoint fails loudly if the store is really broken.
            Err(error) => tracing::error!(%error, "Reading entity features failed."),
        }
    }

    fn enrich(&mut self, entities: &Entities, ts: EventTime, features: &mut Features) {
        let aggs = KINDS.map(|kind| {
            let k = (kind as u8, key_of(entities, kind));
            let mut shard = lock(&self.shared.shards[shard_of(&k)]);
            self.shared.load(&mut shard, k).map(|e| e.agg())
        });
        let values = self.shared.values(&aggs, ts);
        features.extend(
            self.shared
                .indices
                .iter()
                .zip(values)
                .map(|(&index, value)| Feature { index, value }),
        );
    }

    fn record(&mut self, entities: &Entities, ts: EventTime, signal: Signal) {
        let what = match signal {
            Signal::Impression => IMPRESSIONS,
            Signal::Click => CLICKS,
            Signal::Like => LIKES,
            Signal::FastSkip => FAST_SKIPS,
        };
        for kind in KINDS {
            let k = (kind as u8, key_of(entities, kind));
            let mut shard = lock(&self.shared.shards[shard_of(&k)]);
            // Read through first: an evicted entity must continue from its durable counts,
            // not start again from zero.
            if self.shared.load(&mut shard, k).is_none() {
                self.shared.evict(&mut shard);
                shard.insert(k, Aggregate::new(ts), true);
            }
            if let Some(entry) = shard.get_mut(&k) {
                let mut agg = entry.agg();
                if self.shared.expired(&agg, ts) {
                    agg = Aggregate::new(ts);
                }
                agg.add(ts, what, &self.shared.inv_half_lives);
                entry.set(&agg);
                entry.dirty = true;
            }
        }
    }
}

/// Entity features on or off: what the dataflow is given.
#[derive(Debug)]
pub enum MaybeEntities {
    /// Entity features appended.
    On(EntityHandle),
    /// None.
    Off,
}

impl Enrich for MaybeEntities {
    fn prepare(&mut self, batch: &[Entities]) {
        if let MaybeEntities::On(h) = self {
            h.prepare(batch);
        }
    }
    fn enrich(&mut self, entities: &Entities, ts: EventTime, features: &mut Features) {
        if let MaybeEntities::On(h) = self {
            h.enrich(entities, ts, features);
        }
    }
    fn record(&mut self, entities: &Entities, ts: EventTime, signal: Signal) {
        // An impression read while entity features were off (before a restart that turned
        // them on) has no keys: its feedback counts for no entity.
        if let MaybeEntities::On(h) = self
            && *entities != Entities::NONE
        {
            h.record(entities, ts, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn store(durable: Option<StateStore>) -> EntityStore {
        EntityStore::new(&EntityConfig::default(), 22, durable)
    }

    fn value(values: &[f32; FEATURES], name: &str) -> f32 {
        values[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    #[test]
    fn counts_decay_by_half_each_half_life() {
        let mut a = Aggregate::new(0);
        let inv = [1.0 / HOUR as f64, 1.0 / (24 * HOUR) as f64];
        a.add(0, IMPRESSIONS, &inv);
        a.add(0, IMPRESSIONS, &inv);
        let later = a.decayed(HOUR, &inv);
        assert!((later[0][IMPRESSIONS] - 1.0).abs() < 1e-5, "{later:?}");
        assert!((later[1][IMPRESSIONS] - 2.0 * 0.5f32.powf(1.0 / 24.0)).abs() < 1e-5);
        // An out-of-order (older) event is added without decaying newer counts.
        a.add(HOUR, CLICKS, &inv);
        a.add(HOUR / 2, CLICKS, &inv);
        assert_eq!(a.counts[0][CLICKS], 2.0);
        assert_eq!(a.last_click, Some(HOUR));
    }

    #[test]
    fn an_unseen_entity_reads_the_prior_and_clicks_raise_its_lift() {
        let s = store(None);
        let mut h = s.handle();
        let e = entities("u1", "i1", "music");
        let fresh = s.features_of(&e, 0);
        assert_eq!(value(&fresh, "user.ctr_short"), 0.0);
        assert_eq!(value(&fresh, "item.log_popularity"), 0.0);
        assert!(
            (value(&fresh, "user.log_secs_since_click") - (NEVER_CLICKED_SECS as f32).ln_1p())
                .abs()
                < 1e-3
        );
        for t in 0..10 {
            h.record(&e, t * 1000, Signal::Impression);
        }
        h.record(&e, 5000, Signal::Click);
        h.record(&e, 6000, Signal::Click);
        h.record(&e, 7000, Signal::FastSkip);
        let v = s.features_of(&e, 10_000);
        // 2 clicks in 10 impressions, shrunk towards 4% with the weight of 20: lift
        // ln(odds(2.8/30) / odds(0.04)) ≈ 0.90.
        assert!((value(&v, "user.ctr_short") - 0.9047).abs() < 1e-3, "{v:?}");
        assert!(value(&v, "user_category.ctr_long") > 0.85);
        assert!(value(&v, "user.fast_skip_rate") > 0.0);
        assert!((value(&v, "user.log_secs_since_click") - 4f32.ln_1p()).abs() < 1e-4);
        // Another user of the same category shares the item, not the user×category.
        let other = entities("u2", "i1", "music");
        let v = s.features_of(&other, 10_000);
        assert_eq!(value(&v, "user.ctr_short"), 0.0);
        assert_eq!(value(&v, "user_category.ctr_short"), 0.0);
        assert!(value(&v, "item.ctr_short") > 0.85);
        // Features are appended with fixed indices.
        let mut features = Features::new();
        h.enrich(&e, 10_000, &mut features);
        assert_eq!(features.len(), FEATURES);
        assert!(
            features
                .iter()
                .all(|f| f.index < 1 << 22 && f.value.is_finite())
        );
    }

    #[test]
    fn checkpointed_entities_are_evicted_and_read_back_from_the_durable_copy() {
        let durable = StateStore::memory();
        let s = EntityStore::new(&EntityConfig::default(), 22, Some(durable.clone())).capped(1024);
        let mut h = s.handle();
        let all: Vec<Entities> = (0..3000)
            .map(|u| entities(&format!("u{u}"), &format!("i{u}"), "c"))
            .collect();
        for e in &all {
            h.record(e, 1000, Signal::Impression);
            h.record(e, 1500, Signal::Click);
        }
        let expected: Vec<_> = all.iter().map(|e| s.features_of(e, 2000)).collect();
        assert!(
            s.len() >= 9000,
            "dirty entities are never evicted: {}",
            s.len()
        );
        let mut batch = Batch::new();
        assert_eq!(s.checkpoint_into(&mut batch, 2000), 9000);
        durable.write(batch).unwrap();
        s.checkpoint_done();
        // Touching new entities now evicts clean ones.
        for u in 0..2000 {
            h.record(
                &entities(&format!("x{u}"), "y", "c"),
                1800,
                Signal::Impression,
            );
        }
        assert!(s.len() < 9000, "{}", s.len());
        // Read back through the batched path and the single-key path alike.
        h.prepare(&all[..100]);
        for (e, want) in all.iter().zip(&expected) {
            let mut features = Features::new();
            h.enrich(e, 2000, &mut features);
            let got: Vec<f32> = features.iter().map(|f| f.value).collect();
            assert_eq!(got.as_slice(), want.as_slice());
        }
        // An evicted entity keeps counting from its durable counts.
        h.record(&all[0], 1900, Signal::Click);
        let after = s.features_of(&all[0], 2000);
        assert!(value(&after, "user.ctr_short") > value(&expected[0], "user.ctr_short"));
    }

    #[test]
    fn a_scratch_store_bounds_memory_and_never_changes_a_feature() {
        // The same events into an unbounded in-memory store and into a small cache over a
        // scratch RocksDB: every feature value must be identical, with eviction at work.
        let config = EntityConfig::default();
        let unbounded = EntityStore::new(&config, 22, None);
        let bounded = EntityStore::scratch(&config, 22, &StateConfig::default())
            .unwrap()
            .capped(1024);
        let (mut hu, mut hb) = (unbounded.handle(), bounded.handle());
        let all: Vec<Entities> = (0..4000)
            .map(|u| entities(&format!("u{}", u % 1500), &format!("i{}", u % 700), "c"))
            .collect();
        for (t, chunk) in all.chunks(64).enumerate() {
            let ts = 1000 * t as i64;
            hb.prepare(chunk);
            for (i, e) in chunk.iter().enumerate() {
                let (mut fu, mut fb) = (Features::new(), Features::new());
                hu.enrich(e, ts, &mut fu);
                hb.enrich(e, ts, &mut fb);
                assert_eq!(fu, fb, "entity {i} of chunk {t}");
                let signal = if i % 9 == 0 {
                    Signal::Click
                } else {
                    Signal::Impression
                };
                hu.record(e, ts, signal);
                hb.record(e, ts, signal);
            }
            assert!(bounded.len() <= 1024 + SHARDS * 2, "{}", bounded.len());
        }
        assert!(bounded.spilled() > 1000, "{}", bounded.spilled());
        assert!(unbounded.len() > 2000);
        for e in &all {
            assert_eq!(
                unbounded.features_of(e, 70_000),
                bounded.features_of(e, 70_000)
            );
        }
    }

    #[test]
    fn the_cache_reaches_its_size_once_and_stays_within_its_budget() {
        // Churn through many more entities than fit: evictions leave tombstones, which
        // must not make the tables grow as the stream goes on.
        let config = EntityConfig::default();
        let cap = 112 * SHARDS;
        let s = EntityStore::scratch(&config, 22, &StateConfig::default())
            .unwrap()
            .capped(cap);
        let mut h = s.handle();
        let mut bytes_after = |from: usize, to: usize| {
            for u in from..to {
                let e = entities(&format!("u{u}"), &format!("i{u}"), "c");
                h.record(&e, u as i64, Signal::Impression);
            }
            (s.cache_bytes(), s.len())
        };
        let (early, _) = bytes_after(0, cap);
        let (late, len) = bytes_after(cap, 10 * cap);
        assert!(s.spilled() > 5 * cap as u64, "{}", s.spilled());
        assert!(len <= cap + SHARDS * 2, "{len}");
        assert_eq!(early, late, "the tables grew under churn");
        assert!(late <= cap * ENTRY_BYTES, "{late} bytes for {cap} entities");
        // One shard, with a cap short of a power of two: its table has its final size from
        // its first eviction on (so a short stream shows the memory of a long one).
        let spare = EntityStore::scratch(&config, 22, &StateConfig::default())
            .unwrap()
            .capped(100 * SHARDS);
        let mut shard = lock(&spare.shared.shards[0]);
        let mut first = None;
        for i in 0..100 * 100u64 {
            // Keys as uniform as real ones (murmur3's finalizer).
            let key = (i ^ i >> 33).wrapping_mul(0xff51_afd7_ed55_8ccd);
            let key = (key ^ key >> 33).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            spare.shared.evict(&mut shard);
            shard.insert((0, key ^ key >> 33), Aggregate::new(0), true);
            if spare.spilled() > 0 {
                first.get_or_insert(shard.bytes());
            }
        }
        assert_eq!(first, Some(shard.bytes()));
    }

    #[test]
    fn untouched_entities_expire() {
        let durable = StateStore::memory();
        let s = EntityStore::new(&EntityConfig::default(), 22, Some(durable.clone()));
        let mut h = s.handle();
        let old = entities("old", "i", "c");
        h.record(&old, 0, Signal::Impression);
        let mut batch = Batch::new();
        s.checkpoint_into(&mut batch, 1000);
        durable.write(batch).unwrap();
        s.checkpoint_done();
        assert!(s.get(Kind::User, old.user).unwrap().is_some());
        let eight_days = 8 * 24 * HOUR;
        h.record(&entities("new", "i2", "c"), eight_days, Signal::Impression);
        let mut batch = Batch::new();
        s.checkpoint_into(&mut batch, eight_days);
        durable.write(batch).unwrap();
        assert_eq!(s.get(Kind::User, old.user).unwrap(), None);
    }

    #[test]
    fn entity_keys_are_stable_and_distinct() {
        let a = entities("u1", "i1", "music");
        assert_eq!(a, entities("u1", "i1", "music"));
        assert_ne!(a.user_category, entities("u1", "i1", "news").user_category);
        assert_ne!(a.user_category, entities("u2", "i1", "music").user_category);
        assert_ne!(a.user, a.item);
    }

    #[test]
    fn feedback_for_an_impression_read_without_entity_keys_counts_for_no_entity() {
        let s = store(None);
        let mut on = MaybeEntities::On(s.handle());
        on.record(&Entities::NONE, 1000, Signal::Impression);
        on.record(&Entities::NONE, 2000, Signal::Click);
        assert_eq!(s.len(), 0, "no entity keyed by the missing keys");
        on.record(&entities("u1", "i1", "music"), 3000, Signal::Click);
        assert_eq!(s.len(), 3, "one entity of each kind");
        assert_ne!(entities("", "", ""), Entities::NONE);
    }

    #[test]
    fn shard_tables_use_the_budget_without_exceeding_it() {
        for mb in [1, 3, 24, 32, 100, 1000] {
            let budget = mb << 20;
            let caps = shard_caps(budget);
            // Each cap fills a power-of-two table to hashbrown's 7/8, and sizes it.
            let slots: usize = caps
                .iter()
                .map(|&cap| {
                    let table = HashTable::<(u64, Entry)>::with_capacity(cap);
                    assert_eq!(table.capacity(), cap, "{mb} MiB: a cap short of its table");
                    cap / 7 * 8
                })
                .sum();
            let bytes = slots * SLOT_BYTES;
            assert!(bytes <= budget, "{mb} MiB: {bytes} bytes of tables");
            assert!(
                bytes * 100 >= budget * 95,
                "{mb} MiB: only {bytes} bytes of tables"
            );
        }
        let config = EntityConfig::default();
        assert_eq!(config.cache_entries(true), 336_896);
        assert_eq!(config.cache_entries(false), 451_584);
    }

    #[test]
    fn config_problems_name_their_keys() {
        assert!(EntityConfig::default().validate().is_empty());
        let bad = EntityConfig {
            half_lives_ms: [10, 5],
            prior_ctr: 1.5,
            cache_mb: 0,
            ..EntityConfig::default()
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().all(|p| p.starts_with("features.entity.")));
    }
}
