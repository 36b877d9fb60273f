//! Llama-architecture forward over every position, written with differentiable candle ops.
//!
//! RMSNorm, rotate-half RoPE, grouped-query attention with a causal + padding mask, SwiGLU MLP,
//! tied or untied LM head. Base weights are plain (frozen) tensors shared by every slot through
//! an `Arc<BaseModel>`; the adapter (LoRA's A/B, DoRA, IA³, a prompt or prefix) comes in as
//! [`LoraVars`] per call.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::attention::Attention;
use super::bf16mm::ComputeDtype;
use super::lora::DropoutRng;
use super::ops::{frozen_matmul, rope, softmax};
use super::prompt::VirtualTokens;
use super::q8dot::InferenceActivations;
use super::weight::{FrozenWeight, WeightRole};
use super::{LlamaConfig, LoraVars, ModelError, TargetModule};

/// One decoder block's frozen weights.
pub(super) struct Block {
    pub(super) input_layernorm: Tensor,
    pub(super) post_attention_layernorm: Tensor,
    /// Projections indexed by [`TargetModule::index`], each (out, in).
    pub(super) proj: Vec<FrozenWeight>,
}

/// Which of the base's 2-D weights `name` (a Hugging Face name) is; None for norms.
pub(super) fn role_of(name: &str) -> Option<WeightRole> {
    match name {
        "model.embed_tokens.weight" | "lm_head.weight" => Some(WeightRole::Embedding),
        n if n.ends_with("_proj.weight") => Some(WeightRole::Projection),
        _ => None,
    }
}

/// The frozen base model.
pub struct BaseModel {
    pub(super) cfg: LlamaConfig,
    pub(super) embed_tokens: FrozenWeight,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Option<FrozenWeight>,
    /// RoPE tables (max_position_embeddings, head_dim).
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) device: Device,
    /// What KV-cache inference feeds a Q8_0/Q4_1 weight.
    pub(super) inference: InferenceActivations,
    /// A merged prompt or prefix tuning adapter: used when a forward gets no adapter of its own.
    pub(super) virtual_tokens: Option<VirtualTokens>,
}

/// A batch prepared for the loss: token ids, mask and the positions whose next token counts.
pub struct LossInput {
    /// (batch, seq) token ids, right-padded.
    pub input_ids: Tensor,
    /// (batch, 1, seq, seq) additive mask: 0 where attention is allowed, −1e9 elsewhere.
    pub mask: Tensor,
    /// Flat indices into batch·seq of the positions that predict a response token.
    pub positions: Tensor,
    /// The token each of those positions must predict.
    pub targets: Tensor,
}

impl BaseModel {
    /// Random base weights drawn from `seed`: projections and input embeddings N(0, 0.02²) as
    /// HF initialises Llama, norms at 1, and the LM head N(0, 1/hidden), so that a frozen
    /// random model's logits can span a useful range (max logit ≈ √hidden). With HF's 0.02
    /// the logits of a 128-wide model stay within ±2.6 whatever LoRA does, and fine-tuning
    /// cannot get far below the uniform loss. Tied embeddings use the head's scale.
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn random(cfg: &LlamaConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        let embed_scale = 1.0 / (cfg.hidden_size as f32).sqrt() / 0.02;
        let mut randn = |rows: usize, cols: usize, scale: f32| -> Result<Tensor, ModelError> {
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| scale * normal.sample(&mut rng))
                .collect();
            Ok(Tensor::from_vec(v, (rows, cols), device)?)
        };
        let ones = || Tensor::ones(cfg.hidden_size, DType::F32, device);
        let embed_tokens = randn(
            cfg.vocab_size,
            cfg.hidden_size,
            if cfg.tie_word_embeddings {
                embed_scale
            } else {
                1.0
            },
        )?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let mut proj = Vec::with_capacity(7);
            for m in TargetModule::ALL {
                let (o, i) = cfg.projection_shape(m);
                proj.push(FrozenWeight::F32(randn(o, i, 1.0)?));
            }
            blocks.push(Block {
                input_layernorm: ones()?,
                post_attention_layernorm: ones()?,
                proj,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let head = randn(cfg.vocab_size, cfg.hidden_size, embed_scale)?;
            Some(FrozenWeight::F32(head))
        };
        let embed_tokens = FrozenWeight::F32(embed_tokens);
        Self::assemble(cfg.clone(), embed_tokens, blocks, ones()?, lm_head, device)
    }

    pub(super) fn assemble(
        cfg: LlamaConfig,
        embed_tokens: FrozenWeight,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Option<FrozenWeight>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let hd = cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64) as f32)
            .collect();
        let n = cfg.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
        let t = Tensor::arange(0u32, n as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = t.matmul(&inv)?;
        let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            device: device.clone(),
            inference: InferenceActivations::F32,
            virtual_tokens: None,
        })
    }

    /// This model with KV-cache inference (generation, log-likelihood scoring of continuations) feeding its Q8_0
    /// and Q4_1 weights `activations` (`model.inference_activations`; f32 by default).
    pub fn with_inference_activations(mut self, activations: InferenceActivations) -> Self {
        self.inference = activations;
        self
    }

    /// This model with the packed weights' training matmuls multiplying in `compute`
    /// (`model.compute_dtype`; f32 by default); f32 weights are left as they are.
    pub fn with_compute_dtype(mut self, compute: ComputeDtype) -> Self {
        self.embed_tokens = self.embed_tokens.computing_in(compute);
        self.lm_head = self.lm_head.map(|w| w.computing_in(compute));
        for block in &mut self.blocks {
            for w in &mut block.proj {
                *w = w.computing_in(compute);
            }
        }
        self
    }

    /// What KV-cache inference feeds a Q8_0/Q4_1 weight.
    pub fn inference_activations(&self) -> InferenceActivations {
        self.inference
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projection weight (out, in) of `module` in `layer`.
    pub fn projection(&self, layer: usize, module: TargetModule) -> &FrozenWeight {
        &self.blocks[layer].proj[module.index()]
    }

    /// The L2 norm of each row of `module`'s weight in `layer` (DoRA's initial magnitudes).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn row_norms(&self, layer: usize, module: TargetModule) -> Result<Vec<f32>, ModelError> {
        let w = self.projection(layer, module).to_tensor(&self.device)?;
        Ok(w.sqr()?.sum(1)?.sqrt()?.to_vec1()?)
    }

    /// The input embeddings of `ids`, row after row.
    ///
    /// # Errors
    /// Fails on a candle error or an id past the vocabulary.
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        Ok(self.embed_tokens.embed(&ids)?.flatten_all()?.to_vec1()?)
    }

    /// A copy of this model with `W + (α/r)·B·A` merged into every adapted projection (an
    /// adapted packed projection becomes f32: the sum has no exact packed form; the others
    /// stay shared); IA³'s vectors and DoRA's magnitudes likewise. A prompt or prefix tuning
    /// adapter cannot be folded into weights: the copy carries it, and every forward and KV
    /// cache of the copy starts from it.
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn merged(&self, lora: &LoraVars) -> Result<Self, ModelError> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let mut proj = Vec::with_capacity(7);
            for m in TargetModule::ALL {
                let w = &b.proj[m.index()];
                proj.push(match (lora.get(i, m), lora.ia3(i, m)) {
                    (Some((a, bm)), _) => {
                        let delta = (bm.matmul(a)? * lora.scale())?;
                        let sum = (w.to_tensor(&self.device)? + delta)?;
                        // DoRA: each row rescaled to its magnitude.
                        FrozenWeight::F32(match lora.magnitude(i, m) {
                            Some(mag) => {
                                let norm = sum.sqr()?.sum_keepdim(1)?.sqrt()?;
                                sum.broadcast_mul(&(mag / norm)?)?
                            }
                            None => sum,
                        })
                    }
                    // W (out, in) scaled by row (l: out × 1) or by column (l: 1 × in).
                    (None, Some((l, _))) => {
                        FrozenWeight::F32(w.to_tensor(&self.device)?.broadcast_mul(l)?)
                    }
                    (None, None) => w.clone(),
                });
            }
            blocks.push(Block {
                input_layernorm: b.input_layernorm.clone(),
                post_attention_layernorm: b.post_attention_layernorm.clone(),
                proj,
            });
        }
        let mut merged = Self::assemble(
            self.cfg.clone(),
            self.embed_tokens.clone(),
            blocks,
            self.norm.clone(),
            self.lm_head.clone(),
            &self.device,
        )?
        .with_inference_activations(self.inference);
        merged.virtual_tokens = lora
            .virtual_tokens()
            .or_else(|| self.virtual_tokens.clone());
        Ok(merged)
    }

    /// The prompt or prefix a forward with `lora` uses: the adapter's, or the merged one.
    pub(super) fn virtual_tokens_of(&self, lora: Option<&LoraVars>) -> Option<VirtualTokens> {
        lora.and_then(LoraVars::virtual_tokens)
            .or_else(|| self.virtual_tokens.clone())
    }

    /// Final hidden states (batch·seq, hidden) after the last norm.
    ///
    /// # Errors
    /// Fails on a candle error (e.g. a sequence longer than `max_position_embeddings`).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        lora: Option<&LoraVars>,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor, ModelError> {
        let pass = self.pass(mask, input_ids.dims2()?, lora)?;
        let x = self.embed(input_ids, &pass)?;
        let layers = 0..self.blocks.len();
        let x = self.blocks(x, &pass, layers, lora, dropout)?;
        self.finish(x, &pass)
    }

    /// Logits (rows, vocab) for hidden states (rows, hidden).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(frozen_matmul(hidden, self.head())?)
    }

    /// The output head: its own weight, or the tied embedding.
    pub fn head(&self) -> &FrozenWeight {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits for every position: (batch, seq, vocab).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        lora: Option<&LoraVars>,
    ) -> Result<Tensor, ModelError> {
        let (b, s) = input_ids.dims2()?;
        let hidden = self.hidden_states(input_ids, mask, lora, None)?;
        Ok(self.logits(&hidden)?.reshape((b, s, self.cfg.vocab_size))?)
    }

    /// Summed next-token negative log-likelihood over the response positions, and their count.
    ///
    /// Logits are computed only where the loss mask is on (the vocabulary dominates small
    /// models).
    ///
    /// # Errors
    /// Fails on a candle error.
    pub fn loss_sum(
        &self,
        batch: &LossInput,
        lora: Option<&LoraVars>,
        dropout: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, usize), ModelError> {
        let hidden = self.hidden_states(&batch.input_ids, &batch.mask, lora, dropout)?;
        let nll = self.head_nll(&hidden, &batch.positions, &batch.targets)?;
        Ok((nll, batch.targets.dims1()?))
    }

    /// Attention of `s` rows over themselves, after `prefix`'s keys and values (each
    /// (kv_heads, n, head_dim)) when there is one.
    pub(super) fn attention(
        &self,
        [q, k, v]: [&Tensor; 3],
        mask: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        (b, s): (usize, usize),
        prefix: Option<(Tensor, Tensor)>,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        );
        let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()
        };
        // Query heads sharing a KV head are stacked as rows, (b, nkv, rep·s, hd): no copy of K
        // and V per query head (the mask is repeated to match, see `hidden_states`).
        let rep = nh / nkv;
        let q = (rope(&heads(q, nh)?, cos, sin)? * (1.0 / (hd as f64).sqrt()))?.reshape((
            b,
            nkv,
            rep * s,
            hd,
        ))?;
        let mut k = rope(&heads(k, nkv)?, cos, sin)?;
        let mut v = heads(v, nkv)?;
        if let Some((pk, pv)) = prefix {
            let n = pk.dim(1)?;
            let front = |t: &Tensor| t.unsqueeze(0)?.broadcast_as((b, nkv, n, hd))?.contiguous();
            k = Tensor::cat(&[&front(&pk)?, &k], 2)?;
            v = Tensor::cat(&[&front(&pv)?, &v], 2)?;
        }
        let out = if q.device().is_cpu() && q.dtype() == DType::F32 {
            // One op: the scores and probabilities are recomputed in the backward, not kept.
            q.apply_op3(&k, &v, Attention::new(mask))?
        } else {
            let scores = q.matmul(&k.t()?.contiguous()?)?;
            softmax(&scores.broadcast_add(mask)?)?.matmul(&v)?
        };
        let out = out.reshape((b, nh, s, hd))?;
        Ok(out
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * s, nh * hd))?)
    }

    pub(super) fn linear(
        &self,
        layer: usize,
        module: TargetModule,
        x: &Tensor,
        lora: Option<&LoraVars>,
        dropout: Option<&mut DropoutRng>,
    ) -> candle_core::Result<Tensor> {
        let w = &self.blocks[layer].proj[module.index()];
        if let Some((l, scales_input)) = lora.and_then(|l| l.ia3(layer, module)) {
            // IA³: (x ⊙ l) Wᵀ for a feed-forward module, (x Wᵀ) ⊙ lᵀ otherwise.
            return if scales_input {
                frozen_matmul(&x.broadcast_mul(l)?, w)
            } else {
                frozen_matmul(x, w)?.broadcast_mul(&l.t()?)
            };
        }
        if let Some(l) = lora.filter(|l| l.magnitude(layer, module).is_some()) {
            return self.dora(layer, module, x, l, dropout);
        }
        let y = frozen_matmul(x, w)?;
        match lora.and_then(|l| l.get(layer, module).map(|ab| (l, ab))) {
            None => Ok(y),
            Some((l, (a, bm))) => {
                let xin = match dropout {
                    Some(d) => d.apply(x, l.dropout()).map_err(super::dora::candle_err)?,
                    None => x.clone(),
                };
                let delta = xin.matmul(&a.t()?)?.matmul(&bm.t()?)?;
                y + (delta * l.scale())?
            }
        }
    }
}
