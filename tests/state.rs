//! Durable state: entity features are point-in-time correct (an impression never sees its
//! own feedback), and a worker killed with SIGKILL over and over ends exactly where an
//! uninterrupted one does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctrflow::config::PipelineConfig;
use ctrflow::entity::{self, EntityStore};
use ctrflow::model::Model;
use ctrflow::pipeline::{self, Ingest};
use ctrflow_dataflows::Example;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kafka_util::{
    Committed, Topics, WorkerProcess, consume, generate_into, json, unique, wait_committed,
};
use crate::util::{ctrflow, run_ok};

#[test]
fn gh_4_an_impression_is_scored_and_trained_without_its_own_feedback() {
    const T0: i64 = 1_763_800_000_000;
    let lines = [
        format!(
            r#"{{"type":"impression","id":"a","ts":{T0},"user":"u1","item":"i1","ctx":{{"category":"music","device":"ios"}}}}"#
        ),
        format!(r#"{{"type":"click","id":"a","ts":{}}}"#, T0 + 1_000),
        format!(
            r#"{{"type":"impression","id":"b","ts":{},"user":"u1","item":"i2","ctx":{{"category":"music","device":"ios"}}}}"#,
            T0 + 5_000
        ),
        format!(r#"{{"type":"click","id":"b","ts":{}}}"#, T0 + 6_000),
        format!(
            r#"{{"type":"skip","id":"b","ts":{},"dwell_ms":300}}"#,
            T0 + 6_500
        ),
        format!(
            r#"{{"type":"impression","id":"c","ts":{},"user":"u1","item":"i3","ctx":{{"category":"news","device":"ios"}}}}"#,
            T0 + 9_000
        ),
    ];
    let examples: Arc<Mutex<Vec<Example>>> = Arc::default();
    let captured = Arc::clone(&examples);
    timely::execute_directly(move |worker| {
        let config = PipelineConfig::default();
        let model = Model::from_config(&config.model).unwrap();
        let entities = EntityStore::new(&config.features.entity, config.features.bits, None);
        let captured = Arc::clone(&captured);
        let on_examples: pipeline::OnExamples =
            Box::new(move |batch| captured.lock().unwrap().extend(batch.iter().cloned()));
        let context = pipeline::Context {
            entities: Some(&entities),
            restored: None,
            timeline: None,
            response: None,
        };
        let mut dataflow =
            pipeline::build(worker, &config, &model, context, |_| {}, Some(on_examples));
        let mut ingest = Ingest::new(&config).unwrap();
        for (pos, line) in lines.iter().enumerate() {
            ingest
                .send(line.as_bytes(), pos as u64, &mut dataflow)
                .unwrap();
        }
        // Past every attribution window: every impression gets its label.
        let end = (T0 + 3_600_000) as u64;
        dataflow.advance_to(end);
        while dataflow.probe.less_than(&end) {
            worker.step();
        }
    });
    let examples = examples.lock().unwrap();
    let bits = PipelineConfig::default().features.bits;
    let feature = |id: &str, name: &str| {
        let index = entity::feature_index(name, bits);
        let e = examples
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no example {id}"));
        e.features
            .iter()
            .find(|f| f.index == index)
            .map(|f| f.value)
            .unwrap()
    };
    // a: nothing before it. Its own click (1 s later, same batch) must not be in it.
    assert_eq!(feature("a", "user.ctr_short"), 0.0);
    assert_eq!(feature("a", "user.fast_skip_rate"), 0.0);
    let never = feature("a", "user.log_secs_since_click");
    // b: a's impression and click (4 s before b), not b's own click or fast skip.
    assert!(feature("b", "user.ctr_short") > 0.0);
    assert_eq!(
        feature("b", "user.fast_skip_rate"),
        0.0,
        "b's own fast skip leaked"
    );
    assert!((feature("b", "user.log_secs_since_click") - 4f32.ln_1p()).abs() < 1e-4);
    assert!(never > 10.0, "never clicked reads as long ago: {never}");
    // c: sees b's click (3 s before) and fast skip, in another category.
    assert!((feature("c", "user.log_secs_since_click") - 3f32.ln_1p()).abs() < 1e-4);
    assert!(feature("c", "user.fast_skip_rate") > 0.0);
    assert_eq!(
        feature("c", "user_category.ctr_short"),
        0.0,
        "news is a new category for u1"
    );
    assert!(feature("c", "user.ctr_short") > feature("b", "user.ctr_short"));
}

/// Topics of one run that reads `events`.
fn topics_reading(events: &str) -> Topics {
    Topics {
        events: events.to_owned(),
        scores: unique("scores"),
        dead_letters: unique("dead"),
        examples: String::new(),
        alerts: String::new(),
    }
}

/// The epoch of the newest retained checkpoint copy in `state`.
fn newest_copy(state: &Path) -> Option<u64> {
    std::fs::read_dir(state.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
}

fn inspect(state: &Path) -> serde_json::Value {
    let output = run_ok(ctrflow().args(["inspect", "--json", "--state"]).arg(state));
    serde_json::from_slice(&output.stdout).expect("inspect prints one JSON object")
}

/// The scores of `topic` by impression id; with `identical`, a score written more than
/// once (re-emitted after a restart) must be identical but for `emit_ts`.
fn scores_by_id(
    brokers: &str,
    topic: &str,
    impressions: u64,
    identical: bool,
) -> HashMap<String, serde_json::Value> {
    // Reading stops 2 s after `impressions` messages. A producer retry can write a score
    // twice, and duplicates may fill that count before every id came: then read again,
    // waiting longer (seen with 316k scores on tansu: 285k ids in the first read).
    let read = |grace| {
        json(&consume(
            brokers,
            topic,
            impressions as usize,
            Duration::from_secs(120),
            Duration::from_secs(grace),
        ))
    };
    let mut all = read(2);
    let distinct = |all: &[serde_json::Value]| {
        (all.iter())
            .map(|s| s["id"].as_str().unwrap_or_default())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    if (distinct(&all) as u64) < impressions {
        all = read(15);
    }
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    for mut s in all {
        s.as_object_mut().unwrap().remove("emit_ts");
        let id = s["id"].as_str().unwrap().to_owned();
        if let Some(first) = by_id.get(&id) {
            if identical {
                assert_eq!(first, &s, "{id} scored twice, differently");
            }
        } else {
            by_id.insert(id, s);
        }
    }
    by_id
}

/// Starts a worker on `state` and waits (until `deadline`) for a checkpoint of its own:
/// then it runs, with its signal handlers installed.
fn start_checkpointed(
    dir: &Path,
    config: &str,
    workers: usize,
    state: &Path,
    deadline: std::time::Instant,
) -> WorkerProcess {
    let before = newest_copy(state);
    let mut worker = WorkerProcess::start(dir, config, workers);
    while newest_copy(state) <= before {
        assert!(worker.is_running(), "the worker exited by itself");
        assert!(std::time::Instant::now() < deadline, "no checkpoint taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    worker
}

/// Creates topics (name, partitions) on the broker under test.
pub type CreateTopics<'a> = dyn Fn(&[(&str, i32)]) + 'a;

/// How a kill -9 scenario runs.
pub struct Scenario {
    /// Impressions generated (feedback comes in addition: ~1.58 events per impression).
    pub impressions: u64,
    /// Partitions of the events topic.
    pub partitions: i32,
    /// Timely workers of each process.
    pub workers: usize,
    /// Times the worker is killed.
    pub kills: usize,
    /// How long after a restart's first checkpoint the kill comes (random in this range).
    pub kill_after_ms: std::ops::Range<u64>,
    /// `state.checkpoint_interval_ms` of the workers.
    pub checkpoint_interval_ms: u64,
    /// Turn on the global aggregates and compare them.
    pub aggregates: bool,
    /// `label.pending_memory_mb` of the workers: small enough, and pending impressions
    /// leave memory between checkpoints and must come back exactly across the kills.
    pub pending_memory_mb: u64,
    /// `label.pending_stubs_memory_mb` of the workers: small enough, and chunks of stubs
    /// leave memory too, and a restart leaves them in the store.
    pub pending_stubs_memory_mb: u64,
    /// `label.window_ms` of the workers, if not the default.
    pub window_ms: Option<u64>,
    /// Entity features on (they cost most of a debug build's time).
    pub entity_features: bool,
    /// Kill `k` of `n` (from 1) only once `k / (n + 2)` of the events are checkpointed:
    /// every restart then starts from further into the stream, and the last with a good
    /// share of it still to read, whatever the machine's speed.
    pub spread_kills: bool,
    /// `label.score_on = "arrival"`: scores depend on timing, so scores re-emitted after a
    /// restart may differ from the first ones (and from the uninterrupted run's); what is
    /// learned does not, without entity features (features as of arrival would).
    pub score_on_arrival: bool,
}

/// The kill -9 scenario on `brokers`: impressions generated into a fresh topic (created by
/// `create`), read once by an uninterrupted worker and once by a worker killed at random
/// moments and restarted each time; every impression has its score, and both end with the
/// same state: bit-identical with one worker (processing order is then a function of the
/// input), the same counts with more (workers share the model lock-free, so their
/// interleaving is not reproducible).
pub fn killed_worker_ends_like_an_uninterrupted_one(
    brokers: &str,
    create: &CreateTopics<'_>,
    scenario: &Scenario,
) {
    let Scenario {
        impressions,
        partitions,
        workers,
        kills,
        kill_after_ms,
        checkpoint_interval_ms,
        aggregates,
        pending_memory_mb,
        pending_stubs_memory_mb,
        window_ms,
        entity_features,
        spread_kills,
        score_on_arrival,
    } = scenario;
    let (impressions, partitions, workers, kills, aggregates, pending_memory_mb) = (
        *impressions,
        *partitions,
        *workers,
        *kills,
        *aggregates,
        *pending_memory_mb,
    );
    let exact = workers == 1;
    let events = unique("events");
    let (a, b) = (topics_reading(&events), topics_reading(&events));
    create(&[
        (&events, partitions),
        (&a.scores, partitions),
        (&a.dead_letters, 1),
        (&b.scores, partitions),
        (&b.dead_letters, 1),
    ]);
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    let generated = generate_into(brokers, &events, impressions, 17, None);
    phase("produced");
    let dir = tempfile::tempdir().unwrap();
    let mut window = window_ms.map_or(String::new(), |w| format!("window_ms = {w}\n"));
    if *score_on_arrival {
        window.push_str("score_on = \"arrival\"\n");
    }
    let config = |topics: &Topics, group: &str, state: &Path| {
        let extra = format!(
            "[state]\ndir = {:?}\ncheckpoint_interval_ms = {checkpoint_interval_ms}\n\
             [aggregates]\nenabled = {aggregates}\n\
             [features.entity]\nenabled = {entity_features}\n\
             [label]\npending_memory_mb = {pending_memory_mb}\n\
             pending_stubs_memory_mb = {pending_stubs_memory_mb}\n{window}",
            state.display().to_string()
        );
        topics.config_with_group(brokers, group, &extra)
    };
    // A guard against a hang, not a speed bound: a debug worker on a machine loaded by
    // parallel builds took over 600 s for the 500k stream (5 minutes when quiet).
    let timeout = Duration::from_secs(1500);

    // Uninterrupted.
    let (state_a, group_a) = (dir.path().join("state-a"), unique("group"));
    let worker = WorkerProcess::start(dir.path(), &config(&a, &group_a, &state_a), workers);
    wait_committed(brokers, &group_a, &events, timeout);
    let report = worker.stop();
    phase("uninterrupted run done");
    if pending_memory_mb < 4 {
        // The budget was at work: bodies left memory and came back.
        assert!(
            report["pending"]["read_back"].as_u64().unwrap() > 1000,
            "{}",
            report["pending"]
        );
    }
    let stubs_spill = *pending_stubs_memory_mb < 4;
    if stubs_spill {
        // Chunks of stubs left memory and came back.
        let p = &report["pending"];
        phase(&format!("uninterrupted: {p}"));
        assert!(
            p["chunks_spilled"].as_u64().unwrap() > 0
                && p["chunks_read_back"].as_u64().unwrap() > 0,
            "{p}"
        );
    }

    // Killed at random moments, restarted each time.
    let (state_b, group_b) = (dir.path().join("state-b"), unique("group"));
    let config_b = config(&b, &group_b, &state_b);
    let mut rng = StdRng::seed_from_u64(impressions);
    let mut epochs = Vec::new();
    let committed = spread_kills.then(|| Committed::new(brokers, &group_b, &events));
    for k in 0..kills {
        // Once this run has taken a checkpoint of its own, at a random moment after it.
        let deadline = std::time::Instant::now() + timeout;
        let mut worker = start_checkpointed(dir.path(), &config_b, workers, &state_b, deadline);
        let share = generated.events as i64 * (k as i64 + 1) / (kills as i64 + 2);
        while committed.as_ref().is_some_and(|c| c.total() < share) {
            assert!(worker.is_running(), "the worker exited by itself");
            assert!(
                std::time::Instant::now() < deadline,
                "{share} events not checkpointed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(
            rng.random_range(kill_after_ms.clone()),
        ));
        assert!(worker.is_running(), "the worker exited by itself");
        worker.kill9();
        phase("killed");
        epochs.push(inspect(&state_b)["checkpoint"]["epoch"].as_u64().unwrap());
    }
    // Told to stop only once it runs (a checkpoint of its own): the killed runs may have
    // read and committed everything already, and a SIGTERM before the worker installed its
    // handlers kills it (seen once: "exited signal: 15").
    let deadline = std::time::Instant::now() + timeout;
    let worker = start_checkpointed(dir.path(), &config_b, workers, &state_b, deadline);
    wait_committed(brokers, &group_b, &events, timeout);
    let report = worker.stop();
    phase("interrupted run done");
    if stubs_spill {
        // The last restart left chunks in the store (beyond its budget), and chunks came
        // back into memory.
        let p = &report["pending"];
        phase(&format!("after the last restart: {p}"));
        assert!(
            p["chunks_left_at_restore"].as_u64().unwrap() > 0
                && p["chunks_read_back"].as_u64().unwrap() > 0,
            "{p}"
        );
    }

    let (sa, sb) = (inspect(&state_a), inspect(&state_b));
    // Every restart resumed from a newer checkpoint than the one before.
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let same: &[&str] = if exact {
        &[
            "model",
            "entities",
            "entities_digest",
            "join",
            "pending_impressions",
            "awaiting_label",
            "buffered_records",
            "offsets",
            // The global aggregates' sliding window was restored and slid on exactly
            // (`null` in both when they are off).
            "aggregates",
        ]
    } else {
        &["offsets"]
    };
    for key in same {
        assert_eq!(sa[key], sb[key], "{key} differs:\n{sa:#}\n{sb:#}");
    }
    for s in [&sa, &sb] {
        assert_eq!(s["join"]["impressions"], generated.impressions, "{s}");
        assert_eq!(s["join"]["duplicate_impressions"], 0, "{s}");
        assert_eq!(
            s["model"]["version"], s["checkpoint"]["model_version"],
            "{s}"
        );
        assert!(s["model"]["nonzero_weights"].as_u64().unwrap() > 100, "{s}");
    }
    assert_eq!(sa["entities"], sb["entities"]);
    // `inspect` shows the global aggregates of the last checkpoint: the impressions of the
    // hour before its watermark. On a stream shorter than that, all of them (values on
    // longer streams are checked against a brute-force count in tests/replay.rs; here
    // the trailing feedback can move the watermark more than an hour past the last
    // impression, leaving the window empty).
    for s in [&sa, &sb].into_iter().filter(|_| aggregates) {
        let a = &s["aggregates"];
        let shown: u64 = a["category_ctr_1h"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["impressions"].as_u64().unwrap())
            .sum();
        assert!(shown <= generated.impressions, "{a}");
        assert_eq!(a["watermark"], s["checkpoint"]["watermark"], "{a}");
        if let Some((first, last)) = generated.ts_range
            && last - first < 3_600_000 - 60_000
        {
            // All but the last minute's impressions, counted from the next minute
            // boundary on.
            let per_minute = generated.impressions * 60_000 / (last - first).max(60_000) as u64;
            assert!(
                shown > 0 && shown + per_minute >= generated.impressions,
                "{a}"
            );
            assert_eq!(a["top_items_1h"].as_array().unwrap().len(), 10, "{a}");
        }
    }
    // Lifetime counters: the uninterrupted run read every event once; the killed one read
    // some again after each restart.
    assert_eq!(sa["counters"]["records_read"], generated.events, "{sa}");
    assert!(
        sb["counters"]["records_read"].as_u64().unwrap() >= generated.events,
        "{sb}"
    );

    phase("states compared");
    // Every impression scored; the killed run re-emitted some, identically, and each
    // score equals the uninterrupted run's.
    let same_scores = exact && !score_on_arrival;
    let scores_a = scores_by_id(brokers, &a.scores, generated.impressions, same_scores);
    let scores_b = scores_by_id(brokers, &b.scores, generated.impressions, same_scores);
    assert_eq!(scores_a.len() as u64, generated.impressions);
    assert_eq!(scores_b.len() as u64, generated.impressions);
    if same_scores {
        for (id, s) in &scores_a {
            assert_eq!(scores_b.get(id), Some(s), "{id}");
        }
    }
    phase("scores compared");
}

/// Creates topics (name, partitions) on the in-process `cluster`.
fn create_on_mock<'a, C: rdkafka::ClientContext>(
    cluster: &'a ctrflow_connectors::kafka::MockCluster<'_, C>,
) -> impl Fn(&[(&str, i32)]) + 'a {
    move |topics| {
        for (name, partitions) in topics {
            cluster.create_topic(name, *partitions, 1).unwrap();
        }
    }
}

#[test]
fn gh_4_killed_with_sigkill_the_worker_resumes_exactly_on_the_mock_broker() {
    let cluster = ctrflow_connectors::kafka::MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let create = create_on_mock(&cluster);
    for workers in [1, 2] {
        let scenario = Scenario {
            impressions: 6_000,
            partitions: 2,
            workers,
            kills: 3,
            kill_after_ms: 0..600,
            checkpoint_interval_ms: 200,
            aggregates: true,
            pending_memory_mb: 1024,
            pending_stubs_memory_mb: 1024,
            window_ms: None,
            entity_features: true,
            spread_kills: false,
            score_on_arrival: false,
        };
        killed_worker_ends_like_an_uninterrupted_one(&brokers, &create, &scenario);
    }
}

/// Scored on arrival, the scores depend on timing but nothing else may: killed and
/// restarted, the worker still ends with the uninterrupted one's model, join and offsets,
/// bit for bit (one worker, entity features off).
#[test]
fn gh_4_killed_with_sigkill_scoring_on_arrival_the_worker_learns_exactly() {
    let cluster = ctrflow_connectors::kafka::MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let create = create_on_mock(&cluster);
    let scenario = Scenario {
        impressions: 6_000,
        partitions: 2,
        workers: 1,
        kills: 3,
        kill_after_ms: 0..600,
        checkpoint_interval_ms: 200,
        aggregates: true,
        pending_memory_mb: 1024,
        pending_stubs_memory_mb: 1024,
        window_ms: None,
        entity_features: false,
        spread_kills: false,
        score_on_arrival: true,
    };
    killed_worker_ends_like_an_uninterrupted_one(&brokers, &create, &scenario);
}

/// The issue's scenario (gh-4) against the real broker: a 500k-event stream (316k
/// impressions), the worker killed at 5 random moments.
#[cfg(feature = "kafka-it")]
#[test]
fn gh_4_killed_five_times_in_a_500k_event_stream_the_worker_resumes_exactly() {
    let brokers =
        std::env::var("CTRFLOW_TEST_BROKER").expect("CTRFLOW_TEST_BROKER: see tests/run.sh");
    let create = |topics: &[(&str, i32)]| crate::kafka_util::create_topics(&brokers, topics);
    let scenario = Scenario {
        impressions: 316_000,
        partitions: 2,
        workers: 1,
        kills: 5,
        kill_after_ms: 3_000..30_000,
        checkpoint_interval_ms: 1_000,
        // Their 1 h window slides across the restarts (the stream spans ~4.7 h).
        aggregates: true,
        // About 4,000 bodies in memory, of ~28,000 impressions awaiting their label.
        pending_memory_mb: 1,
        // The default: stubs stay in memory (`…_with_stubs_out_of_memory` below spills them).
        pending_stubs_memory_mb: 1024,
        window_ms: None,
        entity_features: true,
        spread_kills: false,
        score_on_arrival: false,
    };
    killed_worker_ends_like_an_uninterrupted_one(&brokers, &create, &scenario);
}

/// The kill -9 scenario with chunks of stubs out of memory across the restarts: the
/// smallest budgets (about 12,000 stubs, under three chunks, and 4,000 bodies) and an
/// 18-minute window over 36,000 impressions (about 40 minutes of event time), so that up
/// to 7 chunks are pending, those beyond the budget leave memory, each restart leaves
/// some in the store, and the close cursor brings them back. Kills are spread over the
/// stream, so that the last restart is from a checkpoint with chunks out of memory.
#[cfg(feature = "kafka-it")]
#[test]
fn gh_4_killed_with_stubs_out_of_memory_the_worker_resumes_exactly() {
    let brokers =
        std::env::var("CTRFLOW_TEST_BROKER").expect("CTRFLOW_TEST_BROKER: see tests/run.sh");
    let create = |topics: &[(&str, i32)]| crate::kafka_util::create_topics(&brokers, topics);
    let scenario = Scenario {
        impressions: 36_000,
        // One: with two (the source's idleness no longer an obstacle since it was fixed,
        // `kafka::source::tests::a_partition_with_unread_messages_…`), its precondition —
        // chunks out of memory at the last restart — failed once in 4 runs beside the other
        // kill tests; with one it held in every CI run.
        partitions: 1,
        workers: 1,
        kills: 2,
        // Soon after the share is checkpointed: the rest of the stream takes a second or
        // two, and a kill after its end restarts the worker from a checkpoint with its
        // windows closed, not from one with chunks out of memory (with shares of 1/3 and
        // 2/3 and up to 1 s later, the precondition failed in 5 of 5 runs in session 13).
        kill_after_ms: 0..200,
        checkpoint_interval_ms: 500,
        aggregates: false,
        pending_memory_mb: 1,
        pending_stubs_memory_mb: 1,
        window_ms: Some(18 * 60 * 1000),
        entity_features: false,
        spread_kills: true,
        score_on_arrival: false,
    };
    killed_worker_ends_like_an_uninterrupted_one(&brokers, &create, &scenario);
}

/// The 500k-event scenario with stubs out of memory too (about 14 chunks pending, under
/// three within the budget). Kills are spread over the stream and come within 2 s of a
/// checkpoint: a release worker reads the whole stream in ~15 s, and with kills 3–30 s
/// apart (as before 2026-12-01) it had read it all before the last restart, which then
/// had nothing in the store to restore. Minutes in a debug build: run it in release,
/// `cargo test --release --test integration --features kafka-it -- --ignored
/// gh_4_killed_five_times_with_stubs`.
#[cfg(feature = "kafka-it")]
#[test]
#[ignore = "minutes long: run it in release (see its doc)"]
fn gh_4_killed_five_times_with_stubs_out_of_memory_in_a_500k_event_stream() {
    let brokers =
        std::env::var("CTRFLOW_TEST_BROKER").expect("CTRFLOW_TEST_BROKER: see tests/run.sh");
    let create = |topics: &[(&str, i32)]| crate::kafka_util::create_topics(&brokers, topics);
    let scenario = Scenario {
        impressions: 316_000,
        partitions: 2,
        workers: 1,
        kills: 5,
        kill_after_ms: 200..2_000,
        checkpoint_interval_ms: 1_000,
        aggregates: true,
        pending_memory_mb: 1,
        pending_stubs_memory_mb: 1,
        window_ms: None,
        entity_features: true,
        spread_kills: true,
        score_on_arrival: false,
    };
    killed_worker_ends_like_an_uninterrupted_one(&brokers, &create, &scenario);
}
