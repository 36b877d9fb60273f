//! How a run's rounds ended, typed: the outcome the server hands back, the early stops that
//! are not errors, and the failures that end a run (each with its cause, and the knob to turn
//! where there is one). Their texts are what `summary.json` records.

use std::sync::Arc;

use crate::messages::{EvaluateRes, RoundId, RoundSummary};
use crate::model::AdapterSet;
use crate::privacy::Guarantee;

/// How the run ended.
#[derive(Debug)]
pub struct ServerOutcome {
    /// Evaluation of the base model before training.
    pub baseline: Option<EvaluateRes>,
    /// The last evaluation of the global adapter (the full task split after the last round).
    pub final_eval: Option<EvaluateRes>,
    /// One summary per completed round.
    pub rounds: Vec<RoundSummary>,
    /// The final global adapter.
    pub global: Arc<AdapterSet>,
    /// Stopped early by the shutdown signal.
    pub interrupted: bool,
    /// What ended the run early with an error, if anything.
    pub error: Option<RunFailure>,
    /// Why training stopped before `rounds` without an error.
    pub stop: Option<EarlyStop>,
    /// (ε, δ) after the last round, when DP is on.
    pub epsilon: Option<Guarantee>,
    /// The clipping norm in force at the end, when DP is on.
    pub final_clip: Option<f64>,
    /// ε by PLD after the last round, when `dp.pld` is on.
    pub epsilon_pld: Option<f64>,
}

/// Why a run stopped before its planned rounds without an error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EarlyStop {
    /// `dp.max_epsilon` would be exceeded by the next round.
    #[error(
        "privacy budget: round {round} would reach epsilon {epsilon:.4} > dp.max_epsilon {max} \
         (delta {delta:e}); stopped after round {}",
        round - 1
    )]
    Budget {
        /// The round that would exceed it.
        round: RoundId,
        /// ε after that round.
        epsilon: f64,
        /// `dp.max_epsilon`.
        max: f64,
        /// δ.
        delta: f64,
    },
    /// No slot could run a job: the run has no local slots, and every worker was lost and
    /// did not come back within `slots.workers.rejoin_s`.
    #[error(
        "round {round}: every worker is lost ({}) and none came back within \
         slots.workers.rejoin_s = {rejoin_s} s; the run has no local slots (slots.count = 0)",
        lost.join(", ")
    )]
    WorkersLost {
        /// The round that could not start.
        round: RoundId,
        /// The lost workers.
        lost: Vec<String>,
        /// Seconds waited.
        rejoin_s: f64,
    },
    /// A round had too few clients and `system.short_round` is `Stop`.
    #[error("round {round}: {why}")]
    TooFewClients {
        /// The round.
        round: RoundId,
        /// Who was missing (also the round's `skipped` record).
        why: ShortReason,
    },
}

/// Why a round ran short of clients: its `skipped` record, and under `system.short_round:
/// Stop` why the run stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShortReason {
    /// Fewer clients online than the strategy needs.
    #[error(
        "{available} of {alive} clients available at t = {at:.1} s, fewer than the {needed} \
         needed (strategy.min_available_clients / min_fit_clients)"
    )]
    TooFewAvailable {
        /// Clients online.
        available: usize,
        /// Clients alive.
        alive: usize,
        /// Clients needed.
        needed: usize,
        /// When, simulated seconds.
        at: f64,
    },
    /// Secure aggregation cannot run the round with the sampled clients.
    #[error(transparent)]
    SecureSetup(std::sync::Arc<crate::messages::SetupError>),
    /// Asynchronous aggregation found no client online and idle.
    #[error("no client online and idle at t = {at:.1} s (asynchronous aggregation)")]
    NoneIdle {
        /// When, simulated seconds.
        at: f64,
    },
}

/// Two reasons are equal when they say the same.
impl PartialEq for ShortReason {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// An evaluation on the held-out split that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EvalFailure {
    /// The slots are gone.
    #[error(transparent)]
    Slots(#[from] crate::slots::SlotError),
    /// A slot dropped the job without answering.
    #[error("the slot dropped the job")]
    Dropped,
    /// The evaluation itself failed.
    #[error(transparent)]
    Eval(#[from] crate::train::TrainError),
}

/// What ended a run with an error (the adapter of the last good round is kept).
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// The base model could not be evaluated before round 1.
    #[error("baseline evaluation failed: {0}")]
    Baseline(#[source] EvalFailure),
    /// The global adapter could not be evaluated after a round.
    #[error("evaluation after round {round} failed: {source}")]
    Evaluation {
        /// The round.
        round: RoundId,
        /// Why.
        source: EvalFailure,
    },
    /// The aggregate has values that are not finite (kept out of the global adapter).
    #[error("round {round}: the aggregated global adapter has {bad} non-finite values of {of}: {cause}; the adapter of the previous round is kept")]
    NonFinite {
        /// The round.
        round: RoundId,
        /// Values not finite.
        bad: usize,
        /// Values in all.
        of: usize,
        /// What overflowed, and what to lower.
        cause: Overflow,
    },
    /// The held-out loss is not finite after a round.
    #[error("round {round}: the held-out loss is {loss} (the model diverged; {})", knob(*server_lr))]
    Diverged {
        /// The round.
        round: RoundId,
        /// The loss.
        loss: f64,
        /// The server optimiser's learning rate, when one applies the update.
        server_lr: Option<f64>,
    },
    /// The round could not be written to the run directory.
    #[error("cannot record round {round}: {source}")]
    Record {
        /// The round.
        round: RoundId,
        /// Why.
        source: crate::report::ReportError,
    },
    /// Asynchronous aggregation dispatched on and on without one update.
    #[error(
        "asynchronous aggregation: {dispatches} dispatches in a row without an update (every \
         client crashed or failed); lower system.crash_probability"
    )]
    NoProgress {
        /// Dispatches since the last update.
        dispatches: usize,
    },
}

/// What made an aggregate overflow f32.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Overflow {
    /// DP noise of this std per coordinate.
    #[error(
        "DP noise of std {} per coordinate on the averaged update overflowed f32 (raise \
         strategy.fraction_fit or clients.count, or lower the noise multiplier)",
        crate::fmt::compact(*.0)
    )]
    Noise(f64),
    /// The server optimiser's step, at this learning rate.
    #[error(
        "the server optimiser's step overflowed f32 (lower its server_lr, now {})",
        crate::fmt::compact(*.0)
    )]
    ServerStep(f64),
    /// The averaged update itself.
    #[error("the averaged update overflowed f32 (lower train.lr_max)")]
    Average,
}

/// What to lower when the model diverged.
fn knob(server_lr: Option<f64>) -> String {
    match server_lr {
        Some(lr) => format!(
            "lower the server optimiser's server_lr, now {}, or train.lr_max",
            crate::fmt::compact(lr)
        ),
        None => "lower train.lr_max".to_string(),
    }
}
