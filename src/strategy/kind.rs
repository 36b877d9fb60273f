//! `strategy.kind`: the aggregation rules a scenario can name, with their papers' defaults.

use serde::{Deserialize, Serialize};

/// Aggregation rules (`strategy.kind`), with their papers' defaults for omitted fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum StrategyKind {
    /// Example-weighted average of client updates (McMahan et al. 2017).
    FedAvg,
    /// FedAvg with server momentum (Hsu et al. 2019): `FedAvgM(server_lr: 1.0, momentum: 0.9)`.
    FedAvgM {
        /// Server learning rate η.
        #[serde(default = "one_f64")]
        server_lr: f64,
        /// Momentum β.
        #[serde(default = "default_momentum")]
        momentum: f64,
    },
    /// Adagrad on the averaged update (Reddi et al. 2021).
    FedAdagrad {
        /// η.
        #[serde(default = "default_server_lr")]
        server_lr: f64,
        /// β1.
        #[serde(default = "default_momentum")]
        beta1: f64,
        /// τ.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// Adam on the averaged update (Reddi et al. 2021).
    FedAdam {
        /// η.
        #[serde(default = "default_server_lr")]
        server_lr: f64,
        /// β1.
        #[serde(default = "default_momentum")]
        beta1: f64,
        /// β2.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// τ.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// Yogi on the averaged update (Reddi et al. 2021).
    FedYogi {
        /// η.
        #[serde(default = "default_server_lr")]
        server_lr: f64,
        /// β1.
        #[serde(default = "default_momentum")]
        beta1: f64,
        /// β2.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// τ.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// Coordinate-wise median (Yin et al. 2018).
    Median,
    /// Coordinate-wise β-trimmed mean (Yin et al. 2018): `TrimmedMean(beta: 0.1)`.
    TrimmedMean {
        /// Share trimmed from each end, in [0, 0.5).
        #[serde(default = "default_trim")]
        beta: f64,
    },
    /// Krum (Blanchard et al. 2017): `Krum(byzantine: 1)`, tolerating f attackers.
    Krum {
        /// f.
        #[serde(default = "one_usize")]
        byzantine: usize,
    },
    /// Multi-Krum: the mean of the `keep` best-scored updates.
    MultiKrum {
        /// f.
        #[serde(default = "one_usize")]
        byzantine: usize,
        /// m.
        keep: usize,
    },
    /// FedProx (Li et al. 2020): FedAvg, with μ/2·‖w − w_global‖² added to each client's local
    /// loss over the LoRA parameters: `FedProx(mu: 0.01)`.
    FedProx {
        /// μ.
        mu: f64,
    },
    /// FedAvg of updates clipped to an L2 norm, without noise (Sun et al. 2019).
    NormBounded {
        /// The bound.
        max_norm: f64,
    },
}

fn default_momentum() -> f64 {
    0.9
}

/// OpenFedLLM's server learning rate and τ for the adaptive optimisers on LLM adapters.
fn default_server_lr() -> f64 {
    1e-3
}

fn default_tau() -> f64 {
    1e-3
}

fn default_beta2() -> f64 {
    0.99
}

fn default_trim() -> f64 {
    0.1
}

fn one_f64() -> f64 {
    1.0
}

fn one_usize() -> usize {
    1
}
