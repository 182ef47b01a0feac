//! Per-example cost of the online model and of progressive validation, in isolation: no
//! dataflow, no hashing, no I/O, one thread.
//!
//! - `model/ftrl_predict_update/{uniform,skewed}`: `FtrlHandle::predict_and_update` on
//!   15-feature examples with `bits = 22` (a 32 MiB table). `uniform` draws indices uniformly
//!   over the 2^22 coordinates (every access a likely cache miss: the worst case); `skewed`
//!   draws them from a power law, as hashed categorical features are in practice.
//! - `model/ftrl_predict/uniform`: scoring alone.
//! - `model/sgd_predict_update/uniform`: the SGD baseline on the same examples.
//! - `progressive/observe`: one `Progressive::observe` (overall + window).
//!
//! Throughput is in examples per second. Run:
//!
//! ```text
//! cargo bench --bench ftrl -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::model::{FtrlModel, ModelConfig, Optimizer, SgdModel};
use ctrflow::progressive::Progressive;
use ctrflow_dataflows::Learner;
use ctrflow_dataflows::record::Feature;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BITS: u8 = 22;
const FEATURES: usize = 15;
/// Distinct examples cycled through; a power of two so the index is a mask.
const EXAMPLES: usize = 1 << 16;

fn examples(skewed: bool) -> Vec<(Vec<Feature>, bool)> {
    let mut rng = StdRng::seed_from_u64(42);
    let space = 1u32 << BITS;
    (0..EXAMPLES)
        .map(|_| {
            let x = (0..FEATURES)
                .map(|k| {
                    let index = if skewed {
                        // Power law over ranks, scattered over the table by a multiplicative hash.
                        let rank = (rng.random::<f64>().powi(4) * f64::from(space)) as u32;
                        rank.wrapping_mul(2_654_435_761) >> (32 - BITS)
                    } else {
                        rng.random_range(0..space)
                    };
                    let value = if k == FEATURES - 1 {
                        rng.random_range(0.0..3.0)
                    } else {
                        1.0
                    };
                    Feature { index, value }
                })
                .collect();
            (x, rng.random_bool(0.04))
        })
        .collect()
}

fn config(optimizer: Optimizer) -> ModelConfig {
    ModelConfig {
        optimizer,
        bits: BITS,
        ..ModelConfig::default()
    }
}

fn model(c: &mut Criterion) {
    let mut group = c.benchmark_group("model");
    group.throughput(Throughput::Elements(1));
    for (name, skewed) in [("uniform", false), ("skewed", true)] {
        let data = examples(skewed);
        let ftrl = FtrlModel::new(&config(Optimizer::Ftrl)).expect("valid config");
        let mut h = ftrl.handle();
        let mut i = 0usize;
        group.bench_function(format!("ftrl_predict_update/{name}"), |b| {
            b.iter(|| {
                let (x, y) = &data[i & (EXAMPLES - 1)];
                i = i.wrapping_add(1);
                black_box(h.predict_and_update(black_box(x), *y))
            })
        });
        if !skewed {
            group.bench_function("ftrl_predict/uniform", |b| {
                b.iter(|| {
                    let (x, _) = &data[i & (EXAMPLES - 1)];
                    i = i.wrapping_add(1);
                    black_box(h.predict(black_box(x)))
                })
            });
            let sgd = SgdModel::new(&config(Optimizer::Sgd)).expect("valid config");
            let mut h = sgd.handle();
            group.bench_function("sgd_predict_update/uniform", |b| {
                b.iter(|| {
                    let (x, y) = &data[i & (EXAMPLES - 1)];
                    i = i.wrapping_add(1);
                    black_box(h.predict_and_update(black_box(x), *y))
                })
            });
        }
    }
    group.finish();
}

fn progressive(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let stream: Vec<(f32, bool)> = (0..EXAMPLES)
        .map(|_| {
            let p = rng.random::<f32>() * 0.1;
            (p, rng.random_bool(f64::from(p)))
        })
        .collect();
    let mut metrics = Progressive::new();
    let mut i = 0usize;
    let mut group = c.benchmark_group("progressive");
    group.throughput(Throughput::Elements(1));
    group.bench_function("observe", |b| {
        b.iter(|| {
            let (p, y) = stream[i & (EXAMPLES - 1)];
            i = i.wrapping_add(1);
            metrics.observe(black_box(p), y, None);
        })
    });
    group.finish();
    black_box(metrics.summary());
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.20);
    targets = model, progressive
}
criterion_main!(benches);
