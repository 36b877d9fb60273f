//! A worker's watcher: while the worker is up, a heartbeat every second (a partitioned link
//! or a stalled process keeps the TCP session open, so a closed connection is not enough);
//! once it is lost, an attempt every second to connect and set the run up again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::remote::RemoteWorker;
use super::Joiner;
use crate::cluster::WorkerMsg;
use crate::slots::Remote;

/// How often a worker is pinged, and a lost one tried again.
const EVERY: Duration = Duration::from_secs(1);
/// A worker that does not answer a heartbeat within this is lost.
const HEARTBEAT_WITHIN: Duration = Duration::from_secs(10);

/// Watch `worker` for the rest of the run (the task is aborted when the run's cluster drops).
pub(super) async fn watch(worker: Arc<RemoteWorker>, joiner: Joiner) {
    let mut beat: u64 = 0;
    loop {
        let link = worker.link();
        let mut gone = link.gone.clone();
        if worker.alive() {
            beat += 1;
            let ping = link.actor.call(
                |reply| WorkerMsg::Ping(beat.to_le_bytes().to_vec(), reply),
                Some(HEARTBEAT_WITHIN),
            );
            let answered = tokio::select! {
                a = ping => matches!(a, Ok(ractor::rpc::CallResult::Success(_))),
                _ = gone.wait_for(|g| *g) => false,
            };
            if !answered {
                let why = if *gone.borrow() {
                    "its connection closed".to_string()
                } else {
                    format!(
                        "no heartbeat answer within {} s: partitioned or stalled",
                        HEARTBEAT_WITHIN.as_secs()
                    )
                };
                worker.mark_lost(&why);
                joiner.disconnect(link.node_id).await;
            }
        } else {
            worker.mark_lost("its connection closed");
            joiner.disconnect(link.node_id).await;
            match joiner.join(&worker.addr).await {
                Ok((link, slots)) => {
                    if slots != worker.slots {
                        tracing::info!(
                            worker = %worker.addr, slots, used = worker.slots,
                            "worker back with another slot count; the run keeps its first"
                        );
                    }
                    worker.relink(link);
                    tracing::info!(worker = %worker.addr, "worker back and set up again");
                }
                Err(e) => tracing::debug!(worker = %worker.addr, error = %e, "not back yet"),
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Tells each worker's slots when its connection closes (a killed host, a cut link, a
/// heartbeat missed), so a job in flight there fails at once instead of waiting for an answer
/// that cannot come.
#[derive(Clone, Default)]
pub(super) struct Disconnects(Arc<Mutex<HashMap<u64, watch::Sender<bool>>>>);

impl Disconnects {
    pub(super) fn watch(&self, node_id: u64) -> watch::Receiver<bool> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node_id)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    /// Node `node_id`'s session is closed (or is being closed).
    pub(super) fn fire(&self, node_id: u64) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&node_id) {
            let _ = tx.send(true);
        }
    }
}

impl ractor_cluster::NodeEventSubscription for Disconnects {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.fire(ses.node_id);
    }

    fn node_session_authenticated(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
}
