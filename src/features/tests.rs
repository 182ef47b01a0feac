//! Tests of the featurizer: feature set rules, and SIMD == scalar on random inputs.

use std::borrow::Cow;

use proptest::prelude::*;
use smallvec::SmallVec;

use super::*;
use crate::event::{DEFAULT_MAX_EVENT_BYTES, Event, decode};

const CONTRACT_EVENT: &str = r#"{"type":"impression","id":"imp-81723","ts":1763800000123,"user":"u42","item":"v9001","ctx":{"device":"ios","country":"PL","position":3,"hour":13,"category":"music"}}"#;

fn impression(json: &str) -> Impression<'_> {
    match decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES) {
        Ok(Event::Impression(imp)) => imp,
        other => panic!("not an impression: {other:?}"),
    }
}

fn imp<'a>(user: &'a str, item: &'a str, ctx: &[(&'a str, CtxValue<'a>)]) -> Impression<'a> {
    Impression {
        id: "imp".into(),
        ts: 1,
        user: user.into(),
        item: item.into(),
        ctx: ctx
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), v.clone()))
            .collect(),
    }
}

fn s(v: &str) -> CtxValue<'_> {
    CtxValue::Str(v.into())
}

/// Features by both paths, asserting they agree bit for bit.
fn features(f: &mut Featurizer, imp: &Impression<'_>) -> Features {
    let (mut fast, mut reference) = (Features::new(), Features::new());
    f.featurize(imp, &mut fast);
    f.featurize_scalar(imp, &mut reference);
    assert_same(&fast, &reference);
    fast
}

fn assert_same(a: &[Feature], b: &[Feature]) {
    let bits = |v: &[Feature]| {
        v.iter()
            .map(|f| (f.index, f.value.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(a), bits(b));
}

fn featurizer(config: FeatureConfig) -> Featurizer {
    Featurizer::new(&config).unwrap()
}

fn cat(seed: u32, value: &str, mask: u32) -> Feature {
    Feature {
        index: hash_scalar(seed, value.as_bytes()) & mask,
        value: 1.0,
    }
}

#[test]
fn contract_event_follows_the_spec() {
    let mut f = featurizer(FeatureConfig::default());
    let m = f.mask();
    assert_eq!(m, (1 << 22) - 1);
    let got = features(&mut f, &impression(CONTRACT_EVENT));
    let (user, item) = (hash::top_seed("user"), hash::top_seed("item"));
    let ctx = hash::ctx_seed;
    let cross = |a: u32, b: u32, va: u32, vb: u32| Feature {
        index: cross_mix(hash::cross_seed(a, b), va, vb) & m,
        value: 1.0,
    };
    let h = |seed: u32, v: &str| hash_scalar(seed, v.as_bytes());
    let want = [
        Feature {
            index: hash::top_seed("bias") & m,
            value: 1.0,
        },
        cat(user, "u42", m),
        cat(item, "v9001", m),
        cat(ctx("device"), "ios", m),
        cat(ctx("country"), "PL", m),
        cat(ctx("position"), "3", m),
        cat(ctx("hour"), "13", m),
        // No override: log1p of a string does not apply; strings are categorical.
        cat(ctx("category"), "music", m),
        cross(
            user,
            ctx("category"),
            h(user, "u42"),
            h(ctx("category"), "music"),
        ),
        cross(
            item,
            ctx("device"),
            h(item, "v9001"),
            h(ctx("device"), "ios"),
        ),
        cross(
            ctx("position"),
            ctx("device"),
            h(ctx("position"), "3"),
            h(ctx("device"), "ios"),
        ),
    ];
    assert_same(&got, &want);
}

#[test]
fn equal_values_in_different_fields_differ() {
    let mut f = featurizer(FeatureConfig {
        crosses: vec![],
        ..FeatureConfig::default()
    });
    let got = features(
        &mut f,
        &imp("a", "a", &[("x", s("a")), ("y", s("a")), ("user", s("a"))]),
    );
    let indices: Vec<u32> = got[1..].iter().map(|f| f.index).collect();
    let mut unique = indices.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), indices.len(), "{indices:?}");
}

#[test]
fn reserved_fields_never_reach_the_model() {
    let mut f = featurizer(FeatureConfig::default());
    let with = features(
        &mut f,
        &imp(
            "u",
            "i",
            &[
                ("_p_true", CtxValue::Num(0.04)),
                ("_x", s("y")),
                ("device", s("ios")),
            ],
        ),
    );
    let without = features(&mut f, &imp("u", "i", &[("device", s("ios"))]));
    assert_same(&with, &without);
    // bias, user, item, device, item x device.
    assert_eq!(with.len(), 5);
}

#[test]
fn crosses_need_both_sides_present_and_categorical() {
    let config = FeatureConfig {
        numeric: [("price".to_owned(), NumericTransform::Raw)].into(),
        crosses: vec![
            ["user".to_owned(), "device".to_owned()],
            ["price".to_owned(), "device".to_owned()],
            ["hour".to_owned(), "device".to_owned()],
        ],
        numeric_default: NumericTransform::Categorical,
        ..FeatureConfig::default()
    };
    let mut f = featurizer(config);
    // No device: no cross at all.
    assert_eq!(
        features(&mut f, &imp("u", "i", &[("price", CtxValue::Num(2.0))])).len(),
        4
    );
    // Device, numeric price: user x device only; hour (default categorical) crosses.
    let got = features(
        &mut f,
        &imp(
            "u",
            "i",
            &[("price", CtxValue::Num(2.0)), ("device", s("ios"))],
        ),
    );
    assert_eq!(got.len(), 6);
    let got = features(
        &mut f,
        &imp(
            "u",
            "i",
            &[
                ("price", CtxValue::Num(2.0)),
                ("device", s("ios")),
                ("hour", CtxValue::Num(7.9)),
            ],
        ),
    );
    assert_eq!(got.len(), 8);
    // A string price is categorical, so its cross appears.
    let got = features(
        &mut f,
        &imp("u", "i", &[("price", s("cheap")), ("device", s("ios"))]),
    );
    assert_eq!(got.len(), 7);
}

#[test]
fn numeric_transforms() {
    let config = FeatureConfig {
        numeric: [
            ("raw".to_owned(), NumericTransform::Raw),
            ("log".to_owned(), NumericTransform::Log1p),
            ("cat".to_owned(), NumericTransform::Categorical),
            (
                "b".to_owned(),
                NumericTransform::Buckets(vec![0.0, 10.0, 100.0]),
            ),
        ]
        .into(),
        crosses: vec![],
        ..FeatureConfig::default()
    };
    let mut f = featurizer(config);
    let m = f.mask();
    let one = |f: &mut Featurizer, field: &str, x: f64| {
        let got = features(f, &imp("u", "i", &[(field, CtxValue::Num(x))]));
        got[3]
    };
    let numeric = |field: &str, value: f32| Feature {
        index: hash::ctx_seed(field) & m,
        value,
    };
    assert_eq!(one(&mut f, "raw", -2.5), numeric("raw", -2.5));
    assert_eq!(one(&mut f, "raw", 1e300), numeric("raw", f32::MAX));
    assert_eq!(one(&mut f, "log", (1.0f64).exp_m1()), numeric("log", 1.0));
    assert_eq!(one(&mut f, "log", -(2.0f64).exp_m1()), numeric("log", -2.0));
    let c = hash::ctx_seed("cat");
    assert_eq!(one(&mut f, "cat", 3.0), cat(c, "3", m));
    assert_eq!(one(&mut f, "cat", 3.99), cat(c, "3", m));
    assert_eq!(one(&mut f, "cat", -3.99), cat(c, "-3", m));
    assert_eq!(one(&mut f, "cat", -0.5), cat(c, "0", m));
    assert_eq!(one(&mut f, "cat", 1e300), cat(c, &i64::MAX.to_string(), m));
    // The number 3 and the string "3" are the same feature.
    let as_str = features(&mut f, &imp("u", "i", &[("cat", s("3"))]));
    assert_eq!(as_str[3], cat(c, "3", m));
    let b = hash::ctx_seed("b");
    for (x, k) in [
        (-1.0, "0"),
        (0.0, "1"),
        (5.0, "1"),
        (10.0, "2"),
        (99.9, "2"),
        (100.0, "3"),
        (1e9, "3"),
    ] {
        assert_eq!(one(&mut f, "b", x), cat(b, k, m), "x = {x}");
    }
    // Unconfigured numbers use numeric_default (log1p).
    assert_eq!(one(&mut f, "other", 0.0), numeric("other", 0.0));
}

#[test]
fn bits_mask_every_index() {
    for bits in [1u8, 5, 17, 30] {
        let mut f = featurizer(FeatureConfig {
            bits,
            ..FeatureConfig::default()
        });
        assert_eq!(f.mask(), (1u32 << bits) - 1);
        let got = features(&mut f, &impression(CONTRACT_EVENT));
        assert_eq!(got.len(), 11);
        assert!(got.iter().all(|x| x.index < (1u32 << bits)), "{got:?}");
    }
}

#[test]
fn invalid_config_is_an_error_listing_every_problem() {
    let err = Featurizer::new(&FeatureConfig {
        bits: 0,
        crosses: vec![["a".to_owned(), "a".to_owned()]],
        ..FeatureConfig::default()
    })
    .unwrap_err();
    let FeatureConfigError::Invalid { problems } = &err;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        err.to_string()
            .contains("features.bits must be in 1..=30, got 0")
    );
}

#[test]
fn field_cache_is_bounded() {
    let mut f = featurizer(FeatureConfig::default());
    let names: Vec<String> = (0..MAX_CACHED_FIELDS + 10)
        .map(|i| format!("f{i}"))
        .collect();
    for chunk in names.chunks(50) {
        let ctx: Vec<(&str, CtxValue<'_>)> = chunk.iter().map(|n| (n.as_str(), s("v"))).collect();
        features(&mut f, &imp("u", "i", &ctx));
    }
    assert_eq!(f.schema.fields.len(), MAX_CACHED_FIELDS);
}

#[test]
fn scalar_backend_is_the_reference() {
    let mut f = Featurizer::with_backend(&FeatureConfig::default(), Backend::scalar()).unwrap();
    assert!(!f.backend().is_simd());
    features(&mut f, &impression(CONTRACT_EVENT));
}

// ---- allocation counting ----------------------------------------------------------------

pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts allocations made by the current thread while counting is on, so that tests
    /// running in parallel do not disturb each other.
    pub struct Counting;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    fn note() {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
    }

    // SAFETY: defers every operation to `System`; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Allocations made by `f` on this thread.
    pub fn allocations(f: impl FnOnce()) -> u64 {
        COUNT.with(|c| c.set(0));
        ON.with(|on| on.set(true));
        f();
        ON.with(|on| on.set(false));
        COUNT.with(Cell::get)
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

#[test]
fn featurize_does_not_allocate_once_warm() {
    let events = [
        CONTRACT_EVENT,
        r#"{"type":"impression","id":"b","ts":2,"user":"a-much-longer-user-id-0123456789","item":"x","ctx":{"device":"android","position":12,"price":9.99,"_p_true":0.05,"category":"news","hour":0}}"#,
    ];
    let imps: Vec<Impression<'_>> = events.iter().map(|e| impression(e)).collect();
    for backend in Backend::available() {
        let mut f = Featurizer::with_backend(&FeatureConfig::default(), backend).unwrap();
        let mut out = Features::new();
        for imp in &imps {
            f.featurize(imp, &mut out);
            f.featurize_simd(imp, &mut out);
            f.featurize_scalar(imp, &mut out);
        }
        let n = counting::allocations(|| {
            for _ in 0..100 {
                for imp in &imps {
                    f.featurize(imp, &mut out);
                    f.featurize_simd(imp, &mut out);
                    f.featurize_scalar(imp, &mut out);
                }
            }
        });
        assert_eq!(n, 0, "{} allocated", backend.name());
        assert!(!out.spilled());

        // The batch paths, on a batch that is not a multiple of the group size.
        let batch: Vec<Impression<'_>> = imps.iter().cycle().take(21).cloned().collect();
        let mut outs = vec![Features::new(); batch.len()];
        f.featurize_batch(&batch, &mut outs);
        let n = counting::allocations(|| {
            for _ in 0..20 {
                f.featurize_batch(&batch, &mut outs);
            }
        });
        assert_eq!(n, 0, "{} batch path allocated", backend.name());
        assert!(outs.iter().all(|o| !o.spilled()));
    }
}

#[test]
fn wide_events_and_many_crosses_match_the_reference() {
    let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    let wide: Vec<(&str, CtxValue<'_>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), CtxValue::Num(i as f64)))
        .collect();
    let long = "a-user-id-longer-than-sixteen-bytes";
    let events = [
        impression(CONTRACT_EVENT),
        imp(long, "i", &[("device", s("ios")), ("category", s(long))]),
        imp("u", "i", &wide),
        // Fits the lanes, with 12 crosses: one full vector of them and a tail.
        imp("u", "i", &wide[..20]),
        imp("", "", &[]),
        imp("u", "i", &[("country", s("PL")), ("device", s("tv"))]),
    ];
    for backend in Backend::available() {
        // 100 categorical fields (more than the SIMD lanes), and 22 crosses (more than one
        // vector of them), some of them with a long key, some with an absent side.
        let mut config = FeatureConfig {
            numeric_default: NumericTransform::Categorical,
            ..FeatureConfig::default()
        };
        for i in 0..12 {
            config.crosses.push(["user".to_owned(), format!("f{i}")]);
        }
        for i in 50..56 {
            config.crosses.push([format!("f{i}"), "device".to_owned()]);
        }
        config.crosses.push(["f99".to_owned(), "user".to_owned()]);
        let mut f = Featurizer::with_backend(&config, backend).unwrap();
        for n in [0, 1, 3, 7, 8, 9, 17, 40] {
            let batch: Vec<Impression<'_>> = events.iter().cycle().take(n).cloned().collect();
            let mut reference = Features::new();
            let mut a = vec![Features::new(); n];
            f.featurize_batch(&batch, &mut a);
            let (mut single, mut simd) = (Features::new(), Features::new());
            for (imp, a) in batch.iter().zip(&a) {
                f.featurize_scalar(imp, &mut reference);
                f.featurize(imp, &mut single);
                f.featurize_simd(imp, &mut simd);
                assert_same(a, &reference);
                assert_same(&single, &reference);
                assert_same(&simd, &reference);
            }
        }
        let mut out = Features::new();
        f.featurize_simd(&events[2], &mut out);
        assert_eq!(
            out.len(),
            1 + 2 + 100 + 12 + 1,
            "the wide event has 13 crosses"
        );
        f.featurize(&events[3], &mut out);
        assert_eq!(
            out.len(),
            1 + 2 + 20 + 12,
            "the 20-field event has 12 crosses"
        );
    }
}

#[test]
fn plans_follow_the_layouts_of_the_stream() {
    for backend in Backend::available() {
        let mut f = Featurizer::with_backend(&FeatureConfig::default(), backend).unwrap();
        let contract = impression(CONTRACT_EVENT);
        for _ in 0..3 {
            features(&mut f, &contract);
        }
        assert_eq!(f.plans.layouts(), 1, "one layout, one plan");
        // Layouts that differ in one name, in turn: more than the plans kept.
        let names: Vec<String> = (0..plan::MAX_PLANS + 2).map(|i| format!("f{i}")).collect();
        for round in 0..3 {
            for name in &names {
                let ctx = [
                    ("device", s("ios")),
                    (name.as_str(), s("x")),
                    ("hour", CtxValue::Num(f64::from(round))),
                ];
                features(&mut f, &imp("u", "i", &ctx));
            }
        }
        assert_eq!(f.plans.layouts(), plan::MAX_PLANS);
        // A name longer than 16 bytes: no plan holds it; the scalar path serves it.
        let mut f = Featurizer::with_backend(&FeatureConfig::default(), backend).unwrap();
        features(&mut f, &imp("u", "i", &[("a-name-longer-than-16", s("x"))]));
        assert_eq!(f.plans.layouts(), 0);
    }
}

#[test]
#[should_panic(expected = "one output per impression")]
fn batch_needs_one_output_per_impression() {
    let mut f = featurizer(FeatureConfig::default());
    f.featurize_batch(&[impression(CONTRACT_EVENT)], &mut []);
}

// ---- SIMD == scalar --------------------------------------------------------------------

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,12}",
        "\\PC{0,40}",
        proptest::collection::vec(any::<u8>(), 0..100)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[a-zA-Z0-9]{90,100}",
    ]
}

fn arb_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-50i64..50).prop_map(|n| n as f64),
        -1e3f64..1e3,
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
    ]
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "device", "country", "position", "hour", "category", "price", "age", "_p_true", "_x",
            "user", "item",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{0,8}",
    ]
}

fn arb_ctx() -> impl Strategy<Value = Vec<(String, Result<String, f64>)>> {
    let value = prop_oneof![arb_string().prop_map(Ok), arb_number().prop_map(Err)];
    proptest::collection::vec((arb_name(), value), 0..20)
}

fn arb_config() -> impl Strategy<Value = FeatureConfig> {
    let transform = prop_oneof![
        Just(NumericTransform::Raw),
        Just(NumericTransform::Log1p),
        Just(NumericTransform::Categorical),
        Just(NumericTransform::Buckets(vec![-10.0, 0.0, 2.5, 100.0])),
    ];
    (1u8..=30, transform.clone(), transform).prop_map(|(bits, default, age)| {
        let mut config = FeatureConfig {
            bits,
            numeric_default: default,
            ..FeatureConfig::default()
        };
        config.numeric.insert("age".to_owned(), age);
        config
            .crosses
            .push(["age".to_owned(), "country".to_owned()]);
        config.crosses.push(["user".to_owned(), "item".to_owned()]);
        config
    })
}

type ArbImp = (String, String, Vec<(String, Result<String, f64>)>);

fn arb_imp() -> impl Strategy<Value = ArbImp> {
    (arb_string(), arb_string(), arb_ctx())
}

/// An impression borrowing from a generated one.
fn to_imp(imp: &ArbImp) -> Impression<'_> {
    let (user, item, ctx) = imp;
    let ctx = ctx
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Ok(s) => CtxValue::Str(s.as_str().into()),
                Err(x) => CtxValue::Num(*x),
            };
            (Cow::Borrowed(k.as_str()), v)
        })
        .collect();
    Impression {
        id: "i".into(),
        ts: 0,
        user: user.as_str().into(),
        item: item.as_str().into(),
        ctx,
    }
}

/// A batch of events: a few shared layouts with varied values, as a stream has, plus fully
/// random events.
fn arb_batch() -> impl Strategy<Value = Vec<ArbImp>> {
    let layouts = proptest::collection::vec(arb_imp(), 1..4);
    let picks = proptest::collection::vec((any::<prop::sample::Index>(), arb_imp(), 0u8..4), 0..40);
    (layouts, picks).prop_map(|(layouts, picks)| {
        picks
            .into_iter()
            .map(|(layout, random, kind)| {
                let (_, _, ctx) = &layouts[layout.index(layouts.len())];
                match kind {
                    // The layout of a shared event, values (and user, item) of another.
                    0 | 1 => {
                        let (user, item, values) = &random;
                        let ctx = ctx
                            .iter()
                            .zip(values.iter().chain(ctx.iter()).cycle())
                            .map(|((name, _), (_, value))| (name.clone(), value.clone()))
                            .collect();
                        (user.clone(), item.clone(), ctx)
                    }
                    2 => layouts[layout.index(layouts.len())].clone(),
                    _ => random,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn featurize_batch_matches_the_scalar_reference(
        config in arb_config(),
        batch in arb_batch(),
    ) {
        let imps: Vec<Impression<'_>> = batch.iter().map(to_imp).collect();
        let bits = |v: &Features| v.iter().map(|f| (f.index, f.value.to_bits())).collect::<Vec<_>>();
        for backend in Backend::available() {
            let mut f = Featurizer::with_backend(&config, backend).unwrap();
            let mut reference = Features::new();
            // Dirty outputs: every path must clear them.
            let dirty = |n| vec![Features::from_elem(Feature { index: 7, value: 7.0 }, 30); n];
            let (mut batched, mut single, mut simd) = (dirty(imps.len()), dirty(1), dirty(1));
            f.featurize_batch(&imps, &mut batched);
            for (i, imp) in imps.iter().enumerate() {
                f.featurize_scalar(imp, &mut reference);
                f.featurize(imp, &mut single[0]);
                f.featurize_simd(imp, &mut simd[0]);
                prop_assert_eq!(bits(&simd[0]), bits(&reference), "featurize_simd, event {}", i);
                prop_assert_eq!(bits(&batched[i]), bits(&reference), "featurize_batch, event {}", i);
                prop_assert_eq!(bits(&single[0]), bits(&reference), "featurize, event {}", i);
            }
        }
    }

    #[test]
    fn hash_columns_matches_the_scalar_reference(
        keys in proptest::collection::vec(
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..=16), any::<bool>()),
            0..=hash_simd::MAX_LANES,
        ),
    ) {
        // Only on a CPU with AVX2: columns are never hashed elsewhere.
        #[cfg(target_arch = "x86_64")]
        if Backend::detect().is_simd() {
            const N: usize = hash_simd::MAX_LANES;
            let (mut seeds, mut lens, mut columns) = ([0u32; N], [0u32; N], [[0u32; N]; 4]);
            let mut want = Vec::new();
            for (lane, (seed, key, known)) in keys.iter().enumerate() {
                seeds[lane] = *seed;
                if *known {
                    lens[lane] = hash_simd::PRE;
                    want.push(*seed);
                } else {
                    lens[lane] = key.len() as u32;
                    let (lo, hi) = hash::small_words(key).unwrap();
                    let blocks = [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32];
                    for (column, block) in columns.iter_mut().zip(blocks) {
                        column[lane] = block;
                    }
                    want.push(hash_scalar(*seed, key));
                }
            }
            let mut out = [0u32; N];
            // SAFETY: AVX2 was detected.
            unsafe { hash_simd::hash_columns(&seeds, &lens, &columns, keys.len(), 4, &mut out) };
            prop_assert_eq!(&out[..keys.len()], &want[..]);
        }
    }

    #[test]
    fn featurize_matches_the_scalar_reference(
        config in arb_config(),
        user in arb_string(),
        item in arb_string(),
        ctx in arb_ctx(),
    ) {
        let mut f = featurizer(config);
        let ctx: SmallVec<[(Cow<'_, str>, CtxValue<'_>); crate::event::INLINE_CTX]> = ctx
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Ok(s) => CtxValue::Str(s.as_str().into()),
                    Err(x) => CtxValue::Num(*x),
                };
                (Cow::Borrowed(k.as_str()), v)
            })
            .collect();
        let imp = Impression { id: "i".into(), ts: 0, user: user.into(), item: item.into(), ctx };
        let (mut fast, mut simd, mut reference) = (Features::new(), Features::new(), Features::new());
        f.featurize(&imp, &mut fast);
        f.featurize_simd(&imp, &mut simd);
        f.featurize_scalar(&imp, &mut reference);
        let bits = |v: &Features| v.iter().map(|f| (f.index, f.value.to_bits())).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fast), bits(&reference));
        prop_assert_eq!(bits(&simd), bits(&reference));
        prop_assert!(fast.iter().all(|x| x.index <= f.mask() && x.value.is_finite()));
    }

    #[test]
    fn hash_words_matches_the_scalar_reference(
        seed in any::<u32>(),
        key in proptest::collection::vec(any::<u8>(), 0..=16),
    ) {
        let (lo, hi) = hash::small_words(&key).unwrap();
        prop_assert_eq!(hash::hash_words(seed, lo, hi, key.len()), hash_scalar(seed, &key));
    }

    #[test]
    fn int_words_match_the_decimal_text(i in prop_oneof![any::<i64>(), -1_000_000i64..1_000_000]) {
        let text = itoa::Buffer::new().format(i).to_owned();
        let want = hash::small_words(text.as_bytes()).map(|(lo, hi)| (lo, hi, text.len()));
        prop_assert_eq!(hash::int_words(i), want);
    }

    #[test]
    fn cross8_matches_the_scalar_reference(
        seeds in any::<[u32; 8]>(),
        a in any::<[u32; 8]>(),
        b in any::<[u32; 8]>(),
    ) {
        #[cfg(target_arch = "x86_64")]
        if Backend::detect().is_simd() {
            let mut fast = [0u32; 8];
            // SAFETY: AVX2 was detected.
            unsafe { hash_simd::cross8(&seeds, &a, &b, &mut fast) };
            let reference: Vec<u32> = (0..8).map(|i| cross_mix(seeds[i], a[i], b[i])).collect();
            prop_assert_eq!(fast.to_vec(), reference);
        }
    }
}

/// A layout for [`BatchHasher`]: field seeds and crosses (seed, side positions).
fn arb_layout() -> impl Strategy<Value = (Vec<u32>, Vec<CrossPair>)> {
    proptest::collection::vec(any::<u32>(), 1..=batch::MAX_FIELDS).prop_flat_map(|seeds| {
        let fields = seeds.len();
        let cross =
            (any::<u32>(), 0..fields, 0..fields).prop_map(|(seed, a, b)| CrossPair { seed, a, b });
        (Just(seeds), proptest::collection::vec(cross, 0..12))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batch_hasher_matches_the_scalar_reference(
        (seeds, crosses) in arb_layout(),
        events in 0usize..20,
        bits in 1u32..=32,
        bytes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..=24), 640),
    ) {
        // Keys of every length up to 24 bytes, some past 16 (hashed apart from the vectors).
        let keys: Vec<&[u8]> = bytes.iter().cycle().take(events * seeds.len()).map(Vec::as_slice).collect();
        let mask = u32::MAX >> (32 - bits);
        let width = seeds.len() + crosses.len();
        let mut want = Vec::with_capacity(events * width);
        for event in keys.chunks_exact(seeds.len()) {
            let hashes: Vec<u32> = event.iter().zip(&seeds).map(|(k, &s)| hash_scalar(s, k)).collect();
            want.extend(hashes.iter().map(|h| h & mask));
            want.extend(crosses.iter().map(|c| cross_mix(c.seed, hashes[c.a], hashes[c.b]) & mask));
        }
        // Every backend this CPU has: scalar, AVX2 (columns laid by scalar code) and AVX-512
        // (keys read from their slices by masked loads; sixteen events per vector with
        // VBMI). Up to 19 events: a whole vector of sixteen and a part of one.
        for backend in Backend::available() {
            let mut hasher = BatchHasher::new(backend, &seeds, &crosses, bits);
            prop_assert_eq!(hasher.width(), width);
            // The sixteen-lane path runs wherever the CPU has it, so this covers it.
            #[cfg(target_arch = "x86_64")]
            if backend.is_avx512() && std::is_x86_feature_detected!("avx512vbmi") {
                prop_assert_eq!(hasher.lanes(), 16);
            }
            // Twice, with dirty outputs and stale lanes from the first call.
            for _ in 0..2 {
                let mut out = vec![7u32; events * width];
                hasher.hash(&keys, &mut out);
                prop_assert_eq!(&out, &want, "{}", backend.name());
            }
            // The two halves, eight events at a time.
            let mut out = vec![7u32; events * width];
            for (keys, out) in keys.chunks(8 * seeds.len()).zip(out.chunks_mut(8 * width)) {
                prop_assert_eq!(hasher.lay(keys) * width, out.len());
                hasher.hash_laid(out);
            }
            prop_assert_eq!(&out, &want, "{} lay + hash_laid", backend.name());
            // The eight-lane AVX-512 path, which the sixteen-lane one replaces where the CPU
            // has VBMI (the bench compares them).
            if backend.is_avx512() {
                let mut hasher = BatchHasher::new(backend, &seeds, &crosses, bits).eight_lanes();
                prop_assert_eq!(hasher.lanes(), 8);
                let mut out = vec![7u32; events * width];
                hasher.hash(&keys, &mut out);
                prop_assert_eq!(&out, &want, "avx512 eight lanes");
            }
        }
    }
}
