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
//! [`Featurizer::featurize`] collects the keys of an event into a reused [`KeyBatch`] and
//! hashes them eight at a time with AVX2 when the CPU has it ([`Backend::detect`], checked
//! once when the featurizer is built). [`Featurizer::featurize_scalar`] is the reference it
//! must match bit for bit. Neither allocates once its scratch buffers are warm, except when
//! the caller's `out` grows past its inline capacity or a `ctx` field name is seen for the
//! first time (its seed is then cached, up to [`MAX_CACHED_FIELDS`] names).
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

pub mod config;
pub mod hash;
mod hash_simd;

use ctrflow_dataflows::{Feature, Features};
use hashbrown::HashMap;

pub use config::{FeatureConfig, NumericTransform};
pub use hash::{
    Backend, KeyBatch, cross_batch, cross_batch_scalar, cross_mix, hash_batch, hash_batch_scalar,
    hash_scalar,
};

use crate::event::{CtxValue, Impression};

/// Most distinct `ctx` field names whose seeds are cached; names beyond are hashed per event,
/// so that a stream of random field names cannot grow memory without bound.
pub const MAX_CACHED_FIELDS: usize = 4096;

/// Most crosses a config may list.
pub const MAX_CROSSES: usize = 1024;

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
/// Marks a cross side not present in the current event.
const ABSENT: u32 = u32::MAX;
/// Index of `numeric_default` in [`Schema::transforms`].
const DEFAULT_TRANSFORM: u16 = 0;

/// What the featurizer knows about a field name.
#[derive(Debug, Clone, Copy)]
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
            Transform::Categorical => Value::Int(x.trunc() as i64),
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
    /// order. `side` is [`NO_SIDE`] for numeric values.
    fn walk(&mut self, imp: &Impression<'_>, mut emit: impl FnMut(u32, u16, Value<'_>)) {
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
        for (name, value) in &imp.ctx {
            if name.starts_with('_') {
                continue;
            }
            let field = self.field(name);
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

/// Reused buffers of [`Featurizer::featurize`].
#[derive(Debug, Default)]
struct Scratch {
    keys: KeyBatch,
    /// Position in `out` of each key of `keys`.
    slots: Vec<usize>,
    hashes: Vec<u32>,
    /// Per cross side: the index in `keys` of its first categorical occurrence, or [`ABSENT`].
    sides: Vec<u32>,
    /// Per cross side, scalar path: the value hash of its first categorical occurrence.
    side_hashes: Vec<Option<u32>>,
    cross_seeds: Vec<u32>,
    cross_a: Vec<u32>,
    cross_b: Vec<u32>,
    cross_out: Vec<u32>,
}

impl Scratch {
    fn reset_sides(&mut self, n: usize) {
        self.sides.clear();
        self.sides.resize(n, ABSENT);
    }
}

/// Turns impressions into hashed feature vectors; one per worker.
#[derive(Debug)]
pub struct Featurizer {
    schema: Schema,
    backend: Backend,
    scratch: Scratch,
}

impl Featurizer {
    /// A featurizer for `config`, using the fastest hashing this CPU supports.
    pub fn new(config: &FeatureConfig) -> Result<Self, FeatureConfigError> {
        Self::with_backend(config, Backend::detect())
    }

    /// A featurizer for `config` whose [`Featurizer::featurize`] uses `backend`.
    pub fn with_backend(
        config: &FeatureConfig,
        backend: Backend,
    ) -> Result<Self, FeatureConfigError> {
        Ok(Featurizer {
            schema: Schema::new(config)?,
            backend,
            scratch: Scratch::default(),
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

    /// Clears `out` and fills it with the features of `imp`, hashing in batches (SIMD when
    /// available). Bit-identical to [`Featurizer::featurize_scalar`].
    pub fn featurize(&mut self, imp: &Impression<'_>, out: &mut Features) {
        out.clear();
        out.push(self.bias());
        let mask = self.schema.mask;
        let s = &mut self.scratch;
        s.keys.clear();
        s.slots.clear();
        s.reset_sides(self.schema.sides);
        self.schema.walk(imp, |seed, side, value| {
            let key = match value {
                Value::Bytes(bytes) => s.keys.push(seed, bytes),
                Value::Int(n) => s.keys.push_int(seed, n),
                Value::Numeric(value) => {
                    out.push(Feature {
                        index: seed & mask,
                        value,
                    });
                    return;
                }
            };
            // Filled in once the whole batch is hashed.
            s.slots.push(out.len());
            out.push(Feature {
                index: 0,
                value: 1.0,
            });
            if let Some(slot) = s.sides.get_mut(usize::from(side))
                && *slot == ABSENT
            {
                *slot = key as u32;
            }
        });
        hash_batch(self.backend, &s.keys, &mut s.hashes);
        for (&slot, &h) in s.slots.iter().zip(&s.hashes) {
            if let Some(f) = out.get_mut(slot) {
                f.index = h & mask;
            }
        }

        s.cross_seeds.clear();
        s.cross_a.clear();
        s.cross_b.clear();
        for c in &self.schema.crosses {
            let side_hash = |side: u16| {
                let key = *s.sides.get(usize::from(side))?;
                s.hashes.get(key as usize).copied()
            };
            if let (Some(a), Some(b)) = (side_hash(c.a), side_hash(c.b)) {
                s.cross_seeds.push(c.seed);
                s.cross_a.push(a);
                s.cross_b.push(b);
            }
        }
        cross_batch(
            self.backend,
            &s.cross_seeds,
            &s.cross_a,
            &s.cross_b,
            &mut s.cross_out,
        );
        out.extend(s.cross_out.iter().map(|&h| Feature {
            index: h & mask,
            value: 1.0,
        }));
    }

    /// The reference: the same features as [`Featurizer::featurize`], one scalar hash at a
    /// time, in the order of the module docs.
    pub fn featurize_scalar(&mut self, imp: &Impression<'_>, out: &mut Features) {
        out.clear();
        out.push(self.bias());
        let mask = self.schema.mask;
        let s = &mut self.scratch;
        s.side_hashes.clear();
        s.side_hashes.resize(self.schema.sides, None);
        self.schema.walk(imp, |seed, side, value| {
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
        for c in &self.schema.crosses {
            let side = |side: u16| s.side_hashes.get(usize::from(side)).copied().flatten();
            if let (Some(a), Some(b)) = (side(c.a), side(c.b)) {
                out.push(Feature {
                    index: cross_mix(c.seed, a, b) & mask,
                    value: 1.0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
