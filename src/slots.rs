//! Compute slots: dedicated OS threads that run candle training and evaluation jobs, never on
//! the async executor. Each slot owns a device handle and a rayon pool of its own (so slots ×
//! threads never oversubscribe the cores); all slots share one frozen base model per device.
//! Jobs arrive over a crossbeam channel; results go back over tokio oneshot channels.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::messages::{EvaluateIns, EvaluateRes};
use crate::model::{AdapterLayout, AdapterSet};
use crate::train::{LocalResult, Schedule, StepRule, TrainError};
use crate::trainer::LocalTrainer;

mod remote;

use remote::Capacity;
pub use remote::Remote;

/// Errors of the slot pool.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// A slot thread or its rayon pool could not be started.
    #[error("cannot start slot {slot}: {message}")]
    Start {
        /// Slot index.
        slot: usize,
        /// Why.
        message: String,
    },
    /// The pool has shut down.
    #[error("the slot pool is closed")]
    Closed,
}

/// What every slot needs: the adapter layout and the trainer.
pub struct SlotContext {
    /// Adapter layout (what updates look like).
    pub layout: Arc<AdapterLayout>,
    /// What trains and evaluates.
    pub trainer: LocalTrainer,
}

/// A unit of work for a slot. Slots know nothing of clients or privacy: they train and
/// evaluate.
pub enum Job {
    /// Local training on a shard, from the global adapter.
    Train {
        /// The global adapter as downloaded (decoded once per round, shared).
        global: Arc<AdapterSet>,
        /// Indices of the client's training examples.
        shard: Arc<[u32]>,
        /// The batches to train on (drawn beforehand).
        schedule: Schedule,
        /// Learning rate, weight decay, FedProx's μ.
        rule: StepRule,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Trained, TrainError>>,
    },
    /// Server-side evaluation on the held-out split.
    Evaluate {
        /// What to evaluate.
        ins: EvaluateIns,
        /// Where the result goes.
        reply: oneshot::Sender<Result<EvaluateRes, TrainError>>,
    },
}

/// What a training job produced.
#[derive(Debug)]
pub struct Trained {
    /// `local − global`, the update, and its loss, steps and tokens.
    pub result: LocalResult,
    /// Host seconds the slot spent.
    pub host_seconds: f64,
}

/// Cheap, cloneable handle for submitting jobs.
#[derive(Clone)]
pub struct SlotHandle {
    tx: Sender<Job>,
    /// One queue per slot, for pinned jobs.
    pinned: Arc<Vec<Sender<Job>>>,
    /// Which slots can still run jobs.
    capacity: Arc<Capacity>,
}

impl SlotHandle {
    /// Queue a job.
    ///
    /// # Errors
    /// [`SlotError::Closed`] when the pool has shut down.
    pub fn submit(&self, job: Job) -> Result<(), SlotError> {
        self.tx.send(job).map_err(|_| SlotError::Closed)
    }

    /// Queue a job for slot `slot mod slots` only (stable placement).
    ///
    /// # Errors
    /// [`SlotError::Closed`] when the pool has shut down.
    pub fn submit_pinned(&self, slot: usize, job: Job) -> Result<(), SlotError> {
        if self.pinned.is_empty() {
            return self.submit(job); // no local slot to pin to
        }
        self.pinned[slot % self.pinned.len()]
            .send(job)
            .map_err(|_| SlotError::Closed)
    }

    /// Number of local slots.
    pub fn slots(&self) -> usize {
        self.pinned.len()
    }

    /// Whether any slot can run a job: a local one, or a worker that is not lost.
    pub fn usable(&self) -> bool {
        self.capacity.usable()
    }

    /// The workers that are lost, by address.
    pub fn lost_workers(&self) -> Vec<String> {
        self.capacity.lost()
    }
}

/// Reads how long each slot has been busy.
#[derive(Clone)]
pub struct SlotBusy(Arc<Vec<AtomicU64>>);

impl SlotBusy {
    /// Seconds per slot.
    pub fn seconds(&self) -> Vec<f64> {
        self.0
            .iter()
            .map(|n| n.load(Ordering::Relaxed) as f64 * 1e-9)
            .collect()
    }
}

/// The running slots.
pub struct SlotPool {
    tx: Option<Sender<Job>>,
    pinned: Option<Arc<Vec<Sender<Job>>>>,
    threads: Vec<JoinHandle<()>>,
    busy_nanos: Arc<Vec<AtomicU64>>,
    /// Set by [`SlotPool::abandon`]: queued jobs are dropped unrun.
    abandoned: Arc<AtomicBool>,
    /// The shared queue, for remote slots to take jobs from.
    queue: Receiver<Job>,
    /// Where a remote slot puts back a job it took after its worker was lost (None once the
    /// pool is closing, so the queue can close).
    requeue: Arc<std::sync::Mutex<Option<Sender<Job>>>>,
    /// Local slots and workers: which can run jobs.
    capacity: Arc<Capacity>,
}

impl SlotPool {
    /// Start `slots` slot threads with `threads_per_slot` matmul threads each.
    ///
    /// # Errors
    /// When a thread or rayon pool cannot be created.
    pub fn start(
        ctx: Arc<SlotContext>,
        slots: usize,
        threads_per_slot: usize,
        per_job: usize,
    ) -> Result<Self, SlotError> {
        // A job takes `per_job` slots (Flower's client_resources): it waits for that many
        // tokens and computes with that many slots' threads.
        let per_job = per_job.clamp(1, slots.max(1));
        let job_threads = threads_per_slot * per_job;
        // candle sizes its matmul parallelism from RAYON_NUM_THREADS on every call, whatever
        // pool it runs in; left at the core count, two slots oversubscribe the cores and a
        // step gets ~3x slower. Only `main` may set it (the `sim` binary does, to
        // Scenario::threads_per_job); a library user who did not is told what it costs.
        let candle_threads = candle_core::utils::get_num_threads();
        if candle_threads != job_threads {
            tracing::debug!(
                "candle's matmuls will use {candle_threads} threads (RAYON_NUM_THREADS), not the \
                 {job_threads} a job of these slots has; set RAYON_NUM_THREADS={job_threads} \
                 before the program starts threads for the fastest steps"
            );
        }
        let tokens = Arc::new(Tokens::new(slots));
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let busy_nanos: Arc<Vec<AtomicU64>> =
            Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(slots);
        let (pinned_tx, pinned_rx): (Vec<_>, Vec<_>) = (0..slots)
            .map(|_| crossbeam_channel::unbounded::<Job>())
            .unzip();
        for (slot, own) in pinned_rx.into_iter().enumerate() {
            let pool = matmul_pool(slot, job_threads)?;
            let (rx, ctx, busy) = (rx.clone(), ctx.clone(), busy_nanos.clone());
            let stop = abandoned.clone();
            let tokens = tokens.clone();
            let handle = std::thread::Builder::new()
                .name(format!("slot{slot}"))
                .spawn(move || {
                    let slot_ctx = Slot {
                        index: slot,
                        pool: &pool,
                        busy: &busy[slot],
                        abandoned: &stop,
                        tokens: &tokens,
                        per_job,
                    };
                    worker(&slot_ctx, [&own, &rx], &ctx)
                })
                .map_err(|e| SlotError::Start {
                    slot,
                    message: e.to_string(),
                })?;
            threads.push(handle);
        }
        let requeue = Arc::new(std::sync::Mutex::new(Some(tx.clone())));
        Ok(Self {
            tx: Some(tx),
            pinned: Some(Arc::new(pinned_tx)),
            threads,
            busy_nanos,
            abandoned,
            queue: rx,
            requeue,
            capacity: Arc::new(Capacity::new(slots)),
        })
    }

    /// Add a worker's slots: one thread per remote slot takes jobs from the shared queue (not
    /// the pinned ones: those stay on their local slot) and runs them on the worker.
    ///
    /// # Errors
    /// When a thread cannot be created.
    pub fn attach_remote(&mut self, worker: Arc<dyn Remote>) -> Result<(), SlotError> {
        self.capacity.add(worker.clone());
        for i in 0..worker.slots() {
            let slot = remote::RemoteSlot {
                queue: self.queue.clone(),
                worker: worker.clone(),
                abandoned: self.abandoned.clone(),
                requeue: self.requeue.clone(),
                capacity: self.capacity.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("remote{i}"))
                .spawn(move || slot.serve())
                .map_err(|e| SlotError::Start {
                    slot: i,
                    message: e.to_string(),
                })?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// A handle for submitting jobs.
    pub fn handle(&self) -> SlotHandle {
        SlotHandle {
            tx: self.tx.clone().expect("pool is running"),
            pinned: self.pinned.clone().expect("pool is running"),
            capacity: self.capacity.clone(),
        }
    }

    /// Seconds each slot has spent running jobs.
    pub fn busy_seconds(&self) -> Vec<f64> {
        self.busy().seconds()
    }

    /// A cheap handle that reads the slots' busy time (for metrics).
    pub fn busy(&self) -> SlotBusy {
        SlotBusy(self.busy_nanos.clone())
    }

    /// Stop at once: queued jobs are dropped and the jobs in flight are not waited for (their
    /// threads finish them, or end with the process).
    pub fn abandon(mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.close_requeue();
        self.tx.take();
        self.pinned.take();
        self.threads.clear();
    }

    fn close_requeue(&self) {
        self.capacity.close();
        self.requeue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Stop accepting jobs and wait for the slots to finish theirs.
    pub fn shutdown(mut self) {
        self.close_requeue();
        self.tx.take();
        self.pinned.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Slot `slot`'s rayon pool of `threads` matmul threads.
fn matmul_pool(slot: usize, threads: usize) -> Result<rayon::ThreadPool, SlotError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("slot{slot}-mm{i}"))
        .build()
        .map_err(|e| SlotError::Start {
            slot,
            message: e.to_string(),
        })
}

/// The next job from the slot's own queue (pinned jobs first) or the shared one; `None` once
/// both are closed and empty.
fn next_job(queues: [&Receiver<Job>; 2]) -> Option<Job> {
    if let Ok(job) = queues[0].try_recv() {
        return Some(job);
    }
    crossbeam_channel::select! {
        recv(queues[0]) -> j => j.ok().or_else(|| queues[1].recv().ok()),
        recv(queues[1]) -> j => j.ok().or_else(|| queues[0].recv().ok()),
    }
}

/// What a slot thread owns.
struct Slot<'a> {
    index: usize,
    pool: &'a rayon::ThreadPool,
    busy: &'a AtomicU64,
    abandoned: &'a AtomicBool,
    tokens: &'a Tokens,
    per_job: usize,
}

/// Slot tokens: a job runs while it holds `per_job` of them.
struct Tokens {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Tokens {
    fn new(n: usize) -> Self {
        Self {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    fn take(&self, n: usize) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < n {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= n;
    }

    fn give(&self, n: usize) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += n;
        self.freed.notify_all();
    }
}

fn worker(s: &Slot<'_>, rx: [&Receiver<Job>; 2], ctx: &SlotContext) {
    let (slot, pool, busy) = (s.index, s.pool, s.busy);
    while let Some(job) = next_job(rx) {
        if s.abandoned.load(Ordering::SeqCst) {
            continue; // dropping the job drops its reply channel
        }
        s.tokens.take(s.per_job);
        let start = Instant::now();
        match job {
            Job::Train {
                global,
                shard,
                schedule,
                rule,
                reply,
            } => {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pool.install(|| {
                        ctx.trainer.train(
                            &ctx.layout,
                            &global,
                            &shard,
                            &schedule,
                            (rule, s.abandoned),
                        )
                    })
                }))
                .unwrap_or_else(|p| {
                    Err(TrainError::Panicked(format!(
                        "slot {slot}: {}",
                        panic_message(&p)
                    )))
                });
                let _ = reply.send(out.map(|result| Trained {
                    result,
                    host_seconds: start.elapsed().as_secs_f64(),
                }));
            }
            Job::Evaluate { ins, reply } => {
                let res = pool.install(|| ctx.trainer.evaluate(&ins));
                let _ = reply.send(res);
            }
        }
        busy.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        s.tokens.give(s.per_job);
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
