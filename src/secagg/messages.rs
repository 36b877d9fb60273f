//! What travels in a SecAgg+ round, phase by phase. The server routes; clients talk to each
//! other only through it, encrypted where it must not read. Each message knows its size on
//! the wire, for the clock and the byte counts.

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;

/// Phase 0, client → server: the client's two public keys (one to encrypt shares, one to
/// agree masks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// The sender.
    pub client: ClientId,
    /// Public key for share encryption.
    pub cipher_pk: [u8; 32],
    /// Public key for pairwise masks.
    pub mask_pk: [u8; 32],
}

/// Phase 0, server → client: its neighbours' keys (those who advertised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    /// Each neighbour's keys.
    pub neighbours: Vec<AdvertiseKeys>,
}

/// One share pair in transit: encrypted for its recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// Who made it.
    pub from: ClientId,
    /// Who may open it.
    pub to: ClientId,
    /// ChaCha20-Poly1305 of the shares of `from`'s self-mask seed and mask key.
    pub ciphertext: Vec<u8>,
}

/// Phase 1, client → server: its shares, one encrypted pair per neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// The sender.
    pub client: ClientId,
    /// One per neighbour.
    pub shares: Vec<EncryptedShares>,
}

/// Phase 1, server → client: the shares addressed to it (from the neighbours who sent
/// theirs: the ones it masks with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInbox {
    /// The shares, one per neighbour that sent them.
    pub shares: Vec<EncryptedShares>,
}

/// Phase 2, client → server: the masked vector, ring elements as little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The sender.
    pub client: ClientId,
    /// Its masked vector.
    #[serde(with = "serde_bytes")]
    pub masked: Vec<u8>,
}

/// Phase 3, server → client: who sent a masked vector and who did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Sent their masked vector: reveal the shares of their self-mask seeds.
    pub survivors: Vec<ClientId>,
    /// Sent shares but no masked vector: reveal the shares of their mask keys.
    pub dropped: Vec<ClientId>,
}

/// Phase 3, client → server: the shares it was asked for, in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// The sender.
    pub client: ClientId,
    /// (survivor, its self-mask seed share).
    pub seed_shares: Vec<(ClientId, Vec<u8>)>,
    /// (dropped client, its mask key share).
    pub key_shares: Vec<(ClientId, Vec<u8>)>,
}

/// Bytes of `message` on the wire (MessagePack).
pub fn wire_bytes<T: Serialize>(message: &T) -> u64 {
    rmp_serde::to_vec(message).map_or(0, |b| b.len() as u64)
}
