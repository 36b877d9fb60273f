//! The BFV scheme as used here, the key authority that decrypts sums, and a client's
//! encryption.
//!
//! Parameters (128-bit security by the homomorphicencryption.org table: n = 4096 allows a
//! 109-bit ciphertext modulus, 8192 218 bits): n = 4096 with q ≈ 2¹⁰⁹ and t = 2⁴⁶ + 1; n =
//! 8192 or 16384 with q ≈ 2¹²⁰ and t = 2⁵⁶ + 1. Additions only, so one level suffices; the
//! plaintext modulus stays below the first ciphertext prime (the library decrypts through it)
//! and far below q, so the noise of thousands of summed ciphertexts and of the key holders'
//! decryption shares stays far inside its bound (tested at 1,024 clients and 16 holders).
//! Coefficients are encoded as they are (`Encoding::poly`): no batching is needed to add.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder, Ciphertext, Encoding, Plaintext};
use fhe::bfv::{PublicKey, SecretKey};
use fhe::mbfv::{AggregateIter, CommonRandomPoly, DecryptionShare, PublicKeyShare};
use fhe_traits::{FheDecoder, FheEncoder, FheEncrypter, Serialize};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::{HeError, Params};

/// BFV parameters for one degree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// n.
    pub degree: usize,
    /// Bit sizes of the ciphertext primes.
    pub moduli_bits: &'static [usize],
    /// The plaintext modulus t = 2^`plaintext_bits` + 1.
    pub plaintext_bits: u32,
}

impl Scheme {
    /// The parameters for `degree`.
    ///
    /// # Errors
    /// A degree other than 4096, 8192 or 16384.
    pub fn of(degree: usize) -> Result<Self, HeError> {
        let (moduli_bits, plaintext_bits): (&'static [usize], u32) = match degree {
            4096 => (&[54, 55], 46),
            8192 | 16384 => (&[60, 60], 56),
            _ => return Err(HeError::Degree { degree }),
        };
        Ok(Self {
            degree,
            moduli_bits,
            plaintext_bits,
        })
    }

    /// The library's parameters.
    ///
    /// # Errors
    /// The library refuses them (it does not for the three degrees above).
    pub fn bfv(&self) -> Result<Arc<BfvParameters>, HeError> {
        Ok(BfvParametersBuilder::new()
            .set_degree(self.degree)
            .set_plaintext_modulus((1u64 << self.plaintext_bits) + 1)
            .set_moduli_sizes(self.moduli_bits)
            .build_arc()?)
    }
}

/// The key holders: each keeps a share of the secret key; together they made the public key
/// (multiparty BFV's key generation over a common random polynomial) and together they
/// decrypt. With one holder it is a plain key authority.
pub struct KeyAuthority {
    bfv: Arc<BfvParameters>,
    secrets: Vec<SecretKey>,
    public: Arc<PublicKey>,
    rng: ChaCha20Rng,
    ciphertext_bytes: u64,
}

/// What the key holders sent: bytes of their public-key shares, or of their decryption
/// shares (one polynomial per share; the library keeps those in memory only, so their size
/// is counted as half a ciphertext's).
pub type HolderBytes = u64;

impl KeyAuthority {
    /// Keys for `params.key_holders` holders, from `entropy` (simulation: reproducible runs;
    /// a deployment draws it from the OS). Also returns the bytes of their key shares.
    ///
    /// # Errors
    /// The library failed.
    pub fn generate(params: &Params, entropy: [u8; 32]) -> Result<(Self, HolderBytes), HeError> {
        let bfv = Scheme::of(params.degree)?.bfv()?;
        let mut rng = ChaCha20Rng::from_seed(entropy);
        let crp = CommonRandomPoly::new(&bfv, &mut rng)?;
        let secrets: Vec<SecretKey> = (0..params.key_holders)
            .map(|_| SecretKey::random(&bfv, &mut rng))
            .collect();
        let shares = (secrets.iter())
            .map(|s| PublicKeyShare::new(s, crp.clone(), &mut rng))
            .collect::<Result<Vec<_>, _>>()?;
        let public: PublicKey = shares.into_iter().aggregate()?;
        let public = Arc::new(public);
        let share_bytes = public.to_bytes().len() as u64 / 2 * params.key_holders as u64;
        let mut authority = Self {
            bfv,
            secrets,
            public,
            rng,
            ciphertext_bytes: 0,
        };
        authority.ciphertext_bytes = authority.encryptor().ciphertext_bytes()?;
        Ok((authority, share_bytes))
    }

    /// What a client needs to encrypt.
    pub fn encryptor(&self) -> Encryptor {
        Encryptor {
            bfv: self.bfv.clone(),
            public: self.public.clone(),
        }
    }

    /// Bytes one ciphertext takes on the wire.
    pub fn ciphertext_bytes(&self) -> u64 {
        self.ciphertext_bytes
    }

    /// The scheme's parameters (the library adds only ciphertexts made under the same
    /// parameters object).
    pub fn parameters(&self) -> &Arc<BfvParameters> {
        &self.bfv
    }

    /// A zero ciphertext to add uploads into.
    pub fn zero(&self) -> Ciphertext {
        Ciphertext::zero(&self.bfv)
    }

    /// Decrypt summed ciphertexts: every holder's decryption share of each, combined. Returns
    /// the coefficients and the bytes exchanged with the holders (the sums down, their shares
    /// up).
    ///
    /// # Errors
    /// The library failed.
    pub fn decrypt(&mut self, sums: Vec<Ciphertext>) -> Result<(Vec<u64>, HolderBytes), HeError> {
        let mut out = Vec::with_capacity(sums.len() * self.bfv.degree());
        let mut bytes = 0u64;
        let half = self.ciphertext_bytes / 2;
        for sum in sums {
            let sum = Arc::new(sum);
            let shares = (self.secrets.iter())
                .map(|s| DecryptionShare::new(s, &sum, &mut self.rng))
                .collect::<Result<Vec<_>, _>>()?;
            // The sum goes down to each holder; each sends back one polynomial.
            bytes += (self.ciphertext_bytes + half) * shares.len() as u64;
            let plain: Plaintext = shares.into_iter().aggregate()?;
            out.extend(Vec::<u64>::try_decode(&plain, Encoding::poly())?);
        }
        Ok((out, bytes))
    }
}

/// Bytes of the public key and of one ciphertext under `params` (from a throwaway key).
///
/// # Errors
/// The library failed.
pub fn sizes(params: &Params) -> Result<(u64, u64), HeError> {
    let (authority, _) = KeyAuthority::generate(params, [0; 32])?;
    let encryptor = authority.encryptor();
    Ok((encryptor.public_key_bytes(), authority.ciphertext_bytes()))
}

/// A client's side: the public key and the parameters.
#[derive(Clone)]
pub struct Encryptor {
    bfv: Arc<BfvParameters>,
    public: Arc<PublicKey>,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("degree", &self.bfv.degree())
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// The parameters its ciphertexts are made under.
    pub fn parameters(&self) -> &Arc<BfvParameters> {
        &self.bfv
    }

    /// Encrypt `coefficients`, a degree's worth a ciphertext (the last padded with zeros).
    ///
    /// # Errors
    /// The library failed.
    pub fn encrypt(
        &self,
        coefficients: &[u64],
        entropy: [u8; 32],
    ) -> Result<Vec<Ciphertext>, HeError> {
        let mut rng = ChaCha20Rng::from_seed(entropy);
        (coefficients.chunks(self.bfv.degree()))
            .map(|chunk| {
                let plain = Plaintext::try_encode(chunk, Encoding::poly(), &self.bfv)?;
                Ok(self.public.try_encrypt(&plain, &mut rng)?)
            })
            .collect()
    }

    /// Bytes the public key takes on the wire.
    pub fn public_key_bytes(&self) -> u64 {
        self.public.to_bytes().len() as u64
    }

    /// Bytes one ciphertext takes on the wire (every fresh ciphertext of a scheme serializes
    /// to the same size): one encryption of zero, measured.
    ///
    /// # Errors
    /// The library failed.
    pub fn ciphertext_bytes(&self) -> Result<u64, HeError> {
        let zero = self.encrypt(&[0], [0; 32])?;
        Ok(zero.first().map_or(0, |c| c.to_bytes().len() as u64))
    }
}
