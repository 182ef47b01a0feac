//! Feature hashing, scalar reference vs SIMD (AVX2 when the CPU has it), end to end on one
//! decoded event: the `Impression` with borrowed strings in, `Features` out.
//!
//! `featurize/*/{contract_12,wide_16}`: the whole featurizer (field lookup, transforms,
//! hashing, crosses) over 256 decoded impressions of one layout with varied values: the
//! contract's example event (11 features) and a 16-feature event. Throughput is in events;
//! decoding is not measured.
//! - `scalar`: `featurize_scalar`, the reference, per event;
//! - `featurize`: `featurize`, the pipeline's path (a plan per `ctx` layout, each key
//!   hashed from its words as it is laid), per event;
//! - `simd_<simd>`: `featurize_simd` with the detected backend (the same plans, the keys of
//!   the event hashed eight at a time in SIMD lanes), per event.
//!
//! Run: `cargo bench --bench hashing -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::event::{DEFAULT_MAX_EVENT_BYTES, Event, Impression, decode};
use ctrflow::features::{Backend, FeatureConfig, Featurizer};
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

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = featurize
}
criterion_main!(benches);
