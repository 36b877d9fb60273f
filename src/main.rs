//! `sim`: the command-line front end of fedsim.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::prelude::*;

use cli::out::{out, outln, StdoutClosed};
use cli::privacy::PrivacyCommand;

/// Federated LoRA fine-tuning simulator.
#[derive(Parser)]
#[command(name = "sim", version, about)]
struct Cli {
    /// Parse the command line and stop (the test that every command line in the docs is
    /// today's CLI uses it).
    #[arg(long, global = true, hide = true)]
    parse_only: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write a run directory.
    Run(cli::run::RunArgs),
    /// Check a scenario (syntax, ranges, paths, memory, the data set) without running it.
    Validate {
        /// Scenario file (RON).
        scenario: PathBuf,
        /// Overrides, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
    /// Privacy calculator: ε for a noise level, or the noise for a target ε.
    Privacy {
        #[command(subcommand)]
        what: PrivacyCommand,
    },
    /// Offer this host's slots to a coordinator (`sim run --workers`) until stopped.
    Worker(cli::worker::WorkerArgs),
    /// Run a scenario once per combination of --vary values; print and write a table.
    Sweep(cli::sweep::SweepArgs),
    /// Fetch a known pretrained model into the cache ($FEDSIM_CACHE or ~/.cache/fedsim/models)
    /// and print its path.
    FetchModel {
        /// Model name (smollm2-135m-instruct).
        name: String,
    },
    /// Answer a prompt with a model (and optionally an adapter); prints the answer and
    /// tokens/s.
    Generate(cli::generate::GenerateArgs),
    /// Evaluate a model (and an adapter): PubMedQA accuracy, answers to prompts, a run's
    /// held-out loss; writes eval.json.
    Eval(cli::eval::EvalArgs),
    /// An HTML report (inline SVG charts) over run directories.
    Report {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The HTML file to write.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Communication cost: adapters vs. whole models, per message and in total.
    Comm(cli::comm::CommArgs),
    /// What fine-tuning leaked: membership inference, canary exposure and extraction on run
    /// directories; writes attack.json and roc.svg into each, prints one comparison table.
    Attack(cli::attack::AttackArgs),
    /// What a split run's server learns from the cut's activations: the share of the
    /// clients' private tokens it recovers (nearest token, learned decoder); writes
    /// inversion.json into each run.
    Invert(cli::invert::InvertArgs),
    /// A study: train each arm of a study file (centralised, federated, federated + DP on the
    /// same data and seed), attack each (unless `attacks: false`), print the comparison table.
    Study(cli::study::StudyArgs),
    /// Compare runs side by side (pretrained vs. centralised vs. federated).
    Compare {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.parse_only {
        return ExitCode::SUCCESS;
    }
    // candle sizes each matmul's parallelism from RAYON_NUM_THREADS on every call (when it is
    // unset, re-reading /proc/cpuinfo each time: a third of a generated token's time). It is
    // set here, once, before any thread starts — the one place in fedsim that sets
    // process-wide variables — to the threads one job of this command computes with; a value
    // the user set is kept.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            matmul_threads(&cli.command).to_string(),
        );
    }
    // candle's element-wise ops run on its own worker threads, which spin 25,000 rounds after
    // each op before sleeping; on the slot's cores that spinning takes turns from the matmuls
    // of the next op (about 7 % of a SmolLM2 step on 2 cores). A short spin, set here for
    // the same reason as above; a value the user set is kept.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    // `sim worker --cache DIR`: the model cache the library reads ($FEDSIM_CACHE), set here
    // for the same reason, before any thread starts.
    if let Command::Worker(cli::worker::WorkerArgs {
        cache: Some(dir), ..
    }) = &cli.command
    {
        std::env::set_var("FEDSIM_CACHE", dir);
    }
    // ractor_cluster narrates every session at INFO; its warnings are what a user needs.
    let quiet_cluster = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("ractor_cluster", tracing::Level::WARN)
        .with_target("ractor", tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .without_time(),
        )
        .with(quiet_cluster)
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of standard output went away (`| head`): nothing more to say.
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", fedsim::fmt::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Threads one job of `command` computes with: a training job's for `run`, `sweep` and
/// `study` (their slots' threads), a scoring slot's for `attack`, the cores otherwise.
fn matmul_threads(command: &Command) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match command {
        Command::Run(a) => a.matmul_threads(),
        Command::Sweep(a) => a.matmul_threads(),
        Command::Study(a) => a.matmul_threads(),
        Command::Attack(a) => Some(a.threads_per_slot),
        Command::Worker(a) => Some(a.threads_per_slot),
        _ => None,
    }
    .unwrap_or(cores)
    .max(1)
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate { scenario, set } => cli::validate::validate(&scenario, &set),
        Command::Privacy { what } => cli::privacy::privacy(what),
        Command::Compare { runs } => {
            out!("{}", fedsim::compare::table(&runs)?)?;
            Ok(())
        }
        Command::Run(args) => cli::run::run(args),
        Command::Worker(args) => cli::worker::worker(args),
        Command::Sweep(args) => cli::sweep::sweep(args),
        Command::Generate(args) => cli::generate::generate(args),
        Command::Comm(args) => cli::comm::comm(args),
        Command::Report { runs, out } => {
            fedsim::html_report::write(&runs, &out)?;
            outln!("wrote {}", out.display())?;
            Ok(())
        }
        Command::Eval(args) => cli::eval::eval(args),
        Command::Attack(args) => cli::attack::attack(args),
        Command::Invert(args) => cli::invert::invert(args),
        Command::Study(args) => cli::study::study(args),
        Command::FetchModel { name } => {
            let model = fedsim::model::fetch::known(&name)?;
            let path = fedsim::model::fetch::fetch(&model)?;
            outln!("{}", path.display())?;
            eprintln!("sha256 {} (verified)", model.sha256);
            Ok(())
        }
    }
}
