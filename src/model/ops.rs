//! The ops the forward is made of, each dispatched once: the fused CPU ops of [`super::fused`]
//! and [`super::frozen`] (their own backward, no frozen-weight gradients), or candle's
//! composed, differentiable forms on other devices (candle's fast `rms_norm`/`softmax`/`rope`
//! have no backward).

use candle_core::{DType, Tensor, D};

use super::frozen::FrozenLinear;
use super::fused::{RmsNorm, Rope, Softmax, SwiGlu};
use super::q8dot::InferenceActivations;
use super::qmatmul::{forward_q8_many, PackedLinear};
use super::weight::{FrozenWeight, Packed};
use super::ModelError;

/// `x · Wᵀ` for a frozen W: on the CPU through [`FrozenLinear`] (no gradient for W) or, for a
/// packed W, [`PackedLinear`] (dequantised on the fly); else candle's matmul.
pub fn frozen_matmul(x: &Tensor, w: &FrozenWeight) -> candle_core::Result<Tensor> {
    match w {
        FrozenWeight::F32(w) if x.device().is_cpu() && x.rank() == 2 => {
            x.apply_op1(FrozenLinear::new(w))
        }
        FrozenWeight::F32(w) => x.matmul(&w.t()?),
        FrozenWeight::Packed(p) => {
            if !x.device().is_cpu() {
                candle_core::bail!("a packed base weight runs on the CPU only; use F32 on a GPU")
            }
            let (rows, k) = (x.elem_count() / x.dim(candle_core::D::Minus1)?, p.cols());
            let mut out_shape = x.dims().to_vec();
            *out_shape.last_mut().expect("rank ≥ 1") = p.rows();
            x.contiguous()?
                .reshape((rows, k))?
                .apply_op1(PackedLinear::new(p))?
                .reshape(out_shape)
        }
    }
}

/// `x · Wᵀ` for a frozen W in KV-cache inference (no gradient): as [`frozen_matmul`], except
/// that with [`InferenceActivations::Int8`] a Q8_0 or Q4_1 W takes x quantised to 8 bits per
/// 32-value block ([`forward_q8_many`]), as llama.cpp does.
pub fn decode_matmul(
    x: &Tensor,
    w: &FrozenWeight,
    activations: InferenceActivations,
) -> candle_core::Result<Tensor> {
    match w {
        FrozenWeight::Packed(p) if int8(activations, p, x) => Ok(packed_int8(x, &[p])?.remove(0)),
        _ => frozen_matmul(x, w),
    }
}

/// Whether x (rows, k) goes through W's 8-bit kernels.
fn int8(activations: InferenceActivations, p: &Packed, x: &Tensor) -> bool {
    activations == InferenceActivations::Int8
        && p.takes_q8()
        && x.device().is_cpu()
        && x.rank() == 2
        && x.dim(1).is_ok_and(|k| k == p.cols())
}

/// [`decode_matmul`] of one x with several weights (q, k and v; gate and up): with 8-bit
/// activations and every W taking them, one quantisation of x and one parallel part for all.
pub fn decode_matmuls(
    x: &Tensor,
    ws: &[&FrozenWeight],
    activations: InferenceActivations,
) -> candle_core::Result<Vec<Tensor>> {
    let packed: Option<Vec<&Packed>> = ws
        .iter()
        .map(|w| match w {
            FrozenWeight::Packed(p) if int8(activations, p, x) => Some(&**p),
            _ => None,
        })
        .collect();
    match packed {
        Some(packed) => packed_int8(x, &packed),
        None => ws
            .iter()
            .map(|w| decode_matmul(x, w, activations))
            .collect(),
    }
}

/// `x · Wᵀ` for each W, with 8-bit activations, in one pass ([`forward_q8_many`]).
fn packed_int8(x: &Tensor, packed: &[&Packed]) -> candle_core::Result<Vec<Tensor>> {
    let m = x.dim(0)?;
    let n: usize = packed.iter().map(|p| p.rows()).sum();
    let mut out = vec![0f32; m * n];
    forward_q8_many(packed, &x.flatten_all()?.to_vec1::<f32>()?, m, &mut out);
    let all = Tensor::from_vec(out, (m, n), x.device())?;
    let mut at = 0;
    packed
        .iter()
        .map(|p| {
            at += p.rows();
            all.narrow(1, at - p.rows(), p.rows())
        })
        .collect()
}

/// RMSNorm over the last dimension (fused on the CPU, composed elsewhere; both have a backward).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, ModelError> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1(RmsNorm::new(w, eps))?);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(w)?)
}

/// Rotate-half RoPE (Hugging Face layout) on (b, heads, seq, head_dim).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Rope::new(cos, sin)?);
    }
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Softmax over the last dimension with the max detached (it cancels in the gradient).
pub fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Softmax);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension, composed.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `silu(gate) · up` (fused on the CPU).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == DType::F32 {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    silu(gate)? * up
}

/// SiLU, composed: x · σ(x).
fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    x * (x.neg()?.exp()? + 1.0)?.recip()?
}
