//! Per-layout plans: the fast path of [`super::Featurizer::featurize`].
//!
//! The events of a stream share their `ctx` layout (the same field names in the same
//! order), so everything that depends only on the names is worked out once per layout, in a
//! [`Plan`]: which positions are reserved (`_…`), each field's seed and numeric transform,
//! the lane of each feature, and each cross as two lane masks. The per-event loop then only
//! checks each name against the plan (two words, [`small_words`]), lays each value into its
//! lane (an integer as its decimal text computed from the value, [`int_words`]), hashes the
//! lanes, picks each cross's sides from the masks, and writes the features into a fixed
//! buffer copied into the output in one go: no closure, no name map, no text formatting, no
//! per-feature push.
//!
//! Lanes are hashed by one of two [`Sink`]s: [`Words`], which hashes each key as it is
//! laid, from its two words ([`hash_words`], no loop over the bytes), or, with AVX2,
//! [`Columns`], which lays the keys' blocks by column and hashes eight keys per vector
//! ([`hash_columns`]). Both are the contract of [`super::hash`] bit for bit.
//!
//! A cross side is the first categorical occurrence of its field, and whether a value is
//! categorical is known only per event (a number under `raw` is not): the event sets one bit
//! per categorical lane, and a side's lane is the lowest bit of its mask and that set.
//!
//! A few plans are kept ([`MAX_PLANS`]), so that a stream mixing some layouts does not
//! rebuild one per event. An event whose layout no plan can hold (more than [`MAX_LANES`]
//! features, a name longer than 16 bytes) takes the featurizer's per-position cache path.

use ctrflow_dataflows::{Feature, Features};

use super::hash::{hash_words, int_words, small_words};
#[cfg(target_arch = "x86_64")]
use super::hash_simd::{PRE, cross8, hash_columns, hash_rows, load_row};
use super::{NO_SIDE, PositionCache, Schema, Transform, Value, cross_mix, hash_scalar};
use crate::event::{CtxValue, Impression};

/// Layouts remembered at once.
pub(super) const MAX_PLANS: usize = 4;
/// Most features of one event in lanes (`user`, `item` and the `ctx` fields): one bit each
/// in a `u32` mask.
pub(super) const MAX_LANES: usize = 32;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(MAX_LANES == super::hash_simd::MAX_LANES);
/// Marks a reserved `ctx` position, which has no lane.
const NO_LANE: u8 = u8::MAX;
/// Features in the output buffer: the bias, every lane, and one group of eight crosses.
const BUF: usize = 1 + MAX_LANES + 8;

/// One `ctx` position of a layout.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The field name, as [`small_words`] of it, and its length.
    words: (u64, u64),
    len: usize,
    /// The lane of its feature, or [`NO_LANE`] for a reserved name.
    lane: u8,
    seed: u32,
    transform: u16,
}

/// A cross of a layout: its seed and, per side, the lanes of that side's field.
#[derive(Debug, Clone, Copy)]
struct PlanCross {
    seed: u32,
    a: u32,
    b: u32,
}

/// What one `ctx` layout resolves to.
#[derive(Debug, Default)]
struct Plan {
    slots: Vec<Slot>,
    /// The configured crosses whose sides both occur in the layout, in config order.
    crosses: Vec<PlanCross>,
    /// Lanes used: `user`, `item` and one per featurized `ctx` position.
    lanes: usize,
}

/// The plans of the layouts seen lately.
#[derive(Debug, Default)]
struct Layouts {
    plans: Vec<Plan>,
    /// The plan that matched last: tried first.
    last: usize,
    /// The plan to replace when a new layout comes.
    next: usize,
    /// Per cross side, while a plan is built: its lanes.
    side_masks: Vec<u32>,
}

/// The plans and the buffers of the per-event loop.
#[derive(Debug)]
pub(super) struct Plans {
    layouts: Layouts,
    #[cfg(target_arch = "x86_64")]
    lanes: Columns,
    #[cfg(target_arch = "x86_64")]
    rows: Rows,
    words: Words,
    buf: [Feature; BUF],
}

impl Default for Plans {
    fn default() -> Self {
        Plans {
            layouts: Layouts::default(),
            #[cfg(target_arch = "x86_64")]
            lanes: Columns::default(),
            #[cfg(target_arch = "x86_64")]
            rows: Rows::default(),
            words: Words::default(),
            buf: [Feature {
                index: 0,
                value: 0.0,
            }; BUF],
        }
    }
}

impl Plans {
    /// Layouts planned.
    #[cfg(test)]
    pub(super) fn layouts(&self) -> usize {
        self.layouts.plans.len()
    }

    /// Clears `out` and fills it with the features of `imp`, exactly as the scalar reference
    /// does, hashing in AVX2 lanes; false (with `out` unspecified) when no plan can hold the
    /// event's layout.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn featurize_avx2(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        bias: Feature,
        imp: &Impression<'_>,
        out: &mut Features,
    ) -> bool {
        let Plans {
            layouts,
            lanes,
            buf,
            ..
        } = self;
        let Some((plan, categorical)) = layouts.fill(schema, cache, imp, lanes) else {
            return false;
        };
        let n = plan.lanes.min(MAX_LANES);
        let blocks = lanes.max_len.min(16).div_ceil(4);
        hash_columns(
            &lanes.seeds,
            &lanes.lens,
            &lanes.columns,
            n,
            blocks,
            &mut lanes.hashes,
        );
        let (hashes, values) = (&lanes.hashes[..n], &lanes.values[..n]);
        emit::<true>(
            plan,
            categorical,
            schema.mask,
            hashes,
            values,
            buf,
            bias,
            out,
        );
        true
    }

    /// [`Plans::featurize_avx2`] with AVX-512: each key read from its slice into a 16-byte
    /// row by one byte-masked load as it is laid (no scalar word assembly), the rows
    /// transposed to blocks and hashed eight lanes at a time ([`hash_rows`]).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and AVX-512 F, BW and VL ([`super::Backend::is_avx512`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn featurize_avx512(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        bias: Feature,
        imp: &Impression<'_>,
        out: &mut Features,
    ) -> bool {
        let Plans {
            layouts, rows, buf, ..
        } = self;
        let Some((plan, categorical)) = layouts.fill(schema, cache, imp, rows) else {
            return false;
        };
        let n = plan.lanes.min(MAX_LANES);
        hash_rows(&rows.rows, &rows.seeds, &rows.lens, n, &mut rows.hashes);
        let (hashes, values) = (&rows.hashes[..n], &rows.values[..n]);
        emit::<true>(
            plan,
            categorical,
            schema.mask,
            hashes,
            values,
            buf,
            bias,
            out,
        );
        true
    }

    /// [`Plans::featurize_avx2`] without SIMD: each key hashed from its words as it is laid.
    pub(super) fn featurize_words(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        bias: Feature,
        imp: &Impression<'_>,
        out: &mut Features,
    ) -> bool {
        let Plans {
            layouts,
            words,
            buf,
            ..
        } = self;
        let Some((plan, categorical)) = layouts.fill(schema, cache, imp, words) else {
            return false;
        };
        let n = plan.lanes.min(MAX_LANES);
        let (hashes, values) = (&words.hashes[..n], &words.values[..n]);
        emit::<false>(
            plan,
            categorical,
            schema.mask,
            hashes,
            values,
            buf,
            bias,
            out,
        );
        true
    }
}

impl Layouts {
    /// Lays the features of `imp` into `sink` by the plan of its layout (built if new);
    /// returns that plan and the mask of the event's categorical lanes, or `None` when no
    /// plan can hold the layout.
    #[inline(always)]
    fn fill<S: Sink>(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        imp: &Impression<'_>,
        sink: &mut S,
    ) -> Option<(&Plan, u32)> {
        // The last layout first: its names are checked while the lanes are laid.
        let hit = (self.plans.get(self.last)).and_then(|plan| lay(plan, schema, sink, imp));
        if hit.is_none() {
            self.select(schema, cache, imp)?;
        }
        let plan = self.plans.get(self.last)?;
        match hit {
            Some(categorical) => Some((plan, categorical)),
            None => lay(plan, schema, sink, imp).map(|categorical| (plan, categorical)),
        }
    }

    /// Makes `last` the plan of the layout of `imp`: one already built, or a new one in
    /// place of the oldest. `None` when no plan can hold the layout.
    #[cold]
    #[inline(never)]
    fn select(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        imp: &Impression<'_>,
    ) -> Option<()> {
        if let Some(at) = self.plans.iter().position(|p| p.matches(imp)) {
            self.last = at;
            return Some(());
        }
        if !Plan::fits(imp) {
            return None;
        }
        let at = if self.plans.len() < MAX_PLANS {
            self.plans.push(Plan::default());
            self.plans.len() - 1
        } else {
            let at = self.next % MAX_PLANS;
            self.next = at + 1;
            at
        };
        self.plans
            .get_mut(at)?
            .build(schema, cache, &mut self.side_masks, imp);
        self.last = at;
        Some(())
    }
}

impl Plan {
    /// Whether `imp` has this plan's layout.
    fn matches(&self, imp: &Impression<'_>) -> bool {
        imp.ctx.len() == self.slots.len()
            && self
                .slots
                .iter()
                .zip(&imp.ctx)
                .all(|(s, (name, _))| s.is(name))
    }

    /// Whether a plan can hold the layout of `imp`.
    fn fits(imp: &Impression<'_>) -> bool {
        let featurized = imp.ctx.iter().filter(|(name, _)| !name.starts_with('_'));
        imp.ctx.iter().all(|(name, _)| name.len() <= 16) && 2 + featurized.count() <= MAX_LANES
    }

    /// Makes this the plan of the layout of `imp`, which [`Plan::fits`].
    fn build(
        &mut self,
        schema: &mut Schema,
        cache: &mut PositionCache,
        side_masks: &mut Vec<u32>,
        imp: &Impression<'_>,
    ) {
        side_masks.clear();
        side_masks.resize(schema.sides, 0);
        let mut side = |side: u16, lane: usize| {
            if let Some(mask) = side_masks.get_mut(usize::from(side)) {
                *mask |= 1 << lane;
            }
        };
        side(schema.user.side, 0);
        side(schema.item.side, 1);
        self.slots.clear();
        let mut lane = 2;
        for (pos, (name, _)) in imp.ctx.iter().enumerate() {
            let (words, len) = (small_words(name.as_bytes()).unwrap_or_default(), name.len());
            if name.starts_with('_') {
                self.slots.push(Slot {
                    words,
                    len,
                    lane: NO_LANE,
                    seed: 0,
                    transform: 0,
                });
                continue;
            }
            let field = cache.field(schema, pos, name);
            if field.side != NO_SIDE {
                side(field.side, lane);
            }
            self.slots.push(Slot {
                words,
                len,
                lane: u8::try_from(lane).unwrap_or(NO_LANE),
                seed: field.seed,
                transform: field.transform,
            });
            lane += 1;
        }
        self.lanes = lane;
        self.crosses.clear();
        for c in &schema.crosses {
            let mask = |side: u16| side_masks.get(usize::from(side)).copied().unwrap_or(0);
            let (a, b) = (mask(c.a), mask(c.b));
            if a != 0 && b != 0 {
                self.crosses.push(PlanCross { seed: c.seed, a, b });
            }
        }
    }
}

impl Slot {
    /// Whether this position's name is `name`.
    #[inline(always)]
    fn is(&self, name: &str) -> bool {
        name.len() == self.len && small_words(name.as_bytes()) == Some(self.words)
    }
}

/// Where the per-event loop lays the features of an event, one per lane (`lane <
/// MAX_LANES`, which a plan guarantees).
trait Sink {
    /// Starts a new event.
    fn clear(&mut self);
    /// Lane `lane` hashes `key` with `seed`, value 1.0.
    fn key(&mut self, lane: usize, seed: u32, key: &[u8]);
    /// Lane `lane` hashes the decimal text of `i` with `seed`, value 1.0.
    fn int(&mut self, lane: usize, seed: u32, i: i64);
    /// Lane `lane`'s hash is `hash` (a numeric feature's field seed), with `value`.
    fn known(&mut self, lane: usize, hash: u32, value: f32);
}

/// The AVX2 [`Sink`]: the keys of an event by column (block `i` of every lane in one
/// array), hashed eight lanes at a time by [`hash_columns`].
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
struct Columns {
    seeds: [u32; MAX_LANES],
    lens: [u32; MAX_LANES],
    columns: [[u32; MAX_LANES]; 4],
    values: [f32; MAX_LANES],
    hashes: [u32; MAX_LANES],
    /// Longest key laid since [`Sink::clear`].
    max_len: usize,
}

#[cfg(target_arch = "x86_64")]
impl Default for Columns {
    fn default() -> Self {
        Columns {
            seeds: [0; MAX_LANES],
            lens: [0; MAX_LANES],
            columns: [[0; MAX_LANES]; 4],
            values: [0.0; MAX_LANES],
            hashes: [0; MAX_LANES],
            max_len: 0,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Columns {
    /// Lane `lane`: seed, length (or [`PRE`]), blocks, value; ignored past [`MAX_LANES`].
    #[inline(always)]
    fn set(&mut self, lane: usize, seed: u32, len: u32, (lo, hi): (u64, u64), value: f32) {
        let lane = lane % MAX_LANES;
        self.seeds[lane] = seed;
        self.lens[lane] = len;
        let [c0, c1, c2, c3] = &mut self.columns;
        (c0[lane], c1[lane]) = (lo as u32, (lo >> 32) as u32);
        (c2[lane], c3[lane]) = (hi as u32, (hi >> 32) as u32);
        self.values[lane] = value;
    }

    #[inline(always)]
    fn words(&mut self, lane: usize, seed: u32, words: (u64, u64), len: usize) {
        self.max_len = self.max_len.max(len);
        self.set(lane, seed, len as u32, words, 1.0);
    }
}

#[cfg(target_arch = "x86_64")]
impl Sink for Columns {
    #[inline(always)]
    fn clear(&mut self) {
        self.max_len = 0;
    }
    #[inline(always)]
    fn key(&mut self, lane: usize, seed: u32, key: &[u8]) {
        match small_words(key) {
            Some(words) => self.words(lane, seed, words, key.len()),
            None => self.set(lane, hash_scalar(seed, key), PRE, (0, 0), 1.0),
        }
    }
    #[inline(always)]
    fn int(&mut self, lane: usize, seed: u32, i: i64) {
        match int_words(i) {
            Some((lo, hi, len)) => self.words(lane, seed, (lo, hi), len),
            None => {
                let hash = hash_scalar(seed, itoa::Buffer::new().format(i).as_bytes());
                self.set(lane, hash, PRE, (0, 0), 1.0);
            }
        }
    }
    #[inline(always)]
    fn known(&mut self, lane: usize, hash: u32, value: f32) {
        self.set(lane, hash, PRE, (0, 0), value);
    }
}

/// The AVX-512 [`Sink`]: each key's first 16 bytes as a zero-padded row, read by one
/// byte-masked load, hashed eight lanes at a time by [`hash_rows`]. Only
/// [`Plans::featurize_avx512`] lays keys into it, so the CPU has AVX-512 whenever
/// [`Sink::key`] runs.
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
struct Rows {
    rows: [[u8; 16]; MAX_LANES],
    seeds: [u32; MAX_LANES],
    lens: [u32; MAX_LANES],
    values: [f32; MAX_LANES],
    hashes: [u32; MAX_LANES],
}

#[cfg(target_arch = "x86_64")]
impl Default for Rows {
    fn default() -> Self {
        Rows {
            rows: [[0; 16]; MAX_LANES],
            seeds: [0; MAX_LANES],
            lens: [0; MAX_LANES],
            values: [0.0; MAX_LANES],
            hashes: [0; MAX_LANES],
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Rows {
    /// Lane `lane`: seed, length (or [`PRE`]), value; ignored past [`MAX_LANES`].
    #[inline(always)]
    fn set(&mut self, lane: usize, seed: u32, len: u32, value: f32) {
        let lane = lane % MAX_LANES;
        self.seeds[lane] = seed;
        self.lens[lane] = len;
        self.values[lane] = value;
    }
}

#[cfg(target_arch = "x86_64")]
impl Sink for Rows {
    #[inline(always)]
    fn clear(&mut self) {}
    #[inline(always)]
    fn key(&mut self, lane: usize, seed: u32, key: &[u8]) {
        if key.len() > 16 {
            self.set(lane, hash_scalar(seed, key), PRE, 1.0);
            return;
        }
        // SAFETY: only `Plans::featurize_avx512` lays keys here (type docs), and its caller
        // guarantees AVX-512.
        unsafe { load_row(key, &mut self.rows[lane % MAX_LANES]) };
        self.set(lane, seed, key.len() as u32, 1.0);
    }
    #[inline(always)]
    fn int(&mut self, lane: usize, seed: u32, i: i64) {
        match int_words(i) {
            Some((lo, hi, len)) => {
                let row = u128::from(lo) | (u128::from(hi) << 64);
                self.rows[lane % MAX_LANES] = row.to_le_bytes();
                self.set(lane, seed, len as u32, 1.0);
            }
            None => {
                let hash = hash_scalar(seed, itoa::Buffer::new().format(i).as_bytes());
                self.set(lane, hash, PRE, 1.0);
            }
        }
    }
    #[inline(always)]
    fn known(&mut self, lane: usize, hash: u32, value: f32) {
        self.set(lane, hash, PRE, value);
    }
}

/// The scalar [`Sink`]: each key hashed from its words as it is laid.
#[derive(Debug)]
struct Words {
    hashes: [u32; MAX_LANES],
    values: [f32; MAX_LANES],
}

impl Default for Words {
    fn default() -> Self {
        Words {
            hashes: [0; MAX_LANES],
            values: [0.0; MAX_LANES],
        }
    }
}

impl Words {
    #[inline(always)]
    fn set(&mut self, lane: usize, hash: u32, value: f32) {
        if let (Some(h), Some(v)) = (self.hashes.get_mut(lane), self.values.get_mut(lane)) {
            (*h, *v) = (hash, value);
        }
    }
}

impl Sink for Words {
    #[inline(always)]
    fn clear(&mut self) {}
    #[inline(always)]
    fn key(&mut self, lane: usize, seed: u32, key: &[u8]) {
        let hash = match small_words(key) {
            Some((lo, hi)) => hash_words(seed, lo, hi, key.len()),
            None => hash_scalar(seed, key),
        };
        self.set(lane, hash, 1.0);
    }
    #[inline(always)]
    fn int(&mut self, lane: usize, seed: u32, i: i64) {
        let hash = match int_words(i) {
            Some((lo, hi, len)) => hash_words(seed, lo, hi, len),
            None => hash_scalar(seed, itoa::Buffer::new().format(i).as_bytes()),
        };
        self.set(lane, hash, 1.0);
    }
    #[inline(always)]
    fn known(&mut self, lane: usize, hash: u32, value: f32) {
        self.set(lane, hash, value);
    }
}

/// Lays the features of `imp` into `sink` as `plan` lays them out; returns the mask of its
/// categorical lanes, or `None` if `imp` does not have the plan's layout.
#[inline(always)]
fn lay<S: Sink>(plan: &Plan, schema: &Schema, sink: &mut S, imp: &Impression<'_>) -> Option<u32> {
    if imp.ctx.len() != plan.slots.len() {
        return None;
    }
    sink.clear();
    sink.key(0, schema.user.seed, imp.user.as_bytes());
    sink.key(1, schema.item.seed, imp.item.as_bytes());
    let mut categorical = 0b11u32;
    for (slot, (name, value)) in plan.slots.iter().zip(&imp.ctx) {
        if !slot.is(name) {
            return None;
        }
        if slot.lane == NO_LANE {
            continue;
        }
        let lane = usize::from(slot.lane);
        // `lane < MAX_LANES = 32`: the plan fits.
        let bit = 1u32 << (lane % 32);
        let value = match value {
            CtxValue::Str(s) => Value::Bytes(s.as_bytes()),
            CtxValue::Num(x) => schema
                .transforms
                .get(usize::from(slot.transform))
                .unwrap_or(&Transform::Log1p)
                .apply(*x),
        };
        match value {
            Value::Bytes(bytes) => {
                sink.key(lane, slot.seed, bytes);
                categorical |= bit;
            }
            Value::Int(i) => {
                sink.int(lane, slot.seed, i);
                categorical |= bit;
            }
            Value::Numeric(x) => sink.known(lane, slot.seed, x),
        }
    }
    Some(categorical)
}

/// Writes the features into `out`: the bias, the lanes (`hashes`, `values`), then the
/// crosses present (both sides categorical in this event, the lanes of `categorical`);
/// with `SIMD`, full groups of eight crosses are mixed by [`cross8`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit<const SIMD: bool>(
    plan: &Plan,
    categorical: u32,
    mask: u32,
    hashes: &[u32],
    values: &[f32],
    buf: &mut [Feature; BUF],
    bias: Feature,
    out: &mut Features,
) {
    out.clear();
    let (head, rest) = buf.split_at_mut(1);
    if let Some(b) = head.first_mut() {
        *b = bias;
    }
    for (f, (&h, &value)) in rest.iter_mut().zip(hashes.iter().zip(values)) {
        *f = Feature {
            index: h & mask,
            value,
        };
    }
    let mut k = 1 + hashes.len();

    // Crosses, eight at a time with SIMD; the last few (a typical event has three) one by
    // one, since gathering them into a vector costs more than it saves.
    let lane_hash = |lanes: u32| {
        let lanes = lanes & categorical;
        if lanes == 0 {
            return None;
        }
        hashes.get(lanes.trailing_zeros() as usize).copied()
    };
    let (mut seeds, mut a, mut b) = ([0u32; 8], [0u32; 8], [0u32; 8]);
    let mut m = 0;
    for c in &plan.crosses {
        if let (Some(x), Some(y)) = (lane_hash(c.a), lane_hash(c.b)) {
            // `m < 8`: it is reset when it reaches 8.
            (seeds[m], a[m], b[m]) = (c.seed, x, y);
            m += 1;
            if m == 8 {
                k = room(buf, k, out);
                mix8::<SIMD>(&seeds, &a, &b, mask, buf, k);
                k += 8;
                m = 0;
            }
        }
    }
    k = room(buf, k, out);
    let tail = seeds.iter().zip(&a).zip(&b).take(m);
    for (f, ((&s, &x), &y)) in buf.iter_mut().skip(k).zip(tail) {
        *f = Feature {
            index: cross_mix(s, x, y) & mask,
            value: 1.0,
        };
    }
    k += m;
    out.extend_from_slice(buf.get(..k).unwrap_or(&[]));
}

/// Eight crosses into `buf[k..k + 8]`.
#[inline(always)]
fn mix8<const SIMD: bool>(
    seeds: &[u32; 8],
    a: &[u32; 8],
    b: &[u32; 8],
    mask: u32,
    buf: &mut [Feature; BUF],
    k: usize,
) {
    let mut mixed = [0u32; 8];
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: `SIMD` is only set by `Plans::featurize_avx2`, whose caller guarantees AVX2.
        unsafe { cross8(seeds, a, b, &mut mixed) };
    }
    if !SIMD || cfg!(not(target_arch = "x86_64")) {
        for (m, ((&s, &x), &y)) in mixed.iter_mut().zip(seeds.iter().zip(a).zip(b)) {
            *m = cross_mix(s, x, y);
        }
    }
    for (f, &h) in buf.iter_mut().skip(k).zip(&mixed) {
        *f = Feature {
            index: h & mask,
            value: 1.0,
        };
    }
}

/// Where the next (up to) eight features go in `buf`, which holds `k`: after them if they
/// fit, else at 0 once the `k` are moved to `out`.
#[inline(always)]
fn room(buf: &[Feature; BUF], k: usize, out: &mut Features) -> usize {
    if k + 8 <= BUF {
        return k;
    }
    out.extend_from_slice(buf.get(..k).unwrap_or(&[]));
    0
}
