//! Rényi-DP accounting for the subsampled Gaussian mechanism.
//!
//! - Poisson subsampling, add/remove-one neighbours: A_α of Mironov, Talwar & Zhang (2019),
//!   exact binomial sum for integer orders and the two-sided series of their §3.3 for
//!   fractional orders.
//! - Fixed-size sampling without replacement, replace-one neighbours: the bound of Wang, Balle
//!   & Kasiviswanathan (2019), Theorem 27 (forward differences of the Gaussian CGF), with
//!   Corollary 10's interpolation for fractional orders.
//! - RDP → (ε, δ) by the improved conversion of Balle et al. (2020) / Canonne, Kamath &
//!   Steinke (2020): ε = r + log(1 − 1/α) − log(δ·α)/(α − 1), minimised over orders.
//!
//! Google's dp_accounting sums the fractional-order series in absolute value, an upper bound
//! on A_α; [`FracSeries::AbsoluteBound`] reproduces its numbers (our default, conservative),
//! [`FracSeries::Exact`] keeps the signs of the binomial coefficients.

use serde::{Deserialize, Serialize};

use super::special::{log_add, log_comb, log_erfc, SignedLog};

/// dp_accounting's default orders: 1.1, 1.2, …, 10.9, 11, 12, …, 63, 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + x as f64 / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
        .collect()
}

/// How the fractional-order series is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum FracSeries {
    /// Sum of absolute values (dp_accounting 0.6.0): an upper bound on A_α.
    #[default]
    AbsoluteBound,
    /// The signed series.
    Exact,
}

/// How clients are sampled each round, and the neighbouring relation it is accounted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingScheme {
    /// Each client independently with probability q; neighbours add or remove one client.
    Poisson,
    /// A uniformly random subset of fixed size m = q·n; neighbours replace one client.
    WithoutReplacement,
}

/// RDP of one Poisson-subsampled Gaussian step at order `alpha` (noise multiplier `z`).
pub fn rdp_poisson(q: f64, z: f64, alpha: f64, series: FracSeries) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if alpha.is_infinite() || z == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * z * z);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, z, alpha as u64)
    } else {
        log_a_frac(q, z, alpha, series)
    };
    log_a / (alpha - 1.0)
}

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let fi = i as f64;
        let (lc, _) = log_comb(alpha as f64, fi);
        let s = lc + fi * lq + (alpha as f64 - fi) * l1mq + (fi * fi - fi) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

fn log_a_frac(q: f64, sigma: f64, alpha: f64, series: FracSeries) -> f64 {
    let (lq, l1mq) = (q.ln(), (-q).ln_1p());
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let s2 = 2.0 * sigma * sigma;
    let (mut a0, mut a1) = (SignedLog::ZERO, SignedLog::ZERO);
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..1000u32 {
        let fi = f64::from(i);
        let (lc, positive) = log_comb(alpha, fi);
        let positive = positive || series == FracSeries::AbsoluteBound;
        let j = alpha - fi;
        let t0 = lc + fi * lq + j * l1mq;
        let t1 = lc + j * lq + fi * l1mq;
        let e0 = 0.5f64.ln() + log_erfc((fi - z0) / (std::f64::consts::SQRT_2 * sigma));
        let e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let s0 = t0 + (fi * fi - fi) / s2 + e0;
        let s1 = t1 + (j * j - j) / s2 + e1;
        a0 = a0.add(positive, s0);
        a1 = a1.add(positive, s1);
        let total = log_add(a0.log, a1.log);
        if s0 < last0 && s1 < last1 && s0.max(s1) < total - 30.0 {
            return total;
        }
        last0 = s0;
        last1 = s1;
    }
    // Did not converge: exclude this order (dp_accounting does the same).
    f64::INFINITY
}

/// RDP of one step of the Gaussian mechanism on a fixed-size sample without replacement
/// (replace-one neighbours), at order `alpha`.
pub fn rdp_without_replacement(q: f64, z: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if q == 1.0 {
        return alpha / (2.0 * z * z);
    }
    if alpha.is_infinite() || z == 0.0 {
        return f64::INFINITY;
    }
    if alpha.fract() == 0.0 {
        return wor_log_a_int(q, z, alpha as u64) / (alpha - 1.0);
    }
    let (f, c) = (alpha.floor(), alpha.ceil());
    let (x, y) = (wor_log_a_int(q, z, f as u64), wor_log_a_int(q, z, c as u64));
    let t = alpha - f;
    ((1.0 - t) * x + t * y) / (alpha - 1.0)
}

fn wor_log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    if alpha == 1 {
        return 0.0;
    }
    let cgf = |x: f64| x * (x + 1.0) / (2.0 * sigma * sigma);
    let func = |x: f64| x / (2.0 * sigma * sigma);
    let lq = q.ln();
    let log_f2m1 = func(2.0) + (-(-func(2.0)).exp()).ln_1p();
    let first = 2.0 * lq
        + log_comb(alpha as f64, 2.0).0
        + (4f64.ln() + log_f2m1).min(func(2.0) + 2f64.ln());
    let mut log_a = log_add(0.0, first);
    let deltas = if alpha <= 256 {
        Some(forward_diffs(&cgf, alpha as usize))
    } else {
        None
    };
    for i in 3..=alpha {
        let fi = i as f64;
        let mut s = 2f64.ln() + cgf(fi - 1.0);
        if let Some(d) = &deltas {
            let lo = d[2 * (i as usize / 2) - 1];
            let hi = d[2 * (i as usize).div_ceil(2) - 1];
            s = s.min(4f64.ln() + 0.5 * (lo + hi));
        }
        log_a = log_add(log_a, s + fi * lq + log_comb(alpha as f64, fi).0);
    }
    log_a
}

/// `log |Δ^(k+1) exp(f)(−1)|` for k = 0..=n+1, the forward differences of `exp(f)` started
/// at −1 (where the Gaussian CGF is 0), in log space with signs (WBK19, Theorem 27).
fn forward_diffs(f: &dyn Fn(f64) -> f64, n: usize) -> Vec<f64> {
    let mut vec = vec![SignedLog {
        positive: true,
        log: 0.0,
    }];
    vec.extend((0..n + 2).map(|i| SignedLog {
        positive: true,
        log: f(i as f64),
    }));
    let mut out = Vec::with_capacity(n + 2);
    for pass in 0..n + 2 {
        for j in 0..n + 2 - pass {
            let (cur, next) = (vec[j], vec[j + 1]);
            vec[j] = next.add(!cur.positive, cur.log);
        }
        out.push(vec[0].log);
    }
    out
}

/// (ε, optimal order) from RDP values at `orders` for target `delta`.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    (best.0.max(0.0), best.1)
}
