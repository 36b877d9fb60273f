//! The server: owns the global adapter, the virtual clock and the round loop — ask the fault
//! model who is online, sample clients with a seeded RNG, collect the sampled clients' plans
//! (timelines, crashes), decide with the straggler policy who trains, send `FitIns`, collect
//! `FitRes` (failures are data), have the aggregator close the round, evaluate on the held-out
//! split, emit a `RoundSummary`. It supervises the client actors: a client whose actor dies is
//! recorded as crashed and is not sampled again.
//!
//! The actor forwards each message to its round driver ([`driver`]): synchronous rounds
//! ([`synchronous`]), buffered asynchronous aggregation ([`asynchronous`]), or edge rounds
//! under edge aggregators then a cloud round ([`hierarchical`]). What both share
//! is in [`state`]; closing a round in [`close`]; a round's tallies in [`record`].

mod asynchronous;
mod close;
mod config;
mod driver;
mod edges;
mod hierarchical;
mod outcome;
mod record;
mod secure;
mod snapshot;
mod state;
mod synchronous;

pub use config::{Protection, RoundSink, ServerArgs, ServerConfig, ServerMsg, TaskSchedule};
pub use outcome::{EarlyStop, EvalFailure, RunFailure, ServerOutcome};
pub use snapshot::{AsyncSnapshot, FlightSnapshot, Resume, ServerSnapshot};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use driver::RoundDriver;
use state::Core;

/// Server actor.
pub struct Server;

/// Server state: what both drivers share, and the driver.
pub struct ServerState {
    core: Core,
    driver: RoundDriver,
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
        let resume = args.resume.take();
        let mut driver = RoundDriver::new(&args.config);
        let mut core = Core::new(args);
        if let Some(r) = resume {
            let clock = r.snapshot.clock;
            let in_flight = snapshot::restore(&mut core, r);
            let layout = core.global.layout().clone();
            driver.restore(in_flight, clock, &layout);
        }
        Ok(ServerState { core, driver })
    }

    async fn handle(
        &self,
        me: ActorRef<ServerMsg>,
        msg: ServerMsg,
        st: &mut ServerState,
    ) -> Result<(), ActorProcessingErr> {
        let ServerState { core, driver } = st;
        match msg {
            ServerMsg::Start => start(&me, core).await?,
            ServerMsg::BeginRound => driver.begin(&me, core).await?,
            ServerMsg::Fit(res) => driver.on_fit(&me, core, res).await?,
            ServerMsg::Abandon => core.finish(&me, None),
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
        let ServerState { core, driver } = st;
        if let Some(client) = core.lost(who) {
            tracing::warn!("client {client}'s actor ended: {why}; it will not be sampled again");
            driver.on_crash(&me, core, client, why).await?;
        }
        Ok(())
    }
}

/// Evaluate the base model (unless there is none, or the run resumes), then begin.
async fn start(me: &ActorRef<ServerMsg>, core: &mut Core) -> Result<(), ActorProcessingErr> {
    if core.args.config.evaluate && !core.resumed {
        match core.evaluate(0, None, core.args.config.task_scope(0)).await {
            Ok(res) => {
                core.baseline = Some(res.clone());
                core.last_eval = Some(res);
            }
            Err(e) => {
                core.finish(me, Some(RunFailure::Baseline(e)));
                return Ok(());
            }
        }
    }
    me.send_message(ServerMsg::BeginRound)?;
    Ok(())
}
