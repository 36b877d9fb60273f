//! Training's matmuls in bf16 (`model.compute_dtype: Bf16`): the rounding against the `half`
//! crate's, both kernels against an f64 sum of the same bf16 products (edges included), the
//! direct Q8_0 → bf16 path against dequantise-then-round, the packed op's forward and input
//! gradient against the f32 path, the head's loss, and a short federated run.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor, Var};
use fedsim::model::bf16mm::{self, from_bf16, to_bf16, Bf16Rows, Kernel};
use fedsim::model::weight::Packed;
use fedsim::model::{ops, ComputeDtype, FrozenWeight};

fn seeded(rows: usize, cols: usize, salt: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let i = i as f64 + salt;
            ((i * 0.37).sin() * 2.0 + 0.1 * (i * 1.3).cos()) as f32
        })
        .collect()
}

fn weight(rows: usize, cols: usize, format: GgmlDType) -> FrozenWeight {
    let t = Tensor::from_vec(seeded(rows, cols, 7.0), (rows, cols), &Device::Cpu).unwrap();
    FrozenWeight::new(t, format).unwrap()
}

fn packed(w: &FrozenWeight) -> &Packed {
    match w {
        FrozenWeight::Packed(p) => p,
        FrozenWeight::F32(_) => panic!("expected a packed weight"),
    }
}

fn kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::Portable];
    if bf16mm::has_avx512_bf16() {
        k.push(Kernel::Avx512Bf16);
    } else {
        eprintln!("this CPU has no AVX-512 BF16: only the portable kernel is checked");
    }
    k
}

#[test]
fn rounding_to_bf16_is_nearest_even_as_the_half_crate_rounds() {
    let mut xs: Vec<f32> = seeded(1, 4000, 0.0).iter().map(|v| v * 1e3).collect();
    xs.extend([
        0.0,
        -0.0,
        1.0,
        f32::from_bits(0x3f80_8000), // a tie, rounds to the even 1.0
        f32::from_bits(0x3f81_8000), // a tie, rounds up to the even mantissa
        f32::MAX,
        f32::MIN_POSITIVE / 3.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for x in xs {
        let want = half::bf16::from_f32(x).to_bits();
        assert_eq!(to_bf16(x), want, "{x:e}");
    }
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
}

/// Σ_k a[i][k]·b(k, j) in f64 over the bf16 values, and the bound an f32 sum of those exact
/// products can miss it by: (terms + 1) · 2⁻²⁴ · Σ|products|.
fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: &Bf16Rows,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut abs) = (0f64, 0f64);
            for kk in 0..k {
                let p = f64::from(from_bf16(a.get(i, kk))) * f64::from(b(kk, j));
                s += p;
                abs += p.abs();
            }
            out.push((s, (k as f64 + 1.0) * abs * 2f64.powi(-24)));
        }
    }
    out
}

#[test]
fn both_kernels_sum_the_bf16_products_within_f32_rounding_edges_included() {
    // Odd widths, partial panels (n not a multiple of 32) and strips (m not of 12).
    for &(m, n, k, format) in &[
        (13, 45, 64, GgmlDType::Q8_0),
        (25, 70, 96, GgmlDType::Q4_1),
        (5, 33, 37, GgmlDType::BF16),
        (12, 32, 32, GgmlDType::BF16),
    ] {
        let w = weight(n, k, format);
        let p = packed(&w);
        let k = p.cols();
        let wb = Bf16Rows::of_weight(p, 0..n);
        let x = Bf16Rows::from_f32(&seeded(m, k, 1.0), k);
        let fwd = reference(m, n, k, &x, |kk, j| from_bf16(wb.get(j, kk)));
        let g = Bf16Rows::from_f32(&seeded(m, n, 2.0), n);
        let bwd = reference(m, k, n, &g, |r, c| from_bf16(wb.get(r, c)));
        for kernel in kernels() {
            let mut y = vec![0f32; m * n];
            bf16mm::x_wt_on(kernel, p, 0..n, &x, &mut y);
            for (idx, (&got, &(want, tol))) in y.iter().zip(&fwd).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "{kernel:?} {format:?} forward [{idx}]: {got} vs {want} (±{tol:e})"
                );
            }
            // Accumulating onto 1.0 everywhere adds exactly 1 (within the same bound).
            let mut gx = vec![1f32; m * k];
            bf16mm::g_w_on(kernel, p, 0..n, &g, &mut gx, true);
            for (idx, (&got, &(want, tol))) in gx.iter().zip(&bwd).enumerate() {
                assert!(
                    (f64::from(got) - 1.0 - want).abs() <= tol + 1e-6,
                    "{kernel:?} {format:?} input gradient [{idx}]: {got} vs 1 + {want}"
                );
            }
        }
    }
}

#[test]
fn q8_0_rows_round_to_the_bits_of_dequantise_then_round() {
    let w = weight(70, 128, GgmlDType::Q8_0);
    let p = packed(&w);
    let direct = Bf16Rows::of_weight(p, 3..70);
    let mut f = vec![0f32; 67 * 128];
    p.rows_into(3, &mut f);
    let via_f32 = Bf16Rows::from_f32(&f, 128);
    for r in 0..67 {
        for c in 0..128 {
            assert_eq!(direct.get(r, c), via_f32.get(r, c), "({r}, {c})");
        }
    }
}

#[test]
fn a_packed_op_in_bf16_stays_near_the_f32_path_forward_and_backward() {
    for format in [GgmlDType::Q8_0, GgmlDType::Q4_1, GgmlDType::BF16] {
        let f32w = weight(96, 256, format);
        let bf = f32w.computing_in(ComputeDtype::Bf16);
        assert_eq!(packed(&bf).compute(), ComputeDtype::Bf16);
        let x = Tensor::from_vec(seeded(37, 256, 3.0), (37, 256), &Device::Cpu).unwrap();
        let x = Var::from_tensor(&(x * 0.5).unwrap()).unwrap();
        let (yb, yf) = (
            ops::frozen_matmul(x.as_tensor(), &bf).unwrap(),
            ops::frozen_matmul(x.as_tensor(), &f32w).unwrap(),
        );
        // Two bf16 roundings of 8 significant bits each: about 2⁻⁸ of Σ|x·w|.
        let rel = |a: &Tensor, b: &Tensor| -> f32 {
            let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
            let s = b.abs().unwrap().sum_all().unwrap();
            d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap()
        };
        let r = rel(&yb, &yf);
        assert!(
            r > 0.0 && r < 4e-3,
            "{format:?}: forward relative difference {r}"
        );
        eprintln!("{format:?}: forward Σ|bf16 − f32| / Σ|f32| = {r:.1e}");
        let up = Tensor::from_vec(seeded(37, 96, 4.0), (37, 96), &Device::Cpu).unwrap();
        let gb = (yb * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = (yf * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let r = rel(gb.get(&x).unwrap(), gf.get(&x).unwrap());
        assert!(
            r > 0.0 && r < 4e-3,
            "{format:?}: input gradient relative difference {r}"
        );
        eprintln!("{format:?}: input gradient Σ|bf16 − f32| / Σ|f32| = {r:.1e}");
    }
}

#[test]
fn a_short_federated_run_in_bf16_learns_near_f32_and_is_deterministic_across_slot_counts() {
    use crate::util::{round_metrics, run, scenario, SMALL};
    let tmp = tempfile::tempdir().unwrap();
    let base = "model.base_precision=Q8_0";
    let f32 = run(&scenario(SMALL, &[base]).unwrap(), &tmp.path().join("f32"));
    let set = "model.compute_dtype=Bf16";
    let one = run(
        &scenario(SMALL, &[base, set, "slots.count=1"]).unwrap(),
        &tmp.path().join("bf16-1"),
    );
    let two = run(
        &scenario(SMALL, &[base, set, "slots.count=2"]).unwrap(),
        &tmp.path().join("bf16-2"),
    );
    let s = &one.summary;
    assert_eq!(s.compute_dtype, "Bf16");
    assert_eq!(f32.summary.compute_dtype, "F32");
    assert!(
        s.final_eval_loss < s.pretrained_eval_loss - 0.3,
        "held-out loss {} -> {}",
        s.pretrained_eval_loss,
        s.final_eval_loss
    );
    assert!(
        (s.final_eval_loss - f32.summary.final_eval_loss).abs() < 0.05,
        "bf16 {} vs f32 {}",
        s.final_eval_loss,
        f32.summary.final_eval_loss
    );
    assert_ne!(
        s.final_eval_loss, f32.summary.final_eval_loss,
        "bf16 changed nothing"
    );
    eprintln!(
        "held-out loss {:.4} -> {:.4} (f32 matmuls: {:.4})",
        s.pretrained_eval_loss, s.final_eval_loss, f32.summary.final_eval_loss
    );
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(round_metrics(&one.dir), round_metrics(&two.dir));
    assert_eq!(adapter(&one.dir), adapter(&two.dir));
}

#[test]
fn bf16_compute_without_a_packed_base_is_refused_by_name() {
    let err = crate::util::scenario(crate::util::SMALL, &["model.compute_dtype=Bf16"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.compute_dtype") && err.contains("base_precision"),
        "{err}"
    );
    assert!("bf16".parse::<ComputeDtype>().is_ok());
    assert!("f16".parse::<ComputeDtype>().is_err());
}
