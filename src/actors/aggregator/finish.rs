//! Closing a round: the run's strategy over what was folded or collected — the streaming
//! mean (noised under DP, unless the clients noised their updates), a robust rule, or a
//! secure round's unmasked sum — and the rounds that release nothing on purpose.

use std::sync::Arc;

use super::{Aggregate, AggregatorState};
use crate::messages::ClientId;
use crate::model::AdapterSet;
use crate::strategy::fedavg::add;
use crate::strategy::{RobustRule, Strategy};

/// Why a round released nothing on purpose (its `skipped` reason in `rounds.jsonl`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Withheld {
    /// Secure aggregation could not unmask the sum (`secagg_threshold`, …).
    #[error(transparent)]
    SecAgg(#[from] crate::secagg::SecAggError),
    /// The encrypted sum could not be decrypted (`he_too_few`, `he_decrypt`, …).
    #[error(transparent)]
    He(#[from] crate::he::HeError),
    /// Fewer updates than the clients' noise is calibrated for: their sum would carry less
    /// than the configured noise.
    #[error(
        "dp_min_survivors: {survivors} updates, fewer than the {min} the clients' noise is \
         calibrated for (dp.noise_by Clients(min_survivors))"
    )]
    DpMinSurvivors {
        /// Updates in the round.
        survivors: usize,
        /// `min_survivors`.
        min: usize,
    },
}

impl AggregatorState {
    /// Close the round with the run's strategy: the new global adapter and what went into it.
    pub(super) fn finish(&mut self, global: Arc<AdapterSet>) -> Aggregate {
        for (client, e) in self.acc.take_rejected() {
            self.rejected.push((client as ClientId, e.into()));
        }
        let (next, folded, examples, noise_stddev, deviation) = match self.strategy {
            Strategy::Robust(rule) => self.finish_robust(global, rule),
            _ => self.finish_stream(global),
        };
        Aggregate {
            global: next,
            folded,
            examples,
            rejected: std::mem::take(&mut self.rejected),
            noise_stddev,
            byzantine: self.byzantine,
            server_lr: self.server_lr(),
            deviation,
            withheld: self.withheld.take(),
            unmasking: None,
            decryption: None,
        }
    }

    pub(super) fn server_lr(&self) -> Option<f64> {
        match &self.strategy {
            Strategy::ServerOpt(o) => Some(o.server_lr()),
            _ => None,
        }
    }

    /// FedAvg, norm-bounded FedAvg or a server optimiser over the streaming mean (noised
    /// under DP).
    fn finish_stream(&mut self, global: Arc<AdapterSet>) -> Closed {
        let folded = self.acc.count();
        let examples = self.acc.total_weight();
        if folded == 0 && self.dp.is_none() {
            return (global, 0, examples, None, None);
        }
        // The honest-only mean is compared with the exact (un-noised) mean of all updates.
        let honest = self.honest.as_mut().map(|h| h.mean());
        let len = self.acc.len();
        let exact = (self.dp.is_none() || honest.is_some())
            .then(|| self.acc.mean().unwrap_or_else(|| vec![0.0; len]));
        let deviation = honest.map(|h| distance(exact.as_deref().unwrap_or(&[]), h.as_deref()));
        let (delta, noise_stddev) = match self.dp {
            None => (exact.unwrap_or_default(), None),
            Some(dp) => {
                let denom = dp.denominator.unwrap_or(folded as f64);
                if denom <= 0.0 {
                    return (global, folded, examples, None, None);
                }
                if let Some(w) = self.too_few_for_noise(folded) {
                    self.withheld = Some(w);
                    return (global, 0, 0, None, None);
                }
                let mut noise = dp.noise.generator(dp.seed, self.round, 0, dp.sum_stddev);
                let mean = self.acc.noised_mean(denom, &mut noise);
                (mean, Some(dp.released_stddev(folded, denom)))
            }
        };
        let step = match self.server.as_mut() {
            Some(state) => state.step(&delta),
            None => delta,
        };
        (
            Arc::new(add(&global, &step)),
            folded,
            examples,
            noise_stddev,
            deviation,
        )
    }

    /// Under distributed DP, a round of `updates` fewer than the noise is calibrated for.
    pub(super) fn too_few_for_noise(&self, updates: usize) -> Option<Withheld> {
        let (_, min) = self.dp?.client_noise?;
        (updates < min).then_some(Withheld::DpMinSurvivors {
            survivors: updates,
            min,
        })
    }

    /// A robust rule over every update, ordered by client id.
    fn finish_robust(&mut self, global: Arc<AdapterSet>, rule: RobustRule) -> Closed {
        let collected = std::mem::take(&mut self.collected);
        let folded = collected.len();
        let all: Vec<&[f32]> = collected.values().map(|(u, _)| u.as_slice()).collect();
        if all.is_empty() {
            return (global, 0, 0, None, None);
        }
        let delta = match rule.apply(&all) {
            Ok(d) => d,
            Err(e) => {
                // A chosen update that FedAvg would refuse: the round keeps the old global.
                for &c in collected.keys() {
                    self.rejected.push((c, e.clone().into()));
                }
                return (global, 0, 0, None, None);
            }
        };
        let deviation = self.honest.is_some().then(|| {
            let honest: Vec<&[f32]> = collected
                .values()
                .filter(|(_, byz)| !byz)
                .map(|(u, _)| u.as_slice())
                .collect();
            let h = (!honest.is_empty())
                .then(|| rule.apply(&honest).ok())
                .flatten();
            distance(&delta, h.as_deref())
        });
        (
            Arc::new(add(&global, &delta)),
            folded,
            folded as u64,
            None,
            deviation,
        )
    }
}

/// (new global, updates aggregated, weight behind them, DP noise std, deviation).
type Closed = (Arc<AdapterSet>, usize, u64, Option<f64>, Option<f64>);

/// L2 distance between two aggregate updates (to zero when the honest side is empty).
fn distance(a: &[f32], b: Option<&[f32]>) -> f64 {
    match b {
        Some(b) => a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
            .sqrt(),
        None => a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt(),
    }
}
