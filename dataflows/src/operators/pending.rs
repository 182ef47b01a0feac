//! Pending impressions split in two for memory: a small [`Stub`] that always stays in
//! memory, and a [`Body`] that may leave it for the state store.
//!
//! # Why split
//!
//! An impression waits a whole attribution window for its label, and is remembered one
//! more window after it closes (to tell late feedback from orphans), so a long window
//! holds millions of them. Most of an impression's bytes — the hashed features it was
//! scored with, its served score, item and category — are needed only when its label is
//! decided: at its first decisive feedback, at its provisional negative, or when its
//! window closes undecided. The cursors, the duplicate check and the feedback path need
//! only the stub (event time, entity keys, flags). So the stub stays in the ring, and the
//! body lives in reusable memory [`Bodies`] slots, within `label.pending_memory_mb`.
//! Beyond that budget a body that the store already holds (checkpointed, in `run`; written
//! to a scratch RocksDB, in `replay`) leaves memory and is read back, in batches, when
//! its label is decided. A decided or closed impression never needs its body again, so it
//! is dropped at once.
//!
//! # Never lost, never applied twice
//!
//! A body never changes after the impression is scored, so any record of it in the store
//! can give it back. With checkpoints, a body leaves memory only when the store's record
//! also holds the stub's current flags (it was checkpointed and not changed since): a
//! checkpoint then never has to rewrite an impression whose body is out of memory, and a
//! restart restores exactly what the ring held. The flags in memory are always the truth;
//! a body read back only fills the body.
//!
//! # Stubs leave memory too, by the chunk
//!
//! Bodies alone do not bound memory: at 50k impressions/s a 30-minute window, remembered
//! one more window, is ~180M stubs, with their ids and id index ~15 GB. So the [`Ring`] of
//! stubs is cut in [`CHUNK`]s of consecutive sequence numbers, and beyond
//! `label.pending_stubs_memory_mb` whole chunks leave memory. Which ones follows from
//! when each is needed: the newest impressions take most of the feedback (clicks and fast
//! skips come within seconds), the close cursor takes every impression one window after
//! it opened, and the forget cursor one more window later. So chunks leave from the
//! middle, newest first: open windows older than `fast_skip_ms` (the close cursor needs
//! them last), then closed ones remembered for late feedback; never the newest, nor the
//! two next chunks of either cursor. Sequence order matters for the store too: a chunk is
//! one write batch of ascending keys (RocksDB appends), and coming back it is one batched
//! read, made a chunk ahead of the cursor, so the cursors never wait on a read per event.
//!
//! Feedback (and a repeated impression) for a stub out of memory finds it through
//! [`PENDING_IDS`], id to sequence number, written with the chunk: the batch's ids that
//! the in-memory index lacks are looked up in one `multi_get` before the batch, only while
//! some chunk is out, so a run that never spills pays nothing. Such a stub comes back
//! alone, loose, and stays in memory, the truth for it, until its chunk comes back (the
//! store's copy is then replaced by it): a stub is never changed in the store behind a
//! copy in memory, nor read back over a newer one.
//!
//! With checkpoints, a chunk leaves only when all of it is checkpointed unchanged, and
//! nothing but id hints is written besides checkpoints: the hints are checked against the
//! [`PENDING`] record they point to, so a hint left by a run that crashed (whose
//! sequence numbers a restart gave to other impressions) is harmless.
//!
//! # A restart stays within the budget
//!
//! A worker that ran within its budget must restart within it too: restoring every stub
//! and spilling again at the first batch would need the memory of all open impressions at
//! once (the very thing the budget exists to avoid, and an out-of-memory kill when millions
//! are open). The checkpoint already holds each impression under its own key in sequence
//! order, so a chunk left in the store is exactly a chunk out of memory: a restore reads
//! the ring's cursors, then the checkpoint chunk by chunk, and keeps in memory only what a
//! worker that never stopped would have kept (the chunks no budget moves out, then the
//! oldest others while they fit). Chunks are still read once each, to give their ids fresh
//! hints: the hints in the store are not the checkpoint's (a run that crashed after it
//! wrote and deleted some), and a stub out of memory without a true hint would take its
//! feedback for an orphan's. Which chunks are in memory never changes a label, an example
//! or a counter, so a restored worker goes on exactly as one that never stopped.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;
use ctrflow_state::{Batch, StateError, StateStore, Table, TableId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::enrich::Entities;
use crate::record::{EventTime, Features};

/// An impression as the [`PENDING`] table stores it: stub and body together. This layout
/// is the stored format; changing it needs a new checkpoint format version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Pending {
    ts: EventTime,
    served: f32,
    /// The features it was scored with, entity features included: it is trained with them.
    features: Features,
    entities: Entities,
    reference: Option<f32>,
    /// Carried to its example, for the global aggregates.
    item: CompactString,
    category: CompactString,
    /// The label is final.
    decided: bool,
    /// A provisional negative was learned for it.
    provisional: bool,
    /// Its window closed; it is kept one more window to tell late feedback from orphans.
    closed: bool,
}

/// Impressions awaiting their label, by worker and sequence number.
pub(super) const PENDING: Table<(u32, u64), (CompactString, Pending)> =
    Table::new(TableId::Pending);

impl Pending {
    /// When the impression was shown.
    pub(super) fn ts(&self) -> EventTime {
        self.ts
    }

    /// The stored form of `stub` with `body` (an empty body once it is no longer needed).
    pub(super) fn of(stub: &Stub, body: &Body) -> Self {
        Self {
            ts: stub.ts,
            served: body.served,
            features: body.features.clone(),
            entities: stub.entities,
            reference: body.reference,
            item: body.item.clone(),
            category: body.category.clone(),
            decided: stub.decided,
            provisional: stub.provisional,
            closed: stub.closed,
        }
    }

    /// The stub (with its body not yet placed: [`BodyRef::DEAD`]) and the body.
    pub(super) fn split(self) -> (Stub, Body) {
        let stub = Stub {
            ts: self.ts,
            entities: self.entities,
            body: BodyRef::DEAD,
            decided: self.decided,
            provisional: self.provisional,
            closed: self.closed,
            stored: false,
        };
        let body = Body {
            served: self.served,
            features: self.features,
            reference: self.reference,
            item: self.item,
            category: self.category,
        };
        (stub, body)
    }
}

/// What the cursors, the duplicate check and the feedback path need of a pending
/// impression: always in memory (40 bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Stub {
    pub ts: EventTime,
    /// Its entity keys: every click, like and fast skip for it counts for them, decided or
    /// not.
    pub entities: Entities,
    /// Where its body is.
    pub body: BodyRef,
    /// The label is final.
    pub decided: bool,
    /// A provisional negative was learned for it.
    pub provisional: bool,
    /// Its window closed.
    pub closed: bool,
    /// The spill store holds its body (and, with checkpoints, its current flags): the body
    /// may leave memory.
    pub stored: bool,
}

/// What only deciding an impression's label needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Body {
    pub served: f32,
    pub features: Features,
    pub reference: Option<f32>,
    pub item: CompactString,
    pub category: CompactString,
}

/// Where a stub's body is: a slot of [`Bodies`], out of memory, or gone for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BodyRef(u32);

impl BodyRef {
    /// In the spill store only.
    pub const SPILLED: BodyRef = BodyRef(u32::MAX);
    /// Not needed any more (the label is decided or the window closed).
    pub const DEAD: BodyRef = BodyRef(u32::MAX - 1);

    /// The slot of a body in memory.
    pub fn slot(self) -> Option<usize> {
        (self.0 < Self::DEAD.0).then_some(self.0 as usize)
    }
}

/// Bodies in memory, in reusable slots: a new impression takes a freed slot, so the
/// steady state allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Bodies {
    slots: Vec<Body>,
    free: Vec<u32>,
}

impl Bodies {
    /// Places `body` in a slot.
    pub fn insert(&mut self, body: Body) -> BodyRef {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = body;
                BodyRef(slot)
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|s| *s < BodyRef::DEAD.0)
                    .expect("fewer than 4 billion pending bodies in memory");
                self.slots.push(body);
                BodyRef(slot)
            }
        }
    }

    /// The body in `at`, if it is in memory.
    pub fn get(&self, at: BodyRef) -> Option<&Body> {
        at.slot().and_then(|s| self.slots.get(s))
    }

    /// Asks the CPU to start loading the body in `at` (every cache line of it), so that
    /// reading it a few impressions later does not wait on memory: the cursors take bodies
    /// in ring order, but their slots are scattered.
    #[inline]
    pub fn prefetch(&self, at: BodyRef) {
        #[cfg(target_arch = "x86_64")]
        if let Some(body) = self.get(at) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let start = std::ptr::from_ref(body).cast::<i8>();
            for offset in (0..size_of::<Body>()).step_by(64) {
                // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot
                // fault, and every address is inside `body`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    /// Frees slot `at` (a no-op for a body not in memory).
    pub fn release(&mut self, at: BodyRef) {
        if let Some(slot) = at.slot() {
            // Drop what the body owns on the heap (long ids, more than 24 features) now; the
            // rest stays until the slot is reused (writing a whole default body here was a
            // visible share of the label join).
            let body = &mut self.slots[slot];
            if body.features.spilled() {
                body.features = Features::new();
            }
            if body.item.is_heap_allocated() {
                body.item = CompactString::default();
            }
            if body.category.is_heap_allocated() {
                body.category = CompactString::default();
            }
            self.free.push(slot as u32);
        }
    }

    /// Bodies in memory.
    pub fn resident(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// Where bodies beyond the memory budget go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpillTo {
    /// The state store that checkpoints are written to (`run` with `state.dir`): a body
    /// leaves memory once checkpointed with its current flags; nothing is written besides
    /// checkpoints.
    Checkpoints,
    /// A scratch store no checkpoint reads (`replay`, `run` without `state.dir`): a body is
    /// written to it when it leaves memory.
    Scratch,
}

/// How a [`SpillStore`] is opened.
type Open = dyn Fn() -> Result<StateStore, StateError> + Send + Sync;

/// The store bodies go to, opened when the first body leaves memory: a scratch store costs
/// memory (memtables, block cache) that a run which never spills should not pay. Cheap to
/// clone; clones share the store.
#[derive(Clone)]
pub struct SpillStore {
    store: Arc<OnceLock<StateStore>>,
    open: Arc<Open>,
}

impl SpillStore {
    /// A store `open` opens on first use (with every clone).
    pub fn lazy(open: impl Fn() -> Result<StateStore, StateError> + Send + Sync + 'static) -> Self {
        Self {
            store: Arc::default(),
            open: Arc::new(open),
        }
    }

    /// The store.
    ///
    /// # Panics
    /// If it cannot be opened (a scratch directory that became unwritable).
    pub fn get(&self) -> &StateStore {
        self.store.get_or_init(|| {
            (self.open)()
                .unwrap_or_else(|e| panic!("opening the store for pending impressions failed: {e}"))
        })
    }
}

impl From<StateStore> for SpillStore {
    fn from(store: StateStore) -> Self {
        let open = store.clone();
        Self {
            store: Arc::new(OnceLock::from(store)),
            open: Arc::new(move || Ok(open.clone())),
        }
    }
}

impl std::fmt::Debug for SpillStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillStore")
            .field("open", &self.store.get().is_some())
            .finish()
    }
}

/// The store bodies go to, and what is queued for it.
#[derive(Debug)]
pub(super) struct Spill {
    pub store: SpillStore,
    pub worker: u32,
    pub to: SpillTo,
    /// Scratch store writes (bodies leaving memory, records forgotten) not yet applied.
    pub queued: Batch,
}

/// How the label join's pending impressions use memory (per worker; summed for reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillStats {
    /// Bodies in memory now.
    pub resident: u64,
    /// Most bodies in memory after a batch, so far.
    pub peak_resident: u64,
    /// Bodies out of memory now (in the spill store).
    pub spilled: u64,
    /// Bodies written to a scratch store when they left memory, so far.
    pub written: u64,
    /// Bodies read back from the store, so far.
    pub read_back: u64,
    /// Stubs (and their id index entries) in memory now.
    #[serde(default)]
    pub stubs_resident: u64,
    /// Most stubs in memory after a batch, so far.
    #[serde(default)]
    pub peak_stubs_resident: u64,
    /// Stubs out of memory now (in the spill store).
    #[serde(default)]
    pub stubs_spilled: u64,
    /// Stubs written to a scratch store when their chunk left memory, so far.
    #[serde(default)]
    pub stubs_written: u64,
    /// Chunks of stubs read back from the store, so far.
    #[serde(default)]
    pub chunks_read_back: u64,
    /// Chunks of stubs that left memory for the store (over the budget), so far.
    #[serde(default)]
    pub chunks_spilled: u64,
    /// Chunks of stubs a restore left in the store (beyond the budget), not read.
    #[serde(default)]
    pub chunks_left_at_restore: u64,
    /// Chunks of stubs in memory now.
    #[serde(default)]
    pub chunks_in_memory: u64,
    /// Most chunks of stubs in memory at once, so far (restore included).
    #[serde(default)]
    pub peak_chunks_in_memory: u64,
}

impl SpillStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &SpillStats) {
        self.resident += other.resident;
        self.peak_resident += other.peak_resident;
        self.spilled += other.spilled;
        self.written += other.written;
        self.read_back += other.read_back;
        self.stubs_resident += other.stubs_resident;
        self.peak_stubs_resident += other.peak_stubs_resident;
        self.stubs_spilled += other.stubs_spilled;
        self.stubs_written += other.stubs_written;
        self.chunks_read_back += other.chunks_read_back;
        self.chunks_spilled += other.chunks_spilled;
        self.chunks_left_at_restore += other.chunks_left_at_restore;
        self.chunks_in_memory += other.chunks_in_memory;
        self.peak_chunks_in_memory += other.peak_chunks_in_memory;
    }
}

/// Bytes of one body in memory (features beyond 24 and ids beyond 24 bytes take more, on
/// the heap).
pub(super) const BODY_BYTES: usize = std::mem::size_of::<Body>();

/// Impressions per chunk of the [`Ring`]: the unit in which stubs leave memory and come
/// back (one batched read each). A power of two, so that finding a sequence number's chunk
/// is a shift. Small in unit tests, so that their short streams fill many chunks.
#[cfg(not(test))]
pub(super) const CHUNK: u64 = 4096;
#[cfg(test)]
pub(super) const CHUNK: u64 = 16;

/// Bytes of one stub in memory: the ring's entry and its share of the id index (four
/// 8-byte slots per impression in memory, see `id_index`). Ids beyond 24 bytes take more,
/// on the heap.
pub(super) const STUB_BYTES: usize = std::mem::size_of::<(CompactString, Stub)>() + 32;

/// Where an impression id's stub is when it is out of memory: its sequence number, by
/// worker and id. A hint, written when a chunk leaves memory and not by checkpoints: a
/// reader checks it against the [`PENDING`] record it points to (a restart from an earlier
/// checkpoint may have given the sequence number to another impression).
pub(super) const PENDING_IDS: Table<(u32, String), u64> = Table::new(TableId::PendingIds);

/// One [`CHUNK`] of the ring, in memory or not.
#[derive(Debug)]
struct Chunk {
    /// Sequence number of `entries[0]` (a chunk boundary, except for the first chunk of a
    /// ring restored or started elsewhere).
    start: u64,
    /// In memory: its impressions (forgotten ones keep an empty id until the chunk goes).
    entries: Vec<(CompactString, Stub)>,
    /// Out of memory: its impressions are in the store, under [`PENDING`].
    spilled: bool,
    /// It was out of memory once: [`PENDING_IDS`] holds hints for its ids until they are
    /// forgotten.
    hinted: bool,
}

/// The pending impressions of a worker by sequence number, in [`CHUNK`]s that may leave
/// memory. Only whole chunks leave (between the close cursor and the newest impressions,
/// see the label join), so the oldest (closing, or remembered after closing) and the
/// newest are always in memory. An impression of a chunk out of memory that its feedback
/// needed is brought back alone, as a loose entry, which is its truth until the chunk
/// comes back.
#[derive(Debug, Default)]
pub(super) struct Ring {
    /// Sequence number of the oldest impression not forgotten.
    pub first: u64,
    /// One past the newest.
    end: u64,
    /// The chunks from `first`'s to `end`'s (the last one may be partly filled).
    chunks: VecDeque<Chunk>,
    /// Impressions of chunks out of memory brought back one by one, by sequence number.
    loose: FxHashMap<u64, (CompactString, Stub)>,
    /// Chunks out of memory.
    pub spilled_chunks: usize,
    /// Impressions in memory (in chunks in memory, or loose), forgotten ones of the
    /// oldest chunk included.
    pub resident: usize,
    /// Most chunks in memory at once, so far.
    peak_chunks: usize,
}

impl Ring {
    /// An empty ring whose next impression gets sequence number `first`.
    pub fn starting_at(first: u64) -> Self {
        Self {
            first,
            end: first,
            ..Self::default()
        }
    }

    /// Impressions not forgotten, in memory or not.
    pub fn len(&self) -> usize {
        (self.end - self.first) as usize
    }

    /// Whether no impression is pending.
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }

    /// One past the newest sequence number.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The position in `chunks` of sequence number `seq`'s chunk.
    #[inline]
    fn chunk_of(&self, seq: u64) -> Option<usize> {
        let base = self.chunks.front()?.start / CHUNK;
        usize::try_from((seq / CHUNK).checked_sub(base)?).ok()
    }

    /// The impression with sequence number `seq`, if it is pending and in memory.
    #[inline]
    pub fn get_seq(&self, seq: u64) -> Option<&(CompactString, Stub)> {
        if seq < self.first || seq >= self.end {
            return None;
        }
        let chunk = self.chunks.get(self.chunk_of(seq)?)?;
        if chunk.spilled {
            return self.loose.get(&seq);
        }
        chunk.entries.get((seq - chunk.start) as usize)
    }

    /// The impression at position `at` (sequence number `first + at`), if in memory.
    #[inline]
    pub fn get(&self, at: usize) -> Option<&(CompactString, Stub)> {
        self.get_seq(self.first + at as u64)
    }

    /// The impression at position `at`, if in memory, to change.
    #[inline]
    pub fn get_mut(&mut self, at: usize) -> Option<&mut (CompactString, Stub)> {
        let seq = self.first + at as u64;
        if seq >= self.end {
            return None;
        }
        let c = self.chunk_of(seq)?;
        let chunk = self.chunks.get_mut(c)?;
        if chunk.spilled {
            return self.loose.get_mut(&seq);
        }
        chunk.entries.get_mut((seq - chunk.start) as usize)
    }

    /// Starts loading the entry at position `at` into the cache, if it is in memory. The
    /// cursors walk the ring in order, but the close cursor's entries were last touched a
    /// window ago: without this, reading each one waited on memory.
    #[inline]
    pub fn prefetch(&self, at: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(entry) = self.get(at) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot
            // fault, and the address is the entry's.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(entry).cast::<i8>()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    /// The oldest pending impression, if in memory.
    pub fn front(&self) -> Option<&(CompactString, Stub)> {
        self.get(0)
    }

    /// Appends an impression (sequence number [`end`](Self::end)).
    pub fn push_back(&mut self, entry: (CompactString, Stub)) {
        let start = self.end;
        match self.chunks.back_mut() {
            Some(chunk) if !start.is_multiple_of(CHUNK) => chunk.entries.push(entry),
            _ => {
                let mut entries = Vec::with_capacity((CHUNK - start % CHUNK) as usize);
                entries.push(entry);
                self.chunks.push_back(Chunk {
                    start,
                    entries,
                    spilled: false,
                    hinted: false,
                });
                self.peak_chunks = self.peak_chunks.max(self.chunks_in_memory());
            }
        }
        self.end += 1;
        self.resident += 1;
    }

    /// Appends the whole chunk `n` as out of memory: a restore leaves it in the store,
    /// where its impressions are, with hints for their ids.
    ///
    /// # Panics
    /// If the ring does not end where chunk `n` starts (only whole chunks stay out).
    pub fn push_out(&mut self, n: u64) {
        assert_eq!(
            self.end,
            n * CHUNK,
            "chunk {n} must start at the ring's end"
        );
        assert!(!self.chunks.is_empty(), "the first chunk stays in memory");
        self.chunks.push_back(Chunk {
            start: self.end,
            entries: Vec::new(),
            spilled: true,
            hinted: true,
        });
        self.end += CHUNK;
        self.spilled_chunks += 1;
    }

    /// Chunks in memory.
    pub fn chunks_in_memory(&self) -> usize {
        self.chunks.len() - self.spilled_chunks
    }

    /// Most chunks in memory at once, so far.
    pub fn peak_chunks(&self) -> usize {
        self.peak_chunks
    }

    /// Forgets the oldest impression, returning it and whether its chunk was out of
    /// memory once (its id has a hint to delete). `None` if none is pending or it is out of
    /// memory.
    pub fn pop_front(&mut self) -> Option<((CompactString, Stub), bool)> {
        if self.is_empty() {
            return None;
        }
        let chunk = self.chunks.front_mut()?;
        if chunk.spilled {
            return None;
        }
        let (id, stub) = chunk.entries.get_mut((self.first - chunk.start) as usize)?;
        let popped = ((std::mem::take(id), *stub), chunk.hinted);
        self.first += 1;
        if self.first.is_multiple_of(CHUNK) {
            let gone = self.chunks.pop_front().map_or(0, |c| c.entries.len());
            self.resident -= gone;
        }
        Some(popped)
    }

    /// Every impression in memory.
    pub fn iter(&self) -> impl Iterator<Item = &(CompactString, Stub)> {
        self.iter_seq().map(|(_, entry)| entry)
    }

    /// Every impression in memory with its sequence number: those of the chunks in memory
    /// in order, then the loose ones. Chunks out of memory cost nothing here.
    pub fn iter_seq(&self) -> impl Iterator<Item = (u64, &(CompactString, Stub))> {
        let first = self.first;
        let chunks = self.chunks.iter().flat_map(move |c| {
            let skip = first.saturating_sub(c.start);
            (c.start + skip..).zip(c.entries.iter().skip(skip as usize))
        });
        chunks.chain(self.loose.iter().map(|(&seq, entry)| (seq, entry)))
    }

    /// Whether `seq` is pending in a chunk out of memory and not loose.
    pub fn is_out(&self, seq: u64) -> bool {
        seq >= self.first
            && seq < self.end
            && self
                .chunk_of(seq)
                .and_then(|c| self.chunks.get(c))
                .is_some_and(|c| c.spilled)
            && !self.loose.contains_key(&seq)
    }

    /// Whether the chunk holding `seq` is out of memory.
    pub fn chunk_out(&self, seq: u64) -> bool {
        self.chunk_of(seq)
            .and_then(|c| self.chunks.get(c))
            .is_some_and(|c| c.spilled)
    }

    /// Sequence numbers of the whole chunk `n` (a chunk number: `seq / CHUNK`), if it is
    /// pending and filled (the oldest chunk's forgotten ones included).
    pub fn chunk_range(&self, n: u64) -> Option<std::ops::Range<u64>> {
        let chunk = self.chunks.get(self.chunk_of(n * CHUNK)?)?;
        let end = (n + 1) * CHUNK;
        (end <= self.end).then_some(chunk.start..end)
    }

    /// Chunk `n`'s impressions, if it is in memory.
    pub fn chunk_entries(&self, n: u64) -> Option<&[(CompactString, Stub)]> {
        let chunk = self.chunks.get(self.chunk_of(n * CHUNK)?)?;
        (!chunk.spilled).then_some(&chunk.entries)
    }

    /// Takes chunk `n` out of memory (its impressions are in the store), returning its
    /// impressions.
    pub fn spill_chunk(&mut self, n: u64) -> Vec<(CompactString, Stub)> {
        let Some(c) = self.chunk_of(n * CHUNK) else {
            return Vec::new();
        };
        let chunk = &mut self.chunks[c];
        debug_assert!(!chunk.spilled, "chunk {n} is already out of memory");
        chunk.spilled = true;
        chunk.hinted = true;
        let entries = std::mem::take(&mut chunk.entries);
        self.resident -= entries.len();
        self.spilled_chunks += 1;
        entries
    }

    /// Puts chunk `n`'s impressions (read back from the store) in memory: its loose ones
    /// replace what the store gave. Returns the sequence numbers that were not loose.
    pub fn restore_chunk(&mut self, n: u64, mut entries: Vec<(CompactString, Stub)>) -> Vec<u64> {
        let Some(c) = self.chunk_of(n * CHUNK) else {
            return Vec::new();
        };
        let start = self.chunks[c].start;
        let mut fresh = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter_mut().enumerate() {
            let seq = start + i as u64;
            match self.loose.remove(&seq) {
                Some(loose) => {
                    *entry = loose;
                    // Counted in memory already.
                    self.resident -= 1;
                }
                None => fresh.push(seq),
            }
        }
        self.resident += entries.len();
        let chunk = &mut self.chunks[c];
        chunk.entries = entries;
        chunk.spilled = false;
        self.spilled_chunks -= 1;
        self.peak_chunks = self.peak_chunks.max(self.chunks_in_memory());
        fresh
    }

    /// Brings impression `seq` of a chunk out of memory back on its own.
    pub fn insert_loose(&mut self, seq: u64, entry: (CompactString, Stub)) {
        if self.loose.insert(seq, entry).is_none() {
            self.resident += 1;
        }
    }

    /// Impressions in memory, without the forgotten ones of the oldest chunk.
    pub fn in_memory(&self) -> usize {
        let forgotten = self
            .chunks
            .front()
            .filter(|c| !c.spilled)
            .map_or(0, |c| self.first.saturating_sub(c.start) as usize);
        self.resident - forgotten
    }

    /// Whether `seq` was brought back on its own.
    pub fn is_loose(&self, seq: u64) -> bool {
        self.loose.contains_key(&seq)
    }

    /// Impressions brought back on their own.
    pub fn loose(&self) -> usize {
        self.loose.len()
    }
}
