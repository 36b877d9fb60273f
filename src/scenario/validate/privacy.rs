//! Checks of the `dp` section's mechanism.

use super::{Check, Range};
use crate::fmt::compact;
use crate::privacy::Mechanism;
use crate::scenario::ScenarioError;

/// Smallest noise multiplier a scenario may use.
const MIN_NOISE: f64 = 1e-6;

/// The mechanism, at path `f` (`dp.mechanism`).
pub(super) fn check_mechanism(c: &Check<'_>, m: &Mechanism, f: &str) -> Result<(), ScenarioError> {
    let positive = |v: f64, field: &str| c.finite_in(v, Range::open_closed(0.0, 1e6), field);
    // Below 1e-6 the noise is nil and ε overflows f64: refuse rather than report inf.
    let noise = |v: f64, field: &str| c.finite_in(v, Range::closed(MIN_NOISE, 1e6), field);
    match *m {
        Mechanism::ClientSideFixed {
            clip_norm,
            noise_multiplier,
        } => {
            positive(clip_norm, &format!("{f}.ClientSideFixed.clip_norm"))?;
            noise(
                noise_multiplier,
                &format!("{f}.ClientSideFixed.noise_multiplier"),
            )
        }
        Mechanism::ServerSideFixed {
            clip_norm,
            noise_multiplier,
        } => {
            positive(clip_norm, &format!("{f}.ServerSideFixed.clip_norm"))?;
            noise(
                noise_multiplier,
                &format!("{f}.ServerSideFixed.noise_multiplier"),
            )
        }
        Mechanism::Adaptive {
            initial_clip,
            target_quantile,
            clip_lr,
            noise_multiplier,
            count_stddev,
        } => {
            let f = format!("{f}.Adaptive");
            positive(initial_clip, &format!("{f}.initial_clip"))?;
            c.finite_in(
                target_quantile,
                Range::open(0.0, 1.0),
                &format!("{f}.target_quantile"),
            )?;
            c.finite_in(clip_lr, Range::closed(0.0, 10.0), &format!("{f}.clip_lr"))?;
            noise(noise_multiplier, &format!("{f}.noise_multiplier"))?;
            positive(count_stddev, &format!("{f}.count_stddev"))?;
            c.ensure(
                2.0 * count_stddev > noise_multiplier,
                &format!("{f}.count_stddev"),
                format!(
                    "is {}; it must exceed noise_multiplier / 2 = {} so the update keeps \
                     part of the noise budget (Andrew et al. suggest expected clients per round / 20)",
                    compact(count_stddev),
                    compact(noise_multiplier / 2.0)
                ),
            )
        }
    }
}
