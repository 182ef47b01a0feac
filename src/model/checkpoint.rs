//! Incremental model checkpoints: only the blocks of coordinates that changed since the
//! last checkpoint are written.
//!
//! The model is `2^bits + 1` raw words (an FTRL coordinate's packed `(z, n)`, or an SGD
//! weight's `f32` bits). A [`ModelShadow`] keeps the words as of the last checkpoint; a
//! checkpoint compares the live model with it block by block ([`BLOCK`] words: one
//! comparison pass over 32 MiB at the default `bits = 22`, a few milliseconds) and writes
//! the blocks that differ. With a Zipf-distributed stream most of the model is cold, so a
//! checkpoint every 5 s writes a small fraction of it.
//!
//! A challenger model (`crate::drift::response`) is stored the same way in the same table,
//! its block `b` under [`CHALLENGER`]` | b`, and deleted ([`ModelShadow::delete_into`])
//! when it ends.

use ctrflow_state::{Batch, StateError, StateStore, Table, TableId};
use serde::{Deserialize, Serialize};

use super::{Model, ModelConfig};

/// Words per block.
pub const BLOCK: usize = 512;

/// Blocks, by block number.
const BLOCKS: Table<u32, Vec<u64>> = Table::new(TableId::Model);
/// The shape of the stored model, under block number [`SHAPE_KEY`].
const SHAPE: Table<u32, Shape> = Table::new(TableId::Model);
const SHAPE_KEY: u32 = u32::MAX;
/// The key base of a challenger's blocks: above every champion block (a model has fewer
/// than 2^31 blocks) and below `SHAPE_KEY`.
pub const CHALLENGER: u32 = 0x8000_0000;

/// What a stored model must agree with to be restored into a configured one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Shape {
    config: ModelConfig,
    words: u64,
}

/// The model's words as of the last checkpoint.
#[derive(Debug)]
pub struct ModelShadow {
    words: Vec<u64>,
    /// Added to block numbers in keys: 0 for the champion, [`CHALLENGER`].
    base: u32,
}

/// Blocks that changed, ready to confirm into the shadow once committed.
#[derive(Debug, Default)]
pub struct ModelChanges {
    blocks: Vec<(u32, Vec<u64>)>,
}

impl ModelChanges {
    /// Blocks written.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

fn raw_len(model: &Model) -> usize {
    match model {
        Model::Ftrl(m) => m.raw_len(),
        Model::Sgd(m) => m.raw_len(),
    }
}

fn raw(model: &Model, i: usize) -> u64 {
    match model {
        Model::Ftrl(m) => m.raw(i),
        Model::Sgd(m) => m.raw(i),
    }
}

impl ModelShadow {
    /// The shadow of a fresh (all-zero) model: the first checkpoint writes every block
    /// that learned anything.
    pub fn fresh(model: &Model) -> Self {
        Self::fresh_at(model, 0)
    }

    /// [`Self::fresh`], for blocks stored under key base `base` ([`CHALLENGER`]).
    pub fn fresh_at(model: &Model, base: u32) -> Self {
        Self {
            words: vec![0; raw_len(model)],
            base,
        }
    }

    /// Deletes every block this shadow's model may have stored (the model ended).
    pub fn delete_into(&self, batch: &mut Batch) {
        for b in 0..self.words.len().div_ceil(BLOCK) {
            BLOCKS.delete(batch, &(self.base | b as u32));
        }
    }

    fn holds(&self, key: u32) -> bool {
        key != SHAPE_KEY && key & CHALLENGER == self.base
    }

    /// Adds the blocks of `model` that differ from the shadow to `batch` (and the model's
    /// shape, the first time).
    pub fn changes_into(&self, model: &Model, batch: &mut Batch) -> ModelChanges {
        let mut changes = ModelChanges::default();
        let mut block = Vec::with_capacity(BLOCK);
        for (b, old) in self.words.chunks(BLOCK).enumerate() {
            let start = b * BLOCK;
            block.clear();
            block.extend((start..start + old.len()).map(|i| raw(model, i)));
            if block.as_slice() != old {
                BLOCKS.put(batch, &(self.base | b as u32), &block);
                changes.blocks.push((b as u32, block.clone()));
            }
        }
        if self.base == 0 {
            SHAPE.put(
                batch,
                &SHAPE_KEY,
                &Shape {
                    config: model.config(),
                    words: self.words.len() as u64,
                },
            );
        }
        changes
    }

    /// The changes were committed: they are the shadow now.
    pub fn confirm(&mut self, changes: ModelChanges) {
        for (b, words) in changes.blocks {
            let start = b as usize * BLOCK;
            self.words[start..start + words.len()].copy_from_slice(&words);
        }
    }

    /// Restores `model` (fresh, configured) from the blocks in `store`, sets its version,
    /// and returns the matching shadow. A stored model of another shape is an error naming
    /// what differs.
    pub fn restore(model: &Model, store: &StateStore, version: u64) -> Result<Self, StateError> {
        let mut shadow = Self::fresh(model);
        let Some(shape) = SHAPE.get(store, &SHAPE_KEY)? else {
            set_version(model, version);
            return Ok(shadow);
        };
        let configured = model.config();
        if shape.words != shadow.words.len() as u64 || shape.config != configured {
            return Err(StateError::Checkpoint {
                path: Default::default(),
                reason: format!(
                    "the checkpointed model was trained with {:?} ({} coordinates), the \
                     configuration asks for {:?}; use the same [model] settings (or a new \
                     state directory)",
                    shape.config, shape.words, configured
                ),
            });
        }
        shadow.load(model, store)?;
        set_version(model, version);
        Ok(shadow)
    }

    /// Restores `model` (fresh, of the champion's config: the champion's restore checked
    /// the shape) from the blocks stored under key base `base`, and returns the matching
    /// shadow.
    pub fn restore_at(model: &Model, store: &StateStore, base: u32) -> Result<Self, StateError> {
        let mut shadow = Self::fresh_at(model, base);
        shadow.load(model, store)?;
        Ok(shadow)
    }

    fn load(&mut self, model: &Model, store: &StateStore) -> Result<(), StateError> {
        let shadow = self;
        let mut failure = None;
        BLOCKS.scan_all(store, |key, words| {
            if !shadow.holds(key) {
                return true;
            }
            let b = key & !CHALLENGER;
            let start = b as usize * BLOCK;
            match shadow.words.get_mut(start..start + words.len()) {
                Some(slot) => {
                    slot.copy_from_slice(&words);
                    true
                }
                None => {
                    failure = Some(format!("model block {b} is out of range"));
                    false
                }
            }
        })?;
        if let Some(reason) = failure {
            return Err(StateError::Decode {
                table: TableId::Model.name(),
                reason,
            });
        }
        for (i, &w) in shadow.words.iter().enumerate() {
            match model {
                Model::Ftrl(m) => m.set_raw(i, w),
                Model::Sgd(m) => m.set_raw(i, w),
            }
        }
        Ok(())
    }
}

/// Blocks stored under key base `base` (0: the champion's, [`CHALLENGER`]).
#[cfg(test)]
pub(crate) fn stored_blocks(store: &StateStore, base: u32) -> usize {
    let shadow = ModelShadow {
        words: Vec::new(),
        base,
    };
    let mut n = 0;
    BLOCKS
        .scan_all(store, |key, _| {
            n += usize::from(shadow.holds(key));
            true
        })
        .unwrap();
    n
}

/// The configuration of the model stored in `store`, if one is.
pub fn stored_config(store: &StateStore) -> Result<Option<ModelConfig>, StateError> {
    Ok(SHAPE.get(store, &SHAPE_KEY)?.map(|s| s.config))
}

/// A digest of the model's words (FNV-1a over their little-endian bytes): equal digests
/// mean bit-identical models.
pub fn digest(model: &Model) -> u64 {
    let mut h = Fnv::default();
    for i in 0..raw_len(model) {
        h.write(&raw(model, i).to_le_bytes());
    }
    h.0
}

/// FNV-1a, 64 bits: a stable digest for comparing states.
#[derive(Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Mixes `bytes` in.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn set_version(model: &Model, version: u64) {
    match model {
        Model::Ftrl(m) => m.set_version(version),
        Model::Sgd(m) => m.set_version(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ftrl::tests::synthetic;
    use ctrflow_dataflows::Learner;

    #[test]
    fn only_changed_blocks_are_written_and_a_restore_is_bit_identical() {
        let config = ModelConfig {
            bits: 16,
            ..ModelConfig::default()
        };
        let model = Model::from_config(&config).unwrap();
        let mut handle = model.handle();
        let store = StateStore::memory();
        let mut shadow = ModelShadow::fresh(&model);
        let data = synthetic(3, 2000);
        for (x, y) in &data[..1000] {
            handle.update(x, *y);
        }
        handle.flush();
        let mut batch = Batch::new();
        let first = shadow.changes_into(&model, &mut batch);
        assert!(first.blocks() > 0);
        store.write(batch).unwrap();
        shadow.confirm(first);
        // Nothing learned: nothing but the shape to write.
        let mut batch = Batch::new();
        assert_eq!(shadow.changes_into(&model, &mut batch).blocks(), 0);
        // One example touches few blocks.
        handle.update(&data[1000].0, data[1000].1);
        handle.flush();
        let mut batch = Batch::new();
        let few = shadow.changes_into(&model, &mut batch);
        assert!(few.blocks() <= data[1000].0.len() + 1, "{}", few.blocks());
        store.write(batch).unwrap();
        shadow.confirm(few);

        let restored = Model::from_config(&config).unwrap();
        ModelShadow::restore(&restored, &store, model.version()).unwrap();
        assert_eq!(restored.version(), model.version());
        for i in 0..raw_len(&model) {
            assert_eq!(raw(&restored, i), raw(&model, i), "word {i}");
        }
        // A model of another shape is refused, naming the difference.
        let other = Model::from_config(&ModelConfig {
            bits: 18,
            ..ModelConfig::default()
        })
        .unwrap();
        let err = ModelShadow::restore(&other, &store, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bits: 16"), "{err}");
    }
}
