//! `sim study`: train every arm of a privacy study, attack each, print one table.

use std::path::PathBuf;

use anyhow::Context as _;
use fedsim::attack::{self, table};
use fedsim::report::{DirKind, Marker, RunDir, RunStatus};
use fedsim::sim::Progress;
use fedsim::study::Study;
use fedsim::{RunOptions, StopLevel};

use super::out::{out, outln};
use super::progress::Display;

/// `sim study` arguments.
#[derive(clap::Args)]
pub struct StudyArgs {
    /// Study file (RON): a base scenario, its arms, the attack effort.
    study: PathBuf,
    /// Study directory (default runs/<name>-<timestamp>): one run directory per arm, plus
    /// study.json, attack.txt (compare.txt with `attacks: false`) and report.html.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl StudyArgs {
    /// Threads one training job computes with, the fewest over the arms; None when the study
    /// does not load.
    pub fn matmul_threads(&self) -> Option<usize> {
        let study = Study::load(&self.study).ok()?;
        study.arms.iter().map(|(_, s)| s.threads_per_job()).min()
    }
}

/// Validate every arm, train them one after the other, attack each, tabulate.
pub fn study(a: StudyArgs) -> anyhow::Result<()> {
    let study = Study::load(&a.study)?;
    fedsim::host::tune_allocator_for_training();
    let dir = RunDir::create(
        a.out.as_deref(),
        &Marker::new(DirKind::Study, study.name.clone()),
    )?;
    let runtime = super::run::runtime()?;
    let shutdown = super::run::stop_on_signals(&runtime)?;
    let n = study.arms.len();
    let arms: Vec<&str> = study.arms.iter().map(|(a, _)| a.as_str()).collect();
    dir.write_json(
        "study.json",
        &serde_json::json!({ "name": study.name, "source": a.study, "arms": arms }),
    )?;
    eprintln!("study of {n} arms into {}", dir.path().display());
    let mut reports = Vec::with_capacity(n);
    let mut dirs: Vec<std::path::PathBuf> = Vec::with_capacity(n);
    for (i, (name, s)) in study.arms.iter().enumerate() {
        if shutdown.level() >= StopLevel::FinishRound {
            anyhow::bail!("stopped after {i} of {n} arms; their run directories are complete");
        }
        let out = dir.path().join(name);
        train(&runtime, &shutdown, (i, n, name.as_str(), s), &out)?;
        if study.attacks {
            reports.push(attack_arm(
                &shutdown,
                (i, n, name.as_str()),
                &out,
                study.attack,
            )?);
        }
        dirs.push(out);
    }
    let (file, text) = match study.attacks {
        true => ("attack.txt", table::comparison(&reports)),
        false => ("compare.txt", fedsim::compare::table(&dirs)?),
    };
    out!("{text}")?;
    dir.write(file, &text)?;
    let html = fedsim::html_report::render(&dirs)?;
    dir.write("report.html", &html)?;
    outln!(
        "study directory: {} ({file}, report.html)",
        dir.path().display()
    )?;
    Ok(())
}

/// Train arm `i` of `n` into `out`; an arm that does not complete ends the study.
fn train(
    runtime: &tokio::runtime::Runtime,
    shutdown: &fedsim::Shutdown,
    (i, n, name, s): (usize, usize, &str, &fedsim::Scenario),
    out: &std::path::Path,
) -> anyhow::Result<()> {
    eprintln!("[{}/{n}] training `{name}`", i + 1);
    let mut display = Display::new();
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        progress: Some(Box::new(move |p: Progress<'_>| display.show(p))),
        ..Default::default()
    };
    let run = runtime
        .block_on(fedsim::run(s, opts, shutdown.clone()))
        .with_context(|| format!("arm `{name}`"))?;
    if run.summary.status != RunStatus::Completed {
        anyhow::bail!(
            "arm `{name}` ended {}; the study stops at a partial run",
            run.summary.status.as_str()
        );
    }
    eprintln!(
        "[{}/{n}] `{name}`: held-out loss {:.4} nats/token",
        i + 1,
        run.summary.final_eval_loss
    );
    Ok(())
}

/// Attack arm `i` of `n` (trained into `out`); the report is printed as it comes.
fn attack_arm(
    shutdown: &fedsim::Shutdown,
    (i, n, name): (usize, usize, &str),
    out: &std::path::Path,
    plan: attack::AttackPlan,
) -> anyhow::Result<attack::AttackReport> {
    eprintln!("[{}/{n}] attacking `{name}`", i + 1);
    let mut display = Display::new();
    let report = attack::attack(out, plan, &mut |stage, done, total| {
        if shutdown.level() >= StopLevel::FinishRound {
            return Err(attack::Stopped);
        }
        display.show(Progress::Stage { stage, done, total });
        Ok(())
    })
    .with_context(|| format!("attacking arm `{name}`"))?;
    display.show(Progress::Setup(&format!(
        "[{}/{n}] `{name}` attacked in {:.1} s",
        i + 1,
        report.seconds
    )));
    outln!("{}", table::details(&report))?;
    Ok(report)
}
