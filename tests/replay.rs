use std::collections::HashSet;
use std::io::Write;

use crate::util::{ctrflow, generate, replay_json, run_ok};

#[test]
fn learns_and_reports_the_contract_keys() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 60_000, 7);
    let report = replay_json(&input, &[]);
    for key in [
        "impressions",
        "examples_per_sec",
        "logloss",
        "normalized_entropy",
        "auc",
        "calibration",
        "bad_events",
        "reference_logloss",
        "positive_click",
        "negative_fast_skip",
        "negative_expired",
        "late_feedback",
        "orphan_feedback",
        "duplicate_feedback",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["impressions"], 60_000);
    assert_eq!(
        report["examples"], 60_000,
        "every impression gets exactly one label"
    );
    assert_eq!(report["bad_events"], 0);
    let ne = report["normalized_entropy"].as_f64().unwrap();
    assert!(
        ne < 0.99,
        "the model learns something even from 60k impressions: NE {ne}"
    );
    let auc = report["auc"].as_f64().unwrap();
    assert!(auc > 0.6, "AUC {auc}");
    let reference = report["reference_logloss"].as_f64().unwrap();
    assert!(
        reference < report["logloss"].as_f64().unwrap(),
        "nothing beats the true probabilities"
    );
}

#[test]
fn one_worker_replays_are_deterministic_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 20_000, 3);
    let run = |n: u32| {
        let scores = dir.path().join(format!("scores{n}.jsonl"));
        let model = dir.path().join(format!("model{n}.bin"));
        run_ok(
            ctrflow()
                .args(["replay", "--json", "--input"])
                .arg(&input)
                .arg("--scores-out")
                .arg(&scores)
                .arg("--model-out")
                .arg(&model),
        );
        let scores = scores_without_emit_ts(&scores);
        (scores, std::fs::read(model).unwrap())
    };
    let (scores_a, model_a) = run(1);
    let (scores_b, model_b) = run(2);
    assert_eq!(scores_a.len(), 20_000);
    assert_eq!(scores_a, scores_b, "same scores and model versions");
    assert_eq!(model_a, model_b, "same model, byte for byte");
    let versions: Vec<u64> = scores_a
        .iter()
        .map(|s| s["model_version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "versions only grow with one worker"
    );
    assert!(versions.last().unwrap() > &0);
}

#[test]
fn bad_lines_are_counted_with_their_line_numbers_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    let good = |n: u32| {
        format!(
            r#"{{"type":"impression","id":"i{n}","ts":{},"user":"u{n}","item":"v1","ctx":{{"device":"ios"}}}}"#,
            1000 + n
        )
    };
    writeln!(file, "{}", good(1)).unwrap(); // line 1
    writeln!(file, "this is not json").unwrap(); // 2
    writeln!(file, r#"{{"type":"click","id":"i1","ts":"soon"}}"#).unwrap(); // 3
    writeln!(file, r#"{{"type":"click","id":"i1","ts":NaN}}"#).unwrap(); // 4
    writeln!(file, r#"{{"type":"purchase","id":"i1","ts":1500}}"#).unwrap(); // 5
    writeln!(
        file,
        "{{\"type\":\"impression\",\"junk\":\"{}\"}}",
        "x".repeat(10 << 20)
    )
    .unwrap(); // 6: 10 MB
    writeln!(file, "{}", good(2)).unwrap(); // 7
    writeln!(file, r#"{{"type":"click","id":"i2","ts":1010}}"#).unwrap(); // 8
    drop(file);
    let dead = dir.path().join("dead.jsonl");
    let report = replay_json(&input, &["--dead-letters", dead.to_str().unwrap()]);
    assert_eq!(report["bad_events"], 5, "{report}");
    assert_eq!(report["impressions"], 2);
    assert_eq!(report["positive_click"], 1);
    let lines: Vec<u64> = report["bad_event_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
    let reasons = &report["bad_events_by_reason"];
    assert_eq!(reasons["malformed_json"], 1);
    assert_eq!(reasons["invalid_field"], 2);
    assert_eq!(reasons["unknown_type"], 1);
    assert_eq!(reasons["oversized"], 1);
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 5);
    assert_eq!(letters[0]["payload"], "this is not json");
    assert_eq!(letters[0]["source"]["offset"], 2);
    assert!(
        letters[1]["error"].as_str().unwrap().contains("`ts`"),
        "{}",
        letters[1]
    );
}

#[test]
fn several_workers_score_every_impression_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 30_000, 11);
    // The label join decides the same labels whichever worker owns an impression, and
    // however its records crossed (2 workers: containers bound for one worker; 4: staged
    // per worker).
    const COUNTERS: [&str; 9] = [
        "positive_click",
        "positive_like",
        "negative_fast_skip",
        "negative_expired",
        "slow_skip",
        "duplicate_feedback",
        "late_feedback",
        "orphan_feedback",
        "duplicate_impressions",
    ];
    let one = replay_json(&input, &["--workers", "1"]);
    assert!(one["positive_click"].as_u64().unwrap() > 100);
    for workers in ["2", "4"] {
        let scores = dir.path().join(format!("scores-{workers}.jsonl"));
        let report = replay_json(
            &input,
            &[
                "--workers",
                workers,
                "--scores-out",
                scores.to_str().unwrap(),
            ],
        );
        assert_eq!(report["impressions"], 30_000);
        assert_eq!(report["examples"], 30_000);
        let ids: HashSet<String> = std::fs::read_to_string(&scores)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 30_000, "{workers} workers");
        assert!(report["normalized_entropy"].as_f64().unwrap() < 1.0);
        for counter in COUNTERS {
            assert_eq!(
                report[counter], one[counter],
                "{counter}, {workers} workers"
            );
        }
    }
}

/// `--examples-out` is the file twin of the `examples` topic: one record per labelled
/// impression, served exactly as scored, with its hashed features and its label.
#[test]
fn gh_3_examples_out_holds_every_labelled_impression_as_served() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 8_000, 5);
    let scores = dir.path().join("scores.jsonl");
    let examples = dir.path().join("examples.jsonl");
    let report = replay_json(
        &input,
        &[
            "--scores-out",
            scores.to_str().unwrap(),
            "--examples-out",
            examples.to_str().unwrap(),
        ],
    );
    let read = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let served: std::collections::HashMap<String, f64> = read(&scores)
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let examples = read(&examples);
    assert_eq!(examples.len() as u64, report["examples"].as_u64().unwrap());
    let ids: HashSet<&str> = examples.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), examples.len(), "one example per impression");
    let mut positives = 0;
    for e in &examples {
        let id = e["id"].as_str().unwrap();
        assert_eq!(e["served"].as_f64().unwrap(), served[id], "{e}");
        let label = e["label"].as_u64().unwrap();
        let source = e["label_source"].as_str().unwrap();
        assert_eq!(label == 1, source == "click" || source == "like", "{e}");
        positives += label;
        let features = e["features"].as_array().unwrap();
        assert!(features.len() >= 10, "{e}");
        assert!(e["label_ts"].as_i64().unwrap() >= e["impression_ts"].as_i64().unwrap());
    }
    let reported =
        report["positive_click"].as_u64().unwrap() + report["positive_like"].as_u64().unwrap();
    assert!(positives > 0);
    assert_eq!(positives, reported);
}

/// The recent window holds the last labels final in event time. When the input ends, every
/// window still open closes at once, undecided: a burst of negatives (the last 30 minutes'
/// expiries) whose positives came before it. They count overall but stay out of the
/// window, or its calibration would read 15–40% high at the end of every replay.
#[test]
fn the_recent_window_leaves_out_the_labels_closed_by_the_end_of_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    // 5 impressions per second of event time: 100 minutes, the last 30 of them open at the end.
    run_ok(
        ctrflow()
            .args([
                "gen",
                "--count",
                "30000",
                "--seed",
                "11",
                "--event-rate",
                "5",
                "--out",
            ])
            .arg(&input),
    );
    let config = dir.path().join("window.toml");
    std::fs::write(&config, "[metrics]\nwindow = 5000\nwindow_slices = 5\n").unwrap();
    let examples = dir.path().join("examples.jsonl");
    let metrics = dir.path().join("metrics.jsonl");
    let report = replay_json(
        &input,
        &[
            "--config",
            config.to_str().unwrap(),
            "--examples-out",
            examples.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
        ],
    );
    let last_event = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
        })
        .max()
        .unwrap();
    // With one worker, the examples are written in the order the metrics saw them. A window
    // closed by an event has its deadline before that event; one still open at the end, at
    // or after the last event.
    let labels: Vec<(bool, bool)> = std::fs::read_to_string(&examples)
        .unwrap()
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let at_end =
                e["label_source"] == "expired" && e["label_ts"].as_i64().unwrap() >= last_event;
            (e["label"] == 1, at_end)
        })
        .collect();
    let in_time: Vec<bool> = labels.iter().filter(|l| !l.1).map(|l| l.0).collect();
    let at_end = labels.len() - in_time.len();
    assert!(
        at_end > 3000,
        "{at_end} windows closed by the end of the input"
    );
    assert_eq!(report["examples"].as_u64().unwrap() as usize, labels.len());
    // The window: full slices of 1000 and the one being filled, 4000..=5000 labels.
    let current = (in_time.len() - 1) % 1000 + 1;
    let window = &in_time[in_time.len() - (4000 + current)..];
    let recent = &report["recent"];
    let positives = window.iter().filter(|&&p| p).count();
    assert_eq!(
        recent["count"].as_u64().unwrap() as usize,
        window.len(),
        "{recent}"
    );
    assert_eq!(
        recent["positives"].as_u64().unwrap() as usize,
        positives,
        "{recent}"
    );
    // The same number of labels counting the end's: none of them positive.
    let with_end = &labels[labels.len() - window.len()..];
    assert!(with_end.iter().filter(|l| l.0).count() < positives / 2);
    let calibration = recent["calibration"].as_f64().unwrap();
    assert!((0.8..1.25).contains(&calibration), "{recent}");
    // The metrics over time end with the same window.
    let records = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(records.lines().last().unwrap()).unwrap();
    assert_eq!(last["examples"], report["examples"]);
    assert_eq!(
        (&last["recent"]["count"], &last["recent"]["positives"]),
        (&recent["count"], &recent["positives"])
    );
}

/// `--input` can be a pipe (`/dev/stdin`, a process substitution): the file is read once,
/// front to back, and the replay is the replay of the file.
#[test]
fn a_replay_from_a_pipe_is_the_replay_of_the_file() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 5_000, 7);
    let model_file = dir.path().join("file.bin");
    let from_file = replay_json(&input, &["--model-out", model_file.to_str().unwrap()]);
    let model_pipe = dir.path().join("pipe.bin");
    let mut child = ctrflow()
        .args(["replay", "--json", "--input", "/dev/stdin", "--model-out"])
        .arg(&model_pipe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(&input).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_pipe: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["events", "impressions", "logloss", "auc", "bad_events"] {
        assert_eq!(from_pipe[key], from_file[key], "{key}");
    }
    assert_eq!(
        std::fs::read(model_pipe).unwrap(),
        std::fs::read(model_file).unwrap(),
        "the same model, byte for byte"
    );
}

#[test]
fn a_missing_input_is_a_clear_error() {
    let output = ctrflow()
        .args(["replay", "--input", "/nonexistent/events.jsonl"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/events.jsonl"), "{stderr}");
}

/// Issue 6: `--baseline` prints a batch logistic regression beside the online model on
/// the same later part of a time split.
#[test]
fn gh_6_baseline_is_compared_with_the_online_model_on_the_same_split() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 6_000, 4);
    let report = replay_json(&input, &["--baseline", "--baseline-max-rows", "2000"]);
    let b = &report["baseline"];
    assert_eq!(
        b["train_examples"].as_u64().unwrap() + b["test_examples"].as_u64().unwrap(),
        report["examples"].as_u64().unwrap(),
        "{b}"
    );
    assert_eq!(b["trained_on"], 2000, "{b}");
    let fields: Vec<&str> = b["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for field in ["device", "country", "position"] {
        assert!(fields.contains(&field), "{fields:?}");
    }
    assert!(!fields.contains(&"_p_true"));
    for model in ["batch", "online", "base_rate"] {
        assert_eq!(b[model]["count"], b["test_examples"], "{model}: {b}");
        let logloss = b[model]["logloss"].as_f64().unwrap();
        assert!(logloss > 0.05 && logloss < 0.3, "{model} {logloss}");
    }
    // Device, country and position carry signal: the batch model beats the base rate.
    assert!(b["batch"]["auc"].as_f64().unwrap() > 0.55, "{b}");
    assert_eq!(b["base_rate"]["auc"].as_f64().unwrap(), 0.5, "{b}");
    // The online model's part is the progressive metrics of those impressions: a subset
    // of the whole run's examples.
    assert!(b["online"]["count"].as_u64() < report["overall"]["count"].as_u64());

    let human = run_ok(
        ctrflow()
            .args(["replay", "--no-progress", "--baseline", "--input"])
            .arg(&input),
    );
    let text = String::from_utf8(human.stdout).unwrap();
    for needle in ["batch baseline", "online (progressive)", "base rate"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

/// The global aggregates of `replay --json` (issue 4, differential) equal a brute-force
/// count over the same file: the impressions in the window's buckets at the last
/// watermark, labelled as the contract says; with 1 worker and with 2.
#[test]
fn gh_4_replay_aggregates_match_a_brute_force_count() {
    use std::collections::{BTreeMap, HashMap};
    let dir = tempfile::tempdir().unwrap();
    // The stream's first 25k events, about 10 minutes of event time (the whole file ends
    // with the feedback of its last impressions, up to an hour later): a 5-minute window
    // slides over half of it.
    let full = generate(dir.path(), "full.jsonl", 20_000, 5);
    let input = dir.path().join("events.jsonl");
    let text = std::fs::read_to_string(&full).unwrap();
    let prefix: String = text.lines().take(25_000).flat_map(|l| [l, "\n"]).collect();
    std::fs::write(&input, prefix).unwrap();
    let (window_ms, bucket_ms, top_k) = (300_000i64, 60_000i64, 5usize);
    // Labels final within 4 minutes: every click arrives while its minute is in the window.
    let (label_window, fast_skip) = (240_000i64, 2000u64);
    let config = dir.path().join("aggregates.toml");
    std::fs::write(
        &config,
        format!(
            "[label]\nwindow_ms = {label_window}\n\
             [aggregates]\nenabled = true\nwindow_ms = {window_ms}\nbucket_ms = {bucket_ms}\ntop_k = {top_k}\n"
        ),
    )
    .unwrap();

    // Brute force: each impression's label is its first decisive feedback within the
    // attribution window (click or like: positive; skip under 2 s: negative), else negative.
    let mut impressions: Vec<(i64, String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut label: Vec<Option<bool>> = Vec::new();
    let mut max_ts = i64::MIN;
    for line in std::fs::read_to_string(&input).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = e["ts"].as_i64().unwrap();
        max_ts = max_ts.max(ts);
        let id = e["id"].as_str().unwrap().to_owned();
        match e["type"].as_str().unwrap() {
            "impression" => {
                let category = e["ctx"]["category"].as_str().unwrap_or("").to_owned();
                let item = e["item"].as_str().unwrap().to_owned();
                index.insert(id, impressions.len());
                impressions.push((ts, category, item));
                label.push(None);
            }
            kind => {
                let Some(&i) = index.get(&id) else { continue };
                if label[i].is_some() || ts - impressions[i].0 > label_window {
                    continue;
                }
                match kind {
                    "click" | "like" => label[i] = Some(true),
                    "skip" if e["dwell_ms"].as_u64().unwrap() < fast_skip => label[i] = Some(false),
                    _ => {}
                }
            }
        }
    }
    // The replay's last watermark: default lateness 2 s, steps of 100 ms.
    let watermark = (max_ts - 2000) / 100 * 100;
    let mut categories: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut items: HashMap<&str, u64> = HashMap::new();
    for ((ts, category, item), label) in impressions.iter().zip(&label) {
        let retire = (ts.div_euclid(bucket_ms) + 1) * bucket_ms + window_ms;
        if retire <= watermark {
            continue;
        }
        let clicked = label.unwrap_or(false);
        let c = categories.entry(category).or_default();
        c.0 += 1;
        c.1 += u64::from(clicked);
        if clicked {
            *items.entry(item).or_default() += 1;
        }
    }
    let mut top: Vec<(i64, &str)> = items.iter().map(|(i, n)| (-(*n as i64), *i)).collect();
    top.sort();
    top.truncate(top_k);
    assert!(
        categories.len() > 10 && top.len() == top_k,
        "{categories:?} {top:?}"
    );
    let shown: u64 = categories.values().map(|c| c.0).sum();
    assert!(
        shown > 1000 && shown < impressions.len() as u64 / 2,
        "the window holds part of the stream: {shown}"
    );

    for workers in ["1", "2"] {
        let config = config.to_str().unwrap();
        let report = replay_json(&input, &["--config", config, "--workers", workers]);
        let a = &report["aggregates"];
        assert_eq!(a["watermark"], watermark, "{a}");
        assert_eq!(a["late"], 0, "{a}");
        let got: BTreeMap<&str, (u64, u64)> = a["category_ctr_1h"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (n, k) = (
                    c["impressions"].as_u64().unwrap(),
                    c["clicks"].as_u64().unwrap(),
                );
                assert!((c["ctr"].as_f64().unwrap() - k as f64 / n as f64).abs() < 1e-12);
                (c["category"].as_str().unwrap(), (n, k))
            })
            .collect();
        assert_eq!(got, categories, "{workers} worker(s)");
        let got: Vec<(i64, &str)> = a["top_items_1h"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (-i["clicks"].as_i64().unwrap(), i["item"].as_str().unwrap()))
            .collect();
        assert_eq!(got, top, "{workers} worker(s)");
    }
}

/// Build point 4: pending impressions beyond `label.pending_memory_mb` leave memory for the
/// scratch store and come back when labelled. With 1 MiB (about 4,000 bodies) and a 6-hour
/// window over 20k impressions (about 13 minutes of event time, so every one stays
/// pending until the input ends), most bodies go out and come back, and the replay is the
/// same bit for bit: scores, model, metrics.
#[test]
fn gh_4_pending_impressions_beyond_the_memory_budget_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "events.jsonl", 20_000, 9);
    let run = |budget: Option<u64>, stubs: Option<u64>| {
        let name = format!("{budget:?}-{stubs:?}mb");
        let config = dir.path().join(format!("{name}.toml"));
        let budget = budget.map_or(String::new(), |mb| format!("pending_memory_mb = {mb}\n"))
            + &stubs.map_or(String::new(), |mb| {
                format!("pending_stubs_memory_mb = {mb}\n")
            });
        std::fs::write(&config, format!("[label]\nwindow_ms = 21600000\n{budget}")).unwrap();
        let scores = dir.path().join(format!("scores-{name}.jsonl"));
        let model = dir.path().join(format!("model-{name}.bin"));
        let report = replay_json(
            &input,
            &[
                "--config",
                config.to_str().unwrap(),
                "--scores-out",
                scores.to_str().unwrap(),
                "--model-out",
                model.to_str().unwrap(),
            ],
        );
        let scores = scores_without_emit_ts(&scores);
        (report, scores, std::fs::read(model).unwrap())
    };
    let (all_in, scores_in, model_in) = run(None, None);
    let (bounded, scores_out, model_out) = run(Some(1), None);
    assert_eq!(
        all_in["pending"]["written"], 0,
        "the default holds them all"
    );
    let pending = &bounded["pending"];
    let written = pending["written"].as_u64().unwrap();
    assert!(written > 5_000, "{pending}");
    // Each body left memory once and came back once: no thrashing.
    assert_eq!(pending["read_back"].as_u64().unwrap(), written, "{pending}");
    assert!(
        pending["peak_resident"].as_u64().unwrap()
            < all_in["pending"]["peak_resident"].as_u64().unwrap() / 2,
        "{pending} vs {}",
        all_in["pending"]
    );
    assert_eq!(scores_in.len(), 20_000);
    assert_eq!(scores_in, scores_out, "same scores and model versions");
    assert_eq!(model_in, model_out, "same model, byte for byte");
    for key in [
        "logloss",
        "auc",
        "calibration",
        "examples",
        "negative_expired",
        "positive_click",
    ] {
        assert_eq!(all_in[key], bounded[key], "{key}");
    }

    // Stubs too (gh-4): with 1 MiB for them (about 12,000), chunks of the 20,000 leave
    // memory, feedback finds theirs through the store, and nothing changes.
    let (stubs_out, scores_stubs, model_stubs) = run(Some(1), Some(1));
    let pending = &stubs_out["pending"];
    assert_eq!(
        all_in["pending"]["stubs_written"], 0,
        "the default holds them all"
    );
    assert!(
        pending["stubs_written"].as_u64().unwrap() > 2_000
            && pending["chunks_read_back"].as_u64().unwrap() >= 1
            && pending["peak_stubs_resident"].as_u64().unwrap() < 16_000,
        "{pending}"
    );
    assert_eq!(
        pending["stubs_resident"], 0,
        "all forgotten at the end: {pending}"
    );
    assert_eq!(scores_in, scores_stubs, "same scores and model versions");
    assert_eq!(model_in, model_stubs, "same model, byte for byte");
    for key in [
        "logloss",
        "auc",
        "calibration",
        "examples",
        "negative_expired",
        "positive_click",
        "duplicate_feedback",
        "late_feedback",
        "orphan_feedback",
    ] {
        assert_eq!(all_in[key], stubs_out[key], "{key}");
    }
}

/// The scores written to `path`, without `emit_ts` (wall-clock time, differs between runs).
fn scores_without_emit_ts(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("emit_ts");
            v
        })
        .collect()
}
