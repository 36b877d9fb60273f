//! FedAvg (McMahan et al. 2017) folded in as updates arrive, in O(model) memory.
//!
//! The running sum is kept in fixed point (`i128`, 2⁻⁴⁰ resolution): integer addition is
//! associative, so the average is bit-identical whatever order updates arrive in — which is
//! what makes runs deterministic across slot counts without holding K updates to sort them.
//! Each term `x·n` is exact in f64 (24-bit mantissa × a weight below 2²⁹) before it is rounded
//! to the grid, so the only error is that rounding (≤ 2⁻⁴¹ per term).

use crate::model::AdapterSet;

const SCALE: f64 = (1u64 << 40) as f64;

/// Streaming, order-independent, example-weighted average of adapter updates.
#[derive(Debug, Clone)]
pub struct FedAvgAccumulator {
    sum: Vec<i128>,
    total_weight: u64,
    count: usize,
}

impl FedAvgAccumulator {
    /// An empty accumulator for updates of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0; len],
            total_weight: 0,
            count: 0,
        }
    }

    /// Add `update` with weight `num_examples`.
    ///
    /// # Panics
    /// When the update's length differs from the accumulator's (a broken invariant).
    pub fn fold(&mut self, update: &[f32], num_examples: u64) {
        assert_eq!(update.len(), self.sum.len(), "update length mismatch");
        let w = num_examples as f64 * SCALE;
        for (acc, &x) in self.sum.iter_mut().zip(update) {
            *acc += (x as f64 * w).round() as i128;
        }
        self.total_weight += num_examples;
        self.count += 1;
    }

    /// Updates folded so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sum of weights (examples) folded so far.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The weighted mean update, or `None` when nothing was folded.
    pub fn mean(&self) -> Option<Vec<f32>> {
        if self.total_weight == 0 {
            return None;
        }
        let denom = SCALE * self.total_weight as f64;
        Some(
            self.sum
                .iter()
                .map(|&s| (s as f64 / denom) as f32)
                .collect(),
        )
    }

    /// `global + mean update` (the new global adapter); `global` unchanged if nothing arrived.
    pub fn apply_to(&self, global: &AdapterSet) -> AdapterSet {
        let mut next = global.clone();
        if let Some(mean) = self.mean() {
            for (g, m) in next.data_mut().iter_mut().zip(mean) {
                *g += m;
            }
        }
        next
    }
}
