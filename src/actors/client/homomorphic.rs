//! A client's side of homomorphic aggregation: the round's public key, and its update
//! encrypted off the actors' executor.

use crate::he::{EncryptedInput, Encryptor, HeError, Params};
use crate::ids::{ClientId, RoundId};
use crate::privacy::noise::DiscreteNoise;
use crate::rng::{purpose, rng_for};

/// The round's key as the aggregator sent it.
pub(super) struct HeKey {
    /// The round it is for.
    pub(super) round: RoundId,
    pub(super) params: Params,
    pub(super) encryptor: Encryptor,
    /// Bytes one ciphertext takes on the wire.
    pub(super) ciphertext_bytes: u64,
}

impl HeKey {
    /// Client `client`'s update `values` with weight `weight`, encrypted: FedAvg's exact terms
    /// in the ring, packed into limbs, under the round's public key (randomness from the run's
    /// `seed`: reproducible in a simulation; a deployment draws it from the OS), with
    /// distributed DP's discrete shares added to the terms first, if any. Returns the upload
    /// and its bytes on the wire.
    pub(super) async fn encrypt(
        &self,
        client: ClientId,
        seed: u64,
        (values, mut noise): (Vec<f32>, Option<DiscreteNoise>),
        weight: u64,
    ) -> Result<(EncryptedInput, u64), HeError> {
        let mut entropy = [0u8; 32];
        rand::RngCore::fill_bytes(
            &mut rng_for(
                seed,
                &[purpose::SECAGG, self.round as u64, client as u64, 2],
            ),
            &mut entropy,
        );
        let (params, encryptor, round) = (self.params, self.encryptor.clone(), self.round);
        let job = move || {
            let mut elements = (params.ring)
                .encode(client, &values, weight)
                .map_err(HeError::Encode)?;
            if let Some(noise) = noise.as_mut() {
                params.ring.add_noise(&mut elements, noise);
            }
            let ciphertexts = encryptor.encrypt(&params.packing.pack(&elements), entropy)?;
            Ok(EncryptedInput {
                client,
                round,
                ciphertexts,
                parameters: encryptor.parameters().clone(),
            })
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(input) => input.map(|i: EncryptedInput| {
                let bytes = i.ciphertexts.len() as u64 * self.ciphertext_bytes;
                (i, bytes)
            }),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}
