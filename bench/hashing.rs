//! Feature hashing, scalar reference vs SIMD (AVX2, and AVX-512 when the CPU has them): the
//! hash step alone, by feature count, and the whole featurizer on decoded events.
//!
//! `hash/{scalar,simd_avx2,simd_avx512,simd_avx512x8,kernel_avx2}/{4,8,contract_11,16,32}`:
//! the hash step alone over 256 events of one layout with varied values, as the featurizer
//! hands it over: per event the keys (field seed + value bytes; integers as their decimal
//! text) and the crosses (pairs of keys), out the bucket index of every key and cross. The feature count
//! includes the bias, which is its seed and hashes nothing: `16` is the 16-feature event of
//! `featurize` (12 keys, 3 crosses), `contract_11` the contract's (7 keys, 3 crosses), `32`
//! has 24 keys (one of 24 bytes) and 7 crosses. Throughput is in events.
//! - `scalar`: the reference, `hash_scalar` per key and `cross_mix` per cross in a plain loop;
//! - `simd_<backend>`: `BatchHasher::hash`, one event per lane, from the same byte slices,
//!   for every SIMD backend the CPU has: `avx2` (eight events per vector) lays each key out
//!   by column with scalar code (its two 8-byte words and its length), `avx512` reads each
//!   key with one byte-masked load, sixteen events per 512-bit vector where the CPU has VBMI
//!   (`BatchHasher::lanes`, printed), else eight; the layout is counted either way;
//! - `simd_avx512x8`: where `avx512` runs sixteen events per vector, the eight-lane AVX-512
//!   path (`BatchHasher::eight_lanes`) on the same keys, to compare the two;
//! - `kernel_avx2`: `BatchHasher::hash_laid` alone, 32 times on the first eight events laid
//!   once: the AVX2 vector hashing, the crosses and writing the indices out, without the
//!   layout.
//!
//! All give the same indices: checked once before measuring (and by proptests).
//!
//! `featurize/*/{contract_12,wide_16}`: the whole featurizer (field lookup, transforms,
//! hashing, crosses) over 256 decoded impressions of one layout with varied values: the
//! contract's example event (11 features) and a 16-feature event. Throughput is in events;
//! decoding is not measured.
//! - `scalar`: `featurize_scalar`, the reference, per event;
//! - `featurize`: `featurize`, the pipeline's path (a plan per `ctx` layout, each key
//!   hashed from its words as it is laid), per event;
//! - `simd_<simd>`: `featurize_simd` with the detected backend (the same plans, the keys of
//!   the event hashed eight at a time in SIMD lanes; with AVX-512 each key read into its
//!   lane's 16-byte row by one masked load), per event.
//!
//! Run: `cargo bench --bench hashing -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::event::{DEFAULT_MAX_EVENT_BYTES, Event, Impression, decode};
use ctrflow::features::hash::{cross_seed, ctx_seed, top_seed};
use ctrflow::features::{
    Backend, BatchHasher, CrossPair, FeatureConfig, Featurizer, cross_mix, hash_scalar,
};
use ctrflow_dataflows::Features;

/// Builds the JSON of event `i` of a bench stream.
type EventFn = fn(usize) -> String;

/// Impressions per `featurize` iteration.
const EVENTS: usize = 256;

const DEVICES: [&str; 4] = ["ios", "android", "web", "tv"];
const COUNTRIES: [&str; 5] = ["PL", "DE", "US", "FR", "BR"];
const CATEGORIES: [&str; 4] = ["music", "sports", "news", "kids"];

/// The contract's example event (bias, user, item, 5 ctx fields, 3 crosses = 11
/// features), with values varied by `i`.
fn contract_event(i: usize) -> String {
    format!(
        r#"{{"type":"impression","id":"imp-{i}","ts":1763800000123,"user":"u{}","item":"v{}","ctx":{{"device":"{}","country":"{}","position":{},"hour":{},"category":"{}"}}}}"#,
        (i * 7919) % 100_000,
        (i * 104_729) % 10_000,
        DEVICES[i % 4],
        COUNTRIES[i % 5],
        i % 10,
        i % 24,
        CATEGORIES[i % 4],
    )
}

/// 16 features with the default config: bias, user, item, 10 ctx fields, 3 crosses.
fn wide_event(i: usize) -> String {
    format!(
        r#"{{"type":"impression","id":"imp-{i}","ts":1763800000456,"user":"u{}","item":"v{}","ctx":{{"device":"{}","country":"{}","position":{},"hour":{},"category":"{}","os":"14.{}","lang":"de-DE","network":"wifi","app":"player","page":"home"}}}}"#,
        1_000_000 + (i * 7919) % 9_000_000,
        (i * 104_729) % 10_000,
        DEVICES[i % 4],
        COUNTRIES[i % 5],
        i % 10,
        i % 24,
        CATEGORIES[i % 4],
        i % 3,
    )
}

fn impression(json: &str) -> Impression<'_> {
    match decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES) {
        Ok(Event::Impression(imp)) => imp,
        other => panic!("bench event is not an impression: {other:?}"),
    }
}

fn featurize(c: &mut Criterion) {
    let config = FeatureConfig::default();
    let simd = Backend::detect();
    let mut featurizer = Featurizer::with_backend(&config, simd).expect("default config is valid");
    let mut group = c.benchmark_group("featurize");
    let events: [(&str, EventFn); 2] = [("contract_12", contract_event), ("wide_16", wide_event)];
    for (name, event) in events {
        let jsons: Vec<String> = (0..EVENTS).map(event).collect();
        let imps: Vec<Impression<'_>> = jsons.iter().map(|j| impression(j)).collect();
        let mut outs = vec![Features::new(); EVENTS];
        featurizer.featurize_batch(&imps, &mut outs);
        group.throughput(Throughput::Elements(EVENTS as u64));
        group.bench_with_input(BenchmarkId::new("scalar", name), &imps, |b, imps| {
            b.iter(|| {
                for (imp, out) in black_box(imps).iter().zip(&mut outs) {
                    featurizer.featurize_scalar(imp, out);
                }
                black_box(&outs);
            })
        });
        group.bench_with_input(BenchmarkId::new("featurize", name), &imps, |b, imps| {
            b.iter(|| {
                for (imp, out) in black_box(imps).iter().zip(&mut outs) {
                    featurizer.featurize(imp, out);
                }
                black_box(&outs);
            })
        });
        let id = format!("simd_{}", simd.name());
        group.bench_with_input(BenchmarkId::new(id, name), &imps, |b, imps| {
            b.iter(|| {
                for (imp, out) in black_box(imps).iter().zip(&mut outs) {
                    featurizer.featurize_simd(imp, out);
                }
                black_box(&outs);
            })
        });
    }
    group.finish();
}

/// A key of the hashing bench's events: field name, top-level or `ctx`, value of event `i`.
type KeyField = (&'static str, bool, fn(usize) -> String);

/// The keys of the 16-feature event of `wide_event`, in its order, then 12 more `ctx` fields
/// for the 32-feature layout (one a 24-byte value, which takes the scalar hash).
const KEYS: [KeyField; 24] = [
    ("user", true, |i| {
        format!("u{}", 1_000_000 + (i * 7919) % 9_000_000)
    }),
    ("item", true, |i| format!("v{}", (i * 104_729) % 10_000)),
    ("device", false, |i| DEVICES[i % 4].to_owned()),
    ("country", false, |i| COUNTRIES[i % 5].to_owned()),
    ("position", false, |i| (i % 10).to_string()),
    ("hour", false, |i| (i % 24).to_string()),
    ("category", false, |i| CATEGORIES[i % 4].to_owned()),
    ("os", false, |i| format!("14.{}", i % 3)),
    ("lang", false, |_| "de-DE".to_owned()),
    ("network", false, |_| "wifi".to_owned()),
    ("app", false, |_| "player".to_owned()),
    ("page", false, |_| "home".to_owned()),
    ("model", false, |i| format!("sm-g9{}", i % 100)),
    ("carrier", false, |i| {
        ["orange", "t-mobile", "play"][i % 3].to_owned()
    }),
    ("region", false, |i| format!("r{}", i % 17)),
    ("city", false, |i| {
        ["warsaw", "berlin", "paris", "austin"][i % 4].to_owned()
    }),
    ("slot", false, |i| (i % 6).to_string()),
    ("campaign", false, |i| format!("cmp-{}", (i * 31) % 5000)),
    ("creative", false, |i| format!("cr{}", (i * 17) % 90_000)),
    ("ua", false, |i| format!("mozilla/5.0 (linux; {})", i % 10)),
    ("theme", false, |i| ["dark", "light"][i % 2].to_owned()),
    ("day", false, |i| (i % 7).to_string()),
    ("plan", false, |i| {
        ["free", "premium", "family"][i % 3].to_owned()
    }),
    ("referrer", false, |i| {
        ["search", "push", "email", "direct"][i % 4].to_owned()
    }),
];

/// A layout of the hashing bench: name, number of leading [`KEYS`], crosses by key position.
type Layout = (&'static str, usize, &'static [(usize, usize)]);

const LAYOUTS: [Layout; 5] = [
    ("4", 3, &[]),
    ("8", 5, &[(0, 4), (1, 2)]),
    ("contract_11", 7, &[(0, 6), (1, 2), (4, 2)]),
    ("16", 12, &[(0, 6), (1, 2), (4, 2)]),
    (
        "32",
        24,
        &[(0, 6), (1, 2), (4, 2), (3, 6), (7, 2), (8, 3), (10, 11)],
    ),
];

/// The reference: `hash_scalar` per key, `cross_mix` per cross, event by event.
fn reference(
    seeds: &[u32],
    crosses: &[CrossPair],
    mask: u32,
    keys: &[&[u8]],
    hashes: &mut [u32],
    out: &mut [u32],
) {
    let width = seeds.len() + crosses.len();
    for (keys, out) in keys
        .chunks_exact(seeds.len())
        .zip(out.chunks_exact_mut(width))
    {
        for (((h, o), key), &seed) in hashes.iter_mut().zip(&mut *out).zip(keys).zip(seeds) {
            *h = hash_scalar(seed, key);
            *o = *h & mask;
        }
        for (o, c) in out[seeds.len()..].iter_mut().zip(crosses) {
            *o = cross_mix(c.seed, hashes[c.a], hashes[c.b]) & mask;
        }
    }
}

fn hash(c: &mut Criterion) {
    let bits = u32::from(FeatureConfig::default().bits);
    let mask = u32::MAX >> (32 - bits);
    let simd = Backend::detect();
    let mut group = c.benchmark_group("hash");
    for (name, fields, pairs) in LAYOUTS {
        let layout = &KEYS[..fields];
        let seeds: Vec<u32> = layout
            .iter()
            .map(|&(field, top, _)| {
                if top {
                    top_seed(field)
                } else {
                    ctx_seed(field)
                }
            })
            .collect();
        let crosses: Vec<CrossPair> = pairs
            .iter()
            .map(|&(a, b)| CrossPair {
                seed: cross_seed(seeds[a], seeds[b]),
                a,
                b,
            })
            .collect();
        let values: Vec<String> = (0..EVENTS)
            .flat_map(|i| layout.iter().map(move |(_, _, value)| value(i)))
            .collect();
        let keys: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let width = fields + crosses.len();
        let (mut want, mut hashes) = (vec![0; EVENTS * width], vec![0; fields]);
        reference(&seeds, &crosses, mask, &keys, &mut hashes, &mut want);

        group.throughput(Throughput::Elements(EVENTS as u64));
        let mut out = vec![0; EVENTS * width];
        group.bench_with_input(BenchmarkId::new("scalar", name), &keys, |b, keys| {
            b.iter(|| {
                reference(
                    &seeds,
                    &crosses,
                    mask,
                    black_box(keys),
                    &mut hashes,
                    &mut out,
                );
                black_box(&out);
            })
        });
        for backend in Backend::available().filter(|b| b.is_simd()) {
            let mut hasher = BatchHasher::new(backend, &seeds, &crosses, bits);
            if name == "16" {
                eprintln!("{}: {} events per vector", backend.name(), hasher.lanes());
            }
            let mut got = vec![0; EVENTS * width];
            hasher.hash(&keys, &mut got);
            assert_eq!(
                got,
                want,
                "{name}: {} differs from the reference",
                backend.name()
            );
            let id = format!("simd_{}", backend.name());
            group.bench_with_input(BenchmarkId::new(id, name), &keys, |b, keys| {
                b.iter(|| {
                    hasher.hash(black_box(keys), &mut got);
                    black_box(&got);
                })
            });
        }
        // The eight-lane AVX-512 path where the sixteen-lane one runs, to compare them.
        if simd.is_avx512() && BatchHasher::new(simd, &seeds, &crosses, bits).lanes() == 16 {
            let mut hasher = BatchHasher::new(simd, &seeds, &crosses, bits).eight_lanes();
            let mut got = vec![0; EVENTS * width];
            hasher.hash(&keys, &mut got);
            assert_eq!(got, want, "{name}: avx512x8 differs from the reference");
            group.bench_with_input(BenchmarkId::new("simd_avx512x8", name), &keys, |b, keys| {
                b.iter(|| {
                    hasher.hash(black_box(keys), &mut got);
                    black_box(&got);
                })
            });
        }
        // The AVX2 kernel on keys already laid out by column (every SIMD backend has it).
        if simd.is_simd() {
            let mut hasher = BatchHasher::new(simd, &seeds, &crosses, bits);
            let mut got = vec![0; EVENTS * width];
            let laid = hasher.lay(&keys[..8 * fields]);
            assert_eq!(laid, 8);
            hasher.hash_laid(&mut got[..8 * width]);
            assert_eq!(got[..8 * width], want[..8 * width]);
            group.bench_function(BenchmarkId::new("kernel_avx2", name), |b| {
                b.iter(|| {
                    for out in got.chunks_exact_mut(8 * width) {
                        hasher.hash_laid(black_box(out));
                    }
                    black_box(&got);
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = hash, featurize
}
criterion_main!(benches);
