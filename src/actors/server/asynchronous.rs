//! Buffered asynchronous aggregation (FedBuff) on the virtual clock. `concurrency` clients are
//! always training, each from the global model current when it started. Arrivals are taken in
//! virtual order (a client's result is used when it is the earliest in flight and its host
//! training is done); each completed update is released to the aggregator with weight
//! examples × staleness factor, and every `buffer` arrivals make an aggregation — a "round" in
//! the records. A freed place is refilled at once, from the clients online and idle, with the
//! newest model.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};
use rand::Rng;

use super::close::{close_round, short_round, Closed};
use super::config::ServerMsg;
use super::outcome::RunFailure;
use super::record::RoundState;
use super::state::Core;
use crate::actors::aggregator::AggregatorMsg;
use crate::actors::client::ClientMsg;
use crate::clock::Timeline;
use crate::messages::{ClientId, CrashCause, FitConfig, FitIns, FitRes, FitStatus};
use crate::rng::{purpose, rng_for};
use crate::shutdown::StopLevel;
use crate::stragglers::Staleness;

/// Dispatches per place in flight without a single update after which the loop gives up
/// (every client crashes or fails): the run fails instead of spinning.
const FUTILE_DISPATCHES_PER_PLACE: usize = 1000;

/// The asynchronous driver (FedBuff): its settings and its loop's state.
pub(super) struct FedBuff {
    /// Completed updates per aggregation.
    pub(super) buffer: usize,
    /// Clients training at once.
    pub(super) concurrency: usize,
    /// How an update's weight falls with its staleness.
    pub(super) staleness: Staleness,
    pub(super) state: AsyncState,
}

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

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Take the next arrival.
    Continue,
    /// Wait for a host result (or the run has ended).
    Wait,
}

impl FedBuff {
    /// Start the run's asynchronous loop (the first window and dispatches).
    pub(super) async fn begin(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        if !self.open_window(me, st)? {
            return Ok(());
        }
        if !self.state.started {
            self.state.started = true;
            self.redispatch(me, st).await?;
            self.refill(me, st).await?;
        }
        self.advance(me, st).await
    }

    /// A client's host result.
    pub(super) async fn on_fit(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        res: FitRes,
    ) -> Result<(), ActorProcessingErr> {
        if self.state.flights.iter().any(|f| f.client == res.client) {
            self.state.results.insert(res.client, res.status);
            self.advance(me, st).await?;
        }
        Ok(())
    }

    /// A client's actor died (learned by supervision): its flight ends as a crash.
    pub(super) async fn on_crash(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        client: ClientId,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let res = FitRes {
            client,
            round: st.current.round,
            status: FitStatus::Crashed {
                at: st.current.close_at,
                cause: CrashCause::Panicked(why),
            },
        };
        self.on_fit(me, st, res).await
    }

    /// Open the next aggregation window; `false` (and the run finished) when the rounds are
    /// done or a stop was asked for.
    fn open_window(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<bool, ActorProcessingErr> {
        let round = self.state.version + 1;
        if round > st.args.config.rounds || st.args.shutdown.level() >= StopLevel::FinishRound {
            st.finish(me, None);
            return Ok(false);
        }
        let now = self.state.now;
        st.current = RoundState::open(round, st.args.config.lr(round), now, now);
        st.args
            .aggregator
            .send_message(AggregatorMsg::Begin { round, dp: None })?;
        Ok(true)
    }

    /// Take arrivals in virtual order while their results are in.
    async fn advance(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        loop {
            let step = if self.state.flights.is_empty() {
                self.idle(me, st).await?
            } else {
                self.land(me, st).await?
            };
            if step == Step::Wait {
                return Ok(());
            }
        }
    }

    /// Nobody in flight: dispatch, or aggregate what arrived, or — nobody to dispatch and
    /// nothing arrived — record a round nobody could run (or stop, as `system.short_round`
    /// says); the model does not change.
    async fn idle(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<Step, ActorProcessingErr> {
        if self.refill(me, st).await? > 0 {
            return Ok(Step::Continue);
        }
        if st.current.completed > 0 {
            return self.close(me, st).await;
        }
        let round = self.state.version + 1;
        self.state.version = round;
        let now = self.state.now;
        let why = super::outcome::ShortReason::NoneIdle { at: now };
        let in_flight = Some(self.state.snapshot());
        let closed = short_round(me, st, round, now, 0, why, in_flight).await?;
        self.state.now = st.clock;
        if closed == Closed::Ended || !self.open_window(me, st)? {
            return Ok(Step::Wait);
        }
        Ok(Step::Continue)
    }

    /// The earliest flight lands once its host result is in: its update is released to the
    /// aggregator (or discarded), a full buffer aggregates, a freed place is refilled.
    async fn land(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<Step, ActorProcessingErr> {
        let first = &self.state.flights[0];
        if !first.crashed && !self.state.results.contains_key(&first.client) {
            return Ok(Step::Wait); // its host training is not done yet
        }
        let f = self.state.flights.remove(0);
        self.state.now = self.state.now.max(f.at);
        st.current.close_at = self.state.now;
        let status = if f.crashed {
            FitStatus::Crashed {
                at: f.at,
                cause: CrashCause::Simulated,
            }
        } else {
            self.state.results.remove(&f.client).expect("checked above")
        };
        self.release(st, &f, &status)?;
        st.current
            .count(f.client, &status, Some((f.timeline, f.tokens)));
        st.retire_client(f.client);
        let futile = FUTILE_DISPATCHES_PER_PLACE * self.concurrency;
        if st.current.records.len() > futile && st.current.completed == 0 {
            let dispatches = st.current.records.len();
            st.finish(me, Some(RunFailure::NoProgress { dispatches }));
            return Ok(Step::Wait);
        }
        if st.current.completed >= self.buffer {
            return self.close(me, st).await;
        }
        self.refill(me, st).await?;
        Ok(Step::Continue)
    }

    /// Hand a landed update to the aggregator weighted by its staleness, or discard it.
    fn release(
        &self,
        st: &mut Core,
        f: &Flight,
        status: &FitStatus,
    ) -> Result<(), ActorProcessingErr> {
        match status {
            FitStatus::Completed(u) => {
                let s = self.state.version - f.v_start;
                let weight = self.staleness.weight(u.num_examples, s);
                st.args.aggregator.send_message(AggregatorMsg::Release {
                    client: f.client,
                    weight,
                })?;
                st.current.staleness.push(s);
                st.count_host(u);
            }
            _ => {
                let _ = st
                    .args
                    .aggregator
                    .send_message(AggregatorMsg::Discard { client: f.client });
            }
        }
        Ok(())
    }

    /// Aggregate the buffer (a round of the records), open the next window and refill.
    async fn close(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<Step, ActorProcessingErr> {
        self.state.version += 1;
        let closed = close_round(me, st, Some(self.state.snapshot())).await?;
        if closed == Closed::Ended || !self.open_window(me, st)? {
            return Ok(Step::Wait); // the run ended (failure, stop, or the last round)
        }
        self.refill(me, st).await?;
        Ok(Step::Continue)
    }

    /// Dispatch clients until `concurrency` are in flight or nobody online is idle; returns
    /// how many were dispatched.
    async fn refill(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<usize, ActorProcessingErr> {
        let mut n = 0;
        if st.slots_gone(me, self.state.version + 1).await {
            return Ok(0);
        }
        while self.state.flights.len() < self.concurrency {
            let Some(c) = self.pick(st) else { break };
            self.dispatch(me, st, c).await?;
            n += 1;
        }
        Ok(n)
    }

    /// A uniformly random client that is alive, online now and not in flight.
    fn pick(&mut self, st: &mut Core) -> Option<ClientId> {
        let round = self.state.version + 1;
        let now = self.state.now;
        let faults = &st.args.clients.faults;
        let busy: std::collections::HashSet<ClientId> =
            self.state.flights.iter().map(|f| f.client).collect();
        let idle: Vec<ClientId> = (0..st.alive.len())
            .filter(|&c| st.alive[c] && !busy.contains(&c) && faults.available(round, c, now))
            .collect();
        st.current.available = st.current.available.max(idle.len() + busy.len());
        if idle.is_empty() {
            return None;
        }
        let mut rng = rng_for(
            st.args.config.seed,
            &[purpose::SAMPLE, u64::MAX, self.state.dispatched],
        );
        self.state.dispatched += 1;
        Some(idle[rng.random_range(0..idle.len())])
    }

    /// The serialised global adapter of the current version (serialised once per version).
    fn payload(&mut self, st: &Core) -> Result<Arc<Vec<u8>>, ActorProcessingErr> {
        let version = self.state.version;
        Ok(match &self.state.payload {
            Some((v, p)) if *v == version => p.clone(),
            _ => {
                let p = Arc::new(st.global.to_safetensors()?);
                self.state.payload = Some((version, p.clone()));
                p
            }
        })
    }

    /// Plan client `c`'s dispatch and put it in flight.
    async fn dispatch(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        c: ClientId,
    ) -> Result<(), ActorProcessingErr> {
        let payload = self.payload(st)?;
        let bytes = payload.len() as u64;
        let up = st.upload_bytes(bytes);
        st.spawn_clients(me, &[c]).await?;
        let Some(actor) = st.clients.get(&c).cloned() else {
            return Ok(());
        };
        let now = self.state.now;
        // Each dispatch is its own draw of the client's schedule and fate (a client dispatched
        // twice in a window must not crash twice by construction): key it by the dispatch count.
        let key = self.state.dispatched;
        let plan = ractor::call!(actor, |reply| ClientMsg::Plan {
            mask_s: 0.0,
            round: key as usize,
            start: now,
            down_bytes: bytes,
            up_bytes: up,
            reply,
        });
        st.current.sampled += 1;
        st.current.bytes_down += bytes;
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                lost_before_planning(st, c, now, e.to_string());
                return Ok(());
            }
        };
        let flight = Flight {
            client: c,
            at: plan
                .crash
                .map_or(plan.timeline.finish(), |f| plan.timeline.crash_time(f)),
            v_start: self.state.version,
            crashed: plan.crash.is_some(),
            timeline: plan.timeline,
            tokens: plan.tokens,
            key,
            start: now,
            payload,
            global: st.global.clone(),
            config: st.fit_config(),
        };
        self.fly(&actor, flight);
        Ok(())
    }

    /// Send a planned flight's `FitIns` (unless it crashes first) and put it in arrival order.
    fn fly(&mut self, actor: &ActorRef<ClientMsg>, flight: Flight) {
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
        let flights = &mut self.state.flights;
        let at = flights.partition_point(|f| (f.at, f.client) < order);
        flights.insert(at, flight);
    }

    /// A resumed run's flights: each client plans the same dispatch again (its plan is a pure
    /// function of the dispatch) and trains from the model it started from, so its update, and
    /// everything after, is what the stopped run would have had.
    async fn redispatch(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        for flight in std::mem::take(&mut self.state.resumed) {
            let c = flight.client;
            st.spawn_clients(me, &[c]).await?;
            let Some(actor) = st.clients.get(&c).cloned() else {
                continue;
            };
            let bytes = flight.payload.len() as u64;
            let up = st.upload_bytes(bytes);
            let planned = ractor::call!(actor, |reply| ClientMsg::Plan {
                mask_s: 0.0,
                round: flight.key as usize,
                start: flight.start,
                down_bytes: bytes,
                up_bytes: up,
                reply,
            });
            if let Err(e) = planned {
                lost_before_planning(st, c, flight.start, e.to_string());
                continue;
            }
            self.fly(&actor, flight);
        }
        Ok(())
    }
}

/// A client whose actor could not plan: dead from now on, its dispatch a crash at `at`.
fn lost_before_planning(st: &mut Core, c: ClientId, at: f64, why: String) {
    st.alive[c] = false;
    let status = FitStatus::Crashed {
        at,
        cause: CrashCause::Panicked(why),
    };
    st.current.count(c, &status, None);
}
