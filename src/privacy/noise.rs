//! Gaussian noise for the aggregate, drawn in f64, and the clients' discrete Gaussian shares.
//!
//! `Seeded` (the default) derives the generator from the scenario seed and the round, so runs
//! are reproducible — and anyone who knows the seed can subtract the noise: fine for a
//! simulation, never for a deployment, and reports label it. `Os` seeds a ChaCha20 CSPRNG from
//! the operating system each round.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::discrete::DiscreteGaussian;
use crate::rng::derive;

/// Where the noise generator's seed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum NoiseSource {
    /// From the scenario seed and round: reproducible, not secret.
    #[default]
    Seeded,
    /// From the operating system: not reproducible.
    Os,
}

impl NoiseSource {
    /// A generator of N(0, std²) for `round`; `stream` separates independent draws of one
    /// round (0: the update sum, 1: the adaptive-clipping count).
    pub fn generator(self, seed: u64, round: usize, stream: u64, std: f64) -> GaussianNoise {
        GaussianNoise {
            rng: self.rng(seed, round, stream),
            normal: Normal::new(0.0, std.max(0.0)).expect("std >= 0 is valid"),
        }
    }

    /// A stream of `share` draws for `round` (the same seeding as [`NoiseSource::generator`]).
    pub fn discrete(
        self,
        seed: u64,
        round: usize,
        stream: u64,
        share: DiscreteGaussian,
    ) -> DiscreteNoise {
        DiscreteNoise {
            rng: self.rng(seed, round, stream),
            share,
        }
    }

    fn rng(self, seed: u64, round: usize, stream: u64) -> ChaCha20Rng {
        match self {
            NoiseSource::Seeded => ChaCha20Rng::seed_from_u64(derive(
                seed,
                &[crate::rng::purpose::NOISE, round as u64, stream],
            )),
            NoiseSource::Os => ChaCha20Rng::from_os_rng(),
        }
    }

    /// Label for reports.
    pub fn label(self) -> &'static str {
        match self {
            NoiseSource::Seeded => "seeded from the scenario (reproducible, not secret)",
            NoiseSource::Os => "seeded from the operating system",
        }
    }
}

/// A stream of Gaussian draws.
pub struct GaussianNoise {
    rng: ChaCha20Rng,
    normal: Normal<f64>,
}

impl GaussianNoise {
    /// One draw.
    pub fn sample(&mut self) -> f64 {
        self.normal.sample(&mut self.rng)
    }
}

/// A stream of discrete Gaussian draws (one client's shares of distributed noise).
pub struct DiscreteNoise {
    rng: ChaCha20Rng,
    share: DiscreteGaussian,
}

impl DiscreteNoise {
    /// One draw, in fixed-point steps.
    pub fn sample(&mut self) -> i64 {
        self.share.sample(&mut self.rng)
    }
}
