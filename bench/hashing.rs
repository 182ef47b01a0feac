//! Feature hashing, scalar reference vs SIMD (AVX2 when the CPU has it).
//!
//! Isolates two things:
//! - `batch_hash/{scalar,simd}/N`: hashing a prepared [`KeyBatch`] of N keys of typical
//!   lengths (3–12 bytes), nothing else;
//! - `featurize/{scalar,simd}/{contract_12,wide_16}`: the whole featurizer on a decoded
//!   impression (field lookup, transforms, hashing, crosses), on the contract's example
//!   event (11 features) and on a 16-feature event. Decoding is not measured.
//!
//! Run: `cargo bench --bench hashing -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `batch_hash` to run one group).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::event::{DEFAULT_MAX_EVENT_BYTES, Event, Impression, decode};
use ctrflow::features::{
    Backend, FeatureConfig, Featurizer, KeyBatch, hash_batch, hash_batch_scalar,
};
use ctrflow_dataflows::Features;

const CONTRACT_EVENT: &str = r#"{"type":"impression","id":"imp-81723","ts":1763800000123,"user":"u42","item":"v9001","ctx":{"device":"ios","country":"PL","position":3,"hour":13,"category":"music"}}"#;

/// 16 features with the default config: bias, user, item, 10 ctx fields, 3 crosses.
const WIDE_EVENT: &str = r#"{"type":"impression","id":"imp-81724","ts":1763800000456,"user":"u1234567","item":"v9001","ctx":{"device":"android","country":"DE","position":7,"hour":21,"category":"sports","os":"14.2","lang":"de-DE","network":"wifi","app":"player","page":"home"}}"#;

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

fn impression(json: &str) -> Impression<'_> {
    match decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES) {
        Ok(Event::Impression(imp)) => imp,
        other => panic!("bench event is not an impression: {other:?}"),
    }
}

fn batch_hash(c: &mut Criterion) {
    let simd = Backend::detect();
    let mut group = c.benchmark_group("batch_hash");
    for n in [4usize, 8, 16, 32] {
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
    let mut featurizer = Featurizer::new(&config).expect("default config is valid");
    let backend = featurizer.backend().name();
    let mut group = c.benchmark_group("featurize");
    for (name, json) in [("contract_12", CONTRACT_EVENT), ("wide_16", WIDE_EVENT)] {
        let imp = impression(json);
        let mut out = Features::new();
        featurizer.featurize(&imp, &mut out);
        group.throughput(Throughput::Elements(out.len() as u64));
        group.bench_with_input(BenchmarkId::new("scalar", name), &imp, |b, imp| {
            b.iter(|| {
                featurizer.featurize_scalar(black_box(imp), &mut out);
                black_box(&out);
            })
        });
        group.bench_with_input(BenchmarkId::new(backend, name), &imp, |b, imp| {
            b.iter(|| {
                featurizer.featurize(black_box(imp), &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = batch_hash, featurize
}
criterion_main!(benches);
