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
//! On other architectures this module is empty and the featurizer hashes with the scalar
//! reference.

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{MAX_LANES, PRE, cross8, hash_batch, hash_columns, write_rows};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::features::batch::{Columns, CrossPair, LANE_OF, Lanes, PRE as BATCH_PRE, Words};
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
    /// key or cross, lanes in [`LANE_OF`] order, padded to a multiple of eight) into
    /// `out`, `width` per event: eight by eight transposes of the vectors, each row stored
    /// whole, the last `width % 8` of a row with a masked store.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn write_rows(indices: &[Lanes], width: usize, events: usize, out: &mut [u32]) {
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
            for (&row, &event) in rows.iter().zip(&LANE_OF) {
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
