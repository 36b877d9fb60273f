//! LoRA (Hu et al. 2021) on the projections of a frozen base: `y = x Wᵀ + (α/r) · drop(x) Aᵀ Bᵀ`.
//!
//! A is Kaiming-uniform initialised as PEFT does (`kaiming_uniform_(a = √5)`, i.e. U(±1/√in)),
//! B starts at zero so an untrained adapter leaves the base model unchanged. Only A and B are
//! trainable, and only they travel between server and clients.
//!
//! The same configuration also describes the other methods ([`AdapterMethod`]): DoRA (LoRA
//! plus a magnitude per output row, starting at the base's row norms) and IA³ (a vector per
//! projection, starting at ones); their forward is in `llama.rs`, their keys in `adapter.rs`.

use candle_core::{Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{AdapterLayout, AdapterSet, LlamaConfig, ModelError, TargetModule, TensorKind};

/// LoRA hyper-parameters (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update B·A.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout probability on the adapter's input during training.
    pub dropout: f64,
    /// Projections that get an adapter, in canonical order.
    pub target_modules: Vec<TargetModule>,
    /// LoRA, or IA³ (then `r`, `alpha` and `dropout` are unused).
    #[serde(default)]
    pub method: AdapterMethod,
}

/// Which parameter-efficient method the adapter is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AdapterMethod {
    /// LoRA: `y = x Wᵀ + (α/r) · x Aᵀ Bᵀ`.
    #[default]
    Lora,
    /// DoRA (Liu et al. 2024): LoRA's update with each output row's magnitude learned apart,
    /// `y = (m / ‖W + (α/r)·B·A‖) ⊙ (x Wᵀ + (α/r) · x Aᵀ Bᵀ)` (row norms, not differentiated, as
    /// PEFT's `use_dora`); m starts at the base's row norms.
    Dora,
    /// IA³ (Liu et al. 2022): a learned vector `l` per adapted projection, initialised to
    /// ones — `y = (x Wᵀ) ⊙ l` (l: out × 1), or for a feed-forward module `y = (x ⊙ l) Wᵀ`
    /// (l: 1 × in), as PEFT's `IA3Config` does.
    Ia3 {
        /// The target modules whose input (not output) is scaled, canonical order.
        feedforward_modules: Vec<TargetModule>,
    },
    /// Prompt tuning (Lester et al. 2021): `num_virtual_tokens` learned input embeddings in
    /// front of every sequence (PEFT's `PromptTuningConfig`; see `prompt.rs`).
    PromptTuning {
        /// n, the number of virtual tokens.
        num_virtual_tokens: usize,
        /// How the embeddings start.
        init: PromptInit,
    },
    /// Prefix tuning (Li & Liang 2021): `num_virtual_tokens` learned keys and values in front
    /// of every layer's (PEFT's `PrefixTuningConfig` without the projection MLP).
    PrefixTuning {
        /// n, the number of virtual tokens.
        num_virtual_tokens: usize,
    },
}

/// How prompt tuning's embeddings start (PEFT's `prompt_tuning_init`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PromptInit {
    /// N(0, 1) values, as PEFT's `RANDOM` (torch's `nn.Embedding` initialisation).
    #[default]
    Random,
    /// The base's embeddings of tokens drawn uniformly from the vocabulary (`SAMPLE_VOCAB`).
    SampleVocab,
    /// The base's embeddings of this text's tokens, repeated or cut to n (`TEXT`).
    Text(String),
}

impl PromptInit {
    /// PEFT's `prompt_tuning_init` name.
    pub fn peft_name(&self) -> &'static str {
        match self {
            PromptInit::Random => "RANDOM",
            PromptInit::SampleVocab => "SAMPLE_VOCAB",
            PromptInit::Text(_) => "TEXT",
        }
    }
}

impl AdapterMethod {
    /// PEFT's `peft_type`.
    pub fn peft_type(&self) -> &'static str {
        match self {
            AdapterMethod::Lora | AdapterMethod::Dora => "LORA",
            AdapterMethod::Ia3 { .. } => "IA3",
            AdapterMethod::PromptTuning { .. } => "PROMPT_TUNING",
            AdapterMethod::PrefixTuning { .. } => "PREFIX_TUNING",
        }
    }

    /// Whether `module`'s input is scaled (IA³ feed-forward module).
    pub fn scales_input(&self, module: TargetModule) -> bool {
        match self {
            AdapterMethod::Ia3 {
                feedforward_modules,
            } => feedforward_modules.contains(&module),
            _ => false,
        }
    }

    /// n for prompt and prefix tuning, 0 for the methods on projections.
    pub fn virtual_tokens(&self) -> usize {
        match self {
            AdapterMethod::PromptTuning {
                num_virtual_tokens, ..
            }
            | AdapterMethod::PrefixTuning { num_virtual_tokens } => *num_virtual_tokens,
            _ => 0,
        }
    }
}

impl LoraConfig {
    /// Rank `r` and `alpha` on q_proj and v_proj, without dropout: the setting of the
    /// PEFT parity check, the step benchmark and the reference tests.
    pub fn qv(r: usize, alpha: f64) -> Self {
        Self {
            r,
            alpha,
            dropout: 0.0,
            target_modules: vec![TargetModule::QProj, TargetModule::VProj],
            method: AdapterMethod::Lora,
        }
    }

    /// IA³ on `target_modules`, scaling the input of `feedforward_modules` (PEFT's default for
    /// Llama: k_proj, v_proj, down_proj with down_proj feed-forward).
    pub fn ia3(target_modules: Vec<TargetModule>, feedforward_modules: Vec<TargetModule>) -> Self {
        Self {
            r: 1,
            alpha: 1.0,
            dropout: 0.0,
            target_modules,
            method: AdapterMethod::Ia3 {
                feedforward_modules,
            },
        }
    }

    /// Prompt tuning with `num_virtual_tokens` embeddings starting as `init`.
    pub fn prompt_tuning(num_virtual_tokens: usize, init: PromptInit) -> Self {
        Self::virtual_tokens(AdapterMethod::PromptTuning {
            num_virtual_tokens,
            init,
        })
    }

    /// Prefix tuning with `num_virtual_tokens` keys and values per layer.
    pub fn prefix_tuning(num_virtual_tokens: usize) -> Self {
        Self::virtual_tokens(AdapterMethod::PrefixTuning { num_virtual_tokens })
    }

    fn virtual_tokens(method: AdapterMethod) -> Self {
        Self {
            r: 1,
            alpha: 1.0,
            dropout: 0.0,
            target_modules: Vec::new(),
            method,
        }
    }

    /// The method's name: `LoRA`, `DoRA`, `IA³`, `prompt tuning` or `prefix tuning`.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            AdapterMethod::Lora => "LoRA",
            AdapterMethod::Dora => "DoRA",
            AdapterMethod::Ia3 { .. } => "IA³",
            AdapterMethod::PromptTuning { .. } => "prompt tuning",
            AdapterMethod::PrefixTuning { .. } => "prefix tuning",
        }
    }

    /// One line: the method, its settings and its target modules.
    pub fn describe(&self) -> String {
        let names = |m: &[TargetModule]| m.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ");
        match &self.method {
            AdapterMethod::Lora | AdapterMethod::Dora => format!(
                "{} r={} alpha={} on [{}]",
                self.method_name(),
                self.r,
                self.alpha,
                names(&self.target_modules)
            ),
            AdapterMethod::Ia3 {
                feedforward_modules,
            } => format!(
                "IA³ on [{}] (input scaled: [{}])",
                names(&self.target_modules),
                names(feedforward_modules)
            ),
            AdapterMethod::PromptTuning {
                num_virtual_tokens,
                init,
            } => format!(
                "prompt tuning, {num_virtual_tokens} virtual tokens (init {})",
                init.peft_name()
            ),
            AdapterMethod::PrefixTuning { num_virtual_tokens } => {
                format!("prefix tuning, {num_virtual_tokens} virtual tokens per layer")
            }
        }
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Number of trainable parameters for `cfg`.
    pub fn trainable_parameters(&self, cfg: &LlamaConfig) -> usize {
        AdapterLayout::new(cfg, self).len()
    }

    /// The global adapter before round 1 for `model`: [`LoraConfig::init_adapter`], with
    /// DoRA's magnitudes set to the base's row norms ‖W‖ (so the adapter starts as the base).
    ///
    /// # Errors
    /// Fails when a packed weight cannot be read.
    pub fn init_adapter_for(
        &self,
        model: &super::BaseModel,
        rng: &mut ChaCha8Rng,
    ) -> Result<AdapterSet, ModelError> {
        self.init_adapter_with_text(model, &[], rng)
    }

    /// [`LoraConfig::init_adapter_for`], with prompt tuning's embeddings taken from the base:
    /// those of `text_ids` (the tokens of [`PromptInit::Text`], repeated or cut to n) or of
    /// tokens drawn from `rng` ([`PromptInit::SampleVocab`]).
    ///
    /// # Errors
    /// Fails when a packed weight cannot be read, or a text init has no tokens.
    pub fn init_adapter_with_text(
        &self,
        model: &super::BaseModel,
        text_ids: &[u32],
        rng: &mut ChaCha8Rng,
    ) -> Result<AdapterSet, ModelError> {
        let mut adapter = self.init_adapter(model.config(), rng);
        let layout = adapter.layout().clone();
        for t in layout.tensors() {
            let values = match t.kind {
                TensorKind::Magnitude => Some(model.row_norms(t.layer, t.module)?),
                TensorKind::Prompt => {
                    super::prompt::init_rows(&self.method, t.shape.0, text_ids, model, rng)?
                }
                _ => None,
            };
            if let Some(values) = values {
                adapter.data_mut()[t.offset..t.offset + t.numel()].copy_from_slice(&values);
            }
        }
        Ok(adapter)
    }

    /// The global adapter before round 1: LoRA's A Kaiming-uniform from `rng` and B zero;
    /// IA³'s vectors all ones (both leave the base model unchanged); prompt and prefix
    /// tuning's embeddings N(0, 1).
    pub fn init_adapter(&self, cfg: &LlamaConfig, rng: &mut ChaCha8Rng) -> AdapterSet {
        let layout = std::sync::Arc::new(AdapterLayout::new(cfg, self));
        let mut data = vec![0f32; layout.len()];
        for t in layout.tensors() {
            let values = &mut data[t.offset..t.offset + t.numel()];
            match t.kind {
                TensorKind::LoraA => {
                    let bound = 1.0 / (t.shape.1 as f32).sqrt();
                    for v in values {
                        *v = rng.random_range(-bound..bound);
                    }
                }
                TensorKind::LoraB => {}
                TensorKind::Ia3 => values.fill(1.0),
                // The base's row norms (LoraConfig::init_adapter_for); 1 without a base.
                TensorKind::Magnitude => values.fill(1.0),
                // N(0, 1), as torch's nn.Embedding (PEFT's RANDOM, and prefix tuning's only
                // initialisation); from the base's embeddings by init_adapter_for otherwise.
                TensorKind::Prompt => {
                    let normal = rand_distr::StandardNormal;
                    for v in values {
                        *v = rand_distr::Distribution::<f32>::sample(&normal, rng);
                    }
                }
            }
        }
        AdapterSet::new(layout, data)
    }
}

/// The trainable tensors of one adapter on one device, in layout order: LoRA's A and B (and
/// DoRA's magnitudes), IA³'s vectors, or prompt / prefix tuning's one tensor.
pub struct LoraVars {
    layout: std::sync::Arc<AdapterLayout>,
    vars: Vec<Var>,
    /// The same values as plain tensors when the adapter is only evaluated ([`LoraVars::fixed`]):
    /// no graph is recorded, so a forward frees each activation once it is used.
    fixed: Vec<Tensor>,
    /// Per layer, per [`TargetModule::index`]: position of A in `vars` (B follows it), or of
    /// the IA³ vector.
    index: Vec<[Option<usize>; 7]>,
    /// Position of prompt or prefix tuning's tensor.
    virtual_index: Option<usize>,
    scale: f64,
    dropout: f64,
    method: AdapterMethod,
}

impl LoraVars {
    /// Upload `adapter` to `device` as trainable variables.
    ///
    /// # Errors
    /// Fails when a tensor cannot be created on the device.
    pub fn from_adapter(
        adapter: &AdapterSet,
        lora: &LoraConfig,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut me = Self::fixed(adapter, lora, device)?;
        me.vars = std::mem::take(&mut me.fixed)
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<_, _>>()?;
        Ok(me)
    }

    /// Upload `adapter` to `device` for evaluation only: plain tensors, no gradients (a forward
    /// keeps no activations for a backward). [`LoraVars::vars`] is empty.
    ///
    /// # Errors
    /// Fails when a tensor cannot be created on the device.
    pub fn fixed(
        adapter: &AdapterSet,
        lora: &LoraConfig,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let layout = adapter.layout().clone();
        let mut fixed = Vec::with_capacity(layout.tensors().len());
        let mut index = vec![[None; 7]; layout.num_layers()];
        let mut virtual_index = None;
        for (i, t) in layout.tensors().iter().enumerate() {
            let slice = &adapter.data()[t.offset..t.offset + t.numel()];
            fixed.push(Tensor::from_slice(slice, t.shape, device)?);
            match t.kind {
                TensorKind::LoraA | TensorKind::Ia3 => index[t.layer][t.module.index()] = Some(i),
                TensorKind::Prompt => virtual_index = Some(i),
                TensorKind::LoraB | TensorKind::Magnitude => {}
            }
        }
        Ok(Self {
            layout,
            vars: Vec::new(),
            fixed,
            index,
            virtual_index,
            scale: lora.scale(),
            dropout: lora.dropout,
            method: lora.method.clone(),
        })
    }

    /// Tensor `i` in layout order.
    fn tensor(&self, i: usize) -> &Tensor {
        match self.vars.get(i) {
            Some(v) => v.as_tensor(),
            None => &self.fixed[i],
        }
    }

    /// The variables the optimiser updates.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Dropout probability on the adapter input.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// LoRA's (or DoRA's) A and B for `module` of `layer`, if adapted (None under IA³).
    pub fn get(&self, layer: usize, module: TargetModule) -> Option<(&Tensor, &Tensor)> {
        if let AdapterMethod::Ia3 { .. } = self.method {
            return None;
        }
        self.index
            .get(layer)
            .and_then(|l| l[module.index()])
            .map(|i| (self.tensor(i), self.tensor(i + 1)))
    }

    /// DoRA's magnitude (out × 1) for `module` of `layer`, if adapted with DoRA.
    pub fn magnitude(&self, layer: usize, module: TargetModule) -> Option<&Tensor> {
        if self.method != AdapterMethod::Dora {
            return None;
        }
        let i = self.index.get(layer).and_then(|l| l[module.index()])?;
        Some(self.tensor(i + 2))
    }

    /// IA³'s vector for `module` of `layer` and whether it scales the input, if adapted.
    pub fn ia3(&self, layer: usize, module: TargetModule) -> Option<(&Tensor, bool)> {
        let AdapterMethod::Ia3 { .. } = self.method else {
            return None;
        };
        let i = self.index.get(layer).and_then(|l| l[module.index()])?;
        Some((self.tensor(i), self.method.scales_input(module)))
    }

    /// Prompt or prefix tuning's tensor (the variable itself when training, so the gradient
    /// reaches it).
    pub fn virtual_tokens(&self) -> Option<super::prompt::VirtualTokens> {
        let t = self.tensor(self.virtual_index?).clone();
        match self.method {
            AdapterMethod::PromptTuning { .. } => Some(super::prompt::VirtualTokens::Prompt(t)),
            AdapterMethod::PrefixTuning { .. } => Some(super::prompt::VirtualTokens::Prefix(t)),
            _ => None,
        }
    }

    /// Copy the current values back into a flat adapter.
    ///
    /// # Errors
    /// Fails when a tensor cannot be read back from the device.
    pub fn to_adapter(&self) -> Result<AdapterSet, ModelError> {
        let mut data = Vec::with_capacity(self.layout.len());
        for i in 0..self.vars.len().max(self.fixed.len()) {
            data.extend(self.tensor(i).flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(AdapterSet::new(self.layout.clone(), data))
    }
}

/// Source of dropout masks: seeded, so training is reproducible (candle's own dropout draws
/// from an unseeded thread RNG on CPU).
pub struct DropoutRng {
    rng: ChaCha8Rng,
}

impl DropoutRng {
    /// Masks drawn from `rng`.
    pub fn new(rng: ChaCha8Rng) -> Self {
        Self { rng }
    }

    /// Inverted dropout of `x` with probability `p`.
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn apply(&mut self, x: &Tensor, p: f64) -> Result<Tensor, ModelError> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f64>() < p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(x.mul(&mask)?)
    }
}
