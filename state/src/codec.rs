//! How keys and values become bytes.
//!
//! Keys are big-endian, so that RocksDB's byte order is the keys' natural order and a
//! prefix scan (one worker's pending impressions, one kind of entity) is a range. Values
//! are `postcard`-encoded: compact, schema-less, and stable for a given Rust type; a type
//! whose layout changes must bump the manifest's format version.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StateError;

/// A table key: a fixed, order-preserving byte encoding.
pub trait Key {
    /// Appends the key's bytes to `out`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// The key back from its bytes, if they are one.
    fn decode_key(bytes: &[u8]) -> Option<Self>
    where
        Self: Sized;
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                // Flip the sign bit so that negative numbers sort first (a no-op for
                // unsigned types).
                let flipped = (*self ^ <$t>::MIN).to_be_bytes();
                out.extend_from_slice(&flipped);
            }
            fn decode_key(bytes: &[u8]) -> Option<Self> {
                let bytes = bytes.try_into().ok()?;
                Some(<$t>::from_be_bytes(bytes) ^ <$t>::MIN)
            }
        }
    )*};
}
int_key!(u8, u32, u64, i32, i64);

impl<A: Key + FixedWidth, B: Key> Key for (A, B) {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
        self.1.encode_key(out);
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        let (a, b) = bytes.split_at_checked(A::WIDTH)?;
        Some((A::decode_key(a)?, B::decode_key(b)?))
    }
}

/// Keys of a fixed width, which may lead a composite key.
pub trait FixedWidth {
    /// Bytes in the encoding.
    const WIDTH: usize;
}

impl FixedWidth for u8 {
    const WIDTH: usize = 1;
}
impl FixedWidth for u32 {
    const WIDTH: usize = 4;
}
impl FixedWidth for u64 {
    const WIDTH: usize = 8;
}
impl FixedWidth for i32 {
    const WIDTH: usize = 4;
}
impl FixedWidth for i64 {
    const WIDTH: usize = 8;
}

impl Key for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Encodes `value` into `out` (cleared first).
pub fn encode_value<V: Serialize>(value: &V, out: &mut Vec<u8>) {
    out.clear();
    append_value(value, out);
}

/// Appends `value`'s bytes to `out` (after a prefix already there).
pub fn append_value<V: Serialize>(value: &V, out: &mut Vec<u8>) {
    // Serializing into a Vec fails only for types serde cannot express (maps with
    // non-string keys are fine in postcard): a programming error, caught by the tests.
    let bytes = postcard::to_extend(value, std::mem::take(out))
        .expect("state values are plain data that postcard can encode");
    *out = bytes;
}

/// Decodes a value of table `table` from `bytes`.
pub fn decode_value<V: DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<V, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Decode {
        table,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<K: Key>(k: K) -> Vec<u8> {
        let mut out = Vec::new();
        k.encode_key(&mut out);
        out
    }

    #[test]
    fn integer_keys_sort_like_numbers_and_round_trip() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let encoded: Vec<_> = values.iter().map(|v| bytes(*v)).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (v, e) in values.iter().zip(&encoded) {
            assert_eq!(i64::decode_key(e), Some(*v));
        }
        assert!(bytes(1u32) < bytes(256u32));
        assert_eq!(<(u32, u64)>::decode_key(&bytes((3u32, 9u64))), Some((3, 9)));
        assert_eq!(u32::decode_key(&[1, 2]), None);
    }

    #[test]
    fn values_round_trip_and_garbage_is_an_error() {
        let mut buf = vec![9, 9, 9];
        encode_value(&(7u64, -1.5f32, "x".to_owned()), &mut buf);
        let back: (u64, f32, String) = decode_value("t", &buf).unwrap();
        assert_eq!(back, (7, -1.5, "x".to_owned()));
        let err = decode_value::<(u64, String)>("t", &[0xff]).unwrap_err();
        assert!(err.to_string().contains("state table `t`"), "{err}");
    }
}
