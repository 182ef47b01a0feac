//! [`KeyGrid`]: keys laid out so that eight of them are hashed at once without transposes.
//!
//! # Layout
//!
//! Position `p` of the grid is lane `p % 8` of row `p / 8`. A row stores, for its eight
//! lanes, the seed, the length and the key's first 16 bytes as four little-endian 4-byte
//! blocks, zero padded, *block-major*: `blocks[i]` holds block `i` of all eight lanes, which
//! is exactly the vector the SIMD round needs, so hashing a row is one 32-byte load per
//! block (see [`super::hash_simd`]). Filling a lane is four 4-byte stores.
//!
//! The featurizer uses it in two ways:
//! - across events (`featurize_batch`): key `k` of event `e` of a group of eight events is
//!   at `8k + e`, so a row holds the same field of eight events: one seed, similar lengths;
//! - within one event (`featurize`): key `k` is at position `k`.
//!
//! Keys longer than [`GRID_KEY_MAX`] bytes are rare (ids are short); they are hashed with
//! the scalar reference when set and their lane's SIMD result is replaced by that hash.

use super::hash::{hash_scalar, small_words};

/// Lanes of a grid row.
pub const GRID_LANES: usize = 8;
/// Longest key stored in a grid row; longer keys are hashed by the scalar reference.
pub const GRID_KEY_MAX: usize = 16;
/// 4-byte blocks stored per lane.
pub(crate) const GRID_BLOCKS: usize = GRID_KEY_MAX / 4;
/// `Row::lens` of a lane holding a long key. Negative as an `i32`, so the SIMD code, which
/// compares lengths signed, sees no full block in it.
pub(crate) const LONG: u32 = u32::MAX;

/// Eight lanes: seeds, lengths and key blocks, block-major.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Row {
    /// `blocks[i][lane]`: bytes `4i..4i + 4` of the lane's key, little-endian, zero padded.
    pub(crate) blocks: [[u32; GRID_LANES]; GRID_BLOCKS],
    /// Key length per lane: at most [`GRID_KEY_MAX`], or [`LONG`] for a long key, whose
    /// hash is in `KeyGrid::long` (its blocks are zero, its SIMD result is replaced).
    pub(crate) lens: [u32; GRID_LANES],
    pub(crate) seeds: [u32; GRID_LANES],
}

/// Keys to hash, each at a position chosen by the caller, eight positions per row, stored
/// for lane-parallel hashing (see the module docs). Reusable: [`KeyGrid::clear`] keeps the
/// capacity, so a warm grid does not allocate.
///
/// Positions never set (up to the last row used) hash as the empty key with seed 0.
#[derive(Debug, Clone, Default)]
pub struct KeyGrid {
    /// Rows `..used` are in use; later ones are kept allocated and zeroed when taken.
    pub(crate) rows: Vec<Row>,
    used: usize,
    /// `(position, hash)` of keys longer than [`GRID_KEY_MAX`], in the order they were set.
    long: Vec<(usize, u32)>,
}

impl KeyGrid {
    /// An empty grid.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every key, keeping the capacity.
    #[inline]
    pub fn clear(&mut self) {
        self.used = 0;
        self.long.clear();
    }

    /// Positions covered: eight per row used.
    pub fn len(&self) -> usize {
        self.used * GRID_LANES
    }

    /// Whether no key was set since the last clear.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The rows in use.
    #[inline]
    pub(crate) fn rows(&self) -> &[Row] {
        self.rows.get(..self.used).unwrap_or(&[])
    }

    /// Puts `key` with `seed` at position `pos`, replacing what was there. Rows up to
    /// `pos / 8` are taken (zeroed) as needed, so keep positions dense.
    #[inline]
    pub fn set(&mut self, pos: usize, seed: u32, key: &[u8]) {
        let (r, lane) = (pos / GRID_LANES, pos % GRID_LANES);
        if r >= self.used {
            self.take(r + 1);
        }
        let Some(row) = self.rows.get_mut(r) else {
            return; // Unreachable: taken above.
        };
        let (lo, hi, len) = match small_words(key) {
            Some((lo, hi)) => (lo, hi, key.len() as u32),
            None => {
                self.long.push((pos, hash_scalar(seed, key)));
                (0, 0, LONG)
            }
        };
        row.blocks[0][lane] = lo as u32;
        row.blocks[1][lane] = (lo >> 32) as u32;
        row.blocks[2][lane] = hi as u32;
        row.blocks[3][lane] = (hi >> 32) as u32;
        row.lens[lane] = len;
        row.seeds[lane] = seed;
    }

    /// Puts the decimal text of `n` with `seed` at `pos`.
    #[inline]
    pub fn set_int(&mut self, pos: usize, seed: u32, n: i64) {
        self.set(pos, seed, itoa::Buffer::new().format(n).as_bytes());
    }

    /// Takes rows up to `rows`, zeroed.
    #[inline(never)]
    fn take(&mut self, rows: usize) {
        let reused = rows.min(self.rows.len());
        for row in self.rows.get_mut(self.used..reused).unwrap_or(&mut []) {
            *row = Row::default();
        }
        self.rows.resize(rows.max(self.rows.len()), Row::default());
        self.used = rows;
    }

    /// The seed and bytes at `pos` (`None` past the last row, and for long keys, which the
    /// grid does not keep).
    pub fn get(&self, pos: usize) -> Option<(u32, Vec<u8>)> {
        let (r, lane) = (pos / GRID_LANES, pos % GRID_LANES);
        let row = self.rows().get(r)?;
        if row.lens[lane] == LONG {
            return None;
        }
        let (seed, len) = (row.seeds[lane], row.lens[lane] as usize);
        Some((seed, lane_bytes(row, lane)[..len].to_vec()))
    }

    /// Replaces the hashes of long keys in `out` (the SIMD lanes hashed an empty key).
    #[inline]
    pub(crate) fn patch_long(&self, out: &mut [u32]) {
        for &(pos, h) in &self.long {
            let set = self
                .rows()
                .get(pos / GRID_LANES)
                .is_some_and(|row| row.lens[pos % GRID_LANES] == LONG);
            // A later `set` of a short key at `pos` replaced the marker; among several long
            // keys set at `pos`, the last one wins because patches apply in order.
            if let (true, Some(o)) = (set, out.get_mut(pos)) {
                *o = h;
            }
        }
    }
}

/// The 16 stored bytes of `lane`.
fn lane_bytes(row: &Row, lane: usize) -> [u8; GRID_KEY_MAX] {
    let mut bytes = [0u8; GRID_KEY_MAX];
    for (chunk, block) in bytes.chunks_exact_mut(4).zip(&row.blocks) {
        chunk.copy_from_slice(&block[lane].to_le_bytes());
    }
    bytes
}

/// Hashes every position of `grid` with the scalar reference: `out[p] = H(seed_p, key_p)`.
pub fn hash_grid_scalar(grid: &KeyGrid, out: &mut Vec<u32>) {
    out.clear();
    for row in grid.rows() {
        for lane in 0..GRID_LANES {
            let bytes = lane_bytes(row, lane);
            let len = (row.lens[lane] as usize).min(GRID_KEY_MAX);
            out.push(hash_scalar(row.seeds[lane], &bytes[..len]));
        }
    }
    grid.patch_long(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::hash::{Backend, hash_grid};

    #[test]
    fn grid_reads_back_and_hashes_like_the_reference() {
        let mut grid = KeyGrid::new();
        let long = b"a key longer than sixteen bytes";
        grid.set(0, 1, b"abc");
        grid.set(9, 2, b"");
        grid.set(10, 3, long);
        grid.set(11, 4, long);
        grid.set(11, 5, b"0123456789abcdef");
        grid.set_int(12, 6, -42);
        assert_eq!(grid.len(), 16);
        assert_eq!(grid.get(0), Some((1, b"abc".to_vec())));
        assert_eq!(
            grid.get(1),
            Some((0, Vec::new())),
            "unset: empty key, seed 0"
        );
        assert_eq!(grid.get(10), None, "long keys are not kept");
        assert_eq!(grid.get(12), Some((6, b"-42".to_vec())));
        assert_eq!(grid.get(16), None);
        let mut want = vec![hash_scalar(0, b""); 16];
        want[0] = hash_scalar(1, b"abc");
        want[9] = hash_scalar(2, b"");
        want[10] = hash_scalar(3, long);
        want[11] = hash_scalar(5, b"0123456789abcdef");
        want[12] = hash_scalar(6, b"-42");
        for backend in [Backend::scalar(), Backend::detect()] {
            let mut out = Vec::new();
            hash_grid(backend, &grid, &mut out);
            assert_eq!(out, want, "{}", backend.name());
        }
        grid.clear();
        assert!(grid.is_empty());
    }
}
