//! The forward's fused CPU ops (`fedsim::model::ops`: RMSNorm, SwiGLU, softmax, RoPE, the
//! frozen-weight matmul) against the composed candle forms they replace: values and input
//! gradients, under a random weighting of the outputs so every output's gradient counts.

use candle_core::{Device, Tensor, Var, D};
use fedsim::model::ops;

fn rand(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.37 + seed as f32 * 1.7).sin()) * 2.0)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
}

/// `fused(x)` and `composed(x)`: the same values and the same gradient with respect to x.
fn check(
    dims: &[usize],
    fused: impl Fn(&Tensor) -> Tensor,
    composed: impl Fn(&Tensor) -> Tensor,
    what: &str,
) {
    let x = Var::from_tensor(&rand(dims, 1)).unwrap();
    let (yf, yc) = (fused(x.as_tensor()), composed(x.as_tensor()));
    let weights = rand(yf.dims(), 2);
    let d = max_diff(&yf, &yc);
    assert!(d < 1e-5, "{what}: values differ by {d}");
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
    let d = max_diff(gf.get(&x).unwrap(), gc.get(&x).unwrap());
    assert!(d < 1e-4, "{what}: gradients differ by {d}");
}

fn silu(x: &Tensor) -> Tensor {
    (x * (x.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .recip()
        .unwrap())
    .unwrap()
}

#[test]
fn rms_norm_matches_the_composed_form() {
    let w = rand(&[40], 3);
    check(
        &[6, 40],
        |x| ops::rms_norm(x, &w, 1e-5).unwrap(),
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
fn swiglu_matches_the_composed_form_for_both_inputs() {
    let up = rand(&[6, 40], 4);
    check(
        &[6, 40],
        |g| ops::swiglu(g, &up).unwrap(),
        |g| (silu(g) * &up).unwrap(),
        "swiglu (gate)",
    );
    let gate = rand(&[6, 40], 5);
    check(
        &[6, 40],
        |u| ops::swiglu(&gate, u).unwrap(),
        |u| (silu(&gate) * u).unwrap(),
        "swiglu (up)",
    );
}

#[test]
fn softmax_matches_the_composed_form() {
    check(
        &[2, 3, 5, 7],
        |x| ops::softmax(x).unwrap(),
        |x| {
            let max = x.max_keepdim(D::Minus1).unwrap();
            let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
        },
        "softmax",
    );
}

#[test]
fn rope_matches_the_composed_form() {
    let (s, hd) = (5, 8);
    let (cos, sin) = (rand(&[s, hd], 6), rand(&[s, hd], 7));
    check(
        &[2, 3, s, hd],
        |x| ops::rope(x, &cos, &sin).unwrap(),
        |x| {
            let x1 = x.narrow(D::Minus1, 0, hd / 2).unwrap();
            let x2 = x.narrow(D::Minus1, hd / 2, hd / 2).unwrap();
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
        },
        "rope",
    );
}

#[test]
fn frozen_matmul_gives_the_input_gradient_only() {
    let w = rand(&[7, 40], 8);
    let frozen = fedsim::model::FrozenWeight::F32(w.clone());
    check(
        &[6, 40],
        |x| ops::frozen_matmul(x, &frozen).unwrap(),
        |x| x.matmul(&w.t().unwrap()).unwrap(),
        "frozen matmul",
    );
    // W is a Var here: the frozen op leaves it without a gradient, as intended.
    let wv = Var::from_tensor(&w).unwrap();
    let x = rand(&[6, 40], 9);
    let grads = ops::frozen_matmul(
        &x,
        &fedsim::model::FrozenWeight::F32(wv.as_tensor().clone()),
    )
    .unwrap()
    .sum_all()
    .unwrap()
    .backward()
    .unwrap();
    assert!(grads.get(&wv).is_none());
}
