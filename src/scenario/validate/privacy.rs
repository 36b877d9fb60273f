//! Checks of the `dp` section's mechanism.

use super::{Check, Range};
use crate::fmt::compact;
use crate::privacy::discrete::{DistributedNoise, MIN_STD};
use crate::privacy::{DpSampling, Mechanism, NoiseBy, NoiseDistribution};
use crate::scenario::file::{DpSection, ScenarioFile};
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

/// `dp.noise_by`: clients can add the noise only where they clip (`ClientSideFixed`), and
/// for at least one survivor; under secure aggregation the server clips nothing and counts
/// nothing per client, so only `ClientSideFixed` applies there at all.
pub(super) fn check_noise_by(
    c: &Check<'_>,
    d: &DpSection,
    file: &ScenarioFile,
) -> Result<(), ScenarioError> {
    let client_side = matches!(d.mechanism, Mechanism::ClientSideFixed { .. });
    if let NoiseBy::Clients {
        min_survivors,
        distribution,
    } = d.noise_by
    {
        c.ensure(
            client_side,
            "dp.noise_by",
            format!(
                "is Clients but dp.mechanism is {}; clients add noise to updates they clip \
                 themselves: use ClientSideFixed",
                d.mechanism.name()
            ),
        )?;
        c.ensure(
            min_survivors >= 1,
            "dp.noise_by.Clients.min_survivors",
            "is 0; it must be at least 1 (the noise is calibrated for that many updates)",
        )?;
        if distribution == NoiseDistribution::DiscreteGaussian {
            check_discrete(c, d, file, min_survivors)?;
        }
    }
    c.ensure(
        client_side || file.strategy.secure_aggregation.is_none(),
        "dp.mechanism",
        format!(
            "is {} but strategy.secure_aggregation is on: the server never sees one update, so \
             it can neither clip one nor count the clipped ones; use ClientSideFixed",
            d.mechanism.name()
        ),
    )
}

/// `dp.noise_by: Clients(distribution: DiscreteGaussian)`: the shares live in secure
/// aggregation's ring, the DDG accountant covers Poisson sampling and RDP, and a share's std
/// must lie where the sampler and the bound hold.
fn check_discrete(
    c: &Check<'_>,
    d: &DpSection,
    file: &ScenarioFile,
    min_survivors: usize,
) -> Result<(), ScenarioError> {
    c.ensure(
        file.strategy.secure_aggregation.is_some(),
        "dp.noise_by.Clients.distribution",
        "is DiscreteGaussian but strategy.secure_aggregation is None: the discrete shares are \
         added to the fixed-point terms inside secure aggregation's ring; set \
         strategy.secure_aggregation or use distribution: Gaussian",
    )?;
    c.ensure(
        d.sampling == DpSampling::Poisson,
        "dp.sampling",
        "is Fixed but dp.noise_by's distribution is DiscreteGaussian, whose accountant covers \
         Poisson sampling only (Zhu & Wang's bound); set dp.sampling: Poisson",
    )?;
    c.ensure(
        !d.pld,
        "dp.pld",
        "is true but dp.noise_by's distribution is DiscreteGaussian; the PLD accountant models \
         the continuous Gaussian: set dp.pld: false (the DDG has its own RDP bound)",
    )?;
    let (z, clip) = (d.mechanism.noise_multiplier(), d.mechanism.initial_clip());
    DistributedNoise::new(z, clip, min_survivors)
        .map(|_| ())
        .map_err(|_| {
            let steps = z * clip * crate::fixed::STEPS_PER_UNIT / (min_survivors as f64).sqrt();
            c.fail(
                "dp.mechanism",
                format!(
                    "gives each client's discrete share a std z·C·2⁴⁰/√m = {} fixed-point steps; \
                     the exact sampler and the DDG bound need {} to 2⁵⁰ (z·C/√m between \
                     about {} and 1024): change noise_multiplier, clip_norm or min_survivors",
                    compact(steps),
                    compact(MIN_STD),
                    compact(MIN_STD / crate::fixed::STEPS_PER_UNIT),
                ),
            )
        })
}
