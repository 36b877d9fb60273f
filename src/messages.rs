//! Typed messages between the server, client and aggregator actors and the slots.

use std::sync::Arc;

use serde::Serialize;

use crate::model::AdapterSet;
use crate::train::LocalTraining;

/// Index of a client, 0-based.
pub type ClientId = usize;
/// Federated round, 1-based (0 is the evaluation before training).
pub type RoundId = usize;

/// What a client is told to do in a round.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Learning rate for this round (cosine-annealed).
    pub lr: f64,
    /// Steps / epochs / batch size.
    pub local: LocalTraining,
    /// Client-side DP clipping: clip the update to this L2 norm before upload.
    pub clip_norm: Option<f64>,
}

/// Fit instructions: the global adapter as it goes over the wire, and the config.
#[derive(Debug, Clone)]
pub struct FitIns {
    /// The round.
    pub round: RoundId,
    /// The global adapter serialised as safetensors (shared by every sampled client).
    pub payload: Arc<Vec<u8>>,
    /// Training configuration.
    pub config: FitConfig,
}

/// A client's answer to [`FitIns`].
#[derive(Debug, Clone)]
pub struct FitRes {
    /// Who answers.
    pub client: ClientId,
    /// For which round.
    pub round: RoundId,
    /// What happened.
    pub status: FitStatus,
}

/// Outcome of a client's round. Failures are data, never actor errors.
#[derive(Debug, Clone)]
pub enum FitStatus {
    /// Training finished and the update was uploaded.
    Completed(Box<FitUpdate>),
    /// Training failed (diverged, no data, the client actor died).
    Failed {
        /// Why.
        reason: String,
    },
}

/// A completed client update.
#[derive(Debug, Clone)]
pub struct FitUpdate {
    /// `local − global` as a safetensors buffer (what was uploaded).
    pub payload: Vec<u8>,
    /// Examples in the client's shard (the FedAvg weight).
    pub num_examples: usize,
    /// Mean local training loss.
    pub train_loss: f64,
    /// L2 norm of the update before any clipping.
    pub update_norm: f64,
    /// Whether the client clipped it (client-side DP).
    pub clipped: bool,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Tokens trained on.
    pub tokens: usize,
    /// Host seconds the slot spent training.
    pub compute_seconds: f64,
}

/// Server-side evaluation request: the adapter to evaluate (`None`: the bare base model).
#[derive(Debug, Clone)]
pub struct EvaluateIns {
    /// The round evaluated after (0 = before training).
    pub round: RoundId,
    /// The adapter.
    pub adapter: Option<Arc<AdapterSet>>,
}

/// Result of an evaluation on the held-out split.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvaluateRes {
    /// The round evaluated after.
    pub round: RoundId,
    /// Mean NLL per response token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Response tokens scored.
    pub tokens: usize,
}

/// One round's summary: a line of `rounds.jsonl` (flat keys).
#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    /// The round (1-based).
    pub round: RoundId,
    /// Clients sampled.
    pub sampled: usize,
    /// Clients whose update was aggregated.
    pub completed: usize,
    /// Clients that failed.
    pub failed: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Example-weighted mean of clients' train losses (nats/token).
    pub train_loss: f64,
    /// Held-out loss after aggregation (nats/token).
    pub eval_loss: f64,
    /// Held-out perplexity after aggregation.
    pub eval_perplexity: f64,
    /// Bytes sent to clients (serialised global adapter × sampled).
    pub bytes_down: u64,
    /// Bytes received from clients (serialised updates).
    pub bytes_up: u64,
    /// Examples aggregated.
    pub examples: usize,
    /// Tokens trained on, all clients.
    pub tokens: usize,
    /// Mean L2 norm of the aggregated updates (before clipping).
    pub mean_update_norm: f64,
    /// Host wall-clock seconds of the round.
    pub wall_seconds: f64,
    /// Pre-clip L2 norm of each completed update (for the metrics histogram; per-client
    /// detail stays out of `rounds.jsonl`).
    #[serde(skip)]
    pub update_norms: Vec<f64>,
    /// When the round closed (Unix seconds): the timestamp of its samples in `metrics.om`.
    /// Kept out of `rounds.jsonl`, whose metrics are deterministic apart from `wall_seconds`.
    #[serde(skip)]
    pub finished_at: f64,
    /// Differential-privacy metrics, when DP is on.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpRoundMetrics>,
}

/// Per-round DP metrics (flat keys `dp_*` in `rounds.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct DpRoundMetrics {
    /// ε after this round (RDP accountant) at `dp_delta`.
    pub dp_epsilon: f64,
    /// ε after this round by the PLD accountant, when `dp.pld` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_epsilon_pld: Option<f64>,
    /// δ.
    pub dp_delta: f64,
    /// Optimal RDP order.
    pub dp_order: f64,
    /// Sampling rate the accountant used for this round.
    pub dp_sampling_rate: f64,
    /// Std of the noise on the averaged update (z·C/m).
    pub dp_noise_stddev: f64,
    /// Clipping norm in force.
    pub dp_clip_norm: f64,
    /// Fraction of aggregated updates that were clipped.
    pub dp_clipped_fraction: f64,
    /// Pre-clip update norms: median.
    pub dp_update_norm_p50: f64,
    /// Pre-clip update norms: 90th percentile.
    pub dp_update_norm_p90: f64,
    /// Pre-clip update norms: maximum.
    pub dp_update_norm_max: f64,
    /// Adaptive clipping: the noised fraction of updates within the clip (what the server
    /// may use; `dp_clipped_fraction` is the simulator's exact, non-private view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_noised_unclipped_fraction: Option<f64>,
}
