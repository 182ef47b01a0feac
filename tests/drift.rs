use std::path::{Path, PathBuf};

use crate::util::{ctrflow, replay_json, run_ok};

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

fn first_impression_ts(input: &Path, n: u64) -> i64 {
    let text = std::fs::read_to_string(input).unwrap();
    let id = format!("\"imp-{n}\"");
    let line = text
        .lines()
        .find(|l| l.contains(&id) && l.contains("impression"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["ts"].as_i64().unwrap()
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
    assert_fires(&report, "data_drift", first_impression_ts(&input, 20_000));
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
    let drift_ts = first_impression_ts(&input, 55_000);
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
    assert_fires(&report, "label_delay", first_impression_ts(&input, 25_000));
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
