//! What the server is given: its checked settings (built once by the wiring from the validated
//! scenario), the actors and pools it works with, and the messages it understands.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::oneshot;

use super::outcome::ServerOutcome;
use super::snapshot::{Resume, ServerSnapshot};
use crate::actors::aggregator::AggregatorMsg;
use crate::actors::client::ClientContext;
use crate::messages::{FitRes, RoundSummary};
use crate::model::AdapterSet;
use crate::privacy::DpPlan;
use crate::scenario::Sampling;
use crate::shutdown::Shutdown;
use crate::slots::SlotHandle;
use crate::stragglers::{ShortRound, Stragglers};

/// The server's settings, all checked by the scenario's validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Rounds to run.
    pub rounds: usize,
    /// Master seed.
    pub seed: u64,
    /// Client sampling.
    pub sampling: Sampling,
    /// Learning rate of round 1 (cosine annealing to `lr_min`).
    pub lr_max: f64,
    /// Learning rate of the last round.
    pub lr_min: f64,
    /// Round deadline on the virtual clock, seconds after the round starts.
    pub deadline_s: Option<f64>,
    /// The straggler policy; `Async` selects buffered asynchronous aggregation.
    pub stragglers: Stragglers,
    /// What a round with too few clients does to the run.
    pub short_round: ShortRound,
    /// Whether there is a model to evaluate (not with the synthetic trainer).
    pub evaluate: bool,
    /// Minimum wall time per round (`--pace`), so live dashboards can follow.
    pub pace: Option<Duration>,
    /// When the task (scenario `eval`) is scored, if there is one.
    pub task: Option<TaskSchedule>,
    /// How updates are hidden from the server (SecAgg+ or homomorphic encryption), sized
    /// for the run's data; None: in the clear.
    pub secure: Option<Protection>,
    /// Edge aggregators between clients and the cloud (topology `Hierarchical`); None: flat.
    pub hierarchy: Option<Arc<crate::topology::Hierarchy>>,
    /// Bytes of every compressed upload (`compression`); None: an upload is the size of the
    /// global adapter's download.
    pub upload_bytes: Option<u64>,
    /// Bytes a client downloads each round (split learning: the client-side half of the
    /// adapter); None: the serialised global adapter.
    pub download_bytes: Option<u64>,
    /// Wall seconds to wait for a lost worker to come back when no slot can run a job
    /// (`slots.workers.rejoin_s`; 0 without workers).
    pub rejoin_s: f64,
}

/// How updates are hidden from the server (scenario `strategy.secure_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protection {
    /// SecAgg+: masked in a ring, unmasked with the survivors' shares.
    SecAggPlus(crate::secagg::Params),
    /// Encrypted under BFV, added as ciphertexts, the sum decrypted by the key holders.
    Homomorphic(crate::he::Params),
}

/// When a run's task is scored: its subset every `every` rounds and after the last; the whole
/// split before round 1 and after the last round when `full` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSchedule {
    /// Rounds between subset scores.
    pub every: usize,
    /// Score the whole split before round 1 and after the last round.
    pub full: bool,
}

impl ServerConfig {
    /// What the evaluation after `round` (0: before round 1) scores of the task.
    pub fn task_scope(&self, round: usize) -> crate::messages::TaskScope {
        use crate::messages::TaskScope;
        let Some(t) = self.task else {
            return TaskScope::Skip;
        };
        let ends = round == 0 || round == self.rounds;
        match (ends && t.full, ends || round % t.every.max(1) == 0) {
            (true, _) => TaskScope::SubsetAndFull,
            (false, true) => TaskScope::Subset,
            (false, false) => TaskScope::Skip,
        }
    }

    /// Round `round`'s learning rate.
    pub(super) fn lr(&self, round: usize) -> f64 {
        crate::train::cosine_annealing(round, self.rounds, self.lr_max, self.lr_min)
    }
}

/// Called with each finished round and the server's state after it (progress display, run
/// log, checkpoint); an error stops the run (the round could not be recorded).
pub type RoundSink =
    Box<dyn FnMut(&RoundSummary, &ServerSnapshot) -> Result<(), crate::report::ReportError> + Send>;

/// What the server needs to run.
pub struct ServerArgs {
    /// Its settings.
    pub config: ServerConfig,
    /// Each client's shard.
    pub shards: Vec<Arc<[u32]>>,
    /// Slot pool.
    pub slots: SlotHandle,
    /// The aggregator (the cloud's, under a hierarchy).
    pub aggregator: ActorRef<AggregatorMsg>,
    /// The edge aggregators, by edge id (empty when flat).
    pub edges: Vec<ActorRef<AggregatorMsg>>,
    /// What the clients share (slots, aggregator, cost model, faults).
    pub clients: Arc<ClientContext>,
    /// The adapter before round 1.
    pub initial: Arc<AdapterSet>,
    /// Receives each round's summary.
    pub sink: RoundSink,
    /// Client-level DP, if on.
    pub dp: Option<DpPlan>,
    /// Stop requests: at `FinishRound` no new round starts (and `--pace` waits end).
    pub shutdown: Shutdown,
    /// Where the outcome goes.
    pub done: oneshot::Sender<ServerOutcome>,
    /// Where a resumed run continues from (None: round 1, after the baseline evaluation).
    pub resume: Option<Resume>,
}

/// Messages the server understands.
#[derive(ractor_cluster::RactorMessage)]
pub enum ServerMsg {
    /// Evaluate the base model, then start round 1.
    Start,
    /// Start the next round (synchronous rounds), or the asynchronous loop.
    BeginRound,
    /// A client's answer.
    Fit(FitRes),
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
