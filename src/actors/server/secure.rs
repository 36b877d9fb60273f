//! Secure aggregation on the server's side of a synchronous round — SecAgg+ or homomorphic
//! encryption — and what it costs on the virtual clock (see [`crate::secagg::cost`] and
//! [`crate::he::cost`]): the set-up phases run before training and delay it; each client's
//! masking or encryption is compute on its timeline; the unmasking or decryption after the
//! round's last upload delays the close.

use std::collections::HashMap;

use ractor::ActorProcessingErr;

use super::config::Protection;
use super::state::Core;
use crate::actors::aggregator::AggregatorMsg;
use crate::he::cost::Decryption;
use crate::messages::ClientId;
use crate::privacy::discrete::SHARES_PER_S;
use crate::secagg::cost::{self, ClientSetup, SecAggCost, Unmasking};

/// Ring elements of a masked vector: the adapter's values and the weight.
/// A masked vector's elements (the values and the weight), in elements of the width the
/// compute rates were measured at.
fn elements(st: &Core, ring: crate::secagg::Ring) -> f64 {
    cost::reference_elements(st.global.data().len() + 1, ring)
}

/// A client's drawing of distributed DP's discrete Gaussian shares, one per value, when the
/// run adds them (simulated seconds, at the measured [`SHARES_PER_S`]).
fn noise_seconds(st: &Core) -> f64 {
    let discrete = (st.ledger.as_ref()).is_some_and(|l| l.plan().distributed_noise().is_some());
    if discrete {
        st.global.data().len() as f64 / SHARES_PER_S
    } else {
        0.0
    }
}

/// The set-up phases as they went: how long they delay training, what each client uploads,
/// each client's masking or encryption compute, and the cost record so far.
#[derive(Debug, Default)]
pub(super) struct SecureSetup {
    /// Simulated seconds before training can start.
    pub(super) seconds: f64,
    /// Bytes a client uploads in place of its update (None: its update as sent).
    pub(super) upload: Option<u64>,
    /// Each client's masking or encryption compute, simulated seconds.
    pub(super) mask_s: HashMap<ClientId, f64>,
    /// Set-up and masking so far (None without secure aggregation).
    pub(super) cost: Option<SecAggCost>,
}

pub(super) use crate::messages::SetupError;

/// The round's set-up phases with its sampled clients, before any trains (nothing to do in
/// the clear). `Err(why)`: the round cannot be aggregated securely.
pub(super) async fn set_up(
    st: &mut Core,
    chosen: &[ClientId],
) -> Result<Result<SecureSetup, SetupError>, ActorProcessingErr> {
    let aggregator = st.args.aggregator.clone();
    set_up_at(st, &aggregator, chosen).await
}

/// [`set_up`] run by `aggregator` (an edge's, under a hierarchy) with `chosen`.
pub(super) async fn set_up_at(
    st: &mut Core,
    aggregator: &ractor::ActorRef<AggregatorMsg>,
    chosen: &[ClientId],
) -> Result<Result<SecureSetup, SetupError>, ActorProcessingErr> {
    let Some(protection) = st.args.config.secure else {
        return Ok(Ok(SecureSetup::default()));
    };
    let clients = chosen
        .iter()
        .filter_map(|c| st.clients.get(c).map(|a| (*c, a.clone())))
        .collect();
    let seed = st.args.config.seed;
    let setups = match protection {
        Protection::SecAggPlus(params) => {
            let answer = ractor::call!(aggregator, |reply| AggregatorMsg::SecAggSetup {
                params,
                clients,
                seed,
                reply
            })?;
            answer.map_err(SetupError::from)
        }
        Protection::Homomorphic(params) => {
            let answer = ractor::call!(aggregator, |reply| AggregatorMsg::HeSetup {
                params,
                clients,
                seed,
                reply
            })?;
            return Ok(answer
                .map(|s| he_setup(st, chosen, s))
                .map_err(SetupError::from));
        }
    };
    Ok(setups.map(|s| secagg_setup(st, &s)))
}

/// SecAgg+'s keys and shares phases, priced.
fn secagg_setup(st: &Core, setups: &[(ClientId, ClientSetup)]) -> SecureSetup {
    let Some(Protection::SecAggPlus(params)) = st.args.config.secure else {
        return SecureSetup::default();
    };
    let fleet = st.args.clients.faults.fleet();
    let profiled: Vec<_> = (setups.iter())
        .map(|(c, s)| (fleet.profile(*c), *s))
        .collect();
    let (keys, shares) = cost::setup(&profiled);
    let n = elements(st, params.ring);
    let noise = noise_seconds(st);
    let mask_s: HashMap<ClientId, f64> = (setups.iter())
        .map(|(c, s)| (*c, cost::mask_seconds(s.masks, n, &params.compute) + noise))
        .collect();
    let record = SecAggCost {
        keys,
        shares,
        masked: cost::Phase {
            seconds: mean(&mask_s),
            ..cost::Phase::default()
        },
        ..SecAggCost::default()
    };
    SecureSetup {
        seconds: keys.seconds + shares.seconds,
        upload: Some(params.ring.element_bytes() as u64 * n as u64),
        mask_s,
        cost: Some(record),
    }
}

/// Homomorphic encryption's key distribution (each client downloads the public key),
/// priced, and each client's encryption.
fn he_setup(st: &Core, chosen: &[ClientId], setup: crate::he::cost::Setup) -> SecureSetup {
    let Some(Protection::Homomorphic(params)) = st.args.config.secure else {
        return SecureSetup::default();
    };
    let fleet = st.args.clients.faults.fleet();
    let profiled: Vec<_> = (chosen.iter())
        .map(|c| {
            let keys = ClientSetup {
                keys_down: setup.public_key_bytes,
                ..ClientSetup::default()
            };
            (fleet.profile(*c), keys)
        })
        .collect();
    let (keys, _) = cost::setup(&profiled);
    let encrypt =
        crate::he::cost::encrypt_seconds(setup.ciphertexts, params.degree, &params.compute)
            + noise_seconds(st);
    let mask_s: HashMap<ClientId, f64> = chosen.iter().map(|c| (*c, encrypt)).collect();
    let record = SecAggCost {
        keys,
        masked: cost::Phase {
            seconds: encrypt,
            ..cost::Phase::default()
        },
        key_holder_bytes: setup.holder_bytes,
        ..SecAggCost::default()
    };
    SecureSetup {
        seconds: keys.seconds,
        upload: Some(setup.ciphertexts as u64 * setup.ciphertext_bytes),
        mask_s,
        cost: Some(record),
    }
}

fn mean(per_client: &HashMap<ClientId, f64>) -> f64 {
    per_client.values().sum::<f64>() / per_client.len().max(1) as f64
}

/// The unmasking phase after the round's last upload: its transfers and the server's
/// compute delay the close; the round's record and byte counts take its messages. Returns
/// the seconds it added.
pub(super) fn unmask(st: &mut Core, unmasking: &Unmasking) -> f64 {
    let Some(Protection::SecAggPlus(params)) = st.args.config.secure else {
        return 0.0;
    };
    let fleet = st.args.clients.faults.fleet();
    let survivors: Vec<_> = (unmasking.messages.iter())
        .map(|(c, down, up)| (fleet.profile(*c), *down, *up))
        .collect();
    let (phase, server) = if survivors.is_empty() {
        (cost::Phase::default(), 0.0)
    } else {
        cost::unmask(
            &survivors,
            unmasking.masks,
            elements(st, params.ring),
            &params.compute,
        )
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
    phase.seconds
}

/// The decryption after the round's last upload: the server's last addition and the key
/// holders' decryption delay the close; the public keys count in the round's downloads.
pub(super) fn decrypt(st: &mut Core, decryption: &Decryption) {
    let Some(Protection::Homomorphic(params)) = st.args.config.secure else {
        return;
    };
    let server = crate::he::cost::decrypt_seconds(
        decryption.ciphertexts,
        decryption.degree,
        &params.compute,
    );
    let cur = &mut st.current;
    cur.close_at += server;
    let record = cur.secure.get_or_insert_with(SecAggCost::default);
    record.masked.up_bytes = cur.bytes_up;
    record.unmask = cost::Phase {
        seconds: server,
        ..cost::Phase::default()
    };
    record.server_compute_s = server;
    record.key_holder_bytes += decryption.holder_bytes;
    cur.bytes_down += record.keys.down_bytes;
}

/// An edge's set-up under a hierarchy: its messages count in the round's traffic now, its
/// cost adds to the round's record (summed over edges and edge rounds).
pub(super) fn edge_setup_cost(st: &mut Core, setup: &SecureSetup) -> u64 {
    let Some(c) = &setup.cost else {
        return 0;
    };
    let cur = &mut st.current;
    let up = c.keys.up_bytes + c.shares.up_bytes;
    cur.bytes_up += up;
    cur.bytes_down += c.keys.down_bytes + c.shares.down_bytes;
    cur.secure
        .get_or_insert_with(SecAggCost::default)
        .accumulate(c);
    up
}

/// An edge's unmasking phase under a hierarchy: its messages count in the round's traffic,
/// its cost adds to the round's record; returns (seconds it delays the edge round, bytes up).
pub(super) fn edge_unmask(st: &mut Core, unmasking: &Unmasking) -> (f64, u64) {
    let Some(Protection::SecAggPlus(params)) = st.args.config.secure else {
        return (0.0, 0);
    };
    let fleet = st.args.clients.faults.fleet();
    let survivors: Vec<_> = (unmasking.messages.iter())
        .map(|(c, down, up)| (fleet.profile(*c), *down, *up))
        .collect();
    if survivors.is_empty() {
        return (0.0, 0);
    }
    let (phase, server) = cost::unmask(
        &survivors,
        unmasking.masks,
        elements(st, params.ring),
        &params.compute,
    );
    let cur = &mut st.current;
    cur.bytes_up += phase.up_bytes;
    cur.bytes_down += phase.down_bytes;
    let record = cur.secure.get_or_insert_with(SecAggCost::default);
    record.unmask.add(&phase);
    record.server_compute_s += server;
    record.masks_regenerated += unmasking.masks;
    (phase.seconds, phase.up_bytes)
}
