//! A composing RDP accountant and the inverse problem (noise for a target ε).

use super::rdp::{
    default_orders, epsilon_from_rdp, rdp_poisson, rdp_without_replacement, FracSeries,
    SamplingScheme,
};
use super::PrivacyError;

/// Accumulates RDP over rounds at a fixed set of orders.
#[derive(Debug, Clone)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    scheme: SamplingScheme,
    series: FracSeries,
}

/// An (ε, δ) guarantee with the RDP order that achieved it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guarantee {
    /// ε.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The optimal RDP order.
    pub order: f64,
}

impl RdpAccountant {
    /// An empty accountant over dp_accounting's default orders.
    pub fn new(scheme: SamplingScheme, series: FracSeries) -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self {
            orders,
            rdp,
            scheme,
            series,
        }
    }

    /// The sampling scheme (and so the neighbouring relation) accounted for.
    pub fn scheme(&self) -> SamplingScheme {
        self.scheme
    }

    /// Compose `count` steps of the subsampled Gaussian with rate `q` and noise multiplier `z`.
    ///
    /// # Errors
    /// `q ∉ [0, 1]` or `z < 0`.
    pub fn compose(&mut self, q: f64, z: f64, count: usize) -> Result<(), PrivacyError> {
        check_rate(q, true)?;
        if !(z >= 0.0 && z.is_finite()) {
            return Err(PrivacyError::Parameter {
                name: "noise_multiplier",
                value: z,
                allowed: "≥ 0 and finite",
            });
        }
        for (r, &a) in self.rdp.iter_mut().zip(&self.orders) {
            let step = match self.scheme {
                SamplingScheme::Poisson => rdp_poisson(q, z, a, self.series),
                SamplingScheme::WithoutReplacement => rdp_without_replacement(q, z, a),
            };
            *r += count as f64 * step;
        }
        Ok(())
    }

    /// Compose `count` steps of a mechanism whose RDP at order α is `step(α)` (the
    /// distributed discrete Gaussian's bound, say).
    pub fn compose_curve(&mut self, step: impl Fn(f64) -> f64, count: usize) {
        for (r, &a) in self.rdp.iter_mut().zip(&self.orders) {
            *r += count as f64 * step(a);
        }
    }

    /// The tightest (ε, δ) over the orders.
    ///
    /// # Errors
    /// `delta ∉ (0, 1)`.
    pub fn epsilon(&self, delta: f64) -> Result<Guarantee, PrivacyError> {
        check_delta(delta)?;
        let (epsilon, order) = epsilon_from_rdp(&self.orders, &self.rdp, delta);
        Ok(Guarantee {
            epsilon,
            delta,
            order,
        })
    }
}

pub(super) fn check_rate(q: f64, allow_zero: bool) -> Result<(), PrivacyError> {
    let ok = q.is_finite() && q <= 1.0 && (q > 0.0 || (allow_zero && q == 0.0));
    if ok {
        Ok(())
    } else {
        Err(PrivacyError::Parameter {
            name: "sampling_rate",
            value: q,
            allowed: "in (0, 1]",
        })
    }
}

pub(super) fn check_noise(z: f64) -> Result<(), PrivacyError> {
    if z > 0.0 && z.is_finite() {
        Ok(())
    } else {
        Err(PrivacyError::Parameter {
            name: "noise_multiplier",
            value: z,
            allowed: "> 0 and finite",
        })
    }
}

pub(super) fn check_rounds(rounds: usize) -> Result<(), PrivacyError> {
    if rounds >= 1 {
        Ok(())
    } else {
        Err(PrivacyError::Parameter {
            name: "rounds",
            value: 0.0,
            allowed: "≥ 1",
        })
    }
}

pub(super) fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::Parameter {
            name: "delta",
            value: delta,
            allowed: "in (0, 1)",
        })
    }
}

/// ε after `rounds` rounds of the subsampled Gaussian (`z`, `q`) at `delta`.
///
/// # Errors
/// Parameters out of range: `z ≤ 0`, `q ∉ (0, 1]`, `delta ∉ (0, 1)`, `rounds = 0`.
pub fn epsilon_after(
    z: f64,
    q: f64,
    rounds: usize,
    delta: f64,
    scheme: SamplingScheme,
    series: FracSeries,
) -> Result<Guarantee, PrivacyError> {
    check_after(z, q, rounds, delta)?;
    let mut acc = RdpAccountant::new(scheme, series);
    acc.compose(q, z, rounds)?;
    finite(acc.epsilon(delta)?, z)
}

/// ε after `rounds` rounds of the distributed discrete Gaussian whose sum of the fewest
/// shares carries noise multiplier `z` (s = 1/z, τ = 0: shares of σ ≥ 10 fixed-point steps),
/// Poisson-sampled at `q`, at `delta`.
///
/// # Errors
/// As [`epsilon_after`].
pub fn ddg_epsilon_after(
    z: f64,
    q: f64,
    rounds: usize,
    delta: f64,
) -> Result<Guarantee, PrivacyError> {
    check_after(z, q, rounds, delta)?;
    let mut acc = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
    acc.compose_curve(
        |a| super::discrete::rdp_poisson_ddg(q, a, 1.0 / z, 0.0, 0.0),
        rounds,
    );
    finite(acc.epsilon(delta)?, z)
}

/// The checks of an ε-after-T-rounds question.
fn check_after(z: f64, q: f64, rounds: usize, delta: f64) -> Result<(), PrivacyError> {
    check_noise(z)?;
    check_rate(q, false)?;
    check_delta(delta)?;
    check_rounds(rounds)
}

/// `g`, unless its ε overflowed (noise multiplier `z` too small).
fn finite(g: Guarantee, z: f64) -> Result<Guarantee, PrivacyError> {
    if g.epsilon.is_finite() {
        Ok(g)
    } else {
        Err(PrivacyError::Overflow { z })
    }
}

/// The smallest noise multiplier whose ε after `rounds` rounds at `delta` is at most
/// `target_epsilon` under the RDP accountant (see [`calibrate_noise`]).
///
/// # Errors
/// Parameters out of range, or a target no noise below 10⁶ reaches.
pub fn noise_for_epsilon(
    target_epsilon: f64,
    q: f64,
    rounds: usize,
    delta: f64,
    scheme: SamplingScheme,
    series: FracSeries,
) -> Result<(f64, Guarantee), PrivacyError> {
    calibrate_noise(target_epsilon, |z| {
        epsilon_after(z, q, rounds, delta, scheme, series)
    })
}

/// The smallest noise multiplier z with `epsilon_of(z) ≤ target_epsilon`, for any accountant
/// whose ε decreases in z: bisection to relative precision 1e-7, then rounded *up* to 6
/// significant digits, so the printed value can be pasted into a scenario as is.
///
/// # Errors
/// A bad target, an error from `epsilon_of`, or a target no noise below 10⁶ reaches.
pub fn calibrate_noise(
    target_epsilon: f64,
    epsilon_of: impl Fn(f64) -> Result<Guarantee, PrivacyError>,
) -> Result<(f64, Guarantee), PrivacyError> {
    if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
        return Err(PrivacyError::Parameter {
            name: "target_epsilon",
            value: target_epsilon,
            allowed: "> 0 and finite",
        });
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while epsilon_of(hi)?.epsilon > target_epsilon {
        lo = hi;
        hi *= 2.0;
        if hi > 1e6 {
            return Err(PrivacyError::Unreachable { target_epsilon });
        }
    }
    // An ε too large to represent is above any target.
    let above = |z: f64| match epsilon_of(z) {
        Ok(g) => Ok(g.epsilon > target_epsilon),
        Err(PrivacyError::Overflow { .. }) => Ok(true),
        Err(e) => Err(e),
    };
    while hi - lo > 1e-7 * hi {
        let mid = 0.5 * (lo + hi);
        if above(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let scale = 10f64.powi(5 - hi.log10().floor() as i32);
    let z = (hi * scale).ceil() / scale;
    Ok((z, epsilon_of(z)?))
}
