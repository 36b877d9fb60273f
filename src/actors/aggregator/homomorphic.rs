//! A round under homomorphic encryption, the aggregator's side: it has the key holders make
//! the round's key, hands each sampled client the public key, adds the ciphertexts they
//! upload, and has the key holders decrypt only the sum. It never holds one client's update.

use std::sync::Arc;

use ractor::ActorRef;

use super::secure::Released;
use super::{Aggregate, AggregatorState, Withheld};
use crate::actors::client::ClientMsg;
use crate::he::cost::{Decryption, Setup};
use crate::he::{EncryptedInput, EncryptedSum, HeError, KeyAuthority, Params};
use crate::messages::{ClientId, RoundId};
use crate::model::AdapterSet;
use crate::rng::{purpose, rng_for};

/// The aggregator's side of one homomorphic round.
pub(super) struct HeRound {
    params: Params,
    authority: KeyAuthority,
    /// Ring elements a vector has (the values and the weight).
    elements: usize,
    sum: EncryptedSum,
}

impl HeRound {
    /// The round's keys (from the run's `seed`: a simulation's keys are reproducible), and
    /// the public key sent to each of `clients`.
    fn set_up(
        round: RoundId,
        params: Params,
        clients: &[(ClientId, ActorRef<ClientMsg>)],
        (seed, values): (u64, usize),
    ) -> Result<(Self, Setup), HeError> {
        let mut entropy = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut rng_for(seed, &[purpose::SECAGG, round as u64, u64::MAX]),
            &mut entropy,
        );
        let (authority, holder_bytes) = KeyAuthority::generate(&params, entropy)?;
        let encryptor = authority.encryptor();
        let elements = values + 1;
        let setup = Setup {
            public_key_bytes: encryptor.public_key_bytes(),
            ciphertext_bytes: authority.ciphertext_bytes(),
            ciphertexts: params.ciphertexts(elements),
            holder_bytes,
        };
        for (_, actor) in clients {
            let _ = actor.send_message(ClientMsg::HeKey {
                round,
                params,
                encryptor: encryptor.clone(),
                ciphertext_bytes: setup.ciphertext_bytes,
            });
        }
        let invited = clients.iter().map(|(c, _)| *c);
        let sum = EncryptedSum::new(round, invited, &authority, setup.ciphertexts);
        let round = Self {
            params,
            authority,
            elements,
            sum,
        };
        Ok((round, setup))
    }

    /// The key holders decrypt the sum (at least two uploads), off the actors' executor:
    /// the exact sums, how many uploads, their total weight.
    async fn finish(self) -> (Result<Released, HeError>, Decryption) {
        let mut decryption = Decryption {
            degree: self.params.degree,
            ..Decryption::default()
        };
        let uploads = self.sum.uploads();
        if uploads < 2 {
            return (Err(HeError::TooFew { uploads }), decryption);
        }
        decryption.ciphertexts = self.sum.len();
        let Self {
            params,
            mut authority,
            sum,
            elements,
            ..
        } = self;
        let sum = sum.into_ciphertexts();
        let decrypted = tokio::task::spawn_blocking(move || authority.decrypt(sum)).await;
        let (coefficients, bytes) = match decrypted {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return (Err(e), decryption),
            Err(join) => {
                tracing::error!(error = %join, "the key holders' decryption stopped");
                return (Err(HeError::Aborted), decryption);
            }
        };
        decryption.holder_bytes = bytes;
        let released = params
            .packing
            .unpack(&coefficients, elements, uploads)
            .map(|sums| {
                let (exact, weight) = params.ring.decode_sums(&sums);
                (exact, uploads, weight)
            });
        (released, decryption)
    }
}

impl AggregatorState {
    /// Make the round's keys and send the clients the public key.
    pub(super) fn set_up_he(
        &mut self,
        params: Params,
        clients: Vec<(ClientId, ActorRef<ClientMsg>)>,
        seed: u64,
    ) -> Result<Setup, HeError> {
        let values = self.acc.len();
        match HeRound::set_up(self.round, params, &clients, (seed, values)) {
            Ok((round, setup)) => {
                self.he = Some(round);
                Ok(setup)
            }
            Err(e) => {
                self.withheld = Some(e.clone().into());
                Err(e)
            }
        }
    }

    /// A client's ciphertexts (an upload that does not fit the round is logged and left out).
    pub(super) fn encrypted(&mut self, input: EncryptedInput) {
        let client = input.client;
        if let Some(Err(e)) = self.he.as_mut().map(|h| h.sum.add(&input)) {
            tracing::warn!(client, error = %e, "encrypted upload rejected");
        }
    }

    /// Close a homomorphic round: decrypt the sum; the mean goes on as a secure round's.
    pub(super) async fn finish_he(&mut self, global: Arc<AdapterSet>, round: HeRound) -> Aggregate {
        let (released, decryption) = round.finish().await;
        let mut aggregate = self.release(global, released.map_err(Withheld::from));
        aggregate.decryption = Some(decryption);
        aggregate
    }
}
