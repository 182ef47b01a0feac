use std::path::{Path, PathBuf};

use crate::util::{ctrflow, impression_ts, replay_json, run_ok};

/// Windows small enough for 60k-impression streams (the defaults are sized for millions).
pub const SMALL_WINDOWS: &str = r#"
[drift]
resolve_after_ms = 120000
min_alert_interval_ms = 600000
[drift.concept]
warmup_examples = 2000
[drift.calibration]
warmup_examples = 2000
slice_examples = 1000
slices = 5
[drift.feedback]
span_ms = 120000
baseline_ms = 600000
min_impressions = 200
[drift.data]
slice_impressions = 1000
recent_slices = 4
reference_slices = 10
[drift.score]
# The model is young through these short streams: its scores move as it learns.
enabled = false
"#;

/// Writes `SMALL_WINDOWS` plus `extra` as a config in `dir`.
pub fn small_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("drift.toml");
    std::fs::write(&path, format!("{SMALL_WINDOWS}{extra}")).unwrap();
    path
}

/// `count` impressions with `kind` drift from impression `at` (none when `kind` is empty).
pub fn generate_drift(dir: &Path, count: u64, at: u64, kind: &str) -> PathBuf {
    let path = dir.join(format!("events-{kind}.jsonl"));
    let mut cmd = ctrflow();
    cmd.args(["gen", "--count", &count.to_string(), "--seed", "4", "--out"])
        .arg(&path);
    if !kind.is_empty() {
        cmd.args(["--drift-at", &at.to_string(), "--drift-kind", kind]);
    }
    run_ok(&mut cmd);
    path
}

fn alerts(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["alerts"]
        .as_array()
        .expect("an alerts array")
        .clone()
}

/// Checks the alerts of one kind: the first fires after `drift_ts` and every alert has
/// the contract's keys.
fn assert_fires(report: &serde_json::Value, kind: &str, drift_ts: i64) {
    let all = alerts(report);
    for a in &all {
        for key in [
            "kind",
            "state",
            "severity",
            "detector",
            "metric",
            "value",
            "threshold",
            "window",
            "ts",
            "message",
        ] {
            assert!(a.get(key).is_some(), "{key} missing in {a}");
        }
        assert!(a["window"]["from"].as_i64().unwrap() <= a["window"]["to"].as_i64().unwrap());
    }
    let fired: Vec<_> = all
        .iter()
        .filter(|a| a["kind"] == kind && a["state"] == "firing")
        .collect();
    assert!(!fired.is_empty(), "no {kind} alert in {all:#?}");
    for a in &all {
        assert!(
            a["ts"].as_i64().unwrap() >= drift_ts,
            "an alert before the drift: {a}"
        );
    }
}

#[test]
fn a_stationary_stream_raises_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 70_000, 0, "");
    let config = small_config(dir.path(), "");
    let report = replay_json(&input, &["--config", config.to_str().unwrap()]);
    assert_eq!(alerts(&report), Vec::<serde_json::Value>::new());
}

#[test]
fn a_mix_shift_raises_data_drift() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 40_000, 20_000, "mix-shift");
    let config = small_config(dir.path(), "");
    let report = replay_json(&input, &["--config", config.to_str().unwrap()]);
    assert_fires(&report, "data_drift", impression_ts(&input, 20_000));
    let metrics: Vec<_> = alerts(&report)
        .iter()
        .map(|a| a["metric"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        metrics
            .iter()
            .any(|m| m == "ctx.device" || m == "ctx.country"),
        "{metrics:?}"
    );
}

#[test]
fn a_doubled_ctr_raises_calibration_or_concept_drift_once() {
    let dir = tempfile::tempdir().unwrap();
    // Label detectors start one attribution window (30 min, 45k impressions) in.
    let input = generate_drift(dir.path(), 70_000, 55_000, "base-ctr");
    let config = small_config(dir.path(), "");
    let report = replay_json(&input, &["--config", config.to_str().unwrap()]);
    let drift_ts = impression_ts(&input, 55_000);
    assert_fires(&report, "calibration", drift_ts);
    // One alert per episode: never two firing alerts of one metric in a row.
    let all = alerts(&report);
    for metric in ["calibration", "relative_logloss"] {
        let states: Vec<_> = all
            .iter()
            .filter(|a| a["metric"] == metric)
            .map(|a| a["state"].as_str().unwrap())
            .collect();
        assert!(
            states.windows(2).all(|w| w[0] != w[1]),
            "{metric}: {states:?}"
        );
    }
}

#[test]
fn a_feedback_outage_raises_label_delay() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 40_000, 25_000, "feedback-outage");
    let config = small_config(dir.path(), "");
    let report = replay_json(&input, &["--config", config.to_str().unwrap()]);
    assert_fires(&report, "label_delay", impression_ts(&input, 25_000));
}

#[test]
fn two_workers_raise_each_alert_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 40_000, 25_000, "feedback-outage");
    let config = small_config(dir.path(), "");
    let one = replay_json(&input, &["--config", config.to_str().unwrap()]);
    let two = replay_json(
        &input,
        &["--config", config.to_str().unwrap(), "--workers", "2"],
    );
    let key = |r: &serde_json::Value| -> Vec<(String, String)> {
        alerts(r)
            .iter()
            .filter(|a| a["kind"] == "label_delay")
            .map(|a| (a["state"].to_string(), a["metric"].to_string()))
            .collect()
    };
    assert!(!key(&one).is_empty());
    assert_eq!(key(&one), key(&two));
}

/// A webhook endpoint on 127.0.0.1: answers every POST with 200 and reports its body.
fn serve(listener: std::net::TcpListener, seen: std::sync::mpsc::Sender<serde_json::Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = seen.send(serde_json::from_slice(&body).unwrap());
        }
    });
}

/// A data-drift episode that starts and ends within the stream: the device mix shifts at
/// 20k, and a lagging reference takes the new mix in 14 slices later.
const LAGGING: &str = "reference = \"lagging\"\n";

fn webhook_config(dir: &Path, port: u16) -> PathBuf {
    let text = SMALL_WINDOWS.replace("[drift.data]\n", &format!("[drift.data]\n{LAGGING}"));
    let path = dir.join("webhook.toml");
    std::fs::write(
        &path,
        format!(
            "{text}\n[[drift.webhooks]]\nurl = \"http://127.0.0.1:{port}/alerts\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\n"
        ),
    )
    .unwrap();
    path
}

/// The alerts the endpoint received equal the report's, and each metric alternates
/// firing, resolved, with at least one complete episode.
fn assert_delivered(report: &serde_json::Value, received: &[serde_json::Value]) {
    let all = alerts(report);
    assert_eq!(received, all.as_slice());
    assert_eq!(report["webhooks"]["delivered"], all.len());
    assert_eq!(report["webhooks"]["undelivered"], 0);
    let mut metrics: Vec<&str> = all.iter().map(|a| a["metric"].as_str().unwrap()).collect();
    metrics.dedup();
    let mut complete = 0;
    for m in metrics {
        let states: Vec<&str> = all
            .iter()
            .filter(|a| a["metric"] == m)
            .map(|a| a["state"].as_str().unwrap())
            .collect();
        for (i, s) in states.iter().enumerate() {
            assert_eq!(
                *s,
                if i % 2 == 0 { "firing" } else { "resolved" },
                "{m}: {states:?}"
            );
        }
        complete += states.len() / 2;
    }
    assert!(complete >= 1, "no episode ended: {all:#?}");
}

#[test]
fn a_webhook_receives_one_alert_per_episode_and_its_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 40_000, 20_000, "mix-shift");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    serve(listener, tx);
    let config = webhook_config(dir.path(), port);
    let report = replay_json(&input, &["--config", config.to_str().unwrap()]);
    let received: Vec<_> = rx.try_iter().collect();
    assert_delivered(&report, &received);
}

#[test]
fn a_webhook_down_at_first_gets_every_alert_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 40_000, 20_000, "mix-shift");
    // A free port, closed for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = webhook_config(dir.path(), port);
    let mut child = ctrflow()
        .args(["replay", "--json", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Come up only once a delivery has failed (the sink logs each failed attempt).
    let stderr = child.stderr.take().unwrap();
    let (failed_tx, failed_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("Webhook delivery failed") {
                let _ = failed_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    failed_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a delivery to the closed port fails first");
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    serve(listener, tx);
    let output = child.wait_with_output().unwrap();
    let log = log.join().unwrap();
    assert!(output.status.success(), "{log}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["impressions"], 40_000, "the pipeline kept running");
    assert!(report["webhooks"]["failed_attempts"].as_u64().unwrap() > 0);
    let received: Vec<_> = rx.try_iter().collect();
    assert_delivered(&report, &received);
}

/// Where the flip happens in the response test.
const RESPONSE_AT: u64 = 50_000;

/// A response policy sized for an 80k stream.
const RESPONSE: &str = r#"
[drift.response]
enabled = true
start = "warm"
margin = 0.002
window = 2000
min_examples = 2000
max_examples = 40000
"#;

/// `[drift.response]` (issue 5, point 7): a concept drift alert starts a challenger, the
/// challenger is announced when promoted, and the scores after the promotion carry the
/// new generation in `model_version`'s high bits.
#[test]
fn gh_5_a_challenger_is_promoted_after_concept_drift_and_serves_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 80_000, RESPONSE_AT, "flip-items");
    // Detectors this sensitive (one false alarm per 1000 impressions) see the flip within
    // a short stream; labels start 45k impressions in, so there is no false alarm before.
    let config = dir.path().join("response.toml");
    std::fs::write(
        &config,
        format!(
            "{}{RESPONSE}",
            SMALL_WINDOWS.replace("[drift]\n", "[drift]\nfalse_alarm_every = 1000\n")
        ),
    )
    .unwrap();
    let scores = dir.path().join("scores.jsonl");
    let report = replay_json(
        &input,
        &[
            "--config",
            config.to_str().unwrap(),
            "--scores-out",
            scores.to_str().unwrap(),
        ],
    );
    let all = alerts(&report);
    let drift_ts = impression_ts(&input, RESPONSE_AT);
    let promoted: Vec<_> = all
        .iter()
        .filter(|a| a["detector"] == "challenger" && a["state"] == "firing")
        .collect();
    assert_eq!(promoted.len(), 1, "{all:#?}");
    let p = promoted[0];
    assert_eq!(p["kind"], "concept_drift");
    assert!(p["message"].as_str().unwrap().contains("promoted"), "{p}");
    assert!(p["value"].as_f64().unwrap() <= p["threshold"].as_f64().unwrap());
    // Started by a concept drift alert raised after the drift.
    let started = p["window"]["from"].as_i64().unwrap();
    assert!(started >= drift_ts, "{started} < {drift_ts}");
    assert!(all.iter().any(|a| a["kind"] == "concept_drift"
        && a["state"] == "firing"
        && a["detector"] != "challenger"
        && a["ts"] == started));
    // Scores, in the order served: generation 0, then 1 from the promotion on. The
    // learner switches when it learns the deciding label; the detector announces it at
    // its own event time, which trails the learner's (labels arrive after impressions).
    let promoted_ts = p["ts"].as_i64().unwrap();
    let text = std::fs::read_to_string(&scores).unwrap();
    let (mut before, mut after, mut switched_at) = (0, 0, None);
    for line in text.lines() {
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        let generation = s["model_version"].as_u64().unwrap() >> 48;
        let ts = s["event_ts"].as_i64().unwrap();
        match (generation, switched_at) {
            (0, None) => before += 1,
            (1, None) => {
                switched_at = Some(ts);
                after += 1;
            }
            (1, Some(_)) => after += 1,
            _ => panic!("generation {generation} after the switch at {switched_at:?}: {s}"),
        }
    }
    let switched_at = switched_at.expect("scores of generation 1");
    assert!(
        switched_at >= started && switched_at + 1000 >= promoted_ts,
        "switched at {switched_at}, started {started}, announced {promoted_ts}"
    );
    assert!(
        switched_at - promoted_ts < 120_000,
        "{switched_at} vs {promoted_ts}"
    );
    assert!(before > 0 && after > 0, "{before} before, {after} after");
}
