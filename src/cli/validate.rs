//! `sim validate`: everything `run` would refuse, found before it runs.

use std::path::Path;

use fedsim::scenario::resources::{available_memory, bytes};
use fedsim::Scenario;

use super::out::outln;

/// Check the scenario, the memory it needs and its data; print what a run will use.
pub fn validate(path: &Path, set: &[String]) -> anyhow::Result<()> {
    let s = Scenario::load(path, set)?;
    let data = s.check_data()?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let poisson =
        s.dp.as_ref()
            .is_some_and(|d| d.sampling == fedsim::privacy::DpSampling::Poisson);
    let sampled = if poisson {
        format!(
            "{:.1} sampled per round on average (Poisson)",
            s.sampling.fraction_fit * s.data.clients as f64
        )
    } else {
        format!(
            "{} sampled per round",
            s.sampling.sample_size(s.data.clients)
        )
    };
    let values = match s.trainer {
        fedsim::trainer::TrainerKind::Lora => s.lora.trainable_parameters(&s.model),
        fedsim::trainer::TrainerKind::Synthetic { params } => params,
    };
    let trained = match s.trainer {
        fedsim::trainer::TrainerKind::Lora => {
            format!("{values} {} parameters", s.lora.method_name())
        }
        fedsim::trainer::TrainerKind::Synthetic { .. } => {
            format!("synthetic updates of {values} values")
        }
    };
    outln!(
        "{}: ok ({} clients, {} rounds, {sampled}, {trained})",
        path.display(),
        s.data.clients,
        s.rounds,
    )?;
    outln!(
        "data: {} records, {} for training and {} held out{}",
        data.records,
        data.train,
        data.eval,
        data.vocab
            .map_or(String::new(), |v| format!("; tokenizer reaches {v} tokens"))
    )?;
    if data.removed > 0 {
        outln!(
            "data: {} records removed because their text is in the test split (none remains)",
            data.removed
        )?;
    }
    secure(&s, values, data.train as u64)?;
    privacy(&s)?;
    topology(&s)?;
    split(&s)?;
    compression(&s)?;
    resources(&s)
}

/// The DP plan and what the accountant will charge: ε if every round runs with every client
/// available (or where `dp.max_epsilon` stops the run).
fn privacy(s: &Scenario) -> anyhow::Result<()> {
    use fedsim::privacy::{DpSampling, NoiseBy, PrivacyLedger};
    let Some(plan) = s.dp.clone() else {
        return Ok(());
    };
    let clients = s.data.clients.max(1);
    let q = match plan.sampling {
        DpSampling::Poisson => s.sampling.fraction_fit,
        DpSampling::Fixed => s.sampling.sample_size(clients) as f64 / clients as f64,
    };
    let by = match (plan.noise_by, plan.distributed_noise()) {
        (NoiseBy::Server, _) => "the server".to_string(),
        (NoiseBy::Clients { min_survivors, .. }, None) => {
            format!("the clients (Gaussian shares, rounds of at least {min_survivors})")
        }
        (_, Some(n)) => format!(
            "the clients (discrete Gaussian shares of σ = {:.4e} fixed-point steps, rounds of at \
             least {})",
            n.share.std(),
            n.min_survivors
        ),
    };
    let (delta, max) = (plan.delta, plan.max_epsilon);
    let mut ledger = PrivacyLedger::new(plan.clone());
    let (mut spent, mut stop) = (None, None);
    for round in 1..=s.rounds {
        if max.is_some_and(|m| ledger.peek(q).epsilon > m) {
            stop = Some(round);
            break;
        }
        spent = Some(ledger.record(q).epsilon);
    }
    let charged = match (spent, stop) {
        (Some(e), None) => format!("ε = {e:.4} if all {} rounds run", s.rounds),
        (Some(e), Some(r)) => {
            format!("ε = {e:.4}, then dp.max_epsilon stops the run before round {r}")
        }
        (None, _) => "dp.max_epsilon stops the run before round 1".to_string(),
    };
    outln!(
        "privacy: {}, C = {}, z = {}, noise added by {by}; {charged} at δ = {delta:e}, q = {}",
        plan.mechanism.name(),
        fedsim::fmt::compact(plan.mechanism.initial_clip()),
        fedsim::fmt::compact(plan.mechanism.noise_multiplier()),
        fedsim::fmt::compact(q),
    )?;
    Ok(())
}

/// Where a split run cuts the model and what a full step sends each way.
fn split(s: &Scenario) -> anyhow::Result<()> {
    let Some(c) = s.topology.split() else {
        return Ok(());
    };
    let layout = std::sync::Arc::new(s.trainer.layout(&s.model, &s.lora));
    let global = fedsim::model::AdapterSet::new(layout.clone(), vec![0.0; layout.len()]);
    let plan = fedsim::split::cost::SplitPlan::new(c, s.model.hidden_size, &global, &[])?;
    let (b, n) = (s.local.batch_size, s.max_seq_len);
    let (mut up, mut down) = (0, 0);
    for m in plan.step_messages(&vec![(n, n); b]) {
        match m.direction {
            fedsim::split::Direction::Up => up += m.bytes,
            fedsim::split::Direction::Down => down += m.bytes,
        }
    }
    outln!(
        "topology: split after block {} of {} ({:?}), activations {}, gradients {}; a step of \
         {b} × {n} tokens sends at most {:.2} MB up and {:.2} MB down; the client-side adapter is {} B",
        c.cut_layer,
        s.model.num_hidden_layers,
        c.mode,
        c.activation_compression.label(),
        c.gradient_compression.label(),
        up as f64 / 1e6,
        down as f64 / 1e6,
        plan.adapter_bytes
    )
}

/// What each upload weighs under `compression`, against the plain f32 update.
fn compression(s: &Scenario) -> anyhow::Result<()> {
    let layout = std::sync::Arc::new(s.trainer.layout(&s.model, &s.lora));
    let Some(r) = fedsim::compress::CompressionRecord::of(s.compression, layout) else {
        return Ok(());
    };
    outln!(
        "compression: {}, {} B per upload instead of {} B ({:.1}× fewer){}",
        r.codec,
        r.bytes_per_upload,
        r.plain_bytes_per_upload,
        r.ratio,
        if s.compression.error_feedback() {
            "; each client keeps a residual the size of its update"
        } else {
            ""
        }
    )
}

/// The edges of a hierarchical topology: how many clients each holds, E, the WAN.
fn topology(s: &Scenario) -> anyhow::Result<()> {
    let fleet = fedsim::devices::Fleet::assign(&s.system.profiles, s.data.clients, s.seed)?;
    let Some(h) = fedsim::topology::Hierarchy::resolve(&s.topology, &fleet, s.seed)? else {
        return Ok(());
    };
    let all: Vec<usize> = (0..s.data.clients).collect();
    let sizes: Vec<String> = h.group(&all).iter().map(|g| g.len().to_string()).collect();
    outln!(
        "topology: hierarchical, {} edges of [{}] clients, {} edge round(s) per cloud round; \
         WAN {} Mbit/s up, {} down, {} s latency",
        h.edges,
        sizes.join(", "),
        h.edge_rounds,
        h.wan.up_mbps,
        h.wan.down_mbps,
        h.wan.latency_s
    )
}

/// What secure aggregation makes each client upload, beside the plain f32 update.
fn secure(s: &Scenario, values: usize, train: u64) -> anyhow::Result<()> {
    use fedsim::scenario::file::{HeScheme, SecureAggregation};
    let ring = fedsim::secagg::Ring::for_weight(train);
    let plain = 4 * values as u64;
    match s.secure_aggregation() {
        None => {}
        Some(SecureAggregation::SecAggPlus {
            neighbours,
            threshold,
            ..
        }) => {
            let ring = s.secagg_ring(train)?.unwrap_or(ring);
            let bits = ring.bits();
            let up = ring.element_bytes() as u64 * (values as u64 + 1);
            let bound = match ring.value_bound() {
                Some(b) => format!("values within ±{b}"),
                None => "any value".to_string(),
            };
            outln!(
                "secure aggregation: SecAgg+ with {neighbours} neighbours, threshold \
                 {threshold}, a {bits}-bit ring ({bound}): {up} B a client upload (plain f32: \
                 {plain} B), plus its keys and shares"
            )?;
        }
        Some(SecureAggregation::HomomorphicEncryption {
            scheme: HeScheme::Bfv { degree },
            key_holders,
            ..
        }) => {
            let he = fedsim::he::Params::new(
                degree,
                key_holders,
                ring,
                s.data.clients,
                Default::default(),
            )?;
            let (public, ciphertext) = fedsim::he::keys::sizes(&he)?;
            let n = he.ciphertexts(values + 1);
            outln!(
                "secure aggregation: BFV with n = {degree}, {key_holders} key holder(s), {} limbs \
                 of {} bits an element: {n} ciphertexts, {} B a client upload (plain f32: \
                 {plain} B); a {public}-B public key down",
                he.packing.limbs(),
                he.packing.limb_bits(),
                n as u64 * ciphertext
            )?;
        }
    }
    Ok(())
}

/// The task evaluation, the base's footprint and the memory estimate.
fn resources(s: &Scenario) -> anyhow::Result<()> {
    if let Some(e) = &s.task_eval {
        let task = e.task.load()?;
        outln!(
            "eval: {} ({}), {} items, subset of {} every {} round(s){}",
            task.name,
            task.path.display(),
            task.items.len(),
            e.subset.min(task.items.len()),
            e.every,
            e.target_accuracy
                .map_or(String::new(), |t| format!(", target accuracy {t}"))
        )?;
    }
    if matches!(s.trainer, fedsim::trainer::TrainerKind::Lora) {
        let matmuls = match s.compute_dtype {
            fedsim::model::ComputeDtype::F32 => "",
            fedsim::model::ComputeDtype::Bf16 => "; training's matmuls in bf16 (compute_dtype)",
        };
        outln!(
            "base: {} — {}{matmuls}",
            s.base_precision.name(),
            s.base_footprint
        )?;
    }
    outln!(
        "memory: about {} estimated at peak{}",
        bytes(s.memory.total()),
        available_memory().map_or(String::new(), |a| format!(" ({} available)", bytes(a)))
    )?;
    Ok(())
}
