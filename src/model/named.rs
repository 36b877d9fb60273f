//! The base under Hugging Face names: built from named tensors or weights (in a chosen
//! [`BasePrecision`]), listed, measured, and exported as a `transformers` directory.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::llama::{role_of, Block};
use super::weight::{BasePrecision, FrozenWeight};
use super::{BaseModel, LlamaConfig, ModelError, TargetModule};

impl BaseModel {
    /// A model from its tensors under Hugging Face names (those [`BaseModel::named_tensors`]
    /// gives), each checked against `cfg`'s shapes; `lm_head.weight` only when untied.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`] or [`ModelError::TensorShape`] naming the tensor, or a
    /// candle error.
    pub fn from_named(
        cfg: &LlamaConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_named_as(cfg, tensors, device, BasePrecision::F32)
    }

    /// As [`BaseModel::from_named`], the 2-D weights held in `precision` (packed ones on the
    /// CPU).
    ///
    /// # Errors
    /// As [`BaseModel::from_named`].
    pub fn from_named_as(
        cfg: &LlamaConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        precision: BasePrecision,
    ) -> Result<Self, ModelError> {
        let mut weights = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            let format = match (role_of(&name), t.dims()) {
                (Some(role), &[_, cols]) => precision.format(role, None, cols),
                _ => candle_core::quantized::GgmlDType::F32,
            };
            let w = if format == candle_core::quantized::GgmlDType::F32 {
                FrozenWeight::F32(t)
            } else {
                let t = t.to_dtype(DType::F32)?;
                super::check_finite(&name, &t.flatten_all()?.to_vec1::<f32>()?)?;
                FrozenWeight::new(t, format)?
            };
            weights.insert(name, w);
        }
        Self::from_weights(cfg, weights, device)
    }

    /// A model from its weights under Hugging Face names, each checked against `cfg`'s shapes
    /// (f32 ones also for NaN and infinity: packed ones are checked before packing).
    ///
    /// # Errors
    /// As [`BaseModel::from_named`].
    pub(super) fn from_weights(
        cfg: &LlamaConfig,
        mut weights: HashMap<String, FrozenWeight>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut take = |name: String, shape: &[usize]| -> Result<FrozenWeight, ModelError> {
            let w = weights
                .remove(&name)
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            let found = match &w {
                FrozenWeight::F32(t) => t.dims().to_vec(),
                FrozenWeight::Packed(_) => {
                    let (r, c) = w.dims();
                    vec![r, c]
                }
            };
            if found != shape {
                return Err(ModelError::TensorShape {
                    name,
                    expected: shape.to_vec(),
                    found,
                });
            }
            let FrozenWeight::F32(t) = w else {
                return Ok(w);
            };
            let t = t.to_dtype(DType::F32)?;
            // A NaN weight would make every loss NaN and read as a diverged run: name it here.
            super::check_finite(&name, &t.flatten_all()?.to_vec1::<f32>()?)?;
            Ok(FrozenWeight::F32(t.to_device(device)?))
        };
        let tensor = |w: FrozenWeight| match w {
            FrozenWeight::F32(t) => Ok(t),
            FrozenWeight::Packed(_) => Err(ModelError::Layout("a norm weight must be f32".into())),
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_tokens = take("model.embed_tokens.weight".into(), &[v, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let norm = |n: &str| format!("model.layers.{i}.{n}.weight");
            let input_layernorm = tensor(take(norm("input_layernorm"), &[h])?)?;
            let post_attention_layernorm = tensor(take(norm("post_attention_layernorm"), &[h])?)?;
            let proj = TargetModule::ALL
                .iter()
                .map(|&m| {
                    let (o, i_) = cfg.projection_shape(m);
                    take(format!("{}.weight", m.hf_path(i)), &[o, i_])
                })
                .collect::<Result<Vec<_>, _>>()?;
            blocks.push(Block {
                input_layernorm,
                post_attention_layernorm,
                proj,
            });
        }
        let norm = tensor(take("model.norm.weight".into(), &[h])?)?;
        let lm_head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(take("lm_head.weight".into(), &[v, h])?),
        };
        Self::assemble(cfg.clone(), embed_tokens, blocks, norm, lm_head, device)
    }

    /// This model with its 2-D weights held in `precision` (a generated or Hugging Face base;
    /// a GGUF file is read straight into its precision by [`super::gguf::GgufHeader::load`]).
    ///
    /// # Errors
    /// A candle error.
    pub fn with_precision(self, precision: BasePrecision) -> Result<Self, ModelError> {
        if precision == BasePrecision::F32 || precision == BasePrecision::Stored {
            return Ok(self);
        }
        let (device, inference) = (self.device.clone(), self.inference);
        let weights: HashMap<String, Tensor> = self.named_tensors()?.into_iter().collect();
        Ok(
            Self::from_named_as(&self.cfg.clone(), weights, &device, precision)?
                .with_inference_activations(inference),
        )
    }

    /// All base weights under Hugging Face names (shared, not copied).
    pub fn named_weights(&self) -> Vec<(String, FrozenWeight)> {
        let f32 = |t: &Tensor| FrozenWeight::F32(t.clone());
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                f32(&b.input_layernorm),
            ));
            out.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                f32(&b.post_attention_layernorm),
            ));
            for m in TargetModule::ALL {
                out.push((
                    format!("{}.weight", m.hf_path(i)),
                    b.proj[m.index()].clone(),
                ));
            }
        }
        out.push(("model.norm.weight".to_string(), f32(&self.norm)));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// All base tensors under Hugging Face names as f32 (packed ones dequantised), for export
    /// and parity tests.
    ///
    /// # Errors
    /// A candle error.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        self.named_weights()
            .into_iter()
            .map(|(n, w)| Ok((n, w.to_tensor(&self.device)?)))
            .collect()
    }

    /// What the base's weights take in memory, by format.
    pub fn footprint(&self) -> super::weight::Footprint {
        super::weight::Footprint::of(self.named_weights().iter().map(|(n, w)| (n.as_str(), w)))
    }

    /// Write the base as a Hugging Face `LlamaForCausalLM` directory: `model.safetensors`
    /// (HF tensor names) and `config.json`, so `AutoModelForCausalLM.from_pretrained(dir)` and
    /// then `PeftModel.from_pretrained(base, run_dir)` can load what fedsim trained.
    ///
    /// # Errors
    /// An I/O or serialisation failure, with the path.
    pub fn save_hf(&self, dir: &std::path::Path, eos_id: u32) -> Result<(), ModelError> {
        let err = |path: &std::path::Path, message: String| ModelError::File {
            path: path.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
        let weights = dir.join("model.safetensors");
        let tensors: std::collections::HashMap<String, Tensor> =
            self.named_tensors()?.into_iter().collect();
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| err(&weights, e.to_string()))?;
        let c = &self.cfg;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim(),
            "vocab_size": c.vocab_size,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
            "torch_dtype": "float32"
        });
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).expect("json value serialises");
        std::fs::write(&path, text).map_err(|e| err(&path, e.to_string()))
    }
}
