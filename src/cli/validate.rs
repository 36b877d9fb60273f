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
    let trained = match s.trainer {
        fedsim::trainer::TrainerKind::Lora => {
            format!("{} LoRA parameters", s.lora.trainable_parameters(&s.model))
        }
        fedsim::trainer::TrainerKind::Synthetic { params } => {
            format!("synthetic updates of {params} values")
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
    resources(&s)
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
        outln!("base: {} — {}", s.base_precision.name(), s.base_footprint)?;
    }
    outln!(
        "memory: about {} estimated at peak{}",
        bytes(s.memory.total()),
        available_memory().map_or(String::new(), |a| format!(" ({} available)", bytes(a)))
    )?;
    Ok(())
}
