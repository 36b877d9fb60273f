//! `strategy.secure_aggregation`: how updates are hidden from the server.

use serde::{Deserialize, Serialize};

fn default_key_holders() -> usize {
    1
}

/// A homomorphic encryption scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum HeScheme {
    /// BFV over polynomials of `degree` coefficients.
    Bfv {
        /// n: 4096, 8192 or 16384.
        degree: usize,
    },
}

/// How updates are hidden from the server (scenario `strategy.secure_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SecureAggregation {
    /// SecAgg+ (Bell et al. 2020): pairwise masks with `neighbours` others, secrets shared
    /// `threshold`-of-`neighbours`; `ring_bits` None picks the smallest ring no sum wraps in.
    SecAggPlus {
        /// Neighbours each client masks with (≥ sampled − 1: Bonawitz et al.'s SecAgg).
        neighbours: usize,
        /// Shares that reconstruct a secret (2..=neighbours).
        threshold: usize,
        /// The ring Z/2^b (64..=128); None: 64 + ⌈log2(training examples + 1)⌉.
        ring_bits: Option<u32>,
        /// A client's mask expansions, ring elements a second, for the virtual clock; None:
        /// the value `cargo bench --bench secagg` measured (`secagg::cost`).
        #[serde(default)]
        client_elements_per_s: Option<f64>,
        /// The server's, likewise.
        #[serde(default)]
        server_elements_per_s: Option<f64>,
    },
    /// Homomorphic encryption: clients encrypt their exact terms under a BFV public key,
    /// the server adds ciphertexts, `key_holders` parties decrypt only the sum together.
    HomomorphicEncryption {
        /// The scheme and its polynomial degree: `Bfv(degree: 8192)` (4096, 8192, 16384).
        scheme: HeScheme,
        /// Parties the decryption key is split among (1..=16; all decrypt together).
        #[serde(default = "default_key_holders")]
        key_holders: usize,
        /// A client's encryption, plaintext coefficients a second, for the virtual clock;
        /// None: the value `cargo bench --bench secagg` measured (`he::cost`).
        #[serde(default)]
        client_elements_per_s: Option<f64>,
        /// The server's parsing and adding of ciphertexts, likewise.
        #[serde(default)]
        server_elements_per_s: Option<f64>,
        /// The key holders' decryption, likewise.
        #[serde(default)]
        decrypt_elements_per_s: Option<f64>,
    },
}
