//! Client-level differential privacy: accountants that turn noise and sampling into (ε, δ).

pub mod accountant;
pub mod clip;
pub mod ledger;
pub mod mechanism;
pub mod noise;
pub mod pld;
pub mod rdp;
pub mod special;

pub use accountant::{calibrate_noise, epsilon_after, noise_for_epsilon, Guarantee, RdpAccountant};
pub use clip::{clip_l2, Clipped};
pub use ledger::PrivacyLedger;
pub use mechanism::{DpPlan, DpSampling, Mechanism};
pub use noise::NoiseSource;
pub use pld::{gaussian_epsilon_exact, pld_epsilon};
pub use rdp::{FracSeries, SamplingScheme};

/// Errors of the privacy layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    /// A parameter outside its domain.
    #[error("{name} is {value}; it must be {allowed}")]
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
    /// No noise multiplier up to 10⁶ reaches the target.
    #[error("no noise multiplier up to 1e6 reaches epsilon {target_epsilon}; raise the target or lower rounds/sampling rate")]
    Unreachable {
        /// The target.
        target_epsilon: f64,
    },
}
