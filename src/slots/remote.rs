//! Slots on other hosts: a thread per remote slot takes jobs from the run's shared queue, as a
//! local slot does, and waits for the worker's answer. A lost worker's slots take no jobs
//! until it is back; when no slot at all can run a job (no local slots, every worker lost),
//! queued jobs fail at once, so no round waits for an answer that cannot come.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Job;
use crate::train::TrainError;

/// Slots on another host: each runs a job to its end, or answers it with the reason it could
/// not (a lost host is the job's error, never a slot's).
pub trait Remote: Send + Sync {
    /// Its name in records and errors (its address).
    fn name(&self) -> &str;
    /// Slots it offers.
    fn slots(&self) -> usize;
    /// Whether it answers now (a lost one may come back).
    fn alive(&self) -> bool;
    /// Run `job` there and send its outcome where the job says (blocking).
    fn run(&self, job: Job);
}

/// How often an idle remote slot looks again at its worker and the queue.
const POLL: Duration = Duration::from_millis(100);

/// The pool's slots, local and remote: whether any can run a job.
pub(super) struct Capacity {
    local: usize,
    remotes: RwLock<Vec<Arc<dyn Remote>>>,
    /// Set when the pool closes: idle remote slots end.
    closing: AtomicBool,
}

impl Capacity {
    pub(super) fn new(local: usize) -> Self {
        Self {
            local,
            remotes: RwLock::new(Vec::new()),
            closing: AtomicBool::new(false),
        }
    }

    pub(super) fn add(&self, remote: Arc<dyn Remote>) {
        self.remotes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(remote);
    }

    pub(super) fn usable(&self) -> bool {
        self.local > 0
            || self
                .remotes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|r| r.alive())
    }

    pub(super) fn lost(&self) -> Vec<String> {
        self.remotes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| !r.alive())
            .map(|r| r.name().to_string())
            .collect()
    }

    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }
}

/// One remote slot's thread.
pub(super) struct RemoteSlot {
    pub(super) queue: Receiver<Job>,
    pub(super) worker: Arc<dyn Remote>,
    pub(super) abandoned: Arc<AtomicBool>,
    pub(super) requeue: Arc<Mutex<Option<Sender<Job>>>>,
    pub(super) capacity: Arc<Capacity>,
}

impl RemoteSlot {
    /// Take jobs while the worker answers; wait while it is lost and another slot can work;
    /// fail jobs while no slot can. Ends when the queue closes or the pool does.
    pub(super) fn serve(self) {
        loop {
            let (alive, usable) = (self.worker.alive(), self.capacity.usable());
            if !alive && usable {
                if self.capacity.closing.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(POLL); // lost: others work while it may come back
                continue;
            }
            let job = match self.queue.recv_timeout(POLL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if self.abandoned.load(Ordering::SeqCst) {
                continue; // dropping the job drops its reply channel
            }
            if self.worker.alive() {
                self.worker.run(job);
            } else if self.capacity.usable() {
                self.put_back(job); // taken as it was lost: for another slot
            } else {
                fail(job, self.worker.name());
            }
        }
    }

    fn put_back(&self, job: Job) {
        let tx = self.requeue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(job);
        }
    }
}

/// Answer `job` with `worker_lost`: no slot is left to run it.
fn fail(job: Job, worker: &str) {
    let err = || TrainError::WorkerLost {
        worker: worker.to_string(),
        message: "no slot can run the job: every worker is lost and the run has no local slots"
            .into(),
    };
    match job {
        Job::Train { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Job::Evaluate { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
    }
}
