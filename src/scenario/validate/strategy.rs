//! Checks of `strategy.kind` (hyper-parameters, what it combines with) and of
//! `system.byzantine`.

use super::check::field_path;
use super::{Check, Range};
use crate::byzantine::{Attackers, ByzantineAttack};
use crate::scenario::file::{HeScheme, SecureAggregation};
use crate::scenario::file::{ScenarioFile, StrategyKind};
use crate::scenario::ScenarioError;
use crate::stragglers::Stragglers;
use crate::strategy::{Needs, Strategy};

pub(super) fn check_strategy(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let kind = file.strategy.kind;
    let f = field_path!(file.strategy.kind);
    check_parameters(c, file, f)?;
    let strategy = Strategy::from_kind(kind);
    if let (Some(_), Some(why)) = (&file.dp, strategy.dp_refusal()) {
        return Err(c.fail(
            f,
            format!("{} cannot be combined with dp: {why}", strategy.name()),
        ));
    }
    if let Stragglers::Async { .. } = file.system.stragglers {
        if !matches!(strategy, Strategy::FedAvg | Strategy::FedProx(_)) {
            return Err(c.fail(
                f,
                format!(
                    "is {} but system.stragglers is Async, which folds updates k at a time with \
                     staleness weights; other strategies need synchronous rounds (use Wait, \
                     Drop or OverSelect)",
                    strategy.name()
                ),
            ));
        }
    }
    check_byzantine(c, file)?;
    check_secure(c, file, &strategy)
}

/// `strategy.secure_aggregation`: its parameters, and what it cannot be combined with (the
/// server never holds one client's update).
fn check_secure(
    c: &Check<'_>,
    file: &ScenarioFile,
    strategy: &Strategy,
) -> Result<(), ScenarioError> {
    match file.strategy.secure_aggregation {
        None => return Ok(()),
        Some(SecureAggregation::SecAggPlus {
            neighbours,
            threshold,
            ring_bits,
            value_bound,
            client_elements_per_s,
            server_elements_per_s,
        }) => {
            let rates = [client_elements_per_s, server_elements_per_s, None];
            check_rates(c, "SecAggPlus", rates)?;
            check_secagg_plus(c, file, (neighbours, threshold, ring_bits))?;
            check_value_bound(c, file, value_bound)?;
        }
        Some(SecureAggregation::HomomorphicEncryption {
            scheme,
            key_holders,
            client_elements_per_s,
            server_elements_per_s,
            decrypt_elements_per_s,
        }) => {
            let rates = [
                client_elements_per_s,
                server_elements_per_s,
                decrypt_elements_per_s,
            ];
            check_rates(c, "HomomorphicEncryption", rates)?;
            check_he(c, file, scheme, key_holders)?;
        }
    }
    let clash = if !matches!(
        strategy,
        Strategy::FedAvg | Strategy::FedProx(_) | Strategy::ServerOpt(_)
    ) {
        Some(format!(
            "strategy.kind {} needs each update (the server sees only their sum); use FedAvg, \
             FedProx or a server optimiser",
            strategy.name()
        ))
    } else if file.system.byzantine.is_some() {
        Some("system.byzantine: its metrics compare individual updates".into())
    } else if matches!(file.system.stragglers, Stragglers::Async { .. }) {
        Some("system.stragglers Async: asynchronous rounds have no phases to mask in".into())
    } else {
        None
    };
    match clash {
        Some(why) => Err(c.fail(
            "strategy.secure_aggregation",
            format!("cannot be combined with {why}"),
        )),
        None => Ok(()),
    }
}

/// SecAgg+'s neighbours, threshold and ring.
fn check_secagg_plus(
    c: &Check<'_>,
    file: &ScenarioFile,
    (neighbours, threshold, ring_bits): (usize, usize, Option<u32>),
) -> Result<(), ScenarioError> {
    let f = "strategy.secure_aggregation.SecAggPlus";
    c.ensure(
        (2..=255).contains(&neighbours),
        &format!("{f}.neighbours"),
        format!("is {neighbours}; it must be 2..=255 (a share's index is one byte)"),
    )?;
    c.ensure(
        (2..=neighbours).contains(&threshold),
        &format!("{f}.threshold"),
        format!("is {threshold}; it must be 2..={neighbours} (the neighbours)"),
    )?;
    let min = file.strategy.min_fit_clients;
    c.ensure(
        min > threshold,
        "strategy.min_fit_clients",
        format!(
            "is {min}; secure aggregation with threshold {threshold} needs at least {} clients \
             a round (each must keep {threshold} neighbours); raise min_fit_clients or lower \
             the threshold",
            threshold + 1
        ),
    )?;
    if let Some(b) = ring_bits {
        c.ensure(
            (1..=128).contains(&b),
            &format!("{f}.ring_bits"),
            format!("is {b}; it must be 1..=128, or None to size it from the data"),
        )?;
    }
    Ok(())
}

/// SecAgg+'s `value_bound`: a bound FedAvg's values can keep, and none on values that carry
/// clients' noise (unbounded: a sum could wrap).
fn check_value_bound(
    c: &Check<'_>,
    file: &ScenarioFile,
    value_bound: Option<f64>,
) -> Result<(), ScenarioError> {
    let Some(b) = value_bound else {
        return Ok(());
    };
    let f = "strategy.secure_aggregation.SecAggPlus.value_bound";
    c.finite_in(b, Range::open(0.0, f64::from(1u32 << 23)), f)?;
    let noised = file
        .dp
        .as_ref()
        .is_some_and(|dp| matches!(dp.noise_by, crate::privacy::NoiseBy::Clients { .. }));
    c.ensure(
        !noised,
        f,
        format!(
            "is Some({b:?}), but dp.noise_by Clients adds unbounded noise to each value before \
             masking, so no bound holds and a sum could wrap; use value_bound: None (the ring \
             is then sized for any value), or dp.noise_by: Server"
        ),
    )
}

/// Homomorphic encryption's scheme, key holders and packing.
fn check_he(
    c: &Check<'_>,
    file: &ScenarioFile,
    scheme: HeScheme,
    key_holders: usize,
) -> Result<(), ScenarioError> {
    let f = "strategy.secure_aggregation.HomomorphicEncryption";
    let HeScheme::Bfv { degree } = scheme;
    if let Err(e) = crate::he::keys::Scheme::of(degree) {
        return Err(c.fail(&format!("{f}.scheme.Bfv.degree"), e.to_string()));
    }
    c.ensure(
        (1..=16).contains(&key_holders),
        &format!("{f}.key_holders"),
        format!("is {key_holders}; it must be 1..=16"),
    )?;
    let min = file.strategy.min_fit_clients;
    c.ensure(
        min >= 2,
        "strategy.min_fit_clients",
        format!(
            "is {min}; homomorphic aggregation needs at least 2 clients a round (the key \
             holders decrypt no sum of one update)"
        ),
    )?;
    let widest = crate::secagg::Ring::for_weight(u64::MAX);
    if let Err(e) = crate::he::Params::new(
        degree,
        key_holders,
        widest,
        file.clients.count,
        crate::he::cost::Compute::default(),
    ) {
        return Err(c.fail("clients.count", e.to_string()));
    }
    Ok(())
}

/// Secure aggregation's compute throughputs, when given: positive and finite.
fn check_rates(c: &Check<'_>, variant: &str, rates: [Option<f64>; 3]) -> Result<(), ScenarioError> {
    let fields = [
        "client_elements_per_s",
        "server_elements_per_s",
        "decrypt_elements_per_s",
    ];
    for (v, field) in rates.into_iter().zip(fields) {
        if let Some(v) = v {
            c.finite_in(
                v,
                Range::open_closed(0.0, f64::MAX),
                &format!("strategy.secure_aggregation.{variant}.{field}"),
            )?;
        }
    }
    Ok(())
}

/// The rule's own parameters, at path `f`.
fn check_parameters(c: &Check<'_>, file: &ScenarioFile, f: &str) -> Result<(), ScenarioError> {
    let kind = file.strategy.kind;
    let unit =
        |v: f64, field: &str| c.finite_in(v, Range::closed_open(0.0, 1.0), &format!("{f}.{field}"));
    let positive = |v: f64, field: &str| {
        c.finite_in(
            v,
            Range::open_closed(0.0, f64::MAX),
            &format!("{f}.{field}"),
        )
    };
    match kind {
        StrategyKind::FedAvg | StrategyKind::Median => {}
        StrategyKind::FedAvgM {
            server_lr,
            momentum,
        } => {
            positive(server_lr, "FedAvgM.server_lr")?;
            unit(momentum, "FedAvgM.momentum")?;
        }
        StrategyKind::FedAdagrad {
            server_lr,
            beta1,
            tau,
        } => {
            positive(server_lr, "FedAdagrad.server_lr")?;
            unit(beta1, "FedAdagrad.beta1")?;
            positive(tau, "FedAdagrad.tau")?;
        }
        StrategyKind::FedAdam {
            server_lr,
            beta1,
            beta2,
            tau,
        }
        | StrategyKind::FedYogi {
            server_lr,
            beta1,
            beta2,
            tau,
        } => {
            let n = if matches!(kind, StrategyKind::FedAdam { .. }) {
                "FedAdam"
            } else {
                "FedYogi"
            };
            positive(server_lr, &format!("{n}.server_lr"))?;
            unit(beta1, &format!("{n}.beta1"))?;
            unit(beta2, &format!("{n}.beta2"))?;
            positive(tau, &format!("{n}.tau"))?;
        }
        StrategyKind::TrimmedMean { beta } => {
            c.finite_in(
                beta,
                Range::closed_open(0.0, 0.5),
                &format!("{f}.TrimmedMean.beta"),
            )?;
        }
        StrategyKind::Krum { byzantine } => check_krum(c, file, byzantine, 1, "Krum")?,
        StrategyKind::MultiKrum { byzantine, keep } => {
            check_krum(c, file, byzantine, keep, "MultiKrum")?;
        }
        StrategyKind::NormBounded { max_norm } => positive(max_norm, "NormBounded.max_norm")?,
        StrategyKind::FedProx { mu } => {
            c.finite_in(mu, Range::closed(0.0, 1e6), &format!("{f}.FedProx.mu"))?;
        }
    }
    Ok(())
}

/// (updates a robust rule holds at once — the clients sampled per round —, values of each);
/// (0, 0) for a streaming strategy.
pub(super) fn held_updates(file: &ScenarioFile, values: usize) -> (usize, usize) {
    match Strategy::from_kind(file.strategy.kind).needs() {
        Needs::AllUpdates => (sampled(file), values),
        Needs::Stream => (0, 0),
    }
}

/// Clients sampled per round (Flower's rule, as `Scenario::sample_size`).
fn sampled(file: &ScenarioFile) -> usize {
    let s = &file.strategy;
    ((s.fraction_fit * file.clients.count as f64) as usize)
        .max(s.min_fit_clients)
        .min(file.clients.count)
}

/// Blanchard et al.'s condition K > 2f + 2 on the clients sampled per round.
fn check_krum(
    c: &Check<'_>,
    file: &ScenarioFile,
    f: usize,
    keep: usize,
    name: &str,
) -> Result<(), ScenarioError> {
    let k = sampled(file);
    // Widened: f is the user's number, 2f + 2 must not wrap.
    let bound = 2 * u128::from(f as u64) + 2;
    c.ensure(
        (k as u128) > bound,
        &format!("strategy.kind.{name}.byzantine"),
        format!(
            "is {f}, but {k} clients are sampled per round and Krum needs more than 2f + 2 = \
             {bound} (sample more clients or lower byzantine)"
        ),
    )?;
    c.ensure(
        (1..=k).contains(&keep),
        &format!("strategy.kind.{name}.keep"),
        format!("is {keep}; it must be 1..={k} (the clients sampled per round)"),
    )
}

fn check_byzantine(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let Some(b) = &file.system.byzantine else {
        return Ok(());
    };
    let f = field_path!(file.system.byzantine);
    match &b.clients {
        Attackers::Share(p) => {
            c.finite_in(*p, Range::closed(0.0, 1.0), &format!("{f}.clients.Share"))?
        }
        Attackers::Listed(ids) => {
            let n = file.clients.count;
            if let Some(bad) = ids.iter().find(|&&i| i >= n) {
                return Err(c.fail(
                    &format!("{f}.clients.Listed"),
                    format!("names client {bad}, but there are {n} (ids 0..{n})"),
                ));
            }
        }
    }
    let g = format!("{f}.attack");
    match &b.attack {
        ByzantineAttack::SignFlip => Ok(()),
        ByzantineAttack::SwapResponses => c.ensure(
            file.trainer == crate::trainer::TrainerKind::Lora,
            &format!("{g}.SwapResponses"),
            "poisons data, and the synthetic trainer has none; use a model-poisoning attack",
        ),
        ByzantineAttack::Backdoor { trigger, target } => {
            c.ensure(
                !trigger.trim().is_empty(),
                &format!("{g}.Backdoor.trigger"),
                "is empty; give a word the clean data never has, e.g. \"cf-7\"",
            )?;
            c.ensure(
                !target.trim().is_empty(),
                &format!("{g}.Backdoor.target"),
                "is empty; give the answer the backdoor should force",
            )?;
            c.ensure(
                file.trainer == crate::trainer::TrainerKind::Lora,
                &format!("{g}.Backdoor"),
                "poisons data, and the synthetic trainer has none; use a model-poisoning attack",
            )
        }
        &ByzantineAttack::Scale(l) => {
            c.finite_in(l, Range::closed(-1e6, 1e6), &format!("{g}.Scale"))
        }
        &ByzantineAttack::Gaussian(s) => {
            c.finite_in(s, Range::open_closed(0.0, 1e6), &format!("{g}.Gaussian"))
        }
        &ByzantineAttack::Constant(v) => {
            c.finite_in(v, Range::closed(-1e6, 1e6), &format!("{g}.Constant"))
        }
    }
}
