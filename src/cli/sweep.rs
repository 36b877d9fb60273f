//! `sim sweep`: run a scenario once per combination of `--vary` values and tabulate.

use std::path::PathBuf;

use anyhow::Context as _;
use fedsim::report::{DirKind, Marker, RunDir, Summary};
use fedsim::sweep::{combinations, csv, parse_all, run_name, table, SweepRow};
use fedsim::{RunOptions, Scenario, StopLevel};

use super::out::{out, outln};

/// `sim sweep` arguments.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// Scenario file (RON).
    scenario: PathBuf,
    /// A field and the values it takes, in the scenario's syntax:
    /// --vary system.crash_probability=0,0.1,0.3 (repeat for a grid).
    #[arg(long = "vary", value_name = "PATH=V1,V2,...", required = true)]
    vary: Vec<String>,
    /// Overrides applied to every run, as for `run`.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Sweep directory (default runs/sweep-<name>-<timestamp>); one run directory per
    /// combination inside, plus sweep.csv and sweep.txt.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl SweepArgs {
    /// Threads one training job computes with, the fewest over the combinations (so none
    /// oversubscribes the cores); None when they do not load.
    pub fn matmul_threads(&self) -> Option<usize> {
        let varies = parse_all(&self.vary).ok()?;
        combinations(&varies)
            .iter()
            .map(|settings| {
                let all: Vec<String> = self.set.iter().chain(settings).cloned().collect();
                Scenario::load(&self.scenario, &all)
                    .ok()
                    .map(|s| s.threads_per_job())
            })
            .collect::<Option<Vec<usize>>>()?
            .into_iter()
            .min()
    }
}

/// Validate every combination, then run them one after the other.
pub fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    let varies = parse_all(&a.vary)?;
    let combos = combinations(&varies);
    // Every combination is checked before the first runs: a bad value fails in seconds.
    let mut runs = Vec::with_capacity(combos.len());
    for settings in combos {
        let all: Vec<String> = a
            .set
            .iter()
            .cloned()
            .chain(settings.iter().cloned())
            .collect();
        let s = Scenario::load(&a.scenario, &all)
            .with_context(|| format!("combination {}", settings.join(" ")))?;
        runs.push((settings, s));
    }
    let name = format!("sweep-{}", runs[0].1.name);
    let dir = RunDir::create(a.out.as_deref(), &Marker::new(DirKind::Sweep, name))?;
    let runtime = super::run::runtime()?;
    let shutdown = super::run::stop_on_signals(&runtime)?;
    let n = runs.len();
    eprintln!("sweep of {n} runs into {}", dir.path().display());
    let mut rows = Vec::with_capacity(n);
    for (i, (settings, s)) in runs.into_iter().enumerate() {
        if shutdown.level() >= StopLevel::FinishRound {
            eprintln!("stopped after {i} of {n} runs");
            break;
        }
        let out = dir.path().join(run_name(i, &settings));
        eprintln!("[{}/{n}] {}", i + 1, settings.join(" "));
        let opts = RunOptions {
            out: Some(out.clone()),
            ..Default::default()
        };
        let summary = match runtime.block_on(fedsim::run(&s, opts, shutdown.clone())) {
            Ok(report) => report.summary,
            // A failed run is a row of the table, with its status.
            Err(fedsim::SimError::Failed { .. }) => Summary::read(&out)?,
            Err(e) => return Err(e.into()),
        };
        rows.push(SweepRow {
            settings,
            dir: out,
            summary,
        });
    }
    let text = table(&varies, &rows);
    out!("{text}")?;
    dir.write("sweep.txt", &text)?;
    dir.write("sweep.csv", &csv(&varies, &rows))?;
    outln!("sweep directory: {}", dir.path().display())?;
    Ok(())
}
