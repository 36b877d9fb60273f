//! `sim attack`: membership inference, canary exposure and extraction on finished runs, one
//! comparison table across them.

use std::path::PathBuf;

use anyhow::Context;
use fedsim::attack::{self, table, AttackPlan};
use fedsim::sim::Progress;
use fedsim::study::AttackSection;

use super::out::{out, outln};
use super::progress::Display;

/// Arguments of `sim attack`.
#[derive(Debug, clap::Args)]
pub struct AttackArgs {
    /// Run directories (e.g. centralised, federated, federated + DP on the same data).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Members scored (and as many held-out non-members), at most.
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// Random fills of a canary's format scored when its space is too large to enumerate.
    #[arg(long, default_value_t = 1000)]
    pub candidates: usize,
    /// Enumerate a canary's whole space when it has at most this many fills.
    #[arg(long, default_value_t = 1_000)]
    pub enumerate_up_to: u64,
    /// Extraction samples per prompt (top-k 40, seeded).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// New tokens per extraction sample.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Scoring slots: threads scoring whole batches side by side (default: one per core).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Matmul threads per scoring slot.
    #[arg(long, default_value_t = 1)]
    pub threads_per_slot: usize,
    /// Also write the comparison table here.
    #[arg(long)]
    pub table: Option<PathBuf>,
}

impl AttackArgs {
    /// The plan the arguments describe.
    pub fn plan(&self) -> anyhow::Result<AttackPlan> {
        for (name, v) in [
            ("--members", self.members),
            ("--candidates", self.candidates),
            ("--samples", self.samples),
            ("--max-tokens", self.max_tokens),
            ("--batch", self.batch),
            ("--slots", self.slots.unwrap_or(1)),
            ("--threads-per-slot", self.threads_per_slot),
        ] {
            if v == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        let effort = AttackSection {
            members: self.members,
            candidates: self.candidates,
            enumerate_up_to: self.enumerate_up_to,
            samples: self.samples,
            max_tokens: self.max_tokens,
        };
        Ok(AttackPlan {
            batch: self.batch,
            slots: self.slots.unwrap_or(AttackPlan::default().slots),
            threads_per_slot: self.threads_per_slot,
            ..effort.plan()
        })
    }
}

/// Run `sim attack`.
pub fn attack(a: AttackArgs) -> anyhow::Result<()> {
    let plan = a.plan()?;
    // Scoring allocates and frees activations per batch, as training does.
    fedsim::host::tune_allocator_for_training();
    // Signals are heard between batches; the runtime only listens for them.
    let runtime = super::run::runtime()?;
    let shutdown = super::run::stop_on_signals_saying(&runtime, super::run::SCORING)?;
    let mut reports = Vec::new();
    for (i, dir) in a.runs.iter().enumerate() {
        let mut display = Display::new();
        let report = attack::attack(dir, plan, &mut |stage, done, total| {
            if shutdown.level() >= fedsim::StopLevel::FinishRound {
                return Err(attack::Stopped);
            }
            display.show(Progress::Stage { stage, done, total });
            Ok(())
        })
        .with_context(|| {
            format!(
                "attacking {} ({i} of {} runs attacked before it, their attack.json written)",
                dir.display(),
                a.runs.len()
            )
        })?;
        display.show(Progress::Setup(&format!(
            "{}: attacked in {:.1} s; wrote attack.json and roc.svg",
            dir.display(),
            report.seconds
        )));
        outln!("{}", table::details(&report))?;
        reports.push(report);
    }
    let text = table::comparison(&reports);
    out!("{text}")?;
    if let Some(path) = &a.table {
        std::fs::write(path, &text).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}
