//! Fused element-wise ops with hand-written backward passes, for the training forward: RMSNorm
//! with a frozen weight, SwiGLU (`silu(gate) · up`) and softmax over the last dimension. Each
//! replaces a chain of composed candle ops (one tensor allocated per op, forward and backward)
//! by one pass; `tests/model.rs` checks values and gradients against the composed forms.

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

fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + (-g).exp())
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
                    *o = (v - max).exp();
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn rand(shape: (usize, usize), seed: u64) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 250.0) - 2.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let (a, b) = (to_vec(a).unwrap(), to_vec(b).unwrap());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{what}: max difference {worst}");
    }

    /// Values and input gradients of `fused` equal those of `composed`, under a random
    /// weighting of the outputs (so every output's gradient matters).
    fn check(fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor, what: &str) {
        let x = Var::from_tensor(&rand((6, 40), 1)).unwrap();
        let weights = rand((6, 40), 2);
        let (yf, yc) = (fused(x.as_tensor()), composed(x.as_tensor()));
        close(&yf, &yc, what);
        let gf = (yf * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (yc * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            gf.get(&x).unwrap(),
            gc.get(&x).unwrap(),
            &format!("{what} gradient"),
        );
    }

    #[test]
    fn rms_norm_matches_the_composed_form() {
        let w = rand((1, 40), 3).squeeze(0).unwrap();
        check(
            |x| x.apply_op1(RmsNorm::new(&w, 1e-5)).unwrap(),
            |x| {
                let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let normed = x
                    .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
                    .unwrap();
                normed.broadcast_mul(&w).unwrap()
            },
            "rms-norm",
        );
    }

    #[test]
    fn swiglu_matches_the_composed_form() {
        let up = Var::from_tensor(&rand((6, 40), 4)).unwrap();
        check(
            |g| g.apply_op2(up.as_tensor(), SwiGlu).unwrap(),
            |g| {
                let silu = (g
                    * (g.neg().unwrap().exp().unwrap() + 1.0)
                        .unwrap()
                        .recip()
                        .unwrap())
                .unwrap();
                (silu * up.as_tensor()).unwrap()
            },
            "swiglu (gate)",
        );
        // The up input's gradient.
        let gate = rand((6, 40), 5);
        let u = Var::from_tensor(&rand((6, 40), 6)).unwrap();
        let yf = gate.apply_op2(u.as_tensor(), SwiGlu).unwrap();
        let silu = (&gate
            * (gate.neg().unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap())
        .unwrap();
        let yc = (silu * u.as_tensor()).unwrap();
        let gf = yf.sum_all().unwrap().backward().unwrap();
        let gc = yc.sum_all().unwrap().backward().unwrap();
        close(
            gf.get(&u).unwrap(),
            gc.get(&u).unwrap(),
            "swiglu (up) gradient",
        );
    }

    #[test]
    fn softmax_matches_the_composed_form() {
        check(
            |x| x.apply_op1(Softmax).unwrap(),
            |x| {
                let max = x.max_keepdim(D::Minus1).unwrap().detach();
                let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
                e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
            },
            "softmax",
        );
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

#[cfg(test)]
mod rope_tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn rope_matches_the_composed_form() {
        let (b, h, s, hd) = (2, 3, 5, 8);
        let v = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let x = Var::from_tensor(
            &Tensor::from_vec(v(b * h * s * hd, 0.37), (b, h, s, hd), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let cos = Tensor::from_vec(v(s * hd, 0.11), (s, hd), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(v(s * hd, 0.23), (s, hd), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(v(b * h * s * hd, 0.71), (b, h, s, hd), &Device::Cpu).unwrap();
        let fused = x
            .as_tensor()
            .apply_op1(Rope::new(&cos, &sin).unwrap())
            .unwrap();
        let composed = {
            let xt = x.as_tensor();
            let x1 = xt.narrow(D::Minus1, 0, hd / 2).unwrap();
            let x2 = xt.narrow(D::Minus1, hd / 2, hd / 2).unwrap();
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            (xt.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
        };
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&fused, &composed) < 1e-6);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(diff(gf.get(&x).unwrap(), gc.get(&x).unwrap()) < 1e-6);
    }
}
