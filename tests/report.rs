//! `replay --metrics-out` and `ctrflow report`: the metrics over time of a stream with an
//! injected drift, plotted, rendered by headless Chromium (Debian's `chromium`;
//! `tests/deps.sh` installs it) and checked on the screenshot: the plots have data and
//! the alert markers show.
//!
//! The stream is small (debug builds are slow); the README quotes the same run on 1M
//! impressions with a release build.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::drift::{generate_drift, small_config};
use crate::util::{ctrflow, impression_ts, replay_json, run_ok};

/// Series colours of `src/report.rs` (`COLORS`, the first six) and the firing marker.
const SERIES: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
    [140, 86, 75],
    [227, 119, 194],
];
const FIRING: [u8; 3] = [220, 20, 20];

const WINDOW: (u32, u32) = (1200, 2600);

#[test]
fn metrics_over_time_are_recorded_and_the_report_shows_the_drift() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_drift(dir.path(), 60_000, 30_000, "base-ctr");
    let config = small_config(dir.path(), "[telemetry]\nmetrics_interval_ms = 60000\n");
    let metrics = dir.path().join("metrics.jsonl");
    let report = replay_json(
        &input,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
        ],
    );

    // One record per minute of event time, with what the replay report says at the end.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 30, "{} records", records.len());
    for pair in records.windows(2) {
        assert!(pair[0]["ts"].as_i64() < pair[1]["ts"].as_i64());
        assert!(pair[0]["impressions"].as_u64() <= pair[1]["impressions"].as_u64());
    }
    let last = records.last().unwrap();
    assert_eq!(last["impressions"], report["impressions"]);
    assert_eq!(last["examples"], report["examples"]);
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9
    };
    assert!(close(&last["overall"]["logloss"], &report["logloss"]));
    assert!(close(&last["overall"]["auc"], &report["auc"]));
    // Every alert of the run, each in the record of its own event time.
    let mut recorded = Vec::new();
    for r in &records {
        for a in r["alerts"].as_array().unwrap() {
            assert!(a["ts"].as_i64() < r["ts"].as_i64(), "{a} in {}", r["ts"]);
            assert!(
                a["ts"].as_i64() >= r["from"].as_i64(),
                "{a} in {}",
                r["from"]
            );
            recorded.push(a.clone());
        }
    }
    let alerts = report["alerts"].as_array().unwrap();
    assert!(!alerts.is_empty(), "the drift raised alerts: {report}");
    assert_eq!(&recorded, alerts);
    // The detectors' statistics are there, beside their thresholds.
    let stats = last["drift"].as_array().unwrap();
    for (detector, metric) in [
        ("adwin", "relative_logloss"),
        ("page_hinkley", "relative_logloss"),
        ("ratio_band", "calibration"),
        ("psi", "ctx.country"),
    ] {
        let s = stats
            .iter()
            .find(|s| s["detector"] == detector && s["metric"] == metric)
            .unwrap_or_else(|| panic!("{detector} {metric} in {stats:?}"));
        assert!(s["value"].as_f64().unwrap().is_finite(), "{s}");
    }
    // The loss of the served scores jumps with the doubled base rate.
    let drift_at = impression_ts(&input, 30_000);
    let mean_loss = |from: i64, to: i64| {
        let v: Vec<f64> = records
            .iter()
            .filter(|r| (from..to).contains(&r["ts"].as_i64().unwrap()))
            .filter_map(|r| r["interval"]["logloss"].as_f64())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let minute = 60_000;
    let before = mean_loss(drift_at - 10 * minute, drift_at);
    let after = mean_loss(drift_at + minute, drift_at + 6 * minute);
    assert!(
        after > before + 0.02,
        "logloss {before} before, {after} after"
    );

    // The page: self-contained, one plot per panel.
    let html_path = dir.path().join("report.html");
    let started = Instant::now();
    run_ok(
        ctrflow()
            .arg("report")
            .arg(&metrics)
            .arg("-o")
            .arg(&html_path),
    );
    let render_secs = started.elapsed().as_secs_f64();
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(html.matches("<svg").count(), 6, "six plots");
    for fetch in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!html.contains(fetch), "the page fetches nothing: {fetch}");
    }

    // Rendered headless: every plot has data, and the alert markers are drawn.
    let png = dir.path().join("report.png");
    let started = Instant::now();
    screenshot(&html_path, &png, dir.path());
    eprintln!(
        "report rendered in {render_secs:.2} s, screenshot in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let (width, height, pixels) = decode(&png);
    assert_eq!((width, height), WINDOW);
    let near = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 30);
    // Bands half a plot high: those with many pixels of a series colour hold plotted data.
    let band = 150;
    let mut bands_with_data = 0;
    let mut colours_seen = [false; SERIES.len()];
    let mut firing = 0;
    for b in 0..height / band {
        let mut coloured = 0;
        for y in b * band..(b + 1) * band {
            for x in 0..width {
                let i = ((y * width + x) * 3) as usize;
                let p = &pixels[i..i + 3];
                if let Some(k) = SERIES.iter().position(|&c| near(p, c)) {
                    coloured += 1;
                    colours_seen[k] = true;
                }
                firing += usize::from(near(p, FIRING));
            }
        }
        if coloured >= 300 {
            bands_with_data += 1;
        }
    }
    assert!(
        bands_with_data >= 8,
        "{bands_with_data} bands of the screenshot hold plotted lines"
    );
    assert!(
        colours_seen.iter().filter(|&&s| s).count() >= 5,
        "{colours_seen:?}"
    );
    // Vertical marker lines across the plots.
    assert!(firing >= 500, "{firing} pixels of alert markers");
}

/// Renders `html` with headless Chromium into `png`.
fn screenshot(html: &Path, png: &Path, dir: &Path) {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running chromium (Debian's `chromium` package; tests/deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(
                status.success() && png.exists(),
                "chromium failed: {status}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Width, height and RGB bytes of a PNG.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (info.width, info.height, rgb)
}
