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
//! the name map. [`Featurizer::featurize`] and [`Featurizer::featurize_batch`] match it bit
//! for bit, resolving names through a per-position cache (events of a stream share their
//! `ctx` layout) and hashing keys as they meet them. [`Featurizer::featurize_batch_lanes`]
//! hashes the same field of eight events at once with AVX2 when the CPU has it
//! ([`Backend::detect`], checked once when the featurizer is built); it is bit-identical
//! too, but not yet faster end to end (see its docs and `bench/hashing.rs`). None allocates
//! once its scratch buffers are warm, except when a caller's output grows past its inline
//! capacity or a `ctx` field name is seen for the first time (its seed is then cached, up
//! to [`MAX_CACHED_FIELDS`] names).
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
mod grid;
pub mod hash;
mod hash_simd;

use ctrflow_dataflows::{Feature, Features};
use hashbrown::HashMap;

pub use config::{FeatureConfig, NumericTransform};
pub use grid::{GRID_KEY_MAX, GRID_LANES, KeyGrid, hash_grid_scalar};
pub use hash::{
    Backend, KeyBatch, cross_batch, cross_batch_scalar, cross_mix, hash_batch, hash_batch_scalar,
    hash_grid, hash_scalar,
};

use crate::event::{CtxValue, Impression};

/// Most distinct `ctx` field names whose seeds are cached; names beyond are hashed per event,
/// so that a stream of random field names cannot grow memory without bound.
pub const MAX_CACHED_FIELDS: usize = 4096;

/// Most crosses a config may list.
pub const MAX_CROSSES: usize = 1024;

/// Events hashed together by [`Featurizer::featurize_batch_lanes`]: one per SIMD lane.
pub const BATCH_GROUP: usize = GRID_LANES;

/// `ctx` positions whose resolved field the fast paths remember.
const MAX_CACHED_POSITIONS: usize = 64;

/// Events with more `ctx` fields than this are featurized alone, not in a group of
/// [`BATCH_GROUP`], which bounds the grid of a group to about this many rows.
const MAX_GROUPED_CTX: usize = 62;

/// A group with fewer events than this (the end of a batch) is featurized event by event:
/// lanes per event would leave most of each row empty.
const MIN_GROUP: usize = 4;

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

/// A walked feature waiting for its hash: numeric ones are final, categorical ones are
/// [`PENDING`] until their key is hashed.
#[derive(Debug, Clone, Copy)]
struct Item {
    index: u32,
    value: f32,
}

/// `Item::index` of a categorical feature: hashes are masked to at most 30 bits, so no real
/// index is `u32::MAX`.
const PENDING: u32 = u32::MAX;

/// Reused buffers of the featurizer.
#[derive(Debug, Default)]
struct Scratch {
    /// Keys of the current group: key `k` of event `e` at `k * stride + e`.
    grid: KeyGrid,
    /// Hash of each grid position.
    hashes: Vec<u32>,
    /// Walked features of every event of the group, in order.
    items: Vec<Item>,
    /// Per event of the group: where its items end, and how many crosses it has.
    ends: Vec<(usize, usize)>,
    /// Per event and cross side (`e * sides + side`): the key number `k` of the side's
    /// first categorical occurrence, or [`ABSENT`].
    sides: Vec<u32>,
    /// Per cross side, scalar path: the value hash of its first categorical occurrence.
    side_hashes: Vec<Option<u32>>,
    cross_seeds: Vec<u32>,
    cross_a: Vec<u32>,
    cross_b: Vec<u32>,
    cross_out: Vec<u32>,
}

/// Turns impressions into hashed feature vectors; one per worker.
#[derive(Debug)]
pub struct Featurizer {
    schema: Schema,
    backend: Backend,
    cache: PositionCache,
    scratch: Scratch,
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
    /// [`Featurizer::featurize_scalar`], and faster: `ctx` names are resolved through a
    /// per-position cache instead of the name map, and keys are hashed as the walk meets
    /// them (no batching: on one event, laying keys out for SIMD costs more than the
    /// hashing it saves, so this path hashes with the scalar reference whatever the
    /// backend).
    pub fn featurize(&mut self, imp: &Impression<'_>, out: &mut Features) {
        self.featurize_direct(imp, out);
    }

    /// Featurizes `imps[i]` into `outs[i]` (each cleared first), exactly as
    /// [`Featurizer::featurize`] does one by one; currently the same per-event path, which
    /// measured fastest (see [`Featurizer::featurize_batch_lanes`]). Reuse `outs` so that
    /// nothing allocates once warm.
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
            self.featurize_direct(imp, out);
        }
    }

    /// [`Featurizer::featurize_batch`] with lane-parallel hashing across events: groups of
    /// [`BATCH_GROUP`] events are walked into a [`KeyGrid`] (field `k` of event `e` at
    /// `8k + e`), hashed one row per SIMD vector, crosses mixed eight at a time, then the
    /// outputs assembled. Bit-identical to the reference. The hashing itself is about 5×
    /// faster than scalar, but on typical events laying the keys out and assembling the
    /// outputs cost more than that saves, so this is slower than
    /// [`Featurizer::featurize_batch`]; kept, tested and benched as the base for a wider
    /// SIMD pipeline. Without SIMD it is `featurize_batch`.
    ///
    /// # Panics
    ///
    /// If `imps` and `outs` differ in length.
    pub fn featurize_batch_lanes(&mut self, imps: &[Impression<'_>], outs: &mut [Features]) {
        assert_eq!(
            imps.len(),
            outs.len(),
            "featurize_batch_lanes needs one output per impression"
        );
        if !self.backend.is_simd() {
            return self.featurize_batch(imps, outs);
        }
        let mut i = 0;
        while i < imps.len() {
            let groupable = |imp: &Impression<'_>| imp.ctx.len() <= MAX_GROUPED_CTX;
            let len = imps[i..]
                .iter()
                .take(BATCH_GROUP)
                .take_while(|imp| groupable(imp))
                .count();
            if len >= MIN_GROUP {
                let end = i + len;
                self.featurize_group::<BATCH_GROUP>(&imps[i..end], &mut outs[i..end]);
                i = end;
            } else {
                // A short group or an event too wide to group: one event at a time.
                for _ in 0..len.max(1) {
                    self.featurize_group::<1>(&imps[i..=i], &mut outs[i..=i]);
                    i += 1;
                }
            }
        }
    }

    /// Featurizes `imps` (at most [`BATCH_GROUP`] events; exactly one when `STRIDE` is 1)
    /// into `outs`: key `k` of event `e` is hashed at grid position `k * STRIDE + e`.
    fn featurize_group<const STRIDE: usize>(
        &mut self,
        imps: &[Impression<'_>],
        outs: &mut [Features],
    ) {
        let stride = STRIDE;
        debug_assert!(imps.len() <= STRIDE.max(1) || STRIDE == 1 && imps.len() == 1);
        let bias = self.bias();
        let Featurizer {
            schema,
            backend,
            cache,
            scratch: s,
        } = self;
        let (mask, nsides, simd) = (schema.mask, schema.sides, backend.is_simd());
        s.grid.clear();
        s.hashes.clear();
        s.items.clear();
        s.ends.clear();
        s.sides.clear();
        s.sides.resize(imps.len() * nsides, ABSENT);

        // Walk every event: numeric features are final, keys go to the grid (or are hashed
        // at once without SIMD).
        for (e, imp) in imps.iter().enumerate() {
            let mut k = 0usize;
            let sides = s
                .sides
                .get_mut(e * nsides..(e + 1) * nsides)
                .unwrap_or(&mut []);
            let (grid, hashes, items) = (&mut s.grid, &mut s.hashes, &mut s.items);
            schema.walk(
                imp,
                |schema, pos, name| cache.field(schema, pos, name),
                |seed, side, value| {
                    let pos = k * stride + e;
                    let mut int = itoa::Buffer::new();
                    let key = match value {
                        Value::Bytes(bytes) => bytes,
                        Value::Int(n) => int.format(n).as_bytes(),
                        Value::Numeric(value) => {
                            items.push(Item {
                                index: seed & mask,
                                value,
                            });
                            return;
                        }
                    };
                    if simd {
                        grid.set(pos, seed, key);
                    } else {
                        if pos >= hashes.len() {
                            hashes.resize(pos + 1, 0);
                        }
                        if let Some(h) = hashes.get_mut(pos) {
                            *h = hash_scalar(seed, key);
                        }
                    }
                    items.push(Item {
                        index: PENDING,
                        value: 1.0,
                    });
                    if let Some(slot) = sides.get_mut(usize::from(side))
                        && *slot == ABSENT
                    {
                        *slot = k as u32;
                    }
                    k += 1;
                },
            );
            s.ends.push((s.items.len(), 0));
        }
        if simd {
            hash_grid(*backend, &s.grid, &mut s.hashes);
        }

        // Crosses of every event, mixed together.
        s.cross_seeds.clear();
        s.cross_a.clear();
        s.cross_b.clear();
        for (e, end) in s.ends.iter_mut().enumerate() {
            let sides = s.sides.get(e * nsides..(e + 1) * nsides).unwrap_or(&[]);
            let side_hash = |side: u16| {
                let k = *sides.get(usize::from(side))?;
                s.hashes.get(k as usize * stride + e).copied()
            };
            for c in &schema.crosses {
                if let (Some(a), Some(b)) = (side_hash(c.a), side_hash(c.b)) {
                    s.cross_seeds.push(c.seed);
                    s.cross_a.push(a);
                    s.cross_b.push(b);
                    end.1 += 1;
                }
            }
        }
        cross_batch(
            *backend,
            &s.cross_seeds,
            &s.cross_a,
            &s.cross_b,
            &mut s.cross_out,
        );

        // Assemble: bias, walked features with their hashes, crosses.
        let (mut item, mut cross) = (0, 0);
        for (e, (out, &(items_end, crosses))) in outs.iter_mut().zip(&s.ends).enumerate() {
            out.clear();
            out.push(bias);
            let mut pos = e;
            let hashes = &s.hashes;
            out.extend(
                s.items
                    .get(item..items_end)
                    .unwrap_or(&[])
                    .iter()
                    .map(|it| {
                        if it.index == PENDING {
                            let h = hashes.get(pos).copied().unwrap_or(0);
                            pos += stride;
                            Feature {
                                index: h & mask,
                                value: 1.0,
                            }
                        } else {
                            Feature {
                                index: it.index,
                                value: it.value,
                            }
                        }
                    }),
            );
            item = items_end;
            let mixed = s.cross_out.get(cross..cross + crosses).unwrap_or(&[]);
            out.extend(mixed.iter().map(|&h| Feature {
                index: h & mask,
                value: 1.0,
            }));
            cross += crosses;
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
mod tests;
