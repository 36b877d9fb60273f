//! One round: who is online, who is sampled, their plans, who trains (the straggler policy),
//! the answers, and the close — aggregate, evaluate, account, record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{call, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;

use super::record::{dp_metrics, RoundFacts, RoundState};
use super::{evaluate, finish, retire_clients, spawn_clients, EarlyStop, ServerMsg, ServerState};
use crate::actors::aggregator::{Aggregate, AggregatorMsg, DpRound};
use crate::actors::client::ClientMsg;
use crate::messages::{
    ClientId, ClientPlan, CrashCause, FitConfig, FitIns, FitRes, FitStatus, RoundId,
};
use crate::privacy::{DpSampling, PrivacyLedger};
use crate::rng::{purpose, rng_for};
use crate::scenario::file::ShortRound;
use crate::shutdown::StopLevel;
use crate::stragglers::{decide, Decision, Stragglers};
use crate::train::cosine_annealing;

/// Virtual seconds a round with too few clients waits before the next one (without a deadline).
const SHORT_ROUND_WAIT: f64 = 60.0;

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
    let faults = &st.args.clients.faults;
    let alive: Vec<ClientId> = (0..st.alive.len()).filter(|&c| st.alive[c]).collect();
    let available: Vec<ClientId> = alive
        .iter()
        .copied()
        .filter(|&c| faults.available(round, c, start))
        .collect();
    let s = st.args.sampling;
    let needed = s.min_available_clients.max(s.min_fit_clients);
    if available.len() < needed {
        let why = format!(
            "{} of {} clients available at t = {start:.1} s, fewer than the {needed} needed \
             (strategy.min_available_clients / min_fit_clients)",
            available.len(),
            st.alive.len()
        );
        return short_round(me, st, round, start, alive.len(), available.len(), why).await;
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
        unavailable: alive.len() - available.len(),
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
    // Clients whose plan could not be had: their actor is gone.
    for (c, p) in &plans {
        if let Err(why) = p {
            st.alive[*c] = false;
            let status = FitStatus::Crashed {
                at: start,
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
    for (c, d) in decided.decisions {
        match d {
            Decision::Skip(status) => {
                let plan = plan_of(c);
                st.current.skipped_tokens += plan.map_or(0, |p| p.1);
                st.current.count(c, &status, plan);
            }
            Decision::Train => {
                if let Some((t, _)) = plan_of(c) {
                    st.current.timelines.insert(c, t);
                }
                st.current.pending.insert(c);
                let ins = FitIns {
                    round,
                    payload: payload.clone(),
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
        local: st.args.local.clone(),
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
            st.stop = Some(EarlyStop::Budget(format!(
                "privacy budget: round {round} would reach epsilon {:.4} > dp.max_epsilon {max} \
                 (delta {:e}); stopped after round {}",
                next.epsilon,
                next.delta,
                round - 1
            )));
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

pub(super) async fn close_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    let global = st.global.clone();
    let agg = call!(st.args.aggregator, |reply| AggregatorMsg::Finish {
        global,
        reply
    })?;
    let round = st.current.round;
    st.current.settle();
    for (client, why) in &agg.rejected {
        tracing::warn!("round {round}: update of client {client} rejected: {why}");
    }
    if let Some(why) = non_finite(&agg) {
        // Keep the last finite global adapter: it is what the run directory saves.
        finish(me, st, Some(format!("round {round}: {why}")));
        return Ok(());
    }
    let changed = agg.folded > 0 || agg.noise_stddev.is_some();
    st.global = agg.global.clone();
    let eval = match (changed, st.last_eval) {
        _ if !st.args.evaluate => crate::messages::EvaluateRes {
            round,
            loss: f64::NAN,
            perplexity: f64::NAN,
            tokens: 0,
        },
        (false, Some(e)) => e,
        _ => match evaluate(&st.args.slots, round, Some(st.global.clone())).await {
            Ok(e) => e,
            Err(e) => {
                finish(
                    me,
                    st,
                    Some(format!("evaluation after round {round} failed: {e}")),
                );
                return Ok(());
            }
        },
    };
    if st.args.evaluate && !eval.loss.is_finite() {
        finish(
            me,
            st,
            Some(format!(
                "round {round}: the held-out loss is {} (the model diverged; lower train.lr_max)",
                eval.loss
            )),
        );
        return Ok(());
    }
    st.last_eval = Some(eval);
    let dp = account(st, round, &agg);
    let facts = RoundFacts {
        folded: agg.folded,
        rejected: agg.rejected.len(),
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        dp,
        host_per_token: host_per_token(st),
        skipped: None,
    };
    record(me, st, facts).await
}

fn host_per_token(st: &ServerState) -> f64 {
    let (secs, tokens) = st.host_per_token;
    if tokens == 0 {
        0.0
    } else {
        secs / tokens as f64
    }
}

/// Record the round (sink, clock, pace) and start the next one.
async fn record(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    facts: RoundFacts,
) -> Result<(), ActorProcessingErr> {
    let round = st.current.round;
    if !st.is_async() {
        retire_clients(st);
    }
    let summary = st.current.summary(facts);
    st.clock = st.current.close_at;
    if let Err(e) = (st.args.sink)(&summary) {
        st.summaries.push(summary);
        finish(me, st, Some(format!("cannot record round {round}: {e}")));
        return Ok(());
    }
    st.summaries.push(summary);
    if let (Some(pace), Some(started)) = (st.args.pace, st.current.started) {
        // Play rounds at a watchable rate; the simulation itself is unchanged.
        let elapsed = started.elapsed();
        if elapsed < pace {
            let mut stop = st.args.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(pace - elapsed) => {}
                _ = stop.reached(StopLevel::FinishRound) => {}
            }
        }
    }
    if !st.is_async() {
        me.send_message(ServerMsg::BeginRound)?;
    }
    Ok(())
}

/// A round with too few clients: recorded with its reason; the model does not change and no
/// privacy is spent. The run goes on, or stops, as `system.short_round` says.
async fn short_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    round: RoundId,
    start: f64,
    alive: usize,
    available: usize,
    why: String,
) -> Result<(), ActorProcessingErr> {
    st.current = RoundState {
        round,
        lr: cosine_annealing(round, st.args.rounds, st.args.lr_max, st.args.lr_min),
        started: Some(Instant::now()),
        available,
        unavailable: alive - available,
        sim_start: start,
        close_at: start + st.args.system.deadline_s.unwrap_or(SHORT_ROUND_WAIT),
        ..Default::default()
    };
    let eval = st.last_eval.unwrap_or(crate::messages::EvaluateRes {
        round,
        loss: f64::NAN,
        perplexity: f64::NAN,
        tokens: 0,
    });
    let dp = st.ledger.as_ref().and_then(PrivacyLedger::last).map(|g| {
        let l = st.ledger.as_ref().expect("checked above");
        dp_metrics(g, 0.0, l.clip(), 0.0, &[])
    });
    let facts = RoundFacts {
        folded: 0,
        rejected: 0,
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        dp,
        host_per_token: host_per_token(st),
        skipped: Some(why.clone()),
    };
    if st.args.system.short_round == ShortRound::Stop {
        let summary = st.current.summary(facts);
        st.clock = st.current.close_at;
        let _ = (st.args.sink)(&summary);
        st.summaries.push(summary);
        st.stop = Some(EarlyStop::TooFewClients(format!("round {round}: {why}")));
        finish(me, st, None);
        return Ok(());
    }
    record(me, st, facts).await
}

/// Privacy accounting after a round (and the adaptive clip's update).
fn account(
    st: &mut ServerState,
    round: RoundId,
    agg: &Aggregate,
) -> Option<crate::messages::DpRoundMetrics> {
    let seed = st.args.seed;
    let cur = &st.current;
    st.ledger.as_mut().map(|ledger| {
        let g = ledger.record(cur.q);
        let clip = ledger.clip();
        let mut m = dp_metrics(g, cur.q, clip, agg.noise_stddev.unwrap_or(0.0), &cur.norms);
        // Adaptive clipping: the same denominator as the update average.
        let denom = match ledger.plan().sampling {
            DpSampling::Poisson => cur.q * cur.available as f64,
            DpSampling::Fixed => agg.folded as f64,
        };
        let mut noise = ledger
            .plan()
            .noise
            .generator(seed, round, 1, ledger.count_stddev());
        m.dp_noised_unclipped_fraction = ledger.adapt_clip(&cur.norms, denom, &mut noise);
        m.dp_epsilon_pld = ledger.pld_epsilon();
        m
    })
}

/// Why the aggregated adapter cannot become the global one, if it cannot.
fn non_finite(agg: &Aggregate) -> Option<String> {
    let bad = agg.global.data().iter().filter(|x| !x.is_finite()).count();
    if bad == 0 {
        return None;
    }
    let cause = match agg.noise_stddev {
        Some(sd) => format!(
            "DP noise of std {} per coordinate on the averaged update overflowed f32 (raise \
             strategy.fraction_fit or clients.count, or lower the noise multiplier)",
            crate::fmt::compact(sd)
        ),
        None => "the averaged update overflowed f32 (lower train.lr_max)".to_string(),
    };
    Some(format!(
        "the aggregated global adapter has {bad} non-finite values of {}: {cause}; the adapter \
         of the previous round is kept",
        agg.global.data().len()
    ))
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
