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
        /// Serve Prometheus metrics here (HOST:PORT, loopback by default), or `none`.
        #[arg(long, default_value = "127.0.0.1:9464", value_name = "HOST:PORT|none")]
        metrics_addr: String,
        /// Keep serving metrics this many seconds after the run, so the final values are scraped.
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        linger: f64,
        /// Spend at least this many wall seconds per round (live dashboards); results are unchanged.
        #[arg(long, value_name = "SECONDS_PER_ROUND")]
        pace: Option<f64>,
    },
    /// Check a scenario (syntax, ranges, paths) without running it.
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
    /// Compare finished runs side by side (pretrained vs. centralised vs. federated).
    Compare {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PrivacyCommand {
    /// ε after T rounds of the subsampled Gaussian mechanism.
    Epsilon {
        /// Noise multiplier z (noise std / clipping norm).
        #[arg(long)]
        noise_multiplier: f64,
        #[command(flatten)]
        common: PrivacyArgs,
    },
    /// The smallest noise multiplier whose ε after T rounds is at most the target.
    Noise {
        /// Target ε.
        #[arg(long)]
        target_epsilon: f64,
        #[command(flatten)]
        common: PrivacyArgs,
    },
}

#[derive(clap::Args)]
struct PrivacyArgs {
    /// Fraction of clients sampled per round, q.
    #[arg(long)]
    sampling_rate: f64,
    /// Rounds, T.
    #[arg(long)]
    rounds: usize,
    /// Target δ.
    #[arg(long)]
    delta: f64,
    /// Accountant.
    #[arg(long, value_enum, default_value_t = Accountant::Rdp)]
    accountant: Accountant,
    /// Sampling: Poisson (add/remove-one neighbours) or fixed-size without replacement
    /// (replace-one neighbours).
    #[arg(long, value_enum, default_value_t = Sampling::Poisson)]
    sampling: Sampling,
    /// Fractional-order series: dp_accounting's absolute-value bound, or the exact signed sum.
    #[arg(long, value_enum, default_value_t = Series::Bound)]
    series: Series,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Accountant {
    /// Rényi DP (Mironov et al. 2019; conversion of Balle et al. 2020).
    Rdp,
    /// Privacy loss distributions (connect-the-dots, as dp_accounting): tighter; Poisson only.
    Pld,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Sampling {
    Poisson,
    Fixed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Series {
    Bound,
    Exact,
}

fn privacy(what: PrivacyCommand) -> anyhow::Result<()> {
    use fedsim::privacy::{
        calibrate_noise, epsilon_after, pld_epsilon, FracSeries, SamplingScheme,
    };
    let c = match &what {
        PrivacyCommand::Epsilon { common, .. } | PrivacyCommand::Noise { common, .. } => common,
    };
    let scheme = match c.sampling {
        Sampling::Poisson => SamplingScheme::Poisson,
        Sampling::Fixed => SamplingScheme::WithoutReplacement,
    };
    let series = match c.series {
        Series::Bound => FracSeries::AbsoluteBound,
        Series::Exact => FracSeries::Exact,
    };
    if c.accountant == Accountant::Pld && scheme != SamplingScheme::Poisson {
        anyhow::bail!("--accountant pld supports --sampling poisson only; use --accountant rdp for fixed-size sampling");
    }
    let epsilon_of = |z: f64| match c.accountant {
        Accountant::Rdp => epsilon_after(z, c.sampling_rate, c.rounds, c.delta, scheme, series),
        Accountant::Pld => pld_epsilon(z, c.sampling_rate, c.rounds, c.delta),
    };
    let result = match &what {
        PrivacyCommand::Epsilon {
            noise_multiplier, ..
        } => (*noise_multiplier, epsilon_of(*noise_multiplier)?),
        PrivacyCommand::Noise { target_epsilon, .. } => {
            calibrate_noise(*target_epsilon, epsilon_of)?
        }
    };
    let (z, g) = result;
    let (sampling, neighbours) = match c.sampling {
        Sampling::Poisson => ("poisson", "add-or-remove-one client"),
        Sampling::Fixed => ("fixed-size without replacement", "replace-one client"),
    };
    let method = match (c.accountant, c.series) {
        (Accountant::Pld, _) => {
            "PLD accountant (connect-the-dots, discretisation 1e-4)".to_string()
        }
        (Accountant::Rdp, s) => format!(
            "RDP accountant, optimal order {}, fractional orders by {}",
            g.order,
            match s {
                Series::Bound => "absolute-value bound (dp_accounting)",
                Series::Exact => "exact series",
            }
        ),
    };
    if c.json {
        let v = serde_json::json!({
            "epsilon": g.epsilon,
            "delta": g.delta,
            "accountant": match c.accountant { Accountant::Rdp => "rdp", Accountant::Pld => "pld" },
            "order": if c.accountant == Accountant::Rdp { Some(g.order) } else { None },
            "noise_multiplier": z,
            "sampling_rate": c.sampling_rate,
            "rounds": c.rounds,
            "sampling": sampling,
            "neighbouring": neighbours,
            "method": method,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "epsilon = {:.6} at delta = {:e} after {} rounds: noise multiplier {z}, sampling rate {} ({sampling}, {neighbours}); {method}",
            g.epsilon, g.delta, c.rounds, c.sampling_rate
        );
    }
    Ok(())
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
            let poisson =
                s.dp.as_ref()
                    .is_some_and(|d| d.sampling == fedsim::privacy::DpSampling::Poisson);
            let sampled = if poisson {
                format!(
                    "{:.1} sampled per round on average (Poisson)",
                    s.sampling.fraction_fit * s.data.clients as f64
                )
            } else {
                format!(
                    "{} sampled per round",
                    s.sampling.sample_size(s.data.clients)
                )
            };
            println!(
                "{}: ok ({} clients, {} rounds, {sampled}, {} LoRA parameters)",
                scenario.display(),
                s.data.clients,
                s.rounds,
                s.lora.trainable_parameters(&s.model)
            );
            Ok(())
        }
        Command::Privacy { what } => privacy(what),
        Command::Compare { runs } => {
            print!("{}", fedsim::compare::table(&runs)?);
            Ok(())
        }
        Command::Run {
            scenario,
            set,
            out,
            quiet,
            metrics_addr,
            linger,
            pace,
        } => run(&scenario, &set, out, quiet, &metrics_addr, linger, pace),
    }
}

fn run(
    path: &Path,
    set: &[String],
    out: Option<PathBuf>,
    quiet: bool,
    metrics_addr: &str,
    linger: f64,
    pace: Option<f64>,
) -> anyhow::Result<()> {
    let scenario = Scenario::load(path, set)?;
    let metrics_addr: Option<std::net::SocketAddr> = match metrics_addr {
        "none" => None,
        a => Some(a.parse().with_context(|| {
            format!("--metrics-addr {a:?} is not HOST:PORT (e.g. 127.0.0.1:9464) or none")
        })?),
    };
    if !(linger >= 0.0 && linger.is_finite()) {
        anyhow::bail!("--linger must be a number of seconds >= 0, got {linger}");
    }
    if let Some(p) = pace {
        if !(p > 0.0 && p <= 86_400.0) {
            anyhow::bail!("--pace must be seconds per round in (0, 86400], got {p}");
        }
    }
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
                    "{:>5} {:>7} {:>9} {:>10} {:>10} {:>9} {:>11} {:>11} {:>8}{}",
                    "round",
                    "sampled",
                    "completed",
                    "train loss",
                    "eval loss",
                    "eval ppl",
                    "down (B)",
                    "up (B)",
                    "wall (s)",
                    match &r.dp {
                        Some(d) if d.dp_epsilon_pld.is_some() => format!(
                            " {:>10} {:>10} {:>8} {:>10}",
                            "epsilon", "eps (PLD)", "clipped", "noise std"
                        ),
                        Some(_) =>
                            format!(" {:>10} {:>8} {:>10}", "epsilon", "clipped", "noise std"),
                        None => String::new(),
                    }
                );
                header = true;
            }
            let dp = r.dp.as_ref().map_or(String::new(), |d| {
                let pld = d
                    .dp_epsilon_pld
                    .map_or(String::new(), |e| format!(" {e:>10.4}"));
                format!(
                    " {:>10.4}{pld} {:>7.0}% {:>10.3e}",
                    d.dp_epsilon,
                    100.0 * d.dp_clipped_fraction,
                    d.dp_noise_stddev
                )
            });
            // No client finished (Poisson sampling picked nobody, all failed): no train loss.
            let train = if r.train_loss.is_finite() {
                format!("{:.4}", r.train_loss)
            } else {
                "-".to_string()
            };
            eprintln!(
                "{:>5} {:>7} {:>9} {:>10} {:>10.4} {:>9.2} {:>11} {:>11} {:>8.2}{dp}",
                r.round,
                r.sampled,
                r.completed,
                train,
                r.eval_loss,
                r.eval_perplexity,
                r.bytes_down,
                r.bytes_up,
                r.wall_seconds
            );
        }
    };
    // The exporter binds (and reports a taken address) before the simulation starts.
    let telemetry = match metrics_addr {
        None => None,
        Some(addr) => {
            let (t, server) =
                runtime.block_on(async { fedsim::telemetry::Telemetry::served(addr) })?;
            runtime.spawn(async move {
                let _ = server.await;
            });
            if !quiet {
                eprintln!("metrics: http://{addr}/metrics");
            }
            Some(t)
        }
    };
    let opts = RunOptions {
        out,
        progress: if quiet {
            None
        } else {
            Some(Box::new(progress))
        },
        telemetry,
        pace: pace.map(std::time::Duration::from_secs_f64),
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
    if let Some(dp) = &s.dp {
        let pld = dp
            .epsilon_pld
            .map_or(String::new(), |e| format!(", PLD epsilon = {e:.6}"));
        println!(
            "privacy: (epsilon = {:.6}, delta = {:e}){pld} after {} rounds ({}; {})",
            dp.epsilon, dp.delta, s.rounds_completed, dp.mechanism, dp.accountant
        );
    }
    if let Some(why) = &s.stop_reason {
        println!("stopped early: {why}");
    }
    println!("run directory: {}", report.dir.display());
    if linger > 0.0 {
        if let Some(addr) = metrics_addr {
            eprintln!("serving the final metrics on http://{addr}/metrics for {linger} s");
            runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_secs_f64(linger)).await
            });
        }
    }
    Ok(())
}
