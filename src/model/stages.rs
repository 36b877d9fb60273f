//! The forward in stages — embed, a range of decoder blocks, the final norm, the head's loss —
//! so a pass can stop at one layer and resume at another from hidden states it is handed
//! (split learning runs the stages on two sides of a cut). [`BaseModel::hidden_states`] and
//! [`BaseModel::loss_sum`] are these stages run back to back.

use std::ops::Range;

use candle_core::Tensor;

use super::frozen::HeadNll;
use super::lora::DropoutRng;
use super::ops::{log_softmax, rms_norm, swiglu};
use super::prompt::{self, VirtualTokens};
use super::qmatmul::PackedHeadNll;
use super::weight::FrozenWeight;
use super::{BaseModel, LoraVars, ModelError, TargetModule};

/// What every block of one pass shares: the mask (repeated for grouped query heads), the RoPE
/// rows, the batch shape and the virtual tokens.
pub struct Pass {
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
    /// (batch, rows per sequence in the blocks, real tokens per sequence).
    b: usize,
    rows: usize,
    s: usize,
    virtual_tokens: Option<VirtualTokens>,
}

impl Pass {
    /// Rows of hidden states a block takes: batch × (virtual + real tokens).
    pub fn rows(&self) -> usize {
        self.b * self.rows
    }
}

impl BaseModel {
    /// The shared state of a pass over a (batch, seq) batch with `mask` ((b, 1, s, s), 0 or
    /// −1e9) and the adapter's virtual tokens, if any.
    ///
    /// # Errors
    /// A sequence longer than the RoPE table; a candle error.
    pub fn pass(
        &self,
        mask: &Tensor,
        (b, s): (usize, usize),
        lora: Option<&LoraVars>,
    ) -> Result<Pass, ModelError> {
        let cfg = &self.cfg;
        // Virtual tokens: a prompt lengthens the sequence; a prefix the keys. Either way the
        // real tokens sit at positions n.. (see prompt.rs).
        let virtual_tokens = self.virtual_tokens_of(lora);
        let (mask, rows, first) = match &virtual_tokens {
            None => (mask.clone(), s, 0),
            Some(VirtualTokens::Prompt(p)) => {
                let n = p.dim(0)?;
                (prompt::prompt_mask(mask, n)?, n + s, 0)
            }
            Some(VirtualTokens::Prefix(p)) => {
                let n = p.dim(0)?;
                (prompt::prefix_mask(mask, n)?, s, n)
            }
        };
        // (b, 1, rows, keys) → (b, 1, rep·rows, keys) for grouped query heads.
        let rep = cfg.num_attention_heads / cfg.num_key_value_heads;
        Ok(Pass {
            mask: mask.repeat((1, 1, rep, 1))?,
            cos: self.cos.narrow(0, first, rows)?,
            sin: self.sin.narrow(0, first, rows)?,
            b,
            rows,
            s,
            virtual_tokens,
        })
    }

    /// The embedded input (b·rows, hidden): token embeddings, after the prompt's rows.
    ///
    /// # Errors
    /// On a candle error.
    pub fn embed(&self, input_ids: &Tensor, pass: &Pass) -> Result<Tensor, ModelError> {
        let x = self.embed_tokens.embed(input_ids)?;
        Ok(match &pass.virtual_tokens {
            Some(VirtualTokens::Prompt(p)) => prompt::prepend_prompt(p, &x, (pass.b, pass.s))?,
            _ => x,
        })
    }

    /// Decoder blocks `layers` on hidden states `x` (b·rows, hidden).
    ///
    /// # Errors
    /// On a candle error.
    pub fn blocks(
        &self,
        mut x: Tensor,
        pass: &Pass,
        layers: Range<usize>,
        lora: Option<&LoraVars>,
        mut dropout: Option<&mut DropoutRng>,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.cfg;
        for layer in layers {
            let block = &self.blocks[layer];
            let h = rms_norm(&x, &block.input_layernorm, cfg.rms_norm_eps)?;
            let mut lin = |m: TargetModule, input: &Tensor| {
                self.linear(layer, m, input, lora, dropout.as_deref_mut())
            };
            let q = lin(TargetModule::QProj, &h)?;
            let k = lin(TargetModule::KProj, &h)?;
            let v = lin(TargetModule::VProj, &h)?;
            let prefix = match &pass.virtual_tokens {
                Some(VirtualTokens::Prefix(p)) => Some(prompt::prefix_kv(p, cfg, layer)?),
                _ => None,
            };
            let rope = (&pass.cos, &pass.sin);
            let attn =
                self.attention([&q, &k, &v], &pass.mask, rope, (pass.b, pass.rows), prefix)?;
            let o = lin(TargetModule::OProj, &attn)?;
            x = (x + o)?;
            let h = rms_norm(&x, &block.post_attention_layernorm, cfg.rms_norm_eps)?;
            let gate = lin(TargetModule::GateProj, &h)?;
            let up = lin(TargetModule::UpProj, &h)?;
            let act = swiglu(&gate, &up)?;
            let down = lin(TargetModule::DownProj, &act)?;
            x = (x + down)?;
        }
        Ok(x)
    }

    /// The last block's output → final hidden states (b·s, hidden): the prompt's rows dropped,
    /// the final norm applied.
    ///
    /// # Errors
    /// On a candle error.
    pub fn finish(&self, mut x: Tensor, pass: &Pass) -> Result<Tensor, ModelError> {
        if pass.rows > pass.s {
            x = prompt::drop_prompt(&x, pass.rows - pass.s, (pass.b, pass.s))?;
        }
        Ok(rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// Summed next-token NLL of final hidden states (b·s, hidden) at the flat `positions`
    /// (into b·s) that predict `targets`. Logits are computed only there (the vocabulary
    /// dominates small models).
    ///
    /// # Errors
    /// On a candle error.
    pub fn head_nll(
        &self,
        hidden: &Tensor,
        positions: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let picked = hidden.index_select(positions, 0)?;
        let nll = match self.head() {
            // Logits in chunks of rows, no gradient for the frozen head.
            FrozenWeight::F32(w) if picked.device().is_cpu() => {
                picked.apply_op1(HeadNll::new(w, targets))?
            }
            // The vocabulary in tiles, dequantised on the fly.
            FrozenWeight::Packed(w) => picked
                .contiguous()?
                .apply_op1(PackedHeadNll::new(w, targets)?)?,
            FrozenWeight::F32(_) => {
                let logp = log_softmax(&self.logits(&picked)?)?;
                logp.gather(&targets.unsqueeze(1)?, 1)?.neg()?.squeeze(1)?
            }
        };
        Ok(nll.sum_all()?)
    }
}
