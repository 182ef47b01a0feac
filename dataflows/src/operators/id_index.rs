//! The label join's index from impression id to the impression's sequence number in the
//! ring of pending impressions (see `learn_online::Windows`).
//!
//! # Why not a `hashbrown` table
//!
//! Every record the join processes looks its id up: an impression to see whether it is a
//! duplicate (an id never seen, so a probe of a cold part of the table), feedback to find
//! its impression. With `hashbrown` a lookup read the control bytes and then the slot, two
//! cache misses in a row, and the table offers no way to start loading them early. Here a
//! slot packs a tag of the hash with the sequence number, probing is linear in one flat
//! array, and the table is at most half full: a lookup reads one cache line (sometimes
//! two), whose address the hash alone gives, so the join prefetches it a few records
//! ahead ([`IdIndex::prefetch`]) and the lookup finds it in cache.
//!
//! # Forgotten impressions stay until the table is half full
//!
//! Impressions are forgotten (two windows after they opened) oldest first, and removing
//! each from a linear-probing table would cost a cold access and a shift of its
//! neighbours. So a forgotten impression's slot stays, stale: a lookup never matches it,
//! because its sequence number is before the ring's first. So does the slot of an
//! impression whose chunk of the ring left memory (the ring finds no stub for it; the
//! join finds it through the store's id hints, and it is indexed again when it comes
//! back). When an insert would fill the table past half, it is rebuilt from the
//! impressions in memory (chunk by chunk, then those brought back alone), at a quarter
//! full at most: the rebuild costs one insert per impression in memory and comes after as
//! many inserts again, so inserts stay a constant cost each.
//!
//! # Rebuilt in place
//!
//! Once the number of impressions in memory is steady, each rebuild wants the table at the
//! size it already has, so it clears and refills the same table (from a vector of the live
//! impressions kept for the next time) instead of allocating new ones. A fresh table of a
//! few MiB came from the kernel each time: every page faulted on its first read and again
//! on its first write, and with two workers each of those writes interrupted the other
//! core to flush its TLB (over a quarter of a 2-worker replay's page faults). A table that
//! must grow is still new memory, so it is zeroed by writing ([`zeroed_by_writes`]).

/// Low bits of a slot: the sequence number, modulo 2^48 (see [`IdIndex::find`]).
const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// The top bit of a slot, set in every occupied one, so that an occupied slot is never 0
/// (an empty one). The 15 bits below it are a tag: bits 32 to 46 of the hash, which the
/// slot's position (taken from the top bits) does not depend on.
const TAG_SET: u64 = 1 << 63;
/// Slots of the smallest table (in tests a handful, so that the label join's tests, with
/// their few impressions, rebuild it often: while chunks are out of memory too).
#[cfg(not(test))]
const MIN_SLOTS: usize = 1024;
#[cfg(test)]
const MIN_SLOTS: usize = 16;
/// Slots per impression in memory after a rebuild: a quarter full, so the next rebuild
/// comes after as many inserts as it re-inserts (32 bytes of index per impression).
const SLOTS_PER_ENTRY: usize = 4;
/// How many inserts ahead a rebuild prefetches their slots.
const REBUILD_AHEAD: usize = 16;

/// Open addressing with linear probing; see the module docs.
#[derive(Debug)]
pub(super) struct IdIndex {
    /// 0: empty; else `tag | (seq & SEQ_MASK)`.
    slots: Box<[u64]>,
    /// Occupied slots, stale ones included.
    len: usize,
    /// Where a rebuild collects the live entries; kept, empty, for the next one.
    entries: Vec<(u64, u64)>,
    /// Tables allocated by rebuilds.
    #[cfg(test)]
    allocated: usize,
}

impl Default for IdIndex {
    fn default() -> Self {
        Self::with_slots(MIN_SLOTS)
    }
}

/// The sequence number in occupied `slot`, read back as the one in `first..first + 2^48`
/// (see [`IdIndex::find`]).
#[inline(always)]
fn seq_of(slot: u64, first: u64) -> u64 {
    first + ((slot & SEQ_MASK).wrapping_sub(first) & SEQ_MASK)
}

/// The tag of `hash` with the occupied bit, above the sequence number (see [`TAG_SET`]).
#[inline(always)]
fn tag(hash: u64) -> u64 {
    ((hash << (64 - SEQ_BITS)) | TAG_SET) & !SEQ_MASK
}

/// A table of `slots` empty slots, zeroed by writing them. `vec![0; n]` would take
/// zero pages from the kernel: the first probe of each page reads it (the kernel maps its
/// shared zero page), the first insert writes it (a copy-on-write fault that replaces a
/// mapped page), and with several workers each such replacement interrupts the other
/// cores to flush their TLBs. Writing every page first costs one fault per page and no
/// interrupt (1% of a 2-worker replay's CPU samples were those flushes).
fn zeroed_by_writes(slots: usize) -> Box<[u64]> {
    let mut table = Vec::with_capacity(slots);
    // Opaque to the optimizer, which would otherwise turn the allocation and the zeroing
    // writes back into one zeroed allocation.
    std::hint::black_box(table.as_mut_ptr());
    table.resize(slots, 0);
    table.into_boxed_slice()
}

impl IdIndex {
    fn with_slots(slots: usize) -> Self {
        Self {
            slots: zeroed_by_writes(slots.max(MIN_SLOTS)),
            len: 0,
            entries: Vec::new(),
            #[cfg(test)]
            allocated: 0,
        }
    }

    /// The slot a probe for `hash` starts at: the top bits of the hash scaled to the table
    /// (Lemire's multiply-shift), so that a table need not be a power of two in size.
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot after `at`.
    #[inline(always)]
    fn next(&self, at: usize) -> usize {
        if at + 1 == self.slots.len() {
            0
        } else {
            at + 1
        }
    }

    /// Occupied slots, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Occupied slots the table holds before it is rebuilt.
    pub(super) fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// Starts loading the cache line where a lookup or an insert of `hash` begins.
    #[inline(always)]
    pub(super) fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let slot = &self.slots[self.home(hash)];
            // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot
            // fault, and the address is that of a slot.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast::<i8>()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// The first sequence number under `hash` that `is` accepts. Slots keep sequence
    /// numbers modulo 2^48: each is read back as the one in `first..first + 2^48`, which is
    /// the true one for every impression not forgotten (the ring spans far fewer), and
    /// past the ring's end for a forgotten one (so `is`, which looks it up in the ring,
    /// rejects it).
    #[inline]
    pub(super) fn find(
        &self,
        hash: u64,
        first: u64,
        mut is: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        let tag = tag(hash);
        let mut at = self.home(hash);
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            if slot & !SEQ_MASK == tag {
                let seq = seq_of(slot, first);
                if is(seq) {
                    return Some(seq);
                }
            }
            at = self.next(at);
        }
    }

    /// Adds `seq` under `hash`. When the table would be more than half full it is first
    /// rebuilt from `live`: the hashes and sequence numbers of the other impressions in
    /// memory.
    pub(super) fn insert<I: IntoIterator<Item = (u64, u64)>>(
        &mut self,
        hash: u64,
        seq: u64,
        live: impl FnOnce() -> I,
    ) {
        if self.len + 1 > self.capacity() {
            self.rebuild(live);
        }
        self.put(hash, seq);
    }

    /// Refills the table with the entries `live` yields alone, a quarter full at most: the
    /// same table when it is up to twice that size (see the module docs), else a new one.
    #[cold]
    #[inline(never)]
    fn rebuild<I: IntoIterator<Item = (u64, u64)>>(&mut self, live: impl FnOnce() -> I) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.extend(live());
        let wanted = ((entries.len() + 1) * SLOTS_PER_ENTRY).max(MIN_SLOTS);
        if (wanted..=2 * wanted).contains(&self.slots.len()) {
            self.slots.fill(0);
        } else {
            // An eighth more, so that the next rebuilds fit in this table while the count
            // in memory wavers around its level.
            self.slots = zeroed_by_writes(wanted + wanted / 8);
            #[cfg(test)]
            {
                self.allocated += 1;
            }
        }
        self.len = 0;
        for (k, &(hash, seq)) in entries.iter().enumerate() {
            // The slots are scattered, so is every write: start them a few ahead.
            if let Some(&(ahead, _)) = entries.get(k + REBUILD_AHEAD) {
                self.prefetch(ahead);
            }
            self.put(hash, seq);
        }
        entries.clear();
        // Kept for the next rebuild, but not at the size of a spike long gone.
        let live = wanted / SLOTS_PER_ENTRY;
        if entries.capacity() > 2 * live {
            entries.shrink_to(live);
        }
        self.entries = entries;
    }

    #[inline]
    fn put(&mut self, hash: u64, seq: u64) {
        let mut at = self.home(hash);
        while self.slots[at] != 0 {
            at = self.next(at);
        }
        self.slots[at] = tag(hash) | (seq & SEQ_MASK);
        self.len += 1;
    }

    /// Occupied slots whose sequence number, as [`IdIndex::find`] reads it back, is below
    /// `end`: the live entries.
    #[cfg(test)]
    pub(super) fn live(&self, first: u64, end: u64) -> usize {
        (self.slots.iter().filter(|&&s| s != 0))
            .map(|&s| seq_of(s, first))
            .filter(|&seq| seq < end)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose top bits all collide (the same first slot) and whose tags collide too:
    /// the probe and the check of each candidate must still find the right one.
    fn colliding(n: u64) -> u64 {
        (n % 3) << 40 | 5
    }

    #[test]
    fn finds_each_entry_past_collisions_and_rebuilds_from_the_live_ones() {
        let mut index = IdIndex::default();
        let mut first = 0u64;
        let hash = |n: u64| {
            if n.is_multiple_of(10) {
                colliding(n)
            } else {
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            }
        };
        let mut allocated_at_1000 = 0;
        for seq in 0..10_000u64 {
            // The ring keeps the last 300 impressions.
            first = seq.saturating_sub(300);
            let f = first;
            index.insert(hash(seq), seq, || (f..seq).map(|s| (hash(s), s)));
            assert!(index.len() <= index.capacity());
            if seq == 1000 {
                allocated_at_1000 = index.allocated;
            }
        }
        // With as many impressions in memory at each rebuild, every rebuild after the
        // first few refills the same table (about thirty rebuilds here).
        assert!(allocated_at_1000 > 0);
        assert_eq!(index.allocated, allocated_at_1000, "rebuilt in place");
        let end = 10_000;
        for seq in 0..end {
            let found = index.find(hash(seq), first, |s| s == seq && s >= first);
            assert_eq!(found, (seq >= first).then_some(seq), "{seq}");
        }
        assert_eq!(index.live(first, end), (end - first) as usize);
        assert!(
            index.slots.len() <= 4096,
            "rebuilt small: {}",
            index.slots.len()
        );
    }

    #[test]
    fn sequence_numbers_past_2_to_the_48_read_back_exactly() {
        let mut index = IdIndex::default();
        let hash = |seq: u64| seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let base = (1u64 << 50) - 5;
        for seq in base..base + 10 {
            index.insert(hash(seq), seq, || (base..seq).map(|s| (hash(s), s)));
        }
        for seq in base..base + 10 {
            assert_eq!(index.find(hash(seq), base, |s| s == seq), Some(seq));
        }
        // With the ring from `base + 1`, `base` is forgotten: it reads back past the ring's
        // end, where the ring (here: a check of the range) finds nothing.
        let live = |s: u64| (base + 1..base + 10).contains(&s);
        assert_eq!(index.find(hash(base), base + 1, live), None);
        assert_eq!(index.find(hash(base + 1), base + 1, live), Some(base + 1));
    }
}
