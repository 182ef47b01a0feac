//! Feature hashing: the scalar reference, which is the specification.
//!
//! # The contract
//!
//! Every hashed index the model has ever seen depends on this spec, so it never changes
//! without a model reset. The SIMD path ([`super::hash_simd`]) must be bit-identical to it.
//!
//! - **Hash function.** `H(seed, bytes)` is MurmurHash3 x86_32 (Austin Appleby's public
//!   algorithm, re-implemented here): little-endian 4-byte blocks
//!   `k = rotl(k * 0xcc9e2d51, 15) * 0x1b873593; h = rotl(h ^ k, 13) * 5 + 0xe6546b64`;
//!   a 1–3 byte tail is read little-endian, mixed the same way into `k` and xored into `h`;
//!   then `h ^= len as u32` and the `fmix32` finalizer
//!   (`h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16`).
//!   All arithmetic wraps.
//! - **Field seeds.** The top-level fields (`bias`, `user`, `item`) have seed
//!   `H(TOP_DOMAIN, name)`; a `ctx` field has seed `H(CTX_DOMAIN, name)`, so a `ctx` field
//!   called `user` is not the top-level `user`. Seeds are computed once, when the featurizer
//!   is built (or the first time it sees a `ctx` field name).
//! - **Categorical features.** The value hash is `H(field_seed, value)`, so equal values in
//!   different fields differ on purpose. Strings hash their UTF-8 bytes; categorical
//!   numbers hash the decimal text of their integer (`3`, `-12`), bucket indices likewise —
//!   so the number `3` and the string `"3"` in the same field are the same feature.
//!   Value `1.0`.
//! - **Numeric features** (`raw`, `log1p`, and the bias with value `1.0`): the hash is the
//!   field seed itself; the feature carries the transformed value.
//! - **Crosses** `[a, b]`: with per-cross seed `cs = M(CROSS_DOMAIN, seed_a, seed_b)`, the
//!   hash is `M(cs, value_hash_a, value_hash_b)`, where `M(s, x, y)` is `H(s, le(x) ‖ le(y))`
//!   — two full MurmurHash3 block rounds then the finalizer with length 8 ([`cross_mix`]).
//!   Value `1.0`.
//! - **Index** = hash `& (2^bits − 1)`.

use super::grid::{KeyGrid, hash_grid_scalar};
#[cfg(target_arch = "x86_64")]
use super::hash_simd;

/// Seed domain of the top-level field names (`bias`, `user`, `item`).
pub const TOP_DOMAIN: u32 = 0x746f_7031;
/// Seed domain of `ctx` field names.
pub const CTX_DOMAIN: u32 = 0x6374_7831;
/// Seed domain of cross seeds.
pub const CROSS_DOMAIN: u32 = 0x6372_6f31;

pub(crate) const C1: u32 = 0xcc9e_2d51;
pub(crate) const C2: u32 = 0x1b87_3593;
pub(crate) const N: u32 = 0xe654_6b64;
pub(crate) const F1: u32 = 0x85eb_ca6b;
pub(crate) const F2: u32 = 0xc2b2_ae35;

#[inline(always)]
fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline(always)]
fn round(h: u32, k: u32) -> u32 {
    (h ^ mix_k(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(N)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(F1);
    h ^= h >> 13;
    h = h.wrapping_mul(F2);
    h ^ (h >> 16)
}

/// `H(seed, bytes)`: MurmurHash3 x86_32 of `bytes` with `seed`.
#[inline]
pub fn hash_scalar(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = seed;
    let mut blocks = bytes.chunks_exact(4);
    for b in &mut blocks {
        h = round(h, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &byte) in tail.iter().enumerate() {
            k |= u32::from(byte) << (8 * i);
        }
        h ^= mix_k(k);
    }
    // The length is mixed in modulo 2^32, as in the reference algorithm.
    fmix(h ^ bytes.len() as u32)
}

/// `M(seed, a, b)` = `H(seed, le(a) ‖ le(b))`: mixes two hashes into one, for crosses.
#[inline]
pub fn cross_mix(seed: u32, a: u32, b: u32) -> u32 {
    fmix(round(round(seed, a), b) ^ 8)
}

/// Seed of a top-level field (`bias`, `user`, `item`).
pub fn top_seed(name: &str) -> u32 {
    hash_scalar(TOP_DOMAIN, name.as_bytes())
}

/// Seed of a `ctx` field.
pub fn ctx_seed(name: &str) -> u32 {
    hash_scalar(CTX_DOMAIN, name.as_bytes())
}

/// Seed of the cross of the fields with seeds `a` and `b` (order matters).
pub fn cross_seed(a: u32, b: u32) -> u32 {
    cross_mix(CROSS_DOMAIN, a, b)
}

/// Which hashing implementation to run. Only [`Backend::detect`] can pick a SIMD one, and
/// only after checking that the CPU has it, which is what makes calling it sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Backend {
    /// The scalar reference.
    pub const fn scalar() -> Self {
        Backend(Kind::Scalar)
    }

    /// The fastest implementation this CPU supports. Detection is cheap but not free: call
    /// once and keep the result.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            return Backend(Kind::Avx2);
        }
        Backend::scalar()
    }

    /// Whether this is a SIMD implementation.
    pub fn is_simd(self) -> bool {
        self.0 != Kind::Scalar
    }

    /// A short name for logs and benches.
    pub fn name(self) -> &'static str {
        match self.0 {
            Kind::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => "avx2",
        }
    }
}

/// Byte alignment and zero padding of each key in a [`KeyBatch`]: the SIMD path loads keys
/// 16 bytes at a time and relies on the bytes after a key, up to the next multiple of 16,
/// being zero. Every key, even an empty one, owns at least one such 16-byte chunk.
pub const KEY_ALIGN: usize = 16;

/// A batch of keys to hash, each with its own seed, stored in one reusable buffer.
///
/// Each key starts at a multiple of [`KEY_ALIGN`] and is followed by zeros up to the next
/// one (a whole chunk of zeros for an empty key). Clearing keeps the capacity, so a reused
/// batch stops allocating once warm.
#[derive(Debug, Clone, Default)]
pub struct KeyBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) offsets: Vec<usize>,
    pub(crate) lens: Vec<usize>,
    /// `len as u32`, as the hash mixes it in.
    pub(crate) lens32: Vec<u32>,
    pub(crate) seeds: Vec<u32>,
}

impl KeyBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every key, keeping the capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.offsets.clear();
        self.lens.clear();
        self.lens32.clear();
        self.seeds.clear();
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Whether the batch has no keys.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    /// Appends `key` with `seed`; returns its position in the batch.
    #[inline]
    pub fn push(&mut self, seed: u32, key: &[u8]) -> usize {
        let offset = self.bytes.len();
        if let Some(chunk) = small_chunk(key) {
            // A fixed-size append: no memcpy/memset calls for the typical short key.
            self.bytes.extend_from_slice(&chunk);
        } else {
            self.bytes.extend_from_slice(key);
            let padded = self.bytes.len().next_multiple_of(KEY_ALIGN);
            self.bytes.resize(padded, 0);
        }
        self.offsets.push(offset);
        self.lens.push(key.len());
        self.lens32.push(key.len() as u32);
        self.seeds.push(seed);
        self.seeds.len() - 1
    }

    /// Appends the decimal text of `n` with `seed` (no allocation beyond the batch's own).
    pub fn push_int(&mut self, seed: u32, n: i64) -> usize {
        self.push(seed, itoa::Buffer::new().format(n).as_bytes())
    }

    /// The seed and bytes of key `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<(u32, &[u8])> {
        let (&seed, &offset, &len) = (self.seeds.get(i)?, self.offsets.get(i)?, self.lens.get(i)?);
        Some((seed, self.bytes.get(offset..offset + len)?))
    }
}

/// A key of at most 16 bytes, zero padded to 16; `None` for longer keys. Reads the key with
/// overlapping fixed-size loads instead of a variable-length copy.
#[inline(always)]
fn small_chunk(key: &[u8]) -> Option<[u8; KEY_ALIGN]> {
    let (lo, hi) = small_words(key)?;
    let mut chunk = [0u8; KEY_ALIGN];
    chunk[..8].copy_from_slice(&lo.to_le_bytes());
    chunk[8..].copy_from_slice(&hi.to_le_bytes());
    Some(chunk)
}

/// A key of at most 16 bytes as two little-endian words, zero padded: bytes `0..8` and
/// `8..16`; `None` for longer keys. Overlapping fixed-size loads, no variable-length copy.
#[inline(always)]
pub(crate) fn small_words(key: &[u8]) -> Option<(u64, u64)> {
    let len = key.len();
    let word = |at: usize| -> u64 {
        let mut w = [0u8; 8];
        if let Some(src) = key.get(at..at + 8) {
            w.copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    };
    let half = |at: usize| -> u64 {
        let mut w = [0u8; 4];
        if let Some(src) = key.get(at..at + 4) {
            w.copy_from_slice(src);
        }
        u64::from(u32::from_le_bytes(w))
    };
    let byte = |at: usize| -> u64 { key.get(at).map_or(0, |&b| u64::from(b)) };
    Some(match len {
        0 => (0, 0),
        // First, middle and last byte; for 1 or 2 bytes some coincide, and or-ing the same
        // byte into the same place twice is harmless.
        1..=3 => (
            byte(0) | (byte(len / 2) << (8 * (len / 2))) | (byte(len - 1) << (8 * (len - 1))),
            0,
        ),
        // Bytes [len-4, len) shifted so that the overlap with [0, 4) drops out.
        4..=8 => (half(0) | (half(len - 4) << (8 * (len - 4))), 0),
        9..=16 => (word(0), word(len - 8) >> (8 * (16 - len))),
        _ => return None,
    })
}

/// Hashes every key of `batch` with the scalar reference: `out[i] = H(seed_i, key_i)`.
pub fn hash_batch_scalar(batch: &KeyBatch, out: &mut Vec<u32>) {
    out.clear();
    out.extend((0..batch.len()).map(|i| match batch.get(i) {
        Some((seed, key)) => hash_scalar(seed, key),
        // Unreachable: the batch's vectors always have equal lengths.
        None => 0,
    }));
}

/// Hashes every key of `batch` with `backend`: `out[i] = H(seed_i, key_i)`, bit-identical
/// whatever the backend.
pub fn hash_batch(backend: Backend, batch: &KeyBatch, out: &mut Vec<u32>) {
    match backend.0 {
        Kind::Scalar => hash_batch_scalar(batch, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kind::Avx2` is only constructed by `Backend::detect` after
        // `is_x86_feature_detected!("avx2")` returned true.
        Kind::Avx2 => unsafe { hash_simd::hash_batch_avx2(batch, out) },
    }
}

/// Hashes every position of `grid` with `backend`: `out[p] = H(seed_p, key_p)`,
/// bit-identical whatever the backend; `out.len()` becomes [`KeyGrid::len`].
pub fn hash_grid(backend: Backend, grid: &KeyGrid, out: &mut Vec<u32>) {
    match backend.0 {
        Kind::Scalar => hash_grid_scalar(grid, out),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => {
            // SAFETY: as in `hash_batch`, AVX2 was detected.
            unsafe { hash_simd::hash_grid_avx2(grid, out) };
            grid.patch_long(out);
        }
    }
}

/// Cross mixes with the scalar reference: `out[i] = M(seeds[i], a[i], b[i])`, over the
/// shortest of the three inputs.
pub fn cross_batch_scalar(seeds: &[u32], a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    out.clear();
    out.extend(
        seeds
            .iter()
            .zip(a)
            .zip(b)
            .map(|((&s, &a), &b)| cross_mix(s, a, b)),
    );
}

/// Cross mixes with `backend`: `out[i] = M(seeds[i], a[i], b[i])`, over the shortest of the
/// three inputs, bit-identical whatever the backend.
pub fn cross_batch(backend: Backend, seeds: &[u32], a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    match backend.0 {
        Kind::Scalar => cross_batch_scalar(seeds, a, b, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `hash_batch`, AVX2 was detected.
        Kind::Avx2 => unsafe { hash_simd::cross_batch_avx2(seeds, a, b, out) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_murmur3_vectors() {
        // Test vectors of MurmurHash3_x86_32 from SMHasher's verification set.
        assert_eq!(hash_scalar(0, b""), 0);
        assert_eq!(hash_scalar(1, b""), 0x514e_28b7);
        assert_eq!(hash_scalar(0xffff_ffff, b""), 0x81f1_6f39);
        assert_eq!(hash_scalar(0, &[0, 0, 0, 0]), 0x2362_f9de);
        assert_eq!(hash_scalar(0x9747_b28c, b"aaaa"), 0x5a97_808a);
        assert_eq!(hash_scalar(0x9747_b28c, b"aaa"), 0x283e_0130);
        assert_eq!(hash_scalar(0x9747_b28c, b"aa"), 0x5d21_1726);
        assert_eq!(hash_scalar(0x9747_b28c, b"a"), 0x7fa0_9ea6);
        assert_eq!(hash_scalar(0x9747_b28c, b"Hello, world!"), 0x2488_4cba);
        assert_eq!(
            hash_scalar(0x9747_b28c, b"The quick brown fox jumps over the lazy dog"),
            0x2fa8_26cd
        );
    }

    #[test]
    fn cross_mix_is_hash_of_the_two_words() {
        let (s, a, b): (u32, u32, u32) = (0xdead_beef, 0x0123_4567, 0x89ab_cdef);
        let mut bytes = a.to_le_bytes().to_vec();
        bytes.extend_from_slice(&b.to_le_bytes());
        assert_eq!(cross_mix(s, a, b), hash_scalar(s, &bytes));
        assert_ne!(cross_mix(s, a, b), cross_mix(s, b, a));
    }

    #[test]
    fn small_chunk_is_the_zero_padded_key() {
        let key: Vec<u8> = (1..=17).collect();
        for len in 0..=16 {
            let mut want = [0u8; KEY_ALIGN];
            want[..len].copy_from_slice(&key[..len]);
            assert_eq!(small_chunk(&key[..len]), Some(want), "len {len}");
        }
        assert_eq!(small_chunk(&key), None);
    }

    #[test]
    fn key_batch_pads_and_reads_back() {
        let mut batch = KeyBatch::new();
        assert_eq!(batch.push(7, b"abc"), 0);
        assert_eq!(batch.push_int(8, -42), 1);
        assert_eq!(batch.push(9, b""), 2);
        assert_eq!(batch.get(1), Some((8, &b"-42"[..])));
        assert_eq!(batch.get(2), Some((9, &b""[..])));
        assert_eq!(batch.get(3), None);
        assert_eq!(
            batch.bytes.len(),
            3 * KEY_ALIGN,
            "even an empty key owns a chunk"
        );
        assert!(batch.bytes[3..16].iter().all(|&b| b == 0));
        let mut out = Vec::new();
        hash_batch_scalar(&batch, &mut out);
        assert_eq!(
            out,
            [
                hash_scalar(7, b"abc"),
                hash_scalar(8, b"-42"),
                hash_scalar(9, b"")
            ]
        );
    }
}
