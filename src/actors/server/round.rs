//! One round: who is online, who is sampled, their plans, who trains (the straggler policy),
//! and the answers; the close is in [`super::close`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;

use super::close::{close_round, short_round};
use super::record::RoundState;
use super::{finish, spawn_clients, EarlyStop, ServerMsg, ServerState};
use crate::actors::aggregator::{AggregatorMsg, DpRound};
use crate::actors::client::ClientMsg;
use crate::messages::{
    ClientId, ClientPlan, CrashCause, FitConfig, FitIns, FitRes, FitStatus, RoundId,
};
use crate::privacy::{DpSampling, PrivacyLedger};
use crate::rng::{purpose, rng_for};
use crate::shutdown::StopLevel;
use crate::stragglers::{decide, Decision, Stragglers};
use crate::train::cosine_annealing;

pub(super) async fn begin_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    let round = st.summaries.len() + 1;
    if round > st.args.rounds || st.args.shutdown.level() >= StopLevel::FinishRound {
        finish(me, st, None);
        return Ok(());
    }
    let start = st.clock;
    let (alive, available) = online(st, round, start);
    let s = st.args.sampling;
    let needed = s.min_available_clients.max(s.min_fit_clients);
    if available.len() < needed {
        let why = format!(
            "{} of {} clients available at t = {start:.1} s, fewer than the {needed} needed \
             (strategy.min_available_clients / min_fit_clients)",
            available.len(),
            st.alive.len()
        );
        return short_round(me, st, round, start, alive, available.len(), why).await;
    }
    let target = s.sample_size(available.len());
    let extra = match st.args.system.stragglers {
        Stragglers::OverSelect { extra } => extra,
        _ => 0,
    };
    let chosen = sample_clients(st, round, &available, (target + extra).min(available.len()));
    let Some(q) = check_budget(me, st, round, chosen.len(), available.len()) else {
        return Ok(());
    };
    let payload = Arc::new(st.global.to_safetensors()?);
    let bytes = payload.len() as u64;
    spawn_clients(me, st, &chosen).await?;
    let plans = collect_plans(&st.clients, round, start, bytes, &chosen).await;
    let decided = decide(
        st.args.system.stragglers,
        start,
        st.args.system.deadline_s,
        target,
        &plans
            .iter()
            .filter_map(|(c, p)| p.as_ref().ok().map(|p| (*c, *p)))
            .collect::<Vec<_>>(),
    );
    st.current = RoundState {
        round,
        lr: cosine_annealing(round, st.args.rounds, st.args.lr_max, st.args.lr_min),
        started: Some(Instant::now()),
        sampled: chosen.len(),
        available: available.len(),
        unavailable: alive - available.len(),
        bytes_down: bytes * chosen.len() as u64,
        q,
        sim_start: start,
        close_at: decided.close_at,
        ..Default::default()
    };
    let dp = dp_round(st, q, available.len());
    st.args
        .aggregator
        .send_message(AggregatorMsg::Begin { round, dp })?;
    dispatch(me, st, &plans, decided.decisions, &payload)
}

/// How many clients are alive, and which are online at `start`.
fn online(st: &ServerState, round: RoundId, start: f64) -> (usize, Vec<ClientId>) {
    let faults = &st.args.clients.faults;
    let alive = st.alive.iter().filter(|&&a| a).count();
    let available = (0..st.alive.len())
        .filter(|&c| st.alive[c] && faults.available(round, c, start))
        .collect();
    (alive, available)
}

/// Record the clients that will not train, send `FitIns` to those that will.
fn dispatch(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    plans: &[(ClientId, Result<ClientPlan, String>)],
    decisions: Vec<(ClientId, Decision)>,
    payload: &Arc<Vec<u8>>,
) -> Result<(), ActorProcessingErr> {
    // Clients whose plan could not be had: their actor is gone.
    for (c, p) in plans {
        if let Err(why) = p {
            st.alive[*c] = false;
            let status = FitStatus::Crashed {
                at: st.current.sim_start,
                cause: CrashCause::Panicked(why.clone()),
            };
            st.current.count(*c, &status, None);
        }
    }
    // Plans by client id (chosen is sorted, and so are the plans).
    let plan_of = |c: ClientId| {
        plans
            .binary_search_by_key(&c, |(id, _)| *id)
            .ok()
            .and_then(|i| plans[i].1.as_ref().ok())
            .map(|p| (p.timeline, p.tokens))
    };
    for (c, d) in decisions {
        let plan = plan_of(c);
        match d {
            Decision::Skip(status) => {
                st.current.skipped_tokens += plan.map_or(0, |p| p.1);
                st.current.count(c, &status, plan);
            }
            Decision::Train => {
                if let Some((t, _)) = plan {
                    st.current.timelines.insert(c, t);
                }
                st.current.pending.insert(c);
                let ins = FitIns {
                    round: st.current.round,
                    payload: payload.clone(),
                    global: st.global.clone(),
                    config: fit_config(st),
                };
                let sent = st
                    .clients
                    .get(&c)
                    .map(|a| a.send_message(ClientMsg::Fit(ins)));
                if !matches!(sent, Some(Ok(()))) {
                    // The actor is gone; its supervision event records the crash.
                    st.alive[c] = false;
                }
            }
        }
    }
    if st.current.pending.is_empty() {
        me.send_message(ServerMsg::CloseRound)?;
    }
    Ok(())
}

pub(super) fn fit_config(st: &ServerState) -> FitConfig {
    FitConfig {
        lr: st.current.lr,
        clip_norm: st
            .ledger
            .as_ref()
            .filter(|l| l.plan().mechanism.clips_on_client())
            .map(PrivacyLedger::clip),
    }
}

/// The sampling rate this round is accounted with, or `None` when the privacy budget stops the
/// run before it (the run is then finished).
fn check_budget(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    round: RoundId,
    sampled: usize,
    available: usize,
) -> Option<f64> {
    let Some(ledger) = &st.ledger else {
        return Some(0.0);
    };
    let q = ledger.sampling_rate(st.args.sampling.fraction_fit, sampled, available);
    if let Some(max) = ledger.plan().max_epsilon {
        let next = ledger.peek(q);
        if next.epsilon > max {
            st.stop = Some(EarlyStop::Budget {
                round,
                epsilon: next.epsilon,
                max,
                delta: next.delta,
            });
            finish(me, st, None);
            return None;
        }
    }
    Some(q)
}

fn dp_round(st: &ServerState, q: f64, available: usize) -> Option<DpRound> {
    st.ledger.as_ref().map(|l| {
        let plan = l.plan();
        DpRound {
            server_clip: (!plan.mechanism.clips_on_client()).then_some(l.clip()),
            sum_stddev: l.sum_stddev(),
            denominator: match plan.sampling {
                DpSampling::Poisson => Some(q * available as f64),
                DpSampling::Fixed => None,
            },
            noise: plan.noise,
            seed: st.args.seed,
        }
    })
}

/// Ask every sampled client for its plan, all at once.
async fn collect_plans(
    clients: &HashMap<ClientId, ActorRef<ClientMsg>>,
    round: RoundId,
    start: f64,
    bytes: u64,
    chosen: &[ClientId],
) -> Vec<(ClientId, Result<ClientPlan, String>)> {
    let mut waiting = Vec::with_capacity(chosen.len());
    for &c in chosen {
        let (tx, rx) = ractor::concurrency::oneshot();
        let msg = ClientMsg::Plan {
            round,
            start,
            down_bytes: bytes,
            up_bytes: bytes,
            reply: RpcReplyPort::from(tx),
        };
        let sent = match clients.get(&c) {
            Some(actor) => actor.send_message(msg).map_err(|_| ()),
            None => Err(()),
        };
        waiting.push((c, sent.map(|_| rx)));
    }
    let mut out = Vec::with_capacity(waiting.len());
    for (c, rx) in waiting {
        let plan = match rx {
            Ok(rx) => rx
                .await
                .map_err(|_| format!("client {c} died before planning round {round}")),
            Err(_) => Err(format!("client {c} is gone")),
        };
        out.push((c, plan));
    }
    out
}

pub(super) async fn on_fit(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    res: FitRes,
) -> Result<(), ActorProcessingErr> {
    let cur = &mut st.current;
    if res.round != cur.round || !cur.pending.remove(&res.client) {
        return Ok(()); // late or duplicate answer
    }
    match &res.status {
        FitStatus::Completed(u) => {
            st.host_per_token.0 += u.host_seconds;
            st.host_per_token.1 += u.tokens;
        }
        FitStatus::Failed { reason } => {
            tracing::warn!(
                "round {}: client {} failed: {reason}",
                cur.round,
                res.client
            );
        }
        _ => {}
    }
    let plan = cur.timelines.get(&res.client).map(|t| (*t, 0));
    cur.count(res.client, &res.status, plan);
    if cur.pending.is_empty() {
        close_round(me, st).await?;
    }
    Ok(())
}

/// Flower's fixed-size sample of `k` (plus over-selection), or Poisson sampling under
/// `dp.sampling: Poisson`; sorted.
fn sample_clients(
    st: &ServerState,
    round: RoundId,
    available: &[ClientId],
    k: usize,
) -> Vec<ClientId> {
    let mut rng = rng_for(st.args.seed, &[purpose::SAMPLE, round as u64]);
    let poisson = st
        .ledger
        .as_ref()
        .is_some_and(|l| l.plan().sampling == DpSampling::Poisson);
    let mut chosen: Vec<ClientId> = if poisson {
        let q = st.args.sampling.fraction_fit;
        available
            .iter()
            .copied()
            .filter(|_| rng.random::<f64>() < q)
            .collect()
    } else {
        rand::seq::index::sample(&mut rng, available.len(), k)
            .into_iter()
            .map(|i| available[i])
            .collect()
    };
    chosen.sort_unstable();
    chosen
}
