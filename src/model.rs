//! The causal LM: our own Llama forward in candle and adapters on its projections (LoRA, DoRA,
//! IA³) or before its input (prompt and prefix tuning).
//!
//! candle-transformers' `llama` returns only the last position and hides its layers, and
//! candle's fused `rms_norm` / `softmax_last_dim` / `rope` have no backward, so training needs
//! this forward, written with composed, differentiable ops and Hugging Face tensor names.

pub mod adapter;
mod attention;
pub mod bf16mm;
pub mod config;
mod dora;
pub mod fetch;
mod footprint;
mod frozen;
mod fused;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod lora;
mod named;
pub mod ops;
pub mod peft;
pub mod pretrained;
pub mod prompt;
pub mod q8dot;
mod qmatmul;
pub mod reference;
pub mod stages;
pub mod weight;

pub use adapter::{AdapterLayout, AdapterSet, PayloadReader, TensorKind};
pub use bf16mm::ComputeDtype;
pub use config::LlamaConfig;
pub use llama::{BaseModel, LossInput};
pub use lora::{AdapterMethod, LoraConfig, LoraVars, PromptInit};
pub use q8dot::InferenceActivations;
pub use weight::{BasePrecision, FrozenWeight};

use serde::{Deserialize, Serialize};

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A candle operation failed (shape mismatch, device error).
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
    /// A model or adapter file could not be written or read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Prompt tuning's `Text` init whose text has no tokens.
    #[error("prompt tuning's init text {text:?} has no tokens; give a text with words in it, or init: Random or SampleVocab")]
    EmptyPromptText {
        /// The text.
        text: String,
    },
    /// A serialised adapter does not match the expected layout.
    #[error("adapter does not match the model: {0}")]
    Layout(String),
    /// A base-model tensor is absent.
    #[error("the model has no tensor {name}")]
    MissingTensor {
        /// Hugging Face name.
        name: String,
    },
    /// A base-model tensor has another shape than the hyper-parameters imply.
    #[error("tensor {name} is {found:?}, the model's hyper-parameters need {expected:?}")]
    TensorShape {
        /// Hugging Face name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values: a corrupt file, or a diverged run's adapter.
    #[error("tensor {name} holds {count} non-finite value(s) (NaN or infinity), the first at flat index {first}; the file is corrupt or its training diverged: use another")]
    NonFinite {
        /// The tensor's name.
        name: String,
        /// How many values are not finite.
        count: usize,
        /// The first one's flat index.
        first: usize,
    },
    /// A GGUF file shorter than its header says (an interrupted download, say).
    #[error("{}: truncated GGUF file: tensor {tensor} ends at byte {end} but the file has {len} bytes; fetch it again", path.display())]
    GgufTruncated {
        /// The file.
        path: std::path::PathBuf,
        /// The first tensor past the end.
        tensor: String,
        /// Where its bytes end.
        end: u128,
        /// The file's length.
        len: u64,
    },
    /// What went wrong in one file.
    #[error("{}", path.display())]
    InFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ModelError>,
    },
    /// A GGUF file could not be read (truncated, corrupt, unknown tensor type).
    #[error("{}: not a readable GGUF model file", path.display())]
    Gguf {
        /// The file.
        path: std::path::PathBuf,
        /// What candle's reader said.
        #[source]
        source: candle_core::Error,
    },
    /// A prompt that is empty or fills the model's context.
    #[error("the prompt has {tokens} tokens; it must have at least 1 and fewer than the model's context of {context}")]
    Prompt {
        /// Its length.
        tokens: usize,
        /// max_position_embeddings.
        context: usize,
    },
    /// A model name or path that does not resolve.
    #[error(transparent)]
    Source(#[from] fetch::FetchError),
    /// A GGUF file holds something fedsim cannot load.
    #[error("{}: {problem}", path.display())]
    GgufUnsupported {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and what would work.
        problem: String,
    },
}

/// A linear projection of a decoder block that LoRA can adapt (PEFT's `target_modules` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetModule {
    /// `self_attn.q_proj`
    QProj,
    /// `self_attn.k_proj`
    KProj,
    /// `self_attn.v_proj`
    VProj,
    /// `self_attn.o_proj`
    OProj,
    /// `mlp.gate_proj`
    GateProj,
    /// `mlp.up_proj`
    UpProj,
    /// `mlp.down_proj`
    DownProj,
}

impl TargetModule {
    /// Every projection, in the canonical order used for adapter layouts.
    pub const ALL: [TargetModule; 7] = [
        TargetModule::QProj,
        TargetModule::KProj,
        TargetModule::VProj,
        TargetModule::OProj,
        TargetModule::GateProj,
        TargetModule::UpProj,
        TargetModule::DownProj,
    ];

    /// PEFT's short name (`q_proj`, …).
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::QProj => "q_proj",
            TargetModule::KProj => "k_proj",
            TargetModule::VProj => "v_proj",
            TargetModule::OProj => "o_proj",
            TargetModule::GateProj => "gate_proj",
            TargetModule::UpProj => "up_proj",
            TargetModule::DownProj => "down_proj",
        }
    }

    /// Parse PEFT's short name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Hugging Face path of the module inside layer `layer` (`model.layers.3.self_attn.q_proj`).
    pub fn hf_path(self, layer: usize) -> String {
        let block = match self {
            TargetModule::QProj
            | TargetModule::KProj
            | TargetModule::VProj
            | TargetModule::OProj => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.name())
    }

    /// Index into [`TargetModule::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl ModelError {
    /// `self`, said of `path`.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        ModelError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }

    /// Whether this is (or wraps) [`ModelError::NonFinite`].
    pub fn is_non_finite(&self) -> bool {
        match self {
            ModelError::NonFinite { .. } => true,
            ModelError::InFile { source, .. } => source.is_non_finite(),
            _ => false,
        }
    }
}

/// Refuse `values` of tensor `name` if any is NaN or infinite.
///
/// # Errors
/// [`ModelError::NonFinite`] naming the tensor, the count and the first index.
pub fn check_finite(name: &str, values: &[f32]) -> Result<(), ModelError> {
    let Some(first) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    Err(ModelError::NonFinite {
        name: name.to_string(),
        count: values[first..].iter().filter(|v| !v.is_finite()).count(),
        first,
    })
}
