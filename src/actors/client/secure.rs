//! A client's side of secure aggregation (SecAgg+): it keeps its protocol state between the
//! phase messages of a round — its keys before training, the shares its neighbours sent it,
//! its masked upload after training, the shares it reveals when the round closes.

use crate::ids::{ClientId, RoundId};
use crate::privacy::noise::DiscreteNoise;
use crate::rng::{purpose, rng_for};
use crate::secagg::messages::{
    AdvertiseKeys, KeyDirectory, MaskedInput, ShareInbox, ShareKeys, UnmaskRequest, UnmaskResponse,
};
use crate::secagg::{Params, SecAggClient, SecAggError};

/// A client's protocol state for one round.
pub(super) struct Secure {
    /// The round it is for.
    pub(super) round: RoundId,
    client: SecAggClient,
    inbox: Option<ShareInbox>,
}

impl Secure {
    /// Client `id`'s state for `round`, its keys drawn from the run's `seed` (simulation:
    /// reproducible runs; a deployment draws them from the OS).
    pub(super) fn new(
        id: ClientId,
        (round, seed): (RoundId, u64),
        params: Params,
        neighbours: &[ClientId],
    ) -> Self {
        let mut entropy = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut rng_for(seed, &[purpose::SECAGG, round as u64, id as u64, 1]),
            &mut entropy,
        );
        Self {
            round,
            client: SecAggClient::new(id, round as u64, params, neighbours, entropy),
            inbox: None,
        }
    }

    /// Phase 0: its public keys.
    pub(super) fn advertise(&self) -> AdvertiseKeys {
        self.client.advertise()
    }

    /// Phase 1: its encrypted shares.
    pub(super) fn share(&mut self, directory: KeyDirectory) -> Result<ShareKeys, SecAggError> {
        self.client.share(directory)
    }

    /// Phase 1 → 2: the shares addressed to it, kept until its update is ready.
    pub(super) fn keep(&mut self, inbox: ShareInbox) {
        self.inbox = Some(inbox);
    }

    /// Phase 2: its masked update (with distributed DP's discrete shares, if any).
    pub(super) fn masked(
        &mut self,
        values: &[f32],
        noise: Option<&mut DiscreteNoise>,
        weight: u64,
    ) -> Result<MaskedInput, SecAggError> {
        let inbox = self.inbox.take().ok_or_else(|| SecAggError::Phase {
            who: crate::secagg::Party::AnyClient,
            message: "its update (no share inbox arrived)",
            phase: "shares",
        })?;
        self.client.mask_noised(inbox, values, weight, noise)
    }

    /// Phase 2 off the actors' executor (masking is a few mask expansions of the whole
    /// vector): the state back, and its masked update.
    pub(super) async fn masked_off_executor(
        mut self,
        values: Vec<f32>,
        mut noise: Option<DiscreteNoise>,
        weight: u64,
    ) -> (Self, Result<MaskedInput, SecAggError>) {
        let job = move || {
            let input = self.masked(&values, noise.as_mut(), weight);
            (self, input)
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(done) => done,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Phase 3: the shares the server asks for, if an honest client may reveal them.
    pub(super) fn unmask(
        &mut self,
        request: &UnmaskRequest,
    ) -> Result<UnmaskResponse, SecAggError> {
        self.client.unmask(request)
    }
}
