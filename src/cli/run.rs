//! `sim run`: argument checks, the metrics exporter, signals, the final summary.
//!
//! SIGINT, SIGTERM and SIGHUP all mean "stop": the first finishes the current round and writes
//! the results (status `interrupted`), the second abandons the round in progress and writes
//! what the completed rounds produced, a third exits at once. During `--pace` waits and
//! `--linger` a signal returns at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use fedsim::{RunOptions, Scenario, Shutdown, ShutdownTrigger, StopLevel};

use super::out::outln;
use super::progress::Display;

/// Longest `--linger` (a week): longer is surely a typo, and would overflow timers.
const MAX_LINGER: f64 = 7.0 * 86_400.0;
/// Longest `--pace` per round (a day).
const MAX_PACE: f64 = 86_400.0;

/// `sim run` arguments.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Scenario file (RON).
    #[arg(required_unless_present = "resume")]
    scenario: Option<PathBuf>,
    /// Override a field in the scenario's own syntax: --set rounds=5
    /// --set 'partition=Dirichlet(alpha: 0.1)' --set train.local_steps=Some(3) (JSON works too).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Run directory (default runs/<name>-<timestamp>); must be new, empty, or an unfinished run
    /// with no round done.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the stopped run in DIR (interrupted, killed or failed) from its last completed
    /// round, with the scenario it recorded; it ends as the run never stopped would have.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["scenario", "set", "out"])]
    resume: Option<PathBuf>,
    /// Print only the final summary.
    #[arg(long, short)]
    quiet: bool,
    /// Serve Prometheus metrics here (HOST:PORT, loopback by default; port 0 picks a free
    /// port and prints it), or `none`.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "HOST:PORT|none")]
    metrics_addr: String,
    /// Keep serving metrics this many seconds after the run, so the final values are scraped
    /// (at most a week; a signal ends it at once).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    linger: f64,
    /// Spend at least this many wall seconds per round (live dashboards, at most a day);
    /// results are unchanged.
    #[arg(long, value_name = "SECONDS_PER_ROUND")]
    pace: Option<f64>,
    /// Workers on other hosts whose slots join this run's (each started with
    /// `sim worker --listen HOST:PORT`); needs --cookie-file. Sets the scenario's
    /// slots.workers (replacing it; add TLS with --set slots.workers.tls=… after).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT,...",
        requires = "cookie_file",
        conflicts_with = "resume"
    )]
    workers: Vec<String>,
    /// The cluster's shared secret for --workers: a file holding at least 16 characters, the
    /// same file on every node.
    #[arg(long, value_name = "FILE", requires = "workers")]
    cookie_file: Option<PathBuf>,
}

impl RunArgs {
    /// The `--set` overrides, with --workers and --cookie-file as `slots.workers` first.
    fn overrides(&self) -> Vec<String> {
        let mut set = Vec::new();
        if let (false, Some(cookie)) = (self.workers.is_empty(), &self.cookie_file) {
            let section = serde_json::json!({
                "addrs": self.workers,
                "cookie_file": cookie,
            });
            set.push(format!("slots.workers={section}"));
        }
        set.extend(self.set.iter().cloned());
        set
    }
}

impl RunArgs {
    /// Threads one training job of this run computes with (None when the scenario does not
    /// load: the command itself then says why).
    pub fn matmul_threads(&self) -> Option<usize> {
        let s = match (&self.scenario, &self.resume) {
            (_, Some(dir)) => recorded_scenario(dir).ok()?,
            (Some(path), None) => Scenario::load(path, &self.overrides()).ok()?,
            (None, None) => return None,
        };
        Some(s.threads_per_job())
    }
}

/// Run the scenario and print its summary.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let scenario = match (&a.scenario, &a.resume) {
        (_, Some(dir)) => recorded_scenario(dir)?,
        (Some(path), None) => Scenario::load(path, &a.overrides())?,
        (None, None) => anyhow::bail!("give a scenario file, or --resume DIR"),
    };
    if matches!(scenario.trainer, fedsim::trainer::TrainerKind::Lora) {
        // Before any thread starts; not for the synthetic trainer, whose runs of thousands of
        // clients keep their memory small rather than their allocations fast.
        fedsim::host::tune_allocator_for_training();
    }
    let metrics_addr = checked_flags(&a)?;
    let runtime = runtime()?;
    // The exporter binds (and reports a taken address) before the simulation starts.
    let (telemetry, bound) = match metrics_addr {
        None => (None, None),
        Some(addr) => {
            let (t, server, bound) =
                runtime.block_on(async { fedsim::telemetry::Telemetry::served(addr) })?;
            runtime.spawn(async move {
                let _ = server.await;
            });
            if !a.quiet {
                eprintln!("metrics: http://{bound}/metrics");
            }
            (Some(t), Some(bound))
        }
    };
    let shutdown = stop_on_signals(&runtime)?;
    let mut display = Display::new();
    let opts = RunOptions {
        out: a.out,
        progress: (!a.quiet).then(|| {
            Box::new(move |p: fedsim::sim::Progress<'_>| display.show(p)) as fedsim::sim::ProgressFn
        }),
        telemetry,
        pace: a.pace.map(Duration::from_secs_f64),
    };
    let report = match &a.resume {
        Some(dir) => runtime.block_on(fedsim::sim::resume(dir, opts, shutdown.clone()))?,
        None => runtime.block_on(fedsim::run(&scenario, opts, shutdown.clone()))?,
    };
    print_summary(&report)?;
    if let (true, Some(addr)) = (a.linger > 0.0, bound) {
        eprintln!(
            "serving the final metrics on http://{addr}/metrics for {} s (Ctrl-C ends it)",
            a.linger
        );
        let mut stop = shutdown;
        runtime.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(a.linger)) => {}
                _ = stop.reached(StopLevel::FinishRound) => {}
            }
        });
    }
    Ok(())
}

/// `--metrics-addr` resolved, after `--linger` and `--pace` are checked.
fn checked_flags(a: &RunArgs) -> anyhow::Result<Option<SocketAddr>> {
    let metrics_addr: Option<SocketAddr> = match a.metrics_addr.as_str() {
        "none" => None,
        // A numeric address, or a host name (localhost:9464) resolved to its first address.
        s => Some(
            std::net::ToSocketAddrs::to_socket_addrs(s)
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| {
                    format!("--metrics-addr {s:?} is not HOST:PORT (e.g. 127.0.0.1:9464) or none")
                })?,
        ),
    };
    if !(0.0..=MAX_LINGER).contains(&a.linger) {
        anyhow::bail!(
            "--linger must be seconds in [0, {MAX_LINGER}] (a week), got {}",
            fedsim::fmt::compact(a.linger)
        );
    }
    if let Some(p) = a.pace {
        if !(p > 0.0 && p <= MAX_PACE) {
            anyhow::bail!(
                "--pace must be seconds per round in (0, {MAX_PACE}], got {}",
                fedsim::fmt::compact(p)
            );
        }
    }
    Ok(metrics_addr)
}

/// The scenario a run directory recorded (what `--resume` continues).
fn recorded_scenario(dir: &std::path::Path) -> anyhow::Result<Scenario> {
    let path = dir.join("scenario.ron");
    if !path.exists() {
        anyhow::bail!(
            "{}: no scenario.ron; --resume takes the directory of a run fedsim started",
            dir.display()
        );
    }
    Ok(Scenario::load(&path, &[])?)
}

/// The async runtime the subcommands run fedsim's actors on (they do little work: 2 workers).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What the first two stop requests do, as the messages that acknowledge them say.
#[derive(Clone, Copy)]
pub struct StopWords {
    /// After the first signal.
    pub first: &'static str,
    /// After the second.
    pub second: &'static str,
}

/// Training: the first signal finishes the round, the second abandons it.
pub const ROUNDS: StopWords = StopWords {
    first: "finishing the current round, then writing results (signal again to stop now)",
    second: "abandoning the current round; writing the results of the completed rounds \
             (signal again to exit at once)",
};

/// Scoring work (evaluation, attacks): both stop at the next batch or item.
pub const SCORING: StopWords = StopWords {
    first: "stopping after the item or batch in progress (at most seconds); writing what is \
            complete (signal again to exit at once)",
    second: "already stopping at the next item or batch (signal again to exit at once)",
};

/// A stop request that SIGINT, SIGTERM and SIGHUP escalate, listened for on `runtime`.
pub fn stop_on_signals(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Shutdown> {
    stop_on_signals_saying(runtime, ROUNDS)
}

/// [`stop_on_signals`], acknowledging each signal with `words`.
pub fn stop_on_signals_saying(
    runtime: &tokio::runtime::Runtime,
    words: StopWords,
) -> anyhow::Result<Shutdown> {
    let (trigger, shutdown) = Shutdown::channel();
    runtime.block_on(async { listen_for_signals(trigger, words) })?;
    Ok(shutdown)
}

/// SIGINT, SIGTERM and SIGHUP each escalate the stop request; the third exits at once.
pub fn listen_for_signals(trigger: ShutdownTrigger, words: StopWords) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut streams = Vec::new();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        streams.push((
            signal(kind).with_context(|| format!("cannot listen for {name}"))?,
            name,
        ));
    }
    for (mut stream, name) in streams {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                match trigger.escalate() {
                    1 => eprintln!("{name}: {}", words.first),
                    2 => eprintln!("{name}: {}", words.second),
                    _ => {
                        eprintln!("{name}: exiting at once");
                        std::process::exit(130);
                    }
                }
            }
        });
    }
    Ok(())
}

fn print_summary(report: &fedsim::RunReport) -> anyhow::Result<()> {
    let s = &report.summary;
    let loss = if s.final_eval_loss.is_finite() {
        format!(
            "held-out loss {:.4} -> {:.4} nats/token (perplexity {:.2} -> {:.2})",
            s.pretrained_eval_loss,
            s.final_eval_loss,
            s.pretrained_eval_perplexity,
            s.final_eval_perplexity
        )
    } else {
        "no held-out evaluation (synthetic trainer)".to_string()
    };
    outln!(
        "{} {}: {} of {} rounds; {loss}; {:.3} MB down, {:.3} MB up; {:.1} simulated s; {:.1} s",
        s.scenario,
        s.status,
        s.rounds_completed,
        s.rounds_planned,
        s.bytes_down_total as f64 / 1e6,
        s.bytes_up_total as f64 / 1e6,
        s.sim_seconds,
        s.wall_seconds
    )?;
    if let Some(t) = &s.task_eval {
        print_task(t)?;
    }
    if let Some(dp) = &s.dp {
        let pld = dp
            .epsilon_pld
            .map_or(String::new(), |e| format!(", PLD epsilon = {e:.6}"));
        outln!(
            "privacy: (epsilon = {:.6}, delta = {:e}){pld} after {} rounds ({}; {})",
            dp.epsilon,
            dp.delta,
            s.rounds_completed,
            dp.mechanism,
            dp.accountant
        )?;
    }
    if let Some(why) = &s.stop_reason {
        outln!("stopped early: {why}")?;
    }
    outln!("run directory: {}", report.dir.display())
}

/// The task's final figures and time-to-accuracy.
fn print_task(t: &fedsim::eval::progress::TaskEvalSummary) -> anyhow::Result<()> {
    let pretrained = match (t.pretrained_accuracy, t.pretrained_macro_f1) {
        (Some(a), Some(f)) => format!("pretrained {a:.3} (macro-F1 {f:.3}), "),
        _ => String::new(),
    };
    outln!(
        "task {}: accuracy {:.3} [95% CI {:.3}, {:.3}] on {} items, macro-F1 {:.3}; {pretrained}majority {:.3}",
        t.task,
        t.accuracy,
        t.ci95[0],
        t.ci95[1],
        t.items,
        t.macro_f1,
        t.majority
    )?;
    if let Some(tta) = &t.time_to_accuracy {
        match (tta.round, tta.sim_seconds, tta.bytes_up, tta.bytes_down) {
            (Some(r), Some(secs), Some(up), Some(down)) => outln!(
                "time-to-accuracy {}: round {r}, {secs:.1} simulated s, {:.3} MB up, {:.3} MB down (subset of {} items)",
                tta.target,
                up as f64 / 1e6,
                down as f64 / 1e6,
                t.subset_items
            )?,
            _ => outln!(
                "time-to-accuracy {}: {}",
                tta.target,
                tta.reason.as_deref().unwrap_or("not reached")
            )?,
        }
    }
    Ok(())
}
