//! The report's tier section: bytes over the wide-area link per round — edges ↔ cloud in a
//! hierarchical run, every client ↔ the server in a flat one — so flat and hierarchical runs
//! of the same federation compare on the link that is slow and paid for.

use super::{HtmlReportError, Page, Run};
use crate::chart::{Axes, Series};

/// MB that crossed the WAN in a round (both directions).
fn wan_mb(round: &serde_json::Value) -> Option<f64> {
    let h = &round["hierarchy"];
    let bytes = if h.is_object() {
        h["wan_bytes_down"].as_f64()? + h["wan_bytes_up"].as_f64()?
    } else {
        round["bytes_down"].as_f64()? + round["bytes_up"].as_f64()?
    };
    Some(bytes / 1e6)
}

/// The section (a note when no run is hierarchical).
pub(super) fn section(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    page.section("Tiers");
    if !runs.iter().any(|r| r.summary.hierarchy.is_some()) {
        page.note(
            "WAN bytes per round: no run is hierarchical (topology Hierarchical adds edges \
             between clients and the cloud).",
        );
        return Ok(());
    }
    page.per_round(
        runs,
        "WAN bytes per round (edges <-> cloud; flat: clients <-> server)",
        Axes {
            x: "round",
            y: "MB (10^6 bytes)",
        },
        |r| {
            let points = (r.rounds.iter())
                .filter_map(|v| Some((v["round"].as_f64()?, wan_mb(v)?)))
                .collect();
            vec![Series {
                label: r.name.clone(),
                points,
            }]
        },
    )
}
