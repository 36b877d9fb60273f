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
        /// The ring Z/2^b (1..=128); None: the smallest no sum of the training examples'
        /// weights wraps in — 64 + ⌈log2(examples + 1)⌉ bits for any value, fewer under a
        /// value bound.
        ring_bits: Option<u32>,
        /// A bound B on every value of an update, |x| ≤ B: the ring needs only
        /// 1 + ⌈log2(⌊B·2^40⌋·examples + 1)⌉ bits (52 for B = 1 and 1,080 examples: 7 bytes a
        /// value uploaded instead of 10); a client with a value past it uploads nothing that
        /// round (a failed upload). None: the DP clip when `dp` clips on clients and the
        /// server adds the noise, else no bound.
        #[serde(default)]
        value_bound: Option<f64>,
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
