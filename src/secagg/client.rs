//! A client's side of a SecAgg+ round: it sees its neighbours' public keys, the shares they
//! sent it (encrypted for it), and the server's unmasking request — and reveals, for each
//! neighbour, at most one of its two secrets' shares.

use std::collections::BTreeMap;

use super::crypto::{self, KeyPair, Secret};
use super::lanes::Lanes;
use super::mask::{self, MaskStream};
use super::messages::{
    AdvertiseKeys, EncryptedShares, KeyDirectory, MaskedInput, ShareInbox, ShareKeys,
    UnmaskRequest, UnmaskResponse,
};
use super::{Params, Party, Refusal, Rejection, SecAggError};
use crate::ids::ClientId;
use crate::privacy::noise::DiscreteNoise;

/// Where a client is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Keys,
    Shares,
    Masking,
    Done,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Keys => "keys",
            Phase::Shares => "shares",
            Phase::Masking => "masking",
            Phase::Done => "done",
        }
    }
}

/// One client in one round.
#[derive(Debug)]
pub struct SecAggClient {
    id: ClientId,
    round: u64,
    params: Params,
    /// Its neighbours in the round's graph (public).
    neighbours: Vec<ClientId>,
    cipher: KeyPair,
    mask: KeyPair,
    self_seed: Secret,
    share_seed: Secret,
    directory: BTreeMap<ClientId, AdvertiseKeys>,
    /// Shares held for neighbours: (self-mask seed share, mask key share).
    held: BTreeMap<ClientId, (Vec<u8>, Vec<u8>)>,
    phase: Phase,
}

/// A share pair's plaintext: two shares of 33 bytes (index, 32 bytes).
const SHARE: usize = 33;

impl SecAggClient {
    /// Client `id` of round `round`, with its `neighbours` (the round's public graph) and
    /// `entropy`, from which its keys, self-mask seed and sharing polynomials are drawn.
    pub fn new(
        id: ClientId,
        round: u64,
        params: Params,
        neighbours: &[ClientId],
        entropy: Secret,
    ) -> Self {
        let draw = |what: &str| crypto::derive(what, round, id, id, &entropy);
        Self {
            id,
            round,
            params,
            neighbours: neighbours.to_vec(),
            cipher: KeyPair::from_secret(draw("cipher key")),
            mask: KeyPair::from_secret(draw("mask key")),
            self_seed: draw("self mask"),
            share_seed: draw("sharing"),
            directory: BTreeMap::new(),
            held: BTreeMap::new(),
            phase: Phase::Keys,
        }
    }

    fn expect(&self, phase: Phase, message: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::Phase {
                who: Party::Client(self.id),
                message,
                phase: self.phase.name(),
            })
        }
    }

    fn rejected(&self, why: Rejection) -> SecAggError {
        SecAggError::Rejected {
            client: self.id,
            why,
        }
    }

    /// Phase 0: its public keys.
    pub fn advertise(&self) -> AdvertiseKeys {
        AdvertiseKeys {
            client: self.id,
            cipher_pk: self.cipher.public,
            mask_pk: self.mask.public,
        }
    }

    /// The key that encrypts shares from `from` to `to` (one message per key and direction).
    fn share_key(&self, from: ClientId, to: ClientId, their_cipher_pk: &[u8; 32]) -> Secret {
        let shared = self.cipher.agree(their_cipher_pk);
        crypto::derive(
            &format!("shares {from}->{to}"),
            self.round,
            from,
            to,
            &shared,
        )
    }

    fn share_context(&self, from: ClientId, to: ClientId) -> Vec<u8> {
        format!("secagg+ round {} shares {from}->{to}", self.round).into_bytes()
    }

    /// Phase 1: split its self-mask seed and mask key among the neighbours in `directory`,
    /// each pair encrypted for its recipient.
    ///
    /// # Errors
    /// A key of someone not its neighbour, or fewer than `threshold` neighbours left.
    pub fn share(&mut self, directory: KeyDirectory) -> Result<ShareKeys, SecAggError> {
        self.expect(Phase::Keys, "the key directory")?;
        for keys in directory.neighbours {
            if keys.client == self.id || self.neighbours.binary_search(&keys.client).is_err() {
                return Err(self.rejected(Rejection::NotNeighbour(keys.client)));
            }
            self.directory.insert(keys.client, keys);
        }
        let n = self.directory.len();
        if n < self.params.threshold {
            return Err(SecAggError::Threshold {
                phase: "keys",
                survivors: n,
                threshold: self.params.threshold,
            });
        }
        let t = self.params.threshold;
        let seeds = crypto::split(&self.self_seed, t, n, self.share_seed);
        let keys = crypto::split(&self.mask.secret_bytes(), t, n, {
            crypto::derive("sharing 2", self.round, self.id, self.id, &self.share_seed)
        });
        let shares = self
            .directory
            .values()
            .zip(seeds.into_iter().zip(keys))
            .map(|(peer, (s, k))| {
                let key = self.share_key(self.id, peer.client, &peer.cipher_pk);
                let plain = [s, k].concat();
                EncryptedShares {
                    from: self.id,
                    to: peer.client,
                    ciphertext: crypto::seal(
                        &key,
                        &self.share_context(self.id, peer.client),
                        &plain,
                    ),
                }
            })
            .collect();
        self.phase = Phase::Shares;
        Ok(ShareKeys {
            client: self.id,
            shares,
        })
    }

    /// Open one share pair addressed to this client.
    fn open(&self, e: &EncryptedShares) -> Result<(Vec<u8>, Vec<u8>), SecAggError> {
        if e.to != self.id {
            return Err(self.rejected(Rejection::Misaddressed(e.to)));
        }
        let peer = (self.directory.get(&e.from))
            .ok_or_else(|| self.rejected(Rejection::UnknownSender(e.from)))?;
        let key = self.share_key(e.from, self.id, &peer.cipher_pk);
        let plain = crypto::open(&key, &self.share_context(e.from, self.id), &e.ciphertext)
            .filter(|p| p.len() == 2 * SHARE)
            .ok_or_else(|| self.rejected(Rejection::Unauthentic(e.from)))?;
        Ok((plain[..SHARE].to_vec(), plain[SHARE..].to_vec()))
    }

    /// Phase 2: keep the shares its neighbours sent it, and mask `values` (weight `weight`)
    /// with its self mask and a pairwise mask per neighbour that sent shares.
    ///
    /// # Errors
    /// A share that fails authentication or is not for it, fewer than `threshold` neighbours
    /// left, or a value FedAvg would reject.
    pub fn mask(
        &mut self,
        inbox: ShareInbox,
        values: &[f32],
        weight: u64,
    ) -> Result<MaskedInput, SecAggError> {
        self.mask_noised(inbox, values, weight, None)
    }

    /// [`SecAggClient::mask`], with `noise` (distributed DP's discrete Gaussian shares) added
    /// to the encoded terms before masking.
    ///
    /// # Errors
    /// As [`SecAggClient::mask`].
    pub fn mask_noised(
        &mut self,
        inbox: ShareInbox,
        values: &[f32],
        weight: u64,
        noise: Option<&mut DiscreteNoise>,
    ) -> Result<MaskedInput, SecAggError> {
        self.expect(Phase::Shares, "the share inbox")?;
        for e in &inbox.shares {
            let pair = self.open(e)?;
            if self.held.insert(e.from, pair).is_some() {
                return Err(self.rejected(Rejection::DuplicateShares(e.from)));
            }
        }
        if self.held.len() < self.params.threshold {
            return Err(SecAggError::Threshold {
                phase: "shares",
                survivors: self.held.len(),
                threshold: self.params.threshold,
            });
        }
        let ring = self.params.ring;
        let mut lanes = Lanes::encode(ring, self.id, values, weight)?;
        if let Some(noise) = noise {
            lanes.add_noise(noise);
        }
        let mut masks = vec![(MaskStream::new(&self.self_seed), false)];
        for &j in self.held.keys() {
            let pk = &self.directory[&j].mask_pk;
            let seed = pair_mask_seed(self.round, self.id, j, &self.mask, pk);
            masks.push((MaskStream::new(&seed), self.id > j));
        }
        mask::apply_masks(ring, &masks, &mut lanes);
        self.phase = Phase::Masking;
        Ok(MaskedInput {
            client: self.id,
            masked: lanes.to_bytes(ring),
        })
    }

    /// Phase 3: reveal self-mask seed shares of survivors and mask key shares of dropped
    /// clients — never both for one client, and only once.
    ///
    /// # Errors
    /// A request that names a client on both lists, leaves this client out of the
    /// survivors, names fewer than `threshold` survivors, or comes a second time.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        self.expect(Phase::Masking, "an unmasking request")?;
        let refuse = |why: Refusal| SecAggError::Refused {
            client: self.id,
            why,
        };
        if let Some(both) = request
            .survivors
            .iter()
            .find(|c| request.dropped.contains(c))
        {
            return Err(refuse(Refusal::BothLists(*both)));
        }
        if !request.survivors.contains(&self.id) {
            return Err(refuse(Refusal::NotListed));
        }
        if request.survivors.len() < self.params.threshold {
            return Err(SecAggError::Threshold {
                phase: "unmasking",
                survivors: request.survivors.len(),
                threshold: self.params.threshold,
            });
        }
        let pick = |list: &[ClientId], second: bool| -> Vec<(ClientId, Vec<u8>)> {
            list.iter()
                .filter_map(|c| {
                    let (s, k) = self.held.get(c)?;
                    Some((*c, if second { k.clone() } else { s.clone() }))
                })
                .collect()
        };
        let response = UnmaskResponse {
            client: self.id,
            seed_shares: pick(&request.survivors, false),
            key_shares: pick(&request.dropped, true),
        };
        self.phase = Phase::Done;
        Ok(response)
    }
}

/// The seed of the pairwise mask between `i` and `j` in `round`, from `i`'s mask key pair
/// and `j`'s public mask key (the same seed from either side).
pub(super) fn pair_mask_seed(
    round: u64,
    i: ClientId,
    j: ClientId,
    mine: &KeyPair,
    their_pk: &[u8; 32],
) -> Secret {
    crypto::derive("pairwise mask", round, i, j, &mine.agree(their_pk))
}
