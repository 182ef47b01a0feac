//! The `ctrflow` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ctrflow::config::PipelineConfig;
use ctrflow::replay::{self, ReplayOptions};

/// ctrflow: a stream processor that learns click-through rates online.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the learning dataflow over a JSON Lines file as fast as possible and report
    /// progressive metrics.
    Replay(ReplayArgs),
    /// Write synthetic events (seeded; optional drift) to a JSON Lines file.
    Gen(ctrflow::generator::GenArgs),
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
    /// Save the trained model here.
    #[arg(long)]
    model_out: Option<PathBuf>,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
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
            let config = match &args.config {
                Some(path) => PipelineConfig::load(path)?,
                None => PipelineConfig::default(),
            };
            let options = ReplayOptions {
                input: args.input,
                workers: args.workers,
                config,
                scores_out: args.scores_out,
                dead_letters_out: args.dead_letters,
                model_out: args.model_out,
                progress: !args.no_progress && !args.json,
            };
            let report = replay::run(&options)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).context("encoding the report")?
                );
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Gen(args) => {
            let stats = args.run().context("generating events")?;
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
    }
}
