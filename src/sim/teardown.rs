//! The end of a run's actors: the server optimiser's state saved, the aggregators stopped, the
//! slots released.

use ractor::ActorRef;
use tokio::task::JoinHandle;

use super::{actor_err, SimError};
use crate::actors::aggregator::AggregatorMsg;
use crate::model::ModelError;
use crate::report::RunDir;
use crate::shutdown::{Shutdown, StopLevel};

/// Stop the flat aggregator and every edge aggregator, and wait for each.
pub(super) async fn stop_aggregators(
    (aggregator, handle): (ActorRef<AggregatorMsg>, JoinHandle<()>),
    edges: impl Iterator<Item = (&ActorRef<AggregatorMsg>, JoinHandle<()>)>,
) {
    aggregator.stop(None);
    let _ = handle.await;
    for (edge, handle) in edges {
        edge.stop(None);
        let _ = handle.await;
    }
}

/// The server optimiser's state persists across rounds: it is saved with the run.
pub(super) async fn save_server_state(
    aggregator: &ractor::ActorRef<AggregatorMsg>,
    dir: &RunDir,
) -> Result<(), SimError> {
    if let Ok(Some(state)) = ractor::call!(aggregator, |reply| AggregatorMsg::ServerState { reply })
    {
        let bytes = state
            .to_safetensors()
            .map_err(|e| ModelError::Layout(e.to_string()))?;
        dir.write_bytes("server_state.safetensors", &bytes)?;
    }
    Ok(())
}

/// The slots' busy seconds, and the pool closed: after its jobs, or at once after a second
/// stop request (jobs in flight are dropped; their threads end with the process).
pub(super) async fn release_slots(
    pool: crate::slots::SlotPool,
    shutdown: &Shutdown,
) -> Result<Vec<f64>, SimError> {
    let busy = pool.busy_seconds();
    if shutdown.level() == StopLevel::Abandon {
        pool.abandon();
    } else {
        tokio::task::spawn_blocking(move || pool.shutdown())
            .await
            .map_err(|e| actor_err(&e))?;
    }
    Ok(busy)
}
