//! Typed messages between the server, client and aggregator actors and the slots.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::Timeline;
use crate::model::AdapterSet;

pub use crate::ids::{ClientId, RoundId};

mod failure;
pub use failure::{FailureKind, FitFailure, SetupError, UploadFailure};

/// What a client is told to do in a round.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Learning rate for this round (cosine-annealed).
    pub lr: f64,
    /// Client-side DP clipping: clip the update to this L2 norm before upload.
    pub clip_norm: Option<f64>,
    /// Distributed DP: the noise a client adds to its clipped update before upload.
    pub noise: Option<ClientNoise>,
    /// Every client weighs the same (DP: sensitivity C per client), not by its examples.
    pub uniform_weight: bool,
}

/// Distributed DP: the noise one client adds to its clipped update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientNoise {
    /// Its distribution.
    pub share: NoiseShare,
    /// How its generator is seeded (per round and client).
    pub source: crate::privacy::NoiseSource,
    /// The master seed (seeded noise).
    pub seed: u64,
}

/// One client's share of distributed noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseShare {
    /// N(0, σ²) on each f32 value before upload, σ = z·C / √min_survivors.
    Gaussian {
        /// σ.
        stddev: f64,
    },
    /// N_Z(0, σ²) on each fixed-point term inside secure aggregation's ring.
    Discrete(crate::privacy::discrete::DiscreteGaussian),
}

/// Fit instructions: the global adapter as it goes over the wire, and the config.
#[derive(Debug, Clone)]
pub struct FitIns {
    /// The round.
    pub round: RoundId,
    /// The global adapter serialised as safetensors (shared by every sampled client): what
    /// the download carries, and what its bytes are counted from.
    pub payload: Arc<Vec<u8>>,
    /// The same adapter, decoded once per round (or model version) and shared by every
    /// client's training job instead of parsed again in each.
    pub global: Arc<AdapterSet>,
    /// Training configuration.
    pub config: FitConfig,
}

/// What a sampled client tells the server about its coming round before it trains: its
/// timeline on the virtual clock and whether it will crash. The server decides from these who
/// trains (deadline, over-selection), so clients that would be dropped never train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientPlan {
    /// Download, compute and upload on the virtual clock.
    pub timeline: Timeline,
    /// `Some(share of its compute done)` when the client crashes during fit.
    pub crash: Option<f64>,
    /// Tokens it would train on.
    pub tokens: usize,
}

/// A client's answer to [`FitIns`] (or the server's record of why there was none).
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
#[derive(Debug, Clone, PartialEq)]
pub enum FitStatus {
    /// Training finished and the update was uploaded to the aggregator.
    Completed(Box<FitUpdate>),
    /// The client stopped answering during fit.
    Crashed {
        /// Virtual time of the crash, seconds.
        at: f64,
        /// Simulated by the fault model, or a real panic of the client actor.
        cause: CrashCause,
    },
    /// The client's update would arrive after the round closed, so it did not train.
    MissedDeadline {
        /// How late it would have been, virtual seconds.
        late_by: f64,
    },
    /// Training or its upload failed (diverged, no data, …).
    Failed {
        /// Why.
        reason: FitFailure,
    },
    /// Its edge aggregator was offline for the round (hierarchical topology): it did not
    /// train.
    EdgeLost {
        /// The edge.
        edge: usize,
    },
}

/// Why a client crashed.
#[derive(Debug, Clone, PartialEq)]
pub enum CrashCause {
    /// `system.crash_probability`.
    Simulated,
    /// The actor panicked (recorded through supervision).
    Panicked(String),
    /// The worker host training it was lost mid-job (`sim run --workers`).
    WorkerLost {
        /// The worker's address.
        worker: String,
    },
}

impl CrashCause {
    /// Its label in `clients.jsonl` (`crash_cause`).
    pub fn kind(&self) -> CrashKind {
        match self {
            CrashCause::Simulated => CrashKind::Simulated,
            CrashCause::Panicked(_) => CrashKind::Panicked,
            CrashCause::WorkerLost { .. } => CrashKind::WorkerLost,
        }
    }
}

/// Why a client crashed, as `clients.jsonl` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// `system.crash_probability`.
    Simulated,
    /// The client actor panicked.
    Panicked,
    /// The worker host running its job was lost.
    WorkerLost,
}

/// The reason a sampled client's update is missing, for metrics labels and round records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Crashed during fit.
    Crashed,
    /// Would have missed the deadline (or the over-selected quota).
    Deadline,
    /// Training or the upload failed.
    Failed,
    /// Its edge aggregator was lost (hierarchical topology).
    EdgeLost,
}

impl FitStatus {
    /// Why there is no update, or `None` for a completed one.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            FitStatus::Completed(_) => None,
            FitStatus::Crashed { .. } => Some(DropReason::Crashed),
            FitStatus::MissedDeadline { .. } => Some(DropReason::Deadline),
            FitStatus::Failed { .. } => Some(DropReason::Failed),
            FitStatus::EdgeLost { .. } => Some(DropReason::EdgeLost),
        }
    }
}

/// A completed client update (the update itself went to the aggregator).
#[derive(Debug, Clone, PartialEq)]
pub struct FitUpdate {
    /// Bytes uploaded (the serialised `local − global`).
    pub bytes: u64,
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
    pub host_seconds: f64,
    /// The client's round on the virtual clock.
    pub timeline: Timeline,
    /// Split learning: the activation and gradient messages it sent and received.
    pub split: Option<crate::split::SplitTraffic>,
}

/// Server-side evaluation request: the adapter to evaluate (`None`: the bare base model).
#[derive(Debug, Clone)]
pub struct EvaluateIns {
    /// The round evaluated after (0 = before training).
    pub round: RoundId,
    /// The adapter.
    pub adapter: Option<Arc<AdapterSet>>,
    /// Which of the run's task items to score as well (scenario `eval`).
    pub task: TaskScope,
}

pub use crate::eval::classify::{TaskConfusions, TaskScope};

/// Result of an evaluation on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRes {
    /// The round evaluated after.
    pub round: RoundId,
    /// Mean NLL per response token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Response tokens scored.
    pub tokens: usize,
    /// The task scores, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskConfusions>,
}

impl EvaluateRes {
    /// A round that was not evaluated (no model, or nothing to score).
    pub fn none(round: RoundId) -> Self {
        Self {
            round,
            loss: f64::NAN,
            perplexity: f64::NAN,
            tokens: 0,
            task: None,
        }
    }
}

/// One round's summary: a line of `rounds.jsonl` (flat keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    /// The round (1-based).
    pub round: RoundId,
    /// Clients sampled.
    pub sampled: usize,
    /// Clients whose update was aggregated.
    pub completed: usize,
    /// Sampled clients whose training or upload failed (or whose update was rejected).
    pub failed: usize,
    /// Clients online when the round started (those alive and available).
    pub available: usize,
    /// Clients offline when the round started.
    pub unavailable: usize,
    /// Sampled clients that crashed during fit.
    pub crashed: usize,
    /// Sampled clients dropped for the deadline (or beyond the over-selection quota).
    pub missed_deadline: usize,
    /// Largest lateness of a dropped straggler, virtual seconds (0 if none).
    pub late_max_s: f64,
    /// When the round started on the virtual clock, seconds.
    pub sim_start_s: f64,
    /// Simulated round duration, seconds.
    pub sim_duration_s: f64,
    /// Mean simulated download / compute / upload time of the clients that trained, seconds.
    pub download_s_mean: f64,
    /// See `download_s_mean`.
    pub compute_s_mean: f64,
    /// See `download_s_mean`.
    pub upload_s_mean: f64,
    /// 90th percentile of the simulated download / compute / upload times, seconds.
    pub download_s_p90: f64,
    /// See `download_s_p90`.
    pub compute_s_p90: f64,
    /// See `download_s_p90`.
    pub upload_s_p90: f64,
    /// Host seconds not spent training clients that were dropped before training (estimated
    /// from this run's host seconds per trained FLOP).
    pub host_seconds_saved: f64,
    /// What secure aggregation cost the round: each phase's bytes and simulated seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<crate::secagg::cost::SecAggCost>,
    /// Sampled clients whose edge aggregator was lost (hierarchical topology: offline,
    /// crashed or late; their updates, if any, never reached the cloud).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edge_lost: usize,
    /// A hierarchical round's edges and bytes per tier (topology `Hierarchical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hierarchy: Option<crate::topology::HierarchyRound>,
    /// Split learning: the round's activation and gradient messages, summed over the clients
    /// that completed (topology `Split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::split::SplitTraffic>,
    /// Why the round aggregated nothing on purpose (too few clients available), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Mean staleness of the aggregated updates (asynchronous aggregation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness_mean: Option<f64>,
    /// Largest staleness of an aggregated update (asynchronous aggregation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness_max: Option<usize>,
    /// Learning rate used.
    pub lr: f64,
    /// Example-weighted mean of clients' train losses (nats/token).
    pub train_loss: f64,
    /// Held-out loss after aggregation (nats/token).
    pub eval_loss: f64,
    /// Held-out perplexity after aggregation.
    pub eval_perplexity: f64,
    /// Task accuracy on the fixed subset (scenario `eval`), in the rounds it was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_accuracy: Option<f64>,
    /// Task macro-F1 on the fixed subset, in the rounds it was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_macro_f1: Option<f64>,
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
    /// Each trained client's (download, compute, upload) seconds (metrics histogram).
    #[serde(skip)]
    pub phases: Vec<[f64; 3]>,
    /// Every sampled client's round (written to `clients.jsonl`).
    #[serde(skip)]
    pub clients: Vec<ClientRecord>,
    /// When the round closed (Unix seconds): the timestamp of its samples in `metrics.om`.
    /// Kept out of `rounds.jsonl`, whose metrics are deterministic apart from `wall_seconds`.
    #[serde(skip)]
    pub finished_at: f64,
    /// Differential-privacy metrics, when DP is on.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpRoundMetrics>,
    /// Byzantine metrics, when the scenario has Byzantine clients.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub byzantine: Option<ByzantineRound>,
}

/// What Byzantine clients did in a round (flat keys in `rounds.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ByzantineRound {
    /// Attackers among the sampled clients.
    pub byzantine_sampled: usize,
    /// Attackers' updates among those aggregated.
    pub byzantine_aggregated: usize,
    /// L2 distance between the aggregate update and the same rule over the honest updates
    /// alone (the simulator's view, before DP noise and server optimiser steps); absent under
    /// a hierarchy, where the edges aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_deviation: Option<f64>,
}

/// One sampled client's round: a line of `clients.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRecord {
    /// The round.
    pub round: RoundId,
    /// The client.
    pub client: ClientId,
    /// How its round ended (`completed`, `crashed`, `missed_deadline` or `failed` in
    /// `clients.jsonl`).
    pub status: ClientStatus,
    /// Its timeline on the virtual clock (zeros when it never planned).
    #[serde(flatten)]
    pub timeline: Timeline,
    /// When its update arrives (or would have), virtual seconds.
    pub finish: f64,
    /// How late a dropped straggler would have been.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_by: Option<f64>,
    /// When it crashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crashed_at: Option<f64>,
    /// Why it crashed (`simulated`, `panicked`, `worker_lost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_cause: Option<CrashKind>,
    /// Why its fit failed, by kind (`training`, `upload`, …) and in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// The failure's message (its error chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Tokens it trained on (or would have).
    pub tokens: usize,
}

/// How a sampled client's round ended, as `clients.jsonl` records it (the words older
/// `compare` and `report` read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    /// Its update was uploaded.
    Completed,
    /// It crashed during fit.
    Crashed,
    /// It would have missed the deadline, so it did not train.
    MissedDeadline,
    /// Training or the upload failed.
    Failed,
    /// Its edge aggregator was offline for the round.
    EdgeLost,
}

impl FitStatus {
    /// The status `clients.jsonl` records.
    pub fn status(&self) -> ClientStatus {
        match self {
            FitStatus::Completed(_) => ClientStatus::Completed,
            FitStatus::Crashed { .. } => ClientStatus::Crashed,
            FitStatus::MissedDeadline { .. } => ClientStatus::MissedDeadline,
            FitStatus::Failed { .. } => ClientStatus::Failed,
            FitStatus::EdgeLost { .. } => ClientStatus::EdgeLost,
        }
    }
}

/// Per-round DP metrics (flat keys `dp_*` in `rounds.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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

fn is_zero(n: &usize) -> bool {
    *n == 0
}
