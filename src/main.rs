//! The `ctrflow` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ctrflow::config::PipelineConfig;
use ctrflow::replay::{self, ReplayOptions};
use ctrflow::telemetry::LogFormat;

/// ctrflow: a stream processor that learns click-through rates online.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs (stderr) are written; `RUST_LOG` filters them (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the learning dataflow over a JSON Lines file as fast as possible and report
    /// progressive metrics.
    Replay(ReplayArgs),
    /// Write synthetic events (seeded; optional drift) to a JSON Lines file or a Kafka
    /// topic.
    Gen(ctrflow::generator::GenArgs),
    /// The long-running worker: Kafka `events` in, `scores` and `dead-letters` out.
    /// Stops cleanly on SIGINT/SIGTERM (a second signal exits at once).
    Run(RunArgs),
    /// Everything in one process: an in-process Kafka-protocol broker, the generator
    /// (with a concept drift half way) and the worker; a live progress line, a summary.
    Demo(DemoArgs),
    /// What a worker's durable state holds: checkpoint, tables, offsets, model, label
    /// joins, one user's or item's features. The worker must not be running.
    Inspect(InspectArgs),
    /// Validate a configuration file (with the `CTRFLOW__...` environment overrides)
    /// without running anything: exit 0, or non-zero listing every problem.
    CheckConfig(CheckConfigArgs),
    /// Plot a `--metrics-out` file (logloss, AUC, calibration, throughput, drift
    /// statistics with the alerts, feature drift) as one self-contained HTML page.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The metrics records (`replay --metrics-out`, `telemetry.metrics_out`).
    file: PathBuf,
    /// The HTML page to write.
    #[arg(long, short, default_value = "report.html")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The state directory (`state.dir`).
    #[arg(long)]
    state: PathBuf,
    /// The worker's configuration (for the entity feature settings).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Show this user's features.
    #[arg(long)]
    user: Option<String>,
    /// Show this item's features.
    #[arg(long)]
    item: Option<String>,
    /// The category for the user×category features.
    #[arg(long)]
    category: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CheckConfigArgs {
    /// The TOML file.
    file: PathBuf,
    /// Also print the effective configuration (defaults and overrides applied) as TOML.
    #[arg(long)]
    print: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Pipeline configuration (TOML); `[kafka]` says which brokers and topics.
    #[arg(long, short)]
    config: PathBuf,
    /// Timely worker threads (per process, in a cluster).
    #[arg(long, short, default_value_t = 1)]
    workers: usize,
    /// Processes in the cluster (timely's `-n`); more than 1 needs `--hostfile`.
    #[arg(long, short = 'n', default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster, `0..processes` (timely's `-p`).
    #[arg(long, short = 'p', default_value_t = 0)]
    process: usize,
    /// One `host:port` per line, process `i` on line `i`: where the processes of the
    /// cluster listen for each other (timely's `-h`; the same file for every process).
    #[arg(long = "hostfile", short = 'H')]
    hostfile: Option<PathBuf>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Impressions to generate (feedback events come in addition).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Timely worker threads.
    #[arg(long, short, default_value_t = 2)]
    workers: usize,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Serve /metrics, /healthz and /readyz here ("" for no server; port 0 for any).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: String,
    /// Write the metrics over time here (`ctrflow report` plots them).
    #[arg(long)]
    metrics_out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The events, one JSON object per line.
    #[arg(long, short)]
    input: PathBuf,
    /// Pipeline configuration (TOML); built-in defaults when absent.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Timely worker threads.
    #[arg(long, short, default_value_t = 1)]
    workers: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write one score per impression here (JSON Lines, the `scores` contract).
    #[arg(long)]
    scores_out: Option<PathBuf>,
    /// Write rejected lines here (JSON Lines, the dead-letter contract).
    #[arg(long)]
    dead_letters: Option<PathBuf>,
    /// Write every labelled impression here with the hashed features it was scored and
    /// trained with (JSON Lines, the `examples` topic's form).
    #[arg(long)]
    examples_out: Option<PathBuf>,
    /// Save the trained model here.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Also train a batch logistic regression (smartcore) on the early part of a time
    /// split and print it beside the online model on the later part.
    #[arg(long)]
    baseline: bool,
    /// The share of labelled impressions, in event-time order, the baseline trains on.
    #[arg(long, default_value_t = 0.5, requires = "baseline")]
    baseline_train_fraction: f64,
    /// At most this many training rows for the baseline (evenly spread over its period).
    #[arg(long, default_value_t = 50_000, requires = "baseline")]
    baseline_max_rows: usize,
    /// Write the metrics over time here: one JSON record per `telemetry.metrics_interval_ms`
    /// of event time (`ctrflow report` plots them). Overrides `telemetry.metrics_out`.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ctrflow::telemetry::init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => {
            let config = PipelineConfig::load_with_process_env(args.config.as_deref())?;
            let options = ReplayOptions {
                input: args.input,
                workers: args.workers,
                config,
                scores_out: args.scores_out,
                dead_letters_out: args.dead_letters,
                examples_out: args.examples_out,
                model_out: args.model_out,
                progress: !args.no_progress && !args.json,
                baseline: args.baseline.then(|| ctrflow::baseline::BaselineOptions {
                    train_fraction: args.baseline_train_fraction,
                    max_train_rows: args.baseline_max_rows,
                    ..Default::default()
                }),
                metrics_out: args.metrics_out,
            };
            let report = replay::run(&options)?;
            print_report(&report, args.json, || report.render())
        }
        Command::Gen(args) => {
            let out = args.out.to_string_lossy();
            let stats = if out.starts_with("kafka://") {
                let target: ctrflow::produce::KafkaTarget =
                    out.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                let stop = stop_on_signals()?;
                ctrflow::produce::produce(
                    &args.config(),
                    &target,
                    args.rate,
                    &stop,
                    &AtomicU64::new(0),
                )?
            } else {
                args.run().context("generating events")?
            };
            eprintln!(
                "wrote {} events: {} impressions, {} clicks, {} likes, {} fast skips, {} slow skips (CTR {:.4})",
                stats.events,
                stats.impressions,
                stats.clicks,
                stats.likes,
                stats.fast_skips,
                stats.slow_skips,
                stats.clicks as f64 / stats.impressions.max(1) as f64
            );
            Ok(())
        }
        Command::Run(args) => {
            let topology = ctrflow::cluster::Topology::from_options(
                args.workers,
                args.processes,
                args.process,
                args.hostfile.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let config = PipelineConfig::load_with_process_env(Some(&args.config))?;
            let problems = topology.check(&config);
            if !problems.is_empty() {
                anyhow::bail!(
                    "{}: cannot run as process {} of {}:\n  - {}",
                    args.config.display(),
                    topology.process,
                    topology.processes,
                    problems.join("\n  - ")
                );
            }
            let stop = stop_on_signals()?;
            let report = ctrflow::run::run_in(
                &ctrflow::run::RunOptions {
                    config,
                    workers: args.workers,
                    stop,
                },
                &topology,
            )?;
            print_report(&report, args.json, || report.render())
        }
        Command::Demo(args) => {
            let stop = stop_on_signals()?;
            let report = ctrflow::demo::run(&ctrflow::demo::DemoOptions {
                impressions: args.events,
                workers: args.workers,
                partitions: args.partitions,
                seed: args.seed,
                stop,
                listen: args.listen,
                metrics_out: args.metrics_out,
            })?;
            print!("{}", report.render());
            Ok(())
        }
        Command::Inspect(args) => {
            let config = PipelineConfig::load_with_process_env(args.config.as_deref())?;
            let report = ctrflow::inspect::inspect(&ctrflow::inspect::InspectOptions {
                state: args.state,
                config,
                user: args.user,
                item: args.item,
                category: args.category,
            })?;
            print_report(&report, args.json, || report.render())
        }
        Command::Report(args) => {
            let started = std::time::Instant::now();
            let written = ctrflow::report::write(&args.file, &args.output)?;
            eprintln!(
                "wrote {} ({} KiB): {} records, {} alerts, in {:.2} s",
                args.output.display(),
                written.bytes / 1024,
                written.records,
                written.alerts,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::CheckConfig(args) => {
            let config = PipelineConfig::load_with_process_env(Some(&args.file))?;
            if args.print {
                print!(
                    "{}",
                    toml::to_string(&config).context("encoding the configuration")?
                );
            }
            eprintln!("{}: ok", args.file.display());
            Ok(())
        }
    }
}

/// Prints `report` as one JSON object, or as `render` says for people.
fn print_report(
    report: &impl serde::Serialize,
    json: bool,
    render: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).context("encoding the report")?
        );
    } else {
        print!("{}", render());
    }
    Ok(())
}

/// A flag SIGINT and SIGTERM set; a second signal exits at once (status 130).
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    Ok(stop)
}
