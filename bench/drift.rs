//! Per-observation cost of the drift detectors, in isolation: no dataflow, no decoding, one
//! thread. A replay spends about a fifth of its time on drift detection (session 13: 2
//! workers 2.05 s with `[drift]` on, 1.48 s with it off, on the 2M-impression stream), and
//! wall-clock A/B runs on these machines are too noisy to price one detector at a time:
//! this bench does.
//!
//! The stream: impressions 40 ms apart with served scores around a 4% CTR, each followed by
//! its final label as the label join emits it (a click 5 s later with the score's
//! probability, else a fast skip 1 s later for a third of them, else the expiry 30 min
//! later), in 20 segments, merged in event time as the detect operator hands them over
//! (runs of 1,024 observations, then `advance` to the next one's time). The detectors are
//! first warmed on 300,000 impressions (past every warm-up); each iteration then observes
//! the next 100,000 impressions and their labels on a copy of the warmed detectors.
//!
//! - `drift/all`: `[drift]` as configured by default.
//! - `drift/{concept,segments,calibration,score,feedback}`: that detector alone.
//! - `drift/none`: every detector off (what the bookkeeping around them costs).
//!
//! Throughput is in impressions (each with its label: two observations). Data drift is
//! fed per-worker summaries of decoded `ctx` values and is priced in the replay, not here.
//! Run:
//!
//! ```text
//! cargo bench --bench drift -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use compact_str::CompactString;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ctrflow::drift::{Drift, DriftConfig};
use ctrflow_dataflows::detector::{Detector, Observation};
use ctrflow_dataflows::record::{EventTime, LabelSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WARM: usize = 300_000;
const MEASURED: usize = 100_000;
const WINDOW_MS: u64 = 30 * 60 * 1000;
/// Observations handed over per `observe_all`, as the detect operator does per ready run.
const RUN: usize = 1024;

/// Impressions and their labels, in event time (impressions before labels at equal times).
fn stream(impressions: usize) -> Vec<Observation> {
    let mut rng = StdRng::seed_from_u64(7);
    let segments: Vec<CompactString> = (0..20).map(|s| format!("cat{s}").into()).collect();
    let mut keyed = Vec::with_capacity(2 * impressions);
    for k in 0..impressions {
        let ts = 1_763_800_000_000 + 40 * k as EventTime;
        let score = (0.04 * (rng.random::<f64>() * 2.0 - 1.0).exp()) as f32;
        let (label, after) = if rng.random_bool(f64::from(score)) {
            (LabelSource::Click, 5_000)
        } else if rng.random_bool(1.0 / 3.0) {
            (LabelSource::FastSkip, 1_000)
        } else {
            (LabelSource::Expired, WINDOW_MS as EventTime)
        };
        keyed.push(((ts, 0u8, k), Observation::Impression { ts, score }));
        let label = Observation::Label {
            id: 0,
            label_ts: ts + after,
            at_input_end: false,
            served: score,
            label,
            segment: segments[rng.random_range(0..segments.len())].clone(),
        };
        keyed.push(((ts + after, 1, k), label));
    }
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, o)| o).collect()
}

/// Hands `observations` over in runs, advancing to each run's last time, as the operator
/// does.
fn feed(
    drift: &mut Drift,
    observations: &[Observation],
    alerts: &mut Vec<ctrflow_dataflows::detector::Alert>,
) {
    for run in observations.chunks(RUN) {
        drift.observe_all(run.iter());
        if let Some(last) = run.last() {
            drift.advance(last.ts(), alerts);
        }
        alerts.clear();
    }
}

/// `[drift]` with only `keep` enabled (`None`: all of them as by default; `Some("")`: none).
fn config(keep: Option<&str>) -> DriftConfig {
    let mut config = DriftConfig::default();
    if let Some(keep) = keep {
        config.concept.enabled = keep == "concept";
        config.segments.enabled = keep == "segments";
        config.calibration.enabled = keep == "calibration";
        config.score.enabled = keep == "score";
        config.feedback.enabled = keep == "feedback";
        config.data.enabled = false;
    }
    config
}

fn detectors(c: &mut Criterion) {
    let all = stream(WARM + MEASURED);
    // The observations of the measured impressions: everything after the warm part's last.
    let split = all
        .iter()
        .position(|o| matches!(o, Observation::Impression { ts, .. } if *ts >= 1_763_800_000_000 + 40 * WARM as EventTime))
        .expect("measured impressions");
    let (warm, measured) = all.split_at(split);
    let mut group = c.benchmark_group("drift");
    group.sample_size(10);
    group.throughput(Throughput::Elements(MEASURED as u64));
    let cases = [
        ("all", None),
        ("concept", Some("concept")),
        ("segments", Some("segments")),
        ("calibration", Some("calibration")),
        ("score", Some("score")),
        ("feedback", Some("feedback")),
        ("none", Some("")),
    ];
    for (name, keep) in cases {
        let mut warmed = Drift::new(&config(keep), WINDOW_MS);
        let mut alerts = Vec::new();
        feed(&mut warmed, warm, &mut alerts);
        group.bench_function(name, |b| {
            b.iter_batched(
                || (warmed.clone(), Vec::new()),
                |(mut drift, mut alerts)| {
                    feed(&mut drift, measured, &mut alerts);
                    black_box(drift)
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, detectors);
criterion_main!(benches);
