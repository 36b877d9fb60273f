//! Client-level DP-FedAvg (McMahan et al. 2018) with Flower's semantics: each update is
//! clipped to L2 ≤ C (on the client, or on the server), the server sums the m clipped updates
//! with uniform weights, adds N(0, (z·C)²) per coordinate in f64 and divides by m — i.e.
//! σ = z·C/m on the average (the course's z = 0.02, C = 0.5, m = 4 gives σ = 0.0025).
//!
//! Uniform weights matter: Flower's DP wrappers keep FedAvg's example weighting, under which
//! one client can move the average by more than C/m and the noise no longer matches the
//! sensitivity. fedsim averages uniformly whenever DP is on, so the reported ε holds.

use serde::{Deserialize, Serialize};

use super::discrete::DistributedNoise;
use super::{FracSeries, NoiseSource, SamplingScheme};

/// Where clipping happens (scenario `dp.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Mechanism {
    /// Clients clip before upload (Flower's `DifferentialPrivacyClientSideFixedClipping`).
    ClientSideFixed {
        /// C.
        clip_norm: f64,
        /// z: noise std on the sum is z·C.
        noise_multiplier: f64,
    },
    /// The server clips what it receives (`DifferentialPrivacyServerSideFixedClipping`).
    ServerSideFixed {
        /// C.
        clip_norm: f64,
        /// z.
        noise_multiplier: f64,
    },
    /// Adaptive clipping (Andrew et al. 2021): clients clip with the clip in force and report
    /// whether their update was within it; the server adds noise to that count too and moves
    /// the clip geometrically towards the `target_quantile` of update norms. The noise is
    /// split so the pair (update sum, count) has overall noise multiplier z:
    /// z_update = (z⁻² − (2·count_stddev)⁻²)^(−1/2).
    Adaptive {
        /// C₀.
        initial_clip: f64,
        /// γ: fraction of updates that should fall under the clip.
        target_quantile: f64,
        /// η: C ← C·exp(−η(b̃ − γ)) with b̃ the noised unclipped fraction.
        clip_lr: f64,
        /// z of the combined release (what the accountant uses).
        noise_multiplier: f64,
        /// σ_b: std of the noise on the count of unclipped updates (must exceed z/2).
        count_stddev: f64,
    },
}

impl Mechanism {
    /// The clip in force in round 1 (C for fixed clipping).
    pub fn initial_clip(&self) -> f64 {
        match *self {
            Mechanism::ClientSideFixed { clip_norm, .. }
            | Mechanism::ServerSideFixed { clip_norm, .. } => clip_norm,
            Mechanism::Adaptive { initial_clip, .. } => initial_clip,
        }
    }

    /// z of the whole release per round: what the accountant uses.
    pub fn noise_multiplier(&self) -> f64 {
        match *self {
            Mechanism::ClientSideFixed {
                noise_multiplier, ..
            }
            | Mechanism::ServerSideFixed {
                noise_multiplier, ..
            }
            | Mechanism::Adaptive {
                noise_multiplier, ..
            } => noise_multiplier,
        }
    }

    /// Noise multiplier of the update sum: z, or for adaptive clipping the share left after
    /// the count's noise, (z⁻² − (2σ_b)⁻²)^(−1/2).
    pub fn value_noise_multiplier(&self) -> f64 {
        match *self {
            Mechanism::Adaptive {
                noise_multiplier: z,
                count_stddev,
                ..
            } => (z.powi(-2) - (2.0 * count_stddev).powi(-2)).powf(-0.5),
            _ => self.noise_multiplier(),
        }
    }

    /// Whether clients clip (else the server does).
    pub fn clips_on_client(&self) -> bool {
        !matches!(self, Mechanism::ServerSideFixed { .. })
    }

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::ClientSideFixed { .. } => "client-side fixed clipping",
            Mechanism::ServerSideFixed { .. } => "server-side fixed clipping",
            Mechanism::Adaptive { .. } => "adaptive clipping (Andrew et al. 2021)",
        }
    }
}

/// How clients are sampled when DP is on (scenario `dp.sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DpSampling {
    /// Each client independently with probability `fraction_fit`; the average divides by the
    /// expected count q·N (McMahan et al.'s fixed denominator); add/remove-one neighbours.
    #[default]
    Poisson,
    /// Exactly max(⌊fraction·N⌋, min_fit) clients without replacement; replace-one neighbours,
    /// under which the sum's sensitivity is 2C, so the accountant sees z/2.
    Fixed,
}

/// Who adds the Gaussian noise (scenario `dp.noise_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum NoiseBy {
    /// The server, to the sum of the clipped updates: it sees that sum un-noised (central DP;
    /// with secure aggregation it still never sees one update).
    #[default]
    Server,
    /// Each client, to its clipped update before it leaves (distributed DP, Kairouz et al.
    /// 2021): N(0, (z·C)² / `min_survivors`) per value, so the sum of any `min_survivors` or
    /// more updates carries at least the configured z·C. A round with fewer survivors
    /// releases nothing. Under secure aggregation the server never sees an un-noised sum.
    Clients {
        /// The fewest updates a round may release: the noise is calibrated for them.
        min_survivors: usize,
        /// The shares' distribution (default `Gaussian`).
        #[serde(default)]
        distribution: NoiseDistribution,
    },
}

/// What each client's share of distributed noise is (scenario
/// `dp.noise_by.Clients.distribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum NoiseDistribution {
    /// N(0, (z·C)²/m) drawn in f64 and added to each value of the f32 update before upload
    /// (and before secure aggregation's fixed-point encoding).
    #[default]
    Gaussian,
    /// The distributed discrete Gaussian (Kairouz et al. 2021): N_Z(0, σ²) in fixed-point
    /// steps of 2⁻⁴⁰ added to each encoded term inside secure aggregation's ring, σ =
    /// z·C·(1 + 2⁻²³)·2⁴⁰/√m; accounted by the DDG's own RDP bound. Needs secure aggregation.
    DiscreteGaussian,
}

impl NoiseBy {
    /// The share of the sum's noise std each client adds (None: the server adds it).
    pub fn client_stddev(self, sum_stddev: f64) -> Option<f64> {
        match self {
            NoiseBy::Server => None,
            NoiseBy::Clients { min_survivors, .. } => {
                Some(sum_stddev / (min_survivors.max(1) as f64).sqrt())
            }
        }
    }

    /// The fewest updates a round may release (1 when the server adds the noise).
    pub fn min_survivors(self) -> usize {
        match self {
            NoiseBy::Server => 1,
            NoiseBy::Clients { min_survivors, .. } => min_survivors,
        }
    }
}

/// A validated DP configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DpPlan {
    /// Clipping and noise.
    pub mechanism: Mechanism,
    /// Target δ.
    pub delta: f64,
    /// Stop before a round that would push ε above this.
    pub max_epsilon: Option<f64>,
    /// Sampling scheme.
    pub sampling: DpSampling,
    /// Noise generator seeding.
    pub noise: NoiseSource,
    /// Who adds the noise.
    pub noise_by: NoiseBy,
    /// Fractional-order series.
    pub series: FracSeries,
    /// Also account with PLD (Poisson sampling only).
    pub pld: bool,
    /// Gaussian mechanisms a sampled client goes through per round, each with sensitivity C
    /// and noise z·C: 1, or E under a hierarchy whose edges noise each of their E edge
    /// rounds. Their composition is one Gaussian mechanism with noise multiplier z/√E, which
    /// is what the accountant charges per round.
    pub compositions: usize,
}

impl DpPlan {
    /// The accountant's sampling scheme.
    pub fn scheme(&self) -> SamplingScheme {
        match self.sampling {
            DpSampling::Poisson => SamplingScheme::Poisson,
            DpSampling::Fixed => SamplingScheme::WithoutReplacement,
        }
    }

    /// The distributed discrete Gaussian the clients add (`dp.noise_by: Clients(distribution:
    /// DiscreteGaussian)`), or None. Validation has checked it can be built.
    pub fn distributed_noise(&self) -> Option<DistributedNoise> {
        match self.noise_by {
            NoiseBy::Clients {
                min_survivors,
                distribution: NoiseDistribution::DiscreteGaussian,
            } => DistributedNoise::new(
                self.mechanism.noise_multiplier(),
                self.mechanism.initial_clip(),
                min_survivors,
            )
            .ok(),
            _ => None,
        }
    }

    /// Noise multiplier relative to the sensitivity under the accounted neighbouring relation.
    pub fn accounted_noise_multiplier(&self) -> f64 {
        let z = self.mechanism.noise_multiplier() / (self.compositions.max(1) as f64).sqrt();
        match self.sampling {
            DpSampling::Poisson => z,
            DpSampling::Fixed => z / 2.0,
        }
    }

    /// What the accountant assumes, in words (for reports).
    pub fn assumption(&self) -> String {
        if let Some(n) = self.distributed_noise() {
            return n.assumption(self.mechanism.noise_multiplier());
        }
        let by = match self.noise_by {
            NoiseBy::Server => String::new(),
            NoiseBy::Clients { min_survivors, .. } => format!(
                "; the noise added by the clients, each N(0, (z·C)²/{min_survivors}), so a round \
                 of at least {min_survivors} updates carries z·C (rounds with fewer release nothing)"
            ),
        };
        let sampling = match self.sampling {
            DpSampling::Poisson => format!(
                "RDP accountant, Poisson sampling of clients with q = fraction_fit, add-or-remove-one-client \
                 neighbours, noise multiplier {} (sum sensitivity C); fractional orders by {}",
                self.mechanism.noise_multiplier(),
                series_label(self.series)
            ),
            DpSampling::Fixed => format!(
                "RDP accountant, fixed-size sampling without replacement with q = sampled/clients, \
                 replace-one-client neighbours (sum sensitivity 2C, so the accounted noise multiplier \
                 is z/2 = {}); fractional orders by {}",
                self.accounted_noise_multiplier(),
                series_label(self.series)
            ),
        };
        let edges = if self.compositions > 1 {
            format!(
                "; each round composes {} noised edge rounds (sensitivity C, noise z·C each): one \
                 Gaussian mechanism with noise multiplier z/√{}",
                self.compositions, self.compositions
            )
        } else {
            String::new()
        };
        sampling + &by + &edges
    }
}

fn series_label(s: FracSeries) -> &'static str {
    match s {
        FracSeries::AbsoluteBound => "dp_accounting's absolute-value bound",
        FracSeries::Exact => "the exact signed series",
    }
}
