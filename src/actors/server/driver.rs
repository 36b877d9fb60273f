//! How rounds are driven: synchronously (one round at a time, every sampled client from the
//! same model, the straggler policy deciding who counts) or asynchronously (FedBuff: clients
//! always in flight, an aggregation every `buffer` arrivals). Each driver owns its state and
//! its begin / on_fit / on_crash / close; the server's actor only forwards to the one chosen.

use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use super::asynchronous::FedBuff;
use super::config::{ServerConfig, ServerMsg};
use super::hierarchical::HierRounds;
use super::snapshot::AsyncSnapshot;
use super::state::Core;
use super::synchronous::SyncRounds;
use crate::messages::{ClientId, FitRes};
use crate::model::AdapterLayout;
use crate::stragglers::Stragglers;

/// The server's round driver.
pub(super) enum RoundDriver {
    /// Synchronous rounds under `Wait`, `Drop` or `OverSelect`.
    Sync(SyncRounds),
    /// Buffered asynchronous aggregation under `Async`.
    Async(FedBuff),
    /// Edge rounds under edge aggregators, then a cloud round (topology `Hierarchical`).
    Hier(HierRounds),
}

impl RoundDriver {
    /// The driver `config.stragglers` selects.
    pub(super) fn new(config: &ServerConfig) -> Self {
        if let Some(plan) = &config.hierarchy {
            let d = HierRounds::new(plan.clone(), config.stragglers, config.deadline_s);
            return RoundDriver::Hier(d);
        }
        match config.stragglers {
            Stragglers::Async {
                buffer,
                concurrency,
                staleness,
            } => RoundDriver::Async(FedBuff {
                buffer,
                concurrency,
                staleness,
                state: Default::default(),
            }),
            stragglers => RoundDriver::Sync(SyncRounds {
                stragglers,
                deadline_s: config.deadline_s,
            }),
        }
    }

    /// Begin the next round (synchronous) or the loop (asynchronous).
    pub(super) async fn begin(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
    ) -> Result<(), ActorProcessingErr> {
        match self {
            RoundDriver::Sync(d) => d.begin(me, st).await,
            RoundDriver::Async(d) => d.begin(me, st).await,
            RoundDriver::Hier(d) => d.begin(me, st).await,
        }
    }

    /// A client's answer.
    pub(super) async fn on_fit(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        res: FitRes,
    ) -> Result<(), ActorProcessingErr> {
        match self {
            RoundDriver::Sync(d) => d.on_fit(me, st, res).await,
            RoundDriver::Async(d) => d.on_fit(me, st, res).await,
            RoundDriver::Hier(d) => d.on_fit(me, st, res).await,
        }
    }

    /// A client's actor died (it is already marked dead and forgotten).
    pub(super) async fn on_crash(
        &mut self,
        me: &ActorRef<ServerMsg>,
        st: &mut Core,
        client: ClientId,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        match self {
            RoundDriver::Sync(d) => d.on_crash(me, st, client, why).await,
            RoundDriver::Async(d) => d.on_crash(me, st, client, why).await,
            RoundDriver::Hier(d) => d.on_crash(me, st, client, why).await,
        }
    }

    /// Continue the asynchronous loop from a checkpoint's flights, taken when a round closed
    /// at `clock`.
    pub(super) fn restore(
        &mut self,
        snap: Option<AsyncSnapshot>,
        clock: f64,
        layout: &Arc<AdapterLayout>,
    ) {
        if let (RoundDriver::Async(d), Some(snap)) = (self, snap) {
            d.state.restore(snap, clock, layout);
        }
    }
}
