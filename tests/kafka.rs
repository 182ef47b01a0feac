//! `ctrflow run` against a real, separate Kafka-protocol broker (tansu), started by
//! `tests/run.sh`, which passes its address in `CTRFLOW_TEST_BROKER`. Built with the
//! `kafka-it` feature only.

use std::path::Path;
use std::time::Duration;

use crate::kafka_util::{
    SMALL_DRIFT, Scrape, Topics, WorkerProcess, assert_drift_and_state_metrics,
    assert_every_impression_scored_once_or_identically, assert_metrics_after,
    assert_one_valid_score_per_impression, consume, free_port, generate_config_into, generate_into,
    generate_into_patiently, has_drift_and_state_metrics, http_get, json, produce_raw,
    scrape_until, wait_for, wait_ready,
};

fn broker() -> String {
    std::env::var("CTRFLOW_TEST_BROKER").expect(
        "CTRFLOW_TEST_BROKER: run the Kafka tests through tests/run.sh, which starts a broker",
    )
}

#[test]
fn a_hundred_thousand_events_give_exactly_one_score_per_impression() {
    let brokers = broker();
    let topics = Topics::create(&brokers, 4);
    let dir = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start(dir.path(), &topics.config(&brokers, ""), 2);
    let generated = generate_into(&brokers, &topics.events, 66_000, 3, None);
    assert!(generated.events >= 100_000, "{generated:?}");

    let (report, scores) = worker.stop_when_scored(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(240),
    );
    assert_eq!(report["events"], generated.events, "{report}");
    assert_eq!(report["impressions"], generated.impressions, "{report}");
    assert_eq!(report["scores"], generated.impressions, "{report}");
    assert_one_valid_score_per_impression(&scores, generated.impressions);
    assert_eq!(report["bad_events"], 0, "{report}");
    assert_eq!(report["failed_deliveries"], 0, "{report}");
}

#[test]
fn scored_on_arrival_every_impression_is_scored_before_the_watermark_reaches_it() {
    let brokers = broker();
    let topics = Topics::create(&brokers, 4);
    let dir = tempfile::tempdir().unwrap();
    // A watermark an hour behind the newest event: while the partitions are active, no
    // impression is ever behind it, and no label is learned. Scored on the watermark,
    // nothing would come out before the partitions go idle (then all at once, interleaved
    // with learning); scored on arrival, every impression is scored as it is read, by a
    // model that has learned nothing yet.
    let extra = "[input]\nallowed_lateness_ms = 3600000\n[label]\nscore_on = \"arrival\"\n";
    let worker = WorkerProcess::start(dir.path(), &topics.config(&brokers, extra), 2);
    let generated = generate_into(&brokers, &topics.events, 3_000, 11, None);
    let (report, scores) = worker.stop_when_scored(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(120),
    );
    assert_eq!(report["impressions"], generated.impressions, "{report}");
    assert_one_valid_score_per_impression(&scores, generated.impressions);
    let learned: Vec<&serde_json::Value> = scores
        .iter()
        .filter(|s| s["model_version"] != 0)
        .take(3)
        .collect();
    assert!(
        learned.is_empty(),
        "scored after the model learned (so not on arrival): {learned:?}"
    );
    // Labels are still learned, in event-time order, once the watermark moves.
    assert!(report["examples"].as_u64().unwrap_or(0) > 0, "{report}");
}

#[test]
fn malformed_messages_become_dead_letters_and_the_rest_is_unaffected() {
    let brokers = broker();
    let topics = Topics::with_examples(&brokers, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut junk: Vec<u8> = (0..1_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    junk[0] = b'{';
    let bad: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        br#"{"type":"impression","id":"bad-ts","ts":"yesterday","user":"u1","item":"v1","ctx":{}}"#
            .to_vec(),
        br#"{"type":"purchase","id":"imp-1","ts":1763800000000}"#.to_vec(),
        junk,
    ];
    produce_raw(&brokers, &topics.events, &bad);
    let worker = WorkerProcess::start(dir.path(), &topics.config(&brokers, ""), 1);
    let generated = generate_into(&brokers, &topics.events, 3_000, 5, None);

    let (report, scores) =
        worker.stop_when_scored(&brokers, &topics.scores, 3_000, Duration::from_secs(120));
    let letters = json(&consume(
        &brokers,
        &topics.dead_letters,
        bad.len(),
        Duration::from_secs(60),
        Duration::from_secs(1),
    ));

    assert_one_valid_score_per_impression(&scores, generated.impressions);
    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    // Keyless messages spread over the partitions: find each bad message's letter by its
    // length (all four differ).
    let letter = |i: usize| {
        letters
            .iter()
            .find(|l| l["payload_bytes"] == bad[i].len())
            .unwrap_or_else(|| panic!("no dead letter for bad message {i}: {letters:?}"))
    };
    let mut positions = std::collections::HashSet::new();
    for i in 0..bad.len() {
        let l = letter(i);
        assert!(!l["error"].as_str().unwrap().is_empty(), "{l}");
        assert_eq!(l["source"]["topic"], topics.events.as_str());
        let at = (
            l["source"]["partition"].as_i64().unwrap(),
            l["source"]["offset"].as_i64().unwrap(),
        );
        assert!(positions.insert(at), "two letters at {at:?}");
    }
    assert_eq!(letter(0)["payload"], "this is not json");

    // The examples output: one per label, each with the score served for its impression
    // and the hashed features it was scored with.
    let examples = report["examples"].as_u64().unwrap() as usize;
    // 3000 impressions span 2 minutes of event time: the 30-minute windows stay open, so
    // the labels so far are clicks, likes and fast skips.
    assert!(examples > 500, "{report}");
    let examples = json(&consume(
        &brokers,
        &topics.examples,
        examples,
        Duration::from_secs(60),
        Duration::from_secs(1),
    ));
    assert_eq!(examples.len() as u64, report["examples"].as_u64().unwrap());
    let served: std::collections::HashMap<&str, f64> = scores
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["score"].as_f64().unwrap()))
        .collect();
    for e in &examples {
        let id = e["id"].as_str().unwrap();
        assert_eq!(e["served"].as_f64(), served.get(id).copied(), "{e}");
        assert!(e["label"] == 0 || e["label"] == 1, "{e}");
        let features = e["features"].as_array().unwrap();
        assert!(
            features.len() >= 6,
            "bias, user, item, ctx fields, crosses: {e}"
        );
        assert!(
            features.iter().all(|f| f[0].as_u64().unwrap() < 1 << 22),
            "{e}"
        );
    }
    assert!(
        letter(0)["error"].as_str().unwrap().contains("malformed"),
        "{}",
        letter(0)
    );
    assert!(
        letter(1)["error"].as_str().unwrap().contains("`ts`"),
        "names the field: {}",
        letter(1)
    );
    assert!(
        letter(2)["error"].as_str().unwrap().contains("purchase"),
        "{}",
        letter(2)
    );
    let junk = letter(3)["payload"].as_str().unwrap();
    assert!(
        junk.len() < 4 * 64 * 1024,
        "cut, not copied whole: {} bytes",
        junk.len()
    );
    assert_eq!(report["bad_events"], bad.len(), "{report}");
    assert_eq!(
        report["events"],
        generated.events + bad.len() as u64,
        "{report}"
    );
}

/// `tests/broker.sh` with a broker of this test's own on `port`, state in `dir`.
fn broker_sh(command: &str, dir: &Path, port: u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/broker.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .arg(dir)
        .env("CTRFLOW_BROKER_PORT", port.to_string())
        // SQLite: what this test's broker holds must survive its restart.
        .env("CTRFLOW_BROKER_STORAGE", "sqlite")
        .status()
        .unwrap();
    assert!(status.success(), "broker.sh {command}");
}

/// Stops the test's broker even when the test fails.
struct OwnBroker<'a> {
    dir: &'a Path,
    port: u16,
}

impl Drop for OwnBroker<'_> {
    fn drop(&mut self) {
        broker_sh("stop", self.dir, self.port);
        if std::thread::panicking() {
            eprintln!(
                "broker log: {} lines; panics: {:?}",
                broker_log(self.dir).lines().count(),
                broker_panics(self.dir)
            );
        }
    }
}

fn broker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
}

/// The lines of the broker's log (all its runs) that report a panic.
fn broker_panics(dir: &Path) -> Vec<String> {
    broker_log(dir)
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// Restarts the test's broker when it panics, until dropped.
///
/// tansu 0.6.0's SQLite storage sometimes panics after a restart on a produce request of
/// an idempotent producer that outlived the old broker (`tansu-storage` `lite.rs:503`,
/// "more or less than one row"); the broker then acknowledges no more writes. That is the
/// broker's bug, not the worker's; what an operator does about it — restart the broker
/// again — is what the worker must survive too, so the watchdog does just that (at most
/// [`BrokerWatchdog::MAX_RESTARTS`] times) and says so. One restart is not always enough:
/// the test's generator and the worker's sink each replace a producer the broker refuses
/// only once its deliveries have stalled (10 s), and until then each can make the restarted
/// broker panic again (three panics in a row in one of 45 runs of this test, session 23).
struct BrokerWatchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl BrokerWatchdog {
    const MAX_RESTARTS: usize = 6;

    fn start(dir: &Path, port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dir = dir.to_owned();
        let thread = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                let mut seen = broker_panics(&dir).len();
                let mut restarts = 0;
                while !stop.load(Ordering::Relaxed) && restarts < Self::MAX_RESTARTS {
                    std::thread::sleep(Duration::from_millis(250));
                    let panics = broker_panics(&dir);
                    if panics.len() > seen {
                        eprintln!(
                            "the broker panicked ({:?}); restarting it (a known tansu 0.6.0 bug)",
                            panics.last()
                        );
                        broker_sh("stop", &dir, port);
                        broker_sh("start", &dir, port);
                        seen = broker_panics(&dir).len();
                        restarts += 1;
                    }
                }
                restarts
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; how many times it restarted the broker.
    fn finish(mut self) -> usize {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for BrokerWatchdog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[test]
fn the_worker_reconnects_after_a_broker_restart_and_scores_everything() {
    let port: u16 = std::env::var("CTRFLOW_TEST_RESTART_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(19192);
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    broker_sh("start", &broker_dir, port);
    let _broker = OwnBroker {
        dir: &broker_dir,
        port,
    };
    let brokers = format!("127.0.0.1:{port}");
    let topics = Topics::create(&brokers, 2);
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = WorkerProcess::start(dir.path(), &topics.config_serving(&brokers, &addr, ""), 2);

    // Traffic for about 6 s; the broker is down for 2 s in the middle of it. The
    // generator waits long enough for its last deliveries to outlast a second restart.
    let producing = {
        let brokers = brokers.clone();
        let events = topics.events.clone();
        std::thread::spawn(move || {
            generate_into_patiently(
                &brokers,
                &events,
                20_000,
                9,
                Some(5_000.0),
                Duration::from_secs(150),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    broker_sh("stop", &broker_dir, port);
    std::thread::sleep(Duration::from_secs(2));
    broker_sh("start", &broker_dir, port);
    let watchdog = BrokerWatchdog::start(&broker_dir, port);
    let generated = producing.join().unwrap();
    // The worker has read everything the producer wrote (and is caught up with the topic)
    // before it is stopped. Waiting only for the scores topic to stop growing is not
    // enough: while the broker is wedged by a panic (until the watchdog restarts it), and
    // while the sink replaces the producer whose resends make the restarted broker panic
    // again, no score lands for longer than `stop_when_scored`'s quiet time, and the
    // worker was stopped half-way through the input.
    scrape_until(&addr, Duration::from_secs(180), |s| {
        s.sum("ctrflow_events_total", "").unwrap_or(0.0) as u64 >= generated.events
            && s.sum("ctrflow_consumer_lag_messages", "") == Some(0.0)
    });

    let (report, scores) = worker.stop_when_scored(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(180),
    );
    let extra_restarts = watchdog.finish();
    eprintln!("broker restarted {extra_restarts} more time(s) after panicking");
    // A producer that outlives a broker restart may write a message twice (this broker
    // loses what idempotence needs; ctrflow's sink replaces a stalled producer and resends
    // what it could not confirm): the worker reads every input copy, scores each impression
    // once and counts the duplicates; a score written twice is written identically.
    let events = report["events"].as_u64().unwrap();
    assert!(events >= generated.events, "{report}");
    let duplicates = report["duplicate_impressions"].as_u64().unwrap();
    assert!(duplicates <= events - generated.events, "{report}");
    assert_eq!(report["impressions"], generated.impressions, "{report}");
    assert!(
        report["delivered"].as_u64().unwrap() >= generated.impressions,
        "{report}"
    );
    assert_every_impression_scored_once_or_identically(&scores, generated.impressions);
}

/// Issue 6: a running worker's /metrics, scraped while a producer writes and after it
/// stopped, shows what it does; /healthz and /readyz answer.
#[test]
fn gh_6_metrics_of_a_running_worker_track_its_work_and_lag_falls_to_zero() {
    let brokers = broker();
    let topics = Topics::create(&brokers, 2);
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // Durable state (for its size) and drift windows small enough for this stream.
    let extra = format!(
        "{SMALL_DRIFT}\n[state]\ndir = \"{}\"\ncheckpoint_interval_ms = 1000\n",
        dir.path().join("state").display()
    );
    let worker = WorkerProcess::start(
        dir.path(),
        &topics.config_serving(&brokers, &addr, &extra),
        2,
    );
    wait_ready(&addr, Duration::from_secs(60));
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));

    let bad = 2;
    produce_raw(&brokers, &topics.events, &vec![b"not json".to_vec(); bad]);
    let producing = {
        let brokers = brokers.clone();
        let topic = topics.events.clone();
        std::thread::spawn(move || generate_into(&brokers, &topic, 20_000, 8, Some(8_000.0)))
    };
    // While the producer runs (~4 s), scrape: the counters only grow, and are seen between
    // nothing and everything at least once. (Not "between any two scrapes": the broker may
    // hand over a burst that is read at once and scored over the following seconds.)
    let scores = |s: &Scrape| s.sum("ctrflow_scores_total", "").unwrap_or(0.0);
    let events = |s: &Scrape| s.sum("ctrflow_events_total", "").unwrap_or(0.0);
    let mut seen = Vec::new();
    while !producing.is_finished() {
        let scrape = Scrape::take(&addr);
        seen.push((events(&scrape), scores(&scrape)));
        std::thread::sleep(Duration::from_millis(250));
    }
    let generated = producing.join().unwrap();

    // Once the producer stopped, everything is read and the lag falls to zero.
    let done = scrape_until(&addr, Duration::from_secs(60), |s| {
        s.sum("ctrflow_events_total", "").unwrap_or(0.0) as u64 == generated.events
            && s.sum("ctrflow_consumer_lag_messages", "") == Some(0.0)
            && s.sum("ctrflow_model_nonzero_weights", "").unwrap_or(0.0) > 0.0
            && s.sum("ctrflow_bad_events_total", "") == Some(bad as f64)
            && scores(s) >= 0.99 * generated.impressions as f64
            && s.sum("ctrflow_event_to_score_latency_seconds_count", "")
                .unwrap_or(0.0)
                > 0.9 * generated.impressions as f64
    });
    assert_metrics_after(&done, generated.events, generated.impressions, bad as u64);
    let drift = scrape_until(&addr, Duration::from_secs(30), has_drift_and_state_metrics);
    assert_drift_and_state_metrics(&drift);
    seen.push((events(&done), scores(&done)));
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "counters went down: {seen:?}"
    );
    let (all_events, all_scores) = (events(&done), scores(&done));
    assert!(
        seen.iter()
            .any(|&(e, s)| (e > 0.0 && e < all_events) || (s > 0.0 && s < all_scores)),
        "never seen growing: {seen:?}"
    );
    assert_eq!(
        done.sum("ctrflow_consumer_lag_messages", "partition=\"1\""),
        Some(0.0),
        "one lag series per partition"
    );

    let report = worker.stop();
    assert_eq!(report["events"], generated.events + bad as u64, "{report}");
    assert_eq!(report["scores"], generated.impressions, "{report}");
}

/// Issue 5: with the real broker, a drifting stream in (feedback stops for an hour of
/// event time) → the `label_delay` alert, in the contract's form, on the `alerts` topic,
/// once, and in the worker's report.
#[test]
fn gh_5_a_feedback_outage_alert_arrives_on_the_alerts_topic() {
    let brokers = broker();
    let topics = Topics::with_alerts(&brokers, 2);
    let dir = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start(
        dir.path(),
        &topics.config(&brokers, crate::drift::SMALL_WINDOWS),
        2,
    );
    let generated = generate_config_into(
        &brokers,
        &topics.events,
        &ctrflow::generator::GenConfig {
            count: 40_000,
            seed: 4,
            drift_at: Some(25_000),
            drift_kinds: vec![ctrflow::generator::DriftKind::FeedbackOutage],
            ..ctrflow::generator::GenConfig::default()
        },
        None,
    );
    let alerts = json(&consume(
        &brokers,
        &topics.alerts,
        1,
        Duration::from_secs(180),
        Duration::from_secs(1),
    ));
    let (report, _) = worker.stop_when_scored(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(240),
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "label_delay", "{alert}");
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["detector"], "feedback_rate", "{alert}");
    for key in ["severity", "metric", "value", "threshold", "ts", "message"] {
        assert!(!alert[key].is_null(), "{key} missing: {alert}");
    }
    assert!(
        alert["window"]["from"].as_i64() <= alert["window"]["to"].as_i64(),
        "{alert}"
    );
    // The same alert is in the report, with the feedback outage's only firing.
    let reported: Vec<&serde_json::Value> = report["alerts"]
        .as_array()
        .expect("alerts in the report")
        .iter()
        .filter(|a| a["kind"] == "label_delay" && a["state"] == "firing")
        .collect();
    assert_eq!(reported, vec![alert], "{report}");
}

/// Cluster mode (issue 3): two `ctrflow run` processes of one worker each form one timely
/// cluster over loopback; a paced stream on 4 partitions is read by both (2 partitions
/// each), every impression is scored exactly once across them, the processes exchange
/// what their model replicas learned, and SIGTERM to one process stops both cleanly.
#[test]
fn gh_3_two_processes_form_one_cluster_and_score_every_impression_once() {
    let brokers = broker();
    let topics = Topics::with_examples(&brokers, 4);
    let dir = tempfile::tempdir().unwrap();
    let hostfile = dir.path().join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    // A one-minute attribution window, so that the ~9 minutes of event time end in final
    // labels; small tables, so that each delta scan of a debug build is cheap.
    let extra = "[label]\nwindow_ms = 60000\n[features]\nbits = 18\n[model]\nbits = 18\n\
                 [cluster]\nsync_interval_ms = 20\n";
    // Event time runs ~135× faster than the clock here (9 minutes in ~4 s), so the idle
    // rule's blind spot is wide: the processes start before the stream, their partitions go
    // idle while empty, and one becomes active again only with its next fetch response
    // (tansu answers a fetch after `fetch.wait.max.ms`, 500 ms), while the other process may
    // already move the watermark past the 1-minute window; on a loaded CI run a quarter of
    // the impressions arrived late that way. Not idle before the stream starts: 10 s.
    let config = topics
        .config(&brokers, extra)
        .replace("idle_timeout_ms = 2000", "idle_timeout_ms = 10000");
    assert!(config.contains("idle_timeout_ms = 10000"), "{config}");
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|p| {
            let dir = dir.path().join(p.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            WorkerProcess::start_in_cluster(&dir, &config, 1, (2, p, &hostfile))
        })
        .collect();
    // Paced like a live stream: the processes learn in small steps and exchange deltas
    // between them (a backlog read at once is learned in a few big steps, between which
    // the replicas cannot exchange).
    let generated = generate_config_into(
        &brokers,
        &topics.events,
        &ctrflow::generator::GenConfig {
            count: 13_000,
            seed: 1,
            users: 300,
            items: 100,
            ..ctrflow::generator::GenConfig::default()
        },
        Some(5_000.0),
    );
    assert!(generated.events >= 20_000, "{generated:?}");
    wait_for(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    // Scores go out as impressions are read, labels only as the cluster's watermark passes
    // them: on a loaded machine that lags the last score by seconds, and a stop does not
    // expire what is pending. So wait for the examples (one per label) to stop growing, or
    // to pass 0.85 of the impressions (the bound below is 0.8), first.
    wait_for(
        &brokers,
        &topics.examples,
        generated.impressions as usize * 85 / 100,
        Duration::from_secs(10),
        Duration::from_secs(120),
    );
    let mut workers = workers.into_iter();
    let (first, second) = (workers.next().unwrap(), workers.next().unwrap());
    // A stop anywhere stops the cluster: SIGTERM to process 1, process 0 follows.
    let (report_1, _) = second.stop_with_logs();
    let (report_0, _) = first.wait_with_logs();
    let scores = json(&consume(
        &brokers,
        &topics.scores,
        generated.impressions as usize,
        Duration::from_secs(60),
        Duration::from_secs(2),
    ));
    assert_one_valid_score_per_impression(&scores, generated.impressions);

    let reports = [&report_0, &report_1];
    for (p, report) in reports.iter().enumerate() {
        assert_eq!(report["processes"], 2, "{report}");
        assert_eq!(report["process"], p, "{report}");
        assert_eq!(report["failed_deliveries"], 0, "{report}");
        // Each process read its partitions: a share of the events, not all of them.
        let events = report["events"].as_u64().unwrap();
        assert!(events > 0 && events < generated.events, "{report}");
    }
    let sum = |key: &str| {
        reports
            .iter()
            .map(|r| r[key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("events"), generated.events);
    assert_eq!(sum("impressions"), generated.impressions);
    assert_eq!(sum("scores"), generated.impressions);
    // Every example either process learned from went out, once.
    let written = wait_for(
        &brokers,
        &topics.examples,
        sum("examples") as usize,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    assert_eq!(written as u64, sum("examples"));

    // The model learned: logloss over both processes' examples below the entropy of the
    // base rate (measured 0.95 of it on a quiet machine, 0.98 on a loaded one, where the
    // processes read in bigger steps and exchange less often between them; one process
    // with two workers: 0.93). That they exchanged is checked below.
    let (mut count, mut positives, mut loss) = (0.0, 0.0, 0.0);
    for r in reports {
        let o = &r["overall"];
        let n = o["count"].as_f64().unwrap();
        count += n;
        positives += o["positives"].as_f64().unwrap();
        loss += o["logloss"].as_f64().unwrap() * n;
    }
    // Impressions of the last window may still wait for their label when the cluster stops
    // (a stop does not expire them; the idle timeout, once the stream ends, does: 1.00 of
    // the impressions when measured waiting for the examples to stop growing).
    assert!(
        count > 0.8 * generated.impressions as f64,
        "{count} examples of {} impressions: {report_0} {report_1}",
        generated.impressions
    );
    let (q, logloss) = (positives / count, loss / count);
    let entropy = -(q * q.ln() + (1.0 - q) * (1.0 - q).ln());
    assert!(
        logloss < 0.995 * entropy,
        "logloss {logloss} vs base-rate entropy {entropy}: {report_0} {report_1}"
    );
    // The replicas exchanged what they learned: a process's model version counts the
    // other's updates too. Alone, a process counts at most one update per impression it
    // scored (its provisional or final negative, or its positive) plus one per positive
    // learned after a provisional negative; a score served with a newer version than that
    // bound proves the other's deltas arrived (how far beyond depends on when the last
    // exchange landed before the last score).
    let newest = scores
        .iter()
        .filter_map(|s| s["model_version"].as_u64())
        .max()
        .unwrap();
    let alone = reports
        .iter()
        .map(|r| r["impressions"].as_f64().unwrap() + r["overall"]["positives"].as_f64().unwrap())
        .fold(0.0, f64::max);
    // The margins, for the log of a run that fails elsewhere or comes close.
    eprintln!(
        "gh_3: examples {:.3} of impressions, logloss {:.3} of the base-rate entropy, \
         newest model version {:.2}x one process's bound",
        count / generated.impressions as f64,
        logloss / entropy,
        newest as f64 / alone
    );
    assert!(
        newest as f64 > alone,
        "model version {newest}, at most {alone} updates learned by one process alone"
    );
}
