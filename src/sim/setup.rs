//! The lines `sim run` prints about the set-up: model, trainable parameters, data, partition,
//! privacy, warnings.

use super::prepare::LoraData;
use super::Prepared;
use crate::scenario::Scenario;

/// What the CLI prints about the set-up.
pub(super) fn setup_lines(s: &Scenario, prep: &Prepared) -> Vec<String> {
    let sizes: Vec<usize> = prep.shards.iter().map(Vec::len).collect();
    let mut lines = match &prep.lora {
        Some(l) => lora_lines(s, prep, l, sizes.len()),
        None => synthetic_lines(s, prep, sizes.len()),
    };
    lines.push(format!("partition sizes: {}", size_line(&sizes)));
    if let Some(dp) = &s.dp {
        let c = dp.mechanism.initial_clip();
        let z = dp.mechanism.noise_multiplier();
        lines.push(format!(
            "differential privacy: {} (C = {c}, z = {z}, noise std on the sum {}), delta = {:e}{}; {}; noise {}",
            dp.mechanism.name(),
            dp.mechanism.value_noise_multiplier() * c,
            dp.delta,
            dp.max_epsilon.map_or(String::new(), |m| format!(", max epsilon {m}")),
            dp.assumption(),
            dp.noise.label()
        ));
    }
    lines.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
    lines
}

/// The model, its trainable parameters and the data, for the LoRA trainer.
fn lora_lines(s: &Scenario, prep: &Prepared, l: &LoraData, clients: usize) -> Vec<String> {
    let base_params = s.model.num_parameters();
    let trainable = s.lora.trainable_parameters(&s.model);
    let pct = 100.0 * trainable as f64 / (base_params + trainable) as f64;
    vec![
        format!(
            "model {}: {base_params} base parameters (frozen), {}",
            s.model_name,
            s.lora.describe()
        ),
        format!(
            "trainable params: {trainable} || all params: {} || trainable%: {pct:.4}",
            base_params + trainable
        ),
        format!(
            "data: {} training examples over {clients} clients ({:?}), {} held out, {} canaries, {} truncated to {} tokens",
            prep.train_examples,
            s.data.partition,
            prep.eval_examples,
            l.data.canaries.len(),
            l.truncated,
            s.max_seq_len
        ),
    ]
}

/// The update size and the data, for the synthetic trainer.
fn synthetic_lines(s: &Scenario, prep: &Prepared, clients: usize) -> Vec<String> {
    let params = s.trainer.layout(&s.model, &s.lora).len();
    vec![
        format!(
            "trainer: synthetic, {params} f32 values per update ({} bytes per message); \
             compute priced as LoRA on {} with {} tokens per example; no evaluation",
            params * 4,
            s.model_name,
            s.max_seq_len
        ),
        format!(
            "data: {} training examples over {clients} clients ({:?}), {} held out",
            prep.train_examples, s.data.partition, prep.eval_examples
        ),
    ]
}

fn size_line(sizes: &[usize]) -> String {
    if sizes.len() <= SIZES_LISTED {
        return format!("{sizes:?}");
    }
    let mut v = sizes.to_vec();
    v.sort_unstable();
    format!(
        "min {} / median {} / max {} (all in partitions.json)",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// Partition sizes listed one by one up to this many clients; a summary beyond.
const SIZES_LISTED: usize = 20;
