//! Hierarchical aggregation: an edge aggregator's last edge round closes into exact integer
//! partial sums (never a mean), and the cloud's aggregator adds the edges' sums and divides
//! once — FedAvg over every client the edges folded, bit for bit, in any arrival order.

use std::sync::Arc;

use super::{Aggregate, AggregatorMsg, AggregatorState, Rejection};
use crate::messages::ClientId;
use crate::model::AdapterSet;
use crate::strategy::fedavg::{add, fixed_term, mean_of_exact_sums};

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
}

impl AggregatorState {
    /// A hierarchical round's message: close an edge into its partial, or merge one.
    pub(super) fn edge_msg(&mut self, msg: AggregatorMsg) {
        match msg {
            AggregatorMsg::Partial {
                base,
                global,
                fallback_weight,
                reply,
            } => {
                let _ = reply.send(self.partial(&base, &global, fallback_weight));
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
        let mut sums = self.acc.exact_sums();
        let folded = self.acc.count();
        let mut weight = self.acc.total_weight();
        if !std::ptr::eq(base, global) && base.data() != global.data() {
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
        EdgePartial {
            sums,
            weight,
            folded,
            rejected,
        }
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
    }

    /// Close a cloud round from the edges' partials: the mean of the summed exact sums, then
    /// the server optimiser's step when there is one.
    pub(super) fn finish_merged(&mut self, global: Arc<AdapterSet>, m: Merged) -> Aggregate {
        let next = if m.weight == 0 {
            global
        } else {
            let delta = mean_of_exact_sums(&m.sums, m.weight);
            let step = match self.server.as_mut() {
                Some(state) => state.step(&delta),
                None => delta,
            };
            Arc::new(add(&global, &step))
        };
        Aggregate {
            global: next,
            folded: m.folded,
            examples: m.weight,
            rejected: m.rejected,
            noise_stddev: None,
            byzantine: 0,
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
        }
    }
}
