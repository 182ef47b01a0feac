//! Feature hashing, scalar reference vs SIMD (AVX2 when the CPU has it).
//!
//! - `raw_hash/*/16x8`: hashing 16 keys of each of 8 events (128 keys of 1–12 bytes, the
//!   fields of the wide event below), nothing else. `scalar` runs the reference
//!   `hash_scalar` over the keys; `<simd>` hashes a [`KeyGrid`] already filled (one field
//!   of the 8 events per row); `<simd>+fill` also fills the grid from the keys.
//! - `batch_hash/*/N`: the per-event [`KeyBatch`] layout (keys of one event across lanes,
//!   transposed in registers), N keys of typical lengths.
//! - `featurize/*/{contract_12,wide_16}`: the whole featurizer (field lookup, transforms,
//!   hashing, crosses) over 256 decoded impressions of one layout with varied values: the
//!   contract's example event (11 features) and a 16-feature event. Throughput is in
//!   events; decoding is not measured.
//!   - `scalar`: `featurize_scalar`, the reference, per event;
//!   - `featurize`: `featurize`, per event (per-position field cache, scalar hashing);
//!   - `batch`: `featurize_batch` over the 256 events;
//!   - `batch_lanes_<simd>`: `featurize_batch_lanes`, 8 events per SIMD group.
//!
//! Run: `cargo bench --bench hashing -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `featurize` to run one group).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::event::{DEFAULT_MAX_EVENT_BYTES, Event, Impression, decode};
use ctrflow::features::{
    Backend, FeatureConfig, Featurizer, KeyBatch, KeyGrid, hash_batch, hash_batch_scalar,
    hash_grid, hash_scalar,
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

/// Keys of the lengths an event carries (3–12 bytes): ids, short codes, numbers as text.
fn typical_batch(n: usize) -> KeyBatch {
    let keys = [
        "u42",
        "v9001",
        "ios",
        "music",
        "android",
        "user-8812",
        "item-55012",
        "de-DE",
        "wifi",
        "sports",
        "category1",
        "us-east-1xyz",
        "premium",
        "imp-81723",
        "123",
        "news",
    ];
    let mut batch = KeyBatch::new();
    for i in 0..n {
        let key = keys[i % keys.len()];
        batch.push(0x9e37_79b9_u32.wrapping_mul(i as u32 + 1), key.as_bytes());
    }
    batch
}

/// `keys[k][e]`: field `k` of event `e` (16 fields of 8 wide events), with one seed per
/// field.
fn wide_keys() -> Vec<(u32, Vec<Vec<u8>>)> {
    let fields: [&dyn Fn(usize) -> String; 16] = [
        &|i| format!("u{}", 1_000_000 + (i * 7919) % 9_000_000),
        &|i| format!("v{}", (i * 104_729) % 10_000),
        &|i| DEVICES[i % 4].to_owned(),
        &|i| COUNTRIES[i % 5].to_owned(),
        &|i| (i % 10).to_string(),
        &|i| (i % 24).to_string(),
        &|i| CATEGORIES[i % 4].to_owned(),
        &|i| format!("14.{}", i % 3),
        &|_| "de-DE".to_owned(),
        &|_| "wifi".to_owned(),
        &|_| "player".to_owned(),
        &|_| "home".to_owned(),
        &|i| format!("session-{i}"),
        &|i| format!("imp-{}", 81_723 + i),
        &|i| format!("{}", 1_763_800 + i),
        &|i| ["premium", "free"][i % 2].to_owned(),
    ];
    fields
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let seed = 0x9e37_79b9_u32.wrapping_mul(k as u32 + 1);
            (seed, (0..8).map(|e| f(e).into_bytes()).collect())
        })
        .collect()
}

fn fill(grid: &mut KeyGrid, keys: &[(u32, Vec<Vec<u8>>)]) {
    grid.clear();
    for (k, (seed, events)) in keys.iter().enumerate() {
        for (e, key) in events.iter().enumerate() {
            grid.set(k * 8 + e, *seed, key);
        }
    }
}

fn raw_hash(c: &mut Criterion) {
    let simd = Backend::detect();
    let keys = wide_keys();
    let mut group = c.benchmark_group("raw_hash");
    group.throughput(Throughput::Elements(16 * 8));
    let mut out = Vec::with_capacity(16 * 8);
    group.bench_function(BenchmarkId::new("scalar", "16x8"), |b| {
        b.iter(|| {
            out.clear();
            for (seed, events) in black_box(&keys) {
                for key in events {
                    out.push(hash_scalar(*seed, key));
                }
            }
            black_box(&out);
        })
    });
    let mut grid = KeyGrid::new();
    fill(&mut grid, &keys);
    group.bench_function(BenchmarkId::new(simd.name(), "16x8"), |b| {
        b.iter(|| {
            hash_grid(simd, black_box(&grid), &mut out);
            black_box(&out);
        })
    });
    group.bench_function(
        BenchmarkId::new(format!("{}+fill", simd.name()), "16x8"),
        |b| {
            b.iter(|| {
                fill(&mut grid, black_box(&keys));
                hash_grid(simd, &grid, &mut out);
                black_box(&out);
            })
        },
    );
    group.finish();
}

fn batch_hash(c: &mut Criterion) {
    let simd = Backend::detect();
    let mut group = c.benchmark_group("batch_hash");
    for n in [8usize, 16] {
        let batch = typical_batch(n);
        let mut out = Vec::with_capacity(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("scalar", n), &batch, |b, batch| {
            b.iter(|| {
                hash_batch_scalar(black_box(batch), &mut out);
                black_box(&out);
            })
        });
        group.bench_with_input(BenchmarkId::new(simd.name(), n), &batch, |b, batch| {
            b.iter(|| {
                hash_batch(simd, black_box(batch), &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
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
        featurizer.featurize_batch_lanes(&imps, &mut outs);
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
        group.bench_with_input(BenchmarkId::new("batch", name), &imps, |b, imps| {
            b.iter(|| {
                featurizer.featurize_batch(black_box(imps), &mut outs);
                black_box(&outs);
            })
        });
        let lanes = format!("batch_lanes_{}", simd.name());
        group.bench_with_input(BenchmarkId::new(lanes, name), &imps, |b, imps| {
            b.iter(|| {
                featurizer.featurize_batch_lanes(black_box(imps), &mut outs);
                black_box(&outs);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = raw_hash, batch_hash, featurize
}
criterion_main!(benches);
