//! Semantic checks: each failure names the field, the allowed range and the fix.

use crate::model::pretrained::Pretrained;
use std::path::Path;

use super::file::{DpSection, ModelSource, ScenarioFile};
use super::{resources, Sampling, Scenario, ScenarioError};
use crate::data::{DataPlan, DataSource};
use crate::fmt::compact;
use crate::model::weight::Footprint;
use crate::model::{ComputeDtype, InferenceActivations, LlamaConfig};
use crate::privacy::{DpPlan, DpSampling};
use crate::train::LocalTraining;
use crate::trainer::TrainerKind;

mod check;
mod compression;
mod data;
mod model;
mod privacy;
mod slots;
mod split;
mod strategy;
mod system;
mod topology;

use check::{field_path, Check, Range};

/// Longest scenario name (bytes).
const MAX_NAME: usize = 200;

pub(super) fn validate(file: ScenarioFile, path: &Path) -> Result<Scenario, ScenarioError> {
    let c = Check { path };
    check_identity(&c, &file)?;
    let (model, model_name, base_footprint) = check_model(&c, &file)?;
    let lora = model::check_lora(&c, &file, &model)?;
    data::check_data(&c, &file, &model)?;
    check_clients(&c, &file)?;
    check_train(&c, &file)?;
    let (threads, cores) = slots::check_slots(&c, &file)?;
    let (memory, warnings) =
        check_resources(&c, &file, &model, (threads, cores), &lora, &base_footprint)?;
    let dp = check_dp(&c, &file)?;
    check_federation(&c, &file)?;
    split::check_split(&c, &file, &model, &lora.method)?;
    let (d, s, t, sl) = (&file.data, &file.strategy, &file.train, &file.slots);
    Ok(Scenario {
        dp,
        name: file.name.clone(),
        seed: file.seed,
        rounds: file.rounds,
        model,
        model_name,
        lora,
        data: data_plan(&file),
        memory,
        warnings,
        max_seq_len: d.max_seq_len,
        sampling: Sampling {
            fraction_fit: s.fraction_fit,
            min_fit_clients: s.min_fit_clients,
            min_available_clients: s.min_available_clients,
        },
        local: LocalTraining {
            steps: t.local_steps,
            epochs: t.local_epochs,
            batch_size: t.batch_size,
            weight_decay: t.weight_decay,
            proximal_mu: match s.kind {
                crate::scenario::file::StrategyKind::FedProx { mu } => mu,
                _ => 0.0,
            },
        },
        lr_max: t.lr_max,
        lr_min: t.lr_min,
        eval_batch_size: t.eval_batch_size,
        slots: sl.count,
        threads_per_slot: threads,
        source_path: path.to_path_buf(),
        model_source: file.model.source.clone(),
        base_precision: file.model.base_precision,
        base_footprint,
        inference_activations: file.model.inference_activations,
        compute_dtype: file.model.compute_dtype,
        prompt: prompt_format(&file),
        trainer: file.trainer,
        task_eval: file.eval.clone(),
        client_resources: sl.client_resources,
        slot_assignment: sl.assignment,
        system: file.system.clone(),
        topology: file.topology,
        compression: file.compression,
        file,
    })
}

/// The strategy, the task evaluation, the topology and the uploads' compression.
fn check_federation(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    strategy::check_strategy(c, file)?;
    data::check_eval(c, file)?;
    topology::check_topology(c, file)?;
    compression::check_compression(c, file)
}

/// The prompt format: `Auto` is FinGPT's for labelled data.
fn prompt_format(file: &ScenarioFile) -> super::file::PromptFormat {
    match (file.model.prompt, file.data.source.is_labelled()) {
        (super::file::PromptFormat::Auto, true) => super::file::PromptFormat::FinGpt,
        (p, _) => p,
    }
}

fn check_identity(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    c.ensure(
        !file.name.trim().is_empty(),
        field_path!(file.name),
        "is empty; give the scenario a name",
    )?;
    c.ensure(
        file.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
        field_path!(file.name),
        format!(
            "is {:?}; use letters, digits, '-', '_' or '.' (it names the run directory)",
            file.name
        ),
    )?;
    c.ensure(
        file.name.len() <= MAX_NAME,
        field_path!(file.name),
        format!(
            "is {} bytes long; it must be at most {MAX_NAME} (with a timestamp it names the run \
             directory, and file names stop at 255 bytes)",
            file.name.len()
        ),
    )?;
    c.ensure(
        (1..=100_000).contains(&file.rounds),
        field_path!(file.rounds),
        format!("is {}; it must be 1..=100000", file.rounds),
    )?;

    Ok(())
}

/// The model's shape, its name, and what its base will take in `model.base_precision`.
fn check_model(
    c: &Check<'_>,
    file: &ScenarioFile,
) -> Result<(LlamaConfig, String, Footprint), ScenarioError> {
    let precision = file.model.base_precision;
    let planned = |cfg: &LlamaConfig| Footprint::plan(cfg, precision, &|_| None);
    let (model, model_name, footprint) = match &file.model.source {
        ModelSource::Tiny { vocab_size } => {
            c.ensure(
                (300..=65_536).contains(vocab_size),
                field_path!(file.model.source => Tiny.vocab_size),
                format!(
                    "is {vocab_size}; it must be 300..=65536 (256 byte tokens + specials + merges)"
                ),
            )?;
            let cfg = LlamaConfig::tiny(*vocab_size);
            let f = planned(&cfg);
            (cfg, "fedsim/tiny".to_string(), f)
        }
        ModelSource::Custom(cfg) => {
            model::check_llama(c, cfg, field_path!(file.model.source => Custom))?;
            (cfg.clone(), "fedsim/custom".to_string(), planned(cfg))
        }
        ModelSource::Pretrained(spec) => {
            // The header alone: shapes for the LoRA checks, no weights read.
            let p = Pretrained::open_gguf(spec).map_err(|e| {
                c.fail(
                    field_path!(file.model.source => Pretrained),
                    crate::fmt::chain(&e),
                )
            })?;
            (p.config().clone(), spec.clone(), p.footprint(precision))
        }
        ModelSource::HuggingFace(dir) => {
            let p = Pretrained::open_hf(Path::new(dir)).map_err(|e| {
                c.fail(
                    field_path!(file.model.source => HuggingFace),
                    crate::fmt::chain(&e),
                )
            })?;
            (p.config().clone(), dir.clone(), p.footprint(precision))
        }
    };

    check_compute(c, file, &footprint)?;
    Ok((model, model_name, footprint))
}

/// `model.inference_activations` and `model.compute_dtype` against what the base holds.
fn check_compute(
    c: &Check<'_>,
    file: &ScenarioFile,
    footprint: &Footprint,
) -> Result<(), ScenarioError> {
    let precision = file.model.base_precision;
    let int8_weights = ["Q8_0", "Q4_1"]
        .iter()
        .any(|f| footprint.formats.contains_key(*f));
    c.ensure(
        file.model.inference_activations != InferenceActivations::Int8 || int8_weights,
        field_path!(file.model.inference_activations),
        format!(
            "is Int8, but the base holds no Q8_0 or Q4_1 weight (model.base_precision {}: \
             {footprint}), so 8-bit activations would change nothing; set \
             model.base_precision: Q8_0 or Q4_1 (for weights whose width is a multiple of 32), \
             or remove this field",
            precision.name()
        ),
    )?;
    let packed = footprint.formats.keys().any(|f| f != "F32");
    c.ensure(
        file.model.compute_dtype != ComputeDtype::Bf16 || packed,
        field_path!(file.model.compute_dtype),
        format!(
            "is Bf16, but the base holds no packed weight (model.base_precision {}: \
             {footprint}); bf16 matmuls run against a packed base: set model.base_precision: \
             Bf16, Q8_0 or Q4_1, or remove this field",
            precision.name()
        ),
    )?;
    Ok(())
}

fn check_clients(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let d = &file.data;
    let n = file.clients.count;
    c.ensure(
        (1..=10_000_000).contains(&n),
        field_path!(file.clients.count),
        format!("is {n}; it must be 1..=10000000"),
    )?;
    if let DataSource::Synthetic { records } = d.source {
        let plan = data_plan(file);
        if let Err(e) = plan.eval_count(records) {
            return Err(c.fail(
                field_path!(file.data.source => Synthetic.records),
                e.to_string(),
            ));
        }
    }
    let s = &file.strategy;
    c.finite_in(
        s.fraction_fit,
        Range::open_closed(0.0, 1.0),
        field_path!(file.strategy.fraction_fit),
    )?;
    c.ensure(
        (1..=n).contains(&s.min_fit_clients),
        field_path!(file.strategy.min_fit_clients),
        format!(
            "is {}; it must be 1..={n} (clients.count)",
            s.min_fit_clients
        ),
    )?;
    c.ensure(
        (1..=n).contains(&s.min_available_clients),
        field_path!(file.strategy.min_available_clients),
        format!(
            "is {}; it must be 1..={n} (clients.count)",
            s.min_available_clients
        ),
    )?;

    Ok(())
}

fn check_train(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let t = &file.train;
    if let Some(steps) = t.local_steps {
        c.ensure(
            (1..=1_000_000).contains(&steps),
            field_path!(file.train.local_steps),
            format!("is {steps}; it must be 1..=1000000, or None to use local_epochs"),
        )?;
    }
    c.ensure(
        (1..=1000).contains(&t.local_epochs),
        field_path!(file.train.local_epochs),
        format!("is {}; it must be 1..=1000", t.local_epochs),
    )?;
    c.ensure(
        (1..=4096).contains(&t.batch_size),
        field_path!(file.train.batch_size),
        format!("is {}; it must be 1..=4096", t.batch_size),
    )?;
    c.ensure(
        (1..=4096).contains(&t.eval_batch_size),
        field_path!(file.train.eval_batch_size),
        format!("is {}; it must be 1..=4096", t.eval_batch_size),
    )?;
    c.finite_in(
        t.lr_max,
        Range::open_closed(0.0, 10.0),
        field_path!(file.train.lr_max),
    )?;
    c.finite_in(
        t.lr_min,
        Range::closed(0.0, t.lr_max),
        field_path!(file.train.lr_min),
    )?;
    c.finite_in(
        t.weight_decay,
        Range::closed(0.0, 1.0),
        field_path!(file.train.weight_decay),
    )?;

    Ok(())
}

/// The synthetic trainer's update size (None for the LoRA trainer), checked.
fn check_synthetic(c: &Check<'_>, file: &ScenarioFile) -> Result<Option<usize>, ScenarioError> {
    Ok(match file.trainer {
        TrainerKind::Lora => None,
        TrainerKind::Synthetic { params } => {
            c.ensure(
                (1..=100_000_000).contains(&params),
                field_path!(file.trainer => Synthetic.params),
                format!("is {params}; it must be 1..=100000000"),
            )?;
            c.ensure(
                file.data.canaries == 0,
                field_path!(file.data.canaries),
                format!(
                    "is {} but the synthetic trainer reads no text; set 0, or use trainer: Lora",
                    file.data.canaries
                ),
            )?;
            Some(params)
        }
    })
}

fn check_resources(
    c: &Check<'_>,
    file: &ScenarioFile,
    model: &LlamaConfig,
    (threads, cores): (usize, usize),
    lora: &crate::model::LoraConfig,
    base: &Footprint,
) -> Result<(resources::MemoryEstimate, Vec<String>), ScenarioError> {
    let (d, t, sl, n) = (&file.data, &file.train, &file.slots, file.clients.count);
    let adapter_values = lora.trainable_parameters(model);
    system::check_system(c, (&file.system, field_path!(file.system)), n, file.seed)?;
    let mut warnings = Vec::new();
    if file.adapter.is_some() && file.lora != super::file::LoraSection::default() {
        warnings.push("the lora section is ignored: adapter is set and takes its place".into());
    }
    let synthetic = check_synthetic(c, file)?;
    let memory = resources::estimate(&resources::Shape {
        synthetic,
        model,
        base,
        generated: matches!(
            file.model.source,
            ModelSource::Tiny { .. } | ModelSource::Custom(_)
        ),
        batch_size: t.batch_size,
        eval_batch_size: t.eval_batch_size,
        max_seq_len: d.max_seq_len,
        virtual_tokens: lora.method.virtual_tokens(),
        residuals: match file.compression.error_feedback() {
            true => (file.clients.count, adapter_values),
            false => (0, 0),
        },
        slots: sl.count,
        source: &d.source,
        canary_copies: d.canaries.saturating_mul(d.canary_repeats),
        held_updates: strategy::held_updates(file, synthetic.unwrap_or(adapter_values)),
    });
    if let Some(avail) = resources::available_memory() {
        let (field, what) = memory.driver();
        c.ensure(
            memory.total() <= avail,
            field,
            format!(
                "makes the run need an estimated {} of memory but {} is available; the largest \
                 part is {what}, {}: make it smaller",
                resources::bytes(memory.total()),
                resources::bytes(avail),
                resources::bytes(memory.largest()),
            ),
        )?;
    }
    if synthetic.is_none() {
        // The synthetic trainer runs no matmuls: its slots are one thread each.
        warnings.extend(resources::oversubscription(sl.count, threads, cores));
    }

    Ok((memory, warnings))
}

fn check_dp(c: &Check<'_>, file: &ScenarioFile) -> Result<Option<DpPlan>, ScenarioError> {
    let dp = match &file.dp {
        None => None,
        Some(_)
            if matches!(
                file.system.stragglers,
                crate::stragglers::Stragglers::Async { .. }
            ) =>
        {
            return Err(c.fail(
                field_path!(file.dp),
                "is on but system.stragglers is Async: fedsim cannot account the privacy of \
                 staleness-weighted buffered aggregation; use Wait, Drop or OverSelect with DP",
            ))
        }
        Some(d) => {
            privacy::check_mechanism(c, &d.mechanism, field_path!(file.dp => mechanism))?;
            privacy::check_noise_by(c, d, file)?;
            c.finite_in(
                d.delta,
                Range::open(0.0, 1.0),
                field_path!(file.dp => delta),
            )?;
            if let Some(m) = d.max_epsilon {
                c.finite_in(
                    m,
                    Range::open_closed(0.0, 1e6),
                    field_path!(file.dp => max_epsilon),
                )?;
            }
            c.ensure(
                !d.pld || d.sampling == DpSampling::Poisson,
                field_path!(file.dp => pld),
                "is true but dp.sampling is Fixed; the PLD accountant covers Poisson sampling only \
                 (set dp.sampling: Poisson or dp.pld: false)",
            )?;
            if d.pld {
                check_pld(c, file, d)?;
            }
            Some(DpPlan {
                pld: d.pld,
                mechanism: d.mechanism,
                delta: d.delta,
                max_epsilon: d.max_epsilon,
                sampling: d.sampling,
                noise: d.noise,
                noise_by: d.noise_by,
                series: d.series,
                compositions: crate::topology::dp_compositions(&file.topology),
            })
        }
    };

    Ok(dp)
}

/// `dp.pld`: the PLD accountant's δ resolution and grid.
fn check_pld(c: &Check<'_>, file: &ScenarioFile, d: &DpSection) -> Result<(), ScenarioError> {
    c.ensure(
        d.delta >= crate::privacy::pld::MIN_DELTA,
        field_path!(file.dp => delta),
        format!(
            "is {} but the PLD accountant resolves delta down to {}; raise dp.delta or set \
             dp.pld: false (RDP covers any delta)",
            compact(d.delta),
            compact(crate::privacy::pld::MIN_DELTA)
        ),
    )?;
    crate::privacy::pld::check_grid(d.mechanism.noise_multiplier(), file.strategy.fraction_fit)
        .map_err(|e| {
            c.fail(
                field_path!(file.dp => pld),
                format!("is true but {e}; set dp.pld: false"),
            )
        })
}

fn data_plan(file: &ScenarioFile) -> DataPlan {
    let d = &file.data;
    DataPlan {
        source: d.source.clone(),
        eval_fraction: d.eval_fraction,
        canaries: d.canaries,
        canary_repeats: d.canary_repeats,
        partition: file.partition.clone(),
        clients: file.clients.count,
        seed: file.seed,
    }
}
