//! Feature hashing: the scalar reference, which is the specification.
//!
//! # The contract
//!
//! Every hashed index the model has ever seen depends on this spec, so it never changes
//! without a model reset. The SIMD path (`hash_simd`) must be bit-identical to it.
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
    /// AVX2 plus AVX-512 F, BW and VL: byte-masked loads read a short key straight from its
    /// slice (no scalar layout), rotates and masked blends are one instruction each.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Backend {
    /// The scalar reference.
    pub const fn scalar() -> Self {
        Backend(Kind::Scalar)
    }

    /// The fastest implementation this CPU supports. Detection is cheap but not free: call
    /// once and keep the result.
    pub fn detect() -> Self {
        Self::available().last().unwrap_or(Backend::scalar())
    }

    /// Every implementation this CPU supports, the scalar reference first and the fastest
    /// last: for tests and benches that compare them.
    pub fn available() -> impl Iterator<Item = Backend> {
        let mut all = vec![Backend::scalar()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            all.push(Backend(Kind::Avx2));
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
            {
                all.push(Backend(Kind::Avx512));
            }
        }
        all.into_iter()
    }

    /// Whether this implementation has the AVX-512 (F, BW, VL) kernels; every SIMD backend
    /// has the AVX2 ones.
    pub fn is_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.0 == Kind::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        false
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
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => "avx512",
        }
    }
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

/// `H(seed, key)` for a key of `len <= 16` bytes given as its [`small_words`] `(lo, hi)`:
/// the same hash as [`hash_scalar`], without a loop over the bytes. Each of the four blocks
/// takes the body round if it is full, else the tail step `h ^= mix_k(k)`, which is a
/// no-op for the all-zero blocks past the key (`mix_k(0) = 0`).
#[inline(always)]
pub(crate) fn hash_words(seed: u32, lo: u64, hi: u64, len: usize) -> u32 {
    #[inline(always)]
    fn step(h: u32, k: u32, full: bool) -> u32 {
        let k = mix_k(k);
        let round = (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(N);
        if full { round } else { h ^ k }
    }
    let mut h = step(seed, lo as u32, len >= 4);
    h = step(h, (lo >> 32) as u32, len >= 8);
    if len > 8 {
        h = step(h, hi as u32, len >= 12);
        h = step(h, (hi >> 32) as u32, len >= 16);
    }
    fmix(h ^ len as u32)
}

/// The decimal text of `i`, exactly as the contract hashes a categorical integer (`-` then
/// the digits, no leading zeros: what `itoa` writes), as the two zero-padded words of
/// [`small_words`] and its length, computed from the value without a text buffer; `None`
/// when the text is longer than 16 bytes (`i >= 10^16` or `i <= -10^15`).
#[inline(always)]
pub(crate) fn int_words(i: i64) -> Option<(u64, u64, usize)> {
    let mut u = i.unsigned_abs();
    let max = if i < 0 {
        1_000_000_000_000_000
    } else {
        10_000_000_000_000_000
    };
    if u >= max {
        return None;
    }
    // Digits from the least significant up, each shifted in below the previous ones: the
    // most significant digit ends in the lowest byte, the first of the text.
    let (mut w, mut len) = (0u128, 0usize);
    loop {
        w = (w << 8) | u128::from(b'0' + (u % 10) as u8);
        len += 1;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if i < 0 {
        w = (w << 8) | u128::from(b'-');
        len += 1;
    }
    Some((w as u64, (w >> 64) as u64, len))
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
    fn small_words_are_the_zero_padded_key() {
        let key: Vec<u8> = (1..=17).collect();
        for len in 0..=16 {
            let mut want = [0u8; 16];
            want[..len].copy_from_slice(&key[..len]);
            let lo = u64::from_le_bytes(want[..8].try_into().unwrap());
            let hi = u64::from_le_bytes(want[8..].try_into().unwrap());
            assert_eq!(small_words(&key[..len]), Some((lo, hi)), "len {len}");
        }
        assert_eq!(small_words(&key), None);
    }

    #[test]
    fn int_words_are_the_decimal_text() {
        let edges = [0, 1, -1, 9, 10, -10, 99, 100, 12345, -987_654_321];
        let bounds = [
            9_999_999_999_999_999,
            1_000_000_000_000_000,
            -999_999_999_999_999,
        ];
        for i in edges.into_iter().chain(bounds) {
            let text = itoa::Buffer::new().format(i).to_owned();
            let (lo, hi) = small_words(text.as_bytes()).unwrap();
            assert_eq!(int_words(i), Some((lo, hi, text.len())), "{i}");
        }
        for i in [
            10_000_000_000_000_000,
            -1_000_000_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(int_words(i), None, "{i}");
        }
    }
}
