//! A round's tallies as they come in, and the `RoundSummary` they make.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::clock::Timeline;
use crate::messages::{
    ClientId, ClientRecord, DpRoundMetrics, DropReason, FitStatus, RoundId, RoundSummary,
};
use crate::privacy::Guarantee;

/// What the server knows about the round in progress.
#[derive(Default)]
pub(super) struct RoundState {
    pub round: RoundId,
    pub lr: f64,
    pub started: Option<Instant>,
    /// Clients that were told to train and have not answered.
    pub pending: HashSet<ClientId>,
    /// Their timelines.
    pub timelines: HashMap<ClientId, Timeline>,
    pub sampled: usize,
    pub available: usize,
    pub unavailable: usize,
    pub completed: usize,
    pub dropped: BTreeMap<DropReason, usize>,
    pub late_max: f64,
    pub loss_weighted: f64,
    pub examples: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub tokens: usize,
    pub norm_sum: f64,
    /// Pre-clip norms of completed updates (DP metrics).
    pub norms: Vec<f64>,
    /// (download, compute, upload) of each completed client.
    pub phases: Vec<[f64; 3]>,
    /// Tokens of clients dropped before training (host time saved).
    pub skipped_tokens: usize,
    /// Every sampled client's record, in the order they were settled.
    pub records: Vec<ClientRecord>,
    /// Statistics of completed updates, in arrival order until [`RoundState::settle`].
    pub updates: Vec<UpdateStats>,
    /// Staleness of each aggregated update (asynchronous aggregation).
    pub staleness: Vec<usize>,
    /// Sampling rate this round is accounted with (DP).
    pub q: f64,
    /// What secure aggregation cost the round, when it is on.
    pub secure: Option<crate::secagg::cost::SecAggCost>,
    /// A hierarchical round's edges and tiers.
    pub hierarchy: Option<crate::topology::HierarchyRound>,
    /// Split learning's messages of the completed clients.
    pub split: Option<crate::split::SplitTraffic>,
    /// Virtual start and close of the round.
    pub sim_start: f64,
    pub close_at: f64,
}

impl RoundState {
    /// A round opened at `sim_start` on the virtual clock, closing at `close_at` unless its
    /// clients say otherwise; counts start at zero.
    pub fn open(round: RoundId, lr: f64, sim_start: f64, close_at: f64) -> Self {
        RoundState {
            round,
            lr,
            started: Some(Instant::now()),
            sim_start,
            close_at,
            ..Default::default()
        }
    }

    /// Count one client's outcome, with its planned timeline and tokens when it planned.
    pub fn count(&mut self, client: ClientId, status: &FitStatus, plan: Option<(Timeline, usize)>) {
        let (timeline, tokens) = match status {
            FitStatus::Completed(u) => (u.timeline, u.tokens),
            _ => plan.unwrap_or_default(),
        };
        self.records.push(ClientRecord {
            round: self.round,
            client,
            status: status.status(),
            timeline,
            finish: timeline.finish(),
            late_by: match status {
                FitStatus::MissedDeadline { late_by } => Some(*late_by),
                _ => None,
            },
            crashed_at: match status {
                FitStatus::Crashed { at, .. } => Some(*at),
                _ => None,
            },
            crash_cause: match status {
                FitStatus::Crashed { cause, .. } => Some(cause.kind()),
                _ => None,
            },
            failure_kind: match status {
                FitStatus::Failed { reason } => Some(reason.kind()),
                _ => None,
            },
            failure: match status {
                FitStatus::Failed { reason } => Some(reason.to_string()),
                _ => None,
            },
            tokens,
        });
        self.tally(client, status);
    }

    fn tally(&mut self, client: ClientId, status: &FitStatus) {
        match status {
            FitStatus::Completed(u) => {
                self.completed += 1;
                self.examples += u.num_examples;
                self.bytes_up += u.bytes;
                self.tokens += u.tokens;
                if let Some(s) = u.split {
                    self.split = Some(self.split.unwrap_or_default().plus(s));
                }
                let t = &u.timeline;
                self.updates.push(UpdateStats {
                    client,
                    loss: u.train_loss,
                    examples: u.num_examples,
                    norm: u.update_norm,
                    phases: [t.download, t.training(), t.upload],
                });
            }
            FitStatus::MissedDeadline { late_by } => {
                self.late_max = self.late_max.max(*late_by);
            }
            _ => {}
        }
        if let Some(reason) = status.drop_reason() {
            *self.dropped.entry(reason).or_insert(0) += 1;
        }
    }

    /// Fold the completed updates' statistics in client order, so floating-point sums do not
    /// depend on the order updates arrived in (slot count, thread timing).
    pub fn settle(&mut self) {
        self.updates.sort_by_key(|u| u.client);
        self.loss_weighted = self
            .updates
            .iter()
            .map(|u| u.loss * u.examples as f64)
            .sum();
        self.norm_sum = self.updates.iter().map(|u| u.norm).sum();
        self.norms = self.updates.iter().map(|u| u.norm).collect();
        self.phases = self.updates.iter().map(|u| u.phases).collect();
    }

    /// When a pending client that died would have been fitting (start of its compute).
    pub fn crash_time(&self, c: ClientId) -> f64 {
        self.timelines
            .get(&c)
            .map_or(self.sim_start, |t| t.start + t.download)
    }

    fn dropped(&self, r: DropReason) -> usize {
        self.dropped.get(&r).copied().unwrap_or(0)
    }

    /// The summary line of this round.
    pub fn summary(&self, r: RoundFacts) -> RoundSummary {
        let n = self.phases.len().max(1) as f64;
        let mean = |k: usize| self.phases.iter().map(|p| p[k]).sum::<f64>() / n;
        let p90 = |k: usize| p90(self.phases.iter().map(|p| p[k]).collect());
        RoundSummary {
            dp: r.dp,
            byzantine: r.byzantine,
            secure_aggregation: self.secure,
            hierarchy: self.hierarchy.clone(),
            split: self.split,
            update_norms: self.norms.clone(),
            phases: self.phases.clone(),
            clients: {
                let mut c = self.records.clone();
                c.sort_by_key(|r| r.client);
                c
            },
            round: self.round,
            sampled: self.sampled,
            completed: r.folded,
            failed: self.dropped(DropReason::Failed) + r.rejected,
            edge_lost: self.dropped(DropReason::EdgeLost),
            available: self.available,
            unavailable: self.unavailable,
            crashed: self.dropped(DropReason::Crashed),
            missed_deadline: self.dropped(DropReason::Deadline),
            late_max_s: self.late_max,
            sim_start_s: self.sim_start,
            sim_duration_s: self.close_at - self.sim_start,
            download_s_mean: mean(0),
            compute_s_mean: mean(1),
            upload_s_mean: mean(2),
            download_s_p90: p90(0),
            compute_s_p90: p90(1),
            upload_s_p90: p90(2),
            host_seconds_saved: r.host_per_token * self.skipped_tokens as f64,
            skipped: r.skipped,
            staleness_mean: (!self.staleness.is_empty())
                .then(|| self.staleness.iter().sum::<usize>() as f64 / self.staleness.len() as f64),
            staleness_max: self.staleness.iter().copied().max(),
            lr: self.lr,
            train_loss: if self.examples > 0 {
                self.loss_weighted / self.examples as f64
            } else {
                f64::NAN
            },
            eval_loss: r.eval_loss,
            eval_perplexity: r.eval_perplexity,
            task_accuracy: r.task.as_ref().map(|t| t.subset.accuracy()),
            task_macro_f1: r.task.as_ref().map(|t| t.subset.macro_f1()),
            bytes_down: self.bytes_down,
            bytes_up: self.bytes_up,
            examples: self.examples,
            tokens: self.tokens,
            mean_update_norm: if self.completed > 0 {
                self.norm_sum / self.completed as f64
            } else {
                0.0
            },
            wall_seconds: self.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
            finished_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// The 90th percentile (nearest rank) of `v`; 0 when empty.
fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * 0.9).round().max(0.0) as usize)
        .copied()
        .unwrap_or(0.0)
}

/// What a completed update contributes to the round's statistics.
pub(super) struct UpdateStats {
    client: ClientId,
    loss: f64,
    examples: usize,
    norm: f64,
    phases: [f64; 3],
}

/// What the server adds to a round's tallies when it closes.
pub(super) struct RoundFacts {
    pub folded: usize,
    pub rejected: usize,
    pub eval_loss: f64,
    pub eval_perplexity: f64,
    pub dp: Option<DpRoundMetrics>,
    pub host_per_token: f64,
    pub skipped: Option<String>,
    pub byzantine: Option<crate::messages::ByzantineRound>,
    /// The task's confusions, in rounds that scored it.
    pub task: Option<crate::messages::TaskConfusions>,
}

/// DP metrics of a round from the accountant's guarantee and the pre-clip norms.
pub(super) fn dp_metrics(
    g: Guarantee,
    q: f64,
    clip: f64,
    noise_stddev: f64,
    norms: &[f64],
) -> DpRoundMetrics {
    let mut sorted = norms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        if sorted.is_empty() {
            0.0
        } else {
            sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
        }
    };
    DpRoundMetrics {
        dp_epsilon: g.epsilon,
        dp_epsilon_pld: None,
        dp_delta: g.delta,
        dp_order: g.order,
        dp_sampling_rate: q,
        dp_noise_stddev: noise_stddev,
        dp_clip_norm: clip,
        dp_clipped_fraction: if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().filter(|&&n| n > clip).count() as f64 / sorted.len() as f64
        },
        dp_update_norm_p50: pick(0.5),
        dp_update_norm_p90: pick(0.9),
        dp_update_norm_max: sorted.last().copied().unwrap_or(0.0),
        dp_noised_unclipped_fraction: None,
    }
}
