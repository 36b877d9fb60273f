//! The adapter's sections of a scenario file: `lora: (…)` and `adapter: Some(Lora(…) | Dora(…) |
//! Ia3(…) | PromptTuning(…) | PrefixTuning(…))`.

use serde::{Deserialize, Serialize};

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank.
    pub r: usize,
    /// Scale numerator (`lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapter input.
    pub dropout: f64,
    /// Adapted projections by PEFT name: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj.
    pub target_modules: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

/// The adapter's method (`adapter:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AdapterSection {
    /// LoRA, as the `lora` section.
    Lora(LoraSection),
    /// DoRA: LoRA with a learned magnitude per output row (PEFT's `use_dora`), the `lora`
    /// section's fields.
    Dora(LoraSection),
    /// IA³: a learned vector per adapted projection (PEFT's `IA3Config`).
    Ia3(Ia3Section),
    /// Prompt tuning: learned input embeddings in front of every sequence (PEFT's
    /// `PromptTuningConfig`).
    PromptTuning(PromptTuningSection),
    /// Prefix tuning: learned keys and values in front of every layer's (PEFT's
    /// `PrefixTuningConfig`, without the projection MLP).
    PrefixTuning(PrefixTuningSection),
}

/// Prompt tuning hyper-parameters (PEFT's `PromptTuningConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptTuningSection {
    /// Virtual tokens in front of every sequence.
    pub num_virtual_tokens: usize,
    /// How they start: `Random` (N(0, 1), PEFT's default), `SampleVocab` (embeddings of
    /// random vocabulary tokens) or `Text("…")` (embeddings of the text's tokens).
    pub init: crate::model::PromptInit,
}

impl Default for PromptTuningSection {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            init: crate::model::PromptInit::Random,
        }
    }
}

/// Prefix tuning hyper-parameters (PEFT's `PrefixTuningConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixTuningSection {
    /// Virtual keys and values in front of every layer's.
    pub num_virtual_tokens: usize,
}

impl Default for PrefixTuningSection {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
        }
    }
}

/// IA³ hyper-parameters (PEFT's `IA3Config` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ia3Section {
    /// Adapted projections by PEFT name (PEFT's default for Llama: k_proj, v_proj, down_proj).
    pub target_modules: Vec<String>,
    /// Those whose input is scaled rather than their output (a subset of `target_modules`;
    /// PEFT's default for Llama: down_proj).
    pub feedforward_modules: Vec<String>,
}

impl Default for Ia3Section {
    fn default() -> Self {
        Self {
            target_modules: vec!["k_proj".into(), "v_proj".into(), "down_proj".into()],
            feedforward_modules: vec!["down_proj".into()],
        }
    }
}
