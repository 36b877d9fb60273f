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

use super::asynchronous::{AsyncState, Flight};
use super::state::Core;
use crate::actors::aggregator::AggregatorMsg;
use crate::clock::Timeline;
use crate::messages::{ClientId, EvaluateRes, FitConfig, RoundSummary};
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
    /// Error feedback's residuals by client (compression `TopK(error_feedback: true)`).
    #[serde(default)]
    pub residuals: Vec<(ClientId, Vec<f32>)>,
}

/// What a resumed server starts from: its snapshot and the rounds recorded before it.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The state after the last completed round.
    pub snapshot: ServerSnapshot,
    /// The completed rounds (what the outcome and `metrics.om` report).
    pub rounds: Vec<RoundSummary>,
}

/// The server's state now, after round `rounds_done` has been recorded, with what the
/// asynchronous driver has in flight.
pub(super) async fn take(
    st: &mut Core,
    rounds_done: usize,
    in_flight: Option<AsyncSnapshot>,
) -> Result<ServerSnapshot, ActorProcessingErr> {
    let aggregator = st.args.aggregator.clone();
    let optimizer = call!(aggregator, |reply| AggregatorMsg::ServerState { reply })?;
    let residuals = residuals(st);
    Ok(ServerSnapshot {
        rounds_done,
        global: st.global.data().to_vec(),
        optimizer,
        ledger: st.ledger.as_ref().map(PrivacyLedger::snapshot),
        clock: st.clock,
        host_per_token: st.host_per_token,
        baseline: st.baseline.clone(),
        last_eval: st.last_eval.clone(),
        dead: (0..st.alive.len()).filter(|&c| !st.alive[c]).collect(),
        asyn: in_flight,
        residuals,
    })
}

/// Put the server where `resume` left it (checked against the run by the caller: the
/// adapter's length, the client ids); returns the asynchronous driver's part.
pub(super) fn restore(st: &mut Core, resume: Resume) -> Option<AsyncSnapshot> {
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
    st.summaries = rounds;
    st.resumed = true;
    s.asyn
}

/// Error feedback's residuals now (every client that finished a round has kept its own).
fn residuals(st: &Core) -> Vec<(ClientId, Vec<f32>)> {
    let store = st.args.clients.residuals.as_ref();
    store.map_or_else(Vec::new, |r| r.snapshot())
}

/// The clients in flight at a round boundary, with the models they train from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AsyncSnapshot {
    /// Aggregations done.
    pub version: usize,
    /// Dispatches so far.
    pub dispatched: u64,
    /// The clients training, in virtual arrival order.
    pub flights: Vec<FlightSnapshot>,
    /// The serialised global adapter of each model version a flight started from.
    pub payloads: Vec<(usize, serde_bytes::ByteBuf)>,
}

/// One client in flight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlightSnapshot {
    /// The client.
    pub client: ClientId,
    /// Its arrival (or crash) on the virtual clock.
    pub at: f64,
    /// The model version it started from.
    pub v_start: usize,
    /// Whether it crashes before uploading.
    pub crashed: bool,
    /// Its timeline.
    pub timeline: Timeline,
    /// Tokens it trains on.
    pub tokens: usize,
    /// Its dispatch number (the key of its plan and training draws).
    pub key: u64,
    /// When it was dispatched.
    pub start: f64,
    /// Its learning rate and client-side clip.
    pub lr: f64,
    /// See `lr`.
    pub clip_norm: Option<f64>,
}

impl AsyncState {
    /// The loop's state after a round was recorded.
    pub(super) fn snapshot(&self) -> AsyncSnapshot {
        let mut payloads: Vec<(usize, serde_bytes::ByteBuf)> = Vec::new();
        for f in &self.flights {
            if !payloads.iter().any(|(v, _)| *v == f.v_start) {
                payloads.push((f.v_start, serde_bytes::ByteBuf::from(f.payload.to_vec())));
            }
        }
        AsyncSnapshot {
            version: self.version,
            dispatched: self.dispatched,
            flights: self
                .flights
                .iter()
                .map(|f| FlightSnapshot {
                    client: f.client,
                    at: f.at,
                    v_start: f.v_start,
                    crashed: f.crashed,
                    timeline: f.timeline,
                    tokens: f.tokens,
                    key: f.key,
                    start: f.start,
                    lr: f.config.lr,
                    clip_norm: f.config.clip_norm,
                })
                .collect(),
            payloads,
        }
    }

    /// Continue from `snap`, taken when a round closed at `clock` (after a recorded round the
    /// asynchronous clock is the round's close); its flights are dispatched again when the
    /// loop begins.
    pub(super) fn restore(
        &mut self,
        snap: AsyncSnapshot,
        clock: f64,
        layout: &Arc<crate::model::AdapterLayout>,
    ) {
        self.now = clock;
        // Each model version decoded once (the resume checked they decode).
        let payloads: Vec<(usize, Arc<Vec<u8>>, Arc<AdapterSet>)> = snap
            .payloads
            .into_iter()
            .filter_map(|(v, b)| {
                let global = AdapterSet::from_safetensors(layout.clone(), &b).ok()?;
                Some((v, Arc::new(b.into_vec()), Arc::new(global)))
            })
            .collect();
        self.version = snap.version;
        self.dispatched = snap.dispatched;
        self.resumed = snap
            .flights
            .into_iter()
            .filter_map(|f| {
                let (_, payload, global) = payloads.iter().find(|(v, ..)| *v == f.v_start)?;
                let (payload, global) = (payload.clone(), global.clone());
                Some(Flight {
                    client: f.client,
                    at: f.at,
                    v_start: f.v_start,
                    crashed: f.crashed,
                    timeline: f.timeline,
                    tokens: f.tokens,
                    key: f.key,
                    start: f.start,
                    payload,
                    global,
                    // Asynchronous rounds run without DP (validation refuses it).
                    config: FitConfig {
                        lr: f.lr,
                        clip_norm: f.clip_norm,
                        noise: None,
                        uniform_weight: false,
                    },
                })
            })
            .collect();
    }
}
