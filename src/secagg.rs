//! Secure aggregation: SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017 is the complete-graph
//! case). The server learns the sum of the surviving clients' updates and nothing about any
//! one of them: each client adds to its encoded update a self mask and one pairwise mask per
//! neighbour, which cancel in the sum; the masks of clients that drop out are removed with
//! Shamir shares their neighbours hold.
//!
//! - [`ring`]: FedAvg's exact fixed-point terms in Z/2ᵇ, sized so no sum wraps: the unmasked
//!   mean is FedAvg's, bit for bit.
//! - [`graph`]: each client's neighbours (a random k-regular ring lattice, seeded per round).
//! - [`crypto`]: X25519 key agreement, ChaCha20-Poly1305 for shares in transit, Shamir t-of-k
//!   sharing over GF(2⁸) (vsss-rs).
//! - [`lanes`]: ring elements as a low and a high 64-bit lane — the wire layout of a masked
//!   vector and the server's running sum, added with vectorised carries.
//! - [`mask`]: the masks — AES-256-CTR streams drawn in that layout, many added in one pass
//!   over a vector; [`vaes`] draws them with AVX-512's VAES where the CPU has it.
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
pub mod lanes;
pub mod mask;
pub mod messages;
pub mod ring;
pub mod server;
mod vaes;

use crate::ids::ClientId;

pub use client::SecAggClient;
pub use ring::Ring;
pub use server::SecAggServer;

/// Errors of secure aggregation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The protocol's settings cannot work.
    #[error("secure aggregation: {0}")]
    Params(ParamsError),
    /// An update cannot be encoded (FedAvg would reject it too).
    #[error("client {client}: {source}")]
    Encode {
        /// The client.
        client: ClientId,
        /// Which value.
        source: crate::strategy::FoldError,
    },
    /// A value past the ring's declared bound: the client refuses to upload rather than let
    /// the sum wrap.
    #[error(
        "client {client}: value {value} at index {index} is past value_bound ±{}; \
         the update is not uploaded (raise strategy.secure_aggregation.SecAggPlus.value_bound, \
         or clip updates with dp)",
        crate::fmt::compact(*bound)
    )]
    PastBound {
        /// The client.
        client: ClientId,
        /// The value's index in the update.
        index: usize,
        /// The value.
        value: f32,
        /// The declared bound B.
        bound: f64,
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
        /// Who rejected it (the sender, when the server did).
        client: ClientId,
        /// Why.
        why: Rejection,
    },
    /// An honest client refuses an unmasking request that would reveal a peer's update.
    #[error("client {client}: refused to unmask: {why}")]
    Refused {
        /// The client.
        client: ClientId,
        /// Why.
        why: Refusal,
    },
    /// A secret could not be reconstructed from the shares that came back.
    #[error("cannot reconstruct client {client}'s {what}: {why}")]
    Reconstruct {
        /// Whose secret.
        client: ClientId,
        /// Which secret.
        what: &'static str,
        /// Why.
        why: ReconstructFault,
    },
    /// A message arrived in the wrong phase.
    #[error("{who}: {message} arrived in the {phase} phase")]
    Phase {
        /// Who got it.
        who: Party,
        /// Which message.
        message: &'static str,
        /// The phase it was in.
        phase: &'static str,
    },
}

/// Settings SecAgg+ cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// A round of fewer than 2 clients.
    #[error("{clients} clients: secure aggregation needs at least 2")]
    TooFewClients {
        /// Clients in the round.
        clients: usize,
    },
    /// More neighbours than a share's one-byte index can name.
    #[error("{neighbours} neighbours: at most 255 (a share's index is one byte)")]
    TooManyNeighbours {
        /// Neighbours each client would have.
        neighbours: usize,
    },
    /// A threshold outside 2..=neighbours.
    #[error("threshold {threshold} with {neighbours} neighbours: it must be 2..={neighbours}")]
    Threshold {
        /// `threshold`.
        threshold: usize,
        /// Neighbours each client has.
        neighbours: usize,
    },
    /// A ring size outside 1..=128 bits.
    #[error("ring_bits {bits}: it must be 1..=128")]
    RingBits {
        /// `ring_bits`.
        bits: u32,
    },
    /// A value bound that bounds nothing FedAvg accepts.
    #[error(
        "value_bound {}: it must be finite, above 0 and below 2^23 (8388608)",
        crate::fmt::compact(*bound)
    )]
    ValueBound {
        /// `value_bound`.
        bound: f64,
    },
    /// A ring in which the round's sums could wrap.
    #[error(
        "ring_bits {bits} can wrap: weights summing to {weight} with {} need {need} bits; set \
         ring_bits ≥ {need}{}",
        match bound {
            Some(b) => format!("values within ±{}", crate::fmt::compact(*b)),
            None => "any value (|trunc(x·2^40)| < 2^63)".to_string(),
        },
        match bound {
            Some(_) => ", or lower value_bound",
            None => ", or declare a value_bound",
        }
    )]
    RingWraps {
        /// `ring_bits`.
        bits: u32,
        /// The weights' sum.
        weight: u64,
        /// The bits it needs.
        need: u32,
        /// The declared bound on values (None: any value FedAvg accepts).
        bound: Option<f64>,
    },
}

/// Why a party rejected a protocol message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A key directory that lists someone who is not the client's neighbour.
    #[error("keys of {0}, not a neighbour")]
    NotNeighbour(ClientId),
    /// Shares addressed to another client.
    #[error("shares addressed to {0}")]
    Misaddressed(ClientId),
    /// Shares from a client outside the directory.
    #[error("shares from {0}, not in its directory")]
    UnknownSender(ClientId),
    /// Shares whose authentication fails.
    #[error(
        "shares from {0} fail authentication (tampered, or replayed from another round or pair)"
    )]
    Unauthentic(ClientId),
    /// A second share pair from one sender.
    #[error("a second share pair from {0}")]
    DuplicateShares(ClientId),
    /// Keys from outside the round, or sent twice (the server).
    #[error("the server rejected its message: keys from outside the round, or twice")]
    Keys,
    /// Shares from a client without keys, sent twice, or astray (the server).
    #[error(
        "the server rejected its message: shares from a client without keys, twice, or astray"
    )]
    Shares,
    /// A masked vector without shares, or sent twice (the server).
    #[error("the server rejected its message: a masked vector without shares, or twice")]
    Masked,
    /// A masked vector of the wrong size (the server).
    #[error("the server rejected its message: a masked vector of the wrong size")]
    MaskedSize,
    /// A masked vector with an element outside the ring (the server, when it sums it).
    #[error("the server rejected its message: a masked vector with an element outside the ring")]
    MaskedRange,
    /// An unmasking response from a non-survivor, or sent twice (the server).
    #[error(
        "the server rejected its message: an unmasking response from a non-survivor, or twice"
    )]
    Unmasking,
}

/// Why an honest client refuses an unmasking request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A client on both lists: revealing both its shares would unmask its update.
    #[error(
        "client {0} is listed both as a survivor and as dropped: revealing both its shares \
         would unmask its update"
    )]
    BothLists(ClientId),
    /// The request leaves out this client, which sent its masked input.
    #[error("it sent its masked input but is not listed")]
    NotListed,
}

/// Why a secret could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReconstructFault {
    /// The shares do not combine into a secret.
    #[error("the shares do not combine")]
    NoCombine,
    /// A reconstructed mask key that is not the one the client advertised.
    #[error("it is not the key the client advertised")]
    NotAdvertised,
}

/// Who got an out-of-phase message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// This client.
    Client(ClientId),
    /// A client actor with no secure round under way.
    AnyClient,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Client(id) => write!(f, "client {id}"),
            Party::AnyClient => f.write_str("client"),
        }
    }
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
            return Err(SecAggError::Params(ParamsError::TooFewClients { clients }));
        }
        if k > 255 {
            return Err(SecAggError::Params(ParamsError::TooManyNeighbours {
                neighbours: k,
            }));
        }
        if self.threshold < 2 || self.threshold > k {
            return Err(SecAggError::Params(ParamsError::Threshold {
                threshold: self.threshold,
                neighbours: k,
            }));
        }
        Ok(())
    }
}
