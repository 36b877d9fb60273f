//! The server's side of a SecAgg+ round: it routes keys and encrypted shares, sums the masked
//! vectors in the ring, and removes the masks with the shares the survivors reveal. It never
//! holds one client's update.

use std::collections::{BTreeMap, BTreeSet};

use super::client::pair_mask_seed;
use super::crypto::{self, KeyPair};
use super::graph::Graph;
use super::lanes::Lanes;
use super::mask::{self, MaskStream};
use super::messages::{
    AdvertiseKeys, KeyDirectory, MaskedInput, ShareInbox, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use super::{Params, ReconstructFault, Rejection, SecAggError};
use crate::ids::ClientId;

/// What a round released: the unmasked sum and who is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmasked {
    /// Σ of the survivors' encoded vectors (FedAvg's exact terms, then the total weight).
    pub sum: Lanes,
    /// Clients whose update is in the sum.
    pub survivors: Vec<ClientId>,
    /// Clients that shared their keys but sent no masked vector (their masks removed).
    pub dropped: Vec<ClientId>,
    /// Masks regenerated and removed: one per survivor, one per (survivor, dropped
    /// neighbour) pair.
    pub masks: usize,
}

/// Masked vectors summed together in one pass over the sum.
const BATCH: usize = 8;

/// The server in one round.
#[derive(Debug, Clone)]
pub struct SecAggServer {
    round: u64,
    params: Params,
    graph: Graph,
    /// Elements of an encoded vector (values + 1).
    len: usize,
    keys: BTreeMap<ClientId, AdvertiseKeys>,
    shares: BTreeMap<ClientId, ShareKeys>,
    sum: Option<Lanes>,
    /// Masked vectors waiting to be summed together (up to [`BATCH`]).
    pending: Vec<MaskedInput>,
    survivors: BTreeSet<ClientId>,
    responses: BTreeMap<ClientId, UnmaskResponse>,
}

impl SecAggServer {
    /// Round `round` over `graph`'s clients, whose updates have `values` values.
    ///
    /// # Errors
    /// Parameters that cannot work for this many clients.
    pub fn new(
        round: u64,
        params: Params,
        graph: Graph,
        values: usize,
    ) -> Result<Self, SecAggError> {
        params.check(graph.clients().count())?;
        Ok(Self {
            round,
            params,
            graph,
            len: values + 1,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            sum: None,
            pending: Vec::new(),
            survivors: BTreeSet::new(),
            responses: BTreeMap::new(),
        })
    }

    /// Sum into `spare` (a released [`Unmasked::sum`], zeroed here) rather than fresh lanes:
    /// a round's first touch of megabytes of new pages costs more than its additions. One of
    /// another length or ring is dropped.
    pub fn reuse(&mut self, mut spare: Lanes) {
        let fits = spare.len() == self.len && spare.fits(self.params.ring);
        if fits && self.sum.is_none() {
            spare.zero();
            self.sum = Some(spare);
        }
    }

    fn rejected(&self, client: ClientId, why: Rejection) -> SecAggError {
        SecAggError::Rejected { client, why }
    }

    /// Phase 0: a client's keys (one per client of the round).
    ///
    /// # Errors
    /// A client not in the round, or keys sent twice.
    pub fn receive_keys(&mut self, keys: AdvertiseKeys) -> Result<(), SecAggError> {
        let c = keys.client;
        if self.graph.of(c).is_empty() || self.keys.contains_key(&c) {
            return Err(self.rejected(c, Rejection::Keys));
        }
        self.keys.insert(c, keys);
        Ok(())
    }

    /// Phase 0 → 1: `client`'s neighbours that advertised keys.
    pub fn directory_for(&mut self, client: ClientId) -> KeyDirectory {
        let neighbours: Vec<AdvertiseKeys> = (self.graph.of(client).iter())
            .filter_map(|n| self.keys.get(n).cloned())
            .collect();
        KeyDirectory { neighbours }
    }

    /// Phase 1: a client's encrypted shares.
    ///
    /// # Errors
    /// A client that advertised no keys, shares sent twice, or shares for non-neighbours.
    pub fn receive_shares(&mut self, shares: ShareKeys) -> Result<(), SecAggError> {
        let c = shares.client;
        let fine = self.keys.contains_key(&c)
            && !self.shares.contains_key(&c)
            && shares
                .shares
                .iter()
                .all(|e| e.from == c && self.graph.joined(c, e.to));
        if !fine {
            return Err(self.rejected(c, Rejection::Shares));
        }
        self.shares.insert(c, shares);
        Ok(())
    }

    /// Phase 1 → 2: the shares addressed to `client`.
    pub fn inbox_for(&mut self, client: ClientId) -> ShareInbox {
        let shares = self
            .shares
            .values()
            .flat_map(|s| s.shares.iter().filter(|e| e.to == client).cloned())
            .collect();
        ShareInbox { shares }
    }

    /// Phase 2: a masked vector, summed with the next ones in one pass over the running sum
    /// (the server keeps no client's vector past its batch of [`BATCH`], and never unmasked).
    ///
    /// # Errors
    /// A client that sent no shares, a second vector, or a vector of the wrong length. A
    /// vector with an element outside the ring is found when its batch is summed: it is taken
    /// back out and its sender counted as dropped (logged).
    pub fn receive_masked(&mut self, input: MaskedInput) -> Result<(), SecAggError> {
        let c = input.client;
        if !self.shares.contains_key(&c) || self.survivors.contains(&c) {
            return Err(self.rejected(c, Rejection::Masked));
        }
        if input.masked.len() != self.len * self.params.ring.element_bytes() {
            return Err(self.rejected(c, Rejection::MaskedSize));
        }
        self.survivors.insert(c);
        self.pending.push(input);
        if self.pending.len() == BATCH {
            self.sum_pending();
        }
        Ok(())
    }

    /// Sum the waiting masked vectors; take back out any with an element outside the ring.
    fn sum_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (ring, len) = (self.params.ring, self.len);
        let pending = std::mem::take(&mut self.pending);
        let sum = self.sum.get_or_insert_with(|| Lanes::zeros(ring, len));
        let uploads: Vec<&[u8]> = pending.iter().map(|m| m.masked.as_slice()).collect();
        let in_ring = sum.add_uploads(ring, &uploads, false);
        for (m, ok) in pending.iter().zip(in_ring) {
            if !ok {
                sum.add_uploads(ring, &[&m.masked], true);
                self.survivors.remove(&m.client);
                let e = SecAggError::Rejected {
                    client: m.client,
                    why: Rejection::MaskedRange,
                };
                tracing::warn!(client = m.client, error = %e, "masked vector rejected");
            }
        }
    }

    /// Phase 2 → 3: who survived and who dropped after sharing.
    ///
    /// # Errors
    /// Fewer than `threshold` masked vectors arrived (`secagg_threshold`).
    pub fn unmask_request(&mut self) -> Result<UnmaskRequest, SecAggError> {
        self.sum_pending();
        if self.survivors.len() < self.params.threshold {
            return Err(SecAggError::Threshold {
                phase: "masked input",
                survivors: self.survivors.len(),
                threshold: self.params.threshold,
            });
        }
        Ok(UnmaskRequest {
            survivors: self.survivors.iter().copied().collect(),
            dropped: (self.shares.keys())
                .filter(|c| !self.survivors.contains(c))
                .copied()
                .collect(),
        })
    }

    /// Phase 3: a survivor's revealed shares.
    ///
    /// # Errors
    /// A response from a client that is not a survivor, or a second one.
    pub fn receive_unmask(&mut self, response: UnmaskResponse) -> Result<(), SecAggError> {
        let c = response.client;
        if !self.survivors.contains(&c) || self.responses.contains_key(&c) {
            return Err(self.rejected(c, Rejection::Unmasking));
        }
        self.responses.insert(c, response);
        Ok(())
    }

    /// The shares of `owner`'s secret revealed so far (the seed's, or the mask key's).
    fn revealed(&self, owner: ClientId, key: bool) -> Vec<Vec<u8>> {
        self.responses
            .values()
            .filter_map(|r| {
                let list = if key { &r.key_shares } else { &r.seed_shares };
                list.iter()
                    .find(|(c, _)| *c == owner)
                    .map(|(_, s)| s.clone())
            })
            .collect()
    }

    fn reconstruct(&self, owner: ClientId, key: bool) -> Result<crypto::Secret, SecAggError> {
        let shares = self.revealed(owner, key);
        let what = if key { "mask key" } else { "self-mask seed" };
        if shares.len() < self.params.threshold {
            return Err(SecAggError::Threshold {
                phase: "unmasking",
                survivors: shares.len(),
                threshold: self.params.threshold,
            });
        }
        // Any `threshold` shares determine the secret: interpolate from that many.
        let enough = &shares[..self.params.threshold];
        crypto::combine(enough).ok_or(SecAggError::Reconstruct {
            client: owner,
            what,
            why: ReconstructFault::NoCombine,
        })
    }

    /// Remove every mask: the survivors' self masks, and the pairwise masks survivors made
    /// with clients that dropped after sharing — all regenerated together, part by part of
    /// the sum ([`mask::apply_masks`]). The sum is handed over: a second call releases an
    /// empty one.
    ///
    /// # Errors
    /// Fewer than `threshold` shares of a secret came back, or a reconstructed mask key that
    /// is not the one the client advertised.
    pub fn finish(&mut self) -> Result<Unmasked, SecAggError> {
        self.sum_pending();
        let mut masks = Vec::new();
        for &i in &self.survivors {
            let seed = self.reconstruct(i, false)?;
            masks.push((MaskStream::new(&seed), true));
        }
        let dropped: Vec<ClientId> = (self.shares.keys())
            .filter(|c| !self.survivors.contains(c))
            .copied()
            .collect();
        for &j in &dropped {
            let pair = KeyPair::from_secret(self.reconstruct(j, true)?);
            if pair.public != self.keys[&j].mask_pk {
                return Err(SecAggError::Reconstruct {
                    client: j,
                    what: "mask key",
                    why: ReconstructFault::NotAdvertised,
                });
            }
            // Survivors that received j's shares masked with j: undo their pairwise masks.
            for e in &self.shares[&j].shares {
                let i = e.to;
                if self.survivors.contains(&i) {
                    let seed = pair_mask_seed(self.round, j, i, &pair, &self.keys[&i].mask_pk);
                    masks.push((MaskStream::new(&seed), i < j));
                }
            }
        }
        let mut sum = self
            .sum
            .take()
            .unwrap_or_else(|| Lanes::zeros(self.params.ring, self.len));
        mask::apply_masks(self.params.ring, &masks, &mut sum);
        Ok(Unmasked {
            sum,
            survivors: self.survivors.iter().copied().collect(),
            dropped,
            masks: masks.len(),
        })
    }
}
