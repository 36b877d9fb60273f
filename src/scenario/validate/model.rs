//! Checks of the model shape and the LoRA adapter.

use super::check::field_path;
use super::{Check, Range};
use crate::model::{LlamaConfig, LoraConfig, TargetModule};
use crate::scenario::file::ScenarioFile;
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

pub(super) fn check_lora(
    c: &Check<'_>,
    file: &ScenarioFile,
    model: &LlamaConfig,
) -> Result<LoraConfig, ScenarioError> {
    let l = &file.lora;
    c.ensure(!l.target_modules.is_empty(), field_path!(file.lora.target_modules), "is empty; name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")?;
    let mut targets = Vec::new();
    for m in &l.target_modules {
        let t = TargetModule::from_name(m).ok_or_else(|| {
            c.fail(
                field_path!(file.lora.target_modules),
                format!("names unknown module {m:?}; allowed: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
            )
        })?;
        c.ensure(
            !targets.contains(&t),
            field_path!(file.lora.target_modules),
            format!("names {m:?} twice"),
        )?;
        targets.push(t);
    }
    targets.sort();
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
        field_path!(file.lora.r),
        format!(
            "is {}; it must be 1..={max_r} (the smallest adapted projection's width)",
            l.r
        ),
    )?;
    c.finite_in(
        l.alpha,
        Range::open_closed(0.0, 1e6),
        field_path!(file.lora.alpha),
    )?;
    c.finite_in(
        l.dropout,
        Range::closed_open(0.0, 1.0),
        field_path!(file.lora.dropout),
    )?;
    Ok(LoraConfig {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        target_modules: targets,
    })
}
