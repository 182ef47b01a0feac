//! `ctrflow run`'s metrics and health endpoints, in-process against librdkafka's mock
//! cluster (the real-broker version is in tests/kafka.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use ctrflow::config::PipelineConfig;
use ctrflow::generator::GenConfig;
use ctrflow::produce::{KafkaTarget, produce};
use ctrflow::run::{RunOptions, run};
use ctrflow_connectors::kafka::MockCluster;

use crate::kafka_util::{
    Scrape, WorkerProcess, assert_drift_and_state_metrics, assert_metrics_after, free_port,
    has_drift_and_state_metrics, http_get, produce_raw, scrape_until, wait_ready,
};

#[test]
fn metrics_count_what_the_worker_does_and_health_answers() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [("events", 2), ("scores", 2), ("dead-letters", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = PipelineConfig::default();
    config.kafka.brokers = brokers.clone();
    config.kafka.group_id = "telemetry".to_owned();
    config.kafka.consumer.idle_timeout_ms = 2000;
    config.input.allowed_lateness_ms = 0;
    config.telemetry.listen = addr.clone();
    config.telemetry.publish_interval_ms = 200;
    // Every drift detector's statistic within minutes of event time (SMALL_DRIFT), the
    // metrics over time in a file, and durable state for its size.
    let dir = tempfile::tempdir().unwrap();
    config.label.window_ms = 60_000;
    config.drift.data.slice_impressions = 500;
    config.drift.data.recent_slices = 4;
    config.drift.data.reference_slices = 4;
    config.telemetry.metrics_interval_ms = 10_000;
    let records = dir.path().join("metrics.jsonl");
    config.telemetry.metrics_out = records.display().to_string();
    config.state.dir = dir.path().join("state");
    config.state.checkpoint_interval_ms = 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let options = RunOptions {
            config,
            workers: 2,
            stop: Arc::clone(&stop),
        };
        std::thread::spawn(move || run(&options))
    };

    // Ready once both workers read.
    wait_ready(&addr, Duration::from_secs(30));
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));

    let bad = 3;
    produce_raw(&brokers, "events", &vec![b"not json".to_vec(); bad]);
    let target = KafkaTarget {
        brokers: brokers.clone(),
        topic: "events".to_owned(),
    };
    let producing = std::thread::spawn(move || {
        let config = GenConfig {
            count: 6_000,
            seed: 5,
            ..GenConfig::default()
        };
        produce(
            &config,
            &target,
            Some(6_000.0),
            &AtomicBool::new(false),
            &AtomicU64::new(0),
        )
    });
    // Counters grow while the producer runs.
    let first = scrape_until(&addr, Duration::from_secs(30), |s| {
        s.sum("ctrflow_scores_total", "").unwrap_or(0.0) > 0.0
    });
    let generated = producing.join().unwrap().expect("events delivered");
    let read_all = |s: &Scrape| {
        let read = s.sum("ctrflow_events_total", "").unwrap_or(0.0) as u64;
        read == generated.events && s.sum("ctrflow_consumer_lag_messages", "") == Some(0.0)
    };
    let last = scrape_until(&addr, Duration::from_secs(60), read_all);
    // Scores of the tail come once the partitions go idle and the watermark follows.
    let last = scrape_until(&addr, Duration::from_secs(30), |s| {
        s.get("ctrflow_scores_total", "") >= 0.99 * generated.impressions as f64
            && s.get("ctrflow_scores_total", "") > last.get("ctrflow_scores_total", "")
            || s.get("ctrflow_scores_total", "") == generated.impressions as f64
    });
    assert!(last.get("ctrflow_scores_total", "") > first.get("ctrflow_scores_total", ""));
    let last = scrape_until(&addr, Duration::from_secs(20), |s| {
        // Counted every 5 s (a scan of every coordinate): the first count saw none.
        s.sum("ctrflow_model_nonzero_weights", "").unwrap_or(0.0) > 0.0
            && s.sum("ctrflow_bad_events_total", "") == Some(bad as f64)
            && s.sum("ctrflow_event_to_score_latency_seconds_count", "")
                .unwrap_or(0.0)
                > 0.9 * generated.impressions as f64
    });
    assert_metrics_after(&last, generated.events, generated.impressions, bad as u64);
    let last = scrape_until(&addr, Duration::from_secs(20), has_drift_and_state_metrics);
    assert_drift_and_state_metrics(&last);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = worker.join().unwrap().expect("clean shutdown");
    assert_eq!(report.events, generated.events + bad as u64);
    // The worker wrote the metrics over time: one record per 10 s of event time that saw
    // anything, the last one after every impression.
    let records = ctrflow::timeline::read(&records).unwrap();
    assert!(records.len() >= 10, "{} records", records.len());
    assert!(records.windows(2).all(|w| w[0].ts < w[1].ts));
    let final_record = records.last().unwrap();
    assert_eq!(final_record.impressions, report.impressions);
    assert!(
        final_record
            .overall
            .logloss
            .is_some_and(|l| l > 0.0 && l < 0.69)
    );
    assert!(!final_record.drift.is_empty());
    // The server stopped with the worker.
    assert!(http_get(&addr, "/healthz").is_none());
    drop(cluster);
}

/// The worker as a process against the mock cluster, with `--log-format`: its log lines,
/// and how many of them there are after `impressions` impressions at `RUST_LOG=info`.
fn run_and_log(format: &str, impressions: u64) -> Vec<String> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [("events", 2), ("scores", 2), ("dead-letters", 1)] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n[telemetry]\nlisten = \"{addr}\"\n[kafka.consumer]\nidle_timeout_ms = 2000\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let worker = WorkerProcess::start_logging(dir.path(), &config, 1, "info", format);
    wait_ready(&addr, Duration::from_secs(60));
    let target = KafkaTarget {
        brokers: brokers.clone(),
        topic: "events".to_owned(),
    };
    let config = GenConfig {
        count: impressions,
        seed: 9,
        ..GenConfig::default()
    };
    let generated = produce(
        &config,
        &target,
        None,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("events delivered");
    produce_raw(&brokers, "events", &[b"{oops".to_vec()]);
    scrape_until(&addr, Duration::from_secs(60), |s| {
        s.sum("ctrflow_events_total", "").unwrap_or(0.0) as u64 == generated.events
            && s.sum("ctrflow_bad_events_total", "") == Some(1.0)
    });
    let (report, logs) = worker.stop_with_logs();
    assert_eq!(report["events"], generated.events + 1, "{report}");
    drop(cluster);
    logs.lines().map(str::to_owned).collect()
}

#[test]
fn logs_are_json_with_the_flag_and_never_per_event() {
    let lines = run_and_log("json", 2_000);
    assert!(!lines.is_empty());
    // A few lines at start and stop (and a status line every 10 s), none per event: the
    // bad event is counted and dead-lettered, not logged.
    assert!(
        lines.len() < 20,
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        assert!(entry["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("/metrics")),
        "the server's address is logged: {lines:?}"
    );

    let human = run_and_log("human", 200);
    assert!(human.iter().any(|l| l.contains("INFO")), "{human:?}");
    assert!(
        human
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
    );
}
