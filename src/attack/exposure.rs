//! Canary exposure (Carlini et al. 2019, *The Secret Sharer*): how far a planted secret's
//! log-perplexity ranks ahead of every other fill of its format.
//!
//! With the candidate space `R` small enough to enumerate, exposure is
//! `log2 |R| − log2 rank`. Otherwise candidates are sampled and a skew-normal distribution is
//! fitted to their log-perplexities (method of moments); exposure is then
//! `−log2 F(canary)`, the paper's extrapolation, capped at `log2 |R|`.

use serde::{Deserialize, Serialize};

/// How an exposure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureMethod {
    /// Every candidate of the space was scored: the rank is exact.
    Enumerated,
    /// A sample of candidates was scored and a skew-normal fitted to it.
    SkewNormal,
}

/// The rank of `canary` among itself and `others` when lower scores rank first; ties count
/// against the canary (the conservative choice: a tie never raises exposure).
pub fn rank(canary: f64, others: &[f64]) -> usize {
    1 + others.iter().filter(|&&s| s <= canary).count()
}

/// `log2 |R| − log2 rank`.
pub fn exposure_from_rank(space: f64, rank: usize) -> f64 {
    space.log2() - (rank as f64).log2()
}

/// Exposure estimated from a uniform sample of `n` candidates of which `lower` score at or
/// below the canary: its rank in the whole space is about `1 + lower · |R| / n`.
pub fn exposure_from_sample(space: f64, lower: usize, n: usize) -> f64 {
    let rank = 1.0 + lower as f64 * space / n.max(1) as f64;
    (space.log2() - rank.log2()).max(0.0)
}

/// A skew-normal distribution: location ξ, scale ω, shape α.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SkewNormal {
    /// Location ξ.
    pub location: f64,
    /// Scale ω (> 0).
    pub scale: f64,
    /// Shape α (0: normal).
    pub shape: f64,
}

/// The largest |skewness| a skew-normal reaches is about 0.9953; sample skewness is clamped
/// just below it.
const MAX_SKEW: f64 = 0.99;

impl SkewNormal {
    /// Method-of-moments fit to `xs` (at least 3 values with some spread), else `None`.
    pub fn fit(xs: &[f64]) -> Option<Self> {
        let n = xs.len() as f64;
        if xs.len() < 3 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n;
        let m2 = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let m3 = xs.iter().map(|x| (x - mean).powi(3)).sum::<f64>() / n;
        if m2 <= 0.0 || !m2.is_finite() {
            return None;
        }
        let gamma = (m3 / m2.powf(1.5)).clamp(-MAX_SKEW, MAX_SKEW);
        let pi = std::f64::consts::PI;
        let c = (2.0 * gamma.abs() / (4.0 - pi)).cbrt();
        let delta = gamma.signum() * (pi / 2.0 * c * c / (1.0 + c * c)).sqrt();
        let b = (2.0 / pi).sqrt();
        let scale = (m2 / (1.0 - 2.0 * delta * delta / pi)).sqrt();
        Some(Self {
            location: mean - scale * delta * b,
            scale,
            shape: delta / (1.0 - delta * delta).sqrt(),
        })
    }

    /// ln F(x), the log of the cumulative distribution: ∫ 2 φ(t) Φ(α t) dt up to the
    /// standardised x, integrated numerically in log space (accurate far into the left tail).
    pub fn log_cdf(&self, x: f64) -> f64 {
        let z = (x - self.location) / self.scale;
        let log_density =
            |t: f64| std::f64::consts::LN_2 + log_normal_pdf(t) + log_normal_cdf(self.shape * t);
        // Below min(z, −10) − 10 the integrand is negligible (relative to its value at z).
        let lo = z.min(-10.0) - 10.0;
        let h = 1e-3 * (10.0 / z.abs().max(10.0));
        let steps = ((z - lo) / h).ceil().max(2.0) as usize;
        let h = (z - lo) / steps as f64;
        // Trapezoid rule over log-densities, summed with a running maximum.
        let top = (0..=steps)
            .map(|i| log_density(lo + i as f64 * h))
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..=steps)
            .map(|i| {
                let w = if i == 0 || i == steps { 0.5 } else { 1.0 };
                w * (log_density(lo + i as f64 * h) - top).exp()
            })
            .sum();
        (top + (sum * h).ln()).min(0.0)
    }

    /// Exposure in bits of a canary scoring `x`: −log2 F(x), capped at `log2 |R|`.
    pub fn exposure(&self, x: f64, space: f64) -> f64 {
        (-self.log_cdf(x) / std::f64::consts::LN_2).clamp(0.0, space.log2())
    }
}

/// ln φ(t).
fn log_normal_pdf(t: f64) -> f64 {
    -0.5 * t * t - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

/// ln Φ(x), with the asymptotic series where erfc underflows.
pub fn log_normal_cdf(x: f64) -> f64 {
    if x > -30.0 {
        (0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)).ln()
    } else {
        let x2 = x * x;
        log_normal_pdf(x) - (-x).ln() + (1.0 - 1.0 / x2 + 3.0 / (x2 * x2)).ln()
    }
}
