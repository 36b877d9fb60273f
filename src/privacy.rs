//! Client-level differential privacy: accountants that turn noise and sampling into (ε, δ).

pub mod accountant;
pub mod clip;
pub mod discrete;
pub mod ledger;
pub mod mechanism;
pub mod noise;
pub mod pld;
pub mod rdp;
pub mod special;

pub use accountant::{
    calibrate_noise, ddg_epsilon_after, epsilon_after, noise_for_epsilon, Guarantee, RdpAccountant,
};
pub use clip::{clip_l2, Clipped};
pub use ledger::{LedgerSnapshot, PrivacyLedger};
pub use mechanism::{DpPlan, DpSampling, Mechanism, NoiseBy, NoiseDistribution};
pub use noise::NoiseSource;
pub use pld::{gaussian_epsilon_exact, pld_epsilon};
pub use rdp::{FracSeries, SamplingScheme};

/// Errors of the privacy layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A parameter outside its domain.
    #[error("{name} is {}; it must be {allowed}", crate::fmt::compact(*.value))]
    Parameter {
        /// Which parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The allowed range.
        allowed: &'static str,
    },
    /// The PLD grid would be too large (a very small noise multiplier).
    #[error("the PLD accountant would need {points} grid points (limit {max}): the noise multiplier is too small for a 1e-4 grid; use the RDP accountant")]
    PldTooLarge {
        /// Points needed.
        points: usize,
        /// The limit.
        max: usize,
    },
    /// δ below what the PLD accountant resolves.
    #[error("delta = {delta:e} is below what the PLD accountant resolves ({min:e}: its FFT composition carries ~1e-15 of error and truncated tail mass); use the RDP accountant for smaller delta")]
    PldDelta {
        /// The δ asked for.
        delta: f64,
        /// The smallest δ the PLD accountant accepts.
        min: f64,
    },
    /// The PLD's tail mass is within δ, but its loss grid under- or overflows f64.
    #[error("the PLD accountant cannot resolve epsilon at delta = {delta:e} after {rounds} rounds: its privacy-loss grid under- or overflows f64 (the truncated tail mass, {mass:e}, is within delta); use the RDP accountant")]
    PldUnresolved {
        /// Mass counted as infinite loss.
        mass: f64,
        /// δ.
        delta: f64,
        /// Rounds composed.
        rounds: usize,
    },
    /// The PLD's mass at infinite loss exceeds δ: it cannot certify a finite ε.
    #[error("the PLD accountant's truncated tail mass {mass:e} exceeds delta = {delta:e} after {rounds} rounds, so it cannot give a finite epsilon; use the RDP accountant")]
    PldTail {
        /// Mass counted as infinite loss.
        mass: f64,
        /// δ.
        delta: f64,
        /// Rounds composed.
        rounds: usize,
    },
    /// ε is finite in theory but beyond f64 (the noise is effectively nil).
    #[error("epsilon exceeds the largest representable number (~1.8e308) for noise multiplier {z:e}: such noise protects nothing; raise the noise multiplier")]
    Overflow {
        /// The noise multiplier.
        z: f64,
    },
    /// No noise multiplier up to 10⁶ reaches the target.
    #[error("no noise multiplier up to 1e6 reaches epsilon {target_epsilon}; raise the target or lower rounds/sampling rate")]
    Unreachable {
        /// The target.
        target_epsilon: f64,
    },
}
