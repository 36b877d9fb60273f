//! The aggregator: receives completed updates as they arrive and folds them into a running,
//! order-independent weighted sum (no list of K updates held); closes the round on request.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::messages::{ClientId, RoundId};
use crate::model::{AdapterLayout, AdapterSet, PayloadReader};
use crate::privacy::{clip_l2, NoiseSource};
use crate::strategy::fedavg::add;
use crate::strategy::FedAvgAccumulator;

/// Aggregator actor.
pub struct Aggregator;

/// Result of closing a round.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// The new global adapter.
    pub global: Arc<AdapterSet>,
    /// Updates folded.
    pub folded: usize,
    /// Examples behind them.
    pub examples: u64,
    /// Updates rejected (corrupt payload), with the reason.
    pub rejected: Vec<(ClientId, String)>,
    /// Std of the DP noise on the averaged update, when DP is on and noise was released.
    pub noise_stddev: Option<f64>,
}

/// How a DP round is aggregated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpRound {
    /// Server-side clipping norm (None when clients clip).
    pub server_clip: Option<f64>,
    /// Std of the noise added to the sum of clipped updates: z·C.
    pub sum_stddev: f64,
    /// Fixed denominator of the average (Poisson: q·N); None: the number aggregated.
    pub denominator: Option<f64>,
    /// Noise seeding.
    pub noise: NoiseSource,
    /// Master seed (for seeded noise).
    pub seed: u64,
}

/// Messages the aggregator understands.
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
    round: RoundId,
    dp: Option<DpRound>,
    acc: FedAvgAccumulator,
    rejected: Vec<(ClientId, String)>,
    /// Parsed updates waiting for their weight (asynchronous aggregation).
    held: std::collections::HashMap<ClientId, Result<Vec<f32>, String>>,
}

impl Actor for Aggregator {
    type Msg = AggregatorMsg;
    type State = AggregatorState;
    type Arguments = Arc<AdapterLayout>;

    async fn pre_start(
        &self,
        _me: ActorRef<AggregatorMsg>,
        layout: Arc<AdapterLayout>,
    ) -> Result<AggregatorState, ActorProcessingErr> {
        let segments: Vec<usize> = layout.tensors().iter().map(|t| t.numel()).collect();
        let acc = FedAvgAccumulator::with_segments(&segments);
        Ok(AggregatorState {
            reader: PayloadReader::new(layout),
            round: 0,
            dp: None,
            acc,
            rejected: Vec::new(),
            held: std::collections::HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<AggregatorMsg>,
        msg: AggregatorMsg,
        st: &mut AggregatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Begin { round, dp } => {
                st.round = round;
                st.dp = dp;
                st.acc.reset();
                st.rejected.clear();
            }
            AggregatorMsg::Fold {
                client,
                payload,
                num_examples,
                permit,
                hold,
            } => {
                st.fold_upload(client, payload, num_examples, hold);
                // The permit goes here: the update is folded, or buffered (at most a batch).
                drop(permit);
            }
            AggregatorMsg::Release { client, weight } => match st.held.remove(&client) {
                Some(Ok(buf)) => {
                    if let Err(e) = st.acc.fold_owned(buf, weight) {
                        st.rejected.push((client, e.to_string()));
                    }
                }
                Some(Err(e)) => st.rejected.push((client, e)),
                None => st
                    .rejected
                    .push((client, "no update held for this client".to_string())),
            },
            AggregatorMsg::Discard { client } => {
                st.held.remove(&client);
            }
            AggregatorMsg::Finish { global, reply } => {
                for (client, e) in st.acc.take_rejected() {
                    st.rejected.push((client as ClientId, e.to_string()));
                }
                let folded = st.acc.count();
                let (next, noise_stddev) = match st.dp {
                    None if folded == 0 => (global, None),
                    None => (Arc::new(st.acc.apply_to(&global)), None),
                    Some(dp) => {
                        let denom = dp.denominator.unwrap_or(folded as f64);
                        if denom <= 0.0 {
                            (global, None)
                        } else {
                            let mut noise = dp.noise.generator(dp.seed, st.round, 0, dp.sum_stddev);
                            let mean = st.acc.noised_mean(denom, &mut noise);
                            (Arc::new(add(&global, &mean)), Some(dp.sum_stddev / denom))
                        }
                    }
                };
                let _ = reply.send(Aggregate {
                    global: next,
                    folded,
                    examples: st.acc.total_weight(),
                    rejected: std::mem::take(&mut st.rejected),
                    noise_stddev,
                });
            }
        }
        Ok(())
    }
}

impl AggregatorState {
    /// Parse and fold (or hold) one upload; a corrupt payload or update is recorded as rejected.
    fn fold_upload(&mut self, client: ClientId, payload: Vec<u8>, num_examples: usize, hold: bool) {
        // Under DP every client weighs the same (sensitivity C per client).
        let weight = if self.dp.is_some() {
            1
        } else {
            num_examples as u64
        };
        let server_clip = self.dp.and_then(|dp| dp.server_clip);
        let folded = if hold || server_clip.is_some() {
            // Values needed as a buffer of their own: held for a later weight, or clipped.
            let mut buf = self.acc.take_buffer();
            let parsed = self
                .reader
                .read_into(&payload, &mut buf)
                .map_err(|e| e.to_string());
            if hold {
                self.held.insert(client, parsed.map(|()| buf));
                return;
            }
            parsed.and_then(|()| {
                if let Some(c) = server_clip {
                    clip_l2(&mut buf, c);
                }
                self.acc.fold_owned(buf, weight).map_err(|e| e.to_string())
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
                .map_err(|e| e.to_string())
        };
        if let Err(e) = folded {
            self.rejected.push((client, e));
        }
    }
}
