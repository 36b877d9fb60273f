//! Buffered asynchronous aggregation (FedBuff) on the virtual clock. `concurrency` clients are
//! always training, each from the global model current when it started. Arrivals are taken in
//! virtual order (a client's result is used when it is the earliest in flight and its host
//! training is done); each completed update is released to the aggregator with weight
//! examples × staleness factor, and every `buffer` arrivals make an aggregation — a "round" in
//! the records. A freed place is refilled at once, from the clients online and idle, with the
//! newest model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{ActorProcessingErr, ActorRef};
use rand::Rng;

use super::close::{close_round, short_round};
use super::record::RoundState;
use super::{finish, retire_client, spawn_clients, ServerMsg, ServerState};
use crate::actors::aggregator::AggregatorMsg;
use crate::actors::client::ClientMsg;
use crate::clock::Timeline;
use crate::messages::{ClientId, CrashCause, FitConfig, FitIns, FitRes, FitStatus};
use crate::rng::{purpose, rng_for};
use crate::shutdown::StopLevel;
use crate::stragglers::{Staleness, Stragglers};
use crate::train::cosine_annealing;

/// Dispatches per place in flight without a single update after which the loop gives up
/// (every client crashes or fails): the run fails instead of spinning.
const FUTILE_DISPATCHES_PER_PLACE: usize = 1000;

/// The asynchronous loop's state.
#[derive(Default)]
pub(super) struct AsyncState {
    /// Aggregations done (the model version).
    pub(super) version: usize,
    /// Clients training, sorted by (virtual arrival, client).
    pub(super) flights: Vec<Flight>,
    /// Host results that arrived before their virtual turn.
    pub(super) results: HashMap<ClientId, FitStatus>,
    /// The virtual clock.
    pub(super) now: f64,
    /// Dispatches so far (the sampling RNG's stream).
    pub(super) dispatched: u64,
    /// The serialised global adapter of the current version.
    pub(super) payload: Option<(usize, Arc<Vec<u8>>)>,
    pub(super) started: bool,
    /// Flights of a resumed run, dispatched again (same plan, model and config) at the start.
    pub(super) resumed: Vec<Flight>,
}

pub(super) struct Flight {
    pub(super) client: ClientId,
    /// Arrival, or crash time.
    pub(super) at: f64,
    pub(super) v_start: usize,
    pub(super) crashed: bool,
    pub(super) timeline: Timeline,
    pub(super) tokens: usize,
    /// The dispatch it is (its plan's key) and when it started.
    pub(super) key: u64,
    pub(super) start: f64,
    /// The model it trains from, and how.
    pub(super) payload: Arc<Vec<u8>>,
    /// The same model, decoded (shared by the jobs that train from it).
    pub(super) global: Arc<crate::model::AdapterSet>,
    pub(super) config: FitConfig,
}

fn params(st: &ServerState) -> (usize, usize, Staleness) {
    match st.args.system.stragglers {
        Stragglers::Async {
            buffer,
            concurrency,
            staleness,
        } => (buffer, concurrency, staleness),
        _ => unreachable!("the asynchronous loop runs only under Stragglers::Async"),
    }
}

/// Start the run's asynchronous loop (the first window and dispatches).
pub(super) async fn begin(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    if !open_window(me, st)? {
        return Ok(());
    }
    if !st.asyn.started {
        st.asyn.started = true;
        redispatch(me, st).await?;
        refill(me, st).await?;
    }
    advance(me, st).await
}

/// Open the next aggregation window; `false` (and the run finished) when the rounds are done
/// or a stop was asked for.
fn open_window(me: &ActorRef<ServerMsg>, st: &mut ServerState) -> Result<bool, ActorProcessingErr> {
    let round = st.asyn.version + 1;
    if round > st.args.rounds || st.args.shutdown.level() >= StopLevel::FinishRound {
        finish(me, st, None);
        return Ok(false);
    }
    st.current = RoundState {
        round,
        lr: cosine_annealing(round, st.args.rounds, st.args.lr_max, st.args.lr_min),
        started: Some(Instant::now()),
        sim_start: st.asyn.now,
        close_at: st.asyn.now,
        ..Default::default()
    };
    st.args
        .aggregator
        .send_message(AggregatorMsg::Begin { round, dp: None })?;
    Ok(true)
}

/// A client's host result.
pub(super) async fn on_fit(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    res: FitRes,
) -> Result<(), ActorProcessingErr> {
    if st.asyn.flights.iter().any(|f| f.client == res.client) {
        st.asyn.results.insert(res.client, res.status);
        advance(me, st).await?;
    }
    Ok(())
}

/// Take arrivals in virtual order while their results are in; aggregate when the buffer is
/// full.
async fn advance(me: &ActorRef<ServerMsg>, st: &mut ServerState) -> Result<(), ActorProcessingErr> {
    let (buffer, concurrency, staleness) = params(st);
    loop {
        let Some(first) = st.asyn.flights.first() else {
            if refill(me, st).await? > 0 {
                continue;
            }
            // Nobody in flight and nobody to dispatch: aggregate what arrived, or wait.
            if st.current.completed > 0 {
                let before = st.summaries.len();
                close(me, st).await?;
                if st.summaries.len() == before || st.done.is_none() {
                    return Ok(());
                }
                continue;
            }
            // A round with nobody to run: recorded as skipped (or the run stops, as
            // system.short_round says); the model does not change.
            let round = st.asyn.version + 1;
            st.asyn.version = round;
            let alive = st.alive.iter().filter(|&&a| a).count();
            let why = format!(
                "no client online and idle at t = {:.1} s (asynchronous aggregation)",
                st.asyn.now
            );
            let before = st.summaries.len();
            short_round(me, st, round, st.asyn.now, alive, 0, why).await?;
            st.asyn.now = st.clock;
            if st.summaries.len() == before || st.done.is_none() || !open_window(me, st)? {
                return Ok(());
            }
            continue;
        };
        if !first.crashed && !st.asyn.results.contains_key(&first.client) {
            return Ok(()); // its host training is not done yet
        }
        let f = st.asyn.flights.remove(0);
        st.asyn.now = st.asyn.now.max(f.at);
        st.current.close_at = st.asyn.now;
        let status = if f.crashed {
            FitStatus::Crashed {
                at: f.at,
                cause: CrashCause::Simulated,
            }
        } else {
            st.asyn.results.remove(&f.client).expect("checked above")
        };
        match &status {
            FitStatus::Completed(u) => {
                let s = st.asyn.version - f.v_start;
                let weight = staleness.weight(u.num_examples, s);
                st.args.aggregator.send_message(AggregatorMsg::Release {
                    client: f.client,
                    weight,
                })?;
                st.current.staleness.push(s);
                st.host_per_token.0 += u.host_seconds;
                st.host_per_token.1 += u.tokens;
            }
            _ => {
                let _ = st
                    .args
                    .aggregator
                    .send_message(AggregatorMsg::Discard { client: f.client });
            }
        }
        st.current
            .count(f.client, &status, Some((f.timeline, f.tokens)));
        retire_client(st, f.client);
        if st.current.records.len() > FUTILE_DISPATCHES_PER_PLACE * concurrency
            && st.current.completed == 0
        {
            let dispatches = st.current.records.len();
            finish(me, st, Some(super::RunFailure::NoProgress { dispatches }));
            return Ok(());
        }
        if st.current.completed >= buffer {
            let before = st.summaries.len();
            close(me, st).await?;
            if st.summaries.len() == before || st.done.is_none() {
                return Ok(());
            }
            continue;
        }
        refill(me, st).await?;
    }
}

/// Aggregate the buffer (a round of the records), open the next window and go on.
async fn close(me: &ActorRef<ServerMsg>, st: &mut ServerState) -> Result<(), ActorProcessingErr> {
    st.asyn.version += 1;
    let rounds = st.summaries.len();
    close_round(me, st).await?;
    if st.summaries.len() == rounds || !open_window(me, st)? {
        return Ok(()); // the run ended (failure, or the last round)
    }
    refill(me, st).await?;
    Ok(())
}

/// Dispatch clients until `concurrency` are in flight or nobody online is idle; returns how
/// many were dispatched.
async fn refill(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<usize, ActorProcessingErr> {
    let (_, concurrency, _) = params(st);
    let mut n = 0;
    while st.asyn.flights.len() < concurrency {
        let Some(c) = pick(st) else { break };
        dispatch(me, st, c).await?;
        n += 1;
    }
    Ok(n)
}

/// A uniformly random client that is alive, online now and not in flight.
fn pick(st: &mut ServerState) -> Option<ClientId> {
    let round = st.asyn.version + 1;
    let now = st.asyn.now;
    let faults = &st.args.clients.faults;
    let busy: std::collections::HashSet<ClientId> =
        st.asyn.flights.iter().map(|f| f.client).collect();
    let idle: Vec<ClientId> = (0..st.alive.len())
        .filter(|&c| st.alive[c] && !busy.contains(&c) && faults.available(round, c, now))
        .collect();
    st.current.available = st.current.available.max(idle.len() + busy.len());
    if idle.is_empty() {
        return None;
    }
    let mut rng = rng_for(
        st.args.seed,
        &[purpose::SAMPLE, u64::MAX, st.asyn.dispatched],
    );
    st.asyn.dispatched += 1;
    Some(idle[rng.random_range(0..idle.len())])
}

async fn dispatch(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    c: ClientId,
) -> Result<(), ActorProcessingErr> {
    let version = st.asyn.version;
    let payload = match &st.asyn.payload {
        Some((v, p)) if *v == version => p.clone(),
        _ => {
            let p = Arc::new(st.global.to_safetensors()?);
            st.asyn.payload = Some((version, p.clone()));
            p
        }
    };
    let bytes = payload.len() as u64;
    spawn_clients(me, st, &[c]).await?;
    let Some(actor) = st.clients.get(&c).cloned() else {
        return Ok(());
    };
    let now = st.asyn.now;
    // Each dispatch is its own draw of the client's schedule and fate (a client dispatched
    // twice in a window must not crash twice by construction): key it by the dispatch count.
    let key = st.asyn.dispatched;
    let plan = ractor::call!(actor, |reply| ClientMsg::Plan {
        round: key as usize,
        start: now,
        down_bytes: bytes,
        up_bytes: bytes,
        reply,
    });
    st.current.sampled += 1;
    st.current.bytes_down += bytes;
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            st.alive[c] = false;
            let status = FitStatus::Crashed {
                at: now,
                cause: CrashCause::Panicked(e.to_string()),
            };
            st.current.count(c, &status, None);
            return Ok(());
        }
    };
    let flight = Flight {
        client: c,
        at: plan
            .crash
            .map_or(plan.timeline.finish(), |f| plan.timeline.crash_time(f)),
        v_start: version,
        crashed: plan.crash.is_some(),
        timeline: plan.timeline,
        tokens: plan.tokens,
        key,
        start: now,
        payload,
        global: st.global.clone(),
        config: super::round::fit_config(st),
    };
    fly(st, &actor, flight);
    Ok(())
}

/// Send a planned flight's `FitIns` (unless it crashes first) and put it in arrival order.
fn fly(st: &mut ServerState, actor: &ractor::ActorRef<ClientMsg>, flight: Flight) {
    if !flight.crashed {
        let ins = FitIns {
            round: flight.key as usize,
            payload: flight.payload.clone(),
            global: flight.global.clone(),
            config: flight.config.clone(),
        };
        let _ = actor.send_message(ClientMsg::Fit(ins));
    }
    let order = (flight.at, flight.client);
    let at = st
        .asyn
        .flights
        .partition_point(|f| (f.at, f.client) < order);
    st.asyn.flights.insert(at, flight);
}

/// A resumed run's flights: each client plans the same dispatch again (its plan is a pure
/// function of the dispatch) and trains from the model it started from, so its update, and
/// everything after, is what the stopped run would have had.
async fn redispatch(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
) -> Result<(), ActorProcessingErr> {
    for flight in std::mem::take(&mut st.asyn.resumed) {
        let c = flight.client;
        spawn_clients(me, st, &[c]).await?;
        let Some(actor) = st.clients.get(&c).cloned() else {
            continue;
        };
        let bytes = flight.payload.len() as u64;
        let planned = ractor::call!(actor, |reply| ClientMsg::Plan {
            round: flight.key as usize,
            start: flight.start,
            down_bytes: bytes,
            up_bytes: bytes,
            reply,
        });
        if let Err(e) = planned {
            st.alive[c] = false;
            let status = FitStatus::Crashed {
                at: flight.start,
                cause: CrashCause::Panicked(e.to_string()),
            };
            st.current.count(c, &status, None);
            continue;
        }
        fly(st, &actor, flight);
    }
    Ok(())
}
