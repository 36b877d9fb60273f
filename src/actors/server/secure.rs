//! Secure aggregation on the server's side of a synchronous round, and what it costs on the
//! virtual clock (see [`crate::secagg::cost`]): the keys and shares phases run before
//! training and delay it; each client's masking is compute on its timeline; the unmasking
//! phase runs after the round's last upload and delays the close.

use std::collections::HashMap;

use ractor::ActorProcessingErr;

use super::state::Core;
use crate::actors::aggregator::AggregatorMsg;
use crate::messages::ClientId;
use crate::secagg::cost::{self, SecAggCost, Unmasking};

/// Bytes a client uploads: its update as sent (`plain`), or under secure aggregation its
/// masked vector, ⌈b/8⌉ bytes a value and one for the weight.
pub(super) fn upload_bytes(st: &Core, plain: u64) -> u64 {
    st.args.config.secagg.map_or(plain, |p| {
        p.ring.element_bytes() as u64 * elements(st) as u64
    })
}

/// Ring elements of a masked vector: the adapter's values and the weight.
fn elements(st: &Core) -> usize {
    st.global.data().len() + 1
}

/// The keys and shares phases as they went: how long they delay training, each client's
/// masking compute, and the cost record so far.
#[derive(Debug, Default)]
pub(super) struct SecureSetup {
    /// Simulated seconds before training can start.
    pub(super) seconds: f64,
    /// Each client's masking compute, simulated seconds.
    pub(super) mask_s: HashMap<ClientId, f64>,
    /// Keys, shares and masking so far (None without secure aggregation).
    pub(super) cost: Option<SecAggCost>,
}

/// Secure aggregation's keys and shares phases with the round's sampled clients, before any
/// trains (nothing to do without it). `Err(why)`: the round cannot be aggregated securely.
pub(super) async fn set_up(
    st: &mut Core,
    chosen: &[ClientId],
) -> Result<Result<SecureSetup, String>, ActorProcessingErr> {
    let Some(params) = st.args.config.secagg else {
        return Ok(Ok(SecureSetup::default()));
    };
    let clients = chosen
        .iter()
        .filter_map(|c| st.clients.get(c).map(|a| (*c, a.clone())))
        .collect();
    let seed = st.args.config.seed;
    let answer = ractor::call!(st.args.aggregator, |reply| AggregatorMsg::SecAggSetup {
        params,
        clients,
        seed,
        reply
    })?;
    let setups = match answer {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let fleet = st.args.clients.faults.fleet();
    let profiled: Vec<_> = (setups.iter())
        .map(|(c, s)| (fleet.profile(*c), *s))
        .collect();
    let (keys, shares) = cost::setup(&profiled);
    let n = elements(st);
    let mask_s: HashMap<ClientId, f64> = (setups.iter())
        .map(|(c, s)| (*c, cost::mask_seconds(s.masks, n, &params.compute)))
        .collect();
    let masking = mask_s.values().sum::<f64>() / mask_s.len().max(1) as f64;
    let record = SecAggCost {
        keys,
        shares,
        masked: cost::Phase {
            seconds: masking,
            ..cost::Phase::default()
        },
        ..SecAggCost::default()
    };
    Ok(Ok(SecureSetup {
        seconds: keys.seconds + shares.seconds,
        mask_s,
        cost: Some(record),
    }))
}

/// The unmasking phase after the round's last upload: its transfers and the server's
/// compute delay the close; the round's record and byte counts take its messages.
pub(super) fn unmask(st: &mut Core, unmasking: &Unmasking) {
    let Some(params) = st.args.config.secagg else {
        return;
    };
    let fleet = st.args.clients.faults.fleet();
    let survivors: Vec<_> = (unmasking.messages.iter())
        .map(|(c, down, up)| (fleet.profile(*c), *down, *up))
        .collect();
    let (phase, server) = if survivors.is_empty() {
        (cost::Phase::default(), 0.0)
    } else {
        cost::unmask(&survivors, unmasking.masks, elements(st), &params.compute)
    };
    let cur = &mut st.current;
    cur.close_at += phase.seconds;
    let record = cur.secure.get_or_insert_with(SecAggCost::default);
    // The masked vectors as the uploads counted them: ⌈b/8⌉ bytes an element.
    record.masked.up_bytes = cur.bytes_up;
    record.unmask = phase;
    record.server_compute_s = server;
    record.masks_regenerated = unmasking.masks;
    // The protocol's own messages count in the round's traffic (the masked vectors are
    // already there: they are the uploads).
    let (up, down) = [record.keys, record.shares, record.unmask]
        .iter()
        .fold((0, 0), |(u, d), p| (u + p.up_bytes, d + p.down_bytes));
    cur.bytes_up += up;
    cur.bytes_down += down;
}
