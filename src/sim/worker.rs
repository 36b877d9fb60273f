//! `sim worker`: a node that offers its slots to a coordinator. It holds no run until the
//! coordinator sends one ([`SetupReq`]); it then prepares that scenario from its own files —
//! the model from its cache, the data from the same paths — starts its slots, and answers with
//! what it prepared, so the coordinator can refuse a worker whose inputs differ.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::cluster::{
    decode, encode, ClusterError, Cookie, F32s, JobReq, JobRes, SetupReq, SetupRes, WorkerMsg,
    WORKER_GROUP,
};
use crate::model::{AdapterLayout, AdapterSet};
use crate::scenario::Scenario;
use crate::slots::{Job, SlotContext, SlotHandle, SlotPool};
use crate::train::{Schedule, StepRule};

/// How a worker serves.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Where it listens for the coordinator (loopback unless told otherwise).
    pub listen: SocketAddr,
    /// The cluster's shared secret.
    pub cookie: Cookie,
    /// Slots it offers.
    pub slots: usize,
    /// Matmul threads per slot.
    pub threads_per_slot: usize,
    /// Serve TLS (`sim worker --tls-cert --tls-key`); None: plain TCP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serve until `shutdown` completes: listen, join the worker group, answer the coordinator.
///
/// # Errors
/// The node cannot start or listen.
pub async fn serve(
    opts: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClusterError> {
    let node = crate::cluster::node_server(
        opts.listen,
        &opts.cookie,
        format!("fedsim-worker-{}", opts.listen.port()),
        opts.tls.clone(),
    );
    let fail = |what: &str, e: &dyn std::fmt::Display| ClusterError::Node {
        what: what.to_string(),
        message: e.to_string(),
    };
    let (node, node_handle) = Actor::spawn(None, node, ())
        .await
        .map_err(|e| fail(&format!("listening on {}", opts.listen), &e))?;
    let serving = Shared::default();
    node.cast(ractor_cluster::NodeServerMessage::SubscribeToEvents {
        id: "fedsim.coordinators".into(),
        subscription: Box::new(Coordinators {
            serving: serving.clone(),
            sessions: Arc::default(),
        }),
    })
    .map_err(|e| fail("watching the coordinators' connections", &e))?;
    let actor = WorkerActor {
        opts: opts.clone(),
        serving,
    };
    let (worker, worker_handle) = Actor::spawn(None, actor, ())
        .await
        .map_err(|e| fail("starting the worker", &e))?;
    tracing::info!(listen = %opts.listen, slots = opts.slots, tls = opts.tls.is_some(), "worker ready");
    shutdown.await;
    worker.stop(None);
    node.stop(None);
    let _ = worker_handle.await;
    let _ = node_handle.await;
    Ok(())
}

struct WorkerActor {
    opts: WorkerOptions,
    serving: Shared,
}

/// The run being served, shared by the actor and the connection watcher.
type Shared = Arc<Mutex<Option<Serving>>>;

/// The run being served.
struct Serving {
    /// The scenario text it was prepared from (a coordinator reconnecting reuses it).
    scenario: String,
    answer: Vec<u8>,
    pool: SlotPool,
    handle: SlotHandle,
    layout: Arc<AdapterLayout>,
    /// What its slots need, to start them afresh when a coordinator leaves.
    ctx: Arc<SlotContext>,
    slots: usize,
    threads: usize,
}

impl Serving {
    /// Drop the jobs of a coordinator that left (queued ones unrun; a training job in
    /// progress stops before its next step) and start fresh slots for the next one.
    fn restart(&mut self) {
        match SlotPool::start(self.ctx.clone(), self.slots, self.threads, 1) {
            Ok(pool) => {
                self.handle = pool.handle();
                std::mem::replace(&mut self.pool, pool).abandon();
            }
            Err(e) => tracing::warn!(error = %e, "cannot restart the slots"),
        }
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Option<Serving>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches the coordinators' sessions: when the last one closes (the coordinator stopped, was
/// killed, or gave the worker up), the run's jobs are dropped.
struct Coordinators {
    serving: Shared,
    sessions: Arc<Mutex<HashSet<u64>>>,
}

impl ractor_cluster::NodeEventSubscription for Coordinators {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}

    fn node_session_authenticated(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ses.node_id);
    }

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if !sessions.remove(&ses.node_id) || !sessions.is_empty() {
            return;
        }
        drop(sessions);
        if let Some(s) = lock(&self.serving).as_mut() {
            tracing::info!("the coordinator left: its jobs are dropped");
            s.restart();
        }
    }
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<WorkerMsg>, (): ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(WORKER_GROUP.to_string(), vec![me.get_cell()]);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<WorkerMsg>,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let Some(s) = lock(&self.serving).take() {
            s.pool.abandon();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Setup(bytes, reply) => {
                let answer = self.setup(&bytes).await;
                let _ = reply.send(answer);
            }
            WorkerMsg::Run(bytes, reply) => run(&bytes, &self.serving, reply),
            WorkerMsg::Ping(bytes, reply) => {
                let _ = reply.send(bytes);
            }
        }
        Ok(())
    }
}

impl WorkerActor {
    /// Prepare the run in `bytes` (or keep the one already prepared from the same text).
    async fn setup(&self, bytes: &[u8]) -> Vec<u8> {
        let req: SetupReq = match decode("setup request", bytes) {
            Ok(r) => r,
            Err(e) => return refusal(e.to_string()),
        };
        {
            let mut serving = lock(&self.serving);
            if let Some(s) = serving.as_ref().filter(|s| s.scenario == req.scenario) {
                return s.answer.clone();
            }
            if let Some(old) = serving.take() {
                old.pool.abandon();
            }
        }
        let (slots, threads) = (self.opts.slots, self.opts.threads_per_slot);
        let text = req.scenario.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&text, slots, threads)).await;
        match prepared {
            Ok(Ok((serving, res))) => {
                let answer = encode("setup answer", &res).unwrap_or_default();
                *lock(&self.serving) = Some(Serving {
                    scenario: req.scenario,
                    answer: answer.clone(),
                    ..serving
                });
                answer
            }
            Ok(Err(reason)) => refusal(reason),
            Err(e) => refusal(format!("preparing the run panicked: {e}")),
        }
    }
}

fn refusal(reason: String) -> Vec<u8> {
    tracing::warn!(%reason, "refusing the run");
    encode("setup answer", &SetupRes::Refused(reason)).unwrap_or_default()
}

/// Validate the coordinator's scenario, prepare its inputs here, start the slots.
fn prepare(text: &str, slots: usize, threads: usize) -> Result<(Serving, SetupRes), String> {
    // This worker's own slots, not the coordinator's.
    let own = [
        "slots.workers=null".to_string(),
        format!("slots.count={slots}"),
        format!("slots.threads_per_slot={threads}"),
        "slots.client_resources=1".to_string(),
        "slots.assignment=\"FirstFree\"".to_string(),
    ];
    let s = Scenario::from_ron(text, Path::new("<the coordinator's scenario>"), &own)
        .map_err(|e| crate::fmt::chain(&e))?;
    let prep = super::prepare(&s).map_err(|e| crate::fmt::chain(&e))?;
    let layout = super::layout_of(&s);
    let (_, ctx) =
        super::wiring::slot_context(&s, &prep, &layout).map_err(|e| crate::fmt::chain(&e))?;
    let pool =
        SlotPool::start(ctx.clone(), slots, threads, 1).map_err(|e| crate::fmt::chain(&e))?;
    let res = SetupRes::Ready {
        slots,
        model_sha256: prep
            .lora
            .as_ref()
            .and_then(|l| l.source.as_ref())
            .map(|m| m.sha256.clone()),
        inputs: super::checkpoint::inputs_fingerprint(&prep),
    };
    tracing::info!(scenario = %s.name, slots, "prepared the coordinator's run");
    let handle = pool.handle();
    Ok((
        Serving {
            scenario: String::new(),
            answer: Vec::new(),
            pool,
            handle,
            layout,
            ctx,
            slots,
            threads,
        },
        res,
    ))
}

/// What a job's answer is waited on with.
type Answer = std::pin::Pin<Box<dyn Future<Output = JobRes> + Send>>;

fn encoded(res: JobRes) -> Vec<u8> {
    encode("job answer", &res).unwrap_or_default()
}

/// Queue the job in `bytes` on the slots; the answer goes back when it is done.
fn run(bytes: &[u8], shared: &Shared, reply: RpcReplyPort<Vec<u8>>) {
    let serving = lock(shared);
    let Some(serving) = serving.as_ref() else {
        let _ = reply.send(encoded(JobRes::Failed(
            "the worker has no run set up".into(),
        )));
        return;
    };
    let job = decode::<JobReq>("job request", bytes)
        .map_err(|e| e.to_string())
        .and_then(|req| job_of(req, &serving.layout));
    match job {
        Err(reason) => {
            let _ = reply.send(encoded(JobRes::Failed(reason)));
        }
        Ok((job, wait)) => {
            if serving.handle.submit(job).is_err() {
                let _ = reply.send(encoded(JobRes::Failed(
                    "the worker's slots are closed".into(),
                )));
                return;
            }
            tokio::spawn(async move {
                let _ = reply.send(encoded(wait.await));
            });
        }
    }
}

/// The slot job of a request, checked against the run's adapter layout, and its answer.
fn job_of(req: JobReq, layout: &Arc<AdapterLayout>) -> Result<(Job, Answer), String> {
    let adapter = |values: Vec<f32>| -> Result<Arc<AdapterSet>, String> {
        if values.len() != layout.len() {
            return Err(format!(
                "an adapter of {} values where the run's has {}",
                values.len(),
                layout.len()
            ));
        }
        Ok(Arc::new(AdapterSet::new(layout.clone(), values)))
    };
    match req {
        JobReq::Train {
            global,
            shard,
            dropout_seed,
            batches,
            lr,
            weight_decay,
            proximal_mu,
        } => {
            let schedule = Schedule {
                dropout_seed,
                batches,
            };
            let rule = StepRule {
                lr,
                weight_decay,
                proximal_mu,
            };
            Ok(train_job(adapter(global.0)?, shard, schedule, rule))
        }
        JobReq::Evaluate {
            round,
            adapter: values,
            task,
        } => {
            let ins = crate::messages::EvaluateIns {
                round,
                adapter: values.map(|v| adapter(v.0)).transpose()?,
                task,
            };
            Ok(evaluate_job(ins))
        }
    }
}

fn dropped() -> JobRes {
    JobRes::Failed("the worker's slot dropped the job".into())
}

fn train_job(
    global: Arc<AdapterSet>,
    shard: Vec<u32>,
    schedule: Schedule,
    rule: StepRule,
) -> (Job, Answer) {
    let (tx, rx) = oneshot::channel();
    let job = Job::Train {
        global,
        shard: shard.into(),
        schedule,
        rule,
        reply: tx,
    };
    let wait = async move {
        match rx.await {
            Ok(Ok(t)) => JobRes::Trained {
                update: F32s(t.result.update.data().to_vec()),
                train_loss: t.result.train_loss,
                steps: t.result.steps,
                tokens: t.result.tokens,
                host_seconds: t.host_seconds,
                split: t.result.split,
            },
            Ok(Err(e)) => JobRes::Failed(crate::fmt::chain(&e)),
            Err(_) => dropped(),
        }
    };
    (job, Box::pin(wait))
}

fn evaluate_job(ins: crate::messages::EvaluateIns) -> (Job, Answer) {
    let (tx, rx) = oneshot::channel();
    let wait = async move {
        match rx.await {
            Ok(Ok(r)) => JobRes::Evaluated(r),
            Ok(Err(e)) => JobRes::Failed(crate::fmt::chain(&e)),
            Err(_) => dropped(),
        }
    };
    (Job::Evaluate { ins, reply: tx }, Box::pin(wait))
}
