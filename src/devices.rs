//! Device and network profiles of the clients: how fast each one trains (FLOP/s) and how fast
//! it talks to the server (Mbit/s each way, latency). A profile is fixed, drawn per client from
//! distributions (FedScale draws device speed lognormally), assigned by tiers with proportions
//! (20 % phones, 70 % laptops, …), or read from a CSV trace that also gives availability windows.
//!
//! Every draw comes from an RNG seeded by (scenario seed, client), so a client's profile never
//! depends on anything else; a client's state stays a few numbers.

pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use crate::ids::ClientId;
use crate::rng::{purpose, rng_for};

pub use trace::{read_trace, TraceError};

/// How fast one client computes and communicates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Sustained training throughput, FLOP/s.
    pub flops: f64,
    /// Uplink bandwidth, Mbit/s (10⁶ bits per second).
    pub up_mbps: f64,
    /// Downlink bandwidth, Mbit/s.
    pub down_mbps: f64,
    /// Latency added to each transfer, seconds.
    pub latency_s: f64,
}

impl DeviceProfile {
    /// A mid-range laptop on home broadband: 100 GFLOP/s sustained, 20 Mbit/s up, 50 down,
    /// 30 ms.
    pub const LAPTOP: DeviceProfile = DeviceProfile {
        flops: 1e11,
        up_mbps: 20.0,
        down_mbps: 50.0,
        latency_s: 0.03,
    };
}

/// The closed range one profile quantity is held to, whatever its source: `Fixed` and `Tiers`
/// values and `Trace` rows are checked against it, `Drawn` parameters too and each draw is
/// clamped into it — so every simulated time is finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Bounds {
    /// FLOP/s: from a microcontroller's 1 kFLOP/s to an exaFLOP/s.
    pub const FLOPS: Bounds = Bounds {
        min: 1e3,
        max: 1e18,
    };
    /// Mbit/s: from 1 kbit/s to 1 Tbit/s.
    pub const MBPS: Bounds = Bounds {
        min: 1e-3,
        max: 1e6,
    };
    /// Seconds of latency per transfer: up to an hour.
    pub const LATENCY_S: Bounds = Bounds {
        min: 0.0,
        max: 3600.0,
    };

    /// Whether `v` lies in the range (NaN does not).
    pub fn contains(self, v: f64) -> bool {
        (self.min..=self.max).contains(&v)
    }

    /// `v` moved into the range.
    pub fn clamp(self, v: f64) -> f64 {
        v.clamp(self.min, self.max)
    }
}

/// A distribution of one profile quantity (always drawn positive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Dist {
    /// Always this value.
    Fixed(f64),
    /// Uniform on [low, high].
    Uniform {
        /// Lower end.
        low: f64,
        /// Upper end.
        high: f64,
    },
    /// LogNormal with this median and σ of the log (heavy right tail for σ ≳ 1).
    LogNormal {
        /// exp(μ).
        median: f64,
        /// σ of ln X.
        sigma: f64,
    },
    /// Normal(mean, std) truncated to positive values (redrawn).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

impl Dist {
    /// One draw.
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        match *self {
            Dist::Fixed(v) => v,
            Dist::Uniform { low, high } => low + (high - low) * rng.random::<f64>(),
            Dist::LogNormal { median, sigma } => LogNormal::new(median.ln(), sigma)
                .expect("validated: median > 0, sigma >= 0")
                .sample(rng),
            Dist::Normal { mean, std } => {
                let n = Normal::new(mean, std).expect("validated: std >= 0");
                (0..1000)
                    .map(|_| n.sample(rng))
                    .find(|&v| v > 0.0)
                    .unwrap_or(mean.abs().max(f64::MIN_POSITIVE))
            }
        }
    }
}

/// One tier of devices and its share of the clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Label (reports).
    pub name: String,
    /// Share of clients in this tier; the shares sum to 1.
    pub share: f64,
    /// The tier's profile.
    pub profile: DeviceProfile,
}

/// How clients get their profiles (scenario field `system.profiles`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Profiles {
    /// Every client the same.
    Fixed(DeviceProfile),
    /// Each quantity drawn per client.
    Drawn {
        /// FLOP/s.
        flops: Dist,
        /// Mbit/s up.
        up_mbps: Dist,
        /// Mbit/s down.
        down_mbps: Dist,
        /// Seconds per transfer.
        latency_s: Dist,
    },
    /// Each client falls in a tier with the tier's probability.
    Tiers(Vec<Tier>),
    /// A CSV file: `client,flops,up_mbps,down_mbps,latency_s,windows` (see [`trace`]).
    Trace {
        /// The file (relative to the working directory).
        path: PathBuf,
    },
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::Fixed(DeviceProfile::LAPTOP)
    }
}

/// Availability windows of one client, virtual seconds `[start, end)`; empty: always.
pub type Windows = Arc<[(f64, f64)]>;

/// Every client's profile and availability windows.
#[derive(Debug, Clone)]
pub struct Fleet {
    profiles: Vec<DeviceProfile>,
    windows: Option<Vec<Windows>>,
    tiers: Option<Vec<u16>>,
    /// Tiers the profiles name (0 without tiers).
    tier_count: usize,
    /// Each client's region (a trace's `region` column).
    regions: Option<Vec<u16>>,
}

impl Fleet {
    /// Assign profiles to `clients` clients.
    ///
    /// # Errors
    /// A trace file that cannot be read or does not list every client once.
    pub fn assign(p: &Profiles, clients: usize, seed: u64) -> Result<Self, TraceError> {
        let draw = |c: ClientId| rng_for(seed, &[purpose::PROFILE, c as u64]);
        Ok(match p {
            Profiles::Fixed(d) => Fleet {
                profiles: vec![*d; clients],
                windows: None,
                tiers: None,
                tier_count: 0,
                regions: None,
            },
            Profiles::Drawn {
                flops,
                up_mbps,
                down_mbps,
                latency_s,
            } => Fleet {
                profiles: (0..clients)
                    .map(|c| {
                        let mut rng = draw(c);
                        DeviceProfile {
                            flops: Bounds::FLOPS.clamp(flops.sample(&mut rng)),
                            up_mbps: Bounds::MBPS.clamp(up_mbps.sample(&mut rng)),
                            down_mbps: Bounds::MBPS.clamp(down_mbps.sample(&mut rng)),
                            latency_s: Bounds::LATENCY_S.clamp(latency_s.sample(&mut rng)),
                        }
                    })
                    .collect(),
                windows: None,
                tiers: None,
                tier_count: 0,
                regions: None,
            },
            Profiles::Tiers(tiers) => {
                let idx: Vec<u16> = (0..clients)
                    .map(|c| {
                        let u: f64 = draw(c).random();
                        let mut acc = 0.0;
                        tiers
                            .iter()
                            .position(|t| {
                                acc += t.share;
                                u < acc
                            })
                            .unwrap_or(tiers.len() - 1) as u16
                    })
                    .collect();
                Fleet {
                    profiles: idx.iter().map(|&i| tiers[i as usize].profile).collect(),
                    windows: None,
                    tiers: Some(idx),
                    tier_count: tiers.len(),
                    regions: None,
                }
            }
            Profiles::Trace { path } => {
                let rows = read_trace(path, clients)?;
                Fleet {
                    profiles: rows.iter().map(|r| r.profile).collect(),
                    regions: rows.iter().map(|r| r.region).collect(),
                    windows: Some(rows.into_iter().map(|r| r.windows).collect()),
                    tiers: None,
                    tier_count: 0,
                }
            }
        })
    }

    /// Client `c`'s profile.
    pub fn profile(&self, c: ClientId) -> DeviceProfile {
        self.profiles[c]
    }

    /// Whether client `c` is inside one of its availability windows at virtual time `t`
    /// (always true without a trace, or with no windows listed).
    pub fn in_window(&self, c: ClientId, t: f64) -> bool {
        match &self.windows {
            None => true,
            Some(w) => w[c].is_empty() || w[c].iter().any(|&(a, b)| a <= t && t < b),
        }
    }

    /// The tier index of each client, when profiles come from tiers.
    pub fn tiers(&self) -> Option<&[u16]> {
        self.tiers.as_deref()
    }

    /// Tiers the profiles name (0 without tiers).
    pub fn tier_count(&self) -> usize {
        self.tier_count
    }

    /// Each client's region, when the trace has a `region` column.
    pub fn regions(&self) -> Option<&[u16]> {
        self.regions.as_deref()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}
