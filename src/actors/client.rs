//! One actor per client: it owns what a client does. Asked to plan a round, it draws its batch
//! schedule (so it knows its token count before training), prices the work in FLOPs on its
//! device profile and reports its timeline on the virtual clock and its fate (crash or not).
//! Told to fit, it has a slot train on its shard, clips the update (client-side DP), encodes
//! it, uploads it straight to the aggregator and answers the server with a small `FitRes`.
//! Its state is small: an id, shard indices and the round's schedule.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::aggregator::AggregatorMsg;

mod compressed;
mod homomorphic;
mod noise;
mod secure;
use crate::clock::{CostModel, Timeline};
use crate::faults::FaultModel;
use crate::messages::{
    ClientId, ClientPlan, CrashCause, FitFailure, FitIns, FitRes, FitStatus, FitUpdate, RoundId,
    UploadFailure,
};
use crate::model::AdapterSet;
use crate::rng::{purpose, rng_for};
use crate::slots::{Job, SlotHandle, Trained};
use crate::train::{LocalTraining, Schedule, TrainError};

/// Client actor.
pub struct Client;

/// What every client shares (one `Arc` for all of them).
pub struct ClientContext {
    /// Where training runs.
    pub slots: SlotHandle,
    /// Client c's jobs go to slot c mod slots (`slots.assignment: Pinned`).
    pub pinned: bool,
    /// Updates are held by the aggregator until released with a weight (Async).
    pub hold: bool,
    /// Where updates go (flat topology).
    pub aggregator: ActorRef<AggregatorMsg>,
    /// Under a hierarchy: each client's edge and the edge aggregators (updates go there).
    pub edges: Option<EdgeRoutes>,
    /// FLOPs per trained sequence.
    pub cost: CostModel,
    /// Token length of every training example.
    pub lengths: Arc<Vec<u32>>,
    /// Steps / epochs / batch size.
    pub local: LocalTraining,
    /// Master seed.
    pub seed: u64,
    /// Profiles, availability, crashes.
    pub faults: FaultModel,
    /// Updates in flight (training, or waiting to be folded): a client takes a permit before
    /// its slot job and the aggregator drops it after folding, so memory stays bounded however
    /// many clients a round has.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// How updates are compressed before upload (`compression`); None: f32 safetensors.
    pub codec: Option<crate::compress::Codec>,
    /// Error feedback's per-client residuals (`TopK(error_feedback: true)`).
    pub residuals: Option<Arc<crate::compress::Residuals>>,
    /// Split learning: what prices each step (topology `Split`).
    pub split: Option<crate::split::cost::SplitPlan>,
}

/// Which edge aggregator each client uploads to (topology `Hierarchical`).
pub struct EdgeRoutes {
    /// Edge of each client.
    pub edge_of: Arc<[u16]>,
    /// The edges' aggregators, by edge id.
    pub aggregators: Vec<ActorRef<AggregatorMsg>>,
}

impl ClientContext {
    /// Where client `c`'s updates go: its edge's aggregator, or the aggregator.
    pub fn aggregator_of(&self, c: ClientId) -> &ActorRef<AggregatorMsg> {
        match &self.edges {
            Some(e) => &e.aggregators[e.edge_of[c] as usize],
            None => &self.aggregator,
        }
    }
}

/// Messages a client understands.
#[derive(ractor_cluster::RactorMessage)]
pub enum ClientMsg {
    /// Plan a round that starts at `start` (virtual seconds): download `down_bytes`, upload
    /// `up_bytes`.
    Plan {
        /// The round.
        round: RoundId,
        /// Virtual start time.
        start: f64,
        /// Bytes to download.
        down_bytes: u64,
        /// Bytes to upload.
        up_bytes: u64,
        /// Masking compute before the upload (secure aggregation), simulated seconds.
        mask_s: f64,
        /// Where the plan goes.
        reply: RpcReplyPort<ClientPlan>,
    },
    /// Train for the planned round and reply.
    Fit(FitIns),
    /// Secure aggregation, phase 0: start the round's protocol and answer with its keys.
    SecAggKeys {
        /// The round.
        round: RoundId,
        /// The protocol's settings.
        params: crate::secagg::Params,
        /// Its neighbours in the round's graph.
        neighbours: Vec<ClientId>,
        /// Where its keys go.
        reply: RpcReplyPort<crate::secagg::messages::AdvertiseKeys>,
    },
    /// Homomorphic encryption: the round's public key, to encrypt its update with.
    HeKey {
        /// The round.
        round: RoundId,
        /// The run's settings.
        params: crate::he::Params,
        /// The public key.
        encryptor: crate::he::Encryptor,
        /// Bytes one ciphertext takes on the wire.
        ciphertext_bytes: u64,
    },
    /// Phase 1: its neighbours' keys; answer with its encrypted shares.
    SecAggShare {
        /// The neighbours that advertised keys.
        directory: crate::secagg::messages::KeyDirectory,
        /// Where its shares go.
        reply: RpcReplyPort<Result<crate::secagg::messages::ShareKeys, crate::secagg::SecAggError>>,
    },
    /// Phase 1 → 2: the shares its neighbours sent it.
    SecAggInbox(crate::secagg::messages::ShareInbox),
    /// Phase 3: reveal shares for unmasking.
    SecAggUnmask {
        /// Who survived and who dropped.
        request: crate::secagg::messages::UnmaskRequest,
        /// Where the shares go (or why it refuses).
        reply: RpcReplyPort<
            Result<crate::secagg::messages::UnmaskResponse, crate::secagg::SecAggError>,
        >,
    },
}

/// Start-up arguments.
pub struct ClientArgs {
    /// Who.
    pub id: ClientId,
    /// Indices of its examples in the shared training set.
    pub shard: Arc<[u32]>,
    /// Shared context.
    pub ctx: Arc<ClientContext>,
    /// Where results go.
    pub reply: DerivedActorRef<FitRes>,
}

/// A client's state.
pub struct ClientState {
    args: ClientArgs,
    planned: Option<(RoundId, Schedule, Timeline)>,
    /// Secure aggregation's state for the current round.
    secure: Option<secure::Secure>,
    /// Homomorphic encryption's key for the current round.
    he: Option<homomorphic::HeKey>,
}

impl Actor for Client {
    type Msg = ClientMsg;
    type State = ClientState;
    type Arguments = ClientArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ClientMsg>,
        args: ClientArgs,
    ) -> Result<ClientState, ActorProcessingErr> {
        Ok(ClientState {
            args,
            planned: None,
            secure: None,
            he: None,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ClientMsg>,
        msg: ClientMsg,
        st: &mut ClientState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClientMsg::Plan {
                round,
                start,
                down_bytes,
                up_bytes,
                mask_s,
                reply,
            } => {
                let plan = plan(st, round, start, (down_bytes, up_bytes), mask_s);
                let _ = reply.send(plan);
            }
            ClientMsg::Fit(ins) => {
                let id = st.args.id;
                if st.args.ctx.faults.panics(id) {
                    panic!("client {id}: injected panic during fit (system.inject_panic)");
                }
                let round = ins.round;
                let status = fit(st, ins).await;
                // The server may be gone at shutdown; nothing left to tell then.
                let _ = st.args.reply.send_message(FitRes {
                    client: id,
                    round,
                    status,
                });
            }
            msg => secure_phase(st, msg),
        }
        Ok(())
    }
}

/// A secure aggregation phase message (a message out of phase is answered with the error).
fn secure_phase(st: &mut ClientState, msg: ClientMsg) {
    let missing = || crate::secagg::SecAggError::Phase {
        who: crate::secagg::Party::AnyClient,
        message: "a phase message",
        phase: "none (no secure round started)",
    };
    match msg {
        ClientMsg::SecAggKeys {
            round,
            params,
            neighbours,
            reply,
        } => {
            let s = secure::Secure::new(st.args.id, (round, st.args.ctx.seed), params, &neighbours);
            let _ = reply.send(s.advertise());
            st.secure = Some(s);
        }
        ClientMsg::SecAggShare { directory, reply } => {
            let shares = st.secure.as_mut().ok_or_else(missing);
            let _ = reply.send(shares.and_then(|s| s.share(directory)));
        }
        ClientMsg::HeKey {
            round,
            params,
            encryptor,
            ciphertext_bytes,
        } => {
            st.he = Some(homomorphic::HeKey {
                round,
                params,
                encryptor,
                ciphertext_bytes,
            });
        }
        ClientMsg::SecAggInbox(inbox) => {
            if let Some(s) = st.secure.as_mut() {
                s.keep(inbox);
            }
        }
        ClientMsg::SecAggUnmask { request, reply } => {
            let response = st.secure.as_mut().ok_or_else(missing);
            let _ = reply.send(response.and_then(|s| s.unmask(&request)));
        }
        ClientMsg::Plan { .. } | ClientMsg::Fit(_) => {}
    }
}

fn plan(
    st: &mut ClientState,
    round: RoundId,
    start: f64,
    (down, up): (u64, u64),
    mask_s: f64,
) -> ClientPlan {
    let (a, ctx) = (&st.args, &st.args.ctx);
    let mut rng = rng_for(ctx.seed, &[purpose::TRAIN, round as u64, a.id as u64]);
    let schedule = Schedule::draw(a.shard.len(), &ctx.local, &mut rng);
    let (mut flops, mut tokens) = (
        schedule.batches.len() as f64 * ctx.cost.step_flops(),
        0usize,
    );
    for i in schedule.picks() {
        let n = ctx.lengths[a.shard[i] as usize] as usize;
        flops += ctx.cost.sequence_flops(n);
        tokens += n;
    }
    let profile = ctx.faults.fleet().profile(a.id);
    let mut timeline = Timeline {
        mask: mask_s,
        ..Timeline::of(&profile, start, down, flops, up)
    };
    if let Some(split) = &ctx.split {
        let seqs = |b: &Vec<u32>| -> Vec<(usize, usize)> {
            let e = b.iter().map(|&i| a.shard[i as usize] as usize);
            e.map(|e| (ctx.lengths[e] as usize, split.targets[e] as usize))
                .collect()
        };
        let c = split.round(&ctx.cost, &profile, schedule.batches.iter().map(seqs));
        (timeline.compute, timeline.server, timeline.exchange) =
            (c.client_s, c.server_s, c.exchange_s);
    }
    st.planned = Some((round, schedule, timeline));
    ClientPlan {
        timeline,
        crash: ctx.faults.crash(round, a.id),
        tokens,
    }
}

async fn fit(st: &mut ClientState, ins: FitIns) -> FitStatus {
    let failed = |reason: FitFailure| FitStatus::Failed { reason };
    let (schedule, timeline) = match st.planned.take() {
        Some((r, s, t)) if r == ins.round => (s, t),
        _ => return failed(FitFailure::NoPlan(ins.round)),
    };
    let (a, ctx) = (&st.args, &st.args.ctx);
    let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else {
        return failed(FitFailure::ShuttingDown);
    };
    let Trained {
        result: mut out,
        host_seconds,
    } = match train(a, &ins, schedule).await {
        Ok(t) => t,
        Err(e) => {
            if let FitFailure::Training(t) = &e {
                if let TrainError::WorkerLost { worker, message } = t.as_ref() {
                    tracing::warn!(client = a.id, %worker, %message, "worker lost mid-job");
                    return FitStatus::Crashed {
                        at: timeline.start + timeline.download,
                        cause: CrashCause::WorkerLost {
                            worker: worker.clone(),
                        },
                    };
                }
            }
            return failed(e);
        }
    };
    let prepared = before_upload(a, &ins, &mut out.update);
    let (update_norm, clipped) = (prepared.norm, prepared.clipped);
    let (upload, bytes) = match upload(st, &ins, &out.update, prepared, permit).await {
        Ok(u) => u,
        Err(reason) => return failed(FitFailure::Upload(reason)),
    };
    let (a, ctx) = (&st.args, &st.args.ctx);
    if ctx.aggregator_of(a.id).send_message(upload).is_err() {
        return failed(FitFailure::AggregatorGone);
    }
    FitStatus::Completed(Box::new(FitUpdate {
        bytes,
        num_examples: a.shard.len(),
        train_loss: out.train_loss,
        update_norm,
        clipped,
        steps: out.steps,
        tokens: out.tokens,
        host_seconds,
        timeline,
        split: out.split,
    }))
}

/// What the client sends the aggregator and its bytes on the wire: its update, or under
/// secure aggregation only its masked vector or its ciphertexts.
async fn upload(
    st: &mut ClientState,
    ins: &FitIns,
    update: &AdapterSet,
    prepared: Prepared,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(AggregatorMsg, u64), UploadFailure> {
    let byzantine = prepared.byzantine;
    let (a, ctx) = (&st.args, &st.args.ctx);
    let secure = st.secure.take_if(|s| s.round == ins.round);
    let he = st.he.take().filter(|k| k.round == ins.round);
    let permit = Some(permit);
    match (secure, he) {
        (None, Some(key)) => {
            let values = update.data().to_vec();
            let noise = noise::discrete(ins.config.noise, ins.round, a.id);
            let (input, bytes) = (key.encrypt(a.id, ctx.seed, (values, noise), weight(a, ins)))
                .await
                .map_err(|e| UploadFailure::Encrypt(Arc::new(e)))?;
            Ok((AggregatorMsg::Encrypted { input, permit }, bytes))
        }
        (Some(s), _) => {
            let values = update.data().to_vec();
            let noise = noise::discrete(ins.config.noise, ins.round, a.id);
            let (s, input) = s.masked_off_executor(values, noise, weight(a, ins)).await;
            st.secure = Some(s); // kept for the unmasking phase
            let input = input.map_err(|e| UploadFailure::Mask(Arc::new(e)))?;
            let bytes = input.masked.len() as u64;
            Ok((AggregatorMsg::Masked { input, permit }, bytes))
        }
        (None, None) => {
            let payload = match &ctx.codec {
                Some(codec) => compressed::encode(a, ins, codec, update, prepared)
                    .map_err(|e| UploadFailure::Compress(Arc::new(e)))?,
                None => {
                    (update.to_safetensors()).map_err(|e| UploadFailure::Serialise(Arc::new(e)))?
                }
            };
            // Split: only the client-side half travels (the server keeps the rest).
            let bytes = ctx
                .split
                .as_ref()
                .map_or(payload.len() as u64, |s| s.adapter_bytes);
            let fold = AggregatorMsg::Fold {
                client: a.id,
                payload,
                num_examples: a.shard.len(),
                permit,
                hold: ctx.hold,
                byzantine,
            };
            Ok((fold, bytes))
        }
    }
}

/// The client's FedAvg weight: its examples, or 1 when every client weighs the same (DP).
fn weight(a: &ClientArgs, ins: &FitIns) -> u64 {
    if ins.config.uniform_weight {
        1
    } else {
        a.shard.len() as u64
    }
}

/// Train the client's shard from the round's global adapter on a slot (its own, when pinned).
async fn train(a: &ClientArgs, ins: &FitIns, schedule: Schedule) -> Result<Trained, FitFailure> {
    let ctx = &a.ctx;
    let (tx, rx) = oneshot::channel();
    let job = Job::Train {
        global: ins.global.clone(),
        shard: a.shard.clone(),
        schedule,
        rule: crate::train::StepRule {
            lr: ins.config.lr,
            weight_decay: ctx.local.weight_decay,
            proximal_mu: ctx.local.proximal_mu,
        },
        reply: tx,
    };
    let submitted = if ctx.pinned {
        ctx.slots.submit_pinned(a.id, job)
    } else {
        ctx.slots.submit(job)
    };
    submitted.map_err(|_| FitFailure::SlotsClosed)?;
    let trained: Result<Trained, TrainError> = rx.await.map_err(|_| FitFailure::JobDropped)?;
    trained.map_err(|e| FitFailure::Training(Arc::new(e)))
}

/// What [`before_upload`] did.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    /// The client is Byzantine.
    byzantine: bool,
    /// Its update was replaced by a corrupted one (it follows no protocol from here).
    corrupted: bool,
    /// The update's norm before clipping.
    norm: f64,
    /// Whether clipping scaled it down.
    clipped: bool,
}

/// What happens to an update before it leaves the client: a Byzantine client sends its
/// corrupted update instead and follows no protocol (no clip) — data poisoners trained on
/// their poisoned shard and follow it from here; under client-side DP it is clipped.
fn before_upload(a: &ClientArgs, ins: &FitIns, update: &mut AdapterSet) -> Prepared {
    let (byzantine, corrupted) = match &a.ctx.faults.byzantine {
        Some(b) if b.is_attacker(a.id) => {
            let corrupt = b.attack().poisons_updates();
            if corrupt {
                b.corrupt(update.data_mut(), ins.round, a.id);
            }
            (true, corrupt)
        }
        _ => (false, false),
    };
    let (norm, clipped) = match ins.config.clip_norm.filter(|_| !corrupted) {
        Some(c) => {
            let r = crate::privacy::clip_l2(update.data_mut(), c);
            (r.norm, r.clipped)
        }
        None => (update.l2_norm(), false),
    };
    if let (Some(n), false) = (ins.config.noise, corrupted) {
        noise::add_gaussian(update.data_mut(), n, ins.round, a.id);
    }
    Prepared {
        byzantine,
        corrupted,
        norm,
        clipped,
    }
}
