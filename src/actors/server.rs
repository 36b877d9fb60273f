//! The server: owns the global adapter, the virtual clock and the round loop — ask the fault
//! model who is online, sample clients with a seeded RNG, collect the sampled clients' plans
//! (timelines, crashes), decide with the straggler policy who trains, send `FitIns`, collect
//! `FitRes` (failures are data), have the aggregator close the round, evaluate on the held-out
//! split, emit a `RoundSummary`. It supervises the client actors: a client whose actor dies is
//! recorded as crashed and is not sampled again.
//!
//! The round itself is in [`round`]; turning a round's tallies into a summary in [`record`].

mod asynchronous;
mod close;
mod outcome;
mod record;
mod round;
mod snapshot;

pub use outcome::{EarlyStop, EvalFailure, RunFailure, ServerOutcome};
pub use snapshot::{AsyncSnapshot, FlightSnapshot, Resume, ServerSnapshot};

use close::close_round;
use record::RoundState;
use round::{begin_round, on_fit};

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::aggregator::AggregatorMsg;
use super::client::{Client, ClientArgs, ClientContext, ClientMsg};
use crate::messages::{
    ClientId, CrashCause, EvaluateIns, EvaluateRes, FitRes, FitStatus, RoundId, RoundSummary,
};
use crate::model::AdapterSet;
use crate::privacy::{DpPlan, PrivacyLedger};
use crate::scenario::file::SystemSection;
use crate::scenario::Sampling;
use crate::shutdown::Shutdown;
use crate::slots::{Job, SlotHandle};

/// Server actor.
pub struct Server;

/// Called with each finished round and the server's state after it (progress display, run
/// log, checkpoint); an error stops the run (the round could not be recorded).
pub type RoundSink =
    Box<dyn FnMut(&RoundSummary, &ServerSnapshot) -> Result<(), crate::report::ReportError> + Send>;

/// What the server needs to run.
pub struct ServerArgs {
    /// Rounds to run.
    pub rounds: usize,
    /// Master seed.
    pub seed: u64,
    /// Client sampling.
    pub sampling: Sampling,
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
    /// What the clients share (slots, aggregator, cost model, faults).
    pub clients: Arc<ClientContext>,
    /// Deadline, straggler policy, short rounds.
    pub system: SystemSection,
    /// Whether there is a model to evaluate (not with the synthetic trainer).
    pub evaluate: bool,
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
    /// Where a resumed run continues from (None: round 1, after the baseline evaluation).
    pub resume: Option<Resume>,
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

/// Server state.
pub struct ServerState {
    args: ServerArgs,
    /// The actors of the clients taking part in the current round. A client's actor is
    /// spawned when it is sampled and retired when the round closes, so 10⁵ clients cost
    /// their small state (shard indices, profile), not 10⁵ mailboxes.
    clients: HashMap<ClientId, ActorRef<ClientMsg>>,
    by_actor: HashMap<ActorId, ClientId>,
    alive: Vec<bool>,
    global: Arc<AdapterSet>,
    baseline: Option<EvaluateRes>,
    summaries: Vec<RoundSummary>,
    current: RoundState,
    /// Virtual time at the end of the last round, seconds.
    clock: f64,
    /// Host seconds and tokens of all completed fits (for the host time saved estimate).
    host_per_token: (f64, usize),
    /// The last evaluation (reused by rounds that change nothing).
    last_eval: Option<EvaluateRes>,
    /// Buffered asynchronous aggregation (`Stragglers::Async`).
    asyn: asynchronous::AsyncState,
    ledger: Option<PrivacyLedger>,
    stop: Option<EarlyStop>,
    done: Option<oneshot::Sender<ServerOutcome>>,
    /// Continuing a stopped run (its baseline evaluation is in the snapshot).
    resumed: bool,
}

impl Actor for Server {
    type Msg = ServerMsg;
    type State = ServerState;
    type Arguments = ServerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ServerMsg>,
        mut args: ServerArgs,
    ) -> Result<ServerState, ActorProcessingErr> {
        let n = args.shards.len();
        let (tx, _rx) = oneshot::channel();
        let done = Some(std::mem::replace(&mut args.done, tx));
        let global = args.initial.clone();
        let ledger = args.dp.clone().map(PrivacyLedger::new);
        let resume = args.resume.take();
        let mut st = ServerState {
            args,
            clients: HashMap::new(),
            by_actor: HashMap::new(),
            alive: vec![true; n],
            global,
            baseline: None,
            summaries: Vec::new(),
            current: RoundState::default(),
            clock: 0.0,
            host_per_token: (0.0, 0),
            last_eval: None,
            asyn: Default::default(),
            ledger,
            stop: None,
            done,
            resumed: false,
        };
        if let Some(r) = resume {
            snapshot::restore(&mut st, r);
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<ServerMsg>,
        msg: ServerMsg,
        st: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServerMsg::Start if !st.args.evaluate || st.resumed => {
                me.send_message(ServerMsg::BeginRound)?;
            }
            ServerMsg::Start => match evaluate(&st.args.slots, 0, None).await {
                Ok(res) => {
                    st.baseline = Some(res);
                    st.last_eval = Some(res);
                    me.send_message(ServerMsg::BeginRound)?;
                }
                Err(e) => finish(&me, st, Some(RunFailure::Baseline(e))),
            },
            ServerMsg::BeginRound if st.is_async() => asynchronous::begin(&me, st).await?,
            ServerMsg::BeginRound => begin_round(&me, st).await?,
            ServerMsg::Fit(res) if st.is_async() => asynchronous::on_fit(&me, st, res).await?,
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
        if let Some(client) = st.by_actor.remove(&who) {
            tracing::warn!("client {client}'s actor ended: {why}; it will not be sampled again");
            st.alive[client] = false;
            st.clients.remove(&client);
            if st.is_async() {
                // Learned by supervision: the flight ends as a crash.
                let res = FitRes {
                    client,
                    round: st.current.round,
                    status: FitStatus::Crashed {
                        at: st.current.close_at,
                        cause: CrashCause::Panicked(why),
                    },
                };
                asynchronous::on_fit(&me, st, res).await?;
            } else if st.current.pending.contains(&client) {
                // Learned by supervision: when the actor died.
                let at = st.current.crash_time(client);
                let res = FitRes {
                    client,
                    round: st.current.round,
                    status: FitStatus::Crashed {
                        at,
                        cause: CrashCause::Panicked(why),
                    },
                };
                on_fit(&me, st, res).await?;
            }
        }
        Ok(())
    }
}

pub(super) async fn evaluate(
    slots: &SlotHandle,
    round: RoundId,
    adapter: Option<Arc<AdapterSet>>,
) -> Result<EvaluateRes, EvalFailure> {
    let (tx, rx) = oneshot::channel();
    slots.submit(Job::Evaluate {
        ins: EvaluateIns { round, adapter },
        reply: tx,
    })?;
    Ok(rx.await.map_err(|_| EvalFailure::Dropped)??)
}

impl ServerState {
    fn is_async(&self) -> bool {
        matches!(
            self.args.system.stragglers,
            crate::stragglers::Stragglers::Async { .. }
        )
    }
}

/// Spawn (linked, supervised) the actors of `chosen` clients that have none.
pub(super) async fn spawn_clients(
    me: &ActorRef<ServerMsg>,
    st: &mut ServerState,
    chosen: &[ClientId],
) -> Result<(), ActorProcessingErr> {
    for &id in chosen {
        if st.clients.contains_key(&id) {
            continue;
        }
        let cargs = ClientArgs {
            id,
            shard: st.args.shards[id].clone(),
            ctx: st.args.clients.clone(),
            reply: me.get_derived(),
        };
        let (client, _) = Actor::spawn_linked(None, Client, cargs, me.get_cell()).await?;
        st.by_actor.insert(client.get_id(), id);
        st.clients.insert(id, client);
    }
    Ok(())
}

/// Retire the round's client actors (their ends are not failures: forgotten first).
pub(super) fn retire_clients(st: &mut ServerState) {
    let ids: Vec<ClientId> = st.clients.keys().copied().collect();
    for c in ids {
        retire_client(st, c);
    }
}

/// Retire one client's actor, forgetting it first so its end is not taken for a failure.
pub(super) fn retire_client(st: &mut ServerState, c: ClientId) {
    if let Some(actor) = st.clients.remove(&c) {
        st.by_actor.remove(&actor.get_id());
        actor.stop(None);
    }
}

pub(super) fn finish(me: &ActorRef<ServerMsg>, st: &mut ServerState, error: Option<RunFailure>) {
    if let Some(done) = st.done.take() {
        let interrupted =
            error.is_none() && st.stop.is_none() && st.summaries.len() < st.args.rounds;
        let _ = done.send(ServerOutcome {
            baseline: st.baseline,
            rounds: std::mem::take(&mut st.summaries),
            global: st.global.clone(),
            interrupted,
            error,
            stop: st.stop.take(),
            epsilon: st.ledger.as_ref().and_then(PrivacyLedger::last),
            final_clip: st.ledger.as_ref().map(PrivacyLedger::clip),
            epsilon_pld: st.ledger.as_ref().and_then(PrivacyLedger::pld_epsilon),
        });
    }
    for (_, c) in st.clients.drain() {
        c.stop(None);
    }
    me.stop(None);
}
