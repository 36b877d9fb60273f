//! Hierarchical rounds (HierFAVG): the sampled clients are grouped by edge; every edge runs
//! E edge rounds — its clients train from the edge's model and upload to the edge's
//! aggregator, which folds them exactly — then forwards its exact partial sums over the WAN;
//! the cloud's aggregator adds them and closes the round as a flat round closes (see
//! [`super::close`]). Edge rounds of different edges run side by side on the host; each edge
//! keeps its own virtual clock. The edges' bookkeeping is in [`super::edges`].

use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use super::close::{close_round, Closed};
use super::config::ServerMsg;
use super::edges::{CloudRound, EdgeRun};
use super::record::RoundState;
use super::state::Core;
use super::synchronous::{dp_round, open_round, Opened, Opening};
use crate::actors::aggregator::{AggregatorMsg, DpRound};
use crate::messages::{FitRes, FitStatus};
use crate::stragglers::Stragglers;
use crate::topology::{EdgeFate, Hierarchy, NoiseAt};

/// The hierarchical driver.
pub(super) struct HierRounds {
    /// The resolved topology.
    plan: Arc<Hierarchy>,
    /// `Wait`, `Drop` or `OverSelect`, applied to each edge's clients (and to late edges
    /// under `Drop`).
    stragglers: Stragglers,
    /// The cloud round's deadline (`system.deadline_s`).
    deadline_s: Option<f64>,
    /// The cloud round in progress.
    round: Option<CloudRound>,
}

impl HierRounds {
    /// A driver for `plan` under the straggler policy and cloud deadline given.
    pub(super) fn new(
        plan: Arc<Hierarchy>,
        stragglers: Stragglers,
        deadline_s: Option<f64>,
    ) -> Self {
        HierRounds {
            plan,
            stragglers,
            deadline_s,
            round: None,
        }
    }

    /// Begin the next cloud round (or finish the run after the last, or on a stop request).
    pub(super) async fn begin(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        let Opened {
            round,
            start,
            available,
            target,
            chosen,
            q,
        } = match open_round(me, st, self.stragglers).await? {
            Opening::Sampled(o) => o,
            Opening::Short(closed) => return self.next(me, st, closed),
            Opening::Ended => return Ok(()),
        };
        st.spawn_clients(me, &chosen).await?;
        let (root_dp, edge_dp) = dp_levels(st, self.plan.noise_at, q, available.len());
        let begin = AggregatorMsg::Begin { round, dp: root_dp };
        st.args.aggregator.send_message(begin)?;
        let global_bytes = st.global.to_safetensors()?.len() as u64;
        let reach = start + self.plan.wan.down_s(global_bytes);
        st.current = RoundState::open(round, st.args.config.lr(round), start, start);
        let unavailable = st.alive_count() - available.len();
        let cur = &mut st.current;
        cur.sampled = chosen.len();
        cur.available = available.len();
        cur.unavailable = unavailable;
        cur.q = q;
        let mut cloud = CloudRound::new(round, edge_dp);
        for (edge, clients) in self.plan.group(&chosen).into_iter().enumerate() {
            if clients.is_empty() {
                continue;
            }
            let fate = self.plan.fate(round, edge);
            if fate == EdgeFate::Unavailable {
                for &c in &clients {
                    st.current.count(c, &FitStatus::EdgeLost { edge }, None);
                }
            } else {
                cloud.wan_bytes_down += global_bytes;
                cloud.wan_down_s = cloud.wan_down_s.max(reach - start);
            }
            // Over-selection keeps each edge's share of the target (at least one).
            let keep = (clients.len() * target)
                .div_ceil(chosen.len().max(1))
                .max(1);
            let run = EdgeRun::new((edge, fate), (clients, keep), st.global.clone(), reach);
            cloud.edges.push(run);
        }
        self.round = Some(cloud);
        self.start_edge_round(st).await?;
        self.advance(me, st).await
    }

    /// A client's answer; the edge round ends with the last one.
    pub(super) async fn on_fit(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        res: FitRes,
    ) -> Result<(), ActorProcessingErr> {
        let Some(cloud) = &self.round else {
            return Ok(());
        };
        let t = self.plan.training_round(cloud.round, cloud.edge_round);
        if res.round != t || !st.current.pending.remove(&res.client) {
            return Ok(()); // late or duplicate answer
        }
        match &res.status {
            FitStatus::Completed(u) => st.count_host(u),
            FitStatus::Failed { reason } => {
                tracing::warn!("round {t}: client {} failed: {reason}", res.client);
            }
            _ => {}
        }
        let cur = &mut st.current;
        let plan = cur.timelines.get(&res.client).map(|t| (*t, 0));
        cur.count(res.client, &res.status, plan);
        self.advance(me, st).await
    }

    /// A client's actor died while training: it crashed when its timeline says.
    pub(super) async fn on_crash(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        client: crate::messages::ClientId,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(cloud) = &self.round else {
            return Ok(());
        };
        if !st.current.pending.contains(&client) {
            return Ok(());
        }
        let res = FitRes {
            client,
            round: self.plan.training_round(cloud.round, cloud.edge_round),
            status: FitStatus::Crashed {
                at: st.current.crash_time(client),
                cause: crate::messages::CrashCause::Panicked(why),
            },
        };
        self.on_fit(me, st, res).await
    }

    /// Once nobody is pending: close the edge round, start the next, or close the cloud
    /// round after the last.
    async fn advance(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        while st.current.pending.is_empty() {
            let Some(cloud) = self.round.as_mut() else {
                return Ok(());
            };
            let last = cloud.edge_round == self.plan.edge_rounds;
            cloud.close_edge_round(st, last).await?;
            if !last {
                cloud.edge_round += 1;
                self.start_edge_round(st).await?;
                continue;
            }
            let mut cloud = self.round.take().expect("checked above");
            cloud.forward(st, &self.plan, (self.stragglers, self.deadline_s));
            let closed = close_round(me, st, None).await?;
            return self.next(me, st, closed);
        }
        Ok(())
    }

    /// Start the current edge round at every edge that is up: plans, decisions, `FitIns`.
    async fn start_edge_round(&mut self, st: &mut Core) -> Result<(), ActorProcessingErr> {
        let cloud = self.round.as_mut().expect("a cloud round is open");
        let t = self.plan.training_round(cloud.round, cloud.edge_round);
        let deadline = self.plan.edge_deadline_s;
        for run in cloud
            .edges
            .iter_mut()
            .filter(|r| r.fate != EdgeFate::Unavailable)
        {
            let dp = (cloud.edge_dp).map(|d| DpRound {
                seed: self.plan.noise_seed(run.edge),
                ..d
            });
            let aggregator = &st.args.edges[run.edge];
            aggregator.send_message(AggregatorMsg::Begin { round: t, dp })?;
            let bytes = run
                .start_edge_round(st, t, (self.stragglers, deadline))
                .await?;
            cloud.lan_bytes_down += bytes;
        }
        Ok(())
    }

    /// After a close: a recorded round's clients retire and the next round begins.
    fn next(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        closed: Closed,
    ) -> Result<(), ActorProcessingErr> {
        if closed == Closed::Recorded {
            st.retire_clients();
            me.send_message(ServerMsg::BeginRound)?;
        }
        Ok(())
    }
}

/// Under DP, how the cloud's and the edges' aggregators noise: with the noise at the root
/// the edges clip and the cloud noises the sum of every edge's sums (flat DP's release, bit
/// for bit); with the noise at the edges each edge noises every edge round and the cloud adds
/// none. (cloud, edge template — each edge gets its own noise seed.)
fn dp_levels(
    st: &Core,
    noise_at: NoiseAt,
    q: f64,
    available: usize,
) -> (Option<DpRound>, Option<DpRound>) {
    let Some(flat) = dp_round(st, q, available) else {
        return (None, None);
    };
    let edge = DpRound {
        sum_stddev: 0.0,
        denominator: None,
        ..flat
    };
    match noise_at {
        NoiseAt::Root => (Some(flat), Some(edge)),
        NoiseAt::Edges => (
            Some(DpRound {
                sum_stddev: 0.0,
                server_clip: None,
                ..flat
            }),
            Some(DpRound {
                sum_stddev: flat.sum_stddev,
                ..edge
            }),
        ),
    }
}
