//! Feature extraction: an impression becomes a vector of hashed [`Feature`]s.
//!
//! # The feature set of an impression
//!
//! In this order:
//! 1. the bias, value `1.0`;
//! 2. `user` and `item`, categorical;
//! 3. every `ctx` field in payload order, except names starting with `_` (reserved: e.g.
//!    `_p_true`, the generator's ground truth, must never reach the model). Strings are
//!    categorical; numbers follow their field's [`NumericTransform`]: `raw` and `log1p` give
//!    a numeric feature carrying the value, `categorical` and buckets give a categorical one;
//! 4. every configured cross `[a, b]`, in config order, present only when both sides are
//!    present and categorical in this event (a number under `raw`/`log1p` is not), value
//!    `1.0`. If a field occurs twice in `ctx`, a cross uses its first categorical occurrence.
//!
//! How each feature is hashed is the contract written down in [`hash`].
//!
//! # Speed
//!
//! [`Featurizer::featurize_scalar`] is the reference, resolving every `ctx` name through
//! the name map and hashing key by key. [`Featurizer::featurize`] (and
//! [`Featurizer::featurize_batch`], the same per event), the pipeline's path, matches it bit
//! for bit through a plan per `ctx` layout (module `plan`): the names of an event are only
//! checked against the plan, which holds each position's seed, transform and lane and each
//! cross as lane masks; each key is hashed from its two words as it is laid (an integer's
//! decimal text is computed from the value, not formatted), and the features are written to
//! a fixed buffer and copied out at once. A layout no plan holds (a name longer than 16
//! bytes, more than 32 features) takes the per-position name cache and the scalar hash.
//! [`Featurizer::featurize_simd`] is bit-identical too: the same plans, with AVX2
//! ([`Backend::detect`], checked once when the featurizer is built) the keys' blocks laid by
//! column and hashed eight per vector, crosses mixed eight at a time (module `hash_simd`).
//! Measured with `bench/hashing.rs` (two runs of one build, shared 2-core machine under
//! load from other builds, so absolute figures are inflated and vary by tens of percent
//! between runs; per event, reference / `featurize` / `featurize_simd`): contract event
//! 224 / 156 (1.43×) / 168 ns (1.33×) and 191 / 127 (1.50×) / 172 ns (1.11×); 16-feature
//! event 236 / 223 (1.06×) / 155 ns (1.52×) and 361 / 209 (1.73×) / 153 ns (2.37×). An
//! earlier build of the same `featurize`: 258 / 132 (1.95×) and 264 / 131 ns (2.01×). On
//! `main` before the plans `featurize` measured 1.67× and 1.44×, and `featurize_simd`
//! (lanes of 16-byte rows, transposed) 1.02× and 0.94×. SIMD wins on the wide event and
//! loses on the contract one (one vector of lanes, half empty, against seven scalar
//! hashes whose chains the CPU overlaps); the replay's events have the contract layout.
//! So the pipeline uses `featurize`; the design's 4× is not reached (see the README).
//!
//! The hash step alone, by feature count: [`BatchHasher`] (module `batch`) hashes the
//! events of one layout one event per lane, crosses without gathers. With AVX2 (eight
//! events per vector) the keys are first laid out by column by scalar code (two words and a
//! length per key). With AVX-512 (F, BW, VL: [`Backend::is_avx512`], preferred by
//! [`Backend::detect`]) each key is read from its slice into a 16-byte row by one
//! byte-masked load, and rows become blocks in registers; with VBMI as well it takes sixteen
//! events per 512-bit vector and makes the masks of four keys at once from one load of
//! their `&[u8]` pairs (module `hash_simd`, "Sixteen events per vector"), else eight
//! (module `hash_simd`, "From the bytes"). `bench/hashing.rs` group `hash`, two runs of one
//! build on the shared 2-core machine (Xeon with AVX-512 and VBMI; other developers' builds
//! running: load 4.2–6.7 in run A, 4.5 falling to 2.7 in run B), per 256 events, scalar
//! reference / `simd_avx512` (sixteen lanes, from bytes) / `simd_avx512x8` (the eight-lane
//! path, same run), run A then run B: 4 features 6.3 / 6.8 (0.9×) / 4.9 µs and 6.9 / 2.5
//! (2.7×) / 3.0 µs; 8: 16.3 / 7.4 (2.2×) / 14.8 and 7.2 / 4.6 (1.6×) / 5.7; contract 11:
//! 20.0 / 6.9 (2.9×) / 12.0 and 10.3 / 4.1 (2.5×) / 6.3; 16: 35.0 / 6.2 (5.6×) / 8.8 and
//! 13.6 / 5.6 (2.45×) / 9.0 µs; 32 (one 24-byte key, hashed by the scalar reference): 44.2 /
//! 20.9 (2.1×) / 35.1 and 30.5 / 22.1 (1.4×) / 25.3 µs. On the 16-feature event the sixteen
//! lanes are 1.4–1.6× the eight-lane path in the same run. Run A's 5.6× is the load's: its
//! scalar reference took 35 µs against 13.6 in the quieter run B, where the ratio is 2.45×,
//! as in a best-of-2000 loop of the same kernel outside criterion (2.4×). So the design's 4×
//! from the bytes on a 16-feature event is not reached on this machine: about half of the
//! time is still laying out the keys (a masked load and a store per key from separately
//! allocated strings), half the vector rounds, whose 32-bit multiplies bound them. AVX2 from
//! bytes stays near 1×. Whole featurization, reference / `featurize` / `featurize_simd`
//! (unchanged: the plan's lanes as eight-lane masked-load rows, module `plan`), runs A and
//! B: contract event 46.2 / 38.4 (1.2×) / 37.2 µs (1.24×) and 39.0 / 24.5 (1.6×) / 26.8 µs
//! (1.46×); 16 features 90.0 / 66.6 (1.35×) / 62.9 µs (1.43×) and 67.2 / 39.9 (1.7×) / 41.7
//! µs (1.6×). The pipeline keeps `featurize`, unchanged: [`BatchHasher`] needs a batch of
//! events of one layout with their keys already gathered, which the pipeline does not have,
//! its events have the contract layout, where SIMD gains at most a few percent, and
//! featurization is ~3% of a replay's profile (README, "Replay against Vowpal Wabbit"). None
//! allocates once its scratch buffers are warm, except when a caller's output grows past
//! its inline capacity, a `ctx` field name is seen for the first time (its seed is then
//! cached, up to [`MAX_CACHED_FIELDS`] names) or a plan grows its buffers for a new layout.
//!
//! ```
//! use ctrflow::event::{Event, decode};
//! use ctrflow::features::{FeatureConfig, Featurizer};
//!
//! let payload = br#"{"type":"impression","id":"imp-1","ts":1,"user":"u42","item":"v9001",
//!     "ctx":{"device":"ios","country":"PL","position":3,"hour":13,"category":"music"}}"#;
//! let Event::Impression(imp) = decode(payload, 1 << 20)? else { unreachable!() };
//! let mut featurizer = Featurizer::new(&FeatureConfig::default())?;
//! let mut features = Default::default();
//! featurizer.featurize(&imp, &mut features);
//! // bias, user, item, five ctx fields and three crosses.
//! assert_eq!(features.len(), 11);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod config;
pub mod hash;
mod hash_simd;
mod plan;

use ctrflow_dataflows::{Feature, Features};
use hashbrown::HashMap;

pub use batch::{BatchHasher, CrossPair};
pub use config::{FeatureConfig, NumericTransform};
pub use hash::{Backend, cross_mix, hash_scalar};

use crate::event::{CtxValue, Impression};

/// Most distinct `ctx` field names whose seeds are cached; names beyond are hashed per event,
/// so that a stream of random field names cannot grow memory without bound.
pub const MAX_CACHED_FIELDS: usize = 4096;

/// Most crosses a config may list.
pub const MAX_CROSSES: usize = 1024;

/// `ctx` positions whose resolved field the fast paths remember.
const MAX_CACHED_POSITIONS: usize = 64;

/// A [`FeatureConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureConfigError {
    /// The config breaks one or more rules; each problem names its key and value.
    #[error("invalid features config: {}", .problems.join("; "))]
    Invalid {
        /// Every problem found, as [`FeatureConfig::validate`] reports them.
        problems: Vec<String>,
    },
}

/// Marks a field that feeds no cross.
const NO_SIDE: u16 = u16::MAX;
/// Index of `numeric_default` in [`Schema::transforms`].
const DEFAULT_TRANSFORM: u16 = 0;

/// What the featurizer knows about a field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    seed: u32,
    transform: u16,
    /// Cross side slot, or [`NO_SIDE`].
    side: u16,
}

/// A [`NumericTransform`], ready to apply.
#[derive(Debug, Clone)]
enum Transform {
    Raw,
    Log1p,
    Categorical,
    Buckets(Box<[f64]>),
}

impl From<&NumericTransform> for Transform {
    fn from(t: &NumericTransform) -> Self {
        match t {
            NumericTransform::Raw => Transform::Raw,
            NumericTransform::Log1p => Transform::Log1p,
            NumericTransform::Categorical => Transform::Categorical,
            NumericTransform::Buckets(b) => Transform::Buckets(b.as_slice().into()),
        }
    }
}

/// A feature value as the walk over an event classifies it.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    /// Categorical: these bytes are hashed.
    Bytes(&'a [u8]),
    /// Categorical: the decimal text of this integer is hashed.
    Int(i64),
    /// Numeric: the field seed is the hash, this is the value.
    Numeric(f32),
}

impl Transform {
    fn apply(&self, x: f64) -> Value<'static> {
        match self {
            // Clamped so that a huge finite f64 does not become an infinite f32.
            Transform::Raw => Value::Numeric(x.clamp(f32::MIN.into(), f32::MAX.into()) as f32),
            Transform::Log1p => Value::Numeric(x.abs().ln_1p().copysign(x) as f32),
            // `as` rounds toward zero and saturates at the i64 range.
            Transform::Categorical => Value::Int(x as i64),
            Transform::Buckets(bounds) => Value::Int(bounds.partition_point(|&b| b <= x) as i64),
        }
    }
}

/// A cross, resolved to side slots.
#[derive(Debug, Clone, Copy)]
struct Cross {
    seed: u32,
    a: u16,
    b: u16,
}

/// Everything the config decides, resolved once.
#[derive(Debug)]
struct Schema {
    mask: u32,
    bias_seed: u32,
    user: Field,
    item: Field,
    fields: HashMap<Box<str>, Field>,
    transforms: Vec<Transform>,
    crosses: Vec<Cross>,
    sides: usize,
}

impl Schema {
    fn new(config: &FeatureConfig) -> Result<Self, FeatureConfigError> {
        let mut problems = config.validate();
        if config.crosses.len() > MAX_CROSSES {
            problems.push(format!(
                "features.crosses has {} entries, at most {MAX_CROSSES} are allowed",
                config.crosses.len()
            ));
        }
        if !problems.is_empty() {
            return Err(FeatureConfigError::Invalid { problems });
        }
        let top = |name: &str| Field {
            seed: hash::top_seed(name),
            transform: DEFAULT_TRANSFORM,
            side: NO_SIDE,
        };
        let mut schema = Schema {
            mask: (1u32 << config.bits) - 1,
            bias_seed: hash::top_seed("bias"),
            user: top("user"),
            item: top("item"),
            fields: HashMap::new(),
            transforms: vec![Transform::from(&config.numeric_default)],
            crosses: Vec::with_capacity(config.crosses.len()),
            sides: 0,
        };
        for (name, transform) in &config.numeric {
            let index = u16::try_from(schema.transforms.len()).unwrap_or(DEFAULT_TRANSFORM);
            schema.transforms.push(transform.into());
            schema.fields.insert(
                name.as_str().into(),
                Field {
                    seed: hash::ctx_seed(name),
                    transform: index,
                    side: NO_SIDE,
                },
            );
        }
        for [a, b] in &config.crosses {
            let a = schema.side(a);
            let b = schema.side(b);
            schema.crosses.push(Cross {
                seed: hash::cross_seed(a.seed, b.seed),
                a: a.side,
                b: b.side,
            });
        }
        Ok(schema)
    }

    /// The field named `name` as a cross side, given a side slot if it has none yet.
    fn side(&mut self, name: &str) -> Field {
        let next = u16::try_from(self.sides).unwrap_or(NO_SIDE);
        let field = match name {
            "user" => &mut self.user,
            "item" => &mut self.item,
            _ => self.fields.entry_ref(name).or_insert_with(|| Field {
                seed: hash::ctx_seed(name),
                transform: DEFAULT_TRANSFORM,
                side: NO_SIDE,
            }),
        };
        if field.side == NO_SIDE {
            field.side = next;
            self.sides += 1;
        }
        *field
    }

    /// The `ctx` field `name`, cached on first sight while the cache has room.
    fn field(&mut self, name: &str) -> Field {
        if let Some(f) = self.fields.get(name) {
            return *f;
        }
        let f = Field {
            seed: hash::ctx_seed(name),
            transform: DEFAULT_TRANSFORM,
            side: NO_SIDE,
        };
        if self.fields.len() < MAX_CACHED_FIELDS {
            self.fields.insert(name.into(), f);
        }
        f
    }

    /// Calls `emit(seed, side, value)` for `user`, `item` and each featurized `ctx` field, in
    /// order. `side` is [`NO_SIDE`] for numeric values. `ctx` fields are resolved by
    /// `lookup(self, position in ctx, name)`, which must return `self.field(name)`.
    #[inline(always)]
    fn walk(
        &mut self,
        imp: &Impression<'_>,
        mut lookup: impl FnMut(&mut Self, usize, &str) -> Field,
        mut emit: impl FnMut(u32, u16, Value<'_>),
    ) {
        emit(
            self.user.seed,
            self.user.side,
            Value::Bytes(imp.user.as_bytes()),
        );
        emit(
            self.item.seed,
            self.item.side,
            Value::Bytes(imp.item.as_bytes()),
        );
        for (pos, (name, value)) in imp.ctx.iter().enumerate() {
            if name.starts_with('_') {
                continue;
            }
            let field = lookup(self, pos, name);
            match value {
                CtxValue::Str(s) => emit(field.seed, field.side, Value::Bytes(s.as_bytes())),
                CtxValue::Num(x) => {
                    let value = self
                        .transforms
                        .get(usize::from(field.transform))
                        .unwrap_or(&Transform::Log1p)
                        .apply(*x);
                    let side = match value {
                        Value::Numeric(_) => NO_SIDE,
                        _ => field.side,
                    };
                    emit(field.seed, side, value);
                }
            }
        }
    }
}

/// The field last seen at one `ctx` position: its name (at most 16 bytes, as two
/// zero-padded words) and what it resolved to.
#[derive(Debug, Clone, Copy)]
struct CachedName {
    /// Name length, or `usize::MAX` for an empty slot (never equal to a real one here).
    len: usize,
    words: (u64, u64),
    field: Field,
}

/// Resolved `ctx` fields by position: the events of one stream share their `ctx` layout, so
/// comparing the name with the one last seen at the same position (two words) usually
/// skips hashing the name and probing [`Schema::fields`]. Names longer than 16 bytes and
/// positions past [`MAX_CACHED_POSITIONS`] always take the map.
#[derive(Debug, Default)]
struct PositionCache {
    slots: Vec<CachedName>,
}

impl PositionCache {
    /// `schema.field(name)`, for `name` at `ctx` position `pos`.
    #[inline(always)]
    fn field(&mut self, schema: &mut Schema, pos: usize, name: &str) -> Field {
        let Some(words) = hash::small_words(name.as_bytes()) else {
            return schema.field(name);
        };
        let len = name.len();
        if let Some(slot) = self.slots.get(pos)
            && slot.len == len
            && slot.words == words
        {
            return slot.field;
        }
        let field = schema.field(name);
        if pos < MAX_CACHED_POSITIONS {
            if pos >= self.slots.len() {
                let empty = CachedName {
                    len: usize::MAX,
                    words: (0, 0),
                    field,
                };
                self.slots.resize(pos + 1, empty);
            }
            if let Some(slot) = self.slots.get_mut(pos) {
                *slot = CachedName { len, words, field };
            }
        }
        field
    }
}

/// Reused buffers of the featurizer.
#[derive(Debug, Default)]
struct Scratch {
    /// Per cross side, scalar path: the value hash of its first categorical occurrence.
    side_hashes: Vec<Option<u32>>,
}

/// Turns impressions into hashed feature vectors; one per worker.
#[derive(Debug)]
pub struct Featurizer {
    schema: Schema,
    backend: Backend,
    cache: PositionCache,
    scratch: Scratch,
    /// The per-layout plans of the fast path.
    plans: Box<plan::Plans>,
}

impl Featurizer {
    /// A featurizer for `config`, using the fastest hashing this CPU supports.
    pub fn new(config: &FeatureConfig) -> Result<Self, FeatureConfigError> {
        Self::with_backend(config, Backend::detect())
    }

    /// A featurizer for `config` whose [`Featurizer::featurize`] and
    /// [`Featurizer::featurize_batch`] use `backend`.
    pub fn with_backend(
        config: &FeatureConfig,
        backend: Backend,
    ) -> Result<Self, FeatureConfigError> {
        Ok(Featurizer {
            schema: Schema::new(config)?,
            backend,
            cache: PositionCache::default(),
            scratch: Scratch::default(),
            plans: Box::default(),
        })
    }

    /// The hashing implementation [`Featurizer::featurize`] uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `2^bits - 1`: every index is `hash & mask`.
    pub fn mask(&self) -> u32 {
        self.schema.mask
    }

    fn bias(&self) -> Feature {
        Feature {
            index: self.schema.bias_seed & self.schema.mask,
            value: 1.0,
        }
    }

    /// Clears `out` and fills it with the features of `imp`. Bit-identical to
    /// [`Featurizer::featurize_scalar`], and 1.1–2× as fast: through a plan of the
    /// event's `ctx` layout, each key hashed from its words (module `plan`), or, for a
    /// layout no plan holds, through the per-position name cache. This is the pipeline's
    /// path, whatever the backend: on the contract's event it measured faster than
    /// [`Featurizer::featurize_simd`] (see the module docs, "Speed").
    pub fn featurize(&mut self, imp: &Impression<'_>, out: &mut Features) {
        let bias = self.bias();
        let Featurizer {
            schema,
            cache,
            plans,
            ..
        } = self;
        if !plans.featurize_words(schema, cache, bias, imp, out) {
            self.featurize_direct(imp, out);
        }
    }

    /// [`Featurizer::featurize`] with SIMD hashing when the backend has it: the same plans,
    /// with the keys of the event hashed eight at a time in AVX2 lanes and crosses mixed
    /// eight at a time (module `hash_simd`). Bit-identical to the reference; faster than
    /// [`Featurizer::featurize`] on a 16-feature event but slower on the contract's
    /// 11-feature one, the layout of the replay stream (see the module docs, "Speed"), so the
    /// pipeline does not use it. Without SIMD it is [`Featurizer::featurize`].
    pub fn featurize_simd(&mut self, imp: &Impression<'_>, out: &mut Features) {
        #[cfg(target_arch = "x86_64")]
        if self.backend.is_avx512() {
            let bias = self.bias();
            let Featurizer {
                schema,
                cache,
                plans,
                ..
            } = self;
            // SAFETY: the backend is AVX-512, so `Backend::available` found AVX2 and
            // AVX-512 F, BW and VL.
            if !unsafe { plans.featurize_avx512(schema, cache, bias, imp, out) } {
                self.featurize_direct(imp, out);
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.backend.is_simd() {
            let bias = self.bias();
            let Featurizer {
                schema,
                cache,
                plans,
                ..
            } = self;
            // SAFETY: the backend is SIMD, so `Backend::detect` found AVX2.
            if !unsafe { plans.featurize_avx2(schema, cache, bias, imp, out) } {
                self.featurize_direct(imp, out);
            }
            return;
        }
        self.featurize(imp, out);
    }

    /// Featurizes `imps[i]` into `outs[i]` (each cleared first), exactly as
    /// [`Featurizer::featurize`] does one by one. Reuse `outs` so that nothing allocates
    /// once warm.
    ///
    /// # Panics
    ///
    /// If `imps` and `outs` differ in length.
    pub fn featurize_batch(&mut self, imps: &[Impression<'_>], outs: &mut [Features]) {
        assert_eq!(
            imps.len(),
            outs.len(),
            "featurize_batch needs one output per impression"
        );
        for (imp, out) in imps.iter().zip(outs.iter_mut()) {
            self.featurize(imp, out);
        }
    }

    /// One event without batching: `ctx` names through the position cache, keys hashed one
    /// by one with the scalar reference as the walk meets them, features pushed directly.
    fn featurize_direct(&mut self, imp: &Impression<'_>, out: &mut Features) {
        let bias = self.bias();
        let Featurizer {
            schema,
            cache,
            scratch,
            ..
        } = self;
        let lookup = |schema: &mut Schema, pos: usize, name: &str| cache.field(schema, pos, name);
        scalar_walk(schema, scratch, bias, imp, lookup, out);
    }

    /// The reference: the same features as [`Featurizer::featurize`], one scalar hash at a
    /// time, in the order of the module docs.
    pub fn featurize_scalar(&mut self, imp: &Impression<'_>, out: &mut Features) {
        let bias = self.bias();
        let lookup = |schema: &mut Schema, _: usize, name: &str| schema.field(name);
        scalar_walk(&mut self.schema, &mut self.scratch, bias, imp, lookup, out);
    }
}

/// Walks `imp` in the order of the module docs, hashing each key with the scalar reference
/// as it comes; `lookup` resolves `ctx` field names (through a cache or not: the result is
/// the same field either way).
fn scalar_walk(
    schema: &mut Schema,
    s: &mut Scratch,
    bias: Feature,
    imp: &Impression<'_>,
    lookup: impl FnMut(&mut Schema, usize, &str) -> Field,
    out: &mut Features,
) {
    out.clear();
    out.push(bias);
    let mask = schema.mask;
    s.side_hashes.clear();
    s.side_hashes.resize(schema.sides, None);
    schema.walk(imp, lookup, |seed, side, value| {
        let h = match value {
            Value::Bytes(bytes) => hash_scalar(seed, bytes),
            Value::Int(n) => hash_scalar(seed, itoa::Buffer::new().format(n).as_bytes()),
            Value::Numeric(value) => {
                out.push(Feature {
                    index: seed & mask,
                    value,
                });
                return;
            }
        };
        out.push(Feature {
            index: h & mask,
            value: 1.0,
        });
        if let Some(slot @ None) = s.side_hashes.get_mut(usize::from(side)) {
            *slot = Some(h);
        }
    });
    for c in &schema.crosses {
        let side = |side: u16| s.side_hashes.get(usize::from(side)).copied().flatten();
        if let (Some(a), Some(b)) = (side(c.a), side(c.b)) {
            out.push(Feature {
                index: cross_mix(c.seed, a, b) & mask,
                value: 1.0,
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
