//! Whole-pipeline throughput: `ctrflow replay` over a generated file, parsing, label join,
//! scoring and FTRL included, with 1 and 2 workers. Throughput is in impressions.
//!
//! Run: `cargo bench --bench replay`. The side-by-side against Vowpal Wabbit is
//! `bench/peers/run.sh`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::config::PipelineConfig;
use ctrflow::generator::{GenConfig, write_jsonl};
use ctrflow::replay::{ReplayOptions, run};

const IMPRESSIONS: u64 = 200_000;

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("events.jsonl");
    let file = std::fs::File::create(&input).expect("create input");
    let config = GenConfig {
        count: IMPRESSIONS,
        seed: 1,
        ..GenConfig::default()
    };
    write_jsonl(&config, std::io::BufWriter::new(file)).expect("generate");

    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(IMPRESSIONS));
    for workers in [1, 2] {
        let options = ReplayOptions {
            input: input.clone(),
            workers,
            config: PipelineConfig::default(),
            scores_out: None,
            dead_letters_out: None,
            examples_out: None,
            model_out: None,
            progress: false,
            baseline: None,
            metrics_out: None,
        };
        group.bench_function(format!("{workers}w"), |b| {
            b.iter(|| black_box(run(&options).expect("replay").examples));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = replay
}
criterion_main!(benches);
