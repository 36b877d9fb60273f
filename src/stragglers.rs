//! Straggler policies: from the sampled clients' plans (timelines and crashes on the virtual
//! clock), decide who trains, who is dropped and why, and when the round closes. Decided before
//! anyone trains, so a client the clock shows will be dropped never trains (host time saved).
//!
//! - `Wait`: every client that does not crash trains; the round closes when the last update
//!   arrives (or when the last crash is detected).
//! - `Drop`: the round closes at the deadline; clients that would finish later are dropped
//!   with their lateness.
//! - `OverSelect { extra }`: `extra` more clients than needed are sampled; the first `target`
//!   to finish (by virtual finish time, ties by client id) are kept, the round closes when the
//!   last of them arrives, the rest are dropped with their lateness (also any past a deadline).
//!
//! A crash is detected at the deadline when there is one, else when it happens (supervision).

use serde::{Deserialize, Serialize};

use crate::messages::{ClientId, ClientPlan, CrashCause, FitStatus};

/// A round that cannot reach `min_available_clients` (or samples nobody to train).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ShortRound {
    /// Record it (with the reason) and go on with the next round.
    #[default]
    Skip,
    /// Record it and stop the run (status `completed` with a stop reason).
    Stop,
}

/// What to do about slow clients (scenario `system.stragglers`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Stragglers {
    /// Wait for every update.
    #[default]
    Wait,
    /// Close the round at `system.deadline_s`; later updates are dropped.
    Drop,
    /// Sample `extra` more clients and keep the first to finish.
    OverSelect {
        /// Clients sampled beyond the target.
        extra: usize,
    },
    /// Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022): `concurrency` clients
    /// train at all times, each from the global model current when it started; the server
    /// aggregates every `buffer` arrivals (on the virtual clock), weighting each update by
    /// its examples times a function of its staleness (aggregations since it started). A
    /// "round" is one aggregation.
    Async {
        /// Arrivals per aggregation (k).
        buffer: usize,
        /// Clients training at any time.
        concurrency: usize,
        /// Weight of a stale update.
        #[serde(default)]
        staleness: Staleness,
    },
}

/// How an update's weight falls with its staleness s.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Staleness {
    /// 1 / √(1 + s) (FedBuff's default).
    #[default]
    InverseSqrt,
    /// 1 (staleness ignored).
    Constant,
    /// (1 + s)^(−a).
    Polynomial {
        /// Exponent a ≥ 0.
        a: f64,
    },
}

impl Staleness {
    /// The weight factor of an update `s` aggregations stale.
    pub fn factor(self, s: usize) -> f64 {
        let s = s as f64;
        match self {
            Staleness::InverseSqrt => 1.0 / (1.0 + s).sqrt(),
            Staleness::Constant => 1.0,
            Staleness::Polynomial { a } => (1.0 + s).powf(-a),
        }
    }

    /// The integer weight the exact fold uses: examples × factor on a 2⁻¹⁶ grid (at least 1),
    /// so the average stays exact and order-independent (relative rounding < 2⁻¹⁶ / examples).
    pub fn weight(self, examples: usize, s: usize) -> u64 {
        ((examples as f64 * self.factor(s) * 65536.0).round() as u64).max(1)
    }
}

/// A sampled client's fate in a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Train and upload.
    Train,
    /// No training: why.
    Skip(FitStatus),
}

/// The round as decided before training.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlan {
    /// Per sampled client (in the order given).
    pub decisions: Vec<(ClientId, Decision)>,
    /// When the round closes on the virtual clock.
    pub close_at: f64,
}

/// Decide a round that starts at `start` from the sampled clients' `plans`: keep at most
/// `target` updates under `OverSelect`; `deadline` is relative to `start` (required by `Drop`).
/// Decisions come in the order of `plans`.
pub fn decide(
    policy: Stragglers,
    start: f64,
    deadline: Option<f64>,
    target: usize,
    plans: &[(ClientId, ClientPlan)],
) -> RoundPlan {
    let due = deadline.map(|d| start + d);
    // Crashes never train; they are detected at the deadline, or when they happen.
    let detected: Vec<f64> = plans
        .iter()
        .filter_map(|(_, p)| p.crash.map(|f| due.unwrap_or(p.timeline.crash_time(f))))
        .collect();
    let mut alive: Vec<(ClientId, f64)> = plans
        .iter()
        .filter(|(_, p)| p.crash.is_none())
        .map(|(c, p)| (*c, p.timeline.finish()))
        .collect();
    let latest = |xs: &mut dyn Iterator<Item = f64>| xs.fold(start, f64::max);
    // (who trains, when the round closes)
    let (mut kept, close_at): (Vec<ClientId>, f64) = match policy {
        // Async rounds are not decided here (see the server's asynchronous loop): wait.
        Stragglers::Wait | Stragglers::Async { .. } => (
            alive.iter().map(|a| a.0).collect(),
            latest(&mut alive.iter().map(|a| a.1).chain(detected.iter().copied())),
        ),
        Stragglers::Drop => {
            let d = due.unwrap_or(f64::INFINITY);
            let kept: Vec<ClientId> = alive.iter().filter(|a| a.1 <= d).map(|a| a.0).collect();
            let close = if kept.len() < plans.len() {
                d
            } else {
                latest(&mut alive.iter().map(|a| a.1))
            };
            (kept, close)
        }
        Stragglers::OverSelect { .. } => over_select(&mut alive, due, target, start, &detected),
    };
    kept.sort_unstable();
    let decisions = decisions(plans, &kept, close_at);
    RoundPlan {
        decisions,
        close_at,
    }
}

/// `OverSelect`: the first `target` to arrive (by virtual finish, ties by client id) within the
/// deadline; the round closes with the target-th arrival, or — too few in time — at the
/// deadline (without one, with the last arrival or detected crash).
fn over_select(
    alive: &mut [(ClientId, f64)],
    due: Option<f64>,
    target: usize,
    start: f64,
    detected: &[f64],
) -> (Vec<ClientId>, f64) {
    alive.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let in_time: Vec<(ClientId, f64)> = alive
        .iter()
        .copied()
        .filter(|a| due.is_none_or(|d| a.1 <= d))
        .collect();
    if target > 0 && in_time.len() >= target {
        // Enough arrived: the round closes with the target-th arrival.
        let kept = in_time[..target].iter().map(|a| a.0).collect();
        (kept, in_time[target - 1].1)
    } else {
        let close = due.unwrap_or_else(|| {
            in_time
                .iter()
                .map(|a| a.1)
                .chain(detected.iter().copied())
                .fold(start, f64::max)
        });
        (in_time.iter().map(|a| a.0).collect(), close)
    }
}

/// Each planned client's decision: a crash is skipped as crashed, a kept client trains, the
/// rest are skipped as late by how much they would have missed `close_at`.
fn decisions(
    plans: &[(ClientId, ClientPlan)],
    kept: &[ClientId],
    close_at: f64,
) -> Vec<(ClientId, Decision)> {
    plans
        .iter()
        .map(|(c, p)| {
            let d = if let Some(f) = p.crash {
                Decision::Skip(FitStatus::Crashed {
                    at: p.timeline.crash_time(f),
                    cause: CrashCause::Simulated,
                })
            } else if kept.binary_search(c).is_ok() {
                Decision::Train
            } else {
                Decision::Skip(FitStatus::MissedDeadline {
                    late_by: (p.timeline.finish() - close_at).max(0.0),
                })
            };
            (*c, d)
        })
        .collect()
}
