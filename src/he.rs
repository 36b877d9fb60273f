//! Homomorphic encryption for aggregation: each client encrypts FedAvg's exact integer terms
//! under a BFV public key (Brakerski/Fan–Vercauteren, the `fhe` crate), the server adds the
//! ciphertexts it receives without decrypting any, and a key authority decrypts only the
//! sum. The sum is the ring sum SecAgg+ unmasks, so the mean is FedAvg's bit for bit.
//!
//! - [`pack`]: ring elements ([`crate::secagg::Ring`]) cut into limbs small enough that the
//!   sum of every client's limbs stays below the plaintext modulus, packed into polynomial
//!   coefficients, and the limbs' sums put back together.
//! - [`keys`]: the key authority — `key_holders` parties who generate the key jointly and
//!   decrypt jointly (multiparty BFV, Mouchet et al. 2021: every holder must take part; no
//!   fewer learn anything) — and a client's encryption.
//! - [`sum`]: the server's sum of a round's ciphertexts.
//! - [`cost`]: what it costs on the virtual clock.
//!
//! Trust model: the server is honest-but-curious and does not collude with all the key
//! holders; the key holders decrypt only the sum the server sends them. Unlike SecAgg+,
//! clients that drop out cost nothing: the sum of whoever uploaded decrypts.

pub mod cost;
pub mod keys;
pub mod pack;
pub mod sum;

use std::sync::Arc;

use crate::ids::ClientId;
use crate::secagg::Ring;

pub use keys::{Encryptor, KeyAuthority};
pub use pack::Packing;
pub use sum::{EncryptedInput, EncryptedSum};

/// Errors of homomorphic aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeError {
    /// A polynomial degree the scheme is not set up for.
    #[error("homomorphic encryption: degree {degree}: it must be 4096, 8192 or 16384")]
    Degree {
        /// The degree asked for.
        degree: usize,
    },
    /// Too many key holders.
    #[error("homomorphic encryption: key_holders {0}: it must be 1..=16")]
    KeyHolders(usize),
    /// So many clients a round that a limb would have fewer than 8 bits.
    #[error(
        "homomorphic encryption: {clients} clients a round leave {limb_bits}-bit limbs under \
         the {plaintext_bits}-bit plaintext modulus; at most {max} clients"
    )]
    TooManyClients {
        /// Clients a round can have.
        clients: usize,
        /// The limb that leaves.
        limb_bits: u32,
        /// log2 of the plaintext modulus (minus one).
        plaintext_bits: u32,
        /// The most clients with 8-bit limbs.
        max: usize,
    },
    /// The BFV library failed.
    #[error("BFV: {0}")]
    Bfv(Arc<fhe::Error>),
    /// An update cannot be encoded (FedAvg would reject it too).
    #[error(transparent)]
    Encode(crate::secagg::SecAggError),
    /// An encrypted upload the server does not take.
    #[error("client {client}: encrypted upload rejected: {why}")]
    Rejected {
        /// Whose.
        client: ClientId,
        /// Why.
        why: Rejection,
    },
    /// A decrypted limb sum outside what the survivors' limbs can add up to: a decryption
    /// failure or a ciphertext that was not an honest encryption.
    #[error(
        "he_decrypt: coefficient {index} decrypted to {value}, above {bound} (the most {survivors} \
         limbs sum to)"
    )]
    Decrypt {
        /// Which coefficient.
        index: usize,
        /// What it decrypted to.
        value: u64,
        /// Its bound.
        bound: u64,
        /// Uploads summed.
        survivors: usize,
    },
    /// The decryption task stopped before it finished (a panic in the library): the round
    /// releases nothing and the run goes on.
    #[error("he_aborted: the decryption stopped before it finished")]
    Aborted,
    /// Fewer than two uploads: the key holders do not decrypt a "sum" that is one update.
    #[error(
        "he_too_few: {uploads} encrypted updates; the key holders decrypt only sums of at least \
         2 (a sum of one is that update)"
    )]
    TooFew {
        /// Uploads that arrived.
        uploads: usize,
    },
}

impl From<fhe::Error> for HeError {
    fn from(e: fhe::Error) -> Self {
        Self::Bfv(Arc::new(e))
    }
}

/// Why an encrypted upload was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not as many ciphertexts as the packing needs.
    #[error("{got} ciphertexts, expected {expected}")]
    Count {
        /// Ciphertexts sent.
        got: usize,
        /// Ciphertexts a vector takes.
        expected: usize,
    },
    /// A second upload from the same client in one round.
    #[error("a second upload this round")]
    Twice,
    /// An upload for another round, or without a key this round.
    #[error("not part of this round")]
    Stranger,
    /// Ciphertexts made under other parameters than the round's key.
    #[error("encrypted under other parameters")]
    Parameters,
}

/// Homomorphic aggregation's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// BFV's polynomial degree n (coefficients a ciphertext carries).
    pub degree: usize,
    /// Parties the decryption key is split among (all must decrypt together).
    pub key_holders: usize,
    /// FedAvg's exact terms, as SecAgg+ encodes them.
    pub ring: Ring,
    /// How ring elements become coefficients.
    pub packing: Packing,
    /// The throughputs its compute is priced with on the virtual clock.
    pub compute: cost::Compute,
}

impl Params {
    /// The settings for `degree`, `key_holders`, a ring and at most `max_clients` uploads a
    /// round, checked.
    ///
    /// # Errors
    /// A degree other than 4096, 8192, 16384; key holders outside 1..=16; so many clients a
    /// limb would have fewer than 8 bits.
    pub fn new(
        degree: usize,
        key_holders: usize,
        ring: Ring,
        max_clients: usize,
        compute: cost::Compute,
    ) -> Result<Self, HeError> {
        let scheme = keys::Scheme::of(degree)?;
        if !(1..=16).contains(&key_holders) {
            return Err(HeError::KeyHolders(key_holders));
        }
        let packing = Packing::new(ring, scheme.plaintext_bits, max_clients)?;
        Ok(Self {
            degree,
            key_holders,
            ring,
            packing,
            compute,
        })
    }

    /// Ciphertexts one client's vector of `elements` ring elements takes.
    pub fn ciphertexts(&self, elements: usize) -> usize {
        self.packing.coefficients(elements).div_ceil(self.degree)
    }
}
