//! The worker in-process against librdkafka's mock cluster (a real Kafka protocol over
//! TCP), with the faults the mock can inject: failing requests and a broker going down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ctrflow::config::PipelineConfig;
use ctrflow::generator::GenConfig;
use ctrflow::produce::{KafkaTarget, produce};
use ctrflow::run::{RunOptions, start};
use ctrflow_connectors::kafka::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::kafka_util::{assert_one_valid_score_per_impression, consume, json};

#[test]
fn failing_requests_and_a_broker_down_lose_nothing() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut config = PipelineConfig::default();
    config.kafka.brokers = brokers.clone();
    config.kafka.group_id = "mock-faults".to_owned();
    config.kafka.consumer.idle_timeout_ms = 2000;
    for (topic, partitions) in [("events", 4), ("scores", 4), ("dead-letters", 1)] {
        cluster.create_topic(topic, partitions, 3).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let running = start(&RunOptions {
        config: config.clone(),
        workers: 2,
        stop: Arc::clone(&stop),
    })
    .expect("worker starts");

    // Produce requests (ours and the generator's) and fetches fail a few times each, with
    // errors a client must retry.
    use RDKafkaRespErr::*;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    );

    let impressions = 8_000;
    let producing = {
        let target = KafkaTarget {
            brokers: brokers.clone(),
            topic: "events".to_owned(),
        };
        std::thread::spawn(move || {
            let config = GenConfig {
                count: impressions,
                seed: 11,
                ..GenConfig::default()
            };
            produce(
                &config,
                &target,
                Some(4_000.0),
                &AtomicBool::new(false),
                &AtomicU64::new(0),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    cluster.broker_down(2).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.broker_up(2).unwrap();
    let generated = producing.join().unwrap().expect("all events delivered");

    let status = Arc::clone(running.status());
    let deadline = Instant::now() + Duration::from_secs(120);
    // Every event read, not only every impression scored: the feedback after the last
    // impression may still be on its way when that impression's score is out.
    while (status.scores.load(Ordering::Relaxed) < generated.impressions
        || status.events.load(Ordering::Relaxed) < generated.events)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let report = running.join().expect("clean shutdown");
    assert_eq!(report.events, generated.events);
    assert_eq!(report.impressions, generated.impressions);
    let scores = consume(
        &brokers,
        "scores",
        generated.impressions as usize,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    assert_one_valid_score_per_impression(&json(&scores), generated.impressions);
    drop(cluster);
}

/// Issue 5: drift alerts reach the `alerts` topic (a feedback outage in the middle of the
/// stream, with windows small enough for it).
#[test]
fn gh_5_alerts_arrive_on_the_alerts_topic() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let text = format!(
        "{}\n[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"mock-alerts\"\n[kafka.topics]\nalerts = \"alerts\"\n",
        crate::drift::SMALL_WINDOWS
    );
    let config = PipelineConfig::parse(&text, "alerts.toml").unwrap();
    for (topic, partitions) in [
        ("events", 2),
        ("scores", 2),
        ("dead-letters", 1),
        ("alerts", 1),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let generated = produce(
        &GenConfig {
            count: 40_000,
            seed: 4,
            drift_at: Some(25_000),
            drift_kinds: vec![ctrflow::generator::DriftKind::FeedbackOutage],
            ..GenConfig::default()
        },
        &KafkaTarget {
            brokers: brokers.clone(),
            topic: "events".to_owned(),
        },
        None,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("events produced");
    let stop = Arc::new(AtomicBool::new(false));
    let running = start(&RunOptions {
        config,
        workers: 2,
        stop: Arc::clone(&stop),
    })
    .expect("worker starts");
    let alerts = consume(
        &brokers,
        "alerts",
        1,
        Duration::from_secs(120),
        Duration::from_secs(1),
    );
    stop.store(true, Ordering::Relaxed);
    let report = running.join().expect("clean shutdown");
    assert!(report.impressions <= generated.impressions);
    let alerts = json(&alerts);
    assert_eq!(alerts[0]["kind"], "label_delay", "{alerts:?}");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts.len(), 1, "one alert per episode: {alerts:?}");
    drop(cluster);
}
