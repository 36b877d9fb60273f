//! Llama-family hyper-parameters and named presets.

use serde::{Deserialize, Serialize};

/// Hyper-parameters of a Llama-architecture causal LM (Hugging Face `LlamaConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest sequence the RoPE tables are built for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding (SmolLM2 does).
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// The built-in `tiny` model: small enough to fine-tune federatedly on 2 CPU cores in minutes.
    ///
    /// The vocabulary is small on purpose: with 49k tokens the logits dominate a small model.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            vocab_size,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            // Untied: the input embedding keeps HF's small init while the head gets a scale
            // whose logits can express a peaked distribution (see `BaseModel::random`).
            tie_word_embeddings: false,
        }
    }

    /// SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, vocab 49,152).
    pub fn smollm2_135m() -> Self {
        Self {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            vocab_size: 49_152,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// (out, in) shape of a projection by its Hugging Face module name.
    pub fn projection_shape(&self, module: super::TargetModule) -> (usize, usize) {
        use super::TargetModule::*;
        let h = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim();
        let i = self.intermediate_size;
        match module {
            QProj | OProj => (h, h),
            KProj | VProj => (kv, h),
            GateProj | UpProj => (i, h),
            DownProj => (h, i),
        }
    }

    /// Total number of base parameters.
    pub fn num_parameters(&self) -> usize {
        let per_layer: usize = super::TargetModule::ALL
            .iter()
            .map(|&m| {
                let (o, i) = self.projection_shape(m);
                o * i
            })
            .sum::<usize>()
            + 2 * self.hidden_size;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * self.hidden_size
        };
        self.vocab_size * self.hidden_size
            + self.num_hidden_layers * per_layer
            + self.hidden_size
            + head
    }
}
