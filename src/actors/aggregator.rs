//! The aggregator: receives completed updates as they arrive and folds them into a running,
//! order-independent weighted sum (no list of K updates held); closes the round on request.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::messages::{ClientId, RoundId};
use crate::model::{AdapterLayout, AdapterSet};
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
}

/// Messages the aggregator understands.
pub enum AggregatorMsg {
    /// Start a round.
    Begin {
        /// The round.
        round: RoundId,
    },
    /// Fold one uploaded update.
    Fold {
        /// From whom.
        client: ClientId,
        /// Safetensors buffer of `local − global`.
        payload: Vec<u8>,
        /// FedAvg weight.
        num_examples: usize,
    },
    /// Close the round: `global + weighted mean update`.
    Finish {
        /// The global adapter the updates are relative to.
        global: Arc<AdapterSet>,
        /// Where the new global goes.
        reply: RpcReplyPort<Aggregate>,
    },
}

/// State: the layout and the current round's accumulator.
pub struct AggregatorState {
    layout: Arc<AdapterLayout>,
    round: RoundId,
    acc: FedAvgAccumulator,
    rejected: Vec<(ClientId, String)>,
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
        let acc = FedAvgAccumulator::new(layout.len());
        Ok(AggregatorState {
            layout,
            round: 0,
            acc,
            rejected: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<AggregatorMsg>,
        msg: AggregatorMsg,
        st: &mut AggregatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Begin { round } => {
                st.round = round;
                st.acc = FedAvgAccumulator::new(st.layout.len());
                st.rejected.clear();
            }
            AggregatorMsg::Fold {
                client,
                payload,
                num_examples,
            } => match AdapterSet::from_safetensors(st.layout.clone(), &payload) {
                Ok(update) => {
                    if let Err(e) = st.acc.fold(update.data(), num_examples as u64) {
                        st.rejected.push((client, e.to_string()));
                    }
                }
                Err(e) => st.rejected.push((client, e.to_string())),
            },
            AggregatorMsg::Finish { global, reply } => {
                let folded = st.acc.count();
                let next = if folded == 0 {
                    global
                } else {
                    Arc::new(st.acc.apply_to(&global))
                };
                let _ = reply.send(Aggregate {
                    global: next,
                    folded,
                    examples: st.acc.total_weight(),
                    rejected: std::mem::take(&mut st.rejected),
                });
            }
        }
        Ok(())
    }
}
