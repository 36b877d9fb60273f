//! Checks of `topology`: the edges, their assignment (resolved against the profiles, so a
//! missing tier or region column is caught here), the WAN, edge faults — and what a
//! hierarchical run does not combine with yet.

use super::{Check, Range};
use crate::devices::{Bounds, Fleet};
use crate::privacy::{DpSampling, Mechanism, NoiseBy};
use crate::scenario::file::{ScenarioFile, SecureAggregation};
use crate::scenario::ScenarioError;
use crate::stragglers::Stragglers;
use crate::topology::{Hierarchy, NoiseAt, Topology};

/// Most edge rounds per cloud round.
const MAX_EDGE_ROUNDS: usize = 1000;

pub(super) fn check_topology(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let Topology::Hierarchical {
        edges,
        edge_rounds,
        wan,
        edge_deadline_s,
        edge_availability,
        edge_crash_probability,
        ..
    } = file.topology
    else {
        return Ok(());
    };
    let f = "topology.Hierarchical";
    let clients = file.clients.count;
    c.ensure(
        (1..=clients).contains(&edges),
        &format!("{f}.edges"),
        format!("is {edges}; it must lie in [1, {clients}] (clients.count)"),
    )?;
    c.ensure(
        (1..=MAX_EDGE_ROUNDS).contains(&edge_rounds),
        &format!("{f}.edge_rounds"),
        format!("is {edge_rounds}; it must lie in [1, {MAX_EDGE_ROUNDS}]"),
    )?;
    let mbps = Range::closed(Bounds::MBPS.min, Bounds::MBPS.max);
    c.finite_in(wan.up_mbps, mbps, &format!("{f}.wan.up_mbps"))?;
    c.finite_in(wan.down_mbps, mbps, &format!("{f}.wan.down_mbps"))?;
    let lat = Range::closed(Bounds::LATENCY_S.min, Bounds::LATENCY_S.max);
    c.finite_in(wan.latency_s, lat, &format!("{f}.wan.latency_s"))?;
    if let Some(d) = edge_deadline_s {
        c.finite_in(
            d,
            Range::open_closed(0.0, 1e9),
            &format!("{f}.edge_deadline_s"),
        )?;
    }
    c.finite_in(
        edge_availability,
        Range::open_closed(0.0, 1.0),
        &format!("{f}.edge_availability"),
    )?;
    c.finite_in(
        edge_crash_probability,
        Range::closed_open(0.0, 1.0),
        &format!("{f}.edge_crash_probability"),
    )?;
    let fleet = Fleet::assign(&file.system.profiles, clients, file.seed)
        .map_err(|e| c.fail("system.profiles", e.to_string()))?;
    Hierarchy::resolve(&file.topology, &fleet, file.seed)
        .map_err(|e| c.fail(&format!("{f}.assignment"), e.to_string()))?;
    check_combinations(c, file)
}

/// What a hierarchical run cannot be combined with (yet), by name.
fn check_combinations(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let refuse = |field: &str, what: &str| {
        c.fail(
            field,
            format!("{what} cannot be combined with topology Hierarchical yet; use topology Flat"),
        )
    };
    match file.system.stragglers {
        Stragglers::Async { .. } => {
            return Err(refuse(
                "system.stragglers",
                "Async (buffered asynchronous aggregation)",
            ))
        }
        Stragglers::Wait | Stragglers::Drop | Stragglers::OverSelect { .. } => {}
    }
    check_dp(c, file)?;
    if let Some(SecureAggregation::HomomorphicEncryption { .. }) = file.strategy.secure_aggregation
    {
        return Err(refuse(
            "strategy.secure_aggregation",
            "HomomorphicEncryption at the edge (SecAggPlus runs at each edge)",
        ));
    }
    Ok(())
}

/// Client-level DP under a hierarchy: noise at the root only with one edge round (with more,
/// clients train on un-noised edge models, so the released model's sensitivity to one client
/// is not bounded by the clip); noise at the edges with fixed-size sampling (each edge
/// divides by its own count); neither with adaptive clipping or client-added noise.
fn check_dp(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let (
        Some(dp),
        Topology::Hierarchical {
            edge_rounds,
            noise_at,
            ..
        },
    ) = (&file.dp, file.topology)
    else {
        return Ok(());
    };
    let f = "topology.Hierarchical.noise_at";
    if noise_at == NoiseAt::Root && edge_rounds > 1 {
        return Err(c.fail(
            f,
            format!(
                "is Root but edge_rounds is {edge_rounds}: clients of the later edge rounds train \
                 on un-noised edge models, so one client's influence on the released model is \
                 not bounded by the clip; use noise_at: Edges (every edge round noised) or \
                 edge_rounds: 1"
            ),
        ));
    }
    if noise_at == NoiseAt::Edges && dp.sampling != DpSampling::Fixed {
        return Err(c.fail(
            "dp.sampling",
            "is Poisson but topology.Hierarchical.noise_at is Edges, where each edge averages \
             over its own updates; use dp.sampling: Fixed",
        ));
    }
    if let Mechanism::Adaptive { .. } = dp.mechanism {
        return Err(c.fail(
            "dp.mechanism",
            "Adaptive clipping cannot be combined with topology Hierarchical yet; use \
             ServerSideFixed or ClientSideFixed",
        ));
    }
    if dp.noise_by != NoiseBy::Server {
        return Err(c.fail(
            "dp.noise_by",
            "Clients (distributed noise) cannot be combined with topology Hierarchical; the \
             edges or the cloud add the noise (topology.Hierarchical.noise_at)",
        ));
    }
    Ok(())
}
