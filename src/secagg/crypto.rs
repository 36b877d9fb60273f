//! The primitives, each from a well-kept crate: X25519 key agreement (x25519-dalek), key
//! derivation by SHA-256 with the protocol's context, ChaCha20-Poly1305 for shares in transit
//! (chacha20poly1305), and Shamir t-of-n sharing over GF(2⁸) byte by byte (vsss-rs). The
//! masks' generator is in [`super::mask`].

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::ids::ClientId;

/// A 32-byte secret (a key, a seed).
pub type Secret = [u8; 32];

/// An X25519 key pair.
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    /// The public key, sent in the clear.
    pub public: [u8; 32],
}

impl KeyPair {
    /// The key pair of secret `secret` (32 random bytes).
    pub fn from_secret(secret: Secret) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The secret's bytes (to share it).
    pub fn secret_bytes(&self) -> Secret {
        self.secret.to_bytes()
    }

    /// The X25519 shared secret with `their` public key.
    pub fn agree(&self, their: &[u8; 32]) -> Secret {
        self.secret
            .diffie_hellman(&PublicKey::from(*their))
            .to_bytes()
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(public {:02x?}…)", &self.public[..4])
    }
}

/// A key for `purpose` between `a` and `b` in round `round` (symmetric in a, b), derived from
/// their shared secret: SHA-256 over a context string, the round, both ids and the secret.
pub fn derive(purpose: &str, round: u64, a: ClientId, b: ClientId, shared: &Secret) -> Secret {
    let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
    let mut h = Sha256::new();
    h.update(b"fedsim secagg+ v1\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(round.to_le_bytes());
    h.update(lo.to_le_bytes());
    h.update(hi.to_le_bytes());
    h.update(shared);
    h.finalize().into()
}

/// Encrypt and authenticate `plaintext` under `key`, bound to `context` (who, to whom,
/// which round): a nonce of zeros is safe because each key encrypts one message.
pub fn seal(key: &Secret, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message below 256 GiB")
}

/// The plaintext of `ciphertext` under `key` and `context` (None: tampered, replayed from
/// another context, or under another key).
pub fn open(key: &Secret, context: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            &[0u8; 12].into(),
            Payload {
                msg: ciphertext,
                aad: context,
            },
        )
        .ok()
}

/// `secret` split into `n` Shamir shares, any `threshold` of which reconstruct it (each share
/// is its one-byte index 1..=n, then 32 bytes). `seed` draws the polynomials.
///
/// # Panics
/// Never for 2 ≤ threshold ≤ n ≤ 255 (the caller's parameters are checked).
pub fn split(secret: &Secret, threshold: usize, n: usize, seed: Secret) -> Vec<Vec<u8>> {
    let rng =
        <rand_chacha03::ChaCha20Rng as rand_chacha03::rand_core::SeedableRng>::from_seed(seed);
    vsss_rs::Gf256::split_array(threshold, n, secret, rng)
        .expect("shares of a checked threshold and count")
}

/// The secret of `shares` (None when they are malformed or disagree in length).
pub fn combine(shares: &[Vec<u8>]) -> Option<Secret> {
    let bytes = vsss_rs::Gf256::combine_array(shares).ok()?;
    bytes.try_into().ok()
}
