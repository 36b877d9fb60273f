//! Checks of the model shape and the adapter (LoRA or IA³).

use super::{Check, Range};
use crate::model::{LlamaConfig, LoraConfig, TargetModule};
use crate::scenario::file::{AdapterSection, LoraSection, ScenarioFile};
use crate::scenario::ScenarioError;

/// A custom model shape, at path `f`.
pub(super) fn check_llama(c: &Check<'_>, cfg: &LlamaConfig, f: &str) -> Result<(), ScenarioError> {
    for (name, v) in [
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("vocab_size", cfg.vocab_size),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ] {
        c.ensure(
            v >= 1,
            &format!("{f}.{name}"),
            "is 0; it must be at least 1",
        )?;
    }
    // Bounds that keep every shape product far from overflow; memory is checked separately.
    for (name, v, max) in [
        ("hidden_size", cfg.hidden_size, 1 << 16),
        ("intermediate_size", cfg.intermediate_size, 1 << 18),
        ("num_hidden_layers", cfg.num_hidden_layers, 1024),
        ("num_attention_heads", cfg.num_attention_heads, 1024),
        ("num_key_value_heads", cfg.num_key_value_heads, 1024),
        ("vocab_size", cfg.vocab_size, 1 << 22),
        (
            "max_position_embeddings",
            cfg.max_position_embeddings,
            1 << 20,
        ),
    ] {
        c.ensure(
            v <= max,
            &format!("{f}.{name}"),
            format!("is {v}; it must be at most {max}"),
        )?;
    }
    c.ensure(
        cfg.vocab_size >= 300,
        &format!("{f}.vocab_size"),
        format!("is {}; it must be at least 300", cfg.vocab_size),
    )?;
    c.ensure(
        cfg.hidden_size % cfg.num_attention_heads == 0 && cfg.head_dim() % 2 == 0,
        &format!("{f}.num_attention_heads"),
        format!(
            "is {}; hidden_size {} must split into heads of even width",
            cfg.num_attention_heads, cfg.hidden_size
        ),
    )?;
    c.ensure(
        cfg.num_attention_heads % cfg.num_key_value_heads == 0,
        &format!("{f}.num_key_value_heads"),
        format!(
            "is {}; it must divide num_attention_heads {}",
            cfg.num_key_value_heads, cfg.num_attention_heads
        ),
    )?;
    c.finite_in(
        cfg.rms_norm_eps,
        Range::open_closed(0.0, 1.0),
        &format!("{f}.rms_norm_eps"),
    )?;
    c.finite_in(
        cfg.rope_theta,
        Range::closed(1.0, 1e9),
        &format!("{f}.rope_theta"),
    )
}

/// The adapter: `adapter: Lora(…) | Dora(…) | Ia3(…) | PromptTuning(…) | PrefixTuning(…)`, or
/// the `lora` section.
pub(super) fn check_lora(
    c: &Check<'_>,
    file: &ScenarioFile,
    model: &LlamaConfig,
) -> Result<LoraConfig, ScenarioError> {
    match &file.adapter {
        None => check_lora_section(c, &file.lora, "lora", model),
        Some(AdapterSection::Lora(l)) => check_lora_section(c, l, "adapter.Lora", model),
        Some(AdapterSection::Dora(l)) => Ok(LoraConfig {
            method: crate::model::AdapterMethod::Dora,
            ..check_lora_section(c, l, "adapter.Dora", model)?
        }),
        Some(AdapterSection::Ia3(s)) => {
            let f = "adapter.Ia3";
            let targets = modules(c, &s.target_modules, &format!("{f}.target_modules"))?;
            let ff_field = format!("{f}.feedforward_modules");
            let ff = if s.feedforward_modules.is_empty() {
                Vec::new()
            } else {
                modules(c, &s.feedforward_modules, &ff_field)?
            };
            if let Some(m) = ff.iter().find(|m| !targets.contains(m)) {
                return Err(c.fail(
                    &ff_field,
                    format!("names {:?}, which is not in target_modules", m.name()),
                ));
            }
            Ok(LoraConfig::ia3(targets, ff))
        }
        Some(AdapterSection::PromptTuning(p)) => {
            let f = "adapter.PromptTuning";
            check_virtual_tokens(c, file, p.num_virtual_tokens, f, model)?;
            if let crate::model::PromptInit::Text(text) = &p.init {
                c.ensure(
                    !text.trim().is_empty(),
                    &format!("{f}.init"),
                    "is Text(\"\"); give the text whose tokens start the prompt, or Random / SampleVocab",
                )?;
            }
            Ok(LoraConfig::prompt_tuning(
                p.num_virtual_tokens,
                p.init.clone(),
            ))
        }
        Some(AdapterSection::PrefixTuning(p)) => {
            let f = "adapter.PrefixTuning";
            check_virtual_tokens(c, file, p.num_virtual_tokens, f, model)?;
            Ok(LoraConfig::prefix_tuning(p.num_virtual_tokens))
        }
    }
}

/// n virtual tokens: at least one, and room for them and `data.max_seq_len` tokens in the
/// model's context.
fn check_virtual_tokens(
    c: &Check<'_>,
    file: &ScenarioFile,
    n: usize,
    f: &str,
    model: &LlamaConfig,
) -> Result<(), ScenarioError> {
    let room = model
        .max_position_embeddings
        .saturating_sub(file.data.max_seq_len);
    c.ensure(
        (1..=room).contains(&n),
        &format!("{f}.num_virtual_tokens"),
        format!(
            "is {n}; it must be 1..={room}: the virtual tokens and data.max_seq_len ({}) share the model's {} positions",
            file.data.max_seq_len, model.max_position_embeddings
        ),
    )
}

/// Module names → modules (canonical order), each known and named once.
fn modules(
    c: &Check<'_>,
    names: &[String],
    field: &str,
) -> Result<Vec<TargetModule>, ScenarioError> {
    const ALLOWED: &str = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj";
    c.ensure(
        !names.is_empty(),
        field,
        format!("is empty; name at least one of {ALLOWED}"),
    )?;
    let mut targets = Vec::new();
    for m in names {
        let t = TargetModule::from_name(m).ok_or_else(|| {
            c.fail(
                field,
                format!("names unknown module {m:?}; allowed: {ALLOWED}"),
            )
        })?;
        c.ensure(!targets.contains(&t), field, format!("names {m:?} twice"))?;
        targets.push(t);
    }
    targets.sort();
    Ok(targets)
}

fn check_lora_section(
    c: &Check<'_>,
    l: &LoraSection,
    f: &str,
    model: &LlamaConfig,
) -> Result<LoraConfig, ScenarioError> {
    let targets = modules(c, &l.target_modules, &format!("{f}.target_modules"))?;
    let max_r = targets
        .iter()
        .map(|&t| {
            let (o, i) = model.projection_shape(t);
            o.min(i)
        })
        .min()
        .unwrap_or(1);
    c.ensure(
        (1..=max_r).contains(&l.r),
        &format!("{f}.r"),
        format!(
            "is {}; it must be 1..={max_r} (the smallest adapted projection's width)",
            l.r
        ),
    )?;
    c.finite_in(l.alpha, Range::open_closed(0.0, 1e6), &format!("{f}.alpha"))?;
    c.finite_in(
        l.dropout,
        Range::closed_open(0.0, 1.0),
        &format!("{f}.dropout"),
    )?;
    Ok(LoraConfig {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        target_modules: targets,
        method: Default::default(),
    })
}
