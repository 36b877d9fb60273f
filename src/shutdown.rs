//! Stopping a run from outside: the first request finishes the current round and writes the
//! results; a second abandons the round at once (the last completed round's results are
//! written). The CLI maps SIGINT, SIGTERM and SIGHUP onto [`ShutdownTrigger::escalate`].

use tokio::sync::watch;

/// How far a stop request has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep running.
    Run,
    /// Finish the current round, then stop and write the results.
    FinishRound,
    /// Stop now: abandon the round in progress, write what the completed rounds produced.
    Abandon,
}

/// The receiving side, handed to [`crate::sim::run`].
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<StopLevel>,
    // Keeps `never()`'s channel open so `reached` waits forever instead of erroring.
    _keep: Option<std::sync::Arc<watch::Sender<StopLevel>>>,
}

/// The sending side: the CLI's signal handler, or a test.
#[derive(Clone)]
pub struct ShutdownTrigger {
    tx: std::sync::Arc<watch::Sender<StopLevel>>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Shutdown {
    /// A pair: trigger and shutdown.
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(StopLevel::Run);
        (
            ShutdownTrigger {
                tx: std::sync::Arc::new(tx),
                count: Default::default(),
            },
            Shutdown { rx, _keep: None },
        )
    }

    /// A shutdown that never comes.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(StopLevel::Run);
        Shutdown {
            rx,
            _keep: Some(std::sync::Arc::new(tx)),
        }
    }

    /// The level requested so far.
    pub fn level(&self) -> StopLevel {
        *self.rx.borrow()
    }

    /// Resolves once the level is at least `level` (never, if every trigger is gone first).
    pub async fn reached(&mut self, level: StopLevel) {
        loop {
            if *self.rx.borrow_and_update() >= level {
                return;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl ShutdownTrigger {
    /// Raise the level to at least `level`.
    pub fn request(&self, level: StopLevel) {
        self.tx.send_if_modified(|l| {
            let raise = level > *l;
            if raise {
                *l = level;
            }
            raise
        });
    }

    /// One more stop request: the first asks to finish the round, later ones to abandon it.
    /// Returns how many requests there have been (1 for the first).
    pub fn escalate(&self) -> usize {
        let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.request(if n == 1 {
            StopLevel::FinishRound
        } else {
            StopLevel::Abandon
        });
        n
    }
}
