//! Checks of `topology`: the edges, their assignment (resolved against the profiles, so a
//! missing tier or region column is caught here), the WAN, edge faults — and what a
//! hierarchical run does not combine with yet.

use super::{Check, Range};
use crate::devices::{Bounds, Fleet};
use crate::scenario::file::ScenarioFile;
use crate::scenario::ScenarioError;
use crate::stragglers::Stragglers;
use crate::strategy::{Needs, Strategy};
use crate::topology::{Hierarchy, Topology};

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
        Stragglers::OverSelect { .. } => {
            return Err(refuse(
                "system.stragglers",
                "OverSelect (the first finishers of the whole sample)",
            ))
        }
        Stragglers::Wait | Stragglers::Drop => {}
    }
    if file.dp.is_some() {
        return Err(refuse(
            "dp",
            "client-level DP (noise at the edge or the root)",
        ));
    }
    if file.strategy.secure_aggregation.is_some() {
        return Err(refuse(
            "strategy.secure_aggregation",
            "secure aggregation at the edge",
        ));
    }
    if file.system.byzantine.is_some() {
        return Err(refuse("system.byzantine", "Byzantine clients"));
    }
    let strategy = Strategy::from_kind(file.strategy.kind);
    if strategy.needs() == Needs::AllUpdates {
        return Err(refuse(
            "strategy.kind",
            &format!("{} (a robust rule at the edge)", strategy.name()),
        ));
    }
    Ok(())
}
