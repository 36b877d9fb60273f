//! FedAvg (McMahan et al. 2017) folded in as updates arrive, in O(model) memory.
//!
//! The running sum is kept in fixed point: each value is truncated to a 2⁻⁴⁰ grid as an `i64`
//! (exact for |x| ≥ 2⁻¹⁶, error < 2⁻⁴⁰ below), multiplied by its integer weight and added in
//! `i128`. Integer addition is associative, so the average is bit-identical whatever order
//! updates arrive in — which is what makes runs deterministic across slot counts without
//! holding K updates to sort them. Values must be finite with |x| < 2²³; an update outside
//! that is rejected whole (it would be a diverged client anyway).

use crate::model::AdapterSet;
use crate::privacy::noise::GaussianNoise;

const SCALE: f64 = (1u64 << 40) as f64;
const LIMIT: f32 = (1u32 << 23) as f32;

/// An update that cannot be averaged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("update value {value} at index {index} is not finite or exceeds 2^23 in magnitude")]
pub struct FoldError {
    /// Position in the flat adapter.
    pub index: usize,
    /// The value.
    pub value: f32,
}

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
    /// # Errors
    /// [`FoldError`] when a value is not finite or |x| ≥ 2²³; nothing is folded then.
    ///
    /// # Panics
    /// When the update's length differs from the accumulator's (a broken invariant).
    pub fn fold(&mut self, update: &[f32], num_examples: u64) -> Result<(), FoldError> {
        assert_eq!(update.len(), self.sum.len(), "update length mismatch");
        if let Some(i) = update
            .iter()
            .position(|x| !x.is_finite() || x.abs() >= LIMIT)
        {
            return Err(FoldError {
                index: i,
                value: update[i],
            });
        }
        let w = num_examples as i128;
        for (acc, &x) in self.sum.iter_mut().zip(update) {
            *acc += ((x as f64 * SCALE) as i64) as i128 * w;
        }
        self.total_weight += num_examples;
        self.count += 1;
        Ok(())
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
        match self.mean() {
            Some(mean) => add(global, &mean),
            None => global.clone(),
        }
    }

    /// `(Σ updates + N(0, std²) per coordinate) / denominator`, computed in f64: the DP-FedAvg
    /// release (fold with weight 1 for a uniform average).
    pub fn noised_mean(&self, denominator: f64, noise: &mut GaussianNoise) -> Vec<f32> {
        self.sum
            .iter()
            .map(|&s| ((s as f64 / SCALE + noise.sample()) / denominator) as f32)
            .collect()
    }
}

/// `global + delta`.
pub fn add(global: &AdapterSet, delta: &[f32]) -> AdapterSet {
    let mut next = global.clone();
    for (g, d) in next.data_mut().iter_mut().zip(delta) {
        *g += d;
    }
    next
}
