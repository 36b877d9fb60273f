//! The fixed model + adapter used for parity tests against Hugging Face transformers + PEFT
//! (`tests/reference/make_peft_reference.py`, `examples/export_reference.rs`). Everything is
//! drawn from fixed seeds with ChaCha8, so any machine rebuilds it bit for bit.

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    AdapterMethod, AdapterSet, BaseModel, LlamaConfig, LoraConfig, ModelError, PromptInit,
    TargetModule, TensorKind,
};

/// A small GQA model with an untied head, and an adapter on every projection.
pub struct Fixture {
    /// Model shape.
    pub cfg: LlamaConfig,
    /// LoRA hyper-parameters.
    pub lora: LoraConfig,
    /// The base.
    pub model: BaseModel,
    /// The adapter (A and B random, so it changes the logits).
    pub adapter: AdapterSet,
}

/// Token ids the reference scores (two sequences of 12).
pub const INPUT_IDS: [[u32; 12]; 2] = [
    [1, 17, 250, 3, 99, 42, 42, 7, 180, 299, 0, 64],
    [5, 6, 7, 8, 9, 10, 200, 201, 202, 13, 14, 2],
];

impl Fixture {
    /// Rebuild the fixture.
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn build() -> Result<Self, ModelError> {
        let cfg = LlamaConfig {
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            vocab_size: 300,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
        };
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: TargetModule::ALL.to_vec(),
            method: Default::default(),
        };
        let model = BaseModel::random(&cfg, 1234, &Device::Cpu)?;
        let mut rng = ChaCha8Rng::seed_from_u64(5678);
        let mut adapter = lora.init_adapter(&cfg, &mut rng);
        for v in adapter.data_mut() {
            *v = rng.random_range(-0.1f32..0.1);
        }
        Ok(Self {
            cfg,
            lora,
            model,
            adapter,
        })
    }
}

impl Fixture {
    /// The same base with an IA³ adapter on every projection, the inputs of up_proj and
    /// down_proj scaled (feed-forward), each vector 1 + U(−0.3, 0.3) (so it changes the
    /// logits): the fixture of `tests/reference/make_method_reference.py` (`ia3_reference.json`).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn build_ia3() -> Result<Self, ModelError> {
        let base = Self::build()?;
        let lora = LoraConfig::ia3(
            TargetModule::ALL.to_vec(),
            vec![TargetModule::UpProj, TargetModule::DownProj],
        );
        let mut rng = ChaCha8Rng::seed_from_u64(91011);
        let mut adapter = lora.init_adapter(&base.cfg, &mut rng);
        for v in adapter.data_mut() {
            *v += rng.random_range(-0.3f32..0.3);
        }
        Ok(Self {
            lora,
            adapter,
            ..base
        })
    }
}

impl Fixture {
    /// The same base with a DoRA adapter (r 4, alpha 8, every projection): A and B as the LoRA
    /// fixture's, each magnitude the base's row norm times 1 + U(−0.2, 0.2) — the fixture of
    /// `tests/reference/make_method_reference.py` (`dora_reference.json`).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn build_dora() -> Result<Self, ModelError> {
        let base = Self::build()?;
        let lora = LoraConfig {
            method: AdapterMethod::Dora,
            ..base.lora.clone()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(121314);
        let mut adapter = lora.init_adapter_for(&base.model, &mut rng)?;
        let layout = adapter.layout().clone();
        for t in layout.tensors() {
            for v in &mut adapter.data_mut()[t.offset..t.offset + t.numel()] {
                match t.kind {
                    TensorKind::Magnitude => *v *= 1.0 + rng.random_range(-0.2f32..0.2),
                    _ => *v = rng.random_range(-0.1f32..0.1),
                }
            }
        }
        Ok(Self {
            lora,
            adapter,
            ..base
        })
    }
}

/// The adapter the SmolLM2 PEFT parity check uses: rank 8 on q_proj and v_proj, A and B drawn
/// from a fixed seed (B non-zero, so it changes the logits).
pub fn smollm2_adapter(cfg: &LlamaConfig) -> (LoraConfig, AdapterSet) {
    let lora = LoraConfig::qv(8, 16.0);
    let mut rng = ChaCha8Rng::seed_from_u64(2468);
    let mut adapter = lora.init_adapter(cfg, &mut rng);
    for v in adapter.data_mut() {
        *v = rng.random_range(-0.03f32..0.03);
    }
    (lora, adapter)
}

/// The DoRA adapter of the SmolLM2 PEFT parity check: the LoRA adapter's A and B with each
/// magnitude the base's row norm times 1 + U(−0.1, 0.1) from a fixed seed.
///
/// # Errors
/// Fails when the base's weights cannot be read.
pub fn smollm2_dora_adapter(model: &BaseModel) -> Result<(LoraConfig, AdapterSet), ModelError> {
    let (lora, plain) = smollm2_adapter(model.config());
    let lora = LoraConfig {
        method: AdapterMethod::Dora,
        ..lora
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3579);
    let mut adapter = lora.init_adapter_for(model, &mut rng)?;
    let layout = adapter.layout().clone();
    let mut from_plain = plain.data().iter();
    for t in layout.tensors() {
        for v in &mut adapter.data_mut()[t.offset..t.offset + t.numel()] {
            match t.kind {
                TensorKind::Magnitude => *v *= 1.0 + rng.random_range(-0.1f32..0.1),
                _ => *v = *from_plain.next().expect("the LoRA adapter's values"),
            }
        }
    }
    Ok((lora, adapter))
}

/// The IA³ adapter of the SmolLM2 PEFT parity check: PEFT's default targets for Llama (k_proj,
/// v_proj, down_proj, down_proj scaled at its input), each vector 1 + U(−0.2, 0.2) from a fixed
/// seed.
pub fn smollm2_ia3_adapter(cfg: &LlamaConfig) -> (LoraConfig, AdapterSet) {
    let lora = LoraConfig::ia3(
        vec![
            TargetModule::KProj,
            TargetModule::VProj,
            TargetModule::DownProj,
        ],
        vec![TargetModule::DownProj],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1357);
    let mut adapter = lora.init_adapter(cfg, &mut rng);
    for v in adapter.data_mut() {
        *v += rng.random_range(-0.2f32..0.2);
    }
    (lora, adapter)
}

impl Fixture {
    /// The same base with prompt tuning: 5 virtual tokens, each value 0.5·N(0, 1) from a fixed
    /// seed — the fixture of `tests/reference/make_method_reference.py`
    /// (`prompt_reference.json`).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn build_prompt() -> Result<Self, ModelError> {
        Self::build_virtual(
            LoraConfig::prompt_tuning(5, PromptInit::Random),
            0.5,
            161718,
        )
    }

    /// The same base with prefix tuning: 4 virtual keys and values per layer, each value
    /// N(0, 1) from a fixed seed (`prefix_reference.json`).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn build_prefix() -> Result<Self, ModelError> {
        Self::build_virtual(LoraConfig::prefix_tuning(4), 1.0, 192021)
    }

    fn build_virtual(lora: LoraConfig, scale: f32, seed: u64) -> Result<Self, ModelError> {
        let base = Self::build()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut adapter = lora.init_adapter(&base.cfg, &mut rng);
        adapter.data_mut().iter_mut().for_each(|v| *v *= scale);
        Ok(Self {
            lora,
            adapter,
            ..base
        })
    }
}

/// The prompt tuning adapter of the SmolLM2 PEFT parity check: 8 virtual tokens, each value
/// 0.1·N(0, 1) from a fixed seed.
pub fn smollm2_prompt_adapter(cfg: &LlamaConfig) -> (LoraConfig, AdapterSet) {
    let lora = LoraConfig::prompt_tuning(8, PromptInit::Random);
    let mut adapter = lora.init_adapter(cfg, &mut ChaCha8Rng::seed_from_u64(2223));
    adapter.data_mut().iter_mut().for_each(|v| *v *= 0.1);
    (lora, adapter)
}

/// The prefix tuning adapter of the SmolLM2 PEFT parity check: 8 virtual keys and values per
/// layer, each value N(0, 1) from a fixed seed.
pub fn smollm2_prefix_adapter(cfg: &LlamaConfig) -> (LoraConfig, AdapterSet) {
    let lora = LoraConfig::prefix_tuning(8);
    let adapter = lora.init_adapter(cfg, &mut ChaCha8Rng::seed_from_u64(2425));
    (lora, adapter)
}
