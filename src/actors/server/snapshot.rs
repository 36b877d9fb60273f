//! The server at a round boundary — everything the rounds after it depend on, so a stopped run
//! can go on from there and end bit-identical to one never stopped: the global adapter, the
//! server optimiser's moments, the privacy ledger, the virtual clock, the clients that died,
//! the evaluations it reuses and, under asynchronous aggregation, the clients still training
//! (with the model they started from). Every random draw is keyed by (seed, purpose, round,
//! client) — see [`crate::rng`] — so no RNG state needs saving beyond the asynchronous
//! dispatch count.

use std::sync::Arc;

use ractor::{call, ActorProcessingErr};
use serde::{Deserialize, Serialize};

use super::asynchronous::AsyncSnapshot;
use super::ServerState;
use crate::actors::aggregator::AggregatorMsg;
use crate::messages::{ClientId, EvaluateRes, RoundSummary};
use crate::model::AdapterSet;
use crate::privacy::{LedgerSnapshot, PrivacyLedger};

/// The server's state after a completed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSnapshot {
    /// Rounds completed; the next is `rounds_done + 1`.
    pub rounds_done: usize,
    /// The global adapter's values, in layout order.
    #[serde(with = "crate::bytes::f32s")]
    pub global: Vec<f32>,
    /// The server optimiser's state, for a server-optimiser strategy.
    pub optimizer: Option<crate::strategy::ServerState>,
    /// The privacy ledger, when DP is on.
    pub ledger: Option<LedgerSnapshot>,
    /// Virtual time at the end of the round, seconds.
    pub clock: f64,
    /// Host seconds and tokens of all completed fits so far.
    pub host_per_token: (f64, usize),
    /// The base model's evaluation before round 1.
    pub baseline: Option<EvaluateRes>,
    /// The last evaluation (reused by rounds that change nothing).
    pub last_eval: Option<EvaluateRes>,
    /// Clients whose actor died: never sampled again.
    pub dead: Vec<ClientId>,
    /// Asynchronous aggregation's clients in flight, under `Stragglers::Async`.
    pub asyn: Option<AsyncSnapshot>,
}

/// What a resumed server starts from: its snapshot and the rounds recorded before it.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The state after the last completed round.
    pub snapshot: ServerSnapshot,
    /// The completed rounds (what the outcome and `metrics.om` report).
    pub rounds: Vec<RoundSummary>,
}

/// The server's state now, after round `rounds_done` has been recorded.
pub(super) async fn take(
    st: &mut ServerState,
    rounds_done: usize,
) -> Result<ServerSnapshot, ActorProcessingErr> {
    let aggregator = st.args.aggregator.clone();
    let optimizer = call!(aggregator, |reply| AggregatorMsg::ServerState { reply })?;
    Ok(ServerSnapshot {
        rounds_done,
        global: st.global.data().to_vec(),
        optimizer,
        ledger: st.ledger.as_ref().map(PrivacyLedger::snapshot),
        clock: st.clock,
        host_per_token: st.host_per_token,
        baseline: st.baseline,
        last_eval: st.last_eval,
        dead: (0..st.alive.len()).filter(|&c| !st.alive[c]).collect(),
        asyn: st.is_async().then(|| st.asyn.snapshot()),
    })
}

/// Put the server where `resume` left it (checked against the run by the caller: the
/// adapter's length, the client ids).
pub(super) fn restore(st: &mut ServerState, resume: Resume) {
    let Resume {
        snapshot: s,
        rounds,
    } = resume;
    let layout = st.global.layout().clone();
    st.global = Arc::new(AdapterSet::new(layout, s.global));
    st.ledger = st
        .args
        .dp
        .clone()
        .zip(s.ledger.as_ref())
        .map(|(plan, l)| PrivacyLedger::resume(plan, l));
    st.clock = s.clock;
    st.host_per_token = s.host_per_token;
    st.baseline = s.baseline;
    st.last_eval = s.last_eval;
    for c in s.dead {
        st.alive[c] = false;
    }
    if let Some(a) = s.asyn {
        st.asyn.restore(a, &st.args.local, s.clock);
    }
    st.summaries = rounds;
    st.resumed = true;
}
