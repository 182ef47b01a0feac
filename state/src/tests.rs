//! Behaviour shared by both backends, and checkpoint recovery on a real RocksDB.

use std::sync::Arc;

use crate::checkpoint::{Durable, FORMAT_VERSION, Manifest, Recovery};
use crate::config::StateConfig;
use crate::memory::MemoryBackend;
use crate::rocks::RocksBackend;
use crate::store::{Backend, Batch, StateStore};
use crate::table::{Table, TableId};

const USERS: Table<(u8, u64), (i64, f32)> = Table::new(TableId::Entities);

/// Puts an entity whose value carries its touch time.
fn put_user(batch: &mut Batch, key: (u8, u64), value: (i64, f32)) {
    USERS.put_touched(batch, &key, value.0, &value);
}
const OFFSETS: Table<i32, i64> = Table::new(TableId::Offsets);

fn backends(dir: &std::path::Path) -> Vec<StateStore> {
    let rocks = RocksBackend::open(&dir.join("db"), &StateConfig::default()).unwrap();
    vec![
        StateStore::new(Arc::new(MemoryBackend::default())),
        StateStore::new(Arc::new(rocks)),
    ]
}

/// An entity value: last-touched time first, as expiring tables require.
fn touched(ts: i64, x: f32) -> (i64, f32) {
    (ts, x)
}

#[test]
fn last_write_wins_delete_of_missing_is_noop_and_scans_are_ordered() {
    let dir = tempfile::tempdir().unwrap();
    for store in backends(dir.path()) {
        let mut batch = Batch::new();
        put_user(&mut batch, (1, 7), touched(1, 1.0));
        put_user(&mut batch, (1, 7), touched(2, 2.0));
        put_user(&mut batch, (1, 3), touched(3, 3.0));
        put_user(&mut batch, (2, 1), touched(4, 4.0));
        USERS.delete(&mut batch, &(9, 9));
        store.write(batch).unwrap();
        let got = USERS.multi_get(&store, &[(1, 7), (1, 3), (5, 5)]).unwrap();
        assert_eq!(got, vec![Some((2, 2.0)), Some((3, 3.0)), None], "{store:?}");
        let mut kind1 = Vec::new();
        USERS
            .scan(&store, &1u8, |k, v| {
                kind1.push((k, v));
                true
            })
            .unwrap();
        assert_eq!(kind1, vec![((1, 3), (3, 3.0)), ((1, 7), (2, 2.0))]);
        let mut batch = Batch::new();
        USERS.delete(&mut batch, &(1, 7));
        store.write(batch).unwrap();
        assert_eq!(USERS.get(&store, &(1, 7)).unwrap(), None);
    }
}

#[test]
fn counters_merge_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    for store in backends(dir.path()) {
        for delta in [5, 7, 30] {
            let mut batch = Batch::new();
            batch.add("events_total", delta);
            store.write(batch).unwrap();
        }
        assert_eq!(store.counter("events_total").unwrap(), 42);
        assert_eq!(store.counter("never").unwrap(), 0);
    }
}

#[test]
fn expired_entities_are_dropped_and_others_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rocks =
        Arc::new(RocksBackend::open(&dir.path().join("db"), &StateConfig::default()).unwrap());
    let memory = Arc::new(MemoryBackend::default());
    for backend in [
        rocks.clone() as Arc<dyn Backend>,
        memory.clone() as Arc<dyn Backend>,
    ] {
        let store = StateStore::new(Arc::clone(&backend));
        let mut batch = Batch::new();
        put_user(&mut batch, (1, 1), touched(100, 1.0));
        put_user(&mut batch, (1, 2), touched(5_000, 2.0));
        OFFSETS.put(&mut batch, &0, &1);
        store.write(batch).unwrap();
        backend.expire_before(1_000);
    }
    // RocksDB applies expiry when it compacts.
    rocks.compact_all();
    for store in [
        StateStore::new(rocks as Arc<dyn Backend>),
        StateStore::new(memory as Arc<dyn Backend>),
    ] {
        assert_eq!(USERS.get(&store, &(1, 1)).unwrap(), None, "expired");
        assert_eq!(USERS.get(&store, &(1, 2)).unwrap(), Some((5_000, 2.0)));
        assert_eq!(
            OFFSETS.get(&store, &0).unwrap(),
            Some(1),
            "offsets never expire"
        );
    }
}

fn manifest(epoch: u64) -> Manifest {
    Manifest {
        epoch,
        format: FORMAT_VERSION,
        watermark: epoch * 1000,
        workers: 1,
        model_version: epoch * 10,
        created_ms: 0,
    }
}

fn config(dir: &std::path::Path) -> StateConfig {
    StateConfig {
        dir: dir.to_path_buf(),
        ..StateConfig::default()
    }
}

fn commit_offset(durable: &Durable, epoch: u64) {
    let mut batch = Batch::new();
    OFFSETS.put(&mut batch, &0, &(epoch as i64 * 100));
    durable.commit(batch, &manifest(epoch)).unwrap();
}

#[test]
fn reopen_sees_the_last_checkpoint_and_keeps_copies() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let (durable, recovery) = Durable::open(&config).unwrap();
        assert_eq!(recovery, Recovery::Fresh);
        for epoch in 1..=4 {
            commit_offset(&durable, epoch);
        }
        let kept: Vec<u64> = durable
            .retained()
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(kept, vec![3, 4], "keep_checkpoints = 2");
    }
    let (durable, recovery) = Durable::open(&config).unwrap();
    assert_eq!(
        recovery,
        Recovery::Resumed {
            manifest: manifest(4),
            fell_back: None
        }
    );
    assert_eq!(OFFSETS.get(durable.store(), &0).unwrap(), Some(400));
}

#[test]
fn damaged_live_database_falls_back_to_the_newest_intact_copy() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let (durable, _) = Durable::open(&config).unwrap();
        for epoch in 1..=3 {
            commit_offset(&durable, epoch);
        }
    }
    // The live database's CURRENT file names no manifest: RocksDB cannot open it.
    std::fs::write(dir.path().join("db/CURRENT"), b"MANIFEST-999999\n").unwrap();
    // And the newest copy is damaged the same way: recovery must go one further back.
    let newest = dir.path().join("checkpoints").join(format!("{:020}", 3));
    std::fs::write(newest.join("CURRENT"), b"garbage\n").unwrap();
    let (durable, recovery) = Durable::open(&config).unwrap();
    let Recovery::Resumed {
        manifest: resumed,
        fell_back: Some(reason),
    } = recovery
    else {
        panic!("expected a fallback, got {recovery:?}");
    };
    assert_eq!(resumed, manifest(2));
    assert!(reason.contains("restored checkpoint 2"), "{reason}");
    assert!(reason.contains(&newest.display().to_string()), "{reason}");
    assert_eq!(OFFSETS.get(durable.store(), &0).unwrap(), Some(200));
    // The damaged database was moved aside, not deleted.
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("db.damaged-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn no_usable_checkpoint_refuses_to_start_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let (durable, _) = Durable::open(&config).unwrap();
        commit_offset(&durable, 1);
    }
    std::fs::write(dir.path().join("db/CURRENT"), b"garbage\n").unwrap();
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let err = Durable::open(&config).unwrap_err().to_string();
    assert!(err.contains("no usable checkpoint"), "{err}");
    assert!(err.contains("refusing to start from zero"), "{err}");
}

#[test]
fn data_without_a_manifest_is_not_mistaken_for_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let rocks = RocksBackend::open(&dir.path().join("db"), &config).unwrap();
        let store = StateStore::new(Arc::new(rocks));
        let mut batch = Batch::new();
        OFFSETS.put(&mut batch, &0, &5);
        store.write(batch).unwrap();
    }
    let err = Durable::open(&config).unwrap_err().to_string();
    assert!(err.contains("no checkpoint manifest"), "{err}");
}

#[test]
fn a_manifest_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let (durable, _) = Durable::open(&config).unwrap();
        let foreign = Manifest {
            format: FORMAT_VERSION + 1,
            ..manifest(1)
        };
        durable.commit(Batch::new(), &foreign).unwrap();
    }
    // Both the live database and its copy carry the foreign manifest.
    let err = Durable::open(&config).unwrap_err().to_string();
    assert!(
        err.contains(&format!("this build reads format {FORMAT_VERSION}")),
        "{err}"
    );
}
