//! `sim`: the command-line front end of fedsim.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fedsim::sim::Progress;
use fedsim::{RunOptions, Scenario};

/// Federated LoRA fine-tuning simulator.
#[derive(Parser)]
#[command(name = "sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write a run directory.
    Run {
        /// Scenario file (RON).
        scenario: PathBuf,
        /// Override a field: --set rounds=5 --set clients.count=1000 (JSON or bare string values).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Run directory (default runs/<name>-<timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print only the final summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check a scenario (syntax, ranges, paths) without running it.
    Validate {
        /// Scenario file (RON).
        scenario: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
    /// Compare finished runs side by side (pretrained vs. centralised vs. federated).
    Compare {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Validate { scenario, set } => {
            let s = Scenario::load(&scenario, &set)?;
            println!(
                "{}: ok ({} clients, {} rounds, {} sampled per round, {} LoRA parameters)",
                scenario.display(),
                s.data.clients,
                s.rounds,
                s.sampling.sample_size(s.data.clients),
                s.lora.trainable_parameters(&s.model)
            );
            Ok(())
        }
        Command::Compare { runs } => {
            print!("{}", fedsim::compare::table(&runs)?);
            Ok(())
        }
        Command::Run {
            scenario,
            set,
            out,
            quiet,
        } => run(&scenario, &set, out, quiet),
    }
}

fn run(path: &Path, set: &[String], out: Option<PathBuf>, quiet: bool) -> anyhow::Result<()> {
    let scenario = Scenario::load(path, set)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut header = false;
    let progress = move |p: Progress<'_>| match p {
        Progress::Setup(line) => eprintln!("{line}"),
        Progress::Round(r) => {
            if !header {
                eprintln!(
                    "{:>5} {:>7} {:>9} {:>10} {:>10} {:>9} {:>11} {:>11} {:>8}",
                    "round",
                    "sampled",
                    "completed",
                    "train loss",
                    "eval loss",
                    "eval ppl",
                    "down (B)",
                    "up (B)",
                    "wall (s)"
                );
                header = true;
            }
            eprintln!(
                "{:>5} {:>7} {:>9} {:>10.4} {:>10.4} {:>9.2} {:>11} {:>11} {:>8.2}",
                r.round,
                r.sampled,
                r.completed,
                r.train_loss,
                r.eval_loss,
                r.eval_perplexity,
                r.bytes_down,
                r.bytes_up,
                r.wall_seconds
            );
        }
    };
    let opts = RunOptions {
        out,
        progress: if quiet {
            None
        } else {
            Some(Box::new(progress))
        },
    };
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the current round, then writing results");
        }
    };
    let report = runtime.block_on(fedsim::run(&scenario, opts, shutdown))?;
    let s = &report.summary;
    println!(
        "{} {}: {} of {} rounds; held-out loss {:.4} -> {:.4} nats/token (perplexity {:.2} -> {:.2}); \
         {:.3} MB down, {:.3} MB up; {:.1} s",
        s.scenario,
        s.status,
        s.rounds_completed,
        s.rounds_planned,
        s.pretrained_eval_loss,
        s.final_eval_loss,
        s.pretrained_eval_perplexity,
        s.final_eval_perplexity,
        s.bytes_down_total as f64 / 1e6,
        s.bytes_up_total as f64 / 1e6,
        s.wall_seconds
    );
    println!("run directory: {}", report.dir.display());
    Ok(())
}
