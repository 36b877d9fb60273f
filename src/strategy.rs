//! Aggregation strategies: how the server turns a round's client updates into the next global
//! adapter. Each declares what it needs — a streaming fold (O(model) memory, in any arrival
//! order) or every update of the round (memory K × adapter, ordered by client id) — and
//! whether fedsim can account its privacy under DP.
//!
//! - [`fedavg`]: exact streaming FedAvg (the fold every streaming rule uses);
//! - [`fedopt`]: server optimisers on the averaged pseudo-gradient (FedAvgM, FedAdagrad,
//!   FedAdam, FedYogi), with state across rounds;
//! - [`fedprox`]: FedAvg over updates trained with a proximal term;
//! - [`median`], [`trimmed_mean`], [`krum`]: robust rules over all updates;
//! - [`norm_bounded`]: each update clipped to a norm, then FedAvg.

mod batch;
pub mod fedavg;
pub mod fedopt;
pub mod fedprox;
mod fold;
mod kind;
pub mod krum;
pub mod median;
pub mod norm_bounded;
pub mod trimmed_mean;

pub use fedavg::{FedAvgAccumulator, FoldError};
pub use fedopt::{ServerOptimizer, ServerState};
pub use kind::StrategyKind;

/// What a strategy needs from the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A streaming fold: updates are folded as they arrive.
    Stream,
    /// Every update of the round, kept until it closes.
    AllUpdates,
}

/// A rule over all of a round's updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RobustRule {
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise trimmed mean.
    TrimmedMean(f64),
    /// Multi-Krum with f tolerated attackers, keeping m (Krum: m = 1).
    MultiKrum {
        /// f.
        byzantine: usize,
        /// m.
        keep: usize,
    },
}

impl RobustRule {
    /// The aggregate update of `updates` (ordered by client id; at least one).
    ///
    /// # Errors
    /// Multi-Krum refuses a chosen update with non-finite or oversized values, as FedAvg does.
    pub fn apply(&self, updates: &[&[f32]]) -> Result<Vec<f32>, FoldError> {
        Ok(match *self {
            RobustRule::Median => median::median(updates),
            RobustRule::TrimmedMean(beta) => trimmed_mean::trimmed_mean(updates, beta),
            RobustRule::MultiKrum { byzantine, keep } => {
                krum::multi_krum(updates, byzantine, keep)?
            }
        })
    }
}

/// A run's aggregation strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// FedAvg: global + weighted mean update.
    FedAvg,
    /// FedProx: FedAvg aggregation; clients train with a proximal term μ.
    FedProx(f64),
    /// A server optimiser on the weighted mean update.
    ServerOpt(ServerOptimizer),
    /// A robust rule over every update (unweighted).
    Robust(RobustRule),
    /// FedAvg of updates clipped to this L2 norm.
    NormBounded(f64),
}

impl Strategy {
    /// The strategy a scenario names.
    pub fn from_kind(kind: StrategyKind) -> Self {
        match kind {
            StrategyKind::FedAvg => Strategy::FedAvg,
            StrategyKind::FedAvgM {
                server_lr,
                momentum,
            } => Strategy::ServerOpt(ServerOptimizer::FedAvgM {
                server_lr,
                momentum,
            }),
            StrategyKind::FedAdagrad {
                server_lr,
                beta1,
                tau,
            } => Strategy::ServerOpt(ServerOptimizer::FedAdagrad {
                server_lr,
                beta1,
                tau,
            }),
            StrategyKind::FedAdam {
                server_lr,
                beta1,
                beta2,
                tau,
            } => Strategy::ServerOpt(ServerOptimizer::FedAdam {
                server_lr,
                beta1,
                beta2,
                tau,
            }),
            StrategyKind::FedYogi {
                server_lr,
                beta1,
                beta2,
                tau,
            } => Strategy::ServerOpt(ServerOptimizer::FedYogi {
                server_lr,
                beta1,
                beta2,
                tau,
            }),
            StrategyKind::Median => Strategy::Robust(RobustRule::Median),
            StrategyKind::TrimmedMean { beta } => Strategy::Robust(RobustRule::TrimmedMean(beta)),
            StrategyKind::Krum { byzantine } => {
                Strategy::Robust(RobustRule::MultiKrum { byzantine, keep: 1 })
            }
            StrategyKind::MultiKrum { byzantine, keep } => {
                Strategy::Robust(RobustRule::MultiKrum { byzantine, keep })
            }
            StrategyKind::NormBounded { max_norm } => Strategy::NormBounded(max_norm),
            StrategyKind::FedProx { mu } => Strategy::FedProx(mu),
        }
    }

    /// Name for metrics and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::FedAvg => "FedAvg",
            Strategy::FedProx(_) => "FedProx",
            Strategy::ServerOpt(o) => o.name(),
            Strategy::Robust(RobustRule::Median) => "Median",
            Strategy::Robust(RobustRule::TrimmedMean(_)) => "TrimmedMean",
            Strategy::Robust(RobustRule::MultiKrum { keep: 1, .. }) => "Krum",
            Strategy::Robust(RobustRule::MultiKrum { .. }) => "MultiKrum",
            Strategy::NormBounded(_) => "NormBounded",
        }
    }

    /// Streaming fold or every update.
    pub fn needs(&self) -> Needs {
        match self {
            Strategy::Robust(_) => Needs::AllUpdates,
            _ => Needs::Stream,
        }
    }

    /// Why fedsim cannot account this strategy under client-level DP (None: it can — FedAvg,
    /// and server optimisers, which only post-process the noised mean).
    pub fn dp_refusal(&self) -> Option<&'static str> {
        match self {
            Strategy::FedAvg | Strategy::FedProx(_) | Strategy::ServerOpt(_) => None,
            Strategy::Robust(_) => Some(
                "a median, trimmed mean or Krum aggregate is not a clipped sum plus Gaussian \
                 noise, so one client's influence on it is not bounded by C and fedsim cannot \
                 account its privacy; use FedAvg or a server optimiser with DP, or turn dp off",
            ),
            Strategy::NormBounded(_) => Some(
                "DP already clips every update to dp's clip norm; norm-bounded FedAvg on top is \
                 redundant — use FedAvg with dp",
            ),
        }
    }
}
