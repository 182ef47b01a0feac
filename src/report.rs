//! `ctrflow report FILE -o report.html`: the metrics over time of a `--metrics-out` file
//! ([`crate::timeline`]) as one self-contained HTML page — people would rather look than
//! read.
//!
//! Plots are drawn by `plotters` into SVG and embedded inline: no script, no stylesheet or
//! font fetched, so the page opens anywhere (an attachment, an air-gapped laptop). Without
//! a font backend plotters writes `<text>` elements and the browser picks its own
//! sans-serif. Every plot shares the x axis (hours of event time since the first record)
//! and marks each alert with a vertical line: red when it fires, green when it resolves.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use ctrflow_dataflows::{Alert, AlertState, EventTime};
use plotters::prelude::*;

use crate::timeline::{self, Record};

/// Plot size, pixels.
const WIDTH: u32 = 1150;
const HEIGHT: u32 = 300;

/// Series colours: saturated and distinct from the alert markers' red and green.
const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(60, 60, 60),
    RGBColor(0, 0, 160),
    RGBColor(255, 200, 0),
    RGBColor(160, 0, 160),
    RGBColor(120, 180, 255),
];
const FIRING: RGBColor = RGBColor(220, 20, 20);
const RESOLVED: RGBColor = RGBColor(20, 160, 60);

/// What [`write()`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Records read.
    pub records: usize,
    /// Alerts marked.
    pub alerts: usize,
    /// Bytes of HTML written.
    pub bytes: usize,
}

/// Reads the records of `input` and writes the page to `output`.
pub fn write(input: &Path, output: &Path) -> anyhow::Result<Written> {
    let records = timeline::read(input)?;
    if records.is_empty() {
        anyhow::bail!(
            "{} holds no metrics records: was the replay shorter than one telemetry.metrics_interval_ms?",
            input.display()
        );
    }
    let title = input.file_name().map_or_else(
        || input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let html = render(&records, &title)?;
    std::fs::write(output, &html).with_context(|| format!("writing {}", output.display()))?;
    Ok(Written {
        records: records.len(),
        alerts: records.iter().map(|r| r.alerts.len()).sum(),
        bytes: html.len(),
    })
}

/// One line of a plot.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// One plot: lines, horizontal reference lines, and the alert markers.
struct Plot<'a> {
    title: &'a str,
    y_desc: &'a str,
    series: Vec<Series>,
    /// `(y, label)`: thresholds and targets, dashed.
    references: Vec<(f64, String)>,
}

/// The page for `records` (non-empty).
pub fn render(records: &[Record], title: &str) -> anyhow::Result<String> {
    let origin = records.first().map_or(0, |r| r.from);
    let hours = |ts: EventTime| (ts - origin) as f64 / 3_600_000.0;
    let alerts: Vec<&Alert> = records.iter().flat_map(|r| &r.alerts).collect();
    let x_end = records.last().map_or(1.0, |r| hours(r.ts)).max(1e-3);
    let at = |f: &dyn Fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (hours(r.ts), v)))
            .collect()
    };
    let series = |name: &str, f: &dyn Fn(&Record) -> Option<f64>| Series {
        name: name.to_owned(),
        points: at(f),
    };

    let mut plots = vec![
        Plot {
            title: "Progressive logloss",
            y_desc: "logloss (nats)",
            series: vec![
                series("this interval", &|r| r.interval.logloss),
                series("recent window", &|r| r.recent.logloss),
                series("all examples", &|r| r.overall.logloss),
            ],
            references: Vec::new(),
        },
        Plot {
            title: "Progressive AUC",
            y_desc: "AUC",
            series: vec![
                series("recent window", &|r| r.recent.auc),
                series("all examples", &|r| r.overall.auc),
            ],
            references: Vec::new(),
        },
        Plot {
            title: "Calibration (mean served score / observed CTR)",
            y_desc: "calibration",
            series: vec![
                series("recent window", &|r| r.recent.calibration),
                series("all examples", &|r| r.overall.calibration),
            ],
            references: vec![(1.0, "calibrated".to_owned())],
        },
        Plot {
            title: "Throughput (wall clock)",
            y_desc: "per second",
            series: vec![
                series("impressions/s", &|r| Some(r.impressions_per_sec)),
                series("examples/s", &|r| Some(r.examples_per_sec)),
            ],
            references: Vec::new(),
        },
    ];

    // Every detector's statistic relative to its threshold, so they share one axis.
    let mut drift: Vec<Series> = Vec::new();
    let mut psi: Vec<Series> = Vec::new();
    let mut psi_threshold = f64::INFINITY;
    for r in records {
        let x = hours(r.ts);
        for s in &r.drift {
            let name = format!("{} {}", s.detector, s.metric);
            if s.detector == "psi" && s.metric.starts_with("ctx.") {
                push_point(&mut psi, &s.metric, x, s.value);
                if let Some(t) = s.threshold {
                    psi_threshold = psi_threshold.min(t);
                }
            }
            if let Some(v) = s.threshold.and_then(|t| relative(&s.detector, s.value, t)) {
                push_point(&mut drift, &name, x, v);
            }
        }
    }
    plots.push(Plot {
        title: "Drift statistics relative to their alert thresholds",
        y_desc: "statistic / threshold",
        series: drift,
        references: vec![(1.0, "alert threshold".to_owned())],
    });
    plots.push(Plot {
        title: "Feature drift: PSI of each ctx field against its reference",
        y_desc: "PSI",
        series: psi,
        references: if psi_threshold.is_finite() {
            vec![(
                psi_threshold,
                format!("smallest alert threshold ({psi_threshold:.3})"),
            )]
        } else {
            Vec::new()
        },
    });

    let mut svgs = Vec::with_capacity(plots.len());
    for plot in &plots {
        svgs.push(draw(plot, x_end, &alerts, &hours)?);
    }
    Ok(page(records, title, &alerts, &plots, &svgs, &hours))
}

/// Where a statistic stands against its threshold, 1.0 at the threshold, larger when worse:
/// the calibration ratio in log space (either side of 1), the feedback rate by how far it
/// fell towards zero, the others as a plain ratio.
fn relative(detector: &str, value: f64, threshold: f64) -> Option<f64> {
    let v = match detector {
        "ratio_band" if value > 0.0 && threshold > 0.0 && threshold != 1.0 => {
            value.ln() / threshold.ln()
        }
        "feedback_rate" if threshold < 1.0 => (1.0 - value) / (1.0 - threshold),
        _ if threshold > 0.0 => value / threshold,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

fn push_point(series: &mut Vec<Series>, name: &str, x: f64, y: f64) {
    if !y.is_finite() {
        return;
    }
    match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => series.push(Series {
            name: name.to_owned(),
            points: vec![(x, y)],
        }),
    }
}

/// The y range of `plot`'s lines and references, padded.
fn y_range(plot: &Plot<'_>) -> (f64, f64) {
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(plot.references.iter().map(|r| r.0));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-6);
    (lo - pad, hi + pad)
}

/// Width of the legend beside each plot, pixels.
const LEGEND: u32 = 250;

/// One plot as an SVG document: the chart, and its legend to the right of it (a legend
/// inside would hide lines).
fn draw(
    plot: &Plot<'_>,
    x_end: f64,
    alerts: &[&Alert],
    hours: &dyn Fn(EventTime) -> f64,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (area, legend) = root.split_horizontally(WIDTH - LEGEND);
        let (y0, y1) = y_range(plot);
        let mut chart = ChartBuilder::on(&area)
            .caption(plot.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_end, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("event time, hours since the first record")
            .y_desc(plot.y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let mut entries: Vec<(String, ShapeStyle)> = Vec::new();
        for (i, s) in plot.series.iter().enumerate() {
            let style = COLORS[i % COLORS.len()].stroke_width(2);
            chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
            entries.push((s.name.clone(), style));
        }
        for (y, label) in &plot.references {
            chart.draw_series(DashedLineSeries::new(
                [(0.0, *y), (x_end, *y)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?;
            entries.push((format!("- - {label}"), BLACK.stroke_width(1)));
        }
        for (state, color, name) in [
            (AlertState::Firing, FIRING, "alert fired"),
            (AlertState::Resolved, RESOLVED, "alert resolved"),
        ] {
            let lines: Vec<_> = alerts
                .iter()
                .filter(|a| a.state == state)
                .map(|a| {
                    let x = hours(a.ts);
                    PathElement::new(vec![(x, y0), (x, y1)], color.stroke_width(2))
                })
                .collect();
            if !lines.is_empty() {
                chart.draw_series(lines)?;
                entries.push((name.to_owned(), color.stroke_width(2)));
            }
        }
        for (i, (name, style)) in entries.iter().enumerate() {
            let y = 40 + 18 * i as i32;
            if y > HEIGHT as i32 - 10 {
                break;
            }
            legend.draw(&PathElement::new(vec![(5, y), (30, y)], *style))?;
            legend.draw(&Text::new(
                name.as_str(),
                (36, y - 7),
                ("sans-serif", 13).into_font(),
            ))?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// The HTML page around the plots.
fn page(
    records: &[Record],
    title: &str,
    alerts: &[&Alert],
    plots: &[Plot<'_>],
    svgs: &[String],
    hours: &dyn Fn(EventTime) -> f64,
) -> String {
    let mut h = String::with_capacity(svgs.iter().map(String::len).sum::<usize>() + 16 * 1024);
    let first = &records[0];
    let last = &records[records.len() - 1];
    let fmt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.4}"));
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>ctrflow report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 20px; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f2f2f2; }}
figure {{ margin: 0 0 12px; width: {WIDTH}px; height: {HEIGHT}px; }}
.firing {{ color: #c00; }} .resolved {{ color: #080; }}
</style></head><body>
<h1>ctrflow report: {title}</h1>
<p>{n} records of {interval:.0} s of event time, from {from} to {to} UTC (x axes: hours since {from}).
Red vertical lines: alerts firing; green: resolved.</p>
<table><tr><th>impressions</th><th>examples</th><th>logloss</th><th>normalized entropy</th><th>AUC</th><th>calibration</th><th>recent logloss</th><th>recent AUC</th><th>wall time</th></tr>
<tr><td>{imp}</td><td>{ex}</td><td>{ll}</td><td>{ne}</td><td>{auc}</td><td>{cal}</td><td>{rll}</td><td>{rauc}</td><td>{wall:.1} s</td></tr></table>
"#,
        title = escape(title),
        n = records.len(),
        interval = (first.ts - first.from) as f64 / 1000.0,
        from = utc(first.from),
        to = utc(last.ts),
        imp = last.impressions,
        ex = last.examples,
        ll = fmt(last.overall.logloss),
        ne = fmt(last.overall.normalized_entropy),
        auc = fmt(last.overall.auc),
        cal = fmt(last.overall.calibration),
        rll = fmt(last.recent.logloss),
        rauc = fmt(last.recent.auc),
        wall = last.wall_secs,
    );
    let _ = write!(
        h,
        "<h2>Alerts ({})</h2>\n<table><tr><th>event time (UTC)</th><th>hours</th><th>state</th><th>kind</th><th>severity</th><th>detector</th><th>metric</th><th>value</th><th>threshold</th><th>message</th></tr>\n",
        alerts.len()
    );
    for a in alerts {
        let state = match a.state {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        let _ = writeln!(
            h,
            "<tr class=\"{state}\"><td>{}</td><td>{:.2}</td><td>{state}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            utc(a.ts),
            hours(a.ts),
            timeline::kind_name(a.kind),
            a.severity,
            escape(&a.detector),
            escape(&a.metric),
            a.value,
            a.threshold,
            escape(&a.message),
        );
    }
    h.push_str("</table>\n");
    for (plot, svg) in plots.iter().zip(svgs) {
        let _ = writeln!(h, "<figure title=\"{}\">{svg}</figure>", escape(plot.title));
    }
    h.push_str("</body></html>\n");
    h
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of epoch milliseconds (proleptic Gregorian, UTC).
fn utc(ms: EventTime) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_763_800_000_123), "2025-11-22 08:26:40");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn statistics_are_relative_to_their_thresholds() {
        assert_eq!(relative("psi", 0.2, 0.1), Some(2.0));
        assert!((relative("ratio_band", 0.8, 0.8).unwrap() - 1.0).abs() < 1e-12);
        assert!((relative("ratio_band", 1.25, 1.25).unwrap() - 1.0).abs() < 1e-12);
        assert!(relative("ratio_band", 1.0, 1.25).unwrap().abs() < 1e-12);
        assert!((relative("feedback_rate", 0.2, 0.2).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(relative("feedback_rate", 1.0, 0.2), Some(0.0));
        assert_eq!(relative("adwin", 0.01, 0.0), None);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
