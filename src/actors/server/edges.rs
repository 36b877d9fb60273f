//! A cloud round's edges: each edge's model, virtual clock and fate through its edge rounds,
//! and what the round records per tier once the edges forward.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{call, ActorProcessingErr};

use super::state::Core;
use super::synchronous::{collect_plans, dispatch, Model};
use crate::actors::aggregator::{AggregatorMsg, EdgePartial};
use crate::messages::{ClientId, ClientPlan, DropReason, RoundId};
use crate::model::AdapterSet;
use crate::stragglers::{decide, Stragglers};
use crate::topology::{EdgeFate, EdgeRound, EdgeStatus, Hierarchy, HierarchyRound};

/// One edge through a cloud round.
pub(super) struct EdgeRun {
    pub(super) edge: usize,
    clients: Vec<ClientId>,
    pub(super) fate: EdgeFate,
    /// The edge's model: the cloud's global, then after each edge round its mean.
    model: Arc<AdapterSet>,
    /// When the global reached the edge.
    start_s: f64,
    /// The edge's virtual time: when its next edge round starts.
    clock: f64,
    /// When the edge round in progress closes (its straggler decision).
    close_at: f64,
    /// Weight of its last edge round with updates (the drift's weight when the last has none).
    last_weight: u64,
    folded: usize,
    rounds_s: Vec<f64>,
    partial: Option<EdgePartial>,
}

impl EdgeRun {
    pub(super) fn new(
        edge: usize,
        clients: Vec<ClientId>,
        fate: EdgeFate,
        model: Arc<AdapterSet>,
        reach: f64,
    ) -> Self {
        EdgeRun {
            edge,
            clients,
            fate,
            model,
            start_s: reach,
            clock: reach,
            close_at: reach,
            last_weight: 0,
            folded: 0,
            rounds_s: Vec::new(),
            partial: None,
        }
    }

    /// Plan, decide and dispatch training round `t` for this edge's clients, from the edge's
    /// model; the bytes its clients download.
    pub(super) async fn start_edge_round(
        &mut self,
        st: &mut Core,
        t: RoundId,
        (stragglers, deadline): (Stragglers, Option<f64>),
    ) -> Result<u64, ActorProcessingErr> {
        let payload = Arc::new(self.model.to_safetensors()?);
        let bytes = payload.len() as u64;
        let no_masks = HashMap::new();
        let when = (self.clock, &no_masks);
        let plans = collect_plans(&st.clients, t, when, (bytes, bytes), &self.clients).await;
        let plans_ok: Vec<(ClientId, ClientPlan)> = plans
            .iter()
            .filter_map(|(c, p)| p.as_ref().ok().map(|p| (*c, *p)))
            .collect();
        let decided = decide(
            stragglers,
            self.clock,
            deadline,
            self.clients.len(),
            &plans_ok,
        );
        self.close_at = decided.close_at;
        let model = Model::of(t, payload, self.model.clone());
        dispatch(st, &plans, decided.decisions, &model);
        Ok(bytes * self.clients.len() as u64)
    }

    /// Close the edge round in progress: a mean for the next edge round, or after the last
    /// the partial sums to forward.
    async fn close(&mut self, st: &mut Core, last: bool) -> Result<usize, ActorProcessingErr> {
        let aggregator = &st.args.edges[self.edge];
        self.rounds_s.push(self.close_at - self.clock);
        self.clock = self.close_at;
        if last {
            let (base, global) = (self.model.clone(), st.global.clone());
            let fallback_weight = self.last_weight;
            let p = call!(aggregator, |reply| AggregatorMsg::Partial {
                base,
                global,
                fallback_weight,
                reply
            })?;
            self.folded += p.folded;
            self.partial = Some(p);
            return Ok(0);
        }
        let global = self.model.clone();
        let agg = call!(aggregator, |reply| AggregatorMsg::Finish { global, reply })?;
        for (client, why) in &agg.rejected {
            tracing::warn!(
                "edge {}: update of client {client} rejected: {why}",
                self.edge
            );
        }
        self.folded += agg.folded;
        if agg.folded > 0 {
            self.last_weight = agg.examples;
        }
        self.model = agg.global;
        Ok(agg.rejected.len())
    }
}

/// A cloud round in progress.
pub(super) struct CloudRound {
    pub(super) round: RoundId,
    /// The edge round in progress (1..=E).
    pub(super) edge_round: usize,
    pub(super) edges: Vec<EdgeRun>,
    pub(super) wan_bytes_down: u64,
    pub(super) wan_down_s: f64,
    pub(super) lan_bytes_down: u64,
}

impl CloudRound {
    pub(super) fn new(round: RoundId) -> Self {
        CloudRound {
            round,
            edge_round: 1,
            edges: Vec::new(),
            wan_bytes_down: 0,
            wan_down_s: 0.0,
            lan_bytes_down: 0,
        }
    }

    /// Close the edge round at every edge that is up (`last`: into partial sums).
    pub(super) async fn close_edge_round(
        &mut self,
        st: &mut Core,
        last: bool,
    ) -> Result<(), ActorProcessingErr> {
        for run in self
            .edges
            .iter_mut()
            .filter(|r| r.fate != EdgeFate::Unavailable)
        {
            let rejected = run.close(st, last).await?;
            // Refused at an edge before its last round: counted as failed, as the cloud's are.
            *st.current.dropped.entry(DropReason::Failed).or_insert(0) += rejected;
        }
        Ok(())
    }

    /// The edges forward over the WAN: the partials that arrive are added at the cloud's
    /// aggregator; crashed and late edges are recorded as lost. Sets the round's close time
    /// and its tier record.
    pub(super) fn forward(
        &mut self,
        st: &mut Core,
        plan: &Hierarchy,
        (stragglers, deadline_s): (Stragglers, Option<f64>),
    ) {
        let start = st.current.sim_start;
        let due = deadline_s
            .filter(|_| stragglers == Stragglers::Drop)
            .map(|d| start + d);
        let mut rec = HierarchyRound {
            edge_rounds: plan.edge_rounds,
            wan_bytes_down: self.wan_bytes_down,
            lan_bytes_down: self.lan_bytes_down,
            lan_bytes_up: st.current.bytes_up,
            ..Default::default()
        };
        let mut close_at = start + self.wan_down_s;
        for run in &mut self.edges {
            let (status, forward_at, bytes, weight) = match (run.fate, run.partial.take()) {
                (EdgeFate::Unavailable, _) | (_, None) => (EdgeStatus::Unavailable, None, 0, 0),
                (fate, Some(mut p)) => {
                    // The cloud counts every update the edge folded, over all its edge rounds.
                    p.folded = run.folded;
                    let bytes = p.wire_bytes();
                    let at = run.clock + plan.wan.up_s(bytes);
                    let status = match (fate, due) {
                        (EdgeFate::Crashed, _) => EdgeStatus::Crashed,
                        (_, Some(d)) if at > d => EdgeStatus::Late,
                        _ => EdgeStatus::Forwarded,
                    };
                    close_at = close_at.max(match status {
                        EdgeStatus::Late => due.unwrap_or(at),
                        _ => at,
                    });
                    rec.edge_s = rec.edge_s.max(run.clock - run.start_s);
                    if status == EdgeStatus::Forwarded {
                        rec.wan_bytes_up += bytes;
                        let weight = p.weight;
                        let _ = st.args.aggregator.send_message(AggregatorMsg::Merge(p));
                        (status, Some(at), bytes, weight)
                    } else {
                        (status, Some(at), 0, 0)
                    }
                }
            };
            if matches!(status, EdgeStatus::Crashed | EdgeStatus::Late) {
                *st.current.dropped.entry(DropReason::EdgeLost).or_insert(0) += run.clients.len();
            }
            rec.edges_lost += usize::from(status.lost());
            rec.edges.push(EdgeRound {
                edge: run.edge,
                clients: run.clients.len(),
                folded: run.folded,
                weight,
                status,
                start_s: run.start_s,
                edge_rounds_s: std::mem::take(&mut run.rounds_s),
                forward_at_s: forward_at,
                wan_bytes_up: bytes,
            });
        }
        rec.wan_s = (close_at - start - rec.edge_s).max(0.0);
        st.current.close_at = close_at;
        st.current.bytes_down = self.lan_bytes_down;
        st.current.hierarchy = Some(rec);
    }
}
