//! What the actors share: the slot pool with its trainer, and the clients' context (cost
//! model, profiles and faults, flow control).

use std::sync::Arc;

use super::{Prepared, SimError};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::aggregator::{Aggregator, AggregatorArgs, AggregatorMsg};
use crate::actors::client::ClientContext;
use crate::actors::server::{Protection, ServerConfig, TaskSchedule};
use crate::clock::CostModel;
use crate::devices::Fleet;
use crate::faults::FaultModel;
use crate::model::{AdapterLayout, AdapterMethod, AdapterSet, PromptInit};
use crate::rng::{purpose, rng_for};
use crate::scenario::file::SlotAssignment;
use crate::scenario::Scenario;
use crate::slots::{SlotContext, SlotHandle, SlotPool};
use crate::stragglers::Stragglers;
use crate::strategy::Strategy;
use crate::tokenizer::TextTokenizer;
use crate::topology::Hierarchy;
use crate::train::LoraTrainer;
use crate::trainer::LocalTrainer;

/// The initial global adapter and the started slot pool.
///
/// # Errors
/// Slots that cannot start.
pub(super) fn slot_pool(
    s: &Scenario,
    prep: &Prepared,
    layout: &Arc<AdapterLayout>,
) -> Result<(Arc<AdapterSet>, SlotPool), SimError> {
    let (initial, ctx) = slot_context(s, prep, layout)?;
    let pool = SlotPool::start(ctx, s.slots, s.threads_per_slot, s.client_resources)?;
    Ok((initial, pool))
}

/// The initial global adapter and what every slot of `s` needs (the coordinator's slots and
/// a worker's alike).
pub(crate) fn slot_context(
    s: &Scenario,
    prep: &Prepared,
    layout: &Arc<AdapterLayout>,
) -> Result<(Arc<AdapterSet>, Arc<SlotContext>), SimError> {
    let (initial, trainer) = match &prep.lora {
        Some(l) => (
            s.lora.init_adapter_with_text(
                &l.model,
                &prompt_text_ids(s, &l.tokenizer)?,
                &mut rng_for(s.seed, &[purpose::ADAPTER]),
            )?,
            LocalTrainer::Lora {
                trainer: LoraTrainer {
                    model: l.model.clone(),
                    lora: s.lora.clone(),
                    pad: l.tokenizer.eos_id(),
                    split: s.topology.split(),
                },
                train: l.train.clone(),
                eval: l.eval.clone(),
                eval_batch_size: s.eval_batch_size,
                task: l.task.clone(),
            },
        ),
        None => (
            AdapterSet::new(layout.clone(), vec![0.0; layout.len()]),
            LocalTrainer::Synthetic {
                seq_len: s.max_seq_len,
            },
        ),
    };
    let ctx = Arc::new(SlotContext {
        layout: layout.clone(),
        trainer,
    });
    Ok((Arc::new(initial), ctx))
}

/// The tokens of prompt tuning's `Text` init (none for every other adapter).
fn prompt_text_ids(s: &Scenario, tokenizer: &TextTokenizer) -> Result<Vec<u32>, SimError> {
    match &s.lora.method {
        AdapterMethod::PromptTuning {
            init: PromptInit::Text(text),
            ..
        } => Ok(tokenizer.encode(text)?),
        _ => Ok(Vec::new()),
    }
}

/// The server's settings.
pub(super) fn server_config(
    s: &Scenario,
    evaluate: bool,
    pace: Option<std::time::Duration>,
) -> ServerConfig {
    ServerConfig {
        rounds: s.rounds,
        seed: s.seed,
        sampling: s.sampling,
        lr_max: s.lr_max,
        lr_min: s.lr_min,
        deadline_s: s.system.deadline_s,
        stragglers: s.system.stragglers,
        short_round: s.system.short_round,
        evaluate,
        pace,
        task: s
            .task_eval
            .as_ref()
            .filter(|_| evaluate)
            .map(|e| TaskSchedule {
                every: e.every,
                full: e.full,
            }),
        rejoin_s: s.workers().map_or(0.0, |w| w.rejoin_s),
        secure: None,
        hierarchy: None,
        upload_bytes: None,
        download_bytes: None,
    }
}

/// The run's secure aggregation (`strategy.secure_aggregation`), its ring sized for its
/// data ([`Scenario::secagg_ring`]): `ring_bits` None picks the smallest ring no sum of all
/// training examples' weights wraps in (under the value bound, if any); a given one narrower
/// than that is refused with the bound.
///
/// # Errors
/// `ring_bits` too small for the training examples; homomorphic settings that do not fit.
pub(super) fn secure_params(s: &Scenario, prep: &Prepared) -> Result<Option<Protection>, SimError> {
    use crate::scenario::file::{HeScheme, SecureAggregation};
    let weight: u64 = prep.shards.iter().map(|sh| sh.len() as u64).sum();
    match s.secure_aggregation() {
        None => Ok(None),
        Some(SecureAggregation::SecAggPlus {
            neighbours,
            threshold,
            client_elements_per_s,
            server_elements_per_s,
            ..
        }) => {
            let Some(ring) = s.secagg_ring(weight)? else {
                return Ok(None); // not reached: SecAgg+ always has a ring
            };
            use crate::secagg::cost::{CLIENT_ELEMENTS_PER_S, SERVER_ELEMENTS_PER_S};
            Ok(Some(Protection::SecAggPlus(crate::secagg::Params {
                neighbours,
                threshold,
                ring,
                compute: crate::secagg::cost::Compute {
                    client_elements_per_s: client_elements_per_s.unwrap_or(CLIENT_ELEMENTS_PER_S),
                    server_elements_per_s: server_elements_per_s.unwrap_or(SERVER_ELEMENTS_PER_S),
                },
            })))
        }
        Some(SecureAggregation::HomomorphicEncryption {
            scheme: HeScheme::Bfv { degree },
            key_holders,
            client_elements_per_s,
            server_elements_per_s,
            decrypt_elements_per_s,
        }) => {
            use crate::he::cost::{self, Compute};
            let compute = Compute {
                client_elements_per_s: client_elements_per_s
                    .unwrap_or(cost::CLIENT_COEFFICIENTS_PER_S),
                server_elements_per_s: server_elements_per_s
                    .unwrap_or(cost::SERVER_COEFFICIENTS_PER_S),
                decrypt_elements_per_s: decrypt_elements_per_s
                    .unwrap_or(cost::DECRYPT_COEFFICIENTS_PER_S),
            };
            let ring = crate::secagg::Ring::for_weight(weight);
            let clients = prep.shards.len();
            let params = crate::he::Params::new(degree, key_holders, ring, clients, compute)
                .map_err(SimError::He)?;
            Ok(Some(Protection::Homomorphic(params)))
        }
    }
}

/// What every client actor shares.
///
/// # Errors
/// A device trace that cannot be used.
pub(super) fn client_context(
    s: &Scenario,
    prep: &Prepared,
    (slots, initial): (SlotHandle, &AdapterSet),
    aggregator: ractor::ActorRef<AggregatorMsg>,
    edges: Option<crate::actors::client::EdgeRoutes>,
    (codec, residuals): Compressing,
) -> Result<Arc<ClientContext>, SimError> {
    let sys = &s.system;
    let fleet = Arc::new(Fleet::assign(&sys.profiles, prep.shards.len(), s.seed)?);
    Ok(Arc::new(ClientContext {
        slots,
        pinned: s.slot_assignment == SlotAssignment::Pinned,
        hold: matches!(sys.stragglers, Stragglers::Async { .. }),
        aggregator,
        edges,
        cost: CostModel::lora(&s.model, &s.lora),
        lengths: Arc::new(prep.lengths(s.max_seq_len)),
        local: s.local.clone(),
        seed: s.seed,
        // Updates in flight: training or waiting to be folded (memory stays bounded).
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            UPDATES_IN_FLIGHT_PER_SLOT * s.slots + UPDATES_IN_FLIGHT_SPARE,
        )),
        faults: FaultModel::new(
            sys.availability,
            sys.crash_probability,
            sys.inject_panic.clone(),
            s.seed,
            fleet,
        )
        .with_byzantine(s.byzantine()),
        codec,
        residuals,
        split: split_plan(s, prep, initial)?,
    }))
}

/// What prices a split run's steps (topology `Split`; None otherwise).
///
/// # Errors
/// A layout inconsistent with its data (never, for a set built by this crate).
fn split_plan(
    s: &Scenario,
    prep: &Prepared,
    initial: &AdapterSet,
) -> Result<Option<crate::split::cost::SplitPlan>, SimError> {
    let (Some(config), Some(l)) = (s.topology.split(), &prep.lora) else {
        return Ok(None);
    };
    let plan = crate::split::cost::SplitPlan::new(config, s.model.hidden_size, initial, &l.train)?;
    Ok(Some(plan))
}

/// The clients' codec and error feedback's residuals.
pub(super) type Compressing = (
    Option<crate::compress::Codec>,
    Option<Arc<crate::compress::Residuals>>,
);

/// The codec of the run's `compression` on `layout` (None: uploads are f32 safetensors).
pub(super) fn codec(s: &Scenario, layout: &Arc<AdapterLayout>) -> Option<crate::compress::Codec> {
    (s.compression != crate::compress::Compression::None)
        .then(|| crate::compress::Codec::new(s.compression, layout.clone()))
}

/// The clients' codec and error feedback's residuals (restored from a resumed run's
/// checkpoint).
pub(super) fn compressing(
    s: &Scenario,
    layout: &Arc<AdapterLayout>,
    resume: Option<&crate::actors::server::Resume>,
) -> Compressing {
    let residuals = s.compression.error_feedback().then(|| {
        let saved = resume.map(|r| r.snapshot.residuals.clone());
        Arc::new(crate::compress::Residuals::restored(
            saved.unwrap_or_default(),
        ))
    });
    (codec(s, layout), residuals)
}

/// The run's (flat, or the cloud's) aggregator, continuing a resumed run's server optimiser.
///
/// # Errors
/// The actor cannot start.
pub(super) async fn spawn_aggregator(
    s: &Scenario,
    layout: Arc<AdapterLayout>,
    codec: Option<crate::compress::Codec>,
    resume: Option<&crate::actors::server::Resume>,
) -> Result<(ActorRef<AggregatorMsg>, JoinHandle<()>), SimError> {
    let args = AggregatorArgs {
        codec,
        layout,
        strategy: s.strategy(),
        byzantine: s.system.byzantine.is_some(),
        server_state: resume.and_then(|r| r.snapshot.optimizer.clone()),
    };
    Actor::spawn(None, Aggregator, args)
        .await
        .map_err(|e| SimError::Actor(e.to_string()))
}

/// Uploaded updates held at once, per slot, before they are folded (bounds the memory of
/// updates waiting for the aggregator: enough to keep every slot busy while one is folded).
const UPDATES_IN_FLIGHT_PER_SLOT: usize = 2;
/// And beyond the slots' share.
const UPDATES_IN_FLIGHT_SPARE: usize = 2;

/// The run's edge aggregators' plan (topology `Hierarchical`), resolved against its fleet.
///
/// # Errors
/// An assignment the profiles cannot support (validation checks it first).
pub(super) fn hierarchy(s: &Scenario, prep: &Prepared) -> Result<Option<Arc<Hierarchy>>, SimError> {
    let fleet = Fleet::assign(&s.system.profiles, prep.shards.len(), s.seed)?;
    let plan = Hierarchy::resolve(&s.topology, &fleet, s.seed).map_err(SimError::Topology)?;
    Ok(plan.map(Arc::new))
}

/// Edge aggregators spawned for `plan`, by edge id, with their join handles. An edge folds
/// with the run's rule — FedAvg under a server optimiser, whose step is the cloud's.
///
/// # Errors
/// An actor that cannot start.
pub(super) async fn spawn_edges(
    s: &Scenario,
    layout: &Arc<AdapterLayout>,
    plan: Option<&Hierarchy>,
) -> Result<(Vec<ActorRef<AggregatorMsg>>, Vec<JoinHandle<()>>), SimError> {
    let (mut refs, mut handles) = (Vec::new(), Vec::new());
    let strategy = match s.strategy() {
        Strategy::ServerOpt(_) => Strategy::FedAvg,
        other => other,
    };
    for _ in 0..plan.map_or(0, |p| p.edges) {
        let args = AggregatorArgs {
            layout: layout.clone(),
            strategy: strategy.clone(),
            byzantine: false,
            server_state: None,
            codec: codec(s, layout),
        };
        let (r, h) = Actor::spawn(None, Aggregator, args)
            .await
            .map_err(|e| SimError::Actor(format!("edge aggregator: {e}")))?;
        refs.push(r);
        handles.push(h);
    }
    Ok((refs, handles))
}

/// Client → edge routes for `plan`'s edges.
pub(super) fn edge_routes(
    plan: Option<&Hierarchy>,
    edges: &[ActorRef<AggregatorMsg>],
) -> Option<crate::actors::client::EdgeRoutes> {
    plan.map(|p| crate::actors::client::EdgeRoutes {
        edge_of: p.edge_of.clone(),
        aggregators: edges.to_vec(),
    })
}
