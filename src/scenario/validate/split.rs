//! Checks of `topology: Split(...)`: the cut against the model, the codecs, the server's
//! throughput — and what split training does not combine with, by name and why.

use super::{Check, Range};
use crate::compress::Compression;
use crate::model::{AdapterMethod, LlamaConfig};
use crate::scenario::file::ScenarioFile;
use crate::scenario::ScenarioError;
use crate::split::CutCompression;
use crate::stragglers::Stragglers;
use crate::trainer::TrainerKind;

pub(super) fn check_split(
    c: &Check<'_>,
    file: &ScenarioFile,
    model: &LlamaConfig,
    method: &AdapterMethod,
) -> Result<(), ScenarioError> {
    let Some(split) = file.topology.split() else {
        return Ok(());
    };
    let f = "topology.Split";
    let layers = model.num_hidden_layers;
    c.ensure(
        split.cut_layer < layers,
        &format!("{f}.cut_layer"),
        format!(
            "is {}; the model has {layers} decoder layers and the server must keep at least one: \
             use 0..={}",
            split.cut_layer,
            layers - 1
        ),
    )?;
    for (name, codec) in [
        ("activation_compression", split.activation_compression),
        ("gradient_compression", split.gradient_compression),
    ] {
        if let CutCompression::TopK { fraction } = codec {
            c.finite_in(
                fraction,
                Range::open_closed(0.0, 1.0),
                &format!("{f}.{name}.TopK.fraction"),
            )?;
            c.ensure(
                model.hidden_size <= u16::MAX as usize,
                &format!("{f}.{name}"),
                format!(
                    "is TopK, whose u16 column indices cannot address a hidden size of {}; use \
                     Int8 or Fp16",
                    model.hidden_size
                ),
            )?;
        }
    }
    c.finite_in(
        split.server_flops,
        Range::closed(1e6, 1e18),
        &format!("{f}.server_flops"),
    )?;
    refusals(c, file, method)
}

/// What a split run cannot be combined with, and why.
fn refusals(
    c: &Check<'_>,
    file: &ScenarioFile,
    method: &AdapterMethod,
) -> Result<(), ScenarioError> {
    let refuse = |field: &str, why: &str| {
        c.fail(
            field,
            format!("cannot be combined with topology Split: {why}"),
        )
    };
    if let TrainerKind::Synthetic { .. } = file.trainer {
        return Err(refuse(
            "trainer",
            "the Synthetic trainer has no model to split; use trainer: Lora",
        ));
    }
    if method.virtual_tokens() > 0 {
        return Err(refuse(
            "adapter",
            "prompt and prefix tuning put virtual tokens in every layer's attention on both \
             sides of the cut, which split training does not send; use LoRA, DoRA or IA³ (or \
             topology Flat)",
        ));
    }
    if file.dp.is_some() {
        return Err(refuse(
            "dp",
            "client-level DP bounds what the averaged adapters reveal, but under Split the server \
             sees every step's activations of the private text, which no ε here covers; remove \
             the dp section (or use topology Flat)",
        ));
    }
    if file.strategy.secure_aggregation.is_some() {
        return Err(refuse(
            "strategy.secure_aggregation",
            "secure aggregation hides single updates from a server that, under Split, already \
             holds the server half of every client's model and sees its activations; remove it (or \
             use topology Flat)",
        ));
    }
    if file.compression != Compression::None {
        return Err(refuse(
            "compression",
            "compresses adapter uploads; under Split compress the activations and gradients with \
             topology.Split.activation_compression / gradient_compression",
        ));
    }
    if let Stragglers::Async { .. } = file.system.stragglers {
        return Err(refuse(
            "system.stragglers",
            "Async aggregation folds updates trained from older models, and the server half of \
             a split step is the round's; use Wait, Drop or OverSelect",
        ));
    }
    Ok(())
}
