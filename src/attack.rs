//! `sim attack`: what fine-tuning leaked, measured on a finished run.
//!
//! - [`membership`]: membership inference with seven scores (loss, reference ratio and
//!   log-ratio, zlib, lowercase, Min-K%, Min-K%++) over members the run trained on and
//!   held-out non-members of the same source, each beside the same score with the pretrained
//!   model alone (the distribution-shift control); [`roc`] holds the metrics.
//! - [`canaries`] / [`exposure`]: the exposure of each planted canary (Carlini et al. 2019).
//! - [`extraction`] / [`patterns`]: sampling, identifiers found by pattern, verbatim matches
//!   against the training data.
//! - [`target`]: loading a run (data rebuilt and fingerprint-checked, base checked by SHA-256,
//!   adapter merged); [`table`]: the comparison table and the ROC chart.

pub mod canaries;
pub mod exposure;
pub mod extraction;
pub mod inversion;
pub mod membership;
pub mod patterns;
pub mod roc;
pub mod scoring;
pub mod slots;
pub mod table;
pub mod target;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::ModelError;
use crate::report::{ReportError, RunDir};
use crate::scenario::ScenarioError;
use crate::tokenizer::TokenizerError;
pub use target::Target;

/// Errors of the attacks.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// A run directory (or one of its files) that cannot be attacked.
    #[error("{}: {message}", path.display())]
    Run {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong, and what would work.
        message: String,
    },
    /// The run's adapter does not fit the base model the run names.
    #[error("{}: does not fit the run's base model ({})", adapter.display(), base.display())]
    AdapterMismatch {
        /// The adapter file.
        adapter: PathBuf,
        /// The base model's file or directory.
        base: PathBuf,
        /// What the loader found.
        #[source]
        source: Box<ModelError>,
    },
    /// The run's scenario no longer loads (e.g. its data file moved).
    #[error("the run's scenario.ron")]
    Scenario(#[from] ScenarioError),
    /// The run's data could not be rebuilt.
    #[error("rebuilding the run's data")]
    Data(#[from] crate::data::DataError),
    /// A model failure.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A run file could not be read or written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Too few texts for a membership test.
    #[error(
        "only {members} member and {non_members} non-member texts: a membership test needs at \
         least 2 of each (use more data or a larger data.eval_fraction)"
    )]
    TooFew {
        /// Member texts available.
        members: usize,
        /// Non-member texts available.
        non_members: usize,
    },
    /// The scoring threads could not start.
    #[error("cannot start the scoring slots")]
    Slots(#[source] rayon::ThreadPoolBuildError),
    /// Computing the server's view of a split run.
    #[error(transparent)]
    Split(#[from] crate::split::SplitError),
    /// The ROC chart could not be drawn.
    #[error("drawing the ROC chart: {0}")]
    Chart(String),
    /// A stop was requested (a signal) before the attacks finished: nothing was written.
    #[error("stopped before the attacks finished; attack.json was not written")]
    Stopped(#[from] Stopped),
}

impl From<candle_core::Error> for AttackError {
    fn from(e: candle_core::Error) -> Self {
        AttackError::Model(ModelError::Candle(e))
    }
}

/// Receives `(stage, done, total)` as the attacks progress — at least once per batch of
/// scoring or per generated sample, however long a stage is — and answers
/// `Err(Stopped)` to stop the attacks there.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize) -> Result<(), Stopped>;

pub use crate::data::Stopped;

/// How much work the attacks do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackPlan {
    /// Members (and as many non-members) scored, at most.
    pub members: usize,
    /// Canary candidates.
    pub candidates: canaries::CandidatePlan,
    /// Extraction samples.
    pub samples: extraction::SamplePlan,
    /// Texts per forward pass.
    pub batch: usize,
    /// Scoring slots (threads scoring whole batches side by side).
    pub slots: usize,
    /// Matmul threads per slot.
    pub threads_per_slot: usize,
}

impl Default for AttackPlan {
    fn default() -> Self {
        Self {
            members: 200,
            candidates: canaries::CandidatePlan {
                enumerate_up_to: 1_000,
                sampled: 1_000,
            },
            samples: extraction::SamplePlan {
                per_prompt: 10,
                max_tokens: 48,
            },
            batch: 32,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads_per_slot: 1,
        }
    }
}

/// What kind of training a run did, for the comparison table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// One client holding all the data.
    Centralised,
    /// Several clients, no DP.
    Federated,
    /// Several clients (or one) with client-level DP.
    FederatedDp,
}

impl RunKind {
    /// Table label.
    pub fn label(self) -> &'static str {
        match self {
            RunKind::Centralised => "centralised",
            RunKind::Federated => "federated",
            RunKind::FederatedDp => "federated + DP",
        }
    }
}

/// `attack.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    /// The run directory.
    pub run: PathBuf,
    /// Its scenario name.
    pub scenario: String,
    /// Centralised, federated or federated + DP.
    pub kind: RunKind,
    /// ε of the run (RDP accountant) at `delta`, when DP was on.
    pub epsilon: Option<f64>,
    /// δ, when DP was on.
    pub delta: Option<f64>,
    /// Held-out loss after the run (nats/token): what the leakage bought.
    pub eval_loss: f64,
    /// Held-out loss of the pretrained base.
    pub pretrained_eval_loss: f64,
    /// Membership inference.
    pub membership: membership::Membership,
    /// Canary exposure.
    pub canaries: Vec<canaries::CanaryExposure>,
    /// Extraction prompts.
    pub prompts: Vec<extraction::ExtractionPrompt>,
    /// Extraction from the run's model.
    pub extraction: extraction::Extraction,
    /// Extraction from the pretrained base (the control).
    pub extraction_pretrained: extraction::Extraction,
    /// Activation inversion by the server, for a split run (topology `Split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inversion: Option<inversion::Inversion>,
    /// Wall-clock seconds the attacks took.
    pub seconds: f64,
}

/// Run every attack on the run in `dir`; writes `attack.json` and `roc.svg` there.
///
/// # Errors
/// An unusable run directory, or a model, tokenizer or I/O failure.
pub fn attack(
    dir: &Path,
    plan: AttackPlan,
    progress: Progress<'_>,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let t = Target::open(dir)?;
    progress("loading the run", 1, 1)?;
    let slots = slots::ScoringSlots::new(plan.slots, plan.threads_per_slot, plan.batch)
        .map_err(AttackError::Slots)?;
    let split = membership::split(&t, plan.members)?;
    let membership = membership::attack(&t, &split, &slots, &mut *progress)?;
    let canaries = canaries::attack(&t, plan.candidates, &slots, &mut *progress)?;
    let extractor = extraction::Extractor::new(&t);
    let stage = "extraction: run's model";
    let extraction = extractor.run(&t, &t.tuned, plan.samples, stage, &mut *progress)?;
    let stage = "extraction: pretrained";
    let extraction_pretrained = extractor.run(&t, &t.base, plan.samples, stage, &mut *progress)?;
    let inversion = match t.scenario.topology.split() {
        Some(cfg) => {
            progress("inversion of the cut's activations", 0, 1)?;
            Some(inversion::attack(&t, &cfg, &split.members, plan.batch)?)
        }
        None => None,
    };
    let kind = match (&t.summary.dp, t.scenario.data.clients) {
        (Some(_), _) => RunKind::FederatedDp,
        (None, 1) => RunKind::Centralised,
        (None, _) => RunKind::Federated,
    };
    let report = AttackReport {
        run: dir.to_path_buf(),
        scenario: t.summary.scenario.clone(),
        kind,
        epsilon: t.summary.dp.as_ref().map(|d| d.epsilon),
        delta: t.summary.dp.as_ref().map(|d| d.delta),
        eval_loss: t.summary.final_eval_loss,
        pretrained_eval_loss: t.summary.pretrained_eval_loss,
        membership,
        canaries,
        prompts: extractor.prompts,
        extraction,
        extraction_pretrained,
        inversion,
        seconds: started.elapsed().as_secs_f64(),
    };
    let out = RunDir::existing(dir);
    out.write_json("attack.json", &report)?;
    out.write(
        "roc.svg",
        &table::roc_svg(&report).map_err(AttackError::Chart)?,
    )?;
    Ok(report)
}

/// Read `attack.json` from a run directory (None when the run was not attacked).
///
/// # Errors
/// A file that exists but does not parse.
pub fn read(dir: &Path) -> Result<Option<AttackReport>, AttackError> {
    let path = dir.join("attack.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| AttackError::Run {
            path,
            message: format!("not fedsim's attack.json: {e}; run `sim attack` again"),
        })
}
