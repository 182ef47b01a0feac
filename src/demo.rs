//! `ctrflow demo`: everything in one process — a Kafka-protocol broker (librdkafka's
//! `MockCluster`, real Kafka over TCP on 127.0.0.1), the generator producing events with
//! a concept drift half way, and the worker of `ctrflow run` consuming them.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ctrflow_connectors::kafka::{KafkaConfig, MockCluster};

use crate::config::PipelineConfig;
use crate::generator::{DriftKind, GenConfig, GenStats};
use crate::produce;
use crate::run::{self, Progress, RunOptions, RunReport};
use crate::telemetry::{self, Health};

/// Events the demo's generator may be ahead of the worker.
const MAX_AHEAD: u64 = 50_000;

/// What the demo was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Impressions to generate (feedback events come in addition).
    pub impressions: u64,
    /// Timely worker threads.
    pub workers: usize,
    /// Partitions of the `events` topic.
    pub partitions: i32,
    /// Generator seed.
    pub seed: u64,
    /// Stops the demo early (Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`telemetry.listen`); empty:
    /// nowhere.
    pub listen: String,
    /// Where the worker writes its metrics over time (`telemetry.metrics_out`).
    pub metrics_out: Option<std::path::PathBuf>,
}

/// What the demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// The broker's address while it ran.
    pub bootstrap: String,
    /// What was generated.
    pub generated: GenStats,
    /// The worker's report.
    pub run: RunReport,
}

/// Runs the demo, drawing a progress line on stderr.
pub fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka broker")?;
    let bootstrap = cluster.bootstrap_servers();
    let mut config = PipelineConfig::default();
    config.kafka.brokers = bootstrap.clone();
    config.kafka.group_id = "ctrflow-demo".to_owned();
    config.kafka.consumer.idle_timeout_ms = 500;
    config.telemetry.listen.clone_from(&options.listen);
    if let Some(path) = &options.metrics_out {
        config.telemetry.metrics_out = path.display().to_string();
    }
    // The same telemetry server as `ctrflow run`, started before the workers (they take
    // their histogram handles from the recorder).
    let health = Arc::new(Health::default());
    let server = if options.listen.is_empty() {
        None
    } else {
        let server =
            telemetry::Server::start(&options.listen, telemetry::install()?, Arc::clone(&health))
                .with_context(|| format!("serving metrics on {} (--listen)", options.listen))?;
        eprintln!("Prometheus metrics at http://{}/metrics", server.addr());
        Some(server)
    };
    for (topic, partitions) in [
        (&config.kafka.topics.events, options.partitions),
        (&config.kafka.topics.scores, options.partitions),
        (&config.kafka.topics.dead_letters, 1),
        (&config.kafka.topics.alerts, 1),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    eprintln!("Kafka-protocol broker (in-process) listening at {bootstrap}");
    eprintln!(
        "  watch the scores with: kcat -b {bootstrap} -C -t {} -o beginning",
        config.kafka.topics.scores
    );

    let generator = GenConfig {
        count: options.impressions,
        seed: options.seed,
        drift_at: Some(options.impressions / 2),
        // Flipped items alone are seen only per category, tens of thousands of impressions
        // after the drift (README § Drift alerts); with the base rate doubled too, the
        // overall alerts show up live a few thousand impressions after it.
        drift_kinds: vec![DriftKind::FlipItems, DriftKind::BaseCtr],
        ..GenConfig::default()
    };
    let producer = KafkaConfig {
        brokers: bootstrap.clone(),
        ..KafkaConfig::default()
    };
    let events_topic = config.kafka.topics.events.clone();
    let worker_stop = Arc::new(AtomicBool::new(false));
    let running = run::start(&RunOptions {
        config: config.clone(),
        workers: options.workers,
        stop: Arc::clone(&worker_stop),
    })?;
    let status = Arc::clone(running.status());

    // The generator stays at most MAX_AHEAD events ahead of the worker: the in-process
    // broker keeps a bounded log per partition, and a reader that falls further behind
    // would find its next messages already deleted.
    let produced = Arc::new(AtomicU64::new(0));
    let mut producing = Some({
        let produced = Arc::clone(&produced);
        let stop = Arc::clone(&options.stop);
        let status = Arc::clone(&status);
        std::thread::Builder::new()
            .name("demo-generator".to_owned())
            .spawn(move || {
                let pace = |sent: u64| {
                    while sent > status.events.load(Ordering::Relaxed) + MAX_AHEAD
                        && !stop.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                };
                produce::produce_paced(
                    &generator,
                    &producer,
                    &events_topic,
                    None,
                    &stop,
                    &produced,
                    &pace,
                )
            })
            .context("starting the generator")?
    });
    let line = ProgressLine::new();
    let mut generated = None;
    let mut caught_up_since: Option<Instant> = None;
    let mut last_nonzero: Option<Instant> = None;
    let mut alerts_shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let progress = status.snapshot(&config);
        // Each drift alert as a line above the progress line, as it is raised.
        for alert in status.alerts_after(alerts_shown) {
            alerts_shown += 1;
            line.println(&format!(
                "{} (after {} events)",
                crate::drift::sinks::text(&alert),
                progress.events
            ));
        }
        line.draw(&progress);
        if server.is_some() {
            health.set_consuming(status.consuming());
            // Counting non-zero weights scans the model: every 5 s, as `run` does.
            let nonzero = last_nonzero.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if nonzero {
                last_nonzero = Some(Instant::now());
            }
            telemetry::publish(&running.metrics(nonzero, &health));
        }
        if let Some(handle) = producing.take_if(|h| h.is_finished()) {
            generated = Some(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the generator panicked"))??,
            );
        }
        let all_read = generated.is_some() && progress.events >= produced.load(Ordering::Relaxed);
        // Should the broker ever drop messages the worker did not read, stop anyway once
        // the worker has caught up for a while (the report shows what was read).
        let caught_up = generated.is_some() && progress.lag == Some(0);
        let since = *caught_up_since.get_or_insert_with(Instant::now);
        if !caught_up {
            caught_up_since = None;
        }
        let stalled = caught_up && since.elapsed() >= Duration::from_secs(5);
        if all_read || stalled || options.stop.load(Ordering::Relaxed) || running.is_finished() {
            break;
        }
    }
    worker_stop.store(true, Ordering::Relaxed);
    health.set_consuming(false);
    let report = running.join()?;
    drop(server);
    line.finish();
    let generated = match (generated, producing) {
        (Some(g), _) => g,
        (None, Some(handle)) => handle
            .join()
            .map_err(|_| anyhow::anyhow!("the generator panicked"))??,
        (None, None) => unreachable!("the generator is joined once"),
    };
    drop(cluster);
    Ok(DemoReport {
        bootstrap,
        generated,
        run: report,
    })
}

/// The live line: a spinner on a terminal, a log line every 5 s otherwise.
struct ProgressLine {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
}

impl ProgressLine {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    fn draw(&self, p: &Progress) {
        let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.d$}"));
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let message = format!(
            "{} events ({:.0}/s), {} scores, logloss {} (recent {}), AUC {}, lag {}, drift alerts {}",
            p.events,
            p.events as f64 / secs,
            p.scores,
            f(p.overall.logloss, 4),
            f(p.recent.logloss, 4),
            f(p.overall.auc, 3),
            p.lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            p.alerts,
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(message);
                bar.tick();
            }
            None if self.last_log.get().elapsed() >= Duration::from_secs(5) => {
                self.last_log.set(Instant::now());
                eprintln!("{message}");
            }
            None => {}
        }
    }

    /// A line above the progress line (or a plain line on stderr without a terminal).
    fn println(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl DemoReport {
    /// The summary printed at the end.
    pub fn render(&self) -> String {
        let g = &self.generated;
        format!(
            "demo: generated {} events ({} impressions, CTR {:.4}) with a concept drift half way\n{}",
            g.events,
            g.impressions,
            g.ctr(),
            self.run.render()
        )
    }
}
