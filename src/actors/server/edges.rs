//! A cloud round's edges: each edge's model, virtual clock and fate through its edge rounds,
//! and what the round records per tier once the edges forward.

use std::sync::Arc;

use ractor::{call, ActorProcessingErr};

use super::secure::{self, SecureSetup};
use super::state::Core;
use super::synchronous::{collect_plans, dispatch, Model};
use crate::actors::aggregator::{AggregatorMsg, DpRound, EdgePartial};
use crate::messages::{ClientId, ClientPlan, DropReason, FitStatus, RoundId};
use crate::model::AdapterSet;
use crate::stragglers::{decide, Stragglers};
use crate::topology::{EdgeFate, EdgeRound, EdgeStatus, Hierarchy, HierarchyRound};

/// One edge through a cloud round.
pub(super) struct EdgeRun {
    pub(super) edge: usize,
    clients: Vec<ClientId>,
    /// Updates an edge round keeps under `OverSelect` (its share of the round's target).
    target: usize,
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
    /// Secure aggregation's own messages up (keys, shares, unmasking), not the masked inputs.
    pub(super) protocol_up: u64,
}

impl EdgeRun {
    pub(super) fn new(
        (edge, fate): (usize, EdgeFate),
        (clients, target): (Vec<ClientId>, usize),
        model: Arc<AdapterSet>,
        reach: f64,
    ) -> Self {
        EdgeRun {
            edge,
            clients,
            target,
            fate,
            model,
            start_s: reach,
            clock: reach,
            close_at: reach,
            last_weight: 0,
            folded: 0,
            rounds_s: Vec::new(),
            partial: None,
            protocol_up: 0,
        }
    }

    /// Plan, decide and dispatch training round `t` for this edge's clients, from the edge's
    /// model (after secure aggregation's set-up at the edge, when on); the bytes its clients
    /// download.
    pub(super) async fn start_edge_round(
        &mut self,
        st: &mut Core,
        t: RoundId,
        (stragglers, deadline): (Stragglers, Option<f64>),
    ) -> Result<u64, ActorProcessingErr> {
        let payload = Arc::new(self.model.to_safetensors()?);
        let bytes = payload.len() as u64;
        let Some(setup) = self.set_up_secure(st).await? else {
            return Ok(0);
        };
        let up = setup.upload.unwrap_or(st.upload_bytes(bytes));
        let when = (self.clock + setup.seconds, &setup.mask_s);
        let plans = collect_plans(&st.clients, t, when, (bytes, up), &self.clients).await;
        let plans_ok: Vec<(ClientId, ClientPlan)> = plans
            .iter()
            .filter_map(|(c, p)| p.as_ref().ok().map(|p| (*c, *p)))
            .collect();
        let decided = decide(stragglers, self.clock, deadline, self.target, &plans_ok);
        self.close_at = decided.close_at;
        let model = Model::of(t, payload, self.model.clone());
        dispatch(st, &plans, decided.decisions, &model);
        Ok(bytes * self.clients.len() as u64)
    }

    /// Secure aggregation's keys and shares phases with this edge's clients, when on (their
    /// messages counted in the round); None when they fail: the edge round releases nothing
    /// and its clients do not train.
    async fn set_up_secure(
        &mut self,
        st: &mut Core,
    ) -> Result<Option<SecureSetup>, ActorProcessingErr> {
        let aggregator = st.args.edges[self.edge].clone();
        match secure::set_up_at(st, &aggregator, &self.clients).await? {
            Ok(setup) => {
                self.protocol_up += secure::edge_setup_cost(st, &setup);
                Ok(Some(setup))
            }
            Err(why) => {
                tracing::warn!("edge {}: {why}", self.edge);
                let status = FitStatus::Failed {
                    reason: crate::messages::FitFailure::EdgeSetup(std::sync::Arc::new(why)),
                };
                for &c in &self.clients {
                    st.current.count(c, &status, None);
                }
                self.close_at = self.clock;
                Ok(None)
            }
        }
    }

    /// Close the edge round in progress: a mean for the next edge round, or after the last
    /// the partial sums to forward. Secure aggregation's unmasking delays the close.
    async fn close(&mut self, st: &mut Core, last: bool) -> Result<usize, ActorProcessingErr> {
        let aggregator = st.args.edges[self.edge].clone();
        let (unmasking, rejected) = if last {
            let (base, global) = (self.model.clone(), st.global.clone());
            let fallback_weight = self.last_weight;
            let mut p = call!(aggregator, |reply| AggregatorMsg::Partial {
                base,
                global,
                fallback_weight,
                reply
            })?;
            self.folded += p.folded;
            let u = p.unmasking.take();
            self.partial = Some(p);
            (u, 0)
        } else {
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
            (agg.unmasking, agg.rejected.len())
        };
        if let Some(u) = &unmasking {
            let (seconds, up) = secure::edge_unmask(st, u);
            self.close_at += seconds;
            self.protocol_up += up;
        }
        self.rounds_s.push(self.close_at - self.clock);
        self.clock = self.close_at;
        Ok(rejected)
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
    /// How the edges aggregate under DP (each edge with its own noise seed).
    pub(super) edge_dp: Option<DpRound>,
}

impl CloudRound {
    pub(super) fn new(round: RoundId, edge_dp: Option<DpRound>) -> Self {
        CloudRound {
            round,
            edge_dp,
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
    /// aggregator; crashed, late and withheld edges are recorded as lost. Sets the round's
    /// close time and its tier record.
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
        st.current.bytes_down += self.lan_bytes_down;
        let mut rec = HierarchyRound {
            edge_rounds: plan.edge_rounds,
            wan_bytes_down: self.wan_bytes_down,
            lan_bytes_down: st.current.bytes_down,
            lan_bytes_up: st.current.bytes_up,
            ..Default::default()
        };
        let mut close_at = start + self.wan_down_s;
        let mut protocol_up = 0;
        for run in &mut self.edges {
            protocol_up += run.protocol_up;
            let (edge, at, partial) = run.outcome(plan, due);
            if let Some(at) = at {
                close_at = close_at.max(if edge.status == EdgeStatus::Late {
                    due.unwrap_or(at)
                } else {
                    at
                });
                rec.edge_s = rec.edge_s.max(run.clock - run.start_s);
            }
            if let Some(p) = partial {
                rec.wan_bytes_up += edge.wan_bytes_up;
                let _ = st.args.aggregator.send_message(AggregatorMsg::Merge(p));
            }
            if edge.status.lost() && edge.status != EdgeStatus::Unavailable {
                *st.current.dropped.entry(DropReason::EdgeLost).or_insert(0) += run.clients.len();
            }
            rec.edges_lost += usize::from(edge.status.lost());
            rec.edges.push(edge);
        }
        if let Some(record) = st.current.secure.as_mut() {
            // The masked inputs, as the uploads counted them.
            record.masked.up_bytes = st.current.bytes_up - protocol_up;
        }
        rec.wan_s = (close_at - start - rec.edge_s).max(0.0);
        st.current.close_at = close_at;
        st.current.hierarchy = Some(rec);
    }
}

impl EdgeRun {
    /// What became of this edge at the end of its edge rounds: its record, when its partial
    /// reached (or would have reached) the cloud, and the partial to add when it did.
    fn outcome(
        &mut self,
        plan: &Hierarchy,
        due: Option<f64>,
    ) -> (EdgeRound, Option<f64>, Option<EdgePartial>) {
        let mut record = EdgeRound {
            edge: self.edge,
            clients: self.clients.len(),
            folded: self.folded,
            weight: 0,
            status: EdgeStatus::Unavailable,
            reason: None,
            start_s: self.start_s,
            edge_rounds_s: std::mem::take(&mut self.rounds_s),
            forward_at_s: None,
            wan_bytes_up: 0,
        };
        let (fate, Some(mut p)) = (self.fate, self.partial.take()) else {
            return (record, None, None);
        };
        if fate == EdgeFate::Unavailable {
            return (record, None, None);
        }
        // The cloud counts every update the edge folded, over all its edge rounds.
        p.folded = self.folded;
        let bytes = p.wire_bytes();
        let at = self.clock + plan.wan.up_s(bytes);
        record.forward_at_s = Some(at);
        record.status = match (fate, due, &p.withheld) {
            (EdgeFate::Crashed, _, _) => EdgeStatus::Crashed,
            (_, _, Some(_)) => EdgeStatus::Withheld,
            (_, Some(d), None) if at > d => EdgeStatus::Late,
            _ => EdgeStatus::Forwarded,
        };
        record.reason = p.withheld.as_ref().map(ToString::to_string);
        if record.status != EdgeStatus::Forwarded {
            return (record, Some(at), None);
        }
        record.weight = p.weight;
        record.wan_bytes_up = bytes;
        (record, Some(at), Some(p))
    }
}
