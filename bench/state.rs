//! State throughput: entity feature reads and updates, and RocksDB tables by batch size.
//!
//! - `entity/enrich_record/{memory,rocksdb_cold}`: per impression, the dataflow's entity
//!   work — read the user, item and user×category counts as of its time (10 features) and
//!   record the impression, plus a click or fast skip for 1 in 10 — in batches of 1024
//!   with one batched read of cold entities per batch (`Enrich::prepare`). `memory`: every
//!   entity in the cache (100k users, 50k items); `rocksdb_cold`: a cache of 16k entries
//!   in front of RocksDB holding them all, so most reads go to RocksDB (`multi_get`).
//! - `entity/checkpoint`: writing the changed entities of 10k impressions to RocksDB.
//! - `rocksdb/multi_put/N`, `rocksdb/multi_get/N`: raw table writes (one atomic batch) and
//!   batched reads of N 48-byte values.
//!
//! Throughput is in impressions (or keys) per second. Run:
//!
//! ```text
//! cargo bench --bench state -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::entity::{EntityConfig, EntityStore, entities};
use ctrflow_dataflows::{Enrich, Entities, Features, Signal};
use ctrflow_state::rocks::RocksBackend;
use ctrflow_state::{Batch, StateConfig, StateStore, Table, TableId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 1024;

fn traffic(n: usize) -> Vec<Entities> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|_| {
            // Skewed like real traffic: a power law over 100k users and 50k items.
            let u = (100_000f64 * rng.random::<f64>().powi(3)) as u32;
            let i = (50_000f64 * rng.random::<f64>().powi(3)) as u32;
            entities(&format!("u{u}"), &format!("v{i}"), &format!("c{}", i % 20))
        })
        .collect()
}

fn drive(store: &EntityStore, traffic: &[Entities], t0: i64) {
    let mut handle = store.handle();
    let mut features = Features::new();
    for (b, batch) in traffic.chunks(BATCH).enumerate() {
        handle.prepare(batch);
        for (k, e) in batch.iter().enumerate() {
            let ts = t0 + ((b * BATCH + k) as i64) * 50;
            features.clear();
            handle.enrich(e, ts, &mut features);
            black_box(&features);
            handle.record(e, ts, Signal::Impression);
            match k % 10 {
                0 => handle.record(e, ts + 2000, Signal::Click),
                1 => handle.record(e, ts + 800, Signal::FastSkip),
                _ => {}
            }
        }
    }
}

fn rocks(dir: &std::path::Path) -> StateStore {
    let backend = RocksBackend::open(&dir.join("db"), &StateConfig::default()).unwrap();
    StateStore::new(Arc::new(backend))
}

fn entity(c: &mut Criterion) {
    let traffic = traffic(1 << 16);
    let mut group = c.benchmark_group("entity");
    group.throughput(Throughput::Elements(traffic.len() as u64));

    let memory = EntityStore::new(&EntityConfig::default(), 22, None);
    drive(&memory, &traffic, 0);
    group.bench_function("enrich_record/memory", |b| {
        b.iter(|| drive(&memory, &traffic, 1_000_000))
    });

    let dir = tempfile::tempdir().unwrap();
    let durable = rocks(dir.path());
    let warm = EntityStore::new(&EntityConfig::default(), 22, Some(durable.clone()));
    drive(&warm, &traffic, 0);
    let mut batch = Batch::new();
    warm.checkpoint_into(&mut batch, 0);
    durable.write(batch).unwrap();
    let cold = EntityStore::new(&EntityConfig::default(), 22, Some(durable.clone())).capped(16_384);
    group.bench_function("enrich_record/rocksdb_cold", |b| {
        b.iter(|| {
            drive(&cold, &traffic, 2_000_000);
            // Clean again, so entities stay evictable and reads keep going to RocksDB.
            cold.checkpoint_done();
        })
    });

    group.throughput(Throughput::Elements(10_000));
    group.bench_function("checkpoint", |b| {
        b.iter_batched(
            || {
                let store = EntityStore::new(&EntityConfig::default(), 22, Some(durable.clone()));
                drive(&store, &traffic[..10_000], 3_000_000);
                store
            },
            |store| {
                let mut batch = Batch::new();
                store.checkpoint_into(&mut batch, 3_000_000);
                durable.write(batch).unwrap();
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn rocksdb(c: &mut Criterion) {
    const TABLE: Table<u64, [u64; 6]> = Table::new(TableId::Operators);
    let dir = tempfile::tempdir().unwrap();
    let store = rocks(dir.path());
    let mut group = c.benchmark_group("rocksdb");
    let mut next = 0u64;
    for n in [1usize, 64, 1024] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("multi_put/{n}"), |b| {
            b.iter(|| {
                let mut batch = Batch::new();
                for _ in 0..n {
                    next += 1;
                    TABLE.put(&mut batch, &(next % 200_000), &[next; 6]);
                }
                store.backend().write(batch, false).unwrap();
            })
        });
        let keys: Vec<u64> = (0..n as u64).map(|k| k * 7919 % 200_000).collect();
        group.bench_function(format!("multi_get/{n}"), |b| {
            b.iter(|| black_box(TABLE.multi_get(&store, &keys).unwrap()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.2);
    targets = entity, rocksdb
}
criterion_main!(benches);
