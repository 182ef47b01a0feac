//! The AVX2 fast path of [`super::hash`]: the keys of ONE event hashed eight at a time, one
//! per 32-bit lane, and its crosses mixed eight at a time.
//!
//! Bit-identical to the scalar reference by construction, and checked so by proptests.
//!
//! # How the keys of an event are hashed
//!
//! The featurizer's plan (module `plan`) puts feature `i` of the event in lane `i` (up to
//! [`MAX_LANES`]), laid out by column: one array of seeds, one of key lengths, and four
//! arrays of 4-byte blocks, block `b` of lane `i` at `columns[b][i]`, zero padded past the
//! key. Keys longer than 16 bytes (rare: ids are short) and numeric features, whose hash
//! is their field seed, are lanes whose hash is already known: length [`PRE`], hash in the
//! seed. A vector load of eight lanes of one column is block `b` of eight keys, so no
//! transpose is needed. Each block needed by the event's longest key is mixed in all lanes:
//!
//! - lanes with a full block at `i` (`len >= 4i + 4`) take the body round;
//! - a lane whose 1–3 byte tail is block `i` takes the tail step `h ^= k`; its padding
//!   bytes are zero, exactly the zero-extended tail the scalar code builds;
//! - lanes that are done see an all-zero block, and `mix_k(0) = 0`, so `h ^= k` leaves
//!   them unchanged.
//!
//! So one `blendv` between `h ^ k` and the full round handles every lane, with no per-lane
//! scalar tail. Length xor and `fmix32` finish all lanes at once, and a last `blendv` puts
//! the known hashes of [`PRE`] lanes back. Crosses are MurmurHash3 of two 4-byte blocks:
//! two body rounds and the finalizer, eight crosses per vector ([`cross8`]).
//!
//! # From the bytes, with AVX-512
//!
//! [`hash_bytes`] is [`hash_batch`] without the scalar layout before it: lane = event, vector
//! = field, as in module `batch`, but each key is read straight from its slice by a
//! byte-masked 16-byte load (`vmovdqu8` with the mask of its first `len` bytes: masked-off
//! bytes are not read and cannot fault, so the load never reaches past the slice), and the
//! eight 16-byte rows of a field are turned into its four block vectors with one 4×4
//! transpose of 32-bit blocks per 128-bit half (four inserts, eight unpacks). Rotates are one
//! instruction (`vprold`), and the body-round-or-tail choice is a masked add instead of a
//! `blendv`. Keys longer than 16 bytes (rare) are hashed by the scalar reference after the
//! vector pass and put back with a masked blend.
//!
//! # Sixteen events per vector, with AVX-512 VBMI
//!
//! [`hash_bytes16`] is [`hash_bytes`] on 512-bit vectors: lane = event, sixteen of them, so
//! each field's vector chain hashes twice the keys for the same instructions. What made the
//! eight-lane path slow was laying the keys out (per key a scalar length clamp, a shifted
//! mask, a masked load and two stores), so the layout works on four keys at a time: one
//! 64-byte load reads four `&[u8]` (pointer, length) pairs, one `vpminuq` clamps the four
//! lengths to 17, one byte shuffle and one byte compare against `0..16` make the byte masks
//! of all four keys in one 64-bit mask register, and one `vpmovqb` stores the four lengths.
//! Each key is then one pointer load, one mask shift, one byte-masked 16-byte load and one
//! store of its row. The vector pass reads a field's sixteen rows as four vectors and turns
//! them into blocks with two-source dword permutes (`vpermt2d`, two per block pair instead of
//! eight unpacks and four inserts), and a field's sixteen lengths with one two-source byte
//! permute (`vpermt2b`, VBMI). Indices leave by a 16×16 dword transpose in registers, one
//! masked store per event. This reads `&[u8]` as two words, pointer then length: the layout
//! Rust does not promise, so [`fat_pointers_are_ptr_len`] checks it once and the caller
//! falls back to [`hash_bytes`] otherwise.
//!
//! On other architectures this module is empty and the featurizer hashes with the scalar
//! reference.

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{MAX_LANES, PRE, cross8, hash_batch, hash_columns, write_rows};
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::{Laid, hash_bytes, hash_rows, load_row};
#[cfg(target_arch = "x86_64")]
pub(crate) use wide::{Laid16, Lanes16, fat_pointers_are_ptr_len, hash_bytes16, write_rows16};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::features::batch::{Columns, CrossPair, Lanes, PRE as BATCH_PRE, Words};
    use crate::features::hash::{C1, C2, F1, F2, N};

    const LANES: usize = 8;
    /// Most features of one event hashed in lanes; a wider event takes the scalar path.
    pub(crate) const MAX_LANES: usize = 32;
    /// Length of a lane whose hash is already known (held in its seed). Negative as an
    /// `i32`, so the signed length compares see no full block in it.
    pub(crate) const PRE: u32 = u32::MAX;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn rotl<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi32::<L>(x), _mm256_srli_epi32::<R>(x))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mix_k(k: __m256i) -> __m256i {
        let k = _mm256_mullo_epi32(k, _mm256_set1_epi32(C1 as i32));
        let k = rotl::<15, 17>(k);
        _mm256_mullo_epi32(k, _mm256_set1_epi32(C2 as i32))
    }

    /// The full body round, given an already mixed `k`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn round_mixed(h: __m256i, k: __m256i) -> __m256i {
        let h = rotl::<13, 19>(_mm256_xor_si256(h, k));
        // h * 5 + N, with the multiplication by 5 as a shift and an add.
        let h = _mm256_add_epi32(_mm256_slli_epi32::<2>(h), h);
        _mm256_add_epi32(h, _mm256_set1_epi32(N as i32))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn fmix(h: __m256i) -> __m256i {
        let h = _mm256_xor_si256(h, _mm256_srli_epi32::<16>(h));
        let h = _mm256_mullo_epi32(h, _mm256_set1_epi32(F1 as i32));
        let h = _mm256_xor_si256(h, _mm256_srli_epi32::<13>(h));
        let h = _mm256_mullo_epi32(h, _mm256_set1_epi32(F2 as i32));
        _mm256_xor_si256(h, _mm256_srli_epi32::<16>(h))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load8(v: &[u32; LANES]) -> __m256i {
        // SAFETY: `v` is 32 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store8(v: __m256i, out: &mut [u32; LANES]) {
        // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    }

    /// Mixes block `i` into every lane: the body round where the lane has a full block
    /// (`len > limit = 4i + 3`), else the tail step `h ^ k`, which is a no-op for lanes that
    /// are done (their block is zero).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn block_round(h: __m256i, block: __m256i, len: __m256i, limit: i32) -> __m256i {
        let k = mix_k(block);
        let full = _mm256_cmpgt_epi32(len, _mm256_set1_epi32(limit));
        _mm256_blendv_epi8(_mm256_xor_si256(h, k), round_mixed(h, k), full)
    }

    /// Hashes lanes `0..n` (at most [`MAX_LANES`]) laid out by column: lane `j` hashes the
    /// key whose zero-padded 4-byte blocks are `blocks[i][j]` and whose length is
    /// `lens[j]` with seed `seeds[j]`, or, where `lens[j]` is [`PRE`], has the hash
    /// `seeds[j]`. `blocks` is the number of blocks of the longest key (at most 4).
    /// Columns need no transpose: each vector is eight lanes of one block.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn hash_columns(
        seeds: &[u32; MAX_LANES],
        lens: &[u32; MAX_LANES],
        columns: &[[u32; MAX_LANES]; 4],
        n: usize,
        blocks: usize,
        out: &mut [u32; MAX_LANES],
    ) {
        let groups = n.min(MAX_LANES).div_ceil(LANES);
        let at = |v: &[u32; MAX_LANES], g: usize| -> __m256i {
            // SAFETY: `g < MAX_LANES / LANES`, so lanes `8g..8g + 8` are in `v`.
            unsafe { _mm256_loadu_si256(v.as_ptr().add(g * LANES).cast()) }
        };
        for g in 0..groups {
            let (seeds, len) = (at(seeds, g), at(lens, g));
            let mut h = seeds;
            for (i, column) in columns.iter().enumerate().take(blocks) {
                h = block_round(h, at(column, g), len, (4 * i + 3) as i32);
            }
            let h = fmix(_mm256_xor_si256(h, len));
            let pre = _mm256_cmpeq_epi32(len, _mm256_set1_epi32(PRE as i32));
            // SAFETY: as for `at`, for `out`.
            unsafe {
                _mm256_storeu_si256(
                    out.as_mut_ptr().add(g * LANES).cast(),
                    _mm256_blendv_epi8(h, seeds, pre),
                )
            };
        }
    }

    /// `out[j] = M(seeds[j], a[j], b[j])` ([`crate::features::hash::cross_mix`]) for eight
    /// crosses at once.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn cross8(
        seeds: &[u32; LANES],
        a: &[u32; LANES],
        b: &[u32; LANES],
        out: &mut [u32; LANES],
    ) {
        let h = round_mixed(load8(seeds), mix_k(load8(a)));
        let h = round_mixed(h, mix_k(load8(b)));
        store8(fmix(_mm256_xor_si256(h, _mm256_set1_epi32(8))), out);
    }

    /// Aligned load of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(v: &Lanes) -> __m256i {
        // SAFETY: `Lanes` is 32 readable bytes aligned to 32.
        unsafe { _mm256_load_si256(v.0.as_ptr().cast()) }
    }

    /// Aligned store of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(v: __m256i, out: &mut Lanes) {
        // SAFETY: `Lanes` is 32 writable bytes aligned to 32.
        unsafe { _mm256_store_si256(out.0.as_mut_ptr().cast(), v) }
    }

    /// Splits eight events' 64-bit words into their even and odd 4-byte blocks, the
    /// events in the order of [`crate::features::batch::LANE_OF`].
    #[inline]
    #[target_feature(enable = "avx2")]
    fn split(words: &Words) -> (__m256i, __m256i) {
        // SAFETY: `Words` is 64 readable bytes aligned to 32.
        let (a, b) = unsafe {
            let p = words.0.as_ptr().cast::<__m256i>();
            (_mm256_load_si256(p), _mm256_load_si256(p.add(1)))
        };
        let (a, b) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
        (
            _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
            _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        )
    }

    /// Whether any lane's key is longer than `bytes` (a [`BATCH_PRE`] lane is not: it
    /// compares as -1).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn any_longer(len: __m256i, bytes: i32) -> bool {
        _mm256_movemask_epi8(_mm256_cmpgt_epi32(len, _mm256_set1_epi32(bytes))) != 0
    }

    /// The keys and crosses of up to eight events laid out by [`Columns`] (lane = event):
    /// per field `f`, `hashes[f]` gets the eight hashes and `indices[f]` the masked ones;
    /// per cross `c`, `indices[seeds.len() + c]` its eight masked indices. Each field takes
    /// only the blocks its own keys reach; a field with keys of more than 16 bytes puts
    /// their known hashes back with one blend. Crosses read their two sides' hash vectors:
    /// the same field in every lane, so no gather.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn hash_batch(
        seeds: &[u32],
        crosses: &[CrossPair],
        mask: u32,
        columns: &Columns,
        hashes: &mut [Lanes],
        indices: &mut [Lanes],
    ) {
        let m = _mm256_set1_epi32(mask as i32);
        let (key_indices, cross_indices) = indices.split_at_mut(seeds.len().min(indices.len()));
        let fields = seeds
            .iter()
            .zip(&columns.lens)
            .zip(columns.lo.iter().zip(&columns.hi))
            .zip(&columns.known);
        let out = hashes.iter_mut().zip(key_indices.iter_mut());
        for (f, ((((&seed, lens), (lo, hi)), known), (hash, index))) in fields.zip(out).enumerate()
        {
            let len = load(lens);
            let (b0, b1) = split(lo);
            let mut h = block_round(_mm256_set1_epi32(seed as i32), b0, len, 3);
            if any_longer(len, 4) {
                h = block_round(h, b1, len, 7);
                if any_longer(len, 8) {
                    let (b2, b3) = split(hi);
                    h = block_round(h, b2, len, 11);
                    if any_longer(len, 12) {
                        h = block_round(h, b3, len, 15);
                    }
                }
            }
            h = fmix(_mm256_xor_si256(h, len));
            if columns.has_known & (1 << (f % 32)) != 0 {
                let pre = _mm256_cmpeq_epi32(len, _mm256_set1_epi32(BATCH_PRE as i32));
                h = _mm256_blendv_epi8(h, load(known), pre);
            }
            store(h, hash);
            store(_mm256_and_si256(h, m), index);
        }
        let eight = _mm256_set1_epi32(8);
        for (c, index) in crosses.iter().zip(cross_indices.iter_mut()) {
            let (Some(a), Some(b)) = (hashes.get(c.a), hashes.get(c.b)) else {
                continue;
            };
            let h = round_mixed(_mm256_set1_epi32(c.seed as i32), mix_k(load(a)));
            let h = round_mixed(h, mix_k(load(b)));
            store(_mm256_and_si256(fmix(_mm256_xor_si256(h, eight)), m), index);
        }
    }

    /// Writes the indices of the first `events` events from `indices` (one [`Lanes`] per
    /// key or cross, lane `i` holding event `order[i]`, padded to a multiple of eight) into
    /// `out`, `width` per event: eight by eight transposes of the vectors, each row stored
    /// whole, the last `width % 8` of a row with a masked store.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn write_rows(
        indices: &[Lanes],
        order: &[usize; LANES],
        width: usize,
        events: usize,
        out: &mut [u32],
    ) {
        let events = events
            .min(LANES)
            .min(out.len().checked_div(width).unwrap_or(0));
        for (g, group) in indices.chunks_exact(LANES).enumerate() {
            let j = g * LANES;
            if j >= width {
                break;
            }
            let n = (width - j).min(LANES);
            let r = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| load(&group[i]));
            // Standard 8x8 transpose of 32-bit elements: row i of the result is lane i of
            // every input vector.
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
            let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
            let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            let rows = [
                _mm256_permute2x128_si256::<0x20>(u0, u4),
                _mm256_permute2x128_si256::<0x20>(u1, u5),
                _mm256_permute2x128_si256::<0x20>(u2, u6),
                _mm256_permute2x128_si256::<0x20>(u3, u7),
                _mm256_permute2x128_si256::<0x31>(u0, u4),
                _mm256_permute2x128_si256::<0x31>(u1, u5),
                _mm256_permute2x128_si256::<0x31>(u2, u6),
                _mm256_permute2x128_si256::<0x31>(u3, u7),
            ];
            let keep = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            for (&row, &event) in rows.iter().zip(order) {
                if event >= events {
                    continue;
                }
                let at = event * width + j;
                let Some(dst) = out.get_mut(at..at + n) else {
                    continue;
                };
                // SAFETY: `dst` holds `n` u32; the store writes lanes `0..n` only.
                unsafe { _mm256_maskstore_epi32(dst.as_mut_ptr().cast(), keep, row) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{MAX_LANES, PRE};
    use crate::features::batch::{CrossPair, LANES, Lanes, MAX_FIELDS};
    use crate::features::hash::{C1, C2, F1, F2, N, hash_scalar};

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn mix_k(k: __m256i) -> __m256i {
        let k = _mm256_mullo_epi32(k, _mm256_set1_epi32(C1 as i32));
        _mm256_mullo_epi32(_mm256_rol_epi32::<15>(k), _mm256_set1_epi32(C2 as i32))
    }

    /// `rotl(x, 13) * 5 + N`, the multiplication as a shift and an add.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn body(x: __m256i) -> __m256i {
        let r = _mm256_rol_epi32::<13>(x);
        _mm256_add_epi32(
            _mm256_add_epi32(_mm256_slli_epi32::<2>(r), r),
            _mm256_set1_epi32(N as i32),
        )
    }

    /// Mixes a block into every lane: the body round in the lanes of `full` (a whole block
    /// there), else the tail step `h ^ mix_k(k)`, a no-op where the block is zero.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn block(h: __m256i, block: __m256i, full: __mmask8) -> __m256i {
        let x = _mm256_xor_si256(h, mix_k(block));
        _mm256_mask_mov_epi32(x, full, body(x))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn fmix(h: __m256i) -> __m256i {
        let h = _mm256_xor_si256(h, _mm256_srli_epi32::<16>(h));
        let h = _mm256_mullo_epi32(h, _mm256_set1_epi32(F1 as i32));
        let h = _mm256_xor_si256(h, _mm256_srli_epi32::<13>(h));
        let h = _mm256_mullo_epi32(h, _mm256_set1_epi32(F2 as i32));
        _mm256_xor_si256(h, _mm256_srli_epi32::<16>(h))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn load(v: &Lanes) -> __m256i {
        // SAFETY: `Lanes` is 32 readable bytes aligned to 32.
        unsafe { _mm256_load_si256(v.0.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn store(v: __m256i, out: &mut Lanes) {
        // SAFETY: `Lanes` is 32 writable bytes aligned to 32.
        unsafe { _mm256_store_si256(out.0.as_mut_ptr().cast(), v) }
    }

    /// The first 16 bytes of `key`, zero padded: only the key's own bytes are read.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn row(key: &[u8]) -> __m128i {
        // Bits 0..min(len, 16).
        let bytes = ((1u32 << key.len().min(16)) - 1) as __mmask16;
        // SAFETY: the mask selects bytes `0..min(len, 16)` of `key`, all inside the slice;
        // masked-off bytes are neither read nor able to fault (AVX-512 fault suppression).
        unsafe { _mm_maskz_loadu_epi8(bytes, key.as_ptr().cast()) }
    }

    /// The keys of up to eight events by field, as [`hash_bytes`] lays them: per field, each
    /// event's first 16 key bytes (zero padded) and its length in a byte, saturated at 17.
    #[derive(Debug)]
    #[repr(C, align(32))]
    pub(crate) struct Laid {
        rows: [[[u8; 16]; LANES]; MAX_FIELDS],
        lens: [[u8; LANES]; MAX_FIELDS],
    }

    impl Default for Laid {
        fn default() -> Self {
            Laid {
                rows: [[[0; 16]; LANES]; MAX_FIELDS],
                lens: [[0; LANES]; MAX_FIELDS],
            }
        }
    }

    /// [`super::hash_batch`] from the keys themselves: the keys of up to eight events
    /// (`keys`, `seeds.len()` per event, event by event; lane `e` is event `e`), through
    /// `laid`. Per field `f`, `hashes[f]` gets the eight hashes and `indices[f]` the masked
    /// ones; per cross `c`, `indices[seeds.len() + c]` its eight masked indices. Lanes past
    /// the events hash an empty key. Returns the number of events.
    ///
    /// Two passes: the keys in their order, each one masked load and two stores (row and
    /// length), then the fields, each a chain of vector rounds independent of the others',
    /// so that the CPU overlaps them. (Fused into one pass per field, the scalar loads of a
    /// field's eight keys sat in front of its vector chain, and it ran 1.5× slower.)
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(crate) fn hash_bytes(
        seeds: &[u32],
        crosses: &[CrossPair],
        mask: u32,
        keys: &[&[u8]],
        laid: &mut Laid,
        hashes: &mut [Lanes],
        indices: &mut [Lanes],
    ) -> usize {
        let fields = seeds.len().min(MAX_FIELDS);
        let events = keys.len().checked_div(fields).unwrap_or(0).min(LANES);
        if events == 0 {
            return 0;
        }
        if events < LANES {
            *laid = Laid::default();
        }
        for (e, event) in keys.chunks_exact(fields).take(LANES).enumerate() {
            let e = e % LANES;
            for ((key, rows), lens) in event.iter().zip(&mut laid.rows).zip(&mut laid.lens) {
                // SAFETY: `rows[e]` is 16 writable bytes; no alignment requirement.
                unsafe { _mm_storeu_si128(rows[e].as_mut_ptr().cast(), row(key)) };
                // Saturated at 17: longer keys are put back after the vector pass.
                lens[e] = key.len().min(17) as u8;
            }
        }
        let m = _mm256_set1_epi32(mask as i32);
        let (key_indices, cross_indices) = indices.split_at_mut(fields.min(indices.len()));
        let fields_laid = laid.rows.iter().zip(&laid.lens);
        let out = hashes.iter_mut().zip(key_indices.iter_mut());
        for (f, ((&seed, (hash, index)), (rows, lens))) in
            seeds.iter().zip(out).zip(fields_laid).enumerate()
        {
            // Rows to blocks: `y(i)` holds event `i` in its low half and `i + 4` in its high
            // half; a 4×4 transpose of 32-bit blocks in each half.
            let y = |i: usize| -> __m256i {
                let (lo, hi) = (&rows[i % LANES], &rows[(i + 4) % LANES]);
                // SAFETY: each row is 16 readable bytes; no alignment requirement.
                unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
            };
            let (y0, y1, y2, y3) = (y(0), y(1), y(2), y(3));
            let t0 = _mm256_unpacklo_epi32(y0, y1);
            let t2 = _mm256_unpacklo_epi32(y2, y3);
            let len = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(u64::from_le_bytes(*lens) as i64));
            let over = |bytes: i32| _mm256_cmpgt_epi32_mask(len, _mm256_set1_epi32(bytes));
            let mut h = block(
                _mm256_set1_epi32(seed as i32),
                _mm256_unpacklo_epi64(t0, t2),
                over(3),
            );
            if over(4) != 0 {
                h = block(h, _mm256_unpackhi_epi64(t0, t2), over(7));
                if over(8) != 0 {
                    let t1 = _mm256_unpackhi_epi32(y0, y1);
                    let t3 = _mm256_unpackhi_epi32(y2, y3);
                    h = block(h, _mm256_unpacklo_epi64(t1, t3), over(11));
                    if over(12) != 0 {
                        h = block(h, _mm256_unpackhi_epi64(t1, t3), over(15));
                    }
                }
            }
            h = fmix(_mm256_xor_si256(h, len));
            let long = over(16);
            if long != 0 {
                let key = |e: usize| keys.get(e * fields + f).copied().unwrap_or_default();
                h = put_back_long(h, long, seed, (0..LANES).map(key));
            }
            store(h, hash);
            store(_mm256_and_si256(h, m), index);
        }
        let eight = _mm256_set1_epi32(8);
        for (c, index) in crosses.iter().zip(cross_indices.iter_mut()) {
            let (Some(a), Some(b)) = (hashes.get(c.a), hashes.get(c.b)) else {
                continue;
            };
            let h = body(_mm256_xor_si256(
                _mm256_set1_epi32(c.seed as i32),
                mix_k(load(a)),
            ));
            let h = body(_mm256_xor_si256(h, mix_k(load(b))));
            store(_mm256_and_si256(fmix(_mm256_xor_si256(h, eight)), m), index);
        }
        events
    }

    /// `h` with the lanes of `long` (keys over 16 bytes) replaced by the scalar hash of their
    /// key, `keys` being the field's key in each lane.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn put_back_long<'a>(
        h: __m256i,
        long: __mmask8,
        seed: u32,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> __m256i {
        let mut known = Lanes::default();
        for (e, (key, k)) in keys.zip(known.0.iter_mut()).enumerate() {
            if long & (1 << e) != 0 {
                *k = hash_scalar(seed, key);
            }
        }
        _mm256_mask_blend_epi32(long, h, load(&known))
    }

    /// Writes the first 16 bytes of `key`, zero padded, to `out`: one masked load, one store.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and AVX-512 F, BW and VL.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn load_row(key: &[u8], out: &mut [u8; 16]) {
        // SAFETY: `out` is 16 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), row(key)) }
    }

    /// [`super::hash_columns`] from rows: lane `j` hashes the key whose first 16 bytes,
    /// zero padded, are `rows[j]` and whose length is `lens[j]` with seed `seeds[j]`, or,
    /// where `lens[j]` is [`PRE`], has the hash `seeds[j]`; lanes `0..n` (at most
    /// [`MAX_LANES`]). Each group of eight rows is turned into four block vectors by two
    /// 4×4 transposes of 32-bit blocks, and takes only the blocks its longest key needs.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(crate) fn hash_rows(
        rows: &[[u8; 16]; MAX_LANES],
        seeds: &[u32; MAX_LANES],
        lens: &[u32; MAX_LANES],
        n: usize,
        out: &mut [u32; MAX_LANES],
    ) {
        let groups = n.min(MAX_LANES).div_ceil(LANES);
        for g in 0..groups {
            let at = |v: &[u32; MAX_LANES]| -> __m256i {
                // SAFETY: `g < MAX_LANES / LANES`, so lanes `8g..8g + 8` are in `v`.
                unsafe { _mm256_loadu_si256(v.as_ptr().add(g * LANES).cast()) }
            };
            let y = |i: usize| -> __m256i {
                let (lo, hi) = (
                    &rows[(g * LANES + i) % MAX_LANES],
                    &rows[(g * LANES + i + 4) % MAX_LANES],
                );
                // SAFETY: each row is 16 readable bytes; no alignment requirement.
                unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
            };
            let (y0, y1, y2, y3) = (y(0), y(1), y(2), y(3));
            let (seed, len) = (at(seeds), at(lens));
            let over = |bytes: i32| _mm256_cmpgt_epi32_mask(len, _mm256_set1_epi32(bytes));
            let t0 = _mm256_unpacklo_epi32(y0, y1);
            let t2 = _mm256_unpacklo_epi32(y2, y3);
            let mut h = block(seed, _mm256_unpacklo_epi64(t0, t2), over(3));
            if over(4) != 0 {
                h = block(h, _mm256_unpackhi_epi64(t0, t2), over(7));
                if over(8) != 0 {
                    let t1 = _mm256_unpackhi_epi32(y0, y1);
                    let t3 = _mm256_unpackhi_epi32(y2, y3);
                    h = block(h, _mm256_unpacklo_epi64(t1, t3), over(11));
                    if over(12) != 0 {
                        h = block(h, _mm256_unpackhi_epi64(t1, t3), over(15));
                    }
                }
            }
            let h = fmix(_mm256_xor_si256(h, len));
            let pre = _mm256_cmpeq_epi32_mask(len, _mm256_set1_epi32(PRE as i32));
            // SAFETY: as for `at`, for `out`.
            unsafe {
                _mm256_storeu_si256(
                    out.as_mut_ptr().add(g * LANES).cast(),
                    _mm256_mask_blend_epi32(pre, h, seed),
                )
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use crate::features::batch::{CrossPair, MAX_FIELDS};
    use crate::features::hash::{C1, C2, F1, F2, N, hash_scalar};

    /// Events hashed per vector: one per 32-bit lane of a 512-bit register.
    pub(crate) const WIDE: usize = 16;
    /// Groups of four fields, the keys one 64-byte load of `&[u8]` pairs reads.
    const GROUPS: usize = MAX_FIELDS / 4;

    /// Sixteen 32-bit lanes, aligned for aligned 512-bit loads and stores.
    #[derive(Debug, Clone, Copy, Default)]
    #[repr(C, align(64))]
    pub(crate) struct Lanes16(pub(crate) [u32; WIDE]);

    /// The keys of up to sixteen events by field, as [`hash_bytes16`] lays them.
    #[derive(Debug)]
    #[repr(C, align(64))]
    pub(crate) struct Laid16 {
        /// Per field, per event: the key's first 16 bytes, zero padded.
        rows: [[[u8; 16]; WIDE]; MAX_FIELDS],
        /// Per group of four fields, per event: the four (pointer, length) pairs clamped
        /// to 17 and narrowed to bytes; byte `2i + 1` is the length of field `4g + i`
        /// (saturated at 17), the other bytes are zero.
        lens: [[[u8; 8]; WIDE]; GROUPS],
    }

    impl Default for Laid16 {
        fn default() -> Self {
            Laid16 {
                rows: [[[0; 16]; WIDE]; MAX_FIELDS],
                lens: [[[0; 8]; WIDE]; GROUPS],
            }
        }
    }

    /// Whether a `&[u8]` is laid out as its pointer then its length, as [`hash_bytes16`]
    /// reads it. True with every Rust compiler so far, but not promised: checked once.
    pub(crate) fn fat_pointers_are_ptr_len() -> bool {
        let probe: &[u8] = &[0; 3];
        // SAFETY: a `&[u8]` is two words, every bit pattern of which is a valid `usize`;
        // the pointer's provenance is not needed, only its address is compared.
        let words: [usize; 2] = unsafe { std::mem::transmute(probe) };
        words == [probe.as_ptr() as usize, probe.len()]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mix_k(k: __m512i) -> __m512i {
        let k = _mm512_mullo_epi32(k, _mm512_set1_epi32(C1 as i32));
        _mm512_mullo_epi32(_mm512_rol_epi32::<15>(k), _mm512_set1_epi32(C2 as i32))
    }

    /// `rotl(x, 13) * 5 + N`, the multiplication as a shift and an add.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn body(x: __m512i) -> __m512i {
        let r = _mm512_rol_epi32::<13>(x);
        _mm512_add_epi32(
            _mm512_add_epi32(_mm512_slli_epi32::<2>(r), r),
            _mm512_set1_epi32(N as i32),
        )
    }

    /// Mixes a block into every lane: the body round in the lanes of `full`, else the tail
    /// step `h ^ mix_k(k)`, a no-op where the block is zero.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn block(h: __m512i, block: __m512i, full: __mmask16) -> __m512i {
        let x = _mm512_xor_si512(h, mix_k(block));
        _mm512_mask_mov_epi32(x, full, body(x))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fmix(h: __m512i) -> __m512i {
        let h = _mm512_xor_si512(h, _mm512_srli_epi32::<16>(h));
        let h = _mm512_mullo_epi32(h, _mm512_set1_epi32(F1 as i32));
        let h = _mm512_xor_si512(h, _mm512_srli_epi32::<13>(h));
        let h = _mm512_mullo_epi32(h, _mm512_set1_epi32(F2 as i32));
        _mm512_xor_si512(h, _mm512_srli_epi32::<16>(h))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(v: &Lanes16) -> __m512i {
        // SAFETY: `Lanes16` is 64 readable bytes aligned to 64.
        unsafe { _mm512_load_si512(v.0.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(v: __m512i, out: &mut Lanes16) {
        // SAFETY: `Lanes16` is 64 writable bytes aligned to 64.
        unsafe { _mm512_store_si512(out.0.as_mut_ptr().cast(), v) }
    }

    /// Lays out the `n <= 4` keys of group `g` of one event (`event`, all its keys):
    /// their rows into `rows[4g..4g + n][e]` and their lengths into `lens[g][e]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn lay_group(event: &[&[u8]], g: usize, n: usize, e: usize, laid: &mut Laid16) {
        let keys = &event[4 * g..4 * g + n];
        // Bytes 0..16 of each 128-bit lane, the byte positions of a row.
        let iota = _mm512_set4_epi32(0x0f0e_0d0c, 0x0b0a_0908, 0x0706_0504, 0x0302_0100);
        let pairs = ((1u32 << (2 * n)) - 1) as __mmask8;
        // SAFETY: the mask selects the `2n` words of `keys`, `n` `&[u8]` of two words each
        // (`fat_pointers_are_ptr_len`, checked by the caller); the rest is not read.
        let fat = unsafe { _mm512_maskz_loadu_epi64(pairs, keys.as_ptr().cast()) };
        // Lengths clamped to 17 in the odd words, pointers zeroed: the byte at 8 of each
        // 128-bit lane is key `i`'s clamped length, spread over its lane for the compare.
        let lens = _mm512_maskz_min_epu64(0xaa, fat, _mm512_set1_epi64(17));
        let bytes = _mm512_cmplt_epu8_mask(iota, _mm512_shuffle_epi8(lens, _mm512_set1_epi8(8)));
        // SAFETY: `lens[g % GROUPS][e % WIDE]` is 8 writable bytes; no alignment needed.
        unsafe {
            _mm_storel_epi64(
                laid.lens[g % GROUPS][e % WIDE].as_mut_ptr().cast(),
                _mm512_cvtepi64_epi8(lens),
            )
        };
        for (i, key) in keys.iter().enumerate() {
            // SAFETY: the mask selects bytes `0..min(len, 16)` of `key`, all inside the
            // slice; masked-off bytes are neither read nor able to fault.
            let row =
                unsafe { _mm_maskz_loadu_epi8((bytes >> (16 * i)) as u16, key.as_ptr().cast()) };
            let dst = &mut laid.rows[(4 * g + i) % MAX_FIELDS][e % WIDE];
            // SAFETY: `dst` is 16 writable bytes; no alignment requirement.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), row) };
        }
    }

    /// [`super::hash_bytes`] sixteen events at a time: the keys of up to sixteen events
    /// (`keys`, `seeds.len()` per event, event by event; lane `e` is event `e`), laid out
    /// through `laid`. Per field `f`, `hashes[f]` gets the sixteen hashes and `indices[f]`
    /// the masked ones; per cross `c`, `indices[seeds.len() + c]` its sixteen masked
    /// indices. Lanes past the events hash stale rows and are never written out. Returns
    /// the number of events.
    ///
    /// # Safety
    ///
    /// [`fat_pointers_are_ptr_len`] must hold.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub(crate) unsafe fn hash_bytes16(
        seeds: &[u32],
        crosses: &[CrossPair],
        mask: u32,
        keys: &[&[u8]],
        laid: &mut Laid16,
        hashes: &mut [Lanes16],
        indices: &mut [Lanes16],
    ) -> usize {
        let fields = seeds.len().min(MAX_FIELDS);
        let events = keys.len().checked_div(fields).unwrap_or(0).min(WIDE);
        if events == 0 {
            return 0;
        }
        let (whole, rest) = (fields / 4, fields % 4);
        for (e, event) in keys.chunks_exact(fields).take(WIDE).enumerate() {
            for g in 0..whole {
                lay_group(event, g, 4, e, laid);
            }
            if rest != 0 {
                lay_group(event, whole, rest, e, laid);
            }
        }
        let valid = ((1u32 << events) - 1) as __mmask16;
        let m = _mm512_set1_epi32(mask as i32);
        // Dwords 0 and 1 (2 and 3) of rows 0..8 of two vectors of four rows.
        let lo = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
        let hi = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // Byte `4e` of the length vector is byte `8e + 1` of a group's lengths (field 0 of
        // the group; `+ 2i` for field `i`), the other bytes zero (`maskz`, every fourth).
        let first_len = _mm512_set_epi32(
            121, 113, 105, 97, 89, 81, 73, 65, 57, 49, 41, 33, 25, 17, 9, 1,
        );
        let (key_indices, cross_indices) = indices.split_at_mut(fields.min(indices.len()));
        let out = hashes.iter_mut().zip(key_indices.iter_mut());
        for (f, ((&seed, (hash, index)), rows)) in seeds.iter().zip(out).zip(&laid.rows).enumerate()
        {
            let row4 = |i: usize| -> __m512i {
                // SAFETY: rows `4i..4i + 4` are 64 readable bytes, aligned to 64.
                unsafe { _mm512_load_si512(rows[(4 * i) % WIDE].as_ptr().cast()) }
            };
            let (r0, r1, r2, r3) = (row4(0), row4(1), row4(2), row4(3));
            let group = &laid.lens[(f / 4) % GROUPS];
            // SAFETY: events `0..8` and `8..16` of a group's lengths are 64 readable bytes
            // each, aligned to 64.
            let (l0, l1) = unsafe {
                (
                    _mm512_load_si512(group[0].as_ptr().cast()),
                    _mm512_load_si512(group[8].as_ptr().cast()),
                )
            };
            let at = _mm512_add_epi32(first_len, _mm512_set1_epi32(2 * (f % 4) as i32));
            let len = _mm512_maskz_permutex2var_epi8(0x1111_1111_1111_1111, l0, at, l1);
            let over = |bytes: i32| _mm512_cmpgt_epi32_mask(len, _mm512_set1_epi32(bytes));
            let t0 = _mm512_permutex2var_epi32(r0, lo, r1);
            let t1 = _mm512_permutex2var_epi32(r2, lo, r3);
            let mut h = block(
                _mm512_set1_epi32(seed as i32),
                _mm512_permutex2var_epi32(t0, even, t1),
                over(3),
            );
            if over(4) != 0 {
                h = block(h, _mm512_permutex2var_epi32(t0, odd, t1), over(7));
                if over(8) != 0 {
                    let u0 = _mm512_permutex2var_epi32(r0, hi, r1);
                    let u1 = _mm512_permutex2var_epi32(r2, hi, r3);
                    h = block(h, _mm512_permutex2var_epi32(u0, even, u1), over(11));
                    if over(12) != 0 {
                        h = block(h, _mm512_permutex2var_epi32(u0, odd, u1), over(15));
                    }
                }
            }
            h = fmix(_mm512_xor_si512(h, len));
            let long = over(16) & valid;
            if long != 0 {
                let key = |e: usize| keys.get(e * fields + f).copied().unwrap_or_default();
                h = put_back_long(h, long, seed, (0..WIDE).map(key));
            }
            store(h, hash);
            store(_mm512_and_si512(h, m), index);
        }
        let eight = _mm512_set1_epi32(8);
        for (c, index) in crosses.iter().zip(cross_indices.iter_mut()) {
            let (Some(a), Some(b)) = (hashes.get(c.a), hashes.get(c.b)) else {
                continue;
            };
            let h = body(_mm512_xor_si512(
                _mm512_set1_epi32(c.seed as i32),
                mix_k(load(a)),
            ));
            let h = body(_mm512_xor_si512(h, mix_k(load(b))));
            store(_mm512_and_si512(fmix(_mm512_xor_si512(h, eight)), m), index);
        }
        events
    }

    /// `h` with the lanes of `long` (keys over 16 bytes) replaced by the scalar hash of their
    /// key, `keys` being the field's key in each lane.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn put_back_long<'a>(
        h: __m512i,
        long: __mmask16,
        seed: u32,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> __m512i {
        let mut known = Lanes16::default();
        for (e, (key, k)) in keys.zip(known.0.iter_mut()).enumerate() {
            if long & (1 << e) != 0 {
                *k = hash_scalar(seed, key);
            }
        }
        _mm512_mask_blend_epi32(long, h, load(&known))
    }

    /// Writes the indices of the first `events` events from `indices` (one [`Lanes16`] per
    /// key or cross, lane `e` holding event `e`, padded to a multiple of sixteen) into
    /// `out`, `width` per event: 16×16 transposes of the vectors, each row stored with one
    /// masked store of its first `min(16, width - j)` dwords.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn write_rows16(indices: &[Lanes16], width: usize, events: usize, out: &mut [u32]) {
        let events = events
            .min(WIDE)
            .min(out.len().checked_div(width).unwrap_or(0));
        for (g, group) in indices.chunks_exact(WIDE).enumerate() {
            let j = g * WIDE;
            if j >= width {
                break;
            }
            let n = (width - j).min(WIDE);
            let keep = ((1u32 << n) - 1) as __mmask16;
            let r: [__m512i; WIDE] = std::array::from_fn(|i| load(&group[i]));
            // Unpacks within 128-bit lanes, then 128-bit lanes across vectors: row `e` of
            // the result is lane `e` of every input vector.
            let mut t = [_mm512_setzero_si512(); WIDE];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
            }
            let mut u = [_mm512_setzero_si512(); WIDE];
            for k in 0..4 {
                u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
                u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
                u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
                u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
            }
            let mut rows = [_mm512_setzero_si512(); WIDE];
            for k in 0..4 {
                let v0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[k], u[4 + k]);
                let v1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[k], u[4 + k]);
                let w0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + k], u[12 + k]);
                let w1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + k], u[12 + k]);
                rows[k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, w0);
                rows[8 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, w0);
                rows[4 + k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v1, w1);
                rows[12 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v1, w1);
            }
            for (e, row) in rows.iter().enumerate().take(events) {
                let at = e * width + j;
                let Some(dst) = out.get_mut(at..at + n) else {
                    continue;
                };
                // SAFETY: `dst` holds `n` u32; the store writes lanes `0..n` only.
                unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().cast(), keep, *row) };
            }
        }
    }
}
