//! What a hierarchical cloud round records (`rounds.jsonl` key `hierarchy`): each edge's
//! fate and timeline, and the bytes and simulated time of each tier.

use serde::{Deserialize, Serialize};

use super::EdgeId;

/// What became of an edge in a cloud round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeStatus {
    /// Its partial sums reached the cloud and were added.
    Forwarded,
    /// Offline for the round (`edge_availability`): its clients did not train.
    Unavailable,
    /// Crashed before forwarding (`edge_crash_probability`): its clients' work is lost.
    Crashed,
    /// Its partial would reach the cloud after `system.deadline_s` (`Drop`): left out.
    Late,
    /// Its last edge round released nothing (secure aggregation at the edge could not
    /// unmask: `secagg_threshold`, …); its `reason` says why.
    Withheld,
}

impl EdgeStatus {
    /// Whether the edge's contribution is missing from the round (`edge_lost`).
    pub fn lost(self) -> bool {
        self != EdgeStatus::Forwarded
    }
}

/// One edge in one cloud round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRound {
    /// The edge.
    pub edge: EdgeId,
    /// Sampled clients under it.
    pub clients: usize,
    /// Client updates it folded, over all its edge rounds.
    pub folded: usize,
    /// The weight it forwarded (examples of its last edge round with updates).
    pub weight: u64,
    /// What became of it.
    pub status: EdgeStatus,
    /// Why it released nothing (status `withheld`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the cloud's model reached it (virtual seconds).
    pub start_s: f64,
    /// How long each of its edge rounds took (virtual seconds).
    pub edge_rounds_s: Vec<f64>,
    /// When its partial reached the cloud (or would have: crashed, late).
    pub forward_at_s: Option<f64>,
    /// Bytes it sent the cloud.
    pub wan_bytes_up: u64,
}

/// A hierarchical cloud round: its edges, and bytes per tier.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HierarchyRound {
    /// Edge rounds per cloud round (E).
    pub edge_rounds: usize,
    /// Each edge with sampled clients, by id.
    pub edges: Vec<EdgeRound>,
    /// Edges whose contribution is missing (`edge_lost`: unavailable, crashed, late).
    pub edges_lost: usize,
    /// Cloud → edges: the global adapter, once per edge that ran.
    pub wan_bytes_down: u64,
    /// Edges → cloud: the partial sums forwarded (crashed edges send nothing).
    pub wan_bytes_up: u64,
    /// Edges → clients over all edge rounds.
    pub lan_bytes_down: u64,
    /// Clients → edges over all edge rounds.
    pub lan_bytes_up: u64,
    /// Simulated seconds of the WAN legs: the slowest edge's download plus its upload.
    pub wan_s: f64,
    /// Simulated seconds of the edge rounds (the slowest edge's).
    pub edge_s: f64,
}

/// A hierarchical run's tiers over all its rounds (`summary.json` key `hierarchy`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HierarchyTotals {
    /// Cloud → edges.
    pub wan_bytes_down: u64,
    /// Edges → cloud.
    pub wan_bytes_up: u64,
    /// Edges → clients.
    pub lan_bytes_down: u64,
    /// Clients → edges.
    pub lan_bytes_up: u64,
    /// Edge-rounds whose contribution was lost (an edge offline, crashed or late).
    pub edges_lost: usize,
}

impl HierarchyTotals {
    /// The totals of `rounds` (None when no round was hierarchical).
    pub fn of<'a>(rounds: impl IntoIterator<Item = &'a Option<HierarchyRound>>) -> Option<Self> {
        let mut total: Option<Self> = None;
        for h in rounds.into_iter().flatten() {
            total.get_or_insert_with(Default::default).add(h);
        }
        total
    }

    /// Add one round.
    pub fn add(&mut self, h: &HierarchyRound) {
        self.wan_bytes_down += h.wan_bytes_down;
        self.wan_bytes_up += h.wan_bytes_up;
        self.lan_bytes_down += h.lan_bytes_down;
        self.lan_bytes_up += h.lan_bytes_up;
        self.edges_lost += h.edges_lost;
    }
}
