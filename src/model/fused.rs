//! Fused element-wise ops with hand-written backward passes, for the training forward: RMSNorm
//! with a frozen weight, SwiGLU (`silu(gate) · up`) and softmax over the last dimension. Each
//! replaces a chain of composed candle ops (one tensor allocated per op, forward and backward)
//! by one pass; `tests/ops.rs` checks values and gradients against the composed forms.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The f32 values of a contiguous CPU tensor argument.
fn values<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{op}: argument is not contiguous"),
    }
}

/// The f32 values of a tensor (made contiguous), copied.
fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// RMSNorm over the last dimension with a frozen weight: `x / √(mean(x²) + ε) · w`.
pub(super) struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(super) fn new(w: &Tensor, eps: f64) -> Self {
        Self { w: w.clone(), eps }
    }
}

/// 1/√(mean(row²) + ε) of each row.
fn inv_rms(x: &[f32], h: usize, eps: f64) -> Vec<f32> {
    x.chunks_exact(h)
        .map(|row| {
            let ms = row.iter().map(|&v| v * v).sum::<f32>() / h as f32;
            1.0 / (ms + eps as f32).sqrt()
        })
        .collect()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name())?;
        let w = to_vec(&self.w)?;
        let h = w.len();
        let eps = self.eps as f32;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_exact_mut(h)
            .zip(x.par_chunks_exact(h))
            .for_each(|(out, row)| {
                let r = 1.0 / (row.iter().map(|&v| v * v).sum::<f32>() / h as f32 + eps).sqrt();
                for ((o, &v), &w) in out.iter_mut().zip(row).zip(&w) {
                    *o = v * r * w;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = r·(w⊙g) − x·r³·Σ(w⊙g⊙x)/h, row by row.
        let (xv, gv, w) = (to_vec(x)?, to_vec(g)?, to_vec(&self.w)?);
        let h = w.len();
        let r = inv_rms(&xv, h, self.eps);
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_exact_mut(h)
            .zip(xv.par_chunks_exact(h).zip(gv.par_chunks_exact(h)))
            .zip(r.par_iter())
            .for_each(|((out, (xr, gr)), &r)| {
                let dot: f32 = xr
                    .iter()
                    .zip(gr)
                    .zip(&w)
                    .map(|((&x, &g), &w)| x * g * w)
                    .sum();
                let c = r * r * r * dot / h as f32;
                for (((o, &x), &g), &w) in out.iter_mut().zip(xr).zip(gr).zip(&w) {
                    *o = r * w * g - x * c;
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// SwiGLU's gate: `silu(gate) · up`, silu(g) = g·σ(g).
pub(super) struct SwiGlu;

/// Past these glibc's expf takes its slow path (which also sets errno): +∞ above
/// log(2¹²⁸), 0 below log(2⁻¹⁵⁰).
const EXP_OVERFLOW: f32 = f32::from_bits(0x42b1_7217);
const EXP_UNDERFLOW: f32 = f32::from_bits(0xc2cf_f1b4);

/// e^x as expf gives it, bit for bit, without its slow paths: the argument is clamped into
/// the range before the call (LLVM may call exp before a branch, so a branch alone would not
/// do), and the result outside it set directly.
pub(super) fn exp_in_range(x: f32) -> f32 {
    let e = x.clamp(EXP_UNDERFLOW, EXP_OVERFLOW).exp();
    if x > EXP_OVERFLOW {
        f32::INFINITY
    } else if x < EXP_UNDERFLOW {
        0.0
    } else {
        e
    }
}

/// σ(g) = 1 / (1 + e^−g).
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + exp_in_range(-g))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (values(s1, l1, self.name())?, values(s2, l2, self.name())?);
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "swiglu: gate {:?} and up {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let y = g
            .par_iter()
            .zip(u)
            .map(|(&g, &u)| g * sigmoid(g) * u)
            .collect();
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, d) = (to_vec(gate)?, to_vec(up)?, to_vec(grad)?);
        let (dg, du): (Vec<f32>, Vec<f32>) = g
            .par_iter()
            .zip(&u)
            .zip(&d)
            .map(|((&g, &u), &d)| {
                let s = sigmoid(g);
                (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
            })
            .unzip();
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// Softmax over the last dimension.
pub(super) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name())?;
        let n = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_exact_mut(n)
            .zip(x.par_chunks_exact(n))
            .for_each(|(out, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (o, &v) in out.iter_mut().zip(row) {
                    // expf is exactly 0 below about −103.97; masked entries (−1e9) would take
                    // its slow underflow path, so they are set directly (bit-identical).
                    let d = v - max;
                    *o = exp_in_range(d);
                }
                let sum: f32 = out.iter().sum();
                out.iter_mut().for_each(|p| *p /= sum);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = p ⊙ (g − Σ g⊙p), row by row.
        let (p, gv) = (to_vec(y)?, to_vec(g)?);
        let n = y.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; p.len()];
        dx.par_chunks_exact_mut(n)
            .zip(p.par_chunks_exact(n).zip(gv.par_chunks_exact(n)))
            .for_each(|(out, (pr, gr))| {
                let dot: f32 = pr.iter().zip(gr).map(|(&p, &g)| p * g).sum();
                for ((o, &p), &g) in out.iter_mut().zip(pr).zip(gr) {
                    *o = p * (g - dot);
                }
            });
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Rotate-half RoPE on `x (batch, heads, seq, head_dim)` with tables `cos`, `sin` (seq,
/// head_dim): `y = x·cos + rot(x)·sin`, rot(x) = [−x₂, x₁].
pub(super) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub(super) fn new(cos: &Tensor, sin: &Tensor) -> Result<Self> {
        Ok(Self {
            cos: to_vec(cos)?,
            sin: to_vec(sin)?,
        })
    }

    /// Apply to every (seq, head_dim) block of `x`; `inverse` gives the backward (the
    /// transpose: rot replaced by −rot).
    fn apply(&self, x: &[f32], shape: &Shape, inverse: bool) -> Result<Vec<f32>> {
        let dims = shape.dims();
        let (s, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if self.cos.len() != s * hd {
            candle_core::bail!("rope: tables are not ({s}, {hd})")
        }
        let half = hd / 2;
        let (cos, sin) = (&self.cos, &self.sin);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_exact_mut(s * hd)
            .zip(x.par_chunks_exact(s * hd))
            .for_each(|(out, block)| {
                for t in 0..s {
                    let (o, xr) = (&mut out[t * hd..(t + 1) * hd], &block[t * hd..(t + 1) * hd]);
                    let (c, sn) = (&cos[t * hd..(t + 1) * hd], &sin[t * hd..(t + 1) * hd]);
                    for j in 0..half {
                        let (a, b) = (xr[j], xr[j + half]);
                        if inverse {
                            o[j] = a * c[j] + b * sn[j + half];
                            o[j + half] = b * c[j + half] - a * sn[j];
                        } else {
                            o[j] = a * c[j] - b * sn[j];
                            o[j + half] = b * c[j + half] + a * sn[j + half];
                        }
                    }
                }
            });
        Ok(y)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name())?;
        Ok((
            CpuStorage::F32(self.apply(x, l.shape(), false)?),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = self.apply(&to_vec(g)?, g.shape(), true)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
