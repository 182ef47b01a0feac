//! FTRL-Proximal logistic regression, shared lock-free by all workers of a process.
//!
//! # The algorithm
//!
//! Per-coordinate FTRL-Proximal, Algorithm 1 of McMahan et al., *Ad Click Prediction: a View
//! from the Trenches* (KDD 2013). Each coordinate `i` keeps two numbers, `z_i` and `n_i`; its
//! weight is computed lazily when needed:
//!
//! ```text
//! w_i = 0                                               if |z_i| <= λ1
//! w_i = -(z_i - sgn(z_i) λ1) / ((β + √n_i) / α + λ2)    otherwise
//! ```
//!
//! For an example `x` with label `y ∈ {0, 1}`: `p = σ(Σ w_i x_i)`, and for every `i` with
//! `x_i ≠ 0`: `g_i = (p - y) x_i`, `σ_i = (√(n_i + g_i²) - √n_i) / α`,
//! `z_i += g_i - σ_i w_i`, `n_i += g_i²`. Feature values are real (not only 1.0), so the
//! gradient carries `x_i`. The model adds its own bias coordinate (value 1.0, at index
//! `2^bits`, outside the hashed range so it never collides with a feature); a featurizer that
//! also emits a bias feature is harmless.
//!
//! `update` computes `p` with the current weights, as the algorithm requires; the weights
//! used in `z_i`'s update are the ones that produced `p`. [`FtrlHandle::predict_and_update`]
//! does both in two passes over the features and returns the pre-update score; no
//! allocation, one division per non-zero weight, two square roots per updated coordinate.
//!
//! # Sharing across workers
//!
//! timely runs N worker threads in one process. Rather than N models (each learning from
//! 1/N of the data, and needing a merge) or a lock (serializing the hot path), all workers
//! share one table of coordinates and update it Hogwild-style (Niu et al., *HOGWILD!*, NIPS
//! 2011):
//!
//! - Each coordinate is one `AtomicU64` packing `(z: f32, n: f32)`. A read is one relaxed
//!   load and a write one relaxed store, so a coordinate is never torn: `z` and `n` always
//!   belong together.
//! - An update is load, compute, store — not a compare-and-swap loop. When two workers update
//!   the same coordinate at the same instant, one of the two updates is lost. With sparse
//!   hashed features two workers rarely touch the same coordinate at once, and losing an
//!   occasional step of an online gradient method only adds a little noise; Niu et al. show
//!   convergence is kept when collisions are sparse. The frequent coordinates (the bias, a
//!   popular country) are the ones that may lose steps, and they are the ones with the most
//!   steps to spare.
//! - What it costs: with more than one worker, training is not bit-for-bit reproducible (it
//!   depends on thread interleaving), and a prediction may mix coordinates from just before
//!   and just after another worker's update. Relaxed atomics compile to plain loads and
//!   stores on x86-64 and AArch64, so the single-worker path pays nothing for the sharing.
//! - With one worker it is exactly sequential FTRL, deterministic for a given input order.
//!
//! # Frequent coordinates: updates held back, with several workers
//!
//! Some coordinates are in almost every example: the bias, the hour of day, the device, a
//! large country. With two workers each writes them on every update, and every write takes
//! the cache line away from the other core, which then waits for it back on its next read
//! or write. How much that costs depends on how far apart the cores are: on the 2M-impression
//! replay 2 workers spent 10% more CPU with a shared model than with a model each when
//! this VM's two vCPUs were far apart (slow phases, where 2 workers took 4.2 s of CPU to
//! one worker's 2.8 s), 1% when close. So with several workers
//! ([`FtrlHandle::hold_frequent_updates`]) a handle keeps its own changes `(Δz, Δn)` to
//! coordinates it finds frequent (`n` past [`FREQUENT_N`]) in a small direct-mapped table,
//! reads them as the shared value plus its own change (so it always sees its own updates
//! and, as soon as they are published, everyone else's), and adds them to the shared
//! table every [`HOLD_UPDATES`] updates, on [`flush`](FtrlHandle::flush) (after each batch
//! the label join processes, so before any checkpoint or save) and when dropped. A change
//! held back is added to the value there at publish time, so the other workers' updates in
//! between are kept (a publish can still race with another worker's store, as any Hogwild
//! store can, but once per publish rather than once per update); what the other workers
//! see of a frequent coordinate is up to [`HOLD_UPDATES`] of this handle's updates old, the
//! staleness Hogwild already tolerates (2 workers' logloss on the 2M replay: 0.14270, one
//! worker's 0.14271). Changes held at a challenger's promotion land on the promoted
//! weights, as other workers' in-flight updates do. With one worker nothing is held back:
//! exactly sequential FTRL.
//!
//! `f32` halves the memory of `f64` state (8 bytes per coordinate: 32 MiB at the default
//! `bits = 22`) and keeps both halves in one atomic word. Its 24-bit mantissa means `n_i` of a
//! coordinate seen tens of millions of times stops growing by tiny `g²`; its learning rate is
//! then already ~α/√n, so the effect is negligible.
//!
//! # Version
//!
//! The model version is the number of updates applied, over all handles. A shared counter
//! bumped on every update would be a contended cache line written by every worker on every
//! example, so each handle counts locally and adds its count to the shared counter every
//! 1024 updates, on [`FtrlHandle::flush`], and when dropped. A handle's
//! [`version`](Learner::version) is the shared count plus its own unpublished updates: exact
//! with one worker, and with N workers behind by at most the other workers' unpublished
//! updates (< 1024 each). Flush every handle before saving a checkpoint.
//!
//! # Robustness
//!
//! Non-finite feature values count as 0 and finite ones are clamped to ±1e6
//! ([`MAX_FEATURE_VALUE`](super::MAX_FEATURE_VALUE)); the logit is clamped before the sigmoid,
//! so a prediction is always finite and inside `(0, 1)`; an update whose result would not be
//! finite is dropped, so no NaN or infinity ever enters `z` or `n`. Feature indices are masked
//! into `0..2^bits`, so no input can index out of bounds.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use ctrflow_dataflows::Learner;
use ctrflow_dataflows::record::Feature;
use ctrflow_state::snapshot::{self, Kind};

use super::codec::{Reader, corrupt};
use super::logistic::sigmoid;
use super::{ModelConfig, ModelError, Optimizer, PUBLISH_EVERY, PaddedCounter, sanitize};

/// Snapshot kind tag of an FTRL model.
pub const SNAPSHOT_KIND: Kind = *b"FTRL";

/// Payload version written by this build.
const SNAPSHOT_VERSION: u32 = 1;

/// Bytes per saved coordinate: index `u32`, `z` `f32`, `n` `f32`.
const ENTRY_LEN: usize = 12;

/// How many features' weights `predict_and_update` remembers between its two passes; longer
/// examples recompute the rest (a typical event has about 15 features).
const REMEMBERED: usize = 32;

/// Slots of a handle's table of held-back changes (16 bytes each: 16 KiB, in L1).
const HOLD_SLOTS: usize = 1024;

/// A coordinate whose `n` (sum of squared gradients) reaches this is frequent: with a 4%
/// click rate about 800 updates. (At 4, a thousand moderately frequent coordinates filled
/// the table first; the same time either way.)
const FREQUENT_N: f32 = 32.0;

/// Updates a handle makes between adding its held-back changes to the shared table: a
/// publish writes every changed frequent coordinate (a hundred or so) once.
const HOLD_UPDATES: u32 = 256;

/// A free slot of [`Held`].
const FREE: u32 = u32::MAX;

/// One frequent coordinate's change not yet added to the shared table.
#[derive(Clone, Copy, Debug)]
struct HeldSlot {
    /// Coordinate index ([`FREE`]: none).
    index: u32,
    dz: f32,
    dn: f32,
    changed: bool,
}

/// A handle's held-back changes to frequent coordinates (several workers only; see the
/// module docs). A coordinate takes the slot `index % HOLD_SLOTS` if free, and keeps it.
#[derive(Debug)]
struct Held {
    slots: Box<[HeldSlot; HOLD_SLOTS]>,
    /// Slots with a change since the last publish.
    changed: Vec<u32>,
    updates: u32,
}

impl Held {
    fn new() -> Self {
        let free = HeldSlot {
            index: FREE,
            dz: 0.0,
            dn: 0.0,
            changed: false,
        };
        Self {
            slots: Box::new([free; HOLD_SLOTS]),
            changed: Vec::with_capacity(HOLD_SLOTS),
            updates: 0,
        }
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> &HeldSlot {
        &self.slots[i % HOLD_SLOTS]
    }
}

/// Hyper-parameters in the form the hot path uses.
#[derive(Clone, Copy, Debug)]
struct Params {
    bits: u8,
    mask: u32,
    bias: usize,
    alpha: f64,
    beta: f64,
    l1: f64,
    l2: f64,
    l1_f: f32,
    l2_f: f32,
    inv_alpha: f32,
    beta_over_alpha: f32,
}

impl Params {
    fn new(bits: u8, alpha: f64, beta: f64, l1: f64, l2: f64) -> Self {
        Self {
            bits,
            mask: (1u32 << bits) - 1,
            bias: 1usize << bits,
            alpha,
            beta,
            l1,
            l2,
            l1_f: l1 as f32,
            l2_f: l2 as f32,
            inv_alpha: (1.0 / alpha) as f32,
            beta_over_alpha: (beta / alpha) as f32,
        }
    }

    /// The lazy FTRL weight of a coordinate holding `(z, n)`.
    #[inline(always)]
    fn weight(&self, z: f32, n: f32) -> f32 {
        let w = (self.l1_f.copysign(z) - z)
            / (self.beta_over_alpha + n.sqrt() * self.inv_alpha + self.l2_f);
        // A select, not a branch: whether a coordinate is inside the L1 ball (its weight
        // 0) is data-dependent, and a mispredicted branch per coordinate cost more than
        // the root and the division (1 worker's replay: −2%).
        std::hint::select_unpredictable(z.abs() > self.l1_f, w, 0.0)
    }

    /// A coordinate's `(z, n)` after gradient `g` at weight `w`; `None` if not finite
    /// (the update is dropped).
    #[inline(always)]
    fn next(&self, z: f32, n: f32, w: f32, g: f32) -> Option<(f32, f32)> {
        let n_new = n + g * g;
        let sigma = (n_new.sqrt() - n.sqrt()) * self.inv_alpha;
        let z_new = z + g - sigma * w;
        (z_new.is_finite() && n_new.is_finite()).then_some((z_new, n_new))
    }
}

#[inline(always)]
fn unpack(v: u64) -> (f32, f32) {
    (f32::from_bits(v as u32), f32::from_bits((v >> 32) as u32))
}

#[inline(always)]
fn pack(z: f32, n: f32) -> u64 {
    u64::from(z.to_bits()) | (u64::from(n.to_bits()) << 32)
}

#[derive(Debug)]
struct Shared {
    params: Params,
    /// `2^bits` hashed coordinates, then the bias.
    coords: Box<[AtomicU64]>,
    version: PaddedCounter,
    /// Cluster mode only ([`FtrlModel::track_changes`]): one bit per page of
    /// [`PAGE`] coordinates, set when an update touches the page, so that the delta scan
    /// reads the pages changed since the last one instead of the whole table.
    dirty: OnceLock<Box<[AtomicU64]>>,
}

/// Coordinates per page of the change bitmap.
const PAGE: usize = 64;

/// An FTRL-Proximal model: the shared weight table. Cheap to clone (an `Arc`).
#[derive(Clone, Debug)]
pub struct FtrlModel {
    shared: Arc<Shared>,
}

impl FtrlModel {
    /// A fresh, all-zero model with `config`'s `bits`, `alpha`, `beta`, `l1` and `l2` (the
    /// `optimizer` field is not looked at).
    pub fn new(config: &ModelConfig) -> Result<Self, ModelError> {
        config.check()?;
        Ok(Self::from_params(
            Params::new(config.bits, config.alpha, config.beta, config.l1, config.l2),
            0,
        ))
    }

    fn from_params(params: Params, version: u64) -> Self {
        let coords = (0..=params.bias).map(|_| AtomicU64::new(0)).collect();
        Self {
            shared: Arc::new(Shared {
                params,
                coords,
                version: PaddedCounter(AtomicU64::new(version)),
                dirty: OnceLock::new(),
            }),
        }
    }

    /// Coordinates as raw words (`(z, n)` packed), for incremental checkpoints: how many.
    pub(crate) fn raw_len(&self) -> usize {
        self.shared.coords.len()
    }

    /// Raw word `i`.
    pub(crate) fn raw(&self, i: usize) -> u64 {
        self.shared.coords[i].load(Relaxed)
    }

    /// Sets raw word `i` (restoring a checkpoint, before any handle learns).
    pub(crate) fn set_raw(&self, i: usize, word: u64) {
        self.shared.coords[i].store(word, Relaxed);
    }

    /// Sets every coordinate to `from`'s weight with its accumulated squared gradients
    /// `n` reset to 0: the same predictions, with the learning rates of a fresh model
    /// (a warm-started challenger; `from` has the same parameters).
    pub(crate) fn warm_start_from(&self, from: &FtrlModel) {
        let p = &self.shared.params;
        let denominator = p.beta_over_alpha + p.l2_f;
        for (to, c) in self.shared.coords.iter().zip(from.shared.coords.iter()) {
            let (z, n) = unpack(c.load(Relaxed));
            let w = p.weight(z, n);
            // weight(z', 0) = w: z' = -w (β/α + λ2) - sign(w) λ1; a zero weight keeps its
            // z inside [-λ1, λ1], the L1 dead zone.
            let z_new = if w == 0.0 {
                z.clamp(-p.l1_f, p.l1_f)
            } else {
                -w * denominator - p.l1_f.copysign(w)
            };
            to.store(pack(z_new, 0.0), Relaxed);
        }
    }

    /// Sets the version (restoring a checkpoint).
    pub(crate) fn set_version(&self, version: u64) {
        self.shared.version.0.store(version, Relaxed);
    }

    /// Adds `n` updates learned elsewhere (another process of a cluster) to the version.
    pub(crate) fn add_version(&self, n: u64) {
        self.shared.version.0.fetch_add(n, Relaxed);
    }

    /// Cluster mode ([`crate::cluster`]): appends `(index, Δz, Δn)` for every coordinate
    /// that changed since `baseline` (one raw word per coordinate, as this model stood at
    /// the last exchange), and moves `baseline` to what was read. FTRL's `z` and `n` are
    /// sums over examples, so another replica adds these deltas to learn what this one
    /// learned. One pass over the table, no allocation beyond `out`'s growth.
    ///
    /// With [`track_changes`](Self::track_changes) on, only the pages updated since the
    /// last scan are read. A page whose bit an update finds already set is not marked
    /// again; should that update land just after the scan cleared the bit and read the
    /// page, it goes with the page's next change (the delta is always "now − baseline").
    pub(crate) fn delta_since(&self, baseline: &mut [u64], out: &mut Vec<(u32, f32, f32)>) {
        let coords = &self.shared.coords;
        let mut diff = |i: usize, b: &mut u64| {
            let now = coords[i].load(Relaxed);
            if now != *b {
                let (z, n) = unpack(now);
                let (zb, nb) = unpack(*b);
                out.push((i as u32, z - zb, n - nb));
                *b = now;
            }
        };
        let Some(dirty) = self.shared.dirty.get() else {
            for (i, b) in baseline.iter_mut().enumerate().take(coords.len()) {
                diff(i, b);
            }
            return;
        };
        for (w, word) in dirty.iter().enumerate() {
            let mut bits = word.swap(0, std::sync::atomic::Ordering::AcqRel);
            while bits != 0 {
                let page = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = page * PAGE;
                let end = (start + PAGE).min(coords.len());
                if let Some(slice) = baseline.get_mut(start..end) {
                    for (i, b) in (start..).zip(slice) {
                        diff(i, b);
                    }
                }
            }
        }
    }

    /// Cluster mode: from now on, updates mark the pages they touch, for
    /// [`delta_since`](Self::delta_since). Call before any handle learns; without it (one
    /// process) updates mark nothing.
    pub(crate) fn track_changes(&self) {
        let pages = self.shared.coords.len().div_ceil(PAGE);
        self.shared
            .dirty
            .get_or_init(|| (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
    }

    /// Cluster mode: adds another replica's deltas ([`delta_since`](Self::delta_since)) to
    /// the model and to `baseline`, so that they are not sent back. A coordinate that no
    /// local update touched since the last exchange gets the very same word in both, so it
    /// is not sent again; deltas that are not finite or out of range are ignored. Like any
    /// update of the shared table, one racing a local worker's update may lose one of the two.
    pub(crate) fn add_delta(&self, baseline: &mut [u64], deltas: &[(u32, f32, f32)]) {
        for &(i, dz, dn) in deltas {
            let (Some(slot), Some(b)) = (
                self.shared.coords.get(i as usize),
                baseline.get_mut(i as usize),
            ) else {
                continue;
            };
            let add = |word: u64| {
                let (z, n) = unpack(word);
                let (z, n) = (z + dz, (n + dn).max(0.0));
                (z.is_finite() && n.is_finite()).then(|| pack(z, n))
            };
            let now = slot.load(Relaxed);
            let Some(new) = add(now) else {
                continue;
            };
            slot.store(new, Relaxed);
            *b = if *b == now {
                new
            } else {
                add(*b).unwrap_or(now)
            };
        }
    }

    /// A new handle for one worker. All handles share this model's weights.
    pub fn handle(&self) -> FtrlHandle {
        FtrlHandle {
            shared: Arc::clone(&self.shared),
            p: self.shared.params,
            unpublished: 0,
            held: None,
        }
    }

    /// The hyper-parameters as a config (optimizer `ftrl`, SGD keys at their defaults).
    pub fn config(&self) -> ModelConfig {
        let p = &self.shared.params;
        ModelConfig {
            optimizer: Optimizer::Ftrl,
            bits: p.bits,
            alpha: p.alpha,
            beta: p.beta,
            l1: p.l1,
            l2: p.l2,
            ..ModelConfig::default()
        }
    }

    /// Updates published by all handles (see the module doc on versions).
    pub fn version(&self) -> u64 {
        self.shared.version.0.load(Relaxed)
    }

    /// Number of coordinates, including the bias: `2^bits + 1`.
    pub fn coordinates(&self) -> usize {
        self.shared.coords.len()
    }

    fn weights(&self) -> impl Iterator<Item = f32> + '_ {
        let p = self.shared.params;
        self.shared.coords.iter().map(move |c| {
            let (z, n) = unpack(c.load(Relaxed));
            // Most coordinates are inside the L1 ball (never seen, most of them): a branch
            // that predicts well here, where `weight` itself must not branch.
            if z.abs() > p.l1_f {
                p.weight(z, n)
            } else {
                0.0
            }
        })
    }

    /// Number of non-zero weights (coordinates whose |z| exceeds λ1), bias included.
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

    /// Saves the model to `path` atomically, as a snapshot of kind `FTRL`: a header (bits,
    /// α, β, λ1, λ2, version, number of coordinates, number of entries), then one
    /// `(index: u32, z: f32, n: f32)` entry per coordinate that is not all-zero.
    ///
    /// The version saved is the published one: flush the handles first. Handles may keep
    /// updating while this runs; the file then holds each coordinate as it was when read.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let p = &self.shared.params;
        let mut payload = Vec::with_capacity(64);
        payload.extend_from_slice(&u32::from(p.bits).to_le_bytes());
        for v in [p.alpha, p.beta, p.l1, p.l2] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        payload.extend_from_slice(&self.version().to_le_bytes());
        payload.extend_from_slice(&(self.coordinates() as u64).to_le_bytes());
        let count_at = payload.len();
        payload.extend_from_slice(&0u64.to_le_bytes());
        let mut count = 0u64;
        for (i, c) in self.shared.coords.iter().enumerate() {
            let v = c.load(Relaxed);
            if v != 0 {
                let (z, n) = unpack(v);
                payload.extend_from_slice(&(i as u32).to_le_bytes());
                payload.extend_from_slice(&z.to_le_bytes());
                payload.extend_from_slice(&n.to_le_bytes());
                count += 1;
            }
        }
        payload[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        snapshot::write_snapshot(path, SNAPSHOT_KIND, SNAPSHOT_VERSION, &payload)?;
        Ok(())
    }

    /// Loads a model saved by [`save`](Self::save). A missing, foreign, truncated, corrupt or
    /// non-FTRL file is an error, never a panic.
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
        let (alpha, beta, l1, l2) = (r.f64("alpha")?, r.f64("beta")?, r.f64("l1")?, r.f64("l2")?);
        let model_version = r.u64("version")?;
        let coordinates = r.u64("coordinates")?;
        let count = r.u64("entry count")?;
        let config = ModelConfig {
            bits: u8::try_from(bits).unwrap_or(u8::MAX),
            alpha,
            beta,
            l1,
            l2,
            ..ModelConfig::default()
        };
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(corrupt(path, problems.join("; ")));
        }
        let model = Self::from_params(Params::new(config.bits, alpha, beta, l1, l2), model_version);
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
            let (z, n) = (r.f32("entry z")?, r.f32("entry n")?);
            let Some(slot) = model.shared.coords.get(index as usize) else {
                return Err(corrupt(path, format!("entry index {index} out of range")));
            };
            if !z.is_finite() || !n.is_finite() || n < 0.0 {
                return Err(corrupt(path, format!("entry {index} has z = {z}, n = {n}")));
            }
            slot.store(pack(z, n), Relaxed);
        }
        Ok(model)
    }
}

/// One worker's handle on an [`FtrlModel`]: scores and learns through the shared weights.
///
/// `Send`, so it can move into a timely worker; clones share the weights and start with no
/// unpublished updates.
#[derive(Debug)]
pub struct FtrlHandle {
    shared: Arc<Shared>,
    /// A copy of the parameters, so the hot path reads them from the handle, not through
    /// the `Arc`.
    p: Params,
    unpublished: u64,
    /// Changes to frequent coordinates not yet added to the shared table, when several
    /// workers share it ([`FtrlHandle::hold_frequent_updates`]).
    held: Option<Box<Held>>,
}

impl Clone for FtrlHandle {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            p: self.p,
            unpublished: 0,
            held: self.held.as_ref().map(|_| Box::new(Held::new())),
        }
    }
}

impl Drop for FtrlHandle {
    fn drop(&mut self) {
        self.flush();
    }
}

impl FtrlHandle {
    /// The coordinate a feature index lands in.
    #[inline(always)]
    fn coordinate(&self, index: u32) -> usize {
        (index & self.p.mask) as usize
    }

    /// Coordinate `i`'s `(z, n)` as this handle sees it: the shared value, plus (with
    /// `HOLD`) its own change held back.
    #[inline(always)]
    fn read<const HOLD: bool>(&self, i: usize) -> (f32, f32) {
        let (z, n) = unpack(self.shared.coords[i].load(Relaxed));
        if HOLD && let Some(held) = &self.held {
            let s = held.slot(i);
            if s.index as usize == i {
                return (z + s.dz, n + s.dn);
            }
        }
        (z, n)
    }

    /// Applies gradient `g` to coordinate `i`, whose weight was `w` when the prediction was
    /// made: to the shared table, or (with `HOLD`, for a frequent coordinate) to the change
    /// held back. One look at the coordinate's slot of held changes, not one to read and
    /// one to write.
    #[inline(always)]
    fn step<const HOLD: bool>(&mut self, i: usize, w: f32, g: f32) {
        let shared = unpack(self.shared.coords[i].load(Relaxed));
        if HOLD && let Some(held) = self.held.as_deref_mut() {
            let at = i % HOLD_SLOTS;
            let s = &mut held.slots[at];
            if s.index as usize == i {
                let (z, n) = (shared.0 + s.dz, shared.1 + s.dn);
                let Some((z_new, n_new)) = self.p.next(z, n, w, g) else {
                    return;
                };
                s.dz += z_new - z;
                s.dn += n_new - n;
                if !s.changed {
                    s.changed = true;
                    held.changed.push(at as u32);
                }
                return;
            }
            let Some((z_new, n_new)) = self.p.next(shared.0, shared.1, w, g) else {
                return;
            };
            if s.index == FREE && n_new >= FREQUENT_N {
                // Held back from the next update on. (`i` < 2^31: `bits` is at most 30.)
                s.index = i as u32;
            }
            self.shared.coords[i].store(pack(z_new, n_new), Relaxed);
            return;
        }
        if let Some((z_new, n_new)) = self.p.next(shared.0, shared.1, w, g) {
            self.shared.coords[i].store(pack(z_new, n_new), Relaxed);
        }
    }

    /// Scores `x`, then learns from it with label `positive`; returns the score from
    /// before the update. One pass to predict, one to update, no allocation.
    #[inline]
    pub fn predict_and_update(&mut self, x: &[Feature], positive: bool) -> f32 {
        // One branch per example, not one per coordinate: each variant is compiled apart.
        if self.held.is_some() {
            self.learn::<true>(x, positive)
        } else {
            self.learn::<false>(x, positive)
        }
    }

    #[inline(always)]
    fn learn<const HOLD: bool>(&mut self, x: &[Feature], positive: bool) -> f32 {
        let p = self.p;
        let (bz, bn) = self.read::<HOLD>(p.bias);
        let bias_w = p.weight(bz, bn);
        let mut logit = bias_w;
        let mut remembered = [0f32; REMEMBERED];
        for (i, f) in x.iter().enumerate() {
            let (z, n) = self.read::<HOLD>(self.coordinate(f.index));
            let w = p.weight(z, n);
            if let Some(r) = remembered.get_mut(i) {
                *r = w;
            }
            logit += w * sanitize(f.value);
        }
        let prediction = sigmoid(logit);

        let residual = prediction - if positive { 1.0 } else { 0.0 };
        self.step::<HOLD>(p.bias, bias_w, residual);
        for (i, f) in x.iter().enumerate() {
            let v = sanitize(f.value);
            if v == 0.0 {
                // Zero gradient: z and n would not change.
                continue;
            }
            let c = self.coordinate(f.index);
            let w = match remembered.get(i) {
                Some(w) => *w,
                // Past the remembered weights, re-read the coordinate. It differs from the
                // prediction's only if another worker or a duplicate index earlier in this
                // example updated it in between: a slightly fresher weight, harmless.
                None => {
                    let (z, n) = self.read::<HOLD>(c);
                    p.weight(z, n)
                }
            };
            self.step::<HOLD>(c, w, residual * v);
        }

        // Cluster mode only: one predictable branch per example otherwise.
        if let Some(dirty) = self.shared.dirty.get() {
            self.mark(dirty, x);
        }

        self.unpublished += 1;
        if self.unpublished >= PUBLISH_EVERY {
            self.flush();
        }
        if HOLD && let Some(held) = self.held.as_deref_mut() {
            held.updates += 1;
            if held.updates >= HOLD_UPDATES {
                self.publish_held();
            }
        }
        prediction
    }

    #[inline(always)]
    fn score<const HOLD: bool>(&self, x: &[Feature]) -> f32 {
        let p = &self.p;
        let (bz, bn) = self.read::<HOLD>(p.bias);
        let mut logit = p.weight(bz, bn);
        for f in x {
            let (z, n) = self.read::<HOLD>(self.coordinate(f.index));
            logit += p.weight(z, n) * sanitize(f.value);
        }
        sigmoid(logit)
    }

    /// Holds back this handle's changes to frequent coordinates and adds them to the shared
    /// table every [`HOLD_UPDATES`] updates (see the module docs): for each handle when
    /// several workers share the model. Not with one worker, which would no longer run
    /// exactly sequential FTRL.
    pub fn hold_frequent_updates(&mut self) {
        if self.held.is_none() {
            self.held = Some(Box::new(Held::new()));
        }
    }

    /// Adds the changes held back to the shared table (each added to the value there now,
    /// so no other worker's update is overwritten).
    fn publish_held(&mut self) {
        let Self { shared, held, .. } = self;
        let Some(held) = held.as_deref_mut() else {
            return;
        };
        held.updates = 0;
        let dirty = shared.dirty.get();
        for &at in &held.changed {
            let s = &mut held.slots[at as usize];
            let i = s.index as usize;
            let c = &shared.coords[i];
            let (z, n) = unpack(c.load(Relaxed));
            let (z, n) = (z + s.dz, n + s.dn);
            if z.is_finite() && n.is_finite() {
                c.store(pack(z, n), Relaxed);
            }
            (s.dz, s.dn, s.changed) = (0.0, 0.0, false);
            if let Some(dirty) = dirty {
                mark_page(dirty, i);
            }
        }
        held.changed.clear();
    }

    /// Marks the pages of `x`'s coordinates and the bias as changed (after updating them:
    /// the release orders the updates before the mark the scan acquires).
    #[cold]
    fn mark(&self, dirty: &[AtomicU64], x: &[Feature]) {
        mark_page(dirty, self.p.bias);
        for f in x {
            mark_page(dirty, self.coordinate(f.index));
        }
    }

    /// Publishes this handle's unpublished updates: the changes held back, and their count
    /// to the shared model version.
    pub fn flush(&mut self) {
        self.publish_held();
        if self.unpublished > 0 {
            self.shared.version.0.fetch_add(self.unpublished, Relaxed);
            self.unpublished = 0;
        }
    }

    /// The model this handle updates.
    pub fn model(&self) -> FtrlModel {
        FtrlModel {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Marks coordinate `i`'s page in the change bitmap (cluster mode).
#[inline]
fn mark_page(dirty: &[AtomicU64], i: usize) {
    let page = i / PAGE;
    let (word, bit) = (&dirty[page / 64], 1u64 << (page % 64));
    if word.load(Relaxed) & bit == 0 {
        word.fetch_or(bit, std::sync::atomic::Ordering::Release);
    }
}

impl Learner for FtrlHandle {
    #[inline]
    fn prefetch(&self, x: &[Feature]) {
        for f in x {
            super::prefetch(&self.shared.coords[self.coordinate(f.index)]);
        }
    }

    #[inline]
    fn predict(&self, x: &[Feature]) -> f32 {
        if self.held.is_some() {
            self.score::<true>(x)
        } else {
            self.score::<false>(x)
        }
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
pub(crate) mod tests {
    use super::*;
    use crate::model::logistic::{entropy, logloss};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn config(bits: u8) -> ModelConfig {
        ModelConfig {
            bits,
            ..ModelConfig::default()
        }
    }

    /// A synthetic CTR-like stream: 15 active features per example out of a vocabulary,
    /// a hidden sparse logistic model with a ~5% base rate. Returns (features, label).
    pub(crate) fn synthetic(seed: u64, examples: usize) -> Vec<(Vec<Feature>, bool)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let vocab = 30_000u32;
        let truth: Vec<f32> = (0..vocab)
            .map(|_| {
                if rng.random_bool(0.3) {
                    rng.random_range(-2.5..2.5)
                } else {
                    0.0
                }
            })
            .collect();
        (0..examples)
            .map(|_| {
                let x: Vec<Feature> = (0..15)
                    .map(|slot| {
                        // 15 fields of vocab/15 values each, skewed towards low values.
                        let per = vocab / 15;
                        let v = (rng.random::<f32>().powi(3) * per as f32) as u32;
                        Feature {
                            index: (slot * per + v).wrapping_mul(2_654_435_761) >> 12,
                            value: if slot == 14 {
                                rng.random_range(0.0..2.0)
                            } else {
                                1.0
                            },
                        }
                    })
                    .collect();
                let logit: f32 = -4.0
                    + x.iter()
                        .map(|f| truth[((f.index as usize) * 7) % vocab as usize] * f.value)
                        .sum::<f32>();
                let y = rng.random::<f32>() < 1.0 / (1.0 + (-logit).exp());
                (x, y)
            })
            .collect()
    }

    fn progressive_logloss(h: &mut FtrlHandle, data: &[(Vec<Feature>, bool)]) -> (f64, f64) {
        let mut loss = 0.0;
        let mut positives = 0usize;
        for (x, y) in data {
            loss += logloss(f64::from(h.predict_and_update(x, *y)), *y);
            positives += usize::from(*y);
        }
        let n = data.len() as f64;
        (loss / n, entropy(positives as f64 / n))
    }

    #[test]
    fn learns_synthetic_problem() {
        let data = synthetic(1, 200_000);
        let model = FtrlModel::new(&config(20)).unwrap();
        let mut h = model.handle();
        let (_, base) = progressive_logloss(&mut h, &data[..100_000]);
        let (late, _) = progressive_logloss(&mut h, &data[100_000..]);
        assert!(
            late < 0.85 * base,
            "logloss {late} vs base-rate entropy {base}"
        );
        assert!(model.nonzero_weights() > 10);
        assert!(model.weight_norm().is_finite() && model.weight_norm() > 0.0);
    }

    #[test]
    fn predictions_finite_for_extreme_inputs() {
        let model = FtrlModel::new(&config(8)).unwrap();
        let mut h = model.handle();
        let values = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN_POSITIVE,
            0.0,
            -0.0,
            1.0,
        ];
        for round in 0..200 {
            for (k, &value) in values.iter().enumerate() {
                let x = [
                    Feature {
                        index: k as u32,
                        value,
                    },
                    Feature {
                        index: u32::MAX - k as u32,
                        value,
                    },
                    Feature {
                        index: 3,
                        value: 1.0,
                    },
                ];
                let p = h.predict(&x);
                assert!(p > 0.0 && p < 1.0, "{value}: {p}");
                let p = h.predict_and_update(&x, (round + k) % 2 == 0);
                assert!(p > 0.0 && p < 1.0, "{value}: {p}");
            }
        }
        for c in model.shared.coords.iter() {
            let (z, n) = unpack(c.load(Relaxed));
            assert!(z.is_finite() && n.is_finite() && n >= 0.0);
        }
        assert!(model.weight_norm().is_finite());
        let empty: [Feature; 0] = [];
        let p = h.predict(&empty);
        assert!(p > 0.0 && p < 1.0);
    }

    /// Straightforward sequential FTRL over a plain vector, in the same float operation
    /// order as the handle: the reference the lock-free two-pass version must match.
    fn reference_update(state: &mut [(f32, f32)], p: &Params, x: &[Feature], y: bool) -> f32 {
        let mut logit = p.weight(state[p.bias].0, state[p.bias].1);
        let mut ws = vec![logit];
        for f in x {
            let (z, n) = state[(f.index & p.mask) as usize];
            let w = p.weight(z, n);
            ws.push(w);
            logit += w * sanitize(f.value);
        }
        let prediction = sigmoid(logit);
        let r = prediction - if y { 1.0 } else { 0.0 };
        let ix = std::iter::once((p.bias, 1.0)).chain(
            x.iter()
                .map(|f| ((f.index & p.mask) as usize, sanitize(f.value))),
        );
        for ((i, v), w) in ix.zip(ws) {
            if v == 0.0 {
                continue;
            }
            let g = r * v;
            let (z, n) = state[i];
            let n_new = n + g * g;
            let sigma = (n_new.sqrt() - n.sqrt()) * p.inv_alpha;
            state[i] = (z + g - sigma * w, n_new);
        }
        prediction
    }

    #[test]
    fn matches_reference_including_long_examples_and_duplicates() {
        let model = FtrlModel::new(&config(10)).unwrap();
        let p = model.shared.params;
        let mut h = model.handle();
        let mut state = vec![(0f32, 0f32); model.coordinates()];
        let mut rng = StdRng::seed_from_u64(9);
        for i in 0..3000 {
            // Short examples with colliding indices; long ones (beyond the 32 remembered
            // weights) with distinct indices, see `predict_and_update`.
            let x: Vec<Feature> = if i % 2 == 0 {
                (0..rng.random_range(0..=REMEMBERED))
                    .map(|_| Feature {
                        index: rng.random_range(0..300) * 3_000_017,
                        value: rng.random_range(-1.0..3.0),
                    })
                    .collect()
            } else {
                let start = rng.random_range(0..1000);
                (0..rng.random_range(0..100))
                    .map(|k| Feature {
                        index: start + k,
                        value: rng.random_range(-1.0..3.0),
                    })
                    .collect()
            };
            let y = i % 7 == 0;
            let got = h.predict_and_update(&x, y);
            let want = reference_update(&mut state, &p, &x, y);
            assert_eq!(got.to_bits(), want.to_bits(), "example {i}");
        }
        for (c, (z, n)) in model.shared.coords.iter().zip(state) {
            assert_eq!(unpack(c.load(Relaxed)), (z, n));
        }
    }

    #[test]
    fn save_load_identical_predictions() {
        let data = synthetic(2, 20_000);
        let model = FtrlModel::new(&config(16)).unwrap();
        let mut h = model.handle();
        for (x, y) in &data {
            h.update(x, *y);
        }
        h.flush();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ftrl.snap");
        model.save(&path).unwrap();
        let loaded = FtrlModel::load(&path).unwrap();
        assert_eq!(loaded.version(), 20_000);
        assert_eq!(loaded.config(), model.config());
        assert_eq!(loaded.nonzero_weights(), model.nonzero_weights());
        let lh = loaded.handle();
        for (x, _) in data.iter().take(2000) {
            assert_eq!(lh.predict(x).to_bits(), h.predict(x).to_bits());
        }
        // The file is sparse: far smaller than 2^16 coordinates × 12 bytes.
        assert!(std::fs::metadata(&path).unwrap().len() < 12 << 16);
    }

    #[test]
    fn corrupt_or_foreign_file_is_an_error() {
        let model = FtrlModel::new(&config(8)).unwrap();
        let mut h = model.handle();
        for i in 0..100u32 {
            h.update(
                &[Feature {
                    index: i,
                    value: 1.0,
                }],
                i % 4 == 0,
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ftrl.snap");
        model.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();

        let mut bad = good.clone();
        bad[40] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");

        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        std::fs::write(&path, b"bits = 22\n").unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("not a ctrflow snapshot"), "{err}");

        // Intact framing, nonsense payload.
        snapshot::write_snapshot(&path, SNAPSHOT_KIND, SNAPSHOT_VERSION, &[1, 2, 3]).unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
        let mut payload = good[28..good.len() - 4].to_vec();
        payload[0] = 77; // bits
        snapshot::write_snapshot(&path, SNAPSHOT_KIND, SNAPSHOT_VERSION, &payload).unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("model.bits"), "{err}");
        snapshot::write_snapshot(&path, SNAPSHOT_KIND, 9, &payload).unwrap();
        let err = FtrlModel::load(&path).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn two_threads_share_and_learn() {
        let data = synthetic(3, 200_000);
        let model = FtrlModel::new(&config(20)).unwrap();
        let (first, second) = data.split_at(data.len() / 2);
        std::thread::scope(|s| {
            for part in [first, second] {
                let mut h = model.handle();
                s.spawn(move || {
                    for (x, y) in part {
                        let p = h.predict_and_update(x, *y);
                        assert!(p > 0.0 && p < 1.0);
                    }
                });
            }
        });
        // Both handles were dropped, so both flushed.
        assert_eq!(model.version(), 200_000);
        let holdout = synthetic(3, 220_000).split_off(200_000);
        let h = model.handle();
        let mut loss = 0.0;
        let mut positives = 0usize;
        for (x, y) in &holdout {
            loss += logloss(f64::from(h.predict(x)), *y);
            positives += usize::from(*y);
        }
        let loss = loss / holdout.len() as f64;
        let base = entropy(positives as f64 / holdout.len() as f64);
        assert!(loss < 0.85 * base, "logloss {loss} vs base {base}");
    }

    /// `(z, n)` of every coordinate, the bias last.
    fn state(model: &FtrlModel) -> Vec<(f32, f32)> {
        model
            .shared
            .coords
            .iter()
            .map(|c| unpack(c.load(Relaxed)))
            .collect()
    }

    #[test]
    fn held_back_updates_learn_as_direct_ones_and_all_reach_the_shared_table() {
        let data = synthetic(5, 40_000);
        // Two handles taking turns, as two workers would: once with frequent updates held
        // back, once writing through.
        let run = |hold: bool| {
            let model = FtrlModel::new(&config(16)).unwrap();
            let mut handles = [model.handle(), model.handle()];
            if hold {
                handles
                    .iter_mut()
                    .for_each(FtrlHandle::hold_frequent_updates);
            }
            let mut loss = 0.0;
            for (k, (x, y)) in data.iter().enumerate() {
                loss += logloss(f64::from(handles[k % 2].predict_and_update(x, *y)), *y);
            }
            let held = handles[0]
                .held
                .as_ref()
                .map_or(0, |h| h.slots.iter().filter(|s| s.index != FREE).count());
            let before = state(&model);
            // A handle sees its own held-back changes before they are published...
            let probe = &data[0].0;
            let own = handles[0].predict(probe);
            handles.iter_mut().for_each(FtrlHandle::flush);
            // ... and everyone sees them after.
            assert_eq!(model.handle().predict(probe), handles[0].predict(probe));
            if hold {
                assert!((own - handles[0].predict(probe)).abs() < 0.05);
            }
            (loss / data.len() as f64, held, before, state(&model), model)
        };
        let (direct, none, _, direct_state, _) = run(false);
        let (held, frequent, before, after, model) = run(true);
        assert_eq!(none, 0);
        assert!(frequent > 10, "{frequent} coordinates held back");
        assert!(
            (held - direct).abs() < 0.002 * direct,
            "logloss {held} held back vs {direct} direct"
        );
        // Nothing lost: the bias's `n` (the sum of squared residuals of every example) is
        // as large as written through, and it lagged before the flush.
        let bias = (1 << 16) as usize;
        assert!(
            (after[bias].1 / direct_state[bias].1 - 1.0).abs() < 0.01,
            "bias n {} vs {}",
            after[bias].1,
            direct_state[bias].1
        );
        assert!(before[bias].1 < after[bias].1);
        assert_eq!(model.version(), data.len() as u64);
    }

    #[test]
    fn one_handle_holding_back_is_exact_after_a_flush_and_one_not_holding_back_is_unchanged() {
        let data = synthetic(6, 5_000);
        let direct = FtrlModel::new(&config(12)).unwrap();
        let held = FtrlModel::new(&config(12)).unwrap();
        let (mut d, mut h) = (direct.handle(), held.handle());
        h.hold_frequent_updates();
        for (x, y) in &data {
            let (a, b) = (d.predict_and_update(x, *y), h.predict_and_update(x, *y));
            // Alone, a handle holding back reads exactly what it wrote (up to rounding).
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        h.flush();
        for ((z0, n0), (z1, n1)) in state(&direct).into_iter().zip(state(&held)) {
            assert!(
                (z0 - z1).abs() <= 1e-3 * z0.abs().max(1.0),
                "z {z0} vs {z1}"
            );
            assert!((n0 - n1).abs() <= 1e-3 * n0.max(1.0), "n {n0} vs {n1}");
        }
    }

    #[test]
    fn version_exact_with_one_handle() {
        let model = FtrlModel::new(&config(8)).unwrap();
        let mut h = model.handle();
        let x = [Feature {
            index: 1,
            value: 1.0,
        }];
        for i in 1..=3000u64 {
            h.update(&x, false);
            assert_eq!(h.version(), i);
        }
        assert_eq!(model.version(), 2048); // published in blocks of 1024
        h.flush();
        assert_eq!(model.version(), 3000);
        let mut h2 = h.clone();
        h2.update(&x, true);
        assert_eq!(h2.version(), 3001);
        drop(h2);
        assert_eq!(model.version(), 3001);
    }

    #[test]
    fn single_worker_is_deterministic() {
        let data = synthetic(4, 5000);
        let run = || {
            let model = FtrlModel::new(&config(12)).unwrap();
            let mut h = model.handle();
            data.iter()
                .map(|(x, y)| h.predict_and_update(x, *y).to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
