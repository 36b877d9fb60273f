//! What both round drivers share: the global adapter, the clients' actors and who is alive,
//! the round in progress, the virtual clock, the privacy ledger, the recorded rounds — and the
//! few things done the same way under either driver (spawning and retiring client actors,
//! evaluating, finishing the run).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::config::{ServerArgs, ServerMsg};
use super::outcome::{EarlyStop, EvalFailure, RunFailure, ServerOutcome};
use super::record::RoundState;
use crate::actors::client::{Client, ClientArgs, ClientMsg};
use crate::messages::{
    ClientId, EvaluateIns, EvaluateRes, FitConfig, NoiseShare, RoundId, RoundSummary,
};
use crate::model::AdapterSet;
use crate::privacy::PrivacyLedger;
use crate::slots::Job;

/// The server's state outside its round driver.
pub(super) struct Core {
    pub(super) args: ServerArgs,
    /// The actors of the clients taking part now. A client's actor is spawned when it is
    /// sampled and retired when its part ends, so 10⁵ clients cost their small state (shard
    /// indices, profile), not 10⁵ mailboxes.
    pub(super) clients: HashMap<ClientId, ActorRef<ClientMsg>>,
    pub(super) by_actor: HashMap<ActorId, ClientId>,
    pub(super) alive: Vec<bool>,
    pub(super) global: Arc<AdapterSet>,
    pub(super) baseline: Option<EvaluateRes>,
    pub(super) summaries: Vec<RoundSummary>,
    pub(super) current: RoundState,
    /// Virtual time at the end of the last round, seconds.
    pub(super) clock: f64,
    /// Host seconds and tokens of all completed fits (for the host time saved estimate).
    pub(super) host_per_token: (f64, usize),
    /// The last evaluation (reused by rounds that change nothing).
    pub(super) last_eval: Option<EvaluateRes>,
    pub(super) ledger: Option<PrivacyLedger>,
    pub(super) stop: Option<EarlyStop>,
    done: Option<oneshot::Sender<ServerOutcome>>,
    /// Continuing a stopped run (its baseline evaluation is in the snapshot).
    pub(super) resumed: bool,
}

impl Core {
    /// The state before round 1; `args.done` moves into it.
    pub(super) fn new(mut args: ServerArgs) -> Self {
        let n = args.shards.len();
        let (tx, _rx) = oneshot::channel();
        let done = Some(std::mem::replace(&mut args.done, tx));
        let global = args.initial.clone();
        let ledger = args.dp.clone().map(PrivacyLedger::new);
        Core {
            args,
            clients: HashMap::new(),
            by_actor: HashMap::new(),
            alive: vec![true; n],
            global,
            baseline: None,
            summaries: Vec::new(),
            current: RoundState::default(),
            clock: 0.0,
            host_per_token: (0.0, 0),
            last_eval: None,
            ledger,
            stop: None,
            done,
            resumed: false,
        }
    }

    /// Whether the run has ended (its outcome was sent).
    pub(super) fn ended(&self) -> bool {
        self.done.is_none()
    }

    /// Clients whose actor has not died.
    pub(super) fn alive_count(&self) -> usize {
        self.alive.iter().filter(|&&a| a).count()
    }

    /// How this round's clients train: its learning rate and, when clients clip for DP, the
    /// clip in force.
    pub(super) fn fit_config(&self) -> FitConfig {
        let ledger = self.ledger.as_ref();
        FitConfig {
            lr: self.current.lr,
            clip_norm: ledger
                .filter(|l| l.plan().mechanism.clips_on_client())
                .map(PrivacyLedger::clip),
            noise: ledger.and_then(|l| {
                let plan = l.plan();
                let stddev = plan.noise_by.client_stddev(l.sum_stddev())?;
                let share = match plan.distributed_noise() {
                    Some(n) => NoiseShare::Discrete(n.share),
                    None => NoiseShare::Gaussian { stddev },
                };
                Some(crate::messages::ClientNoise {
                    share,
                    source: plan.noise,
                    seed: self.args.config.seed,
                })
            }),
            uniform_weight: ledger.is_some(),
        }
    }

    /// Count a completed fit's host seconds and tokens (for the host time saved estimate).
    pub(super) fn count_host(&mut self, u: &crate::messages::FitUpdate) {
        self.host_per_token.0 += u.host_seconds;
        self.host_per_token.1 += u.tokens;
    }

    /// Host seconds per token of the fits so far.
    pub(super) fn host_per_token(&self) -> f64 {
        let (secs, tokens) = self.host_per_token;
        if tokens == 0 {
            0.0
        } else {
            secs / tokens as f64
        }
    }

    /// Evaluate `adapter` (the base model when `None`) on the held-out split, on a slot (the
    /// job is submitted now; the future borrows nothing).
    pub(super) fn evaluate(
        &self,
        round: RoundId,
        adapter: Option<Arc<AdapterSet>>,
        task: crate::messages::TaskScope,
    ) -> impl std::future::Future<Output = Result<EvaluateRes, EvalFailure>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let submitted = self.args.slots.submit(Job::Evaluate {
            ins: EvaluateIns {
                round,
                adapter,
                task,
            },
            reply: tx,
        });
        async move {
            submitted?;
            Ok(rx.await.map_err(|_| EvalFailure::Dropped)??)
        }
    }

    /// Spawn (linked, supervised) the actors of `chosen` clients that have none.
    /// Bytes of one client's upload when the download is `download` bytes: the codec's
    /// message size under `compression`, else the same adapter back.
    pub(super) fn upload_bytes(&self, download: u64) -> u64 {
        self.args.config.upload_bytes.unwrap_or(download)
    }

    pub(super) async fn spawn_clients(
        &mut self,
        me: &ActorRef<ServerMsg>,
        chosen: &[ClientId],
    ) -> Result<(), ActorProcessingErr> {
        for &id in chosen {
            if self.clients.contains_key(&id) {
                continue;
            }
            let cargs = ClientArgs {
                id,
                shard: self.args.shards[id].clone(),
                ctx: self.args.clients.clone(),
                reply: me.get_derived(),
            };
            let (client, _) = Actor::spawn_linked(None, Client, cargs, me.get_cell()).await?;
            self.by_actor.insert(client.get_id(), id);
            self.clients.insert(id, client);
        }
        Ok(())
    }

    /// Retire every client actor (their ends are not failures: forgotten first).
    pub(super) fn retire_clients(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for c in ids {
            self.retire_client(c);
        }
    }

    /// Retire one client's actor, forgetting it first so its end is not taken for a failure.
    pub(super) fn retire_client(&mut self, c: ClientId) {
        if let Some(actor) = self.clients.remove(&c) {
            self.by_actor.remove(&actor.get_id());
            actor.stop(None);
        }
    }

    /// A client actor that ended on its own: which client it was (now dead, never sampled
    /// again), or `None` for an actor already retired or while the run is ending.
    pub(super) fn lost(&mut self, actor: ActorId) -> Option<ClientId> {
        if self.ended() {
            return None; // shutting down: children stopping is expected
        }
        let client = self.by_actor.remove(&actor)?;
        self.alive[client] = false;
        self.clients.remove(&client);
        Some(client)
    }

    /// Whether the run ended because no slot can run a job (no local slots, every worker
    /// lost): it first waits up to `rejoin_s` wall seconds for a worker to come back.
    pub(super) async fn slots_gone(&mut self, me: &ActorRef<ServerMsg>, round: RoundId) -> bool {
        let slots = self.args.slots.clone();
        if slots.usable() {
            return false;
        }
        let rejoin_s = self.args.config.rejoin_s;
        tracing::warn!(
            round,
            rejoin_s,
            "no slot can run a job: waiting for a worker to come back"
        );
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(rejoin_s);
        while std::time::Instant::now() < until {
            if self.args.shutdown.level() >= crate::shutdown::StopLevel::FinishRound {
                self.finish(me, None);
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if slots.usable() {
                return false;
            }
        }
        self.stop = Some(super::outcome::EarlyStop::WorkersLost {
            round,
            lost: slots.lost_workers(),
            rejoin_s,
        });
        self.finish(me, None);
        true
    }

    /// End the run: send the outcome (once), stop the clients and the server.
    pub(super) fn finish(&mut self, me: &ActorRef<ServerMsg>, error: Option<RunFailure>) {
        if let Some(done) = self.done.take() {
            let interrupted = error.is_none()
                && self.stop.is_none()
                && self.summaries.len() < self.args.config.rounds;
            let _ = done.send(ServerOutcome {
                baseline: self.baseline.clone(),
                final_eval: self.last_eval.clone(),
                rounds: std::mem::take(&mut self.summaries),
                global: self.global.clone(),
                interrupted,
                error,
                stop: self.stop.take(),
                epsilon: self.ledger.as_ref().and_then(PrivacyLedger::last),
                final_clip: self.ledger.as_ref().map(PrivacyLedger::clip),
                epsilon_pld: self.ledger.as_ref().and_then(PrivacyLedger::pld_epsilon),
            });
        }
        for (_, c) in self.clients.drain() {
            c.stop(None);
        }
        me.stop(None);
    }
}
