//! Loading a Llama-architecture model from a GGUF file (llama.cpp's format): hyper-parameters
//! from the metadata, every tensor dequantised to f32 (Q4_0, Q4_1, Q8_0, F16, F32 and the other
//! types candle reads), llama.cpp's tensor names mapped to Hugging Face's, and the converter's
//! permutation of q/k rows undone so the rotate-half RoPE of [`super::BaseModel`] applies.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::llama::role_of;
use super::weight::{BasePrecision, FrozenWeight};
use super::{BaseModel, LlamaConfig, ModelError};

/// candle's error without the backtrace it captures under RUST_BACKTRACE (a message for users).
pub(super) fn plain(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(*inner),
        e => e,
    }
}

/// A GGUF file's header: metadata and tensor descriptions, without the weights.
pub struct GgufHeader {
    path: PathBuf,
    content: Content,
}

/// Tensor types fedsim loads (dequantised to f32, or kept packed by `model.base_precision`).
const SUPPORTED: [GgmlDType; 13] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::F32,
];

impl GgufHeader {
    /// Read the header of `path` (metadata and tensor table; no weights).
    ///
    /// # Errors
    /// [`ModelError::File`] when the file cannot be opened, [`ModelError::Gguf`] when it is not
    /// a GGUF file or is truncated.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| ModelError::Gguf {
            path: path.to_path_buf(),
            source: plain(e),
        })?;
        let header = Self {
            path: path.to_path_buf(),
            content,
        };
        header.check_integrity()?;
        Ok(header)
    }

    /// What the header promises, checked against the file before any weight is read (so
    /// `validate`, which reads only headers, refuses what loading would): every tensor of a
    /// type fedsim dequantises, and every tensor's bytes inside the file.
    fn check_integrity(&self) -> Result<(), ModelError> {
        let len = std::fs::metadata(&self.path)
            .map_err(|e| ModelError::File {
                path: self.path.clone(),
                message: e.to_string(),
            })?
            .len();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let info = &self.content.tensor_infos[name];
            if !SUPPORTED.contains(&info.ggml_dtype) {
                return Err(self.unsupported(format!(
                    "tensor {name} is {:?}; fedsim dequantises {SUPPORTED:?}",
                    info.ggml_dtype
                )));
            }
            // Widened: the counts are the file's numbers.
            let bytes = info.shape.elem_count() as u128 / info.ggml_dtype.block_size() as u128
                * info.ggml_dtype.type_size() as u128;
            let end = u128::from(self.content.tensor_data_offset) + u128::from(info.offset) + bytes;
            if end > u128::from(len) {
                return Err(ModelError::GgufTruncated {
                    path: self.path.clone(),
                    tensor: name.clone(),
                    end,
                    len,
                });
            }
        }
        Ok(())
    }

    fn unsupported(&self, problem: String) -> ModelError {
        ModelError::GgufUnsupported {
            path: self.path.clone(),
            problem,
        }
    }

    /// A metadata value, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn number(&self, key: &str) -> Result<f64, ModelError> {
        let v = self
            .metadata(key)
            .ok_or_else(|| self.unsupported(format!("metadata key {key} is missing")))?;
        let n = match v {
            Value::U8(x) => *x as f64,
            Value::I8(x) => *x as f64,
            Value::U16(x) => *x as f64,
            Value::I16(x) => *x as f64,
            Value::U32(x) => *x as f64,
            Value::I32(x) => *x as f64,
            Value::U64(x) => *x as f64,
            Value::I64(x) => *x as f64,
            // The decimal the writer meant (1e-5, not 9.99999974e-6).
            Value::F32(x) => x.to_string().parse().expect("a float's decimal parses"),
            Value::F64(x) => *x,
            _ => return Err(self.unsupported(format!("metadata key {key} is not a number"))),
        };
        Ok(n)
    }

    fn count(&self, key: &str) -> Result<usize, ModelError> {
        let n = self.number(key)?;
        if n < 1.0 || n.fract() != 0.0 || n > 1e9 {
            return Err(self.unsupported(format!("metadata key {key} = {n} is not a count")));
        }
        Ok(n as usize)
    }

    /// The model's hyper-parameters, from `llama.*` metadata and the embedding's shape.
    ///
    /// # Errors
    /// [`ModelError::GgufUnsupported`] for another architecture or missing/invalid keys.
    pub fn config(&self) -> Result<LlamaConfig, ModelError> {
        let arch = match self.metadata("general.architecture") {
            Some(Value::String(s)) => s.as_str(),
            _ => "(none)",
        };
        if arch != "llama" {
            return Err(self.unsupported(format!(
                "architecture {arch:?} is not supported: fedsim loads Llama-architecture \
                 models (general.architecture = \"llama\", e.g. SmolLM2, Llama 3, TinyLlama)"
            )));
        }
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| self.unsupported("tensor token_embd.weight is missing".into()))?;
        let vocab_size = embd.shape.dims()[0];
        let cfg = LlamaConfig {
            hidden_size: self.count("llama.embedding_length")?,
            intermediate_size: self.count("llama.feed_forward_length")?,
            num_hidden_layers: self.count("llama.block_count")?,
            num_attention_heads: self.count("llama.attention.head_count")?,
            num_key_value_heads: self.count("llama.attention.head_count_kv")?,
            vocab_size,
            rms_norm_eps: self.number("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: match self.metadata("llama.rope.freq_base") {
                Some(_) => self.number("llama.rope.freq_base")?,
                None => 10_000.0,
            },
            max_position_embeddings: self.count("llama.context_length")?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
        };
        if cfg.hidden_size % cfg.num_attention_heads != 0
            || cfg.num_attention_heads % cfg.num_key_value_heads != 0
            || cfg.head_dim() % 2 != 0
        {
            return Err(self.unsupported(format!(
                "hidden {} / {} heads / {} KV heads do not form a Llama attention",
                cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
            )));
        }
        Ok(cfg)
    }

    /// Load every tensor, dequantised to f32, into a [`BaseModel`] on `device`.
    ///
    /// # Errors
    /// As [`GgufHeader::config`]; [`ModelError::GgufUnsupported`] for an unsupported tensor
    /// type; [`ModelError::Gguf`] for a truncated file; a missing or misshapen tensor.
    pub fn load(&self, device: &Device) -> Result<BaseModel, ModelError> {
        self.load_as(device, BasePrecision::F32)
    }

    /// Load every tensor into a [`BaseModel`] with its 2-D weights held in `precision`: a
    /// tensor whose file type is the one wanted is kept byte for byte, any other is
    /// dequantised (and requantised when packed). One tensor is expanded to f32 at a time.
    ///
    /// # Errors
    /// As [`GgufHeader::load`].
    pub fn load_as(
        &self,
        device: &Device,
        precision: BasePrecision,
    ) -> Result<BaseModel, ModelError> {
        let cfg = self.config()?;
        let file = File::open(&self.path).map_err(|e| ModelError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut reader = BufReader::new(file);
        let mut weights = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let info = &self.content.tensor_infos[name];
            if !SUPPORTED.contains(&info.ggml_dtype) {
                return Err(self.unsupported(format!(
                    "tensor {name} is {:?}; fedsim loads {SUPPORTED:?}",
                    info.ggml_dtype
                )));
            }
            let Some(hf) = hf_name(name) else {
                continue; // e.g. rope_freqs: recomputed from the metadata
            };
            let gguf = |e: candle_core::Error| ModelError::Gguf {
                path: self.path.clone(),
                source: plain(e),
            };
            let q = self
                .content
                .tensor(&mut reader, name, &Device::Cpu)
                .map_err(gguf)?;
            let w = weight(&cfg, &hf, &q, precision)?;
            weights.insert(hf, w);
        }
        if cfg.tie_word_embeddings {
            weights.remove("lm_head.weight");
        }
        BaseModel::from_weights(&cfg, weights, device).map_err(|e| e.in_file(&self.path))
    }

    /// The type each tensor has in the file, by Hugging Face name.
    pub fn stored_type(&self, hf: &str) -> Option<GgmlDType> {
        self.content
            .tensor_infos
            .iter()
            .find(|(n, _)| hf_name(n).as_deref() == Some(hf))
            .map(|(_, i)| i.ggml_dtype)
    }
}

/// One GGUF tensor (HF name `hf`) held as `precision` says: kept byte for byte when its file
/// type is the one wanted, else dequantised (and requantised when packed); llama.cpp's q/k row
/// permutation undone either way.
fn weight(
    cfg: &LlamaConfig,
    hf: &str,
    q: &QTensor,
    precision: BasePrecision,
) -> Result<FrozenWeight, ModelError> {
    let t = q.dequantize(&Device::Cpu)?;
    let heads = match hf.rsplit('.').nth(1) {
        Some("q_proj") => Some(cfg.num_attention_heads),
        Some("k_proj") => Some(cfg.num_key_value_heads),
        _ => None,
    };
    let format = match (role_of(hf), t.dims()) {
        (Some(role), &[_, cols]) => precision.format(role, Some(q.dtype()), cols),
        _ => GgmlDType::F32,
    };
    if format != GgmlDType::F32 {
        // (f32 weights are checked by `from_weights`.)
        super::check_finite(hf, &t.flatten_all()?.to_vec1::<f32>()?)?;
    }
    if format != GgmlDType::F32 && format == q.dtype() {
        let w = FrozenWeight::from_gguf(q)?;
        return match heads {
            Some(h) => w.permute_rows(&unpermuted_rows(w.dims().0, h)?),
            None => Ok(w),
        };
    }
    let t = match heads {
        Some(h) => unpermute(&t, h)?,
        None => t,
    };
    match format {
        // Moved to the model's device by `from_weights`.
        GgmlDType::F32 => Ok(FrozenWeight::F32(t)),
        _ => FrozenWeight::new(t, format),
    }
}

/// Hugging Face's name for a llama.cpp tensor name (None for tensors fedsim recomputes).
fn hf_name(gguf: &str) -> Option<String> {
    let name = match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".to_string(),
        "output_norm.weight" => "model.norm.weight".to_string(),
        "output.weight" => "lm_head.weight".to_string(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let hf = match part {
                "attn_norm.weight" => "input_layernorm",
                "ffn_norm.weight" => "post_attention_layernorm",
                "attn_q.weight" => "self_attn.q_proj",
                "attn_k.weight" => "self_attn.k_proj",
                "attn_v.weight" => "self_attn.v_proj",
                "attn_output.weight" => "self_attn.o_proj",
                "ffn_gate.weight" => "mlp.gate_proj",
                "ffn_up.weight" => "mlp.up_proj",
                "ffn_down.weight" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.weight")
        }
    };
    Some(name)
}

/// The row order [`unpermute`] gives: row i of the result is row `order[i]` of the file.
fn unpermuted_rows(rows: usize, heads: usize) -> Result<Vec<usize>, ModelError> {
    let idx: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    let idx = Tensor::from_vec(idx, (rows, 1), &Device::Cpu)?;
    let order = unpermute(&idx, heads)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(order.into_iter().map(|i| i as usize).collect())
}

/// Undo llama.cpp's q/k row permutation: rows viewed as (heads, 2, head_dim/2) in the file are
/// (heads, head_dim/2, 2) in Hugging Face's layout.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

impl crate::tokenizer::GgufMetadata for GgufHeader {
    fn metadata(&self, key: &str) -> Option<&Value> {
        GgufHeader::metadata(self, key)
    }
}
