//! `sim generate`: answer a prompt with a GGUF model, optionally with an adapter merged in.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use fedsim::model::generate::{generate as run_generation, Budget, Sampling, Stop};
use fedsim::model::pretrained::Pretrained;
use fedsim::model::{peft, BaseModel, InferenceActivations, LoraVars};
use fedsim::tokenizer::chat::{ChatTemplate, Message, Role};

use super::out::outln;

/// Arguments of `sim generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A GGUF file, a Hugging Face model directory, or a known model fetched with
    /// `sim fetch-model` (smollm2-135m-instruct).
    #[arg(long)]
    pub model: String,
    /// An adapter to merge in (LoRA, DoRA, IA³, prompt or prefix tuning): a run directory or any
    /// PEFT adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Do not stop at the end-of-sequence token before this many new tokens (for timing
    /// against other tools' `min_new_tokens`).
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens up to this cumulative probability.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A system message (otherwise the template's default, if it has one).
    #[arg(long)]
    pub system: Option<String>,
    /// Use the prompt as it is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// How the frozen base is held: F32, Bf16, Q8_0, Q4_1 or Stored (an adapted projection
    /// is merged into f32).
    #[arg(long, default_value = "F32")]
    pub base_precision: fedsim::model::BasePrecision,
    /// What a Q8_0/Q4_1 base's matmuls take while generating: F32 (the training forward's
    /// numbers) or Int8 (8-bit blocks, as llama.cpp: about twice as fast, logits slightly off).
    #[arg(long, default_value = "F32")]
    pub inference_activations: fedsim::model::InferenceActivations,
    /// The prompt.
    pub prompt: String,
}

fn sampling(a: &GenerateArgs) -> anyhow::Result<Sampling> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        anyhow::bail!("--temperature must be ≥ 0 (0 decodes greedily)");
    }
    if a.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    if a.top_k == Some(0) {
        anyhow::bail!("--top-k must be at least 1");
    }
    Ok(if a.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        }
    })
}

/// Run `sim generate`.
pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let sampling = sampling(&a)?;
    // Opening checks the architecture first: the clearest error for a foreign file.
    let source = Pretrained::open(&a.model)?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("{}: tokenizer", source.path().display()))?;
    let mut model = with_activations(
        source.load_as(&Device::Cpu, a.base_precision)?,
        a.inference_activations,
    )?;
    if let Some(dir) = &a.adapter {
        let (adapter, lora) = peft::load_peft(dir, model.config())?;
        let vars = LoraVars::fixed(&adapter, &lora, &Device::Cpu)?;
        model = model.merged(&vars)?;
    }
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let template = source.chat_template().unwrap_or_default();
        render(&template, a.system.as_deref(), &a.prompt)?
    };
    let ids = tokenizer.encode(&text)?;
    let out = run_generation(
        &model,
        &ids,
        Budget {
            min_new: a.min_tokens,
            max_new: a.max_tokens,
        },
        sampling,
        &[tokenizer.eos_id()],
    )?;
    outln!("{}", tokenizer.decode(&out.ids)?.trim_end())?;
    let stop = match out.stop {
        Stop::EndOfSequence => "end of sequence",
        Stop::MaxTokens => "--max-tokens reached",
        Stop::ContextFull => "context full",
    };
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s after a {}-token prompt read in {:.2} s); stopped: {stop}",
        out.ids.len(),
        out.decode_seconds + out.prefill_seconds,
        out.tokens_per_second(),
        ids.len(),
        out.prefill_seconds,
    );
    Ok(())
}

fn render(template: &ChatTemplate, system: Option<&str>, prompt: &str) -> anyhow::Result<String> {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message {
            role: Role::System,
            content: s,
        });
    }
    messages.push(Message {
        role: Role::User,
        content: prompt,
    });
    Ok(template.render(&messages, true)?)
}

/// `model` with `activations` for its KV-cache inference; Int8 refused where no weight takes it.
pub fn with_activations(
    model: BaseModel,
    activations: InferenceActivations,
) -> anyhow::Result<BaseModel> {
    let footprint = model.footprint();
    let takes = ["Q8_0", "Q4_1"]
        .iter()
        .any(|f| footprint.formats.contains_key(*f));
    if activations == InferenceActivations::Int8 && !takes {
        anyhow::bail!(
            "--inference-activations Int8 needs a base with Q8_0 or Q4_1 weights: add \
             --base-precision Q8_0 or Q4_1 (this base holds {footprint})"
        );
    }
    Ok(model.with_inference_activations(activations))
}
