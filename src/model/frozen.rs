//! `x · Wᵀ` for a frozen weight W, as a candle custom op whose backward returns the input's
//! gradient only. candle's own matmul backward also computes W's gradient (as many FLOPs as the
//! forward) even when W is a constant, and keeps it until the backward ends.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// `x (m, k) · Wᵀ` with W (n, k) frozen.
pub(super) struct FrozenLinear {
    w: Tensor,
}

impl FrozenLinear {
    /// The op for weight `w` (out, in).
    pub(super) fn new(w: &Tensor) -> Self {
        Self { w: w.clone() }
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let wt = self.w.t()?;
        let (storage, wl) = wt.storage_and_layout();
        let Storage::Cpu(w) = &*storage else {
            candle_core::bail!("frozen-linear: the weight is not on the CPU")
        };
        let (k2, n) = wl.shape().dims2()?;
        if k2 != k {
            candle_core::bail!("frozen-linear: input width {k} but weight width {k2}")
        }
        Ok((x.matmul(w, (1, m, n, k), xl, wl)?, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_y.matmul(&self.w)?))
    }
}

/// Rows of logits materialised at a time (a chunk of 64 × 49,152 is 12.6 MB, not the whole
/// batch's hundreds of MB).
const CHUNK: usize = 64;

/// Next-token negative log-likelihood of each row of `hidden (n, h)` under the frozen head
/// `W (vocab, h)`: `logsumexp(h·Wᵀ) − (h·Wᵀ)[target]`, computed in chunks of rows; the
/// backward recomputes each chunk's logits and returns only `(softmax − onehot) · W`.
pub(super) struct HeadNll {
    w: Tensor,
    targets: Tensor,
}

impl HeadNll {
    /// The op for head `w` and one target id per row.
    pub(super) fn new(w: &Tensor, targets: &Tensor) -> Self {
        Self {
            w: w.clone(),
            targets: targets.clone(),
        }
    }

    /// Logits of rows `lo..lo + len` of `hidden`, with their rows' targets.
    fn chunk(&self, hidden: &Tensor, lo: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let logits = hidden.narrow(0, lo, len)?.matmul(&self.w.t()?)?;
        Ok((logits, self.targets.narrow(0, lo, len)?.unsqueeze(1)?))
    }
}

/// Per row: (log-sum-exp, max) of `logits (rows, vocab)`.
fn logsumexp(logits: &Tensor) -> Result<(Tensor, Tensor)> {
    let max = logits.max_keepdim(1)?;
    let sum = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?;
    Ok((sum.log()?.add(&max)?, max))
}

impl CustomOp1 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h) = xl.shape().dims2()?;
        let Some((start, end)) = xl.contiguous_offsets() else {
            candle_core::bail!("head-nll: the hidden states are not contiguous")
        };
        let hidden =
            Tensor::from_slice(&x.as_slice::<f32>()?[start..end], (n, h), self.w.device())?;
        let mut nll = Vec::with_capacity(n);
        for lo in (0..n).step_by(CHUNK) {
            let (logits, targets) = self.chunk(&hidden, lo, CHUNK.min(n - lo))?;
            let (lse, _) = logsumexp(&logits)?;
            let picked = logits.gather(&targets, 1)?;
            nll.extend(lse.sub(&picked)?.squeeze(1)?.to_vec1::<f32>()?);
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, hidden: &Tensor, _nll: &Tensor, grad_nll: &Tensor) -> Result<Option<Tensor>> {
        let hidden = hidden.detach();
        let n = hidden.dim(0)?;
        let mut grads = Vec::with_capacity(n.div_ceil(CHUNK));
        for lo in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - lo);
            let (logits, targets) = self.chunk(&hidden, lo, len)?;
            let (lse, _) = logsumexp(&logits)?;
            let probs = logits.broadcast_sub(&lse)?.exp()?;
            let onehot = Tensor::zeros(probs.shape(), probs.dtype(), probs.device())?.scatter_add(
                &targets,
                &Tensor::ones((len, 1), probs.dtype(), probs.device())?,
                1,
            )?;
            let g = grad_nll.narrow(0, lo, len)?.unsqueeze(1)?;
            let grad_logits = (probs - onehot)?.broadcast_mul(&g)?;
            grads.push(grad_logits.matmul(&self.w)?);
        }
        Ok(Some(Tensor::cat(&grads, 0)?))
    }
}
