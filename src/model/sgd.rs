//! Plain SGD logistic regression: the baseline optimizer.
//!
//! One global learning rate `η_t = η0 / (1 + t)^power`, `t` the model version (updates so
//! far), and `w_i -= η_t (p - y) x_i` for every feature of the example. No regularization
//! (`l1` and `l2` are FTRL's). Per-coordinate adaptive rates are what make FTRL better on
//! sparse data: a global decay slows rare features down as fast as the bias.
//!
//! Weights are shared across workers exactly as in [`ftrl`](super::ftrl): one `AtomicU32`
//! holding an `f32` per coordinate, relaxed load/store, Hogwild-style; the same version
//! counting, bias coordinate, input sanitizing and non-finite guard.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use ctrflow_dataflows::Learner;
use ctrflow_dataflows::record::Feature;
use ctrflow_state::snapshot::{self, Kind};

use super::codec::{Reader, corrupt};
use super::logistic::sigmoid;
use super::{ModelConfig, ModelError, Optimizer, PUBLISH_EVERY, PaddedCounter, sanitize};

/// Snapshot kind tag of an SGD model.
pub const SNAPSHOT_KIND: Kind = *b"SGDL";

/// Payload version written by this build.
const SNAPSHOT_VERSION: u32 = 1;

/// Bytes per saved coordinate: index `u32`, weight `f32`.
const ENTRY_LEN: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Params {
    bits: u8,
    mask: u32,
    bias: usize,
    learning_rate: f64,
    power_t: f64,
    lr_f: f32,
    neg_power_f: f32,
}

impl Params {
    fn new(bits: u8, learning_rate: f64, power_t: f64) -> Self {
        Self {
            bits,
            mask: (1u32 << bits) - 1,
            bias: 1usize << bits,
            learning_rate,
            power_t,
            lr_f: learning_rate as f32,
            neg_power_f: -power_t as f32,
        }
    }

    #[inline(always)]
    fn rate(&self, t: u64) -> f32 {
        if self.neg_power_f == 0.0 {
            self.lr_f
        } else {
            self.lr_f * (1.0 + t as f32).powf(self.neg_power_f)
        }
    }
}

#[derive(Debug)]
struct Shared {
    params: Params,
    /// `2^bits` hashed weights, then the bias; `f32` bits.
    weights: Box<[AtomicU32]>,
    version: PaddedCounter,
}

/// A plain-SGD logistic regression model: the shared weight table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SgdModel {
    shared: Arc<Shared>,
}

impl SgdModel {
    /// A fresh, all-zero model with `config`'s `bits`, `sgd_learning_rate` and
    /// `sgd_power_t`.
    pub fn new(config: &ModelConfig) -> Result<Self, ModelError> {
        config.check()?;
        Ok(Self::from_params(
            Params::new(config.bits, config.sgd_learning_rate, config.sgd_power_t),
            0,
        ))
    }

    fn from_params(params: Params, version: u64) -> Self {
        let weights = (0..=params.bias).map(|_| AtomicU32::new(0)).collect();
        Self {
            shared: Arc::new(Shared {
                params,
                weights,
                version: PaddedCounter(AtomicU64::new(version)),
            }),
        }
    }

    /// Weights as raw words (`f32` bits), for incremental checkpoints: how many.
    pub(crate) fn raw_len(&self) -> usize {
        self.shared.weights.len()
    }

    /// Raw word `i`.
    pub(crate) fn raw(&self, i: usize) -> u64 {
        u64::from(self.shared.weights[i].load(Relaxed))
    }

    /// Sets raw word `i` (restoring a checkpoint, before any handle learns).
    pub(crate) fn set_raw(&self, i: usize, word: u64) {
        self.shared.weights[i].store(word as u32, Relaxed);
    }

    /// Sets the version (restoring a checkpoint).
    pub(crate) fn set_version(&self, version: u64) {
        self.shared.version.0.store(version, Relaxed);
    }

    /// A new handle for one worker. All handles share this model's weights.
    pub fn handle(&self) -> SgdHandle {
        SgdHandle {
            shared: Arc::clone(&self.shared),
            p: self.shared.params,
            unpublished: 0,
        }
    }

    /// The hyper-parameters as a config (optimizer `sgd`, FTRL keys at their defaults).
    pub fn config(&self) -> ModelConfig {
        let p = &self.shared.params;
        ModelConfig {
            optimizer: Optimizer::Sgd,
            bits: p.bits,
            sgd_learning_rate: p.learning_rate,
            sgd_power_t: p.power_t,
            ..ModelConfig::default()
        }
    }

    /// Updates published by all handles.
    pub fn version(&self) -> u64 {
        self.shared.version.0.load(Relaxed)
    }

    /// Number of coordinates, including the bias: `2^bits + 1`.
    pub fn coordinates(&self) -> usize {
        self.shared.weights.len()
    }

    fn weights(&self) -> impl Iterator<Item = f32> + '_ {
        self.shared
            .weights
            .iter()
            .map(|w| f32::from_bits(w.load(Relaxed)))
    }

    /// Number of non-zero weights, bias included.
    pub fn nonzero_weights(&self) -> usize {
        self.weights().filter(|w| *w != 0.0).count()
    }

    /// Euclidean norm of the weight vector, bias included.
    pub fn weight_norm(&self) -> f64 {
        self.weights()
            .map(|w| f64::from(w) * f64::from(w))
            .sum::<f64>()
            .sqrt()
    }

    /// Saves the model to `path` atomically, as a snapshot of kind `SGDL`: a header (bits,
    /// η0, power, version, number of coordinates, number of entries), then one
    /// `(index: u32, w: f32)` entry per non-zero weight.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let p = &self.shared.params;
        let mut payload = Vec::with_capacity(64);
        payload.extend_from_slice(&u32::from(p.bits).to_le_bytes());
        payload.extend_from_slice(&p.learning_rate.to_le_bytes());
        payload.extend_from_slice(&p.power_t.to_le_bytes());
        payload.extend_from_slice(&self.version().to_le_bytes());
        payload.extend_from_slice(&(self.coordinates() as u64).to_le_bytes());
        let count_at = payload.len();
        payload.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        for (i, w) in self.shared.weights.iter().enumerate() {
            let w = w.load(Relaxed);
            if w != 0 {
                payload.extend_from_slice(&(i as u32).to_le_bytes());
                payload.extend_from_slice(&w.to_le_bytes());
                count += 1;
            }
        }
        payload[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        snapshot::write_snapshot(path, SNAPSHOT_KIND, SNAPSHOT_VERSION, &payload)?;
        Ok(())
    }

    /// Loads a model saved by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let (version, payload) = snapshot::read_snapshot(path, SNAPSHOT_KIND)?;
        Self::from_snapshot(path, version, &payload)
    }

    pub(crate) fn from_snapshot(
        path: &Path,
        version: u32,
        payload: &[u8],
    ) -> Result<Self, ModelError> {
        if version != SNAPSHOT_VERSION {
            return Err(ModelError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let mut r = Reader::new(path, payload);
        let bits = r.u32("bits")?;
        let learning_rate = r.f64("sgd_learning_rate")?;
        let power_t = r.f64("sgd_power_t")?;
        let model_version = r.u64("version")?;
        let coordinates = r.u64("coordinates")?;
        let count = r.u64("entry count")?;
        let config = ModelConfig {
            optimizer: Optimizer::Sgd,
            bits: u8::try_from(bits).unwrap_or(u8::MAX),
            sgd_learning_rate: learning_rate,
            sgd_power_t: power_t,
            ..ModelConfig::default()
        };
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(corrupt(path, problems.join("; ")));
        }
        let model = Self::from_params(
            Params::new(config.bits, learning_rate, power_t),
            model_version,
        );
        if coordinates != model.coordinates() as u64 {
            return Err(corrupt(
                path,
                format!(
                    "{coordinates} coordinates for bits = {bits}, expected {}",
                    model.coordinates()
                ),
            ));
        }
        if Some(r.remaining() as u64) != count.checked_mul(ENTRY_LEN as u64) {
            return Err(corrupt(
                path,
                format!(
                    "{count} entries announced, {} bytes of entries present",
                    r.remaining()
                ),
            ));
        }
        for _ in 0..count {
            let index = r.u32("entry index")?;
            let w = r.f32("entry weight")?;
            let Some(slot) = model.shared.weights.get(index as usize) else {
                return Err(corrupt(path, format!("entry index {index} out of range")));
            };
            if !w.is_finite() {
                return Err(corrupt(path, format!("entry {index} has weight {w}")));
            }
            slot.store(w.to_bits(), Relaxed);
        }
        Ok(model)
    }
}

/// One worker's handle on an [`SgdModel`].
#[derive(Debug)]
pub struct SgdHandle {
    shared: Arc<Shared>,
    p: Params,
    unpublished: u64,
}

impl Clone for SgdHandle {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            p: self.p,
            unpublished: 0,
        }
    }
}

impl Drop for SgdHandle {
    fn drop(&mut self) {
        self.flush();
    }
}

impl SgdHandle {
    #[inline(always)]
    fn slot(&self, index: u32) -> &AtomicU32 {
        &self.shared.weights[(index & self.p.mask) as usize]
    }

    #[inline(always)]
    fn step(slot: &AtomicU32, delta: f32) {
        let w = f32::from_bits(slot.load(Relaxed)) - delta;
        if w.is_finite() {
            slot.store(w.to_bits(), Relaxed);
        }
    }

    /// Scores `x`, then learns from it; returns the score from before the update.
    #[inline]
    pub fn predict_and_update(&mut self, x: &[Feature], positive: bool) -> f32 {
        let prediction = self.predict(x);
        let rate = self.p.rate(self.version());
        let scaled = rate * (prediction - if positive { 1.0 } else { 0.0 });
        Self::step(&self.shared.weights[self.p.bias], scaled);
        for f in x {
            let v = sanitize(f.value);
            if v != 0.0 {
                Self::step(self.slot(f.index), scaled * v);
            }
        }
        self.unpublished += 1;
        if self.unpublished >= PUBLISH_EVERY {
            self.flush();
        }
        prediction
    }

    /// Adds this handle's unpublished update count to the shared model version.
    pub fn flush(&mut self) {
        if self.unpublished > 0 {
            self.shared.version.0.fetch_add(self.unpublished, Relaxed);
            self.unpublished = 0;
        }
    }

    /// The model this handle updates.
    pub fn model(&self) -> SgdModel {
        SgdModel {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Learner for SgdHandle {
    #[inline]
    fn predict(&self, x: &[Feature]) -> f32 {
        let mut logit = f32::from_bits(self.shared.weights[self.p.bias].load(Relaxed));
        for f in x {
            logit += f32::from_bits(self.slot(f.index).load(Relaxed)) * sanitize(f.value);
        }
        sigmoid(logit)
    }

    #[inline]
    fn update(&mut self, x: &[Feature], positive: bool) {
        self.predict_and_update(x, positive);
    }

    #[inline]
    fn version(&self) -> u64 {
        self.shared.version.0.load(Relaxed) + self.unpublished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ftrl::tests::synthetic;
    use crate::model::logistic::{entropy, logloss};

    fn config(bits: u8) -> ModelConfig {
        ModelConfig {
            optimizer: Optimizer::Sgd,
            bits,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn learns_synthetic_problem() {
        let data = synthetic(1, 200_000);
        let model = SgdModel::new(&config(20)).unwrap();
        let mut h = model.handle();
        let (mut loss, mut positives) = (0.0, 0usize);
        for (i, (x, y)) in data.iter().enumerate() {
            let p = h.predict_and_update(x, *y);
            if i >= 100_000 {
                loss += logloss(f64::from(p), *y);
                positives += usize::from(*y);
            }
        }
        let loss = loss / 100_000.0;
        let base = entropy(positives as f64 / 100_000.0);
        assert!(loss < 0.9 * base, "logloss {loss} vs base {base}");
    }

    #[test]
    fn extreme_inputs_and_roundtrip() {
        let model = SgdModel::new(&config(8)).unwrap();
        let mut h = model.handle();
        for (i, value) in [f32::NAN, f32::INFINITY, 1e30, -1e30, f32::MAX, 1.0]
            .into_iter()
            .cycle()
            .take(600)
            .enumerate()
        {
            let x = [Feature {
                index: i as u32,
                value,
            }];
            let p = h.predict_and_update(&x, i % 3 == 0);
            assert!(p > 0.0 && p < 1.0);
        }
        assert!(model.weight_norm().is_finite());
        assert_eq!(h.version(), 600);
        h.flush();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sgd.snap");
        model.save(&path).unwrap();
        let loaded = SgdModel::load(&path).unwrap();
        let x = [Feature {
            index: 5,
            value: 1.0,
        }];
        assert_eq!(loaded.handle().predict(&x), h.predict(&x));
        assert_eq!(loaded.version(), 600);
        // An FTRL file is not an SGD model.
        let err = crate::model::FtrlModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("expected \"FTRL\""), "{err}");
    }
}
