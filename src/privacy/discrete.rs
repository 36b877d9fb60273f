//! The distributed discrete Gaussian (Kairouz, Liu & Steinke 2021): each client adds integer
//! noise N_Z(0, σ²) to its update's fixed-point terms inside secure aggregation's ring, so the
//! released sum is exactly what the accountant analyses — no floating-point noise rounded
//! per client.
//!
//! - [`DiscreteGaussian`] samples N_Z(0, σ²) exactly (Canonne, Kamath & Steinke 2020,
//!   Algorithms 1–3) with σ² = t·u for integers t, u, so every quantity the algorithm compares
//!   is an integer ratio that fits 128 bits; randomness comes only from uniform integers.
//! - [`ddg_rdp`] is the Rényi DP of the sum of n such shares (Kairouz et al., Theorem 1 and
//!   Eq. 17 of Proposition 14), and [`rdp_poisson_ddg`] its Poisson-subsampled bound by Zhu
//!   & Wang (2019)'s general upper bound for integer orders.

use rand::Rng;

use super::special::{log_add, log_comb};
use super::PrivacyError;

/// The smallest per-client σ (in fixed-point steps) accepted: from there the sum's
/// divergence from a discrete Gaussian, τ of Theorem 1, underflows to 0 in f64.
pub const MIN_STD: f64 = 10.0;

/// The largest per-client σ accepted: t·u and |Y − u|² stay within 128 bits.
pub const MAX_STD: f64 = (1u64 << 50) as f64;

/// Discrete Gaussian shares a second one client draws and adds to its encoded terms at
/// σ ≈ 3.5·10¹¹ steps: `cargo bench --bench secagg` (`ddg_shares`, 98 ms for 460,800
/// values) on the 2-core reference host, 2026-12-04. The virtual clock prices the shares at it.
pub const SHARES_PER_S: f64 = 4.7e6;

/// N_Z(0, t·u): the discrete Gaussian on the integers with σ² = t·u.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// The discrete Laplace proposal's scale, ⌊σ⌋ + 1.
    t: u64,
    /// σ² / t.
    u: u64,
}

impl DiscreteGaussian {
    /// The discrete Gaussian with t = ⌊`std`⌋ + 1 and u = ⌈std² / t⌉: variance t·u ≥ std²
    /// (up to f64 rounding), never more than std² + t.
    ///
    /// # Errors
    /// `std` outside [[`MIN_STD`], [`MAX_STD`]].
    pub fn at_least(std: f64) -> Result<Self, PrivacyError> {
        if !(MIN_STD..=MAX_STD).contains(&std) {
            return Err(PrivacyError::Parameter {
                name: "discrete noise std (fixed-point steps)",
                value: std,
                allowed: "in [10, 2⁵⁰]",
            });
        }
        let t = std.floor() as u64 + 1;
        let u = (std * (std / t as f64)).ceil() as u64;
        Ok(Self { t, u: u.max(1) })
    }

    /// σ² = t·u.
    pub fn variance(&self) -> f64 {
        self.t as f64 * self.u as f64
    }

    /// σ.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// One draw (Canonne, Kamath & Steinke 2020, Algorithm 3): Y from the discrete Laplace of
    /// scale t, kept with probability exp(−(|Y| − σ²/t)² / (2σ²)) = exp(−(|Y| − u)² / (2tu)).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let denominator = 2 * u128::from(self.t) * u128::from(self.u);
        loop {
            let y = discrete_laplace(rng, self.t);
            let gap = u128::from(y.unsigned_abs()).abs_diff(u128::from(self.u));
            // A gap past 2⁶⁴ is past 2¹⁴ scales t: its probability is below e^(−16384).
            let Some(numerator) = gap.checked_mul(gap) else {
                continue;
            };
            if bernoulli_exp(rng, numerator, denominator) {
                return y;
            }
        }
    }
}

/// Bernoulli(n / d), d > 0 (a 64-bit draw when d fits, as most do: cheaper than 128 bits).
fn bernoulli<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    match u64::try_from(d) {
        Ok(d) => u128::from(rng.random_range(0..d)) < n,
        Err(_) => rng.random_range(0..d) < n,
    }
}

/// Bernoulli(exp(−n/d)) for n ≤ d (Algorithm 1, γ ∈ [0, 1]): count K while Bernoulli(γ/K)
/// succeeds; K odd with probability e^(−γ).
fn bernoulli_exp_le1<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    let mut k: u128 = 1;
    while bernoulli(rng, n, d.saturating_mul(k)) {
        k += 1;
    }
    k % 2 == 1
}

/// Bernoulli(exp(−n/d)) for any n: ⌊n/d⌋ Bernoulli(e⁻¹) and one Bernoulli(e^(−frac)).
fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    if n < d {
        return bernoulli_exp_le1(rng, n, d); // no 128-bit division (most calls)
    }
    let mut whole = n / d;
    while whole > 0 {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        whole -= 1;
    }
    bernoulli_exp_le1(rng, n % d, d)
}

/// The discrete Laplace with P(x) ∝ exp(−|x|/t) (Algorithm 2).
fn discrete_laplace<R: Rng + ?Sized>(rng: &mut R, t: u64) -> i64 {
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp(rng, u128::from(u), u128::from(t)) {
            continue;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_le1(rng, 1, 1) {
            v += 1;
        }
        let Some(x) = v
            .checked_mul(t)
            .and_then(|x| x.checked_add(u))
            .and_then(|x| i64::try_from(x).ok())
        else {
            continue;
        };
        let negative: bool = rng.random();
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

/// τ of Kairouz et al.'s Theorem 1 for `n` shares of N_Z(0, σ²): 10·Σ_{k=1}^{n−1}
/// exp(−2π²σ²·k/(k+1)), how far their sum is from a discrete Gaussian.
pub fn ddg_tau(variance: f64, n: usize) -> f64 {
    let pi2 = std::f64::consts::PI * std::f64::consts::PI;
    10.0 * (1..n)
        .map(|k| (-2.0 * pi2 * variance * k as f64 / (k as f64 + 1.0)).exp())
        .sum::<f64>()
}

/// RDP at order `alpha` of the sum of n shares of N_Z(0, σ²) released for a query of L2
/// sensitivity Δ₂ in `dim` dimensions (Eq. 17): min(α·s²/2 + τ·d, α/2·(s + √d·τ)²) with
/// s = Δ₂ / (√n·σ) (`scale`).
pub fn ddg_rdp(alpha: f64, scale: f64, tau: f64, dim: f64) -> f64 {
    let plain = alpha * scale * scale / 2.0 + tau * dim;
    let inflated = alpha / 2.0 * (scale + dim.sqrt() * tau).powi(2);
    plain.min(inflated)
}

/// RDP at `alpha` of the DDG under Poisson sampling with rate `q` (add/remove-one): Zhu &
/// Wang (2019)'s general upper bound at the integer order ⌈α⌉ (at least 2; RDP grows with the
/// order, so it bounds α too), and never more than the unsampled RDP.
pub fn rdp_poisson_ddg(q: f64, alpha: f64, scale: f64, tau: f64, dim: f64) -> f64 {
    let a = alpha.ceil().max(2.0);
    let eps = |l: f64| ddg_rdp(l, scale, tau, dim);
    if q == 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return eps(a);
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    // (1−q)^(a−1)·(aq − q + 1), then C(a,2)q²(1−q)^(a−2)·e^ε(2), then 3·C(a,l)(1−q)^(a−l)q^l·e^((l−1)ε(l)).
    let mut log_sum = (a - 1.0) * l1q + (a * q - q + 1.0).ln();
    log_sum = log_add(
        log_sum,
        log_comb(a, 2.0).0 + 2.0 * lq + (a - 2.0) * l1q + eps(2.0),
    );
    let mut l = 3.0;
    while l <= a {
        let term = 3f64.ln() + log_comb(a, l).0 + (a - l) * l1q + l * lq + (l - 1.0) * eps(l);
        log_sum = log_add(log_sum, term);
        l += 1.0;
    }
    (log_sum / (a - 1.0)).min(eps(a))
}

/// The clients' discrete Gaussian shares for `dp.noise_by: Clients(min_survivors: m,
/// distribution: DiscreteGaussian)` and what the accountant charges for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributedNoise {
    /// Each client's share, in fixed-point steps.
    pub share: DiscreteGaussian,
    /// m: the fewest shares a released sum carries.
    pub min_survivors: usize,
    /// Δ₂ in fixed-point steps: C·(1 + 2⁻²³)·2⁴⁰. The encoding truncates towards zero, which
    /// never grows a norm; the factor covers rounding the clipped values to f32 (each
    /// relative error ≤ 2⁻²⁴) and the norm's f64 sum.
    pub sensitivity: f64,
}

impl DistributedNoise {
    /// Shares of std z·Δ₂/√m for noise multiplier `z`, clip `clip` and `min_survivors` m.
    ///
    /// # Errors
    /// A share std outside [[`MIN_STD`], [`MAX_STD`]] fixed-point steps.
    pub fn new(z: f64, clip: f64, min_survivors: usize) -> Result<Self, PrivacyError> {
        let steps = crate::fixed::STEPS_PER_UNIT;
        let sensitivity = clip * (1.0 + f64::powi(2.0, -23)) * steps;
        let m = min_survivors.max(1);
        let share = DiscreteGaussian::at_least(z * sensitivity / (m as f64).sqrt())?;
        Ok(Self {
            share,
            min_survivors: m,
            sensitivity,
        })
    }

    /// s = Δ₂ / (√m·σ): the sum of m shares is charged like a Gaussian of multiplier 1/s.
    pub fn scale(&self) -> f64 {
        self.sensitivity / ((self.min_survivors as f64).sqrt() * self.share.std())
    }

    /// τ for m shares (0 in f64 from σ ≥ 10 steps, which [`DistributedNoise::new`] requires,
    /// so the dimension terms of Eq. 17 vanish).
    pub fn tau(&self) -> f64 {
        ddg_tau(self.share.variance(), self.min_survivors)
    }

    /// RDP at `alpha` of one round at Poisson rate `q`.
    pub fn rdp(&self, q: f64, alpha: f64) -> f64 {
        rdp_poisson_ddg(q, alpha, self.scale(), self.tau(), 0.0)
    }

    /// What the accountant assumes, in words (for reports), for noise multiplier `z`.
    pub fn assumption(&self, z: f64) -> String {
        format!(
            "RDP accountant, Poisson sampling of clients with q = fraction_fit, \
             add-or-remove-one-client neighbours; the distributed discrete Gaussian (Kairouz et \
             al. 2021): each client adds N_Z(0, σ²) with σ = {:.6e} fixed-point steps (z = {z} \
             for m = {} shares of sensitivity C·(1 + 2⁻²³)), a round's RDP is Eq. 17 with s = \
             {:.6} and τ = {:e}, Poisson-subsampled by Zhu & Wang's general bound at integer \
             orders (rounds with fewer than {} updates release nothing)",
            self.share.std(),
            self.min_survivors,
            self.scale(),
            self.tau(),
            self.min_survivors,
        )
    }
}
