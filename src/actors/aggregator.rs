//! The aggregator: receives completed updates as they arrive and folds them into a running,
//! order-independent weighted sum (no list of K updates held) — or, for a robust rule, keeps
//! every update of the round, ordered by client id; closes the round on request with the run's
//! strategy. With Byzantine clients it also aggregates the honest updates alone, to report how
//! far the attackers moved the aggregate.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

mod edge;
mod finish;
mod homomorphic;
mod secure;

pub use edge::EdgePartial;
pub use finish::Withheld;

use crate::messages::{ClientId, RoundId};
use crate::model::{AdapterLayout, AdapterSet, PayloadReader};
use crate::privacy::NoiseSource;
use crate::strategy::norm_bounded;
use crate::strategy::{FedAvgAccumulator, Needs, ServerState, Strategy};

/// Aggregator actor.
pub struct Aggregator;

/// Why an uploaded update was left out of the aggregate.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The payload is not a safetensors buffer of the run's layout.
    #[error(transparent)]
    Payload(#[from] crate::model::ModelError),
    /// The compressed message is not the run's codec on its layout.
    #[error(transparent)]
    Compressed(#[from] crate::compress::CompressError),
    /// A value is NaN or infinite (checked as it is folded, or before a robust rule sees it).
    #[error(transparent)]
    Fold(#[from] crate::strategy::FoldError),
    /// A robust rule's update with a value that is not finite.
    #[error("the update has a non-finite value")]
    NonFinite,
    /// Released for aggregation but never uploaded (asynchronous aggregation).
    #[error("no update held for this client")]
    NotHeld,
}

/// Result of closing a round.
#[derive(Debug)]
pub struct Aggregate {
    /// The new global adapter.
    pub global: Arc<AdapterSet>,
    /// Updates folded.
    pub folded: usize,
    /// Examples behind them.
    pub examples: u64,
    /// Updates rejected (corrupt payload, non-finite values), with the reason.
    pub rejected: Vec<(ClientId, Rejection)>,
    /// Std of the DP noise on the averaged update, when DP is on and noise was released.
    pub noise_stddev: Option<f64>,
    /// Byzantine updates among those aggregated.
    pub byzantine: usize,
    /// Why the round released nothing on purpose (`secagg_threshold`, `dp_min_survivors`);
    /// the global adapter is then unchanged.
    pub withheld: Option<Withheld>,
    /// A secure round's unmasking phase, for the clock and the records.
    pub unmasking: Option<crate::secagg::cost::Unmasking>,
    /// A homomorphic round's decryption, for the clock and the records.
    pub decryption: Option<crate::he::cost::Decryption>,
    /// The server optimiser's learning rate, when a server optimiser applies the update (so
    /// an overflow names the right knob).
    pub server_lr: Option<f64>,
    /// L2 distance between the aggregate update and the same rule over the honest updates
    /// alone (before DP noise and server optimiser steps); None without Byzantine clients.
    pub deviation: Option<f64>,
}

/// What the aggregator is started with.
pub struct AggregatorArgs {
    /// Adapter layout.
    pub layout: Arc<AdapterLayout>,
    /// The run's strategy.
    pub strategy: Strategy,
    /// Whether some clients are Byzantine (then the honest-only aggregate is kept too).
    pub byzantine: bool,
    /// The server optimiser's state a resumed run continues from (None: fresh).
    pub server_state: Option<ServerState>,
    /// How uploads are compressed (`compression`); None: f32 safetensors.
    pub codec: Option<crate::compress::Codec>,
}

/// How a DP round is aggregated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpRound {
    /// Server-side clipping norm (None when clients clip).
    pub server_clip: Option<f64>,
    /// Std of the noise the server adds to the sum of clipped updates: z·C (0 when the
    /// clients add it).
    pub sum_stddev: f64,
    /// Distributed DP: each client's noise std and the fewest updates a round may release.
    pub client_noise: Option<(f64, usize)>,
    /// Fixed denominator of the average (Poisson: q·N); None: the number aggregated.
    pub denominator: Option<f64>,
    /// Noise seeding.
    pub noise: NoiseSource,
    /// Master seed (for seeded noise).
    pub seed: u64,
}

impl DpRound {
    /// Std of the noise on the released average of `updates` updates over `denominator`:
    /// the server's z·C, or the clients' √updates shares of it.
    pub fn released_stddev(&self, updates: usize, denominator: f64) -> f64 {
        match self.client_noise {
            Some((client, _)) => client * (updates as f64).sqrt() / denominator,
            None => self.sum_stddev / denominator,
        }
    }
}

/// Messages the aggregator understands.
#[derive(ractor_cluster::RactorMessage)]
pub enum AggregatorMsg {
    /// Start a round.
    Begin {
        /// The round.
        round: RoundId,
        /// DP aggregation, if on: uniform weights, clipping, noise.
        dp: Option<DpRound>,
    },
    /// Fold one uploaded update.
    Fold {
        /// From whom.
        client: ClientId,
        /// Safetensors buffer of `local − global`.
        payload: Vec<u8>,
        /// FedAvg weight.
        num_examples: usize,
        /// Held until the update is folded: bounds the updates in flight (memory).
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        /// Keep the parsed update until the server releases it with its weight (asynchronous
        /// aggregation: the weight depends on the staleness at its virtual arrival).
        hold: bool,
        /// Sent by a Byzantine client (the simulator's view, for the deviation metric).
        byzantine: bool,
    },
    /// Run the keys and shares phases of secure aggregation with the round's clients (before
    /// they train); answers once their share inboxes are sent.
    SecAggSetup {
        /// The round's protocol settings.
        params: crate::secagg::Params,
        /// The round's sampled clients.
        clients: Vec<(ClientId, ActorRef<crate::actors::client::ClientMsg>)>,
        /// Master seed (the neighbour graph).
        seed: u64,
        /// Each client's keys and shares messages, or why the round cannot be aggregated
        /// securely.
        reply: RpcReplyPort<
            Result<Vec<(ClientId, crate::secagg::cost::ClientSetup)>, crate::secagg::SecAggError>,
        >,
    },
    /// Make the round's homomorphic keys and send each of the round's clients the public
    /// key (before they train).
    HeSetup {
        /// The run's settings.
        params: crate::he::Params,
        /// The round's sampled clients.
        clients: Vec<(ClientId, ActorRef<crate::actors::client::ClientMsg>)>,
        /// Master seed (the round's keys).
        seed: u64,
        /// Sizes for the clock, or why the round cannot be aggregated.
        reply: RpcReplyPort<Result<crate::he::cost::Setup, crate::he::HeError>>,
    },
    /// A client's encrypted update (homomorphic encryption).
    Encrypted {
        /// Its ciphertexts.
        input: crate::he::EncryptedInput,
        /// Held until they are added.
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// A client's masked vector (secure aggregation).
    Masked {
        /// Its masked vector.
        input: crate::secagg::messages::MaskedInput,
        /// Held until the vector is summed.
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Fold a held update with this weight.
    Release {
        /// Whose.
        client: ClientId,
        /// Integer weight.
        weight: u64,
    },
    /// Forget a held update (its client's arrival will never be counted).
    Discard {
        /// Whose.
        client: ClientId,
    },
    /// The server optimiser's state (None for other strategies), to save with the run.
    ServerState {
        /// Where it goes.
        reply: RpcReplyPort<Option<ServerState>>,
    },
    /// Close an edge's last edge round into its exact partial sums (hierarchical topology):
    /// the updates relative to `base` (the edge's model), plus the drift `base − global`.
    Partial {
        /// The edge's model the last edge round trained from.
        base: Arc<AdapterSet>,
        /// The cloud's global adapter.
        global: Arc<AdapterSet>,
        /// The weight of the drift when no update arrived in the last edge round.
        fallback_weight: u64,
        /// Where the partial goes.
        reply: RpcReplyPort<EdgePartial>,
    },
    /// An edge's partial sums, added into the cloud round (the cloud's aggregator).
    Merge(EdgePartial),
    /// Close the round: `global + weighted mean update`.
    Finish {
        /// The global adapter the updates are relative to.
        global: Arc<AdapterSet>,
        /// Where the new global goes.
        reply: RpcReplyPort<Aggregate>,
    },
}

/// State: the payload reader and the current round's accumulator.
pub struct AggregatorState {
    reader: PayloadReader,
    /// The uploads' codec, when compressed.
    codec: Option<crate::compress::Codec>,
    round: RoundId,
    dp: Option<DpRound>,
    strategy: Strategy,
    /// Server optimiser state across rounds.
    server: Option<ServerState>,
    acc: FedAvgAccumulator,
    /// Honest updates alone (with Byzantine clients).
    honest: Option<FedAvgAccumulator>,
    /// Every update of the round, by client (robust rules): values and whether Byzantine.
    collected: BTreeMap<ClientId, (Vec<f32>, bool)>,
    byzantine: usize,
    rejected: Vec<(ClientId, Rejection)>,
    /// Parsed updates waiting for their weight (asynchronous aggregation).
    held: std::collections::HashMap<ClientId, Result<Vec<f32>, Rejection>>,
    /// The round's secure aggregation, when on.
    secure: Option<secure::SecureRound>,
    /// The last secure round's sum buffer, reused by the next.
    secure_spare: Option<crate::secagg::lanes::Lanes>,
    /// The round's homomorphic aggregation, when on.
    he: Option<homomorphic::HeRound>,
    /// Why this round's secure aggregation cannot release anything.
    withheld: Option<Withheld>,
    /// The edges' partial sums merged so far (the cloud's aggregator, hierarchical topology).
    merged: Option<edge::Merged>,
}

impl Actor for Aggregator {
    type Msg = AggregatorMsg;
    type State = AggregatorState;
    type Arguments = AggregatorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<AggregatorMsg>,
        args: AggregatorArgs,
    ) -> Result<AggregatorState, ActorProcessingErr> {
        let layout = args.layout;
        let segments: Vec<usize> = layout.tensors().iter().map(|t| t.numel()).collect();
        let acc = FedAvgAccumulator::with_segments(&segments);
        let len: usize = segments.iter().sum();
        Ok(AggregatorState {
            reader: PayloadReader::new(layout),
            codec: args.codec,
            round: 0,
            dp: None,
            server: match (&args.strategy, args.server_state) {
                (Strategy::ServerOpt(_), Some(state)) => Some(state),
                (Strategy::ServerOpt(o), None) => Some(ServerState::new(*o, len)),
                _ => None,
            },
            strategy: args.strategy,
            honest: args
                .byzantine
                .then(|| FedAvgAccumulator::with_segments(&segments)),
            collected: BTreeMap::new(),
            byzantine: 0,
            acc,
            rejected: Vec::new(),
            held: std::collections::HashMap::new(),
            secure: None,
            secure_spare: None,
            he: None,
            withheld: None,
            merged: None,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<AggregatorMsg>,
        msg: AggregatorMsg,
        st: &mut AggregatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Begin { round, dp } => st.begin(round, dp),
            AggregatorMsg::SecAggSetup {
                params,
                clients,
                seed,
                reply,
            } => {
                let answer = st.set_up_secure(params, clients, seed).await;
                let _ = reply.send(answer);
            }
            AggregatorMsg::HeSetup {
                params,
                clients,
                seed,
                reply,
            } => {
                let _ = reply.send(st.set_up_he(params, clients, seed));
            }
            AggregatorMsg::Encrypted { input, permit } => {
                st.encrypted(input);
                drop(permit);
            }
            AggregatorMsg::Masked { input, permit } => {
                st.masked(input);
                drop(permit);
            }
            AggregatorMsg::Fold {
                client,
                payload,
                num_examples,
                permit,
                hold,
                byzantine,
            } => {
                st.byzantine += usize::from(byzantine);
                st.fold_upload(client, payload, num_examples, hold, byzantine);
                // The permit goes here: the update is folded, or buffered (at most a batch).
                drop(permit);
            }
            AggregatorMsg::Release { client, weight } => st.release_held(client, weight),
            AggregatorMsg::Discard { client } => {
                st.held.remove(&client);
            }
            msg @ (AggregatorMsg::Partial { .. } | AggregatorMsg::Merge(_)) => {
                st.edge_msg(msg).await
            }
            AggregatorMsg::Finish { global, reply } => {
                let aggregate = match (st.secure.take(), st.he.take(), st.merged.take()) {
                    (Some(round), _, _) => st.finish_secure(global, round).await,
                    (None, Some(round), _) => st.finish_he(global, round).await,
                    (None, None, Some(merged)) => st.finish_merged(global, merged),
                    (None, None, None) => st.finish(global),
                };
                let _ = reply.send(aggregate);
            }
            AggregatorMsg::ServerState { reply } => {
                let _ = reply.send(st.server.clone());
            }
        }
        Ok(())
    }
}

impl AggregatorState {
    /// A new round: everything of the last one forgotten.
    fn begin(&mut self, round: RoundId, dp: Option<DpRound>) {
        self.round = round;
        self.dp = dp;
        self.acc.reset();
        if let Some(h) = self.honest.as_mut() {
            h.reset();
        }
        self.collected.clear();
        self.byzantine = 0;
        self.rejected.clear();
        self.secure = None;
        self.he = None;
        self.withheld = None;
        self.merged = None;
    }

    /// Fold a held update with the weight the server gave it.
    fn release_held(&mut self, client: ClientId, weight: u64) {
        match self.held.remove(&client) {
            Some(Ok(buf)) => {
                if let Err(e) = self.acc.fold_owned(buf, weight) {
                    self.rejected.push((client, e.into()));
                }
            }
            Some(Err(e)) => self.rejected.push((client, e)),
            None => self.rejected.push((client, Rejection::NotHeld)),
        }
    }

    /// An upload's values into `buf`: decoded with the run's codec, or read from f32
    /// safetensors.
    fn read_update(&mut self, payload: &[u8], buf: &mut [f32]) -> Result<(), Rejection> {
        match &self.codec {
            Some(codec) => Ok(codec.decode_into(payload, buf)?),
            None => Ok(self.reader.read_into(payload, buf)?),
        }
    }

    /// Parse and fold (or hold) one upload; a corrupt payload or update is recorded as rejected.
    fn fold_upload(
        &mut self,
        client: ClientId,
        payload: Vec<u8>,
        num_examples: usize,
        hold: bool,
        byzantine: bool,
    ) {
        // Under DP every client weighs the same (sensitivity C per client).
        let weight = if self.dp.is_some() {
            1
        } else {
            num_examples as u64
        };
        if self.strategy.needs() == Needs::AllUpdates {
            let mut buf = vec![0f32; self.acc.len()];
            match self.read_update(&payload, &mut buf) {
                // As FedAvg refuses them: a value that is not finite poisons a median too.
                Ok(()) if buf.iter().any(|x| !x.is_finite()) => {
                    self.rejected.push((client, Rejection::NonFinite));
                }
                Ok(()) => {
                    self.collected.insert(client, (buf, byzantine));
                }
                Err(e) => self.rejected.push((client, e.into())),
            }
            return;
        }
        let server_clip = match self.strategy {
            Strategy::NormBounded(c) => Some(c),
            _ => self.dp.and_then(|dp| dp.server_clip),
        };
        let track_honest = self.honest.is_some() && !byzantine;
        let folded = if hold || server_clip.is_some() || track_honest || self.codec.is_some() {
            // Values needed as a buffer of their own: held for a later weight, clipped, or
            // decoded.
            let mut buf = self.acc.take_buffer();
            let parsed = self.read_update(&payload, &mut buf);
            if hold {
                self.held.insert(client, parsed.map(|()| buf));
                return;
            }
            parsed.and_then(|()| {
                if let Some(c) = server_clip {
                    norm_bounded::bound(&mut buf, c);
                }
                if let (true, Some(h)) = (track_honest, self.honest.as_mut()) {
                    h.fold(&buf, weight)?;
                }
                Ok(self.acc.fold_owned(buf, weight)?)
            })
        } else {
            // Folded in place from the bytes that arrived.
            // Folded in place from the bytes that arrived; checked as it is folded (a rejection
            // comes back from `take_rejected` when the round closes).
            self.reader
                .starts(&payload)
                .map(|starts| {
                    let starts = starts.to_vec();
                    self.acc
                        .fold_payload(Arc::new(payload), starts, weight, client as u64);
                })
                .map_err(Rejection::from)
        };
        if let Err(e) = folded {
            self.rejected.push((client, e));
        }
    }
}
