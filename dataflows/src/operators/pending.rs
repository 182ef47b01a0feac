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

use std::sync::{Arc, OnceLock};

use compact_str::CompactString;
use ctrflow_state::{Batch, StateError, StateStore, Table, TableId};
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
}

impl SpillStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &SpillStats) {
        self.resident += other.resident;
        self.peak_resident += other.peak_resident;
        self.spilled += other.spilled;
        self.written += other.written;
        self.read_back += other.read_back;
    }
}

/// Bytes of one body in memory (features beyond 24 and ids beyond 24 bytes take more, on
/// the heap).
pub(super) const BODY_BYTES: usize = std::mem::size_of::<Body>();
