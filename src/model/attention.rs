//! Scaled-dot-product attention as one CPU op that keeps only its inputs for the backward:
//! `softmax(q·kᵀ + mask)·v`, with the scores, masked scores and probabilities recomputed in the
//! backward instead of held by the graph (three (batch, heads, seq, seq) tensors per layer,
//! about 7 MB per SmolLM2 layer at batch 4 × 128).
//!
//! Forward and backward run the very calls candle's autograd runs for the composed form
//! (`q.matmul(kᵀ)`, `broadcast_add`, [`Softmax`], `p.matmul(v)` and their matmul gradients),
//! so the values and gradients are bit for bit the composed form's.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::fused::Softmax;

/// `softmax(q·kᵀ + mask)·v` for q (b, kv_heads, rows, hd), k and v (b, kv_heads, s, hd), mask
/// broadcastable to (b, kv_heads, rows, s).
pub(super) struct Attention {
    mask: Tensor,
}

impl Attention {
    pub(super) fn new(mask: &Tensor) -> Self {
        Self { mask: mask.clone() }
    }

    /// The probabilities, from q and kᵀ (contiguous).
    fn probs(&self, q: &Tensor, kt: &Tensor) -> Result<Tensor> {
        let scores = q.matmul(kt)?;
        scores.broadcast_add(&self.mask)?.apply_op1(Softmax)
    }
}

/// A CPU storage argument as a tensor of its own (a copy of its values).
fn tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("attention: argument is not contiguous")
    };
    Tensor::from_slice(
        &s.as_slice::<f32>()?[a..b],
        l.shape(),
        &candle_core::Device::Cpu,
    )
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (tensor(s1, l1)?, tensor(s2, l2)?, tensor(s3, l3)?);
        let out = self.probs(&q, &k.t()?.contiguous()?)?.matmul(&v)?;
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let kt = k.t()?.contiguous()?;
        let p = self.probs(&q, &kt)?;
        // out = p·v
        let grad_p = grad.matmul(&v.t()?)?;
        let grad_v = p.t()?.matmul(grad)?;
        // p = softmax(scores + mask); the mask takes no gradient.
        let grad_scores = Softmax
            .bwd(&p, &p, &grad_p)?
            .expect("softmax has an input gradient");
        // scores = q·kt, kt = kᵀ
        let grad_q = grad_scores.matmul(&kt.t()?)?;
        let grad_k = q.t()?.matmul(&grad_scores)?.t()?;
        Ok((Some(grad_q), Some(grad_k), Some(grad_v)))
    }
}
