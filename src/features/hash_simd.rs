//! The AVX2 fast path of [`super::hash`]: the keys of ONE event hashed eight at a time, one
//! per 32-bit lane, and its crosses mixed eight at a time.
//!
//! Bit-identical to the scalar reference by construction, and checked so by proptests.
//!
//! # How the keys of an event are hashed
//!
//! The featurizer's walk puts feature `i` of the event in lane `i` of [`Lanes`] (up to
//! [`MAX_LANES`]): its seed, its length and its first 16 bytes, zero padded. The bytes are
//! read from the borrowed key with overlapping fixed-size loads that never leave the key
//! ([`super::hash::small_words`]), so no byte past a key is ever read, whatever buffer it
//! lives in, and written as one 16-byte row (one store, which a later 16-byte load can
//! forward from; several small stores could not). Keys longer than 16 bytes (rare: ids are
//! short) and numeric features, whose hash is their field seed, are lanes whose hash is
//! already known: length [`PRE`], hash in the seed.
//!
//! Hashing loads eight rows, pairs lanes `j` and `j + 4` in one 256-bit register and
//! transposes 4×4 within each 128-bit half, which yields four vectors each holding block `i`
//! of all eight lanes. Each block needed by the event's longest key is mixed in all lanes:
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
pub(crate) use avx2::{Lanes, MAX_LANES, cross8};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::features::hash::{C1, C2, F1, F2, N, hash_scalar, int_words, small_words};

    const LANES: usize = 8;
    /// Most features of one event hashed in lanes; a wider event takes the scalar path.
    pub(crate) const MAX_LANES: usize = 32;
    /// Longest key hashed in lanes; longer ones are hashed by the scalar reference.
    const LANE_KEY_MAX: usize = 16;
    /// Length of a lane whose hash is already known (held in its seed). Negative as an
    /// `i32`, so the signed length compares see no full block in it.
    const PRE: u32 = u32::MAX;

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

    /// The four 4-byte blocks of eight rows, each as one vector holding that block of all
    /// eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(rows: &[__m128i; LANES]) -> [__m256i; 4] {
        // a_j holds lane j in its low half and lane j + 4 in its high half.
        let a0 = _mm256_set_m128i(rows[4], rows[0]);
        let a1 = _mm256_set_m128i(rows[5], rows[1]);
        let a2 = _mm256_set_m128i(rows[6], rows[2]);
        let a3 = _mm256_set_m128i(rows[7], rows[3]);
        let t0 = _mm256_unpacklo_epi32(a0, a1);
        let t1 = _mm256_unpackhi_epi32(a0, a1);
        let t2 = _mm256_unpacklo_epi32(a2, a3);
        let t3 = _mm256_unpackhi_epi32(a2, a3);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }

    /// An all-zero 16-byte row.
    #[inline(always)]
    fn zero128() -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_setzero_si128() }
    }

    /// The features of one event, one per lane, laid out for hashing (see the module docs).
    /// Reused from event to event: lanes past the ones set hold stale but harmless values.
    ///
    /// Each lane is written as two 16-byte rows, each with one store, so that the vector
    /// loads of [`Lanes::hash`] are forwarded from the stores (a vector load of several
    /// scalar stores waits until they reach the cache).
    #[derive(Debug, Clone)]
    #[repr(C, align(32))]
    pub(crate) struct Lanes {
        /// Lane `i`: the first 16 bytes of its key, zero padded.
        rows: [[__m128i; LANES]; MAX_LANES / LANES],
        /// Lane `i`: its seed (or the known hash of a [`PRE`] lane), its key length (or
        /// [`PRE`]), the bits of its value, zero.
        meta: [[__m128i; LANES]; MAX_LANES / LANES],
        /// Hashes of the lanes, once [`Lanes::hash`] ran.
        hashes: [[u32; LANES]; MAX_LANES / LANES],
        /// Values of the lanes, once [`Lanes::hash`] ran.
        values: [[f32; LANES]; MAX_LANES / LANES],
        /// Longest key set since [`Lanes::clear`], at most [`LANE_KEY_MAX`].
        max_len: usize,
    }

    impl Default for Lanes {
        fn default() -> Self {
            Lanes {
                rows: [[zero128(); LANES]; MAX_LANES / LANES],
                meta: [[zero128(); LANES]; MAX_LANES / LANES],
                hashes: [[0; LANES]; MAX_LANES / LANES],
                values: [[0.0; LANES]; MAX_LANES / LANES],
                max_len: 0,
            }
        }
    }

    /// `(lo, hi)` as one 16-byte row.
    #[inline(always)]
    fn row(lo: u64, hi: u64) -> __m128i {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { _mm_set_epi64x(hi as i64, lo as i64) }
    }

    impl Lanes {
        /// Starts a new event.
        #[inline(always)]
        pub(crate) fn clear(&mut self) {
            self.max_len = 0;
        }

        /// Writes lane `lane`; ignored past [`MAX_LANES`].
        #[inline(always)]
        fn set(&mut self, lane: usize, key: __m128i, seed: u32, len: u32, value: f32) {
            let (group, j) = (lane / LANES, lane % LANES);
            if let (Some(r), Some(m)) = (
                self.rows.get_mut(group).and_then(|g| g.get_mut(j)),
                self.meta.get_mut(group).and_then(|g| g.get_mut(j)),
            ) {
                *r = key;
                *m = row(
                    u64::from(seed) | u64::from(len) << 32,
                    u64::from(value.to_bits()),
                );
            }
        }

        /// Lane `lane` hashes `key` with `seed`, value 1.0. Ignored past [`MAX_LANES`].
        #[inline(always)]
        pub(crate) fn set_key(&mut self, lane: usize, seed: u32, key: &[u8]) {
            match small_words(key) {
                Some((lo, hi)) => {
                    self.max_len = self.max_len.max(key.len());
                    self.set(lane, row(lo, hi), seed, key.len() as u32, 1.0);
                }
                None => self.set(lane, zero128(), hash_scalar(seed, key), PRE, 1.0),
            }
        }

        /// Lane `lane` hashes the decimal text of `i` with `seed`, value 1.0, without
        /// writing the text out ([`int_words`]). Ignored past [`MAX_LANES`].
        #[inline(always)]
        pub(crate) fn set_int(&mut self, lane: usize, seed: u32, i: i64) {
            match int_words(i) {
                Some((lo, hi, len)) => {
                    self.max_len = self.max_len.max(len);
                    self.set(lane, row(lo, hi), seed, len as u32, 1.0);
                }
                None => {
                    let hash = hash_scalar(seed, itoa::Buffer::new().format(i).as_bytes());
                    self.set(lane, zero128(), hash, PRE, 1.0);
                }
            }
        }

        /// Lane `lane`'s hash is `hash` (a numeric feature's field seed), with `value`.
        /// Ignored past [`MAX_LANES`].
        #[inline(always)]
        pub(crate) fn set_hash(&mut self, lane: usize, hash: u32, value: f32) {
            self.set(lane, zero128(), hash, PRE, value);
        }

        /// Hashes lanes `0..n` (at most [`MAX_LANES`]) and returns their hashes
        /// (`H(seed, key)` for keys, the given hash for the others) and their values.
        ///
        /// # Safety
        ///
        /// The CPU must support AVX2.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub(crate) unsafe fn hash(&mut self, n: usize) -> (&[u32], &[f32]) {
            let n = n.min(MAX_LANES);
            let blocks = self.max_len.min(LANE_KEY_MAX).div_ceil(4);
            let groups = n.div_ceil(LANES);
            let Lanes {
                rows,
                meta,
                hashes,
                values,
                ..
            } = self;
            let lanes = rows
                .iter()
                .zip(&*meta)
                .zip(hashes.iter_mut())
                .zip(values.iter_mut());
            for (((rows, meta), hashes), values) in lanes.take(groups) {
                let b = transpose(rows);
                let [seeds, len, value, _] = transpose(meta);
                let mut h = seeds;
                for (i, block) in b.iter().enumerate().take(blocks) {
                    h = block_round(h, *block, len, (4 * i + 3) as i32);
                }
                let h = fmix(_mm256_xor_si256(h, len));
                let pre = _mm256_cmpeq_epi32(len, _mm256_set1_epi32(PRE as i32));
                store8(_mm256_blendv_epi8(h, seeds, pre), hashes);
                // SAFETY: `values` is 32 writable bytes; `storeu` has no alignment
                // requirement.
                unsafe { _mm256_storeu_si256(values.as_mut_ptr().cast(), value) };
            }
            (
                self.hashes.as_flattened().get(..n).unwrap_or(&[]),
                self.values.as_flattened().get(..n).unwrap_or(&[]),
            )
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
