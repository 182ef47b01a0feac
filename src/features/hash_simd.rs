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
pub(crate) use avx2::{cross_batch_avx2, hash_batch_avx2};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::features::hash::{C1, C2, F1, F2, KEY_ALIGN, KeyBatch, N, hash_scalar};

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

    /// Chunk `chunk` (16 bytes) of lane key `(offset, len)`, or zeros if the key ends before.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_chunk(bytes: &[u8], offset: usize, len: usize, chunk: usize) -> __m128i {
        let at = offset + chunk * KEY_ALIGN;
        if chunk * KEY_ALIGN < len {
            if let Some(src) = bytes.get(at..at + KEY_ALIGN) {
                // SAFETY: `src` is exactly 16 readable bytes; `loadu` has no alignment
                // requirement.
                return unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
            }
        }
        _mm_setzero_si128()
    }

    /// Hashes keys `base..base + n` of `batch` (`1 <= n <= 8`) and returns the eight lanes;
    /// only the first `n` are meaningful.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hash_group(batch: &KeyBatch, base: usize, n: usize) -> [u32; LANES] {
        let mut seeds = [0u32; LANES];
        let mut lens = [0u32; LANES];
        let mut offsets = [0usize; LANES];
        let mut lens_full = [0usize; LANES];
        let mut max_len = 0usize;
        for lane in 0..n {
            let i = base + lane;
            let (Some(&seed), Some(&offset), Some(&len)) =
                (batch.seeds.get(i), batch.offsets.get(i), batch.lens.get(i))
            else {
                break;
            };
            seeds[lane] = seed;
            // Truncation is the reference's `len as u32`; comparisons use `lens_full`.
            lens[lane] = len as u32;
            offsets[lane] = offset;
            lens_full[lane] = len;
            max_len = max_len.max(len);
        }
        if max_len > MAX_SIMD_KEY {
            // Such keys never come from events; the reference handles them exactly.
            let mut out = [0u32; LANES];
            for (lane, o) in out.iter_mut().enumerate().take(n) {
                *o = batch.get(base + lane).map_or(0, |(s, k)| hash_scalar(s, k));
            }
            return out;
        }
        let mut h = load8(&seeds);
        let len_v = load8(&lens);
        let chunks = max_len.div_ceil(KEY_ALIGN);
        for chunk in 0..chunks {
            let row = |lane: usize| load_chunk(&batch.bytes, offsets[lane], lens_full[lane], chunk);
            // a_j holds lane j in its low half and lane j + 4 in its high half.
            let a0 = _mm256_set_m128i(row(4), row(0));
            let a1 = _mm256_set_m128i(row(5), row(1));
            let a2 = _mm256_set_m128i(row(6), row(2));
            let a3 = _mm256_set_m128i(row(7), row(3));
            let t0 = _mm256_unpacklo_epi32(a0, a1);
            let t1 = _mm256_unpackhi_epi32(a0, a1);
            let t2 = _mm256_unpacklo_epi32(a2, a3);
            let t3 = _mm256_unpackhi_epi32(a2, a3);
            let blocks = [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ];
            let first = chunk * (KEY_ALIGN / 4);
            let in_chunk = (max_len - chunk * KEY_ALIGN).div_ceil(4).min(4);
            for (b, &block) in blocks.iter().enumerate().take(in_chunk) {
                let i = first + b;
                // Lanes holding a full block `i`: len > 4i + 3 (no wrap: max_len is bounded).
                let full = _mm256_cmpgt_epi32(len_v, _mm256_set1_epi32((4 * i + 3) as i32));
                let k = mix_k(block);
                let tail = _mm256_xor_si256(h, k);
                h = _mm256_blendv_epi8(tail, round_mixed(h, k), full);
            }
        }
        let h = _mm256_xor_si256(h, len_v);
        store8(fmix(h))
    }

    /// [`crate::features::hash::hash_batch`] on AVX2.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn hash_batch_avx2(batch: &KeyBatch, out: &mut Vec<u32>) {
        out.clear();
        let n = batch.len();
        let mut base = 0;
        while base < n {
            let lanes = (n - base).min(LANES);
            let h = hash_group(batch, base, lanes);
            out.extend_from_slice(&h[..lanes]);
            base += lanes;
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
        for ((s, x), y) in seeds[..n]
            .chunks(LANES)
            .zip(a[..n].chunks(LANES))
            .zip(b[..n].chunks(LANES))
        {
            // Short groups (a typical event has three crosses) are zero padded.
            let pad = |v: &[u32]| {
                let mut lanes = [0u32; LANES];
                lanes[..v.len()].copy_from_slice(v);
                load8(&lanes)
            };
            let h = round_mixed(pad(s), mix_k(pad(x)));
            let h = round_mixed(h, mix_k(pad(y)));
            let h = fmix(_mm256_xor_si256(h, _mm256_set1_epi32(8)));
            out.extend_from_slice(&store8(h)[..s.len()]);
        }
    }
}
