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
pub(crate) use avx2::{MAX_LANES, PRE, cross8, hash_columns};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

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
}
