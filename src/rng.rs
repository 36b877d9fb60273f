//! Seed derivation: every random draw comes from an RNG seeded by `(scenario seed, purpose,
//! round, client)`, so results never depend on slot count or thread timing.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and a path of integers.
pub fn derive(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |acc, &p| mix(acc ^ mix(p)))
}

/// An RNG for `(seed, parts…)`.
pub fn rng_for(seed: u64, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, parts))
}

/// Purposes, so two uses of the same (round, client) never share a stream.
pub mod purpose {
    /// Client sampling.
    pub const SAMPLE: u64 = 1;
    /// Local training (shuffling, dropout).
    pub const TRAIN: u64 = 2;
    /// Base model initialisation.
    pub const MODEL: u64 = 3;
    /// Initial adapter.
    pub const ADAPTER: u64 = 4;
    /// DP noise on the aggregate.
    pub const NOISE: u64 = 5;
    /// Device and network profiles.
    pub const PROFILE: u64 = 6;
    /// Per-round availability.
    pub const AVAILABILITY: u64 = 7;
    /// Crashes during fit.
    pub const CRASH: u64 = 8;
    /// Privacy attacks (member sampling, canary candidates, extraction samples).
    pub const ATTACK: u64 = 9;
    /// Byzantine clients (who attacks, their random updates).
    pub const BYZANTINE: u64 = 10;
    /// Secure aggregation (the neighbour graph, the clients' keys and masks in simulation).
    pub const SECAGG: u64 = 11;
    /// Edge aggregators (the seeded assignment, edge availability and crashes).
    pub const EDGE: u64 = 12;
    /// Update compression (stochastic rounding).
    pub const COMPRESS: u64 = 13;
}
