//! The AVX2 fast path of [`super::hash`]: eight keys hashed at once, one per 32-bit lane.
//!
//! Bit-identical to the scalar reference by construction, and checked so by proptests.
//!
//! # How a group of eight keys is hashed
//!
//! Keys come from a [`KeyBatch`], where each key starts 16-byte aligned and is zero padded
//! to a multiple of 16. A group walks the keys in 16-byte chunks: it loads one chunk per
//! lane (zeros for lanes whose key is already done), pairs lanes `j` and `j + 4` into one
//! 256-bit register and transposes 4×4 within each 128-bit half, which yields four vectors
//! each holding block `i` of all eight lanes. Each block is then mixed in all lanes:
//!
//! - lanes with a full block at `i` (`len >= 4i + 4`) take the body round;
//! - a lane whose 1–3 byte tail is block `i` takes the tail step `h ^= k`; its padding
//!   bytes are zero, exactly the zero-extended tail the scalar code builds;
//! - lanes that are done see an all-zero block, and `mix_k(0) = 0`, so `h ^= k` leaves
//!   them unchanged.
//!
//! So one `blendv` between `h ^ k` and the full round handles every lane, with no per-lane
//! scalar tail. Length xor and `fmix32` finish all lanes at once. On other architectures
//! this module is empty and the scalar reference is used.

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{cross_batch_avx2, hash_batch_avx2, hash_grid_avx2};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::features::grid::{GRID_LANES, KeyGrid, Row};
    use crate::features::hash::{C1, C2, F1, F2, KEY_ALIGN, KeyBatch, N, cross_mix, hash_scalar};

    const LANES: usize = 8;
    /// Longest key hashed in lanes; lengths then fit the signed 32-bit compares.
    const MAX_SIMD_KEY: usize = 1 << 30;

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
    fn store8(v: __m256i) -> [u32; LANES] {
        let mut out = [0u32; LANES];
        // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }

    /// Chunk `chunk` (16 bytes) of key `key` of `batch`, or zeros if there is no such key or
    /// the key ends before the chunk.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_chunk(batch: &KeyBatch, key: usize, chunk: usize) -> __m128i {
        let (Some(&offset), Some(&len)) = (batch.offsets.get(key), batch.lens.get(key)) else {
            return _mm_setzero_si128();
        };
        // Every key owns its first chunk, even an empty one (zeros), so chunk 0 is always
        // loaded; a later chunk only while the key lasts, since after it come other keys.
        if chunk == 0 || chunk * KEY_ALIGN < len {
            let at = offset + chunk * KEY_ALIGN;
            if let Some(src) = batch.bytes.get(at..at + KEY_ALIGN) {
                // SAFETY: `src` is exactly 16 readable bytes; `loadu` has no alignment
                // requirement.
                return unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
            }
        }
        _mm_setzero_si128()
    }

    /// Eight lanes of `v` starting at `base`, zeros past its end.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(v: &[u32], base: usize) -> __m256i {
        match v.get(base..base + LANES) {
            Some(full) => {
                // SAFETY: `full` is 8 readable u32; `loadu` has no alignment requirement.
                unsafe { _mm256_loadu_si256(full.as_ptr().cast()) }
            }
            None => {
                let mut padded = [0u32; LANES];
                let rest = v.get(base..).unwrap_or(&[]);
                for (p, &x) in padded.iter_mut().zip(rest) {
                    *p = x;
                }
                load8(&padded)
            }
        }
    }

    /// Hashes `G` groups of eight keys starting at key `base` (lanes past the end of the
    /// batch are computed on zeros and ignored). The groups are interleaved so that their
    /// multiply chains overlap.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hash_groups<const G: usize>(batch: &KeyBatch, base: usize, max_len: usize) -> [__m256i; G] {
        let mut h = [_mm256_setzero_si256(); G];
        let mut len_v = h;
        for g in 0..G {
            h[g] = lanes(&batch.seeds, base + g * LANES);
            len_v[g] = lanes(&batch.lens32, base + g * LANES);
        }
        let chunks = max_len.div_ceil(KEY_ALIGN).max(1);
        for chunk in 0..chunks {
            let mut blocks = [[h[0]; 4]; G];
            for (g, group) in blocks.iter_mut().enumerate() {
                // SAFETY: this function is only compiled for and run on AVX2.
                *group = unsafe { transpose(batch, base + g * LANES, chunk) };
            }
            let first = chunk * (KEY_ALIGN / 4);
            let in_chunk = (max_len.saturating_sub(chunk * KEY_ALIGN))
                .div_ceil(4)
                .min(4);
            for b in 0..in_chunk {
                let i = first + b;
                let limit = _mm256_set1_epi32((4 * i + 3) as i32);
                for ((h, group), len) in h.iter_mut().zip(&blocks).zip(&len_v) {
                    *h = block_round(*h, group[b], *len, limit);
                }
            }
        }
        for g in 0..G {
            h[g] = fmix(_mm256_xor_si256(h[g], len_v[g]));
        }
        h
    }

    /// The four 4-byte blocks of chunk `chunk` of keys `key..key + 8`, each as one vector
    /// holding that block of all eight lanes.
    ///
    /// Not a `#[target_feature]` function so that it can be `#[inline(always)]` into
    /// [`hash_groups`]: the shuffle chain is short and a call would cost as much.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 (it is only called from AVX2 functions).
    #[inline(always)]
    unsafe fn transpose(batch: &KeyBatch, key: usize, chunk: usize) -> [__m256i; 4] {
        // SAFETY (every intrinsic below): the caller guarantees AVX2, which implies SSE2.
        let mut rows = [unsafe { _mm_setzero_si128() }; LANES];
        match batch.offsets.get(key..key + LANES) {
            // The common case, a full group's first chunk: every key owns it, no length test.
            Some(offsets) if chunk == 0 => {
                for (row, &at) in rows.iter_mut().zip(offsets) {
                    if let Some(src) = batch.bytes.get(at..at + KEY_ALIGN) {
                        // SAFETY: `src` is exactly 16 readable bytes; `loadu` has no
                        // alignment requirement.
                        *row = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
                    }
                }
            }
            _ => {
                for (lane, row) in rows.iter_mut().enumerate() {
                    *row = unsafe { load_chunk(batch, key + lane, chunk) };
                }
            }
        }
        let row = |lane: usize| rows[lane];
        // a_j holds lane j in its low half and lane j + 4 in its high half.
        let a0 = unsafe { _mm256_set_m128i(row(4), row(0)) };
        let a1 = unsafe { _mm256_set_m128i(row(5), row(1)) };
        let a2 = unsafe { _mm256_set_m128i(row(6), row(2)) };
        let a3 = unsafe { _mm256_set_m128i(row(7), row(3)) };
        let t0 = unsafe { _mm256_unpacklo_epi32(a0, a1) };
        let t1 = unsafe { _mm256_unpackhi_epi32(a0, a1) };
        let t2 = unsafe { _mm256_unpacklo_epi32(a2, a3) };
        let t3 = unsafe { _mm256_unpackhi_epi32(a2, a3) };
        [
            unsafe { _mm256_unpacklo_epi64(t0, t2) },
            unsafe { _mm256_unpackhi_epi64(t0, t2) },
            unsafe { _mm256_unpacklo_epi64(t1, t3) },
            unsafe { _mm256_unpackhi_epi64(t1, t3) },
        ]
    }

    /// Mixes block `i` into every lane: the body round where the lane has a full block
    /// (`len > limit = 4i + 3`), else the tail step `h ^ k`, which is a no-op for lanes that
    /// are done (their block is zero).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn block_round(h: __m256i, block: __m256i, len: __m256i, limit: __m256i) -> __m256i {
        let k = mix_k(block);
        let full = _mm256_cmpgt_epi32(len, limit);
        _mm256_blendv_epi8(_mm256_xor_si256(h, k), round_mixed(h, k), full)
    }

    /// [`crate::features::hash::hash_batch`] on AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hash_batch_avx2(batch: &KeyBatch, out: &mut Vec<u32>) {
        let n = batch.len();
        out.clear();
        out.resize(n, 0);
        let mut base = 0;
        while base < n {
            let end = (base + 2 * LANES).min(n);
            let max_len = batch
                .lens
                .get(base..end)
                .map_or(0, |l| l.iter().fold(0, |m, &len| m.max(len)));
            if max_len > MAX_SIMD_KEY {
                // Such keys never come from events; the reference handles them exactly.
                for (i, o) in out.iter_mut().enumerate().take(end).skip(base) {
                    *o = batch.get(i).map_or(0, |(s, k)| hash_scalar(s, k));
                }
                base = end;
            } else if n - base > LANES {
                let [a, b] = hash_groups::<2>(batch, base, max_len);
                store(out, base, a);
                store(out, base + LANES, b);
                base += 2 * LANES;
            } else {
                let [a] = hash_groups::<1>(batch, base, max_len);
                store(out, base, a);
                base += LANES;
            }
        }
    }

    /// Writes the lanes of `v` to `out[base..]`, as many as fit.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(out: &mut [u32], base: usize, v: __m256i) {
        match out.get_mut(base..base + LANES) {
            // SAFETY: `dst` is 8 writable u32; `storeu` has no alignment requirement.
            Some(dst) => unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) },
            None => {
                let lanes = store8(v);
                let dst = out.get_mut(base..).unwrap_or(&mut []);
                for (d, &x) in dst.iter_mut().zip(&lanes) {
                    *d = x;
                }
            }
        }
    }

    /// Hashes one grid row: its blocks while some lane's key reaches them, then the length
    /// and the finalizer. A long key's lane (length [`crate::features::grid::LONG`], negative as `i32`) computes
    /// garbage that the caller replaces.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hash_row(row: &Row) -> __m256i {
        let len = load8(&row.lens);
        let mut h = load8(&row.seeds);
        for (i, block) in row.blocks.iter().enumerate() {
            if _mm256_movemask_epi8(_mm256_cmpgt_epi32(len, _mm256_set1_epi32(4 * i as i32))) == 0 {
                break;
            }
            let limit = _mm256_set1_epi32((4 * i + 3) as i32);
            h = block_round(h, load8(block), len, limit);
        }
        fmix(_mm256_xor_si256(h, len))
    }

    /// [`crate::features::hash::hash_grid`] on AVX2, except for the long keys, which the
    /// caller patches in. Rows are block-major already: one load per block, no transpose.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hash_grid_avx2(grid: &KeyGrid, out: &mut Vec<u32>) {
        const _: () = assert!(GRID_LANES == LANES);
        out.clear();
        out.resize(grid.len(), 0);
        for (row, dst) in grid.rows().iter().zip(out.chunks_exact_mut(LANES)) {
            let h = hash_row(row);
            // SAFETY: `dst` is 8 writable u32; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) };
        }
    }

    /// [`crate::features::hash::cross_batch`] on AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn cross_batch_avx2(seeds: &[u32], a: &[u32], b: &[u32], out: &mut Vec<u32>) {
        out.clear();
        let n = seeds.len().min(a.len()).min(b.len());
        let (seeds, a, b) = (&seeds[..n], &a[..n], &b[..n]);
        let full = n - n % LANES;
        for base in (0..full).step_by(LANES) {
            let h = round_mixed(lanes(seeds, base), mix_k(lanes(a, base)));
            let h = round_mixed(h, mix_k(lanes(b, base)));
            let h = fmix(_mm256_xor_si256(h, _mm256_set1_epi32(8)));
            out.extend_from_slice(&store8(h));
        }
        // Fewer than eight left (a typical event has three crosses): padding them into a
        // vector costs more (store-forwarding stalls) than mixing them one by one.
        for ((&s, &x), &y) in seeds[full..].iter().zip(&a[full..]).zip(&b[full..]) {
            out.push(cross_mix(s, x, y));
        }
    }
}
