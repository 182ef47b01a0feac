//! The online click-through-rate model: logistic regression over hashed features, trained
//! one example at a time by FTRL-Proximal (the default, [`ftrl`]) or plain SGD ([`sgd`]).
//!
//! A [`Model`] owns the weights; each timely worker takes a [`ModelHandle`] from
//! [`Model::handle`] and scores and learns through it (it implements
//! [`ctrflow_dataflows::Learner`]). All handles of one model share one weight table,
//! lock-free: see the [`ftrl`] module doc for why and what it costs.
//!
//! Optimizer dispatch happens once per example (a `match` on the handle), never per
//! feature: the inner loops are monomorphic.
//!
//! ```
//! use ctrflow::model::{Model, ModelConfig};
//! use ctrflow_dataflows::Learner;
//! use ctrflow_dataflows::record::Feature;
//!
//! let model = Model::from_config(&ModelConfig { bits: 10, ..ModelConfig::default() })?;
//! let mut learner = model.handle();
//! let x = [Feature { index: 7, value: 1.0 }, Feature { index: 42, value: 0.5 }];
//! for _ in 0..1000 {
//!     learner.update(&x, true);
//! }
//! assert!(learner.predict(&x) > 0.9);
//! assert_eq!(learner.version(), 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod ftrl;
pub mod logistic;
pub mod sgd;

use std::path::{Path, PathBuf};

use ctrflow_dataflows::Learner;
use ctrflow_dataflows::record::Feature;
use ctrflow_state::snapshot::{self, SnapshotError};
use serde::{Deserialize, Serialize};

pub use ftrl::{FtrlHandle, FtrlModel};
pub use sgd::{SgdHandle, SgdModel};

/// Largest `bits` accepted: 2^30 coordinates are 8 GiB of FTRL state.
pub const MAX_BITS: u8 = 30;

/// Which online optimizer trains the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// FTRL-Proximal with per-coordinate learning rates and L1/L2 regularization.
    #[default]
    Ftrl,
    /// Plain stochastic gradient descent with one global, decaying learning rate.
    Sgd,
}

/// The `[model]` section of the pipeline config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Optimizer: `"ftrl"` (default) or `"sgd"`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// The model has `2^bits` hashed coordinates (plus its own bias); feature indices are
    /// masked into that range. Must be at least the featurizer's hash bits. 1..=30.
    #[serde(default = "default_bits")]
    pub bits: u8,
    /// FTRL learning-rate scale α: coordinate `i` learns at rate `α / (β + √n_i)`. > 0.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// FTRL learning-rate smoothing β; keeps early steps of a new coordinate small. > 0.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// FTRL L1 strength λ1: a weight stays exactly 0 until its |z| exceeds it, which keeps
    /// the model sparse and rare features silent. >= 0.
    #[serde(default = "default_l1")]
    pub l1: f64,
    /// FTRL L2 strength λ2. >= 0.
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// SGD initial learning rate η0. > 0.
    #[serde(default = "default_sgd_learning_rate")]
    pub sgd_learning_rate: f64,
    /// SGD decay power: the rate after `t` updates is `η0 / (1 + t)^power`. 0 keeps it
    /// constant. 0..=1.
    #[serde(default = "default_sgd_power_t")]
    pub sgd_power_t: f64,
}

const fn default_bits() -> u8 {
    22
}
const fn default_alpha() -> f64 {
    0.1
}
const fn default_beta() -> f64 {
    1.0
}
const fn default_l1() -> f64 {
    1.0
}
const fn default_l2() -> f64 {
    1.0
}
const fn default_sgd_learning_rate() -> f64 {
    0.2
}
const fn default_sgd_power_t() -> f64 {
    0.1
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::default(),
            bits: default_bits(),
            alpha: default_alpha(),
            beta: default_beta(),
            l1: default_l1(),
            l2: default_l2(),
            sgd_learning_rate: default_sgd_learning_rate(),
            sgd_power_t: default_sgd_power_t(),
        }
    }
}

impl ModelConfig {
    /// Every problem with this config, each naming the key, the value and the allowed
    /// range; empty when the config is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_BITS).contains(&self.bits) {
            problems.push(format!(
                "model.bits must be in 1..={MAX_BITS}, got {}",
                self.bits
            ));
        }
        // Parameters are used as f32 on the hot path, so they must also be finite there.
        let mut check = |key: &str, value: f64, ok: bool, range: &str| {
            if !ok || !value.is_finite() || !(value as f32).is_finite() {
                problems.push(format!("model.{key} must be {range}, got {value}"));
            }
        };
        check("alpha", self.alpha, self.alpha > 0.0, "> 0");
        check("beta", self.beta, self.beta > 0.0, "> 0");
        check("l1", self.l1, self.l1 >= 0.0, ">= 0");
        check("l2", self.l2, self.l2 >= 0.0, ">= 0");
        check(
            "sgd_learning_rate",
            self.sgd_learning_rate,
            self.sgd_learning_rate > 0.0,
            "> 0",
        );
        check(
            "sgd_power_t",
            self.sgd_power_t,
            (0.0..=1.0).contains(&self.sgd_power_t),
            "in 0..=1",
        );
        problems
    }

    /// `Ok(())` or [`ModelError::InvalidConfig`] with every problem.
    pub fn check(&self) -> Result<(), ModelError> {
        let problems = self.validate();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::InvalidConfig { problems })
        }
    }
}

/// Why a model could not be built, saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The config has out-of-range values; every problem is listed.
    #[error("invalid model config: {}", problems.join("; "))]
    InvalidConfig {
        /// One message per bad key.
        problems: Vec<String>,
    },
    /// The snapshot file could not be written or read (i/o, not a snapshot, wrong kind,
    /// truncated, checksum mismatch).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot is intact but its payload was written by an unknown model version.
    #[error("{path}: model snapshot version {found} is not supported (this build reads {supported})",
        path = path.display())]
    UnsupportedVersion {
        /// The file read.
        path: PathBuf,
        /// Payload version in the file.
        found: u32,
        /// Payload version this build reads.
        supported: u32,
    },
    /// The snapshot passed its checksum but its payload does not describe a valid model.
    #[error("{path}: corrupt model snapshot: {reason}", path = path.display())]
    Corrupt {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A model of either optimizer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Model {
    /// FTRL-Proximal.
    Ftrl(FtrlModel),
    /// Plain SGD.
    Sgd(SgdModel),
}

impl Model {
    /// A fresh, all-zero model as `config` describes.
    pub fn from_config(config: &ModelConfig) -> Result<Self, ModelError> {
        Ok(match config.optimizer {
            Optimizer::Ftrl => Model::Ftrl(FtrlModel::new(config)?),
            Optimizer::Sgd => Model::Sgd(SgdModel::new(config)?),
        })
    }

    /// A new handle on the shared weights, for one worker.
    pub fn handle(&self) -> ModelHandle {
        match self {
            Model::Ftrl(m) => ModelHandle::Ftrl(m.handle()),
            Model::Sgd(m) => ModelHandle::Sgd(m.handle()),
        }
    }

    /// The config the model was built (or saved) with.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Ftrl(m) => m.config(),
            Model::Sgd(m) => m.config(),
        }
    }

    /// Updates published by all handles so far (see [`FtrlHandle::flush`]).
    pub fn version(&self) -> u64 {
        match self {
            Model::Ftrl(m) => m.version(),
            Model::Sgd(m) => m.version(),
        }
    }

    /// Number of non-zero weights, bias included.
    pub fn nonzero_weights(&self) -> usize {
        match self {
            Model::Ftrl(m) => m.nonzero_weights(),
            Model::Sgd(m) => m.nonzero_weights(),
        }
    }

    /// Euclidean norm of the weight vector, bias included.
    pub fn weight_norm(&self) -> f64 {
        match self {
            Model::Ftrl(m) => m.weight_norm(),
            Model::Sgd(m) => m.weight_norm(),
        }
    }

    /// Overwrites every coordinate with `other`'s (a promoted challenger of the same
    /// config). Handles keep learning meanwhile; with several workers an update racing
    /// the copy may land on either model, like any lock-free update.
    pub fn copy_from(&self, other: &Model) {
        match (self, other) {
            (Model::Ftrl(to), Model::Ftrl(from)) if to.raw_len() == from.raw_len() => {
                for i in 0..to.raw_len() {
                    to.set_raw(i, from.raw(i));
                }
            }
            (Model::Sgd(to), Model::Sgd(from)) if to.raw_len() == from.raw_len() => {
                for i in 0..to.raw_len() {
                    to.set_raw(i, from.raw(i));
                }
            }
            _ => panic!("copy_from needs a model of the same optimizer and bits"),
        }
    }

    /// A model of the same config predicting like this one, with the learning rates of a
    /// fresh one (FTRL: every coordinate's `n` reset to 0; SGD: a copy of the weights,
    /// since SGD's rate is global).
    pub fn warm_started(&self) -> Result<Model, ModelError> {
        let fresh = Model::from_config(&self.config())?;
        match (&fresh, self) {
            (Model::Ftrl(to), Model::Ftrl(from)) => to.warm_start_from(from),
            (to, _) => to.copy_from(self),
        }
        Ok(fresh)
    }

    /// Saves the model atomically to `path` (see [`FtrlModel::save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        match self {
            Model::Ftrl(m) => m.save(path),
            Model::Sgd(m) => m.save(path),
        }
    }

    /// Loads a model of either optimizer, dispatching on the snapshot's kind.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let snap = snapshot::read_snapshot_any(path)?;
        match snap.kind {
            ftrl::SNAPSHOT_KIND => Ok(Model::Ftrl(FtrlModel::from_snapshot(
                path,
                snap.version,
                &snap.payload,
            )?)),
            sgd::SNAPSHOT_KIND => Ok(Model::Sgd(SgdModel::from_snapshot(
                path,
                snap.version,
                &snap.payload,
            )?)),
            found => Err(SnapshotError::WrongKind {
                path: path.to_path_buf(),
                found,
                expected: ftrl::SNAPSHOT_KIND,
            }
            .into()),
        }
    }
}

/// One worker's handle on a [`Model`]. Implements [`Learner`], dispatching once per example.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ModelHandle {
    /// Handle on an FTRL model.
    Ftrl(FtrlHandle),
    /// Handle on an SGD model.
    Sgd(SgdHandle),
}

impl ModelHandle {
    /// Scores `x`, then learns from it; returns the score from before the update, which is
    /// what progressive validation needs. Cheaper than `predict` followed by `update`.
    #[inline]
    pub fn predict_and_update(&mut self, x: &[Feature], positive: bool) -> f32 {
        match self {
            ModelHandle::Ftrl(h) => h.predict_and_update(x, positive),
            ModelHandle::Sgd(h) => h.predict_and_update(x, positive),
        }
    }

    /// For each handle when several workers share the model: holds back changes to
    /// frequent coordinates and publishes them in batches (FTRL; see
    /// [`FtrlHandle::hold_frequent_updates`]). SGD handles write through.
    pub fn hold_frequent_updates(&mut self) {
        if let ModelHandle::Ftrl(h) = self {
            h.hold_frequent_updates();
        }
    }

    /// Publishes this handle's update count to the shared version.
    pub fn flush(&mut self) {
        match self {
            ModelHandle::Ftrl(h) => h.flush(),
            ModelHandle::Sgd(h) => h.flush(),
        }
    }
}

/// Asks the CPU to start loading `value`'s cache line; never faults, changes nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot fault,
        // and the pointer comes from a valid reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

impl Learner for ModelHandle {
    #[inline]
    fn prefetch(&self, x: &[Feature]) {
        match self {
            ModelHandle::Ftrl(h) => h.prefetch(x),
            ModelHandle::Sgd(_) => {}
        }
    }

    #[inline]
    fn predict(&self, x: &[Feature]) -> f32 {
        match self {
            ModelHandle::Ftrl(h) => h.predict(x),
            ModelHandle::Sgd(h) => h.predict(x),
        }
    }

    #[inline]
    fn update(&mut self, x: &[Feature], positive: bool) {
        match self {
            ModelHandle::Ftrl(h) => h.update(x, positive),
            ModelHandle::Sgd(h) => h.update(x, positive),
        }
    }

    #[inline]
    fn version(&self) -> u64 {
        match self {
            ModelHandle::Ftrl(h) => h.version(),
            ModelHandle::Sgd(h) => h.version(),
        }
    }

    fn flush(&mut self) {
        ModelHandle::flush(self);
    }
}

/// Largest |feature value| the model uses; larger values are clamped to it. Values this big
/// carry no meaning for a logistic model (the featurizer log-transforms numbers), and the
/// bound keeps `g²` and the accumulators far from `f32` overflow.
pub const MAX_FEATURE_VALUE: f32 = 1e6;

/// The value the model uses for a feature: clamped to ±[`MAX_FEATURE_VALUE`], and 0 (the
/// feature is ignored) when not finite.
#[inline(always)]
pub(crate) fn sanitize(value: f32) -> f32 {
    if value.is_finite() {
        value.clamp(-MAX_FEATURE_VALUE, MAX_FEATURE_VALUE)
    } else {
        0.0
    }
}

/// How many updates a handle counts locally before adding them to the shared version:
/// one contended `fetch_add` per 1024 examples instead of one per example.
pub(crate) const PUBLISH_EVERY: u64 = 1024;

/// An `AtomicU64` alone on its cache line(s), so that publishing the version does not
/// invalidate the line holding the read-mostly model parameters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct PaddedCounter(pub(crate) std::sync::atomic::AtomicU64);

/// Little-endian payload encoding helpers for the snapshots.
pub(crate) mod codec {
    use std::path::Path;

    use super::ModelError;

    /// Reads fixed-size little-endian fields off a payload, reporting a short payload as
    /// corruption.
    pub(crate) struct Reader<'a> {
        buf: &'a [u8],
        path: &'a Path,
    }

    impl<'a> Reader<'a> {
        pub(crate) fn new(path: &'a Path, buf: &'a [u8]) -> Self {
            Self { buf, path }
        }

        fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
            match self.buf.split_first_chunk::<N>() {
                Some((head, rest)) => {
                    self.buf = rest;
                    Ok(*head)
                }
                None => Err(corrupt(self.path, format!("payload ends inside {what}"))),
            }
        }

        pub(crate) fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
            self.take(what).map(u32::from_le_bytes)
        }

        pub(crate) fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
            self.take(what).map(u64::from_le_bytes)
        }

        pub(crate) fn f32(&mut self, what: &str) -> Result<f32, ModelError> {
            self.take(what).map(f32::from_le_bytes)
        }

        pub(crate) fn f64(&mut self, what: &str) -> Result<f64, ModelError> {
            self.take(what).map(f64::from_le_bytes)
        }

        pub(crate) fn remaining(&self) -> usize {
            self.buf.len()
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: String) -> ModelError {
        ModelError::Corrupt {
            path: path.to_path_buf(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: ModelConfig = toml::from_str("").unwrap();
        assert_eq!(c, ModelConfig::default());
        assert!(c.validate().is_empty());
        let c: ModelConfig = toml::from_str("optimizer = \"sgd\"\nbits = 18").unwrap();
        assert_eq!((c.optimizer, c.bits), (Optimizer::Sgd, 18));
        assert!(toml::from_str::<ModelConfig>("alpah = 0.1").is_err());
        assert!(toml::from_str::<ModelConfig>("optimizer = \"adam\"").is_err());
    }

    #[test]
    fn validate_collects_every_problem() {
        let c = ModelConfig {
            bits: 0,
            alpha: -0.1,
            beta: 0.0,
            l1: f64::NAN,
            l2: 1e300,
            sgd_learning_rate: 0.0,
            sgd_power_t: 2.0,
            ..ModelConfig::default()
        };
        let problems = c.validate();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems.contains(&"model.alpha must be > 0, got -0.1".to_string()));
        assert!(problems.contains(&"model.bits must be in 1..=30, got 0".to_string()));
        let err = Model::from_config(&c).unwrap_err();
        assert!(err.to_string().starts_with("invalid model config: "));
    }

    #[test]
    fn model_enum_save_load_both_optimizers() {
        let dir = tempfile::tempdir().unwrap();
        for optimizer in [Optimizer::Ftrl, Optimizer::Sgd] {
            let config = ModelConfig {
                optimizer,
                bits: 12,
                ..ModelConfig::default()
            };
            let model = Model::from_config(&config).unwrap();
            let mut h = model.handle();
            let x = [Feature {
                index: 3,
                value: 1.0,
            }];
            for i in 0..50 {
                h.update(&x, i % 3 == 0);
            }
            h.flush();
            let path = dir.path().join("m.snap");
            model.save(&path).unwrap();
            let loaded = Model::load(&path).unwrap();
            assert_eq!(loaded.config(), config);
            assert_eq!(loaded.version(), 50);
            assert_eq!(loaded.handle().predict(&x), h.predict(&x));
        }
    }
}
