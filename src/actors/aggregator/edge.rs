//! Hierarchical aggregation: an edge aggregator's last edge round closes into exact integer
//! partial sums (never a mean), and the cloud's aggregator adds the edges' sums and divides
//! once — FedAvg over every client the edges folded, bit for bit, in any arrival order.

use std::sync::Arc;

use super::{Aggregate, AggregatorMsg, AggregatorState, Rejection, Withheld};
use crate::messages::ClientId;
use crate::model::AdapterSet;
use crate::strategy::fedavg::{
    add, fixed_noise, fixed_term, mean_of_exact_sums, noised_mean_of_exact_sums,
};
use crate::strategy::Strategy;

/// What an edge forwards to the cloud after its last edge round.
#[derive(Debug)]
pub struct EdgePartial {
    /// Σ trunc(x·2⁴⁰)·w over the last edge round's updates, plus W·trunc(d·2⁴⁰) for the
    /// edge's drift d = (its model before that round − the cloud's global) when E > 1.
    pub sums: Vec<i128>,
    /// W: the weight behind the sums (the last edge round's examples).
    pub weight: u64,
    /// Client updates folded in the last edge round.
    pub folded: usize,
    /// Updates the edge refused, with why.
    pub rejected: Vec<(ClientId, Rejection)>,
    /// Variance of the DP noise the edge added to its sums (0 without noise at the edges).
    pub noise_variance: f64,
    /// Secure aggregation at the edge: its last edge round's unmasking phase.
    pub unmasking: Option<crate::secagg::cost::Unmasking>,
    /// Why the edge's last edge round released nothing (`secagg_threshold`, …).
    pub withheld: Option<Withheld>,
    /// Byzantine updates among those of the last edge round (the simulator's view).
    pub byzantine: usize,
}

impl EdgePartial {
    /// Bytes each sum takes on the WAN: the fewest whole bytes that hold every sum in two's
    /// complement (1..=16; LoRA updates of a few hundred examples take 6–7).
    pub fn value_bytes(&self) -> u64 {
        let widest = self
            .sums
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        let bits = 129 - widest.leading_zeros(); // magnitude + sign
        u64::from(bits.div_ceil(8).clamp(1, 16))
    }

    /// Bytes on the WAN: a width byte, the weight (8 bytes), and every sum at that width.
    pub fn wire_bytes(&self) -> u64 {
        1 + 8 + self.value_bytes() * self.sums.len() as u64
    }
}

/// The cloud's running sum of the edges' partials in a round.
#[derive(Debug, Default)]
pub(super) struct Merged {
    sums: Vec<i128>,
    weight: u64,
    folded: usize,
    rejected: Vec<(ClientId, Rejection)>,
    noise_variance: f64,
    byzantine: usize,
}

impl AggregatorState {
    /// A hierarchical round's message: close an edge into its partial, or merge one.
    pub(super) async fn edge_msg(&mut self, msg: AggregatorMsg) {
        match msg {
            AggregatorMsg::Partial {
                base,
                global,
                fallback_weight,
                reply,
            } => {
                let robust = matches!(self.strategy, Strategy::Robust(_));
                let partial = match (self.secure.take(), robust) {
                    (Some(round), _) => {
                        self.secure_partial(round, &base, &global, fallback_weight)
                            .await
                    }
                    (None, true) => self.robust_partial(base, &global, fallback_weight),
                    (None, false) => self.partial(&base, &global, fallback_weight),
                };
                let _ = reply.send(partial);
            }
            AggregatorMsg::Merge(partial) => self.merge(partial),
            _ => {}
        }
    }

    /// Close an edge's last edge round: its exact sums, with the drift of its earlier edge
    /// rounds (`base` − `global`) added at the round's weight — or at `fallback_weight` when no
    /// update arrived in it, so the edge's earlier progress is not lost.
    pub(super) fn partial(
        &mut self,
        base: &AdapterSet,
        global: &AdapterSet,
        fallback_weight: u64,
    ) -> EdgePartial {
        let mut rejected: Vec<(ClientId, Rejection)> = std::mem::take(&mut self.rejected);
        for (client, e) in self.acc.take_rejected() {
            rejected.push((client as ClientId, e.into()));
        }
        let released = (
            self.acc.exact_sums(),
            self.acc.count(),
            self.acc.total_weight(),
        );
        self.complete_partial(released, rejected, (base, global, fallback_weight))
    }

    /// Secure aggregation at the edge: the survivors' unmasked exact sums, completed as
    /// [`AggregatorState::partial`]'s; a round that cannot be unmasked forwards nothing.
    async fn secure_partial(
        &mut self,
        mut round: super::secure::SecureRound,
        base: &AdapterSet,
        global: &AdapterSet,
        fallback_weight: u64,
    ) -> EdgePartial {
        let (released, unmasking) = round.finish().await;
        self.secure_spare = round.into_spare();
        let rejected = std::mem::take(&mut self.rejected);
        let mut p = match released {
            Ok(r) => self.complete_partial(r, rejected, (base, global, fallback_weight)),
            Err(e) => {
                let mut p = EdgePartial::empty(global.data().len(), rejected);
                p.withheld = Some(e.into());
                p
            }
        };
        p.unmasking = Some(unmasking);
        p
    }

    /// The partial from an edge round's exact sums, updates and weight: the drift added,
    /// then the edge's DP noise when it adds it.
    fn complete_partial(
        &self,
        (mut sums, folded, mut weight): super::secure::Released,
        rejected: Vec<(ClientId, Rejection)>,
        (base, global, fallback_weight): (&AdapterSet, &AdapterSet, u64),
    ) -> EdgePartial {
        if base.data() != global.data() {
            let w = if weight == 0 { fallback_weight } else { weight };
            let drift = base.data().iter().zip(global.data()).map(|(b, g)| b - g);
            for (i, (s, d)) in sums.iter_mut().zip(drift).enumerate() {
                match fixed_term(i, d, w) {
                    Ok(t) => *s += t,
                    // A drift FedAvg would refuse: the edge's own updates already were.
                    Err(_) => return EdgePartial::empty(sums.len(), rejected),
                }
            }
            weight = w;
        }
        let noise_variance = self.noise_partial(&mut sums);
        EdgePartial {
            sums,
            weight,
            folded,
            rejected,
            noise_variance,
            unmasking: None,
            withheld: None,
            byzantine: self.byzantine,
        }
    }

    /// A robust rule at the edge: its aggregate over the last edge round's updates (robust
    /// rules are unweighted), forwarded with the edge's drift as the exact terms of
    /// (edge model − global) at weight = the updates aggregated — the cloud then averages the
    /// edges' robust aggregates weighted by their update counts.
    fn robust_partial(
        &mut self,
        base: Arc<AdapterSet>,
        global: &AdapterSet,
        fallback_weight: u64,
    ) -> EdgePartial {
        let agg = self.finish(base);
        let w = if agg.folded == 0 {
            fallback_weight
        } else {
            agg.folded as u64
        };
        let total = agg
            .global
            .data()
            .iter()
            .zip(global.data())
            .map(|(e, g)| e - g);
        let mut sums = Vec::with_capacity(global.data().len());
        for (i, d) in total.enumerate() {
            match fixed_term(i, d, w) {
                Ok(t) => sums.push(t),
                Err(_) => return EdgePartial::empty(global.data().len(), agg.rejected),
            }
        }
        EdgePartial {
            sums,
            weight: if agg.folded == 0 && agg.global.data() == global.data() {
                0
            } else {
                w
            },
            folded: agg.folded,
            rejected: agg.rejected,
            noise_variance: 0.0,
            unmasking: None,
            withheld: None,
            byzantine: agg.byzantine,
        }
    }

    /// DP noise at the edge: N(0, (z·C)²) per value added to the exact sums (on the fold's
    /// grid); returns its variance (0 when the edge adds none).
    fn noise_partial(&self, sums: &mut [i128]) -> f64 {
        let Some(dp) = self.dp.filter(|d| d.sum_stddev > 0.0) else {
            return 0.0;
        };
        let mut noise = dp.noise.generator(dp.seed, self.round, 0, dp.sum_stddev);
        for s in sums.iter_mut() {
            *s += fixed_noise(noise.sample());
        }
        dp.sum_stddev * dp.sum_stddev
    }

    /// Add an edge's partial to the cloud round's sum (exact, so in any order).
    pub(super) fn merge(&mut self, p: EdgePartial) {
        let m = self.merged.get_or_insert_with(Merged::default);
        if m.sums.is_empty() {
            m.sums = vec![0; p.sums.len()];
        }
        for (a, b) in m.sums.iter_mut().zip(&p.sums) {
            *a += b;
        }
        m.weight += p.weight;
        m.folded += p.folded;
        m.rejected.extend(p.rejected);
        m.noise_variance += p.noise_variance;
        m.byzantine += p.byzantine;
    }

    /// Close a cloud round from the edges' partials: the mean of the summed exact sums —
    /// noised here under DP with the noise at the root, already noised by the edges otherwise
    /// — then the server optimiser's step when there is one.
    pub(super) fn finish_merged(&mut self, global: Arc<AdapterSet>, m: Merged) -> Aggregate {
        let (delta, noise_stddev) = match self.dp {
            None if m.weight == 0 => (None, None),
            None => (Some(mean_of_exact_sums(&m.sums, m.weight)), None),
            Some(dp) => {
                let denom = dp.denominator.unwrap_or(m.weight as f64);
                if denom <= 0.0 {
                    (None, None)
                } else {
                    let mut noise = dp.noise.generator(dp.seed, self.round, 0, dp.sum_stddev);
                    let mean = noised_mean_of_exact_sums(&m.sums, denom, &mut noise);
                    let variance = m.noise_variance + dp.sum_stddev * dp.sum_stddev;
                    (Some(mean), Some(variance.sqrt() / denom))
                }
            }
        };
        let next = match delta {
            None => global,
            Some(delta) => {
                let step = match self.server.as_mut() {
                    Some(state) => state.step(&delta),
                    None => delta,
                };
                Arc::new(add(&global, &step))
            }
        };
        Aggregate {
            global: next,
            folded: m.folded,
            examples: m.weight,
            rejected: m.rejected,
            noise_stddev,
            byzantine: m.byzantine,
            withheld: None,
            unmasking: None,
            decryption: None,
            server_lr: self.server_lr(),
            deviation: None,
        }
    }
}

impl EdgePartial {
    fn empty(len: usize, rejected: Vec<(ClientId, Rejection)>) -> Self {
        EdgePartial {
            sums: vec![0; len],
            weight: 0,
            folded: 0,
            rejected,
            noise_variance: 0.0,
            unmasking: None,
            withheld: None,
            byzantine: 0,
        }
    }
}
