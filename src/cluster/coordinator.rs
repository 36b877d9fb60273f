//! The coordinator's side: connect to the workers (scenario `slots.workers`, or `sim run
//! --workers`), set the run up on each, and run jobs on their slots. A remote slot is a thread
//! on the coordinator that takes jobs from the run's queue as a local slot does and waits for
//! the worker's answer, so the server, the clients and the aggregator do not know where a job
//! ran. Each worker has a watcher ([`supervise`]) that sends heartbeats, retires a worker that
//! stops answering, and sets it up again when it comes back.

mod remote;
mod supervise;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use super::tls::TlsClient;
use super::{decode, encode, ClusterError, Cookie, SetupReq, SetupRes, WorkerMsg, WORKER_GROUP};
use crate::model::AdapterLayout;
pub use remote::{read_trained, RemoteWorker, TrainAnswer, WorkerLive};
use supervise::Disconnects;

/// The workers a run uses.
#[derive(Debug, Clone)]
pub struct WorkerSet {
    /// Their addresses, `host:port`.
    pub addrs: Vec<String>,
    /// The cluster's shared secret.
    pub cookie: Cookie,
    /// TLS to the workers, when they serve it.
    pub tls: Option<TlsClient>,
}

/// How long a worker has to accept the connection and prove the cookie.
const JOIN_WITHIN: Duration = Duration::from_secs(10);
/// How long a worker may take to prepare the run (load the model, read and tokenise the data).
const SETUP_WITHIN: Duration = Duration::from_secs(1800);

/// What the coordinator prepared, for the workers to match.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The validated scenario (`scenario.ron`).
    pub scenario: String,
    /// SHA-256 of the pretrained base (None: generated from the seed).
    pub model_sha256: Option<String>,
    /// The prepared inputs' fingerprint.
    pub inputs: String,
    /// The run's adapter layout (what updates must look like).
    pub layout: Arc<AdapterLayout>,
    /// Whether training answers carry a loss (not with the synthetic trainer).
    pub loss_expected: bool,
}

/// The coordinator's node and its workers; dropping it stops the watchers and leaves the
/// cluster (the workers then drop the run's jobs).
pub struct Cluster {
    node: ActorRef<ractor_cluster::NodeServerMessage>,
    /// The workers, set up for the run.
    pub workers: Vec<Arc<RemoteWorker>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// What each worker did so far.
    pub fn records(&self) -> Vec<super::WorkerRecord> {
        self.workers.iter().map(|w| w.record()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
        self.node.stop(None);
    }
}

/// What joining needs: the coordinator's node, its connection watcher, TLS, the run.
#[derive(Clone)]
pub(super) struct Joiner {
    node: ActorRef<ractor_cluster::NodeServerMessage>,
    disconnects: Disconnects,
    tls: Option<TlsClient>,
    expect: Arc<Expect>,
}

/// Connect to every worker in `set` and set the run up on each.
///
/// # Errors
/// A worker that cannot be reached, does not authenticate (wrong cookie), refuses the run, or
/// prepared other inputs than `expect`.
pub async fn connect(set: &WorkerSet, expect: Expect) -> Result<Cluster, ClusterError> {
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = super::node_server(local, &set.cookie, "fedsim-coordinator".to_string(), None);
    let (node, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Node {
            what: "starting the coordinator's node".into(),
            message: e.to_string(),
        })?;
    let disconnects = Disconnects::default();
    node.cast(ractor_cluster::NodeServerMessage::SubscribeToEvents {
        id: "fedsim.disconnects".into(),
        subscription: Box::new(disconnects.clone()),
    })
    .map_err(|e| ClusterError::Node {
        what: "watching the workers' connections".into(),
        message: e.to_string(),
    })?;
    let joiner = Joiner {
        node: node.clone(),
        disconnects,
        tls: set.tls.clone(),
        expect: Arc::new(expect),
    };
    let mut cluster = Cluster {
        node,
        workers: Vec::new(),
        watchers: Vec::new(),
    };
    for addr in &set.addrs {
        let (link, slots) = joiner.join(addr).await?;
        tracing::info!(worker = %addr, slots, "worker set up");
        let worker = Arc::new(RemoteWorker::new(addr, slots, link, &joiner.expect));
        let watcher = tokio::spawn(supervise::watch(worker.clone(), joiner.clone()));
        cluster.watchers.push(watcher);
        cluster.workers.push(worker);
    }
    Ok(cluster)
}

impl Joiner {
    /// Connect to the worker at `addr`, set the run up there, and check what it prepared.
    pub(super) async fn join(&self, addr: &str) -> Result<(remote::Link, usize), ClusterError> {
        let (actor, node_id) = self.connect(addr).await?;
        let slots = set_up(addr, &actor, &self.expect).await?;
        let gone = self.disconnects.watch(node_id);
        Ok((
            remote::Link {
                actor,
                node_id,
                gone,
            },
            slots,
        ))
    }

    /// Connect to the worker at `addr` and find its actor once the session is authenticated.
    async fn connect(&self, addr: &str) -> Result<(ActorRef<WorkerMsg>, u64), ClusterError> {
        let err = |message: String| ClusterError::Worker {
            addr: addr.to_string(),
            message,
        };
        let peer: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("is not a host:port this machine can resolve".into()))?;
        let connected = match &self.tls {
            None => ractor_cluster::client_connect(&self.node, peer).await,
            Some(t) => {
                let (connector, name) = (t.connector.clone(), t.server_name.clone());
                ractor_cluster::client_connect_enc(&self.node, peer, connector, name).await
            }
        };
        connected.map_err(|e| {
            err(format!(
                "cannot connect ({e}); is `sim worker --listen {addr}` running?"
            ))
        })?;
        let started = tokio::time::Instant::now();
        while started.elapsed() < JOIN_WITHIN {
            if let Some(found) = worker_at(&self.node, peer).await {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            worker = addr,
            "no authenticated session: wrong cookie, or TLS?"
        );
        self.disconnect_peer(peer).await;
        Err(err(format!(
            "no authenticated fedsim worker within {} s: the cookie files differ, one side \
             uses TLS and the other not, or this is not `sim worker`",
            JOIN_WITHIN.as_secs()
        )))
    }

    /// Close the sessions with `peer` (a half-open one would otherwise linger).
    async fn disconnect_peer(&self, peer: SocketAddr) {
        let Ok(sessions) = ractor::call_t!(
            self.node,
            ractor_cluster::NodeServerMessage::GetSessions,
            1000
        ) else {
            return;
        };
        for s in sessions.values() {
            if s.peer_addr.parse::<SocketAddr>().ok() == Some(peer) {
                s.actor.stop(Some("fedsim: no authenticated worker".into()));
            }
        }
    }

    /// Close the session with node `node_id`.
    pub(super) async fn disconnect(&self, node_id: u64) {
        self.disconnects.fire(node_id);
        if let Ok(sessions) = ractor::call_t!(
            self.node,
            ractor_cluster::NodeServerMessage::GetSessions,
            1000
        ) {
            if let Some(s) = sessions.get(&node_id) {
                s.actor.stop(Some("fedsim: worker lost".into()));
            }
        }
    }
}

/// The worker actor of the ready session with `peer` and the session's node id, once its group
/// membership has arrived.
async fn worker_at(
    node: &ActorRef<ractor_cluster::NodeServerMessage>,
    peer: SocketAddr,
) -> Option<(ActorRef<WorkerMsg>, u64)> {
    let sessions =
        ractor::call_t!(node, ractor_cluster::NodeServerMessage::GetSessions, 1000).ok()?;
    for session in sessions
        .values()
        .filter(|s| s.peer_addr.parse::<SocketAddr>().ok() == Some(peer))
    {
        let ready = ractor::call_t!(
            session.actor,
            ractor_cluster::NodeSessionMessage::GetReadyState,
            1000
        );
        if !matches!(ready, Ok(true)) {
            continue;
        }
        let found = ractor::pg::get_members(&WORKER_GROUP.to_string())
            .into_iter()
            .find(|a| a.get_id().node() == session.node_id)
            .map(|a| (ActorRef::<WorkerMsg>::from(a), session.node_id));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Send the run to the worker and check what it prepared; the slots it offers.
async fn set_up(
    addr: &str,
    actor: &ActorRef<WorkerMsg>,
    expect: &Expect,
) -> Result<usize, ClusterError> {
    let err = |message: String| ClusterError::Worker {
        addr: addr.to_string(),
        message,
    };
    let req = encode(
        "setup request",
        &SetupReq {
            scenario: expect.scenario.clone(),
        },
    )?;
    let answer = actor
        .call(|reply| WorkerMsg::Setup(req, reply), Some(SETUP_WITHIN))
        .await
        .map_err(|e| err(format!("the setup call failed: {e}")))?;
    let answer = match answer {
        ractor::rpc::CallResult::Success(a) => a,
        ractor::rpc::CallResult::Timeout => {
            return Err(err(format!(
                "did not prepare the run within {} s",
                SETUP_WITHIN.as_secs()
            )))
        }
        ractor::rpc::CallResult::SenderError => return Err(err("left during setup".into())),
    };
    match decode::<SetupRes>("setup answer", &answer)? {
        SetupRes::Refused(reason) => Err(err(format!("refused the run: {reason}"))),
        SetupRes::Ready {
            slots,
            model_sha256,
            inputs,
        } => {
            if model_sha256 != expect.model_sha256 {
                return Err(err(format!(
                    "holds another base model: its SHA-256 is {}, the coordinator's {}; give \
                     the worker the same file (`sim fetch-model`)",
                    model_sha256.as_deref().unwrap_or("none (generated)"),
                    expect.model_sha256.as_deref().unwrap_or("none (generated)")
                )));
            }
            if inputs != expect.inputs {
                return Err(err(format!(
                    "prepared other inputs (fingerprint {inputs}, the coordinator's {}): its data \
                     files or tokenizer differ; give it the same files at the same paths",
                    expect.inputs
                )));
            }
            if slots == 0 {
                return Err(err("offers no slots".into()));
            }
            Ok(slots)
        }
    }
}
