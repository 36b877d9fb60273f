//! The server's running sum of a round's encrypted uploads: it adds each client's
//! ciphertexts once, and refuses what does not belong to the round.

use std::collections::BTreeSet;
use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};

use super::{HeError, Rejection};
use crate::ids::{ClientId, RoundId};

/// A client's encrypted update.
#[derive(Debug)]
pub struct EncryptedInput {
    /// Whose.
    pub client: ClientId,
    /// The round it was encrypted for.
    pub round: RoundId,
    /// Its packed vector, a degree's worth of coefficients each.
    pub ciphertexts: Vec<Ciphertext>,
    /// The parameters they were made under ([`super::Encryptor::parameters`]).
    pub parameters: Arc<BfvParameters>,
}

/// A round's sum of encrypted uploads.
#[derive(Debug)]
pub struct EncryptedSum {
    round: RoundId,
    parameters: Arc<BfvParameters>,
    invited: BTreeSet<ClientId>,
    uploaded: BTreeSet<ClientId>,
    sum: Vec<Ciphertext>,
}

impl EncryptedSum {
    /// An empty sum of `ciphertexts` ciphertexts under `authority`'s key for `invited`
    /// clients.
    pub fn new(
        round: RoundId,
        invited: impl IntoIterator<Item = ClientId>,
        authority: &super::KeyAuthority,
        ciphertexts: usize,
    ) -> Self {
        let zero = authority.zero();
        Self {
            round,
            parameters: authority.parameters().clone(),
            invited: invited.into_iter().collect(),
            uploaded: BTreeSet::new(),
            sum: vec![zero; ciphertexts],
        }
    }

    /// Add a client's ciphertexts.
    ///
    /// # Errors
    /// An upload for another round or from a client not invited, a second one, or one with
    /// the wrong number of ciphertexts; the sum is then unchanged.
    pub fn add(&mut self, input: &EncryptedInput) -> Result<(), HeError> {
        let client = input.client;
        let reject = |why| HeError::Rejected { client, why };
        if input.round != self.round || !self.invited.contains(&client) {
            return Err(reject(Rejection::Stranger));
        }
        // The library adds only ciphertexts made under the same parameters object (it
        // asserts so); a fresh encryption under them is always at level 0.
        if !Arc::ptr_eq(&input.parameters, &self.parameters) {
            return Err(reject(Rejection::Parameters));
        }
        if self.uploaded.contains(&client) {
            return Err(reject(Rejection::Twice));
        }
        if input.ciphertexts.len() != self.sum.len() {
            return Err(reject(Rejection::Count {
                got: input.ciphertexts.len(),
                expected: self.sum.len(),
            }));
        }
        for (s, c) in self.sum.iter_mut().zip(&input.ciphertexts) {
            *s += c;
        }
        self.uploaded.insert(client);
        Ok(())
    }

    /// Uploads added.
    pub fn uploads(&self) -> usize {
        self.uploaded.len()
    }

    /// Ciphertexts in the sum.
    pub fn len(&self) -> usize {
        self.sum.len()
    }

    /// Whether the vector takes no ciphertext.
    pub fn is_empty(&self) -> bool {
        self.sum.is_empty()
    }

    /// The summed ciphertexts, to decrypt.
    pub fn into_ciphertexts(self) -> Vec<Ciphertext> {
        self.sum
    }
}
