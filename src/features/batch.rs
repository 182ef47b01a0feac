//! The hash step of several events of one layout at once: every key and every cross of up
//! to eight events (sixteen with AVX-512 and VBMI, [`BatchHasher::lanes`]) hashed
//! together, one event per SIMD lane.
//!
//! # Why by event, not by key
//!
//! [`super::Featurizer::featurize_simd`] hashes the keys of ONE event, one key per lane: an
//! event of 12 keys fills one vector and a half, and its three crosses are too few for a
//! vector, so they are mixed one by one. Here lane `e` is event `e` and vector `f` is field
//! `f` of eight events: every vector is full whatever the width of the event, each field's
//! seed is one broadcast constant, each field takes only the blocks of its own longest key
//! (a device name needs one or two, not the four of the event's longest key), and a cross
//! `[a, b]` mixes vector `a` with vector `b` — its sides are the same field in every lane,
//! so there is nothing to gather.
//!
//! # Input and output
//!
//! [`BatchHasher::new`] takes the layout: the seed of each key position (a field) and the
//! crosses as pairs of key positions with their seeds. [`BatchHasher::hash`] takes the
//! events' keys (value bytes, event by event, one per position) and writes per event the
//! bucket index of each key then of each cross, exactly `hash_scalar(seed, key) & mask`
//! and `cross_mix(seed, hash_a, hash_b) & mask` ([`super::hash`], the contract). Keys longer
//! than 16 bytes are hashed by the scalar reference while they are laid out and carried
//! through the vectors as known hashes. Without AVX2 the scalar reference does all of it.

use super::hash::{Backend, cross_mix, hash_scalar, hash_words, small_words};

/// Most key positions (fields) of one layout.
pub const MAX_FIELDS: usize = 32;
/// Events hashed per vector: one per 32-bit lane of an AVX2 register (the AVX-512 path with
/// VBMI takes sixteen, module `hash_simd`).
pub const LANES: usize = 8;
/// Length of a lane whose hash is already known (in [`Columns::known`]). Negative as an
/// `i32`, so the signed length compares of the kernel see no full block in it.
pub(crate) const PRE: u32 = u32::MAX;

/// A cross of a layout: its seed ([`super::hash::cross_seed`]) and the key positions of its
/// two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossPair {
    /// `cross_seed(seed_a, seed_b)`.
    pub seed: u32,
    /// Key position of the first side.
    pub a: usize,
    /// Key position of the second side.
    pub b: usize,
}

/// Eight 32-bit lanes, aligned for aligned vector loads and stores.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Lanes(pub(crate) [u32; LANES]);

/// Eight 64-bit words, one per event, aligned: two vector loads.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Words(pub(crate) [u64; LANES]);

/// The lane of event `e`: blocks are laid as one 64-bit word per event (two blocks), and the
/// kernel splits two vectors of four words into the even and the odd blocks with one
/// in-lane shuffle each, which leaves the events in this order; everything else (lengths,
/// known hashes, results) is laid in the same order, so nothing is permuted back.
pub(crate) const LANE_OF: [usize; LANES] = [0, 1, 4, 5, 2, 3, 6, 7];
/// The lane of event `e` in the vectors of the AVX-512 path, which transposes whole rows.
#[cfg(target_arch = "x86_64")]
const IN_ORDER: [usize; LANES] = [0, 1, 2, 3, 4, 5, 6, 7];

/// The keys of up to eight events by column: per field, lane [`LANE_OF`]`[e]` of each
/// [`Lanes`] and word `e` of each [`Words`] is event `e`.
#[derive(Debug)]
#[repr(C, align(32))]
pub(crate) struct Columns {
    /// Per field: each lane's key length, or [`PRE`].
    pub(crate) lens: [Lanes; MAX_FIELDS],
    /// Per field: the key's zero-padded little-endian bytes `0..8` (blocks 0 and 1).
    pub(crate) lo: [Words; MAX_FIELDS],
    /// Per field: the key's zero-padded little-endian bytes `8..16` (blocks 2 and 3).
    pub(crate) hi: [Words; MAX_FIELDS],
    /// Per field: the hash of a [`PRE`] lane.
    pub(crate) known: [Lanes; MAX_FIELDS],
    /// Bit `f`: field `f` has a [`PRE`] lane.
    pub(crate) has_known: u32,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            lens: [Lanes::default(); MAX_FIELDS],
            lo: [Words::default(); MAX_FIELDS],
            hi: [Words::default(); MAX_FIELDS],
            known: [Lanes::default(); MAX_FIELDS],
            has_known: 0,
        }
    }
}

impl Columns {
    /// Lays out up to eight events' keys (`keys`, `seeds.len()` per event, event by event):
    /// per key its two words and length, three stores; a key longer than 16 bytes is hashed
    /// here and marked [`PRE`].
    #[inline(always)]
    fn lay(&mut self, seeds: &[u32], keys: &[&[u8]]) {
        self.has_known = 0;
        let fields = seeds.len().min(MAX_FIELDS);
        for (e, event) in keys.chunks_exact(fields).take(LANES).enumerate() {
            let (e, lane) = (e % LANES, LANE_OF[e % LANES]);
            for (f, (key, &seed)) in event.iter().zip(seeds).enumerate() {
                let f = f % MAX_FIELDS;
                if let Some((lo, hi)) = small_words(key) {
                    self.lens[f].0[lane] = key.len() as u32;
                    self.lo[f].0[e] = lo;
                    self.hi[f].0[e] = hi;
                } else {
                    self.lens[f].0[lane] = PRE;
                    self.known[f].0[lane] = hash_scalar(seed, key);
                    self.has_known |= 1 << f;
                }
            }
        }
    }
}

/// Scratch of the sixteen-lane AVX-512 path.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
struct Wide {
    laid: super::hash_simd::Laid16,
    /// Per field, the hashes of the current sixteen events (before masking).
    hashes: Box<[super::hash_simd::Lanes16]>,
    /// Per key then cross, the indices of the current sixteen events; padded to a
    /// multiple of sixteen.
    indices: Box<[super::hash_simd::Lanes16]>,
}

/// Hashes the keys and crosses of a batch of events of one layout (module docs); one per
/// worker, reused: nothing allocates after [`BatchHasher::new`].
#[derive(Debug)]
pub struct BatchHasher {
    backend: Backend,
    seeds: Box<[u32]>,
    crosses: Box<[CrossPair]>,
    mask: u32,
    columns: Box<Columns>,
    /// The keys as the eight-lane AVX-512 path lays them.
    #[cfg(target_arch = "x86_64")]
    rows: Box<super::hash_simd::Laid>,
    /// The sixteen-lane AVX-512 path (VBMI): its layout, hashes and indices, or `None`
    /// where it does not run (module `hash_simd`, "Sixteen events per vector").
    #[cfg(target_arch = "x86_64")]
    wide: Option<Box<Wide>>,
    /// Per field, the hashes of the current eight events (before masking).
    hashes: Box<[Lanes]>,
    /// Per key then cross, the indices of the current eight events; padded to a multiple of
    /// eight.
    indices: Box<[Lanes]>,
    /// Events laid by the last [`BatchHasher::lay`].
    laid: usize,
}

impl BatchHasher {
    /// A hasher for the layout with key seeds `seeds` (one per field) and `crosses`, whose
    /// indices are `hash & (2^bits - 1)`, hashing with `backend`.
    ///
    /// # Panics
    ///
    /// If there are more than [`MAX_FIELDS`] seeds, a cross names a position past them, or
    /// `bits` is not in `1..=32`.
    pub fn new(backend: Backend, seeds: &[u32], crosses: &[CrossPair], bits: u32) -> Self {
        assert!(seeds.len() <= MAX_FIELDS, "at most {MAX_FIELDS} fields");
        assert!(
            crosses
                .iter()
                .all(|c| c.a < seeds.len() && c.b < seeds.len()),
            "a cross names a key position past the layout"
        );
        assert!((1..=32).contains(&bits), "bits must be in 1..=32");
        BatchHasher {
            backend,
            seeds: seeds.into(),
            crosses: crosses.into(),
            mask: u32::MAX >> (32 - bits),
            columns: Box::default(),
            #[cfg(target_arch = "x86_64")]
            rows: Box::default(),
            #[cfg(target_arch = "x86_64")]
            wide: (backend.is_avx512()
                && std::is_x86_feature_detected!("avx512vbmi")
                && super::hash_simd::fat_pointers_are_ptr_len())
            .then(|| {
                use super::hash_simd::{Laid16, Lanes16};
                let width = seeds.len() + crosses.len();
                Box::new(Wide {
                    laid: Laid16::default(),
                    hashes: vec![Lanes16::default(); seeds.len()].into(),
                    indices: vec![Lanes16::default(); width.next_multiple_of(16)].into(),
                })
            }),
            hashes: vec![Lanes::default(); seeds.len()].into(),
            // Padded to whole groups of eight for the transposes of `write_rows`.
            indices: vec![Lanes::default(); (seeds.len() + crosses.len()).next_multiple_of(LANES)]
                .into(),
            laid: 0,
        }
    }

    /// Indices per event: one per key, then one per cross.
    pub fn width(&self) -> usize {
        self.seeds.len() + self.crosses.len()
    }

    /// The hashing implementation in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This hasher with AVX-512 held to eight events per vector (module `hash_simd`, "From
    /// the bytes") even where the CPU has VBMI: for benches comparing the two paths.
    pub fn eight_lanes(mut self) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            self.wide = None;
        }
        self
    }

    /// Events [`BatchHasher::hash`] hashes per vector: 16 with AVX-512 and VBMI (module
    /// `hash_simd`, "Sixteen events per vector"), 8 with AVX2 or AVX-512 alone, 1 scalar.
    pub fn lanes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.wide.is_some() {
            return 16;
        }
        if self.backend.is_simd() { LANES } else { 1 }
    }

    /// Writes the indices of the events whose keys are `keys` (one per field, event after
    /// event) into `out`, [`BatchHasher::width`] per event: the keys' then the crosses'.
    /// With SIMD, [`BatchHasher::lay`] then [`BatchHasher::hash_laid`] per eight events;
    /// without, the scalar reference event by event.
    ///
    /// # Panics
    ///
    /// If `keys` is not a whole number of events or `out` does not have room for exactly
    /// their indices.
    pub fn hash(&mut self, keys: &[&[u8]], out: &mut [u32]) {
        let (fields, width) = (self.seeds.len(), self.width());
        let events = keys.len().checked_div(fields).unwrap_or(0);
        assert_eq!(keys.len(), events * fields, "keys must be whole events");
        assert_eq!(out.len(), events * width, "out must hold width() per event");
        if fields == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(wide) = self.wide.as_deref_mut() {
            let chunks = keys.chunks(16 * fields).zip(out.chunks_mut(16 * width));
            for (keys, out) in chunks {
                // SAFETY: `wide` exists only where the backend is AVX-512 (so AVX2 and
                // AVX-512 F, BW and VL were found), VBMI was detected and
                // `fat_pointers_are_ptr_len` held (`BatchHasher::new`).
                unsafe {
                    let events = super::hash_simd::hash_bytes16(
                        &self.seeds,
                        &self.crosses,
                        self.mask,
                        keys,
                        &mut wide.laid,
                        &mut wide.hashes,
                        &mut wide.indices,
                    );
                    super::hash_simd::write_rows16(&wide.indices, width, events, out);
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.backend.is_avx512() {
            let chunks = keys
                .chunks(LANES * fields)
                .zip(out.chunks_mut(LANES * width));
            for (keys, out) in chunks {
                // SAFETY: the backend is AVX-512, so `Backend::available` found AVX2 and
                // AVX-512 F, BW and VL.
                unsafe {
                    let events = super::hash_simd::hash_bytes(
                        &self.seeds,
                        &self.crosses,
                        self.mask,
                        keys,
                        &mut self.rows,
                        &mut self.hashes,
                        &mut self.indices,
                    );
                    super::hash_simd::write_rows(&self.indices, &IN_ORDER, width, events, out);
                }
            }
            return;
        }
        if self.backend.is_simd() {
            let chunks = keys
                .chunks(LANES * fields)
                .zip(out.chunks_mut(LANES * width));
            for (keys, out) in chunks {
                self.lay(keys);
                self.hash_laid(out);
            }
            return;
        }
        for (keys, out) in keys.chunks_exact(fields).zip(out.chunks_exact_mut(width)) {
            let hashes = &mut self.hashes;
            for ((h, key), &seed) in hashes.iter_mut().zip(keys).zip(self.seeds.iter()) {
                h.0[0] = hash_scalar(seed, key);
            }
            let (out_keys, out_crosses) = out.split_at_mut(fields);
            for (o, h) in out_keys.iter_mut().zip(hashes.iter()) {
                *o = h.0[0] & self.mask;
            }
            for (o, c) in out_crosses.iter_mut().zip(self.crosses.iter()) {
                let (a, b) = (hashes[c.a].0[0], hashes[c.b].0[0]);
                *o = cross_mix(c.seed, a, b) & self.mask;
            }
        }
    }

    /// The first half of [`BatchHasher::hash`] for up to eight events: lays their keys out
    /// by column (per key its two words and length; a key longer than 16 bytes is hashed
    /// now). Returns how many events it laid.
    ///
    /// # Panics
    ///
    /// If `keys` is not a whole number of events, or holds more than eight.
    pub fn lay(&mut self, keys: &[&[u8]]) -> usize {
        let fields = self.seeds.len();
        let events = keys.len().checked_div(fields).unwrap_or(0);
        assert!(
            keys.len() == events * fields && events <= LANES,
            "lay takes up to {LANES} whole events"
        );
        self.columns.lay(&self.seeds, keys);
        self.laid = events;
        events
    }

    /// The second half of [`BatchHasher::hash`]: the indices of the events last laid by
    /// [`BatchHasher::lay`], [`BatchHasher::width`] per event, into `out`. With AVX2 the
    /// kernel of module `hash_simd`; without, each key from its words, one by one.
    ///
    /// # Panics
    ///
    /// If `out` does not hold exactly the laid events' indices.
    pub fn hash_laid(&mut self, out: &mut [u32]) {
        let width = self.width();
        assert_eq!(
            out.len(),
            self.laid * width,
            "out must hold width() per event"
        );
        #[cfg(target_arch = "x86_64")]
        if self.backend.is_simd() {
            // SAFETY: the backend is SIMD, so `Backend::detect` found AVX2.
            unsafe {
                super::hash_simd::hash_batch(
                    &self.seeds,
                    &self.crosses,
                    self.mask,
                    &self.columns,
                    &mut self.hashes,
                    &mut self.indices,
                );
                super::hash_simd::write_rows(&self.indices, &LANE_OF, width, self.laid, out);
            };
            return;
        }
        let c = &self.columns;
        for (e, out) in out.chunks_exact_mut(width).enumerate() {
            let (e, lane) = (e % LANES, LANE_OF[e % LANES]);
            let hashes = &mut self.hashes;
            for (f, (h, &seed)) in hashes.iter_mut().zip(self.seeds.iter()).enumerate() {
                let len = c.lens[f].0[lane];
                h.0[0] = if len == PRE {
                    c.known[f].0[lane]
                } else {
                    hash_words(seed, c.lo[f].0[e], c.hi[f].0[e], len as usize)
                };
            }
            let (out_keys, out_crosses) = out.split_at_mut(self.seeds.len());
            for (o, h) in out_keys.iter_mut().zip(hashes.iter()) {
                *o = h.0[0] & self.mask;
            }
            for (o, c) in out_crosses.iter_mut().zip(self.crosses.iter()) {
                let (a, b) = (hashes[c.a].0[0], hashes[c.b].0[0]);
                *o = cross_mix(c.seed, a, b) & self.mask;
            }
        }
    }
}
