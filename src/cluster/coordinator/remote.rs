//! One worker as the run's slots see it: jobs go out as [`JobReq`]s and come back checked
//! like uploads; a closed connection or a malformed answer fails the job with `worker_lost`
//! and retires the worker until its watcher sets it up again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ractor::ActorRef;
use tokio::sync::watch;

use crate::cluster::{decode, encode, F32s, JobReq, JobRes, WorkerMsg, WorkerRecord};
use crate::messages::EvaluateRes;
use crate::model::{AdapterLayout, AdapterSet};
use crate::slots::{Job, Trained};
use crate::train::{LocalResult, TrainError};

/// The session a worker is reached through.
#[derive(Clone)]
pub(in crate::cluster) struct Link {
    pub(super) actor: ActorRef<WorkerMsg>,
    pub(super) node_id: u64,
    /// Turns true when the session closes.
    pub(super) gone: watch::Receiver<bool>,
}

/// A worker's counters, as the metrics sampler reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerLive {
    /// Its address (the `worker` label).
    pub addr: String,
    /// Slots it offers.
    pub slots: usize,
    /// Whether it answers now.
    pub up: bool,
    /// Jobs sent and not answered yet.
    pub in_flight: u64,
    /// Jobs answered.
    pub jobs: u64,
    /// Seconds its remote slots waited on it, summed.
    pub busy_seconds: f64,
    /// Bytes of requests sent to it.
    pub bytes_sent: u64,
    /// Bytes of answers received from it.
    pub bytes_received: u64,
    /// Times it was lost.
    pub losses: u64,
    /// Times it came back.
    pub rejoins: u64,
    /// Round trips of the jobs answered since the last read (seconds).
    pub round_trips: Vec<f64>,
}

/// One worker, set up for the run.
pub struct RemoteWorker {
    /// Its address.
    pub addr: String,
    /// Slots it offers.
    pub slots: usize,
    link: RwLock<Link>,
    layout: Arc<AdapterLayout>,
    /// Whether a training answer must carry a finite loss (the synthetic trainer has none).
    loss_expected: bool,
    runtime: tokio::runtime::Handle,
    /// Jobs answered, nanoseconds waited, bytes sent, bytes received, jobs in flight,
    /// losses, rejoins.
    counters: [AtomicU64; 7],
    /// Round trips not read by the metrics sampler yet.
    round_trips: Mutex<Vec<f64>>,
    /// Set while it is lost.
    lost: AtomicBool,
}

const JOBS: usize = 0;
const NANOS: usize = 1;
const SENT: usize = 2;
const RECEIVED: usize = 3;
const IN_FLIGHT: usize = 4;
const LOSSES: usize = 5;
const REJOINS: usize = 6;
/// Round trips kept between two reads of the sampler.
const MAX_ROUND_TRIPS: usize = 4096;

impl RemoteWorker {
    pub(super) fn new(addr: &str, slots: usize, link: Link, expect: &super::Expect) -> Self {
        Self {
            addr: addr.to_string(),
            slots,
            link: RwLock::new(link),
            layout: expect.layout.clone(),
            loss_expected: expect.loss_expected,
            runtime: tokio::runtime::Handle::current(),
            counters: Default::default(),
            round_trips: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
        }
    }

    pub(super) fn link(&self) -> Link {
        self.link.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// It came back: jobs go to the new session.
    pub(super) fn relink(&self, link: Link) {
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = link;
        self.counters[REJOINS].fetch_add(1, Ordering::Relaxed);
        self.lost.store(false, Ordering::SeqCst);
    }

    /// The worker is lost (connection gone, no heartbeat, or an answer that breaks the
    /// protocol): its slots take no jobs until it is back.
    pub(super) fn mark_lost(&self, message: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.counters[LOSSES].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(worker = %self.addr, %message, "worker lost");
        }
    }

    fn lost(&self, message: String) -> TrainError {
        self.mark_lost(&message);
        TrainError::WorkerLost {
            worker: self.addr.clone(),
            message,
        }
    }

    fn count(&self, i: usize) -> u64 {
        self.counters[i].load(Ordering::Relaxed)
    }

    /// What it did so far.
    pub fn record(&self) -> WorkerRecord {
        WorkerRecord {
            addr: self.addr.clone(),
            slots: self.slots,
            jobs: self.count(JOBS),
            busy_seconds: self.count(NANOS) as f64 * 1e-9,
            bytes_sent: self.count(SENT),
            bytes_received: self.count(RECEIVED),
            lost: !crate::slots::Remote::alive(self),
            losses: self.count(LOSSES),
            rejoins: self.count(REJOINS),
        }
    }

    /// Its counters now, and the round trips since the last call (they are handed out once).
    pub fn live(&self) -> WorkerLive {
        let r = self.record();
        let mut trips = self.round_trips.lock().unwrap_or_else(|p| p.into_inner());
        WorkerLive {
            addr: r.addr,
            slots: r.slots,
            up: !r.lost,
            in_flight: self.count(IN_FLIGHT),
            jobs: r.jobs,
            busy_seconds: r.busy_seconds,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            losses: r.losses,
            rejoins: r.rejoins,
            round_trips: std::mem::take(&mut *trips),
        }
    }

    /// Send `req` and wait for the answer (or for the session to close).
    fn call(&self, req: &JobReq) -> Result<JobRes, TrainError> {
        let bytes = encode("job request", req).map_err(|e| self.lost(e.to_string()))?;
        let add = |i: usize, n: u64| self.counters[i].fetch_add(n, Ordering::Relaxed);
        add(SENT, bytes.len() as u64);
        let link = self.link();
        let mut gone = link.gone.clone();
        add(IN_FLIGHT, 1);
        let start = std::time::Instant::now();
        let answer = self.runtime.block_on(async {
            tokio::select! {
                a = link.actor.call(|reply| WorkerMsg::Run(bytes, reply), None) => Some(a),
                _ = gone.wait_for(|g| *g) => None,
            }
        });
        let elapsed = start.elapsed();
        self.counters[IN_FLIGHT].fetch_sub(1, Ordering::Relaxed);
        add(NANOS, elapsed.as_nanos() as u64);
        let answer = answer.ok_or_else(|| self.lost("its connection closed mid-job".into()))?;
        match answer.map_err(|e| self.lost(e.to_string()))? {
            ractor::rpc::CallResult::Success(a) => {
                add(JOBS, 1);
                add(RECEIVED, a.len() as u64);
                let mut trips = self.round_trips.lock().unwrap_or_else(|p| p.into_inner());
                if trips.len() < MAX_ROUND_TRIPS {
                    trips.push(elapsed.as_secs_f64());
                }
                drop(trips);
                decode::<JobRes>("job answer", &a).map_err(|e| self.lost(e.to_string()))
            }
            ractor::rpc::CallResult::Timeout => Err(self.lost("the job timed out".into())),
            ractor::rpc::CallResult::SenderError => {
                Err(self.lost("the connection closed during the job".into()))
            }
        }
    }

    /// A training answer, checked like an upload (see [`read_trained`]).
    fn trained(&self, res: JobRes) -> Result<Trained, TrainError> {
        match read_trained(res, &self.layout, self.loss_expected) {
            TrainAnswer::Trained(t) => Ok(t),
            TrainAnswer::Failed(reason) => Err(TrainError::Remote {
                worker: self.addr.clone(),
                reason,
            }),
            TrainAnswer::Malformed(why) => Err(self.lost(why)),
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

impl crate::slots::Remote for RemoteWorker {
    fn name(&self) -> &str {
        &self.addr
    }

    fn slots(&self) -> usize {
        self.slots
    }

    fn alive(&self) -> bool {
        let link = self.link.read().unwrap_or_else(|p| p.into_inner());
        !self.lost.load(Ordering::SeqCst) && !*link.gone.borrow()
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

/// How a worker's answer to a training job reads.
#[derive(Debug)]
pub enum TrainAnswer {
    /// A result the run can use.
    Trained(Trained),
    /// The worker's own failure (a diverged loss, no examples): the job failed, the worker is
    /// fine.
    Failed(String),
    /// An answer that breaks the protocol: the job fails and the worker is retired.
    Malformed(String),
}

/// Check a worker's answer to a training job like an upload: an update of the run's adapter
/// length, a finite loss where the trainer reports one (`loss_expected`; the synthetic trainer
/// has none), finite non-negative host seconds. The update's values are checked by the
/// aggregator, as every upload's are.
pub fn read_trained(res: JobRes, layout: &Arc<AdapterLayout>, loss_expected: bool) -> TrainAnswer {
    let (update, train_loss, steps, tokens, host_seconds, split) = match res {
        JobRes::Trained {
            update,
            train_loss,
            steps,
            tokens,
            host_seconds,
            split,
        } => (update, train_loss, steps, tokens, host_seconds, split),
        JobRes::Failed(reason) => return TrainAnswer::Failed(reason),
        JobRes::Evaluated(_) => {
            return TrainAnswer::Malformed("answered a training job with an evaluation".into())
        }
    };
    if update.0.len() != layout.len() {
        return TrainAnswer::Malformed(format!(
            "answered an update of {} values where the run's adapter has {}",
            update.0.len(),
            layout.len()
        ));
    }
    if (loss_expected && !train_loss.is_finite()) || train_loss.is_infinite() {
        return TrainAnswer::Malformed(format!("answered a loss of {train_loss}"));
    }
    if !(host_seconds.is_finite() && host_seconds >= 0.0) {
        return TrainAnswer::Malformed(format!("answered {host_seconds} host seconds"));
    }
    TrainAnswer::Trained(Trained {
        result: LocalResult {
            update: AdapterSet::new(layout.clone(), update.0),
            train_loss,
            steps,
            tokens,
            split,
        },
        host_seconds,
    })
}
