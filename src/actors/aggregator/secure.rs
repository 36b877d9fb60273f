//! A round under secure aggregation (SecAgg+), the aggregator's side: it runs the keys and
//! shares phases with the round's client actors before they train, sums the masked vectors
//! they upload, and unmasks with the survivors' shares when the round closes. It never holds
//! one client's update.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::ActorRef;

use super::{Aggregate, AggregatorState, Withheld};
use crate::model::AdapterSet;
use crate::strategy::fedavg::{add, mean_of_exact_sums, noised_mean_of_exact_sums};

use crate::actors::client::ClientMsg;
use crate::messages::{ClientId, RoundId};
use crate::secagg::cost::{ClientSetup, Unmasking};
use crate::secagg::graph::Graph;
use crate::secagg::lanes::Lanes;
use crate::secagg::messages::{wire_bytes, MaskedInput};
use crate::secagg::{Params, SecAggError, SecAggServer};

/// How long a client actor has to answer a phase message (it is idle then: it answers at
/// once unless it is gone).
const PHASE_WITHIN_MS: u64 = 60_000;

/// A secure round's release: the survivors' exact FedAvg sums, how many they were, and their
/// total weight.
pub(super) type Released = (Vec<i128>, usize, u64);

/// The aggregator's side of one secure round.
pub(super) struct SecureRound {
    server: SecAggServer,
    params: Params,
    clients: BTreeMap<ClientId, ActorRef<ClientMsg>>,
    /// The unmasked sum's buffer once released, for the next round to sum into.
    spare: Option<Lanes>,
}

impl SecureRound {
    /// Run the keys and shares phases with `clients` (all of the round's sampled clients):
    /// those that answer both are in the protocol; their share inboxes are on their way.
    ///
    /// # Errors
    /// Too few clients for the parameters, or fewer than `threshold` left after a phase.
    pub(super) async fn set_up(
        round: RoundId,
        params: Params,
        clients: Vec<(ClientId, ActorRef<ClientMsg>)>,
        (seed, values): (u64, usize),
    ) -> Result<(Self, Vec<(ClientId, ClientSetup)>), SecAggError> {
        let ids: Vec<ClientId> = clients.iter().map(|(c, _)| *c).collect();
        let graph = Graph::new(&ids, params.neighbours, seed, round as u64);
        let mut server = SecAggServer::new(round as u64, params, graph.clone(), values)?;
        let clients: BTreeMap<ClientId, ActorRef<ClientMsg>> = clients.into_iter().collect();
        let mut costs: BTreeMap<ClientId, ClientSetup> = BTreeMap::new();
        for (&c, actor) in &clients {
            let neighbours = graph.of(c).to_vec();
            let keys = ractor::call_t!(
                actor,
                |reply| ClientMsg::SecAggKeys {
                    round,
                    params,
                    neighbours,
                    reply
                },
                PHASE_WITHIN_MS
            );
            if let Ok(keys) = keys {
                costs.entry(c).or_default().keys_up = wire_bytes(&keys);
                server.receive_keys(keys)?;
            }
        }
        for (&c, cost) in costs.iter_mut() {
            let actor = &clients[&c];
            let directory = server.directory_for(c);
            cost.keys_down = wire_bytes(&directory);
            let shares = ractor::call_t!(
                actor,
                |reply| ClientMsg::SecAggShare { directory, reply },
                PHASE_WITHIN_MS
            );
            match shares {
                Ok(Ok(shares)) => {
                    cost.shares_up = wire_bytes(&shares);
                    server.receive_shares(shares)?;
                }
                Ok(Err(e)) => tracing::debug!(client = c, error = %e, "left at the shares phase"),
                Err(_) => {}
            }
        }
        for (&c, cost) in costs.iter_mut().filter(|(_, k)| k.shares_up > 0) {
            let inbox = server.inbox_for(c);
            cost.shares_down = wire_bytes(&inbox);
            cost.masks = 1 + inbox.shares.len();
            let _ = clients[&c].send_message(ClientMsg::SecAggInbox(inbox));
        }
        let round = Self {
            server,
            params,
            clients,
            spare: None,
        };
        Ok((round, costs.into_iter().collect()))
    }

    /// A client's masked vector, summed with its batch.
    ///
    /// # Errors
    /// A vector from outside the protocol, twice, or of the wrong size.
    pub(super) fn masked(&mut self, input: MaskedInput) -> Result<(), SecAggError> {
        self.server.receive_masked(input)
    }

    /// The survivors' exact sums, how many they were and their total weight: the unmasking
    /// phase with the survivors, then the masks removed.
    ///
    /// # Errors
    /// Fewer than `threshold` survivors or shares (`secagg_threshold`), or shares that do
    /// not reconstruct.
    pub(super) async fn finish(&mut self) -> (Result<Released, SecAggError>, Unmasking) {
        let mut unmasking = Unmasking::default();
        let released = self.unmask(&mut unmasking).await;
        (released, unmasking)
    }

    /// The released sum's buffer (after [`SecureRound::finish`]), to sum the next round into:
    /// a fresh one would cost its first touch of megabytes of pages every round.
    pub(super) fn into_spare(self) -> Option<Lanes> {
        self.spare
    }

    async fn unmask(&mut self, unmasking: &mut Unmasking) -> Result<Released, SecAggError> {
        let request = self.server.unmask_request()?;
        let down = wire_bytes(&request);
        for c in &request.survivors {
            let Some(actor) = self.clients.get(c) else {
                continue;
            };
            let req = request.clone();
            let response = ractor::call_t!(
                actor,
                |reply| ClientMsg::SecAggUnmask {
                    request: req,
                    reply
                },
                PHASE_WITHIN_MS
            );
            let up = match response {
                Ok(Ok(r)) => {
                    let up = wire_bytes(&r);
                    self.server.receive_unmask(r)?;
                    up
                }
                _ => 0,
            };
            unmasking.messages.push((*c, down, up));
        }
        let unmasked = self.server.finish()?;
        unmasking.masks = unmasked.masks;
        let (sums, weight) = unmasked.sum.decode_sums(self.params.ring);
        self.spare = Some(unmasked.sum);
        Ok((sums, unmasked.survivors.len(), weight))
    }
}

impl AggregatorState {
    /// Set the round's secure aggregation up with its clients (keys and shares phases).
    pub(super) async fn set_up_secure(
        &mut self,
        params: Params,
        clients: Vec<(ClientId, ActorRef<ClientMsg>)>,
        seed: u64,
    ) -> Result<Vec<(ClientId, ClientSetup)>, SecAggError> {
        let values = self.acc.len();
        let set_up = SecureRound::set_up(self.round, params, clients, (seed, values)).await;
        match set_up {
            Ok((mut round, costs)) => {
                if let Some(spare) = self.secure_spare.take() {
                    round.server.reuse(spare);
                }
                self.secure = Some(round);
                Ok(costs)
            }
            Err(e) => {
                self.withheld = Some(e.clone().into());
                Err(e)
            }
        }
    }

    /// A client's masked vector (one that does not fit the protocol is logged and left out).
    pub(super) fn masked(&mut self, input: MaskedInput) {
        let client = input.client;
        if let Some(Err(e)) = self.secure.as_mut().map(|s| s.masked(input)) {
            tracing::warn!(client, error = %e, "masked vector rejected");
        }
    }

    /// Close a secure round: unmask the survivors' sum and release its mean.
    pub(super) async fn finish_secure(
        &mut self,
        global: Arc<AdapterSet>,
        mut round: SecureRound,
    ) -> Aggregate {
        let (released, unmasking) = round.finish().await;
        self.secure_spare = round.into_spare();
        let mut aggregate = self.release(global, released.map_err(Withheld::from));
        aggregate.unmasking = Some(unmasking);
        aggregate
    }

    /// Release a protected round's exact sums: the mean goes through the server optimiser as
    /// FedAvg's would. A round that cannot be unmasked or decrypted, or that has fewer updates
    /// than the clients' DP noise is calibrated for, keeps the global adapter and says why.
    pub(super) fn release(
        &mut self,
        global: Arc<AdapterSet>,
        released: Result<Released, Withheld>,
    ) -> Aggregate {
        let released = released.and_then(|(sums, n, weight)| {
            let (mean, noise) = self.secure_mean(&sums, n, weight)?;
            Ok((mean, n, weight, noise))
        });
        let (next, folded, examples, noise_stddev, withheld) = match released {
            Ok((Some(mean), survivors, weight, noise)) => {
                let step = match self.server.as_mut() {
                    Some(state) => state.step(&mean),
                    None => mean,
                };
                let next = Arc::new(add(&global, &step));
                (next, survivors, weight, noise, None)
            }
            Ok((None, ..)) => (global, 0, 0, None, None),
            Err(w) => (global, 0, 0, None, Some(w)),
        };
        Aggregate {
            global: next,
            folded,
            examples,
            rejected: std::mem::take(&mut self.rejected),
            noise_stddev,
            byzantine: 0,
            server_lr: self.server_lr(),
            deviation: None,
            withheld: withheld.or_else(|| self.withheld.take()),
            unmasking: None,
            decryption: None,
        }
    }

    /// The mean of a secure round's exact sums: FedAvg's (over the total weight), or under DP
    /// the noised mean over the round's denominator (noise from the server, or none here when
    /// the clients added it), with the std of the noise on it.
    fn secure_mean(
        &self,
        sums: &[i128],
        updates: usize,
        weight: u64,
    ) -> Result<(Option<Vec<f32>>, Option<f64>), Withheld> {
        let Some(dp) = self.dp else {
            return Ok(((weight > 0).then(|| mean_of_exact_sums(sums, weight)), None));
        };
        if let Some(w) = self.too_few_for_noise(updates) {
            return Err(w);
        }
        let denom = dp.denominator.unwrap_or(updates as f64);
        if denom <= 0.0 {
            return Ok((None, None));
        }
        let mut noise = dp.noise.generator(dp.seed, self.round, 0, dp.sum_stddev);
        let mean = noised_mean_of_exact_sums(sums, denom, &mut noise);
        Ok((Some(mean), Some(dp.released_stddev(updates, denom))))
    }
}
