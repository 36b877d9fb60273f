//! Secure aggregation: SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017 is the complete-graph
//! case). The server learns the sum of the surviving clients' updates and nothing about any
//! one of them: each client adds to its encoded update a self mask and one pairwise mask per
//! neighbour, which cancel in the sum; the masks of clients that drop out are removed with
//! Shamir shares their neighbours hold.
//!
//! - [`ring`]: FedAvg's exact fixed-point terms in Z/2ᵇ, sized so no sum wraps: the unmasked
//!   mean is FedAvg's, bit for bit.
//! - [`graph`]: each client's neighbours (a random k-regular ring lattice, seeded per round).
//! - [`crypto`]: X25519 key agreement, the ChaCha20 mask generator, ChaCha20-Poly1305 for
//!   shares in transit, Shamir t-of-k sharing over GF(2⁸) (vsss-rs).
//! - [`client`] and [`server`]: the four phases — keys, shares, masked inputs, unmasking — as
//!   state machines that exchange only the [`messages`] types, so each side sees what it
//!   would see on a network.
//!
//! Trust model: the server is honest-but-curious (it follows the protocol and tries to learn
//! from what it sees); keys are not signed, so a server that lies about keys is out of scope,
//! as in the semi-honest SecAgg+ setting.

pub mod client;
pub mod cost;
pub mod crypto;
pub mod graph;
pub mod messages;
pub mod ring;
pub mod server;

use crate::ids::ClientId;

pub use client::SecAggClient;
pub use ring::Ring;
pub use server::SecAggServer;

/// Errors of secure aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The protocol's settings cannot work.
    #[error("secure aggregation: {0}")]
    Params(String),
    /// An update cannot be encoded (FedAvg would reject it too).
    #[error("client {client}: {source}")]
    Encode {
        /// The client.
        client: ClientId,
        /// Which value.
        source: crate::strategy::FoldError,
    },
    /// Fewer than `threshold` clients are left to finish the round.
    #[error(
        "secagg_threshold: {survivors} clients left at the {phase} phase, fewer than the \
         threshold {threshold}"
    )]
    Threshold {
        /// Where the round was.
        phase: &'static str,
        /// Clients left.
        survivors: usize,
        /// `threshold`.
        threshold: usize,
    },
    /// A message that does not belong to this round, sender or recipient, or that fails
    /// authentication.
    #[error("client {client}: rejected a message: {why}")]
    Rejected {
        /// Who rejected it.
        client: ClientId,
        /// Why.
        why: String,
    },
    /// An honest client refuses an unmasking request that would reveal a peer's update.
    #[error("client {client}: refused to unmask: {why}")]
    Refused {
        /// The client.
        client: ClientId,
        /// Why.
        why: String,
    },
    /// A secret could not be reconstructed from the shares that came back.
    #[error("cannot reconstruct client {client}'s {what}: {why}")]
    Reconstruct {
        /// Whose secret.
        client: ClientId,
        /// Which secret.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A message arrived in the wrong phase.
    #[error("{who}: {message} arrived in the {phase} phase")]
    Phase {
        /// Who got it.
        who: String,
        /// Which message.
        message: &'static str,
        /// The phase it was in.
        phase: &'static str,
    },
}

/// SecAgg+'s settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Neighbours each client masks with and shares its secrets among (k; at least the
    /// sampled count − 1 is the complete graph, Bonawitz et al.).
    pub neighbours: usize,
    /// Shares needed to reconstruct a secret (t ≤ neighbours): a client's secrets stay hidden
    /// from any t − 1 colluding neighbours, and a round survives while every client keeps at
    /// least t neighbours.
    pub threshold: usize,
    /// The ring Z/2ᵇ the masked vectors live in.
    pub ring: Ring,
    /// The throughputs its compute is priced with on the virtual clock.
    pub compute: cost::Compute,
}

impl Params {
    /// The settings for a round of `clients`, checked.
    ///
    /// # Errors
    /// A threshold of 0 or above the neighbours, fewer than 2 clients, or more than 255
    /// neighbours (shares carry a one-byte index).
    pub fn check(&self, clients: usize) -> Result<(), SecAggError> {
        let k = self.neighbours.min(clients.saturating_sub(1));
        if clients < 2 {
            return Err(SecAggError::Params(format!(
                "{clients} clients: secure aggregation needs at least 2"
            )));
        }
        if k > 255 {
            return Err(SecAggError::Params(format!(
                "{k} neighbours: at most 255 (a share's index is one byte)"
            )));
        }
        if self.threshold < 2 || self.threshold > k {
            return Err(SecAggError::Params(format!(
                "threshold {} with {k} neighbours: it must be 2..={k}",
                self.threshold
            )));
        }
        Ok(())
    }
}
