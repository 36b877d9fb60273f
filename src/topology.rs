//! Who a client talks to: the server directly (`Flat`), a regional edge aggregator that
//! talks to the cloud (`Hierarchical`, HierFAVG — Liu et al. 2020), or the server every step
//! with the model split between them (`Split`, [`crate::split`]).
//!
//! In a hierarchical cloud round the sampled clients are grouped by edge; each edge runs
//! `edge_rounds` E local aggregations (its clients train from the edge's model, upload to the
//! edge over their own links, the edge folds them exactly), then forwards its exact integer
//! partial sums and weight — never a mean — over the WAN. The cloud adds the edges' sums and
//! divides once, so with E = 1 the result is flat FedAvg's on the same clients bit for bit,
//! and for any E it does not depend on the order edges arrive in.
//!
//! Edge assignment is a pure function of the scenario: a seeded balanced split, the device
//! tier, or a trace's `region` column. Edge faults (an edge offline for a cloud round, or
//! crashing before it forwards) are pure functions of (seed, round, edge), like client faults.

mod record;

pub use record::{EdgeRound, EdgeStatus, HierarchyRound, HierarchyTotals};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::devices::Fleet;
use crate::ids::{ClientId, RoundId};
use crate::network::transfer_seconds;
use crate::rng::{derive, purpose, rng_for};
use crate::split::{CutCompression, SplitConfig, SplitMode};

/// Edge ids (0..edges).
pub type EdgeId = usize;

fn default_edge_rounds() -> usize {
    1
}
fn default_one() -> f64 {
    1.0
}

/// The federation's shape (scenario `topology`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Topology {
    /// Every client talks to the server.
    #[default]
    Flat,
    /// Clients talk to one of `edges` edge aggregators; edges talk to the cloud.
    Hierarchical {
        /// Edge aggregators (1..=clients).
        edges: usize,
        /// Which edge a client belongs to.
        assignment: Assignment,
        /// Local aggregations at each edge per cloud round (E ≥ 1).
        #[serde(default = "default_edge_rounds")]
        edge_rounds: usize,
        /// The edge ↔ cloud link (the clients' own profiles price client ↔ edge).
        wan: Link,
        /// Deadline of each edge round, simulated seconds after it starts: the straggler
        /// policy applies to each edge's clients with it (`system.deadline_s` is the cloud
        /// round's: under `Drop`, an edge that would forward later is dropped).
        #[serde(default)]
        edge_deadline_s: Option<f64>,
        /// Probability an edge is online for a cloud round (its clients then do not train).
        #[serde(default = "default_one")]
        edge_availability: f64,
        /// Probability an edge crashes after its edge rounds, before it forwards (its
        /// clients' work is lost).
        #[serde(default)]
        edge_crash_probability: f64,
        /// Where client-level DP noise is added (with a `dp` section): at the cloud, or at
        /// every edge in every edge round.
        #[serde(default)]
        noise_at: NoiseAt,
    },
    /// Split fine-tuning: clients run the embedding and the first `cut_layer` blocks, the
    /// server the rest; activations and gradients travel every step (see [`crate::split`]).
    Split {
        /// Decoder blocks on the client (0: only the embedding), below the model's layers.
        cut_layer: usize,
        /// SplitFed (the server keeps the head and sees the labels) or UShaped.
        #[serde(default)]
        mode: SplitMode,
        /// How the activations are encoded.
        #[serde(default)]
        activation_compression: CutCompression,
        /// How the gradients are encoded.
        #[serde(default)]
        gradient_compression: CutCompression,
        /// The server's training throughput, FLOP/s.
        #[serde(default = "default_server_flops")]
        server_flops: f64,
    },
}

fn default_server_flops() -> f64 {
    crate::split::DEFAULT_SERVER_FLOPS
}

impl Topology {
    /// The split settings of a `Split` topology.
    pub fn split(&self) -> Option<SplitConfig> {
        match *self {
            Topology::Split {
                cut_layer,
                mode,
                activation_compression,
                gradient_compression,
                server_flops,
            } => Some(SplitConfig {
                cut_layer,
                mode,
                activation_compression,
                gradient_compression,
                server_flops,
            }),
            _ => None,
        }
    }
}

/// Where a hierarchy adds client-level DP noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum NoiseAt {
    /// The cloud noises the sum of every edge's clipped updates (trusts the edges and the
    /// cloud; E = 1 only: with more, clients train on un-noised edge models).
    #[default]
    Root,
    /// Each edge noises its sum in every edge round (trusts only the edges): the cloud and
    /// the clients see noised models; a round composes E Gaussian mechanisms.
    Edges,
}

/// Gaussian mechanisms a sampled client goes through per cloud round: E when the edges add
/// the noise, else 1.
pub fn dp_compositions(topology: &Topology) -> usize {
    match *topology {
        Topology::Hierarchical {
            edge_rounds,
            noise_at: NoiseAt::Edges,
            ..
        } => edge_rounds,
        _ => 1,
    }
}

/// How clients are assigned to edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Assignment {
    /// A seeded balanced split: a random permutation dealt round-robin (sizes differ by ≤ 1).
    Seeded,
    /// Edge = device tier (`system.profiles: Tiers([...])`, one edge per tier, in order).
    ByTier,
    /// Edge = the `region` column of the profile trace (`system.profiles: Trace`).
    ByRegion,
}

/// A link between two aggregators.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Edge → cloud, Mbit/s.
    pub up_mbps: f64,
    /// Cloud → edge, Mbit/s.
    pub down_mbps: f64,
    /// One-way latency, seconds.
    pub latency_s: f64,
}

impl Link {
    /// Seconds to send `bytes` up (edge → cloud).
    pub fn up_s(&self, bytes: u64) -> f64 {
        transfer_seconds(bytes, self.up_mbps, self.latency_s)
    }

    /// Seconds to send `bytes` down (cloud → edge).
    pub fn down_s(&self, bytes: u64) -> f64 {
        transfer_seconds(bytes, self.down_mbps, self.latency_s)
    }
}

/// Why an assignment cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    /// `ByTier` without tiers, or with a tier count other than `edges`.
    #[error(
        "assignment ByTier needs system.profiles: Tiers([...]) with one tier per edge \
         ({edges} edges, {tiers} tiers); set edges to the tier count or use Seeded"
    )]
    Tiers {
        /// Edges asked for.
        edges: usize,
        /// Tiers the profiles have (0: not tiers).
        tiers: usize,
    },
    /// `ByRegion` without a trace region column.
    #[error(
        "assignment ByRegion needs system.profiles: Trace with a `region` column (the 7th, \
         after windows); the trace has none"
    )]
    NoRegions,
    /// A region id outside 0..edges.
    #[error("client {client}'s region is {region}; regions must be 0..{edges} (one per edge)")]
    Region {
        /// The client.
        client: ClientId,
        /// Its region.
        region: usize,
        /// Edges.
        edges: usize,
    },
}

/// A hierarchical topology, checked and resolved: every client's edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Hierarchy {
    /// Edge of each client.
    pub edge_of: Arc<[u16]>,
    /// Number of edges.
    pub edges: usize,
    /// E.
    pub edge_rounds: usize,
    /// The WAN.
    pub wan: Link,
    /// Per edge round.
    pub edge_deadline_s: Option<f64>,
    /// P(online) per cloud round.
    pub edge_availability: f64,
    /// P(crash before forwarding) per cloud round.
    pub edge_crash_probability: f64,
    /// Where DP noise goes (with a `dp` section).
    pub noise_at: NoiseAt,
    seed: u64,
}

/// What happens to an edge in a cloud round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeFate {
    /// It runs its edge rounds and forwards.
    Up,
    /// Offline for the round: its clients do not train.
    Unavailable,
    /// It crashes before forwarding: its clients' work is lost.
    Crashed,
}

impl Hierarchy {
    /// Resolve `topology` for `fleet`'s clients; `None` for `Flat`.
    ///
    /// # Errors
    /// An assignment the profiles cannot support.
    pub fn resolve(
        topology: &Topology,
        fleet: &Fleet,
        seed: u64,
    ) -> Result<Option<Self>, TopologyError> {
        let Topology::Hierarchical {
            edges,
            assignment,
            edge_rounds,
            wan,
            edge_deadline_s,
            edge_availability,
            edge_crash_probability,
            noise_at,
        } = *topology
        else {
            return Ok(None);
        };
        let edge_of = assign(assignment, edges, fleet, seed)?;
        Ok(Some(Hierarchy {
            edge_of: edge_of.into(),
            edges,
            edge_rounds,
            wan,
            edge_deadline_s,
            edge_availability,
            edge_crash_probability,
            noise_at,
            seed,
        }))
    }

    /// Client `c`'s edge.
    pub fn edge(&self, c: ClientId) -> EdgeId {
        self.edge_of[c] as EdgeId
    }

    /// Clients of each edge among `clients` (each list in the order given).
    pub fn group(&self, clients: &[ClientId]) -> Vec<Vec<ClientId>> {
        let mut by_edge = vec![Vec::new(); self.edges];
        for &c in clients {
            by_edge[self.edge(c)].push(c);
        }
        by_edge
    }

    /// What happens to `edge` in cloud round `round`.
    pub fn fate(&self, round: RoundId, edge: EdgeId) -> EdgeFate {
        let draw = |what: u64| {
            (derive(self.seed, &[purpose::EDGE, what, round as u64, edge as u64]) >> 11) as f64
                * (1.0 / (1u64 << 53) as f64)
        };
        if self.edge_availability < 1.0 && draw(1) >= self.edge_availability {
            EdgeFate::Unavailable
        } else if self.edge_crash_probability > 0.0 && draw(2) < self.edge_crash_probability {
            EdgeFate::Crashed
        } else {
            EdgeFate::Up
        }
    }

    /// The seed of edge `edge`'s DP noise (each edge draws its own).
    pub fn noise_seed(&self, edge: EdgeId) -> u64 {
        derive(self.seed, &[purpose::EDGE, 3, edge as u64])
    }

    /// The index clients see for edge round `e` (1-based) of cloud round `round`: their
    /// seeds and fault draws use it, so with E = 1 it is the cloud round (flat's draws).
    pub fn training_round(&self, round: RoundId, e: usize) -> RoundId {
        (round - 1) * self.edge_rounds + e
    }
}

/// Each client's edge.
fn assign(
    assignment: Assignment,
    edges: usize,
    fleet: &Fleet,
    seed: u64,
) -> Result<Vec<u16>, TopologyError> {
    let n = fleet.len();
    match assignment {
        Assignment::Seeded => {
            let mut rng = rng_for(seed, &[purpose::EDGE, 0]);
            let order = rand::seq::index::sample(&mut rng, n, n);
            let mut edge_of = vec![0u16; n];
            for (pos, c) in order.into_iter().enumerate() {
                edge_of[c] = (pos % edges) as u16;
            }
            Ok(edge_of)
        }
        Assignment::ByTier => {
            let tiers = fleet
                .tiers()
                .ok_or(TopologyError::Tiers { edges, tiers: 0 })?;
            let count = fleet.tier_count();
            if count != edges {
                return Err(TopologyError::Tiers {
                    edges,
                    tiers: count,
                });
            }
            Ok(tiers.to_vec())
        }
        Assignment::ByRegion => {
            let regions = fleet.regions().ok_or(TopologyError::NoRegions)?;
            if let Some((client, &r)) = regions
                .iter()
                .enumerate()
                .find(|(_, &r)| r as usize >= edges)
            {
                return Err(TopologyError::Region {
                    client,
                    region: r as usize,
                    edges,
                });
            }
            Ok(regions.to_vec())
        }
    }
}
