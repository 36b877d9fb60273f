//! Synchronous rounds: who is online, who is sampled, their plans, who trains (the straggler
//! policy), the answers; the round closes when the last answer is in (see [`super::close`]),
//! and the next begins.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;

use super::close::{close_round, short_round, Closed};
use super::config::ServerMsg;
use super::outcome::EarlyStop;
use super::outcome::ShortReason;
use super::record::RoundState;
use super::secure;
use super::state::Core;
use crate::actors::aggregator::{AggregatorMsg, DpRound};
use crate::actors::client::ClientMsg;
use crate::messages::{ClientId, ClientPlan, CrashCause, FitIns, FitRes, FitStatus, RoundId};
use crate::privacy::DpSampling;
use crate::rng::{purpose, rng_for};
use crate::shutdown::StopLevel;
use crate::stragglers::{decide, Decision, Stragglers};

/// The synchronous driver: one round at a time, every sampled client from the same model.
#[derive(Debug, Clone, Copy)]
pub(super) struct SyncRounds {
    /// `Wait`, `Drop` or `OverSelect` (never `Async`).
    pub(super) stragglers: Stragglers,
    /// The round deadline, virtual seconds after the round starts.
    pub(super) deadline_s: Option<f64>,
}

impl SyncRounds {
    /// Begin the next round (or finish the run after the last, or on a stop request).
    pub(super) async fn begin(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        let Opened {
            round,
            start,
            available,
            target,
            chosen,
            q,
        } = match open_round(me, st, self.stragglers).await? {
            Opening::Sampled(o) => o,
            Opening::Short(closed) => return self.next(me, st, closed),
            Opening::Ended => return Ok(()),
        };
        let payload = Arc::new(st.global.to_safetensors()?);
        let bytes = (st.args.config.download_bytes).unwrap_or(payload.len() as u64);
        st.spawn_clients(me, &chosen).await?;
        let dp = dp_round(st, q, available.len());
        st.args
            .aggregator
            .send_message(AggregatorMsg::Begin { round, dp })?;
        let setup = match secure::set_up(st, &chosen).await? {
            Ok(setup) => setup,
            Err(why) => {
                let why = ShortReason::SecureSetup(Arc::new(why));
                let closed = short_round(me, st, round, start, available.len(), why, None).await?;
                return self.next(me, st, closed);
            }
        };
        let up = setup.upload.unwrap_or(st.upload_bytes(bytes));
        let when = (start + setup.seconds, &setup.mask_s);
        let plans = collect_plans(&st.clients, round, when, (bytes, up), &chosen).await;
        let plans_ok: Vec<(ClientId, ClientPlan)> = plans
            .iter()
            .filter_map(|(c, p)| p.as_ref().ok().map(|p| (*c, *p)))
            .collect();
        let decided = decide(self.stragglers, start, self.deadline_s, target, &plans_ok);
        let lr = st.args.config.lr(round);
        st.current = RoundState::open(round, lr, start, decided.close_at);
        let unavailable = st.alive_count() - available.len();
        let cur = &mut st.current;
        cur.sampled = chosen.len();
        cur.available = available.len();
        cur.unavailable = unavailable;
        cur.bytes_down = bytes * chosen.len() as u64;
        cur.q = q;
        cur.secure = setup.cost;
        let model = Model::of(round, payload, st.global.clone());
        dispatch(st, &plans, decided.decisions, &model);
        if st.current.pending.is_empty() {
            self.close(me, st).await?;
        }
        Ok(())
    }

    /// A client's answer; the round closes with the last one.
    pub(super) async fn on_fit(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        res: FitRes,
    ) -> Result<(), ActorProcessingErr> {
        if res.round != st.current.round || !st.current.pending.remove(&res.client) {
            return Ok(()); // late or duplicate answer
        }
        match &res.status {
            FitStatus::Completed(u) => st.count_host(u),
            FitStatus::Failed { reason } => {
                tracing::warn!(
                    "round {}: client {} failed: {reason}",
                    st.current.round,
                    res.client
                );
            }
            _ => {}
        }
        let cur = &mut st.current;
        let plan = cur.timelines.get(&res.client).map(|t| (*t, 0));
        cur.count(res.client, &res.status, plan);
        if cur.pending.is_empty() {
            self.close(me, st).await?;
        }
        Ok(())
    }

    /// A client's actor died (learned by supervision): if it was training, it crashed when
    /// its timeline says the crash is seen.
    pub(super) async fn on_crash(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        client: ClientId,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        if !st.current.pending.contains(&client) {
            return Ok(());
        }
        let res = FitRes {
            client,
            round: st.current.round,
            status: FitStatus::Crashed {
                at: st.current.crash_time(client),
                cause: CrashCause::Panicked(why),
            },
        };
        self.on_fit(me, st, res).await
    }

    /// Close the round; once recorded, retire its clients and begin the next.
    async fn close(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        let closed = close_round(me, st, None).await?;
        self.next(me, st, closed)
    }

    /// After a close: a recorded round's clients retire and the next round begins.
    fn next(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        closed: Closed,
    ) -> Result<(), ActorProcessingErr> {
        if closed == Closed::Recorded {
            st.retire_clients();
            me.send_message(ServerMsg::BeginRound)?;
        }
        Ok(())
    }
}

/// How a synchronous or hierarchical round opens.
pub(super) enum Opening {
    /// The run ended (its last round, a stop request, no slot left, the privacy budget).
    Ended,
    /// Too few clients were online: the round was recorded as short.
    Short(Closed),
    /// Clients were sampled.
    Sampled(Opened),
}

/// A round whose clients were sampled.
pub(super) struct Opened {
    pub(super) round: RoundId,
    /// Its virtual start.
    pub(super) start: f64,
    /// The clients online at the start.
    pub(super) available: Vec<ClientId>,
    /// The updates the round wants (before over-selection).
    pub(super) target: usize,
    /// The sampled clients (the target plus any over-selected), sorted.
    pub(super) chosen: Vec<ClientId>,
    /// The sampling rate it is accounted with (DP; 0 without).
    pub(super) q: f64,
}

/// Open the next round: finish the run after the last round or on a stop request, record a
/// short round when too few clients are online, else sample (over-selecting under
/// `stragglers`) and check the privacy budget.
pub(super) async fn open_round(
    me: &ActorRef<ServerMsg>,
    st: &mut Core,
    stragglers: Stragglers,
) -> Result<Opening, ActorProcessingErr> {
    let round = st.summaries.len() + 1;
    if round > st.args.config.rounds || st.args.shutdown.level() >= StopLevel::FinishRound {
        st.finish(me, None);
        return Ok(Opening::Ended);
    }
    if st.slots_gone(me, round).await {
        return Ok(Opening::Ended);
    }
    let start = st.clock;
    let available = online(st, round, start);
    if let Some(why) = too_few(st, start, available.len()) {
        let closed = short_round(me, st, round, start, available.len(), why, None).await?;
        return Ok(Opening::Short(closed));
    }
    let target = st.args.config.sampling.sample_size(available.len());
    let extra = match stragglers {
        Stragglers::OverSelect { extra } => extra,
        _ => 0,
    };
    let chosen = sample_clients(st, round, &available, target + extra);
    let Some(q) = check_budget(me, st, round, chosen.len(), available.len()) else {
        return Ok(Opening::Ended);
    };
    Ok(Opening::Sampled(Opened {
        round,
        start,
        available,
        target,
        chosen,
        q,
    }))
}

/// Why a round with `available` clients online at `start` cannot run, if it cannot.
fn too_few(st: &Core, start: f64, available: usize) -> Option<ShortReason> {
    let s = st.args.config.sampling;
    let needed = s.min_available_clients.max(s.min_fit_clients);
    (available < needed).then(|| ShortReason::TooFewAvailable {
        available,
        alive: st.alive.len(),
        needed,
        at: start,
    })
}

/// The clients online at `start`.
fn online(st: &Core, round: RoundId, start: f64) -> Vec<ClientId> {
    let faults = &st.args.clients.faults;
    (0..st.alive.len())
        .filter(|&c| st.alive[c] && faults.available(round, c, start))
        .collect()
}

/// What clients train from: the round their `FitIns` names, the model and its bytes.
pub(super) struct Model {
    /// The round (a training round under a hierarchy).
    pub(super) round: RoundId,
    /// The model serialised as safetensors (what the download carries).
    pub(super) payload: Arc<Vec<u8>>,
    /// The same model, decoded.
    pub(super) global: Arc<crate::model::AdapterSet>,
}

impl Model {
    pub(super) fn of(
        round: RoundId,
        payload: Arc<Vec<u8>>,
        global: Arc<crate::model::AdapterSet>,
    ) -> Self {
        Model {
            round,
            payload,
            global,
        }
    }
}

/// Record the clients that will not train, send `FitIns` to those that will.
pub(super) fn dispatch(
    st: &mut Core,
    plans: &[(ClientId, Result<ClientPlan, String>)],
    decisions: Vec<(ClientId, Decision)>,
    model: &Model,
) {
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
                    round: model.round,
                    payload: model.payload.clone(),
                    global: model.global.clone(),
                    config: st.fit_config(),
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
}

/// The sampling rate this round is accounted with, or `None` when the privacy budget stops the
/// run before it (the run is then finished).
fn check_budget(
    me: &ActorRef<ServerMsg>,
    st: &mut Core,
    round: RoundId,
    sampled: usize,
    available: usize,
) -> Option<f64> {
    let Some(ledger) = &st.ledger else {
        return Some(0.0);
    };
    let q = ledger.sampling_rate(st.args.config.sampling.fraction_fit, sampled, available);
    if let Some(max) = ledger.plan().max_epsilon {
        let next = ledger.peek(q);
        if next.epsilon > max {
            st.stop = Some(EarlyStop::Budget {
                round,
                epsilon: next.epsilon,
                max,
                delta: next.delta,
            });
            st.finish(me, None);
            return None;
        }
    }
    Some(q)
}

pub(super) fn dp_round(st: &Core, q: f64, available: usize) -> Option<DpRound> {
    st.ledger.as_ref().map(|l| {
        let plan = l.plan();
        DpRound {
            server_clip: (!plan.mechanism.clips_on_client()).then_some(l.clip()),
            sum_stddev: match plan.noise_by {
                crate::privacy::NoiseBy::Server => l.sum_stddev(),
                crate::privacy::NoiseBy::Clients { .. } => 0.0,
            },
            client_noise: l
                .client_stddev()
                .map(|s| (s, plan.noise_by.min_survivors())),
            denominator: match plan.sampling {
                DpSampling::Poisson => Some(q * available as f64),
                DpSampling::Fixed => None,
            },
            noise: plan.noise,
            seed: st.args.config.seed,
        }
    })
}

/// Ask every sampled client for its plan, all at once.
pub(super) async fn collect_plans(
    clients: &HashMap<ClientId, ActorRef<ClientMsg>>,
    round: RoundId,
    (start, mask_s): (f64, &HashMap<ClientId, f64>),
    (down, up): (u64, u64),
    chosen: &[ClientId],
) -> Vec<(ClientId, Result<ClientPlan, String>)> {
    let mut waiting = Vec::with_capacity(chosen.len());
    for &c in chosen {
        let (tx, rx) = ractor::concurrency::oneshot();
        let msg = ClientMsg::Plan {
            round,
            start,
            down_bytes: down,
            up_bytes: up,
            mask_s: mask_s.get(&c).copied().unwrap_or(0.0),
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

/// Flower's fixed-size sample of `k` (plus over-selection), or Poisson sampling under
/// `dp.sampling: Poisson`; sorted.
fn sample_clients(st: &Core, round: RoundId, available: &[ClientId], k: usize) -> Vec<ClientId> {
    let k = k.min(available.len());
    let mut rng = rng_for(st.args.config.seed, &[purpose::SAMPLE, round as u64]);
    let poisson = st
        .ledger
        .as_ref()
        .is_some_and(|l| l.plan().sampling == DpSampling::Poisson);
    let mut chosen: Vec<ClientId> = if poisson {
        let q = st.args.config.sampling.fraction_fit;
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
