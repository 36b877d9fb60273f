//! Pretrained base models: a GGUF file (or a known name resolved through the cache) or a
//! Hugging Face directory (`config.json`, `*.safetensors`, `tokenizer.json`). The header or
//! config alone gives the shapes (what `sim validate` checks); the weights are read by a run.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::gguf::GgufHeader;
use super::weight::{BasePrecision, Footprint};
use super::{fetch, BaseModel, LlamaConfig, ModelError};
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// A pretrained model, opened (shapes known, weights not read).
pub struct Pretrained {
    path: PathBuf,
    format: Format,
    config: LlamaConfig,
}

enum Format {
    Gguf(Box<GgufHeader>),
    HuggingFace(HfFiles),
}

struct HfFiles {
    weights: Vec<PathBuf>,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

/// The fields of a Hugging Face `config.json` fedsim needs (others are ignored).
#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    head_dim: Option<usize>,
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

fn default_theta() -> f64 {
    10_000.0
}

fn bad(path: &Path, message: String) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message,
    }
}

impl Pretrained {
    /// A GGUF file, or a known model name resolved through the cache.
    ///
    /// # Errors
    /// [`ModelError::Source`] (not fetched, no such model) or a header error.
    pub fn open_gguf(spec: &str) -> Result<Self, ModelError> {
        let path = fetch::resolve(spec)?;
        let header = GgufHeader::read(&path)?;
        let config = header.config()?;
        Ok(Self {
            path,
            format: Format::Gguf(Box::new(header)),
            config,
        })
    }

    /// A Hugging Face model directory.
    ///
    /// # Errors
    /// [`ModelError::File`] naming the file and what is wrong.
    pub fn open_hf(dir: &Path) -> Result<Self, ModelError> {
        let (config, hf) = hf_config(dir)?;
        let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| bad(dir, e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        weights.sort();
        if weights.is_empty() {
            return Err(bad(dir, "has no *.safetensors weights".into()));
        }
        let eos_id = match hf.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
            Some(serde_json::Value::Array(v)) => {
                v.first().and_then(|n| n.as_u64()).map(|n| n as u32)
            }
            _ => None,
        };
        let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("chat_template")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            });
        Ok(Self {
            path: dir.to_path_buf(),
            format: Format::HuggingFace(HfFiles {
                weights,
                eos_id,
                chat_template,
            }),
            config,
        })
    }

    /// A model named on the command line: a Hugging Face directory, a GGUF file, or a known
    /// name in the cache.
    ///
    /// # Errors
    /// As [`Pretrained::open_hf`] / [`Pretrained::open_gguf`].
    pub fn open(spec: &str) -> Result<Self, ModelError> {
        if Path::new(spec).is_dir() {
            Self::open_hf(Path::new(spec))
        } else {
            Self::open_gguf(spec)
        }
    }

    /// The file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Read the weights (dequantised to f32) onto `device`.
    ///
    /// # Errors
    /// A read, format or shape error naming the file.
    pub fn load(&self, device: &Device) -> Result<BaseModel, ModelError> {
        self.load_as(device, BasePrecision::F32)
    }

    /// Read the weights with the 2-D ones held in `precision` (packed ones on the CPU).
    ///
    /// # Errors
    /// A read, format or shape error naming the file.
    pub fn load_as(
        &self,
        device: &Device,
        precision: BasePrecision,
    ) -> Result<BaseModel, ModelError> {
        match &self.format {
            Format::Gguf(h) => h.load_as(device, precision),
            Format::HuggingFace(files) => {
                let mut tensors = HashMap::new();
                for w in &files.weights {
                    let t = candle_core::safetensors::load(w, device).map_err(|source| {
                        bad(
                            w,
                            format!("unreadable safetensors: {}", super::gguf::plain(source)),
                        )
                    })?;
                    tensors.extend(t);
                }
                if self.config.tie_word_embeddings {
                    tensors.remove("lm_head.weight");
                }
                BaseModel::from_named_as(&self.config, tensors, device, precision)
                    .map_err(|e| e.in_file(&self.path))
            }
        }
    }

    /// What `precision` will make of the base's weights, from the header alone.
    pub fn footprint(&self, precision: BasePrecision) -> Footprint {
        let stored = |hf: &str| match &self.format {
            Format::Gguf(h) => h.stored_type(hf),
            Format::HuggingFace(_) => None,
        };
        Footprint::plan(&self.config, precision, &stored)
    }

    /// The model's tokenizer.
    ///
    /// # Errors
    /// Missing or malformed tokenizer data.
    pub fn tokenizer(&self) -> Result<TextTokenizer, TokenizerError> {
        match &self.format {
            Format::Gguf(h) => TextTokenizer::from_gguf(h.as_ref()),
            Format::HuggingFace(files) => {
                TextTokenizer::from_file_with_eos(&self.path.join("tokenizer.json"), files.eos_id)
            }
        }
    }

    /// The chat template it ships, if any.
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        match &self.format {
            Format::Gguf(h) => crate::tokenizer::chat_template(h.as_ref()),
            Format::HuggingFace(f) => f.chat_template.as_deref().map(ChatTemplate::new),
        }
    }

    /// SHA-256 of the weights: of the GGUF file, or of the safetensors files in name order.
    ///
    /// # Errors
    /// A read error naming the file.
    pub fn sha256(&self) -> Result<String, ModelError> {
        let files: Vec<&Path> = match &self.format {
            Format::Gguf(_) => vec![&self.path],
            Format::HuggingFace(f) => f.weights.iter().map(PathBuf::as_path).collect(),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for path in files {
            let mut file = std::fs::File::open(path).map_err(|e| bad(path, e.to_string()))?;
            loop {
                let n = file.read(&mut buf).map_err(|e| bad(path, e.to_string()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// A Hugging Face directory's `config.json`: the Llama shape it gives, and the file as read
/// (for its token ids).
fn hf_config(dir: &Path) -> Result<(LlamaConfig, HfConfig), ModelError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e.to_string()))?;
    let hf: HfConfig = serde_json::from_str(&text)
        .map_err(|e| bad(&cfg_path, format!("not a Llama config.json: {e}")))?;
    if hf.model_type != "llama" {
        return Err(bad(
            &cfg_path,
            format!(
                "model_type {:?} is not supported: fedsim loads Llama-architecture models",
                hf.model_type
            ),
        ));
    }
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(bad(
            &cfg_path,
            "rope_scaling is set; fedsim implements plain RoPE".into(),
        ));
    }
    let config = LlamaConfig {
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        vocab_size: hf.vocab_size,
        rms_norm_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        max_position_embeddings: hf.max_position_embeddings,
        tie_word_embeddings: hf.tie_word_embeddings,
    };
    if hf.num_attention_heads == 0 || hf.head_dim.is_some_and(|d| d != config.head_dim()) {
        return Err(bad(
            &cfg_path,
            "head_dim differs from hidden_size / num_attention_heads".into(),
        ));
    }
    Ok((config, hf))
}
