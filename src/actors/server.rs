//! The server: owns the global adapter and the round loop — sample clients with a seeded RNG,
//! send `FitIns`, collect `FitRes` (failures are data), let the aggregator fold and close the
//! round, evaluate on the held-out split, emit a `RoundSummary`. It supervises the client
//! actors: a client that dies is recorded as a failed update and is not sampled again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use ractor::{call, Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::aggregator::{AggregatorMsg, DpRound};
use super::client::{Client, ClientArgs, ClientMsg};
use crate::messages::DpRoundMetrics;
use crate::messages::{
    ClientId, EvaluateIns, EvaluateRes, FitConfig, FitIns, FitRes, FitStatus, RoundId, RoundSummary,
};
use crate::model::AdapterSet;
use crate::privacy::{DpPlan, DpSampling, Guarantee, PrivacyLedger};
use crate::rng::{purpose, rng_for};
use crate::scenario::Sampling;
use crate::shutdown::{Shutdown, StopLevel};
use crate::slots::{Job, SlotHandle};
use crate::train::{cosine_annealing, LocalTraining};
use rand::Rng;

/// Server actor.
pub struct Server;

/// Called with each finished round (progress display, run log).
pub type RoundSink = Box<dyn FnMut(&RoundSummary) -> Result<(), String> + Send>;

/// What the server needs to run.
pub struct ServerArgs {
    /// Rounds to run.
    pub rounds: usize,
    /// Master seed.
    pub seed: u64,
    /// Client sampling.
    pub sampling: Sampling,
    /// Local training plan.
    pub local: LocalTraining,
    /// LR schedule bounds.
    pub lr_max: f64,
    /// LR schedule bounds.
    pub lr_min: f64,
    /// Each client's shard.
    pub shards: Vec<Arc<[u32]>>,
    /// Slot pool.
    pub slots: SlotHandle,
    /// The aggregator.
    pub aggregator: ActorRef<AggregatorMsg>,
    /// The adapter before round 1.
    pub initial: Arc<AdapterSet>,
    /// Receives each round's summary.
    pub sink: RoundSink,
    /// Client-level DP, if on.
    pub dp: Option<DpPlan>,
    /// Stop requests: at `FinishRound` no new round starts (and `--pace` waits end).
    pub shutdown: Shutdown,
    /// Minimum wall time per round (`--pace`), so live dashboards can follow.
    pub pace: Option<std::time::Duration>,
    /// Where the outcome goes.
    pub done: oneshot::Sender<ServerOutcome>,
}

/// How the run ended.
#[derive(Debug)]
pub struct ServerOutcome {
    /// Evaluation of the base model before training.
    pub baseline: Option<EvaluateRes>,
    /// One summary per completed round.
    pub rounds: Vec<RoundSummary>,
    /// The final global adapter.
    pub global: Arc<AdapterSet>,
    /// Stopped early by the shutdown signal.
    pub interrupted: bool,
    /// A fatal error (evaluation failed, no clients left), if any.
    pub error: Option<String>,
    /// Why training stopped before `rounds` without an error (the privacy budget).
    pub stop_reason: Option<String>,
    /// (ε, δ) after the last round, when DP is on.
    pub epsilon: Option<Guarantee>,
    /// The clipping norm in force at the end, when DP is on.
    pub final_clip: Option<f64>,
    /// ε by PLD after the last round, when `dp.pld` is on.
    pub epsilon_pld: Option<f64>,
}

/// Messages the server understands.
pub enum ServerMsg {
    /// Evaluate the base model, then start round 1.
    Start,
    /// Start the next round.
    BeginRound,
    /// A client's answer.
    Fit(FitRes),
    /// Close a round nobody was sampled for.
    CloseRound,
    /// Stop now: abandon the round in progress (a second stop request).
    Abandon,
}

impl From<FitRes> for ServerMsg {
    fn from(r: FitRes) -> Self {
        ServerMsg::Fit(r)
    }
}

impl TryFrom<ServerMsg> for FitRes {
    type Error = ();
    fn try_from(m: ServerMsg) -> Result<Self, ()> {
        match m {
            ServerMsg::Fit(r) => Ok(r),
            _ => Err(()),
        }
    }
}

#[derive(Default)]
struct RoundState {
    round: RoundId,
    lr: f64,
    started: Option<Instant>,
    pending: HashSet<ClientId>,
    sampled: usize,
    completed: usize,
    failed: usize,
    loss_weighted: f64,
    examples: usize,
    bytes_down: u64,
    bytes_up: u64,
    tokens: usize,
    norm_sum: f64,
    /// Pre-clip norms of completed updates (DP metrics).
    norms: Vec<f64>,
    /// Sampling rate this round is accounted with (DP).
    q: f64,
    /// Clients available when the round started.
    available: usize,
}

/// Server state.
pub struct ServerState {
    args: ServerArgs,
    clients: Vec<ActorRef<ClientMsg>>,
    by_actor: HashMap<ActorId, ClientId>,
    alive: Vec<bool>,
    global: Arc<AdapterSet>,
    baseline: Option<EvaluateRes>,
    summaries: Vec<RoundSummary>,
    current: RoundState,
    ledger: Option<PrivacyLedger>,
    stop_reason: Option<String>,
    done: Option<oneshot::Sender<ServerOutcome>>,
}

impl Actor for Server {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = ServerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ServerMsg>,
        mut args: ServerArgs,
    ) -> Result<ServerState, ActorProcessingErr> {
        let n = args.shards.len();
        let mut clients = Vec::with_capacity(n);
        let mut by_actor = HashMap::with_capacity(n);
        for (id, shard) in args.shards.iter().enumerate() {
            let cargs = ClientArgs {
                id,
                shard: shard.clone(),
                slots: args.slots.clone(),
                reply: me.get_derived(),
            };
            let (client, _) = Actor::spawn_linked(None, Client, cargs, me.get_cell()).await?;
            by_actor.insert(client.get_id(), id);
            clients.push(client);
        }
        let (tx, _rx) = oneshot::channel();
        let done = Some(std::mem::replace(&mut args.done, tx));
        let global = args.initial.clone();
        let ledger = args.dp.clone().map(PrivacyLedger::new);
        Ok(ServerState {
            args,
            clients,
            by_actor,
            alive: vec![true; n],
            global,
            baseline: None,
            summaries: Vec::new(),
            current: RoundState::default(),
            ledger,
            stop_reason: None,
            done,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ServerMsg>,
        msg: ServerMsg,
        st: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServerMsg::Start => match evaluate(&st.args.slots, 0, None).await {
                Ok(res) => {
                    st.baseline = Some(res);
                    me.send_message(ServerMsg::BeginRound)?;
                }
                Err(e) => finish(&me, st, Some(format!("baseline evaluation failed: {e}"))),
            },
            ServerMsg::BeginRound => begin_round(&me, st)?,
            ServerMsg::Fit(res) => on_fit(&me, st, res).await?,
            ServerMsg::CloseRound => close_round(&me, st).await?,
            ServerMsg::Abandon => finish(&me, st, None),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ServerMsg>,
        evt: SupervisionEvent,
        st: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, why) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell.get_id(), err.to_string()),
            _ => return Ok(()),
        };
        if st.done.is_none() {
            return Ok(()); // shutting down: children stopping is expected
        }
        if let Some(&client) = st.by_actor.get(&who) {
            st.alive[client] = false;
            if st.current.pending.contains(&client) {
                let res = FitRes {
                    client,
                    round: st.current.round,
                    status: FitStatus::Failed {
                        reason: format!("client actor died: {why}"),
                    },
                };
                on_fit(&me, st, res).await?;
            }
        }
        Ok(())
    }
}

fn begin_round(me: &ActorRef<ServerMsg>, st: &mut ServerState) -> Result<(), ActorProcessingErr> {
    let round = st.summaries.len() + 1;
    if round > st.args.rounds || st.args.shutdown.level() >= StopLevel::FinishRound {
        finish(me, st, None);
        return Ok(());
    }
    let available: Vec<ClientId> = (0..st.alive.len()).filter(|&c| st.alive[c]).collect();
    if available.len() < st.args.sampling.min_available_clients {
        let msg = format!(
            "round {round}: {} clients available, fewer than strategy.min_available_clients = {}",
            available.len(),
            st.args.sampling.min_available_clients
        );
        finish(me, st, Some(msg));
        return Ok(());
    }
    let chosen = sample_clients(st, round, &available);
    let k = chosen.len();
    let q = match &st.ledger {
        Some(ledger) => {
            let fixed_k = st.args.sampling.sample_size(available.len());
            let q = ledger.sampling_rate(st.args.sampling.fraction_fit, fixed_k, available.len());
            if let Some(max) = ledger.plan().max_epsilon {
                let next = ledger.peek(q);
                if next.epsilon > max {
                    st.stop_reason = Some(format!(
                        "privacy budget: round {round} would reach epsilon {:.4} > dp.max_epsilon {max} \
                         (delta {:e}); stopped after round {}",
                        next.epsilon,
                        next.delta,
                        round - 1
                    ));
                    finish(me, st, None);
                    return Ok(());
                }
            }
            q
        }
        None => 0.0,
    };
    let payload = Arc::new(st.global.to_safetensors()?);
    let lr = cosine_annealing(round, st.args.rounds, st.args.lr_max, st.args.lr_min);
    st.current = RoundState {
        round,
        lr,
        started: Some(Instant::now()),
        pending: chosen.iter().copied().collect(),
        sampled: k,
        bytes_down: payload.len() as u64 * k as u64,
        q,
        available: available.len(),
        ..Default::default()
    };
    let dp = st.ledger.as_ref().map(|l| {
        let plan = l.plan();
        DpRound {
            server_clip: (!plan.mechanism.clips_on_client()).then_some(l.clip()),
            sum_stddev: l.sum_stddev(),
            denominator: match plan.sampling {
                DpSampling::Poisson => Some(q * available.len() as f64),
                DpSampling::Fixed => None,
            },
            noise: plan.noise,
            seed: st.args.seed,
        }
    });
    st.args
        .aggregator
        .send_message(AggregatorMsg::Begin { round, dp })?;
    if chosen.is_empty() {
        // Poisson sampling can pick nobody; the (noised) round still happens.
        me.send_message(ServerMsg::CloseRound)?;
    }
    for &c in &chosen {
        let ins = FitIns {
            round,
            payload: payload.clone(),
            config: FitConfig {
                lr,
                local: st.args.local.clone(),
                clip_norm: st
                    .ledger
                    .as_ref()
                    .filter(|l| l.plan().mechanism.clips_on_client())
                    .map(PrivacyLedger::clip),
            },
        };
        if st.clients[c].send_message(ClientMsg::Fit(ins)).is_err() {
            // The actor is gone; its supervision event records the failure.
            st.alive[c] = false;
        }
    }
    Ok(())
}

async fn on_fit(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    res: FitRes,
) -> Result<(), ActorProcessingErr> {
    let cur = &mut st.current;
    if res.round != cur.round || !cur.pending.remove(&res.client) {
        return Ok(()); // late or duplicate answer
    }
    match res.status {
        FitStatus::Completed(u) => {
            cur.completed += 1;
            cur.loss_weighted += u.train_loss * u.num_examples as f64;
            cur.examples += u.num_examples;
            cur.bytes_up += u.payload.len() as u64;
            cur.tokens += u.tokens;
            cur.norm_sum += u.update_norm;
            cur.norms.push(u.update_norm);
            st.args.aggregator.send_message(AggregatorMsg::Fold {
                client: res.client,
                payload: u.payload,
                num_examples: u.num_examples,
            })?;
        }
        FitStatus::Failed { reason } => {
            cur.failed += 1;
            tracing::warn!(
                "round {}: client {} failed: {reason}",
                cur.round,
                res.client
            );
        }
    }
    if cur.pending.is_empty() {
        close_round(me, st).await?;
    }
    Ok(())
}

async fn close_round(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    let global = st.global.clone();
    let agg = call!(st.args.aggregator, |reply| AggregatorMsg::Finish {
        global,
        reply
    })?;
    let round = st.current.round;
    for (client, why) in &agg.rejected {
        tracing::warn!("round {round}: update of client {client} rejected: {why}");
    }
    if let Some(why) = non_finite(&agg) {
        // Keep the last finite global adapter: it is what the run directory saves.
        finish(me, st, Some(format!("round {round}: {why}")));
        return Ok(());
    }
    st.global = agg.global;
    let eval = match evaluate(&st.args.slots, round, Some(st.global.clone())).await {
        Ok(e) => e,
        Err(e) => {
            finish(
                me,
                st,
                Some(format!("evaluation after round {round} failed: {e}")),
            );
            return Ok(());
        }
    };
    if !eval.loss.is_finite() {
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
    let seed = st.args.seed;
    let dp = st.ledger.as_mut().map(|ledger| {
        let cur = &st.current;
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
    });
    let cur = &st.current;
    let summary = RoundSummary {
        dp,
        update_norms: cur.norms.clone(),
        round,
        sampled: cur.sampled,
        completed: agg.folded,
        failed: cur.failed + agg.rejected.len(),
        lr: cur.lr,
        train_loss: if cur.examples > 0 {
            cur.loss_weighted / cur.examples as f64
        } else {
            f64::NAN
        },
        eval_loss: eval.loss,
        eval_perplexity: eval.perplexity,
        bytes_down: cur.bytes_down,
        bytes_up: cur.bytes_up,
        examples: cur.examples,
        tokens: cur.tokens,
        mean_update_norm: if cur.completed > 0 {
            cur.norm_sum / cur.completed as f64
        } else {
            0.0
        },
        wall_seconds: cur.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        finished_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
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
    me.send_message(ServerMsg::BeginRound)?;
    Ok(())
}

/// Why the aggregated adapter cannot become the global one, if it cannot.
fn non_finite(agg: &super::aggregator::Aggregate) -> Option<String> {
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

fn dp_metrics(g: Guarantee, q: f64, clip: f64, noise_stddev: f64, norms: &[f64]) -> DpRoundMetrics {
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

/// Flower's fixed-size sample, or Poisson sampling under `dp.sampling: Poisson`; sorted.
fn sample_clients(st: &ServerState, round: RoundId, available: &[ClientId]) -> Vec<ClientId> {
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
        let k = st.args.sampling.sample_size(available.len());
        rand::seq::index::sample(&mut rng, available.len(), k)
            .into_iter()
            .map(|i| available[i])
            .collect()
    };
    chosen.sort_unstable();
    chosen
}

async fn evaluate(
    slots: &SlotHandle,
    round: RoundId,
    adapter: Option<Arc<AdapterSet>>,
) -> Result<EvaluateRes, String> {
    let (tx, rx) = oneshot::channel();
    slots
        .submit(Job::Evaluate {
            ins: EvaluateIns { round, adapter },
            reply: tx,
        })
        .map_err(|e| e.to_string())?;
    rx.await
        .map_err(|_| "the slot dropped the job".to_string())?
        .map_err(|e| e.to_string())
}

fn finish(me: &ActorRef<ServerMsg>, st: &mut ServerState, error: Option<String>) {
    if let Some(done) = st.done.take() {
        let interrupted =
            error.is_none() && st.stop_reason.is_none() && st.summaries.len() < st.args.rounds;
        let _ = done.send(ServerOutcome {
            baseline: st.baseline,
            rounds: std::mem::take(&mut st.summaries),
            global: st.global.clone(),
            interrupted,
            error,
            stop_reason: st.stop_reason.take(),
            epsilon: st.ledger.as_ref().and_then(PrivacyLedger::last),
            final_clip: st.ledger.as_ref().map(PrivacyLedger::clip),
            epsilon_pld: st.ledger.as_ref().and_then(PrivacyLedger::pld_epsilon),
        });
    }
    for c in &st.clients {
        c.stop(None);
    }
    me.stop(None);
}
