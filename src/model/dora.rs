//! DoRA's forward through one adapted projection (Liu et al. 2024, as PEFT's `use_dora`).

use candle_core::Tensor;

use super::lora::DropoutRng;
use super::ops::frozen_matmul;
use super::{BaseModel, LoraVars, ModelError, TargetModule};

impl BaseModel {
    /// DoRA as PEFT computes it: `x Wᵀ + (s − 1) ⊙ drop(x) Wᵀ + s ⊙ (α/r) · drop(x) Aᵀ Bᵀ` with
    /// `s = m / ‖W + (α/r)·B·A‖` per output row, the norm not differentiated (without dropout,
    /// `s ⊙ (x Wᵀ + (α/r) · x Aᵀ Bᵀ)`).
    pub(super) fn dora(
        &self,
        layer: usize,
        module: TargetModule,
        x: &Tensor,
        l: &LoraVars,
        dropout: Option<&mut DropoutRng>,
    ) -> candle_core::Result<Tensor> {
        let w = &self.blocks[layer].proj[module.index()];
        let (a, bm) = l.get(layer, module).expect("DoRA has A and B");
        let mag = l.magnitude(layer, module).expect("checked by the caller");
        let dense = w.to_tensor(&self.device).map_err(candle_err)?;
        let norm = (dense + (bm.detach().matmul(&a.detach())? * l.scale())?)?
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?;
        let s = (mag / norm)?.t()?; // (1, out)
        let base = frozen_matmul(x, w)?;
        let dropped = match dropout {
            Some(d) if l.dropout() > 0.0 => Some(d.apply(x, l.dropout()).map_err(candle_err)?),
            _ => None,
        };
        let xin = dropped.as_ref().unwrap_or(x);
        let lora = (xin.matmul(&a.t()?)?.matmul(&bm.t()?)? * l.scale())?;
        match &dropped {
            None => (base + lora)?.broadcast_mul(&s),
            Some(xd) => {
                let base_d = frozen_matmul(xd, w)?;
                base + base_d.broadcast_mul(&(&s - 1.0)?)? + lora.broadcast_mul(&s)?
            }
        }
    }
}

pub(super) fn candle_err(e: ModelError) -> candle_core::Error {
    match e {
        ModelError::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
