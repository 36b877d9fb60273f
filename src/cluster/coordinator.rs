//! The coordinator's side: connect to the workers (`sim run --workers`), set the run up on
//! each, and run jobs on their slots. A remote slot is a thread on the coordinator that takes
//! jobs from the run's queue as a local slot does and waits for the worker's answer, so the
//! server, the clients and the aggregator do not know where a job ran.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use super::{
    decode, encode, ClusterError, Cookie, F32s, JobReq, JobRes, SetupReq, SetupRes, WorkerMsg,
    WorkerRecord, WORKER_GROUP,
};
use crate::messages::EvaluateRes;
use crate::model::{AdapterLayout, AdapterSet};
use crate::slots::{Job, Trained};
use crate::train::{LocalResult, TrainError};

/// The workers a run uses (`sim run --workers`).
#[derive(Debug, Clone)]
pub struct WorkerSet {
    /// Their addresses, `host:port`.
    pub addrs: Vec<String>,
    /// The cluster's shared secret.
    pub cookie: Cookie,
}

/// How long a worker has to accept the connection and prove the cookie.
const JOIN_WITHIN: Duration = Duration::from_secs(10);
/// How long a worker may take to prepare the run (load the model, read and tokenise the data).
const SETUP_WITHIN: Duration = Duration::from_secs(1800);

/// What the coordinator prepared, for the workers to match.
pub struct Expect<'a> {
    /// The validated scenario (`scenario.ron`).
    pub scenario: &'a str,
    /// SHA-256 of the pretrained base (None: generated from the seed).
    pub model_sha256: Option<&'a str>,
    /// The prepared inputs' fingerprint.
    pub inputs: &'a str,
}

/// The coordinator's node and its workers; dropping it leaves the cluster.
pub struct Cluster {
    node: ActorRef<ractor_cluster::NodeServerMessage>,
    /// The workers, set up for the run.
    pub workers: Vec<Arc<RemoteWorker>>,
}

impl Cluster {
    /// What each worker did so far.
    pub fn records(&self) -> Vec<WorkerRecord> {
        self.workers.iter().map(|w| w.record()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.node.stop(None);
    }
}

/// One worker, set up for the run.
pub struct RemoteWorker {
    /// Its address.
    pub addr: String,
    /// Slots it offers.
    pub slots: usize,
    actor: ActorRef<WorkerMsg>,
    layout: Arc<AdapterLayout>,
    runtime: tokio::runtime::Handle,
    /// Jobs answered, nanoseconds waited, bytes sent and received.
    counters: [AtomicU64; 4],
    /// Set once it is lost.
    lost: AtomicBool,
    /// Turns true when its connection closes.
    gone: watch::Receiver<bool>,
}

/// Connect to every worker in `set` and set the run up on each.
///
/// # Errors
/// A worker that cannot be reached, does not authenticate (wrong cookie), refuses the run, or
/// prepared other inputs than `expect`.
pub async fn connect(
    set: &WorkerSet,
    expect: &Expect<'_>,
    layout: &Arc<AdapterLayout>,
) -> Result<Cluster, ClusterError> {
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = super::node_server(local, &set.cookie, "fedsim-coordinator".to_string());
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
    let mut cluster = Cluster {
        node,
        workers: Vec::new(),
    };
    for addr in &set.addrs {
        let (actor, node_id) = join(&cluster.node, addr).await?;
        let mut worker = set_up(addr, actor, expect, layout).await?;
        worker.gone = disconnects.watch(node_id);
        cluster.workers.push(Arc::new(worker));
    }
    Ok(cluster)
}

/// Tells each worker's slots when its connection closes (a killed host, a cut link), so a job
/// in flight there fails at once instead of waiting for an answer that cannot come.
#[derive(Clone, Default)]
struct Disconnects(Arc<std::sync::Mutex<std::collections::HashMap<u64, watch::Sender<bool>>>>);

impl Disconnects {
    fn watch(&self, node_id: u64) -> watch::Receiver<bool> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node_id)
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }
}

impl ractor_cluster::NodeEventSubscription for Disconnects {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&ses.node_id) {
            let _ = tx.send(true);
        }
    }

    fn node_session_authenticated(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
}

/// Connect to the worker at `addr` and find its actor once the session is authenticated.
async fn join(
    node: &ActorRef<ractor_cluster::NodeServerMessage>,
    addr: &str,
) -> Result<(ActorRef<WorkerMsg>, u64), ClusterError> {
    let err = |message: String| ClusterError::Worker {
        addr: addr.to_string(),
        message,
    };
    let peer: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err("is not a host:port this machine can resolve".into()))?;
    ractor_cluster::client_connect(node, peer)
        .await
        .map_err(|e| {
            err(format!(
                "cannot connect ({e}); is `sim worker --listen {addr}` running?"
            ))
        })?;
    let started = tokio::time::Instant::now();
    while started.elapsed() < JOIN_WITHIN {
        if let Some(found) = worker_at(node, peer).await {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(worker = addr, "no authenticated session: wrong cookie?");
    Err(err(format!(
        "no authenticated fedsim worker within {} s: the cookie files differ, or this is not \
         `sim worker`",
        JOIN_WITHIN.as_secs()
    )))
}

/// The worker actor of the ready session with `peer` and the session's node id, once its group
/// membership has arrived.
async fn worker_at(
    node: &ActorRef<ractor_cluster::NodeServerMessage>,
    peer: SocketAddr,
) -> Option<(ActorRef<WorkerMsg>, u64)> {
    let sessions =
        ractor::call_t!(node, ractor_cluster::NodeServerMessage::GetSessions, 1000).ok()?;
    let session = sessions
        .values()
        .find(|s| s.peer_addr.parse::<SocketAddr>().ok() == Some(peer))?;
    let ready = ractor::call_t!(
        session.actor,
        ractor_cluster::NodeSessionMessage::GetReadyState,
        1000
    )
    .ok()?;
    if !ready {
        return None;
    }
    ractor::pg::get_members(&WORKER_GROUP.to_string())
        .into_iter()
        .find(|a| a.get_id().node() == session.node_id)
        .map(|a| (ActorRef::<WorkerMsg>::from(a), session.node_id))
}

/// Send the run to the worker and check what it prepared.
async fn set_up(
    addr: &str,
    actor: ActorRef<WorkerMsg>,
    expect: &Expect<'_>,
    layout: &Arc<AdapterLayout>,
) -> Result<RemoteWorker, ClusterError> {
    let err = |message: String| ClusterError::Worker {
        addr: addr.to_string(),
        message,
    };
    let req = encode(
        "setup request",
        &SetupReq {
            scenario: expect.scenario.to_string(),
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
            if model_sha256.as_deref() != expect.model_sha256 {
                return Err(err(format!(
                    "holds another base model: its SHA-256 is {}, the coordinator's {}; give \
                     the worker the same file (`sim fetch-model`)",
                    model_sha256.as_deref().unwrap_or("none (generated)"),
                    expect.model_sha256.unwrap_or("none (generated)")
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
            tracing::info!(worker = addr, slots, "worker set up");
            Ok(RemoteWorker {
                addr: addr.to_string(),
                slots,
                actor,
                layout: layout.clone(),
                runtime: tokio::runtime::Handle::current(),
                counters: Default::default(),
                lost: AtomicBool::new(false),
                gone: watch::channel(false).1,
            })
        }
    }
}

impl crate::slots::Remote for RemoteWorker {
    fn slots(&self) -> usize {
        self.slots
    }

    fn alive(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && !*self.gone.borrow()
    }

    /// Run `job` on the worker and send its outcome where the job says (blocking: a remote
    /// slot's thread calls it). A lost worker or a malformed answer is the job's error.
    fn run(&self, job: Job) {
        match job {
            Job::Train {
                global,
                shard,
                schedule,
                rule,
                reply,
            } => {
                let req = JobReq::Train {
                    global: F32s(global.data().to_vec()),
                    shard: shard.to_vec(),
                    dropout_seed: schedule.dropout_seed,
                    batches: schedule.batches,
                    lr: rule.lr,
                    weight_decay: rule.weight_decay,
                    proximal_mu: rule.proximal_mu,
                };
                let _ = reply.send(self.call(&req).and_then(|r| self.trained(r)));
            }
            Job::Evaluate { ins, reply } => {
                let req = JobReq::Evaluate {
                    round: ins.round,
                    adapter: ins.adapter.as_ref().map(|a| F32s(a.data().to_vec())),
                    task: ins.task,
                };
                let _ = reply.send(self.call(&req).and_then(|r| self.evaluated(r)));
            }
        }
    }
}

impl RemoteWorker {
    /// The worker is lost (connection gone, or an answer that breaks the protocol): its
    /// slots retire, and the job that found out fails with `worker_lost`.
    fn lost(&self, message: String) -> TrainError {
        if !self.lost.swap(true, Ordering::SeqCst) {
            tracing::warn!(worker = %self.addr, %message, "worker lost");
        }
        TrainError::WorkerLost {
            worker: self.addr.clone(),
            message,
        }
    }

    /// What it did so far.
    pub fn record(&self) -> WorkerRecord {
        let [jobs, nanos, sent, received] =
            self.counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        WorkerRecord {
            addr: self.addr.clone(),
            slots: self.slots,
            jobs,
            busy_seconds: nanos as f64 * 1e-9,
            bytes_sent: sent,
            bytes_received: received,
            lost: !crate::slots::Remote::alive(self),
        }
    }

    /// Send `req` and wait for the answer.
    fn call(&self, req: &JobReq) -> Result<JobRes, TrainError> {
        let bytes = encode("job request", req).map_err(|e| self.lost(e.to_string()))?;
        let count = |i: usize, n: u64| self.counters[i].fetch_add(n, Ordering::Relaxed);
        count(2, bytes.len() as u64);
        let start = std::time::Instant::now();
        let mut gone = self.gone.clone();
        let answer = self.runtime.block_on(async {
            tokio::select! {
                a = self.actor.call(|reply| WorkerMsg::Run(bytes, reply), None) => Some(a),
                _ = gone.wait_for(|g| *g) => None,
            }
        });
        count(1, start.elapsed().as_nanos() as u64);
        let answer = answer.ok_or_else(|| self.lost("its connection closed mid-job".into()))?;
        match answer.map_err(|e| self.lost(e.to_string()))? {
            ractor::rpc::CallResult::Success(a) => {
                count(0, 1);
                count(3, a.len() as u64);
                decode::<JobRes>("job answer", &a).map_err(|e| self.lost(e.to_string()))
            }
            ractor::rpc::CallResult::Timeout => Err(self.lost("the job timed out".into())),
            ractor::rpc::CallResult::SenderError => {
                Err(self.lost("the connection closed during the job".into()))
            }
        }
    }

    /// A training answer, checked like an upload (the run's adapter shape).
    fn trained(&self, res: JobRes) -> Result<Trained, TrainError> {
        match res {
            JobRes::Trained {
                update,
                train_loss,
                steps,
                tokens,
                host_seconds,
            } if update.0.len() == self.layout.len() => Ok(Trained {
                result: LocalResult {
                    update: AdapterSet::new(self.layout.clone(), update.0),
                    train_loss,
                    steps,
                    tokens,
                },
                host_seconds,
            }),
            JobRes::Trained { update, .. } => Err(self.lost(format!(
                "answered an update of {} values where the run's adapter has {}",
                update.0.len(),
                self.layout.len()
            ))),
            JobRes::Failed(reason) => Err(TrainError::Remote {
                worker: self.addr.clone(),
                reason,
            }),
            JobRes::Evaluated(_) => {
                Err(self.lost("answered a training job with an evaluation".into()))
            }
        }
    }

    fn evaluated(&self, res: JobRes) -> Result<EvaluateRes, TrainError> {
        match res {
            JobRes::Evaluated(r) => Ok(r),
            JobRes::Failed(reason) => Err(TrainError::Remote {
                worker: self.addr.clone(),
                reason,
            }),
            JobRes::Trained { .. } => {
                Err(self.lost("answered an evaluation with a training result".into()))
            }
        }
    }
}
