//! Checks of the `system` section: profiles, availability, crashes, deadline, policy.

use super::{Check, Range};
use crate::devices::{Bounds, DeviceProfile, Dist, Fleet, Profiles};
use crate::fmt::compact;
use crate::scenario::file::SystemSection;
use crate::scenario::ScenarioError;
use crate::stragglers::Stragglers;

/// The `system` section `s`, at path `f`.
pub(super) fn check_system(
    c: &Check<'_>,
    (s, f): (&SystemSection, &str),
    clients: usize,
    seed: u64,
) -> Result<(), ScenarioError> {
    check_profiles(c, s, f, clients, seed)?;
    c.finite_in(
        s.availability,
        Range::open_closed(0.0, 1.0),
        &format!("{f}.availability"),
    )?;
    c.finite_in(
        s.crash_probability,
        Range::closed_open(0.0, 1.0),
        &format!("{f}.crash_probability"),
    )?;
    if let Some(d) = s.deadline_s {
        c.finite_in(d, Range::open_closed(0.0, 1e9), &format!("{f}.deadline_s"))?;
    }
    check_stragglers(c, s, f, clients)?;
    if let Some(&bad) = s.inject_panic.iter().find(|&&id| id >= clients) {
        return Err(c.fail(
            &format!("{f}.inject_panic"),
            format!("names client {bad}; ids are 0..{clients}"),
        ));
    }
    Ok(())
}

/// How clients get their device and network profiles.
fn check_profiles(
    c: &Check<'_>,
    s: &SystemSection,
    f: &str,
    clients: usize,
    seed: u64,
) -> Result<(), ScenarioError> {
    match &s.profiles {
        Profiles::Fixed(p) => check_profile(c, p, &format!("{f}.profiles.Fixed"))?,
        Profiles::Drawn {
            flops,
            up_mbps,
            down_mbps,
            latency_s,
        } => {
            let g = format!("{f}.profiles.Drawn");
            check_dist(c, flops, &format!("{g}.flops"), Bounds::FLOPS)?;
            check_dist(c, up_mbps, &format!("{g}.up_mbps"), Bounds::MBPS)?;
            check_dist(c, down_mbps, &format!("{g}.down_mbps"), Bounds::MBPS)?;
            check_dist(c, latency_s, &format!("{g}.latency_s"), Bounds::LATENCY_S)?;
        }
        Profiles::Tiers(tiers) => {
            let g = format!("{f}.profiles.Tiers");
            c.ensure(!tiers.is_empty(), &g, "is empty; give at least one tier")?;
            for (i, t) in tiers.iter().enumerate() {
                c.finite_in(
                    t.share,
                    Range::open_closed(0.0, 1.0),
                    &format!("{g}[{i}].share"),
                )?;
                check_profile(c, &t.profile, &format!("{g}[{i}].profile"))?;
            }
            let total: f64 = tiers.iter().map(|t| t.share).sum();
            c.ensure(
                (total - 1.0).abs() <= 1e-6,
                &format!("{g}.share"),
                format!("values sum to {}; the shares must sum to 1", compact(total)),
            )?;
        }
        Profiles::Trace { path } => {
            if let Err(e) = Fleet::assign(&s.profiles, clients, seed) {
                return Err(c.fail(
                    &format!("{f}.profiles.Trace.path"),
                    format!(
                        "{} cannot be used: {}",
                        path.display(),
                        crate::fmt::chain(&e)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The straggler policy, against the deadline and the clients.
fn check_stragglers(
    c: &Check<'_>,
    s: &SystemSection,
    f: &str,
    clients: usize,
) -> Result<(), ScenarioError> {
    match s.stragglers {
        Stragglers::Wait => {}
        Stragglers::Drop => c.ensure(
            s.deadline_s.is_some(),
            &format!("{f}.stragglers"),
            "is Drop but system.deadline_s is None; set a deadline, e.g. deadline_s: Some(60.0)",
        )?,
        Stragglers::OverSelect { extra } => c.ensure(
            (1..=clients).contains(&extra),
            &format!("{f}.stragglers.OverSelect.extra"),
            format!("is {extra}; it must be 1..={clients} (clients.count)"),
        )?,
        Stragglers::Async {
            buffer,
            concurrency,
            staleness,
        } => {
            let g = format!("{f}.stragglers.Async");
            c.ensure(
                (1..=clients).contains(&concurrency),
                &format!("{g}.concurrency"),
                format!("is {concurrency}; it must be 1..={clients} (clients.count)"),
            )?;
            c.ensure(
                (1..=concurrency).contains(&buffer),
                &format!("{g}.buffer"),
                format!("is {buffer}; it must be 1..={concurrency} (the concurrency)"),
            )?;
            if let crate::stragglers::Staleness::Polynomial { a } = staleness {
                c.finite_in(
                    a,
                    Range::closed(0.0, 10.0),
                    &format!("{g}.staleness.Polynomial.a"),
                )?;
            }
            c.ensure(
                s.deadline_s.is_none(),
                &format!("{f}.deadline_s"),
                "is set but Async has no rounds to close at a deadline; set None",
            )?;
        }
    }
    Ok(())
}

fn check_profile(c: &Check<'_>, p: &DeviceProfile, f: &str) -> Result<(), ScenarioError> {
    within(c, p.flops, Bounds::FLOPS, &format!("{f}.flops"))?;
    within(c, p.up_mbps, Bounds::MBPS, &format!("{f}.up_mbps"))?;
    within(c, p.down_mbps, Bounds::MBPS, &format!("{f}.down_mbps"))?;
    within(c, p.latency_s, Bounds::LATENCY_S, &format!("{f}.latency_s"))
}

/// `v` in the profile quantity's one range (the same for every kind of profile).
fn within(c: &Check<'_>, v: f64, b: Bounds, field: &str) -> Result<(), ScenarioError> {
    c.finite_in(v, Range::closed(b.min, b.max), field)
}

/// A distribution's parameters in the quantity's range (its draws are clamped into it).
fn check_dist(c: &Check<'_>, d: &Dist, f: &str, b: Bounds) -> Result<(), ScenarioError> {
    let value = |v: f64, field: &str| within(c, v, b, field);
    match *d {
        Dist::Fixed(v) => value(v, &format!("{f}.Fixed")),
        Dist::Uniform { low, high } => {
            value(low, &format!("{f}.Uniform.low"))?;
            value(high, &format!("{f}.Uniform.high"))?;
            c.ensure(
                low <= high,
                &format!("{f}.Uniform.high"),
                format!(
                    "is {}; it must be at least low = {}",
                    compact(high),
                    compact(low)
                ),
            )
        }
        Dist::LogNormal { median, sigma } => {
            value(median, &format!("{f}.LogNormal.median"))?;
            c.finite_in(
                sigma,
                Range::closed(0.0, 10.0),
                &format!("{f}.LogNormal.sigma"),
            )
        }
        Dist::Normal { mean, std } => {
            value(mean, &format!("{f}.Normal.mean"))?;
            c.finite_in(std, Range::closed(0.0, b.max), &format!("{f}.Normal.std"))
        }
    }
}
