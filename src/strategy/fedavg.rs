//! FedAvg (McMahan et al. 2017) folded in as updates arrive, in O(model) memory.
//!
//! The running sum is kept in fixed point: each value is truncated to a 2⁻⁴⁰ grid as an `i64`
//! (exact for |x| ≥ 2⁻¹⁶, error < 2⁻⁴⁰ below), multiplied by its integer weight and added in
//! `i128`. Integer addition is associative, so the average is bit-identical whatever order
//! updates arrive in — which is what makes runs deterministic across slot counts without
//! holding K updates to sort them (at most [`BATCH`] are buffered, to fold them in one pass). Values must be finite with |x| < 2²³; an update outside
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
///
/// Updates are buffered up to [`BATCH`] and folded together, tile by tile over the model (so the
/// 16-byte accumulator is read and written once per batch, not once per update) and on all
/// cores. Each element's weighted terms trunc(x·2⁴⁰)·w are integers; within a batch their sum
/// is kept in f64 while Σₖ max|xₖ|·2⁴⁰·wₖ < 2⁵³ (LoRA updates of |x| ≤ 10⁻² with ~100 examples:
/// the common case, vectorised with AVX2 where the CPU has it), in i64 while it is below 2⁶²,
/// else term by term in the `i128` — and added to the `i128` once per batch. Every path is an
/// exact integer sum, so the result is the same bit for bit whatever the batching, the arrival
/// order, the path or the thread count.
#[derive(Debug)]
pub struct FedAvgAccumulator {
    sum: Vec<i128>,
    total_weight: u64,
    count: usize,
    pending: Vec<Pending>,
    /// Buffers of folded updates, reused (fresh 1.8 MB allocations cost page faults).
    spare: Vec<Vec<f32>>,
}

/// An update waiting to be folded.
#[derive(Debug, Clone)]
struct Pending {
    values: Vec<f32>,
    weight: u64,
    /// max |x| of its values.
    max_abs: f32,
}

/// Updates folded together in one pass over the accumulator.
pub const BATCH: usize = 8;
/// Elements per tile (the `i64` partial sums stay in L1).
const TILE: usize = 4096;

/// The pool the folds run on: one thread per core, its own (not the slots', not rayon's global).
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("fold{i}"))
            .build()
            .expect("the fold pool starts")
    })
}

impl Clone for FedAvgAccumulator {
    fn clone(&self) -> Self {
        Self {
            sum: self.sum.clone(),
            total_weight: self.total_weight,
            count: self.count,
            pending: self.pending.clone(),
            spare: Vec::new(),
        }
    }
}

impl FedAvgAccumulator {
    /// An empty accumulator for updates of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0; len],
            total_weight: 0,
            count: 0,
            pending: Vec::with_capacity(BATCH),
            spare: Vec::new(),
        }
    }

    /// Start over (a new round) keeping the allocations: the sum is zeroed, buffers are kept.
    pub fn reset(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.spare.extend(pending.into_iter().map(|p| p.values));
        self.spare.truncate(BATCH);
        self.sum.fill(0);
        self.total_weight = 0;
        self.count = 0;
    }

    /// A buffer of the accumulator's length to parse an update into (recycled when possible;
    /// its contents are unspecified).
    pub fn take_buffer(&mut self) -> Vec<f32> {
        self.spare
            .pop()
            .unwrap_or_else(|| vec![0.0; self.sum.len()])
    }

    /// Add `update` with weight `num_examples` (copied; see [`FedAvgAccumulator::fold_owned`]).
    ///
    /// # Errors
    /// [`FoldError`] when a value is not finite or |x| ≥ 2²³; nothing is folded then.
    ///
    /// # Panics
    /// When the update's length differs from the accumulator's (a broken invariant).
    pub fn fold(&mut self, update: &[f32], num_examples: u64) -> Result<(), FoldError> {
        assert_eq!(update.len(), self.sum.len(), "update length mismatch");
        let mut buf = self.take_buffer();
        buf.copy_from_slice(update);
        self.fold_owned(buf, num_examples)
    }

    /// Add `update` with weight `num_examples`, taking ownership (no copy).
    ///
    /// # Errors
    /// As [`FedAvgAccumulator::fold`].
    ///
    /// # Panics
    /// As [`FedAvgAccumulator::fold`].
    pub fn fold_owned(&mut self, update: Vec<f32>, num_examples: u64) -> Result<(), FoldError> {
        assert_eq!(update.len(), self.sum.len(), "update length mismatch");
        // The largest |x| by its bit pattern (sign cleared): for floats, bit order is value
        // order, NaN and infinity sort above every finite value, and an integer max vectorises.
        let bits = max_abs_bits(&update);
        let max_abs = f32::from_bits(bits);
        if bits >= LIMIT.to_bits() {
            let index = update
                .iter()
                .position(|x| x.is_nan() || x.abs() >= LIMIT)
                .expect("found above");
            let value = update[index];
            self.spare.push(update);
            return Err(FoldError { index, value });
        }
        self.total_weight += num_examples;
        self.count += 1;
        self.pending.push(Pending {
            values: update,
            weight: num_examples,
            max_abs,
        });
        if self.pending.len() == BATCH {
            self.flush();
        }
        Ok(())
    }

    /// Fold the buffered updates into the sum.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        // How wide must each element's partial sum be to stay exact?
        let bound: f64 = batch
            .iter()
            .map(|p| (p.max_abs as f64 * SCALE).ceil() * p.weight as f64)
            .sum();
        let path = if bound < (1u64 << 53) as f64 {
            Path::F64
        } else if bound < (1u64 << 62) as f64 {
            Path::I64
        } else {
            Path::I128
        };
        let sum = &mut self.sum;
        pool().install(|| {
            use rayon::prelude::*;
            sum.par_chunks_mut(TILE)
                .enumerate()
                .for_each(|(t, acc)| fold_tile(path, acc, &batch, t * TILE));
        });
        self.spare.extend(batch.into_iter().map(|p| p.values));
        self.spare.truncate(BATCH);
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
    pub fn mean(&mut self) -> Option<Vec<f32>> {
        if self.total_weight == 0 {
            return None;
        }
        self.flush();
        let denom = SCALE * self.total_weight as f64;
        Some(
            self.sum
                .iter()
                .map(|&s| (s as f64 / denom) as f32)
                .collect(),
        )
    }

    /// `global + mean update` (the new global adapter); `global` unchanged if nothing arrived.
    pub fn apply_to(&mut self, global: &AdapterSet) -> AdapterSet {
        match self.mean() {
            Some(mean) => add(global, &mean),
            None => global.clone(),
        }
    }

    /// `(Σ updates + N(0, std²) per coordinate) / denominator`, computed in f64: the DP-FedAvg
    /// release (fold with weight 1 for a uniform average).
    pub fn noised_mean(&mut self, denominator: f64, noise: &mut GaussianNoise) -> Vec<f32> {
        self.flush();
        self.sum
            .iter()
            .map(|&s| ((s as f64 / SCALE + noise.sample()) / denominator) as f32)
            .collect()
    }
}

/// The largest `bits & 0x7fffffff` of `xs` (AVX2 where the CPU has it).
fn max_abs_bits(xs: &[f32]) -> u32 {
    #[inline(always)]
    fn scan(xs: &[f32]) -> u32 {
        xs.iter()
            .map(|x| (x.to_bits() & 0x7fff_ffff) as i32)
            .max()
            .unwrap_or(0) as u32
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        unsafe fn scan_avx2(xs: &[f32]) -> u32 {
            scan(xs)
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { scan_avx2(xs) };
        }
    }
    scan(xs)
}

/// How a batch's partial sums are kept: every term trunc(x·2⁴⁰)·w is an integer, and a sum
/// of integers is exact in a type while its magnitude bound fits (2⁵³ for f64, 2⁶³ for i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// f64 partial sums (SIMD on any x86-64 with AVX2; the common case).
    F64,
    /// i64 partial sums.
    I64,
    /// Every term straight into the i128 (huge values or weights).
    I128,
}

fn fold_tile(path: Path, acc: &mut [i128], batch: &[Pending], lo: usize) {
    match path {
        Path::F64 => {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                unsafe { fold_tile_f64_avx2(acc, batch, lo) };
                return;
            }
            fold_tile_f64(acc, batch, lo);
        }
        Path::I64 => fold_tile_i64(acc, batch, lo),
        Path::I128 => fold_tile_i128(acc, batch, lo),
    }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fold_tile_f64_avx2(acc: &mut [i128], batch: &[Pending], lo: usize) {
    fold_tile_f64(acc, batch, lo);
}

/// One tile with f64 partial sums: trunc(x·2⁴⁰)·w is an integer and the batch's bound keeps
/// every partial sum below 2⁵³, so each addition is exact.
#[inline(always)]
fn fold_tile_f64(acc: &mut [i128], batch: &[Pending], lo: usize) {
    let n = acc.len();
    let mut part = [0f64; TILE];
    let part = &mut part[..n];
    for p in batch {
        let w = p.weight as f64;
        for (s, &x) in part.iter_mut().zip(&p.values[lo..lo + n]) {
            *s += (x as f64 * SCALE).trunc() * w;
        }
    }
    for (a, &s) in acc.iter_mut().zip(part.iter()) {
        *a += s as i64 as i128;
    }
}

/// Fixed-point value of `x` on the 2⁻⁴⁰ grid (truncated toward zero).
#[inline(always)]
fn fixed(x: f32) -> i64 {
    // SAFETY: |x| < 2²³ is checked when the update is folded, so |x·2⁴⁰| < 2⁶³ and the
    // value is finite: the conversion cannot overflow.
    unsafe { (x as f64 * SCALE).to_int_unchecked::<i64>() }
}

/// One tile with i64 partial sums (the batch's bound is below 2⁶²).
fn fold_tile_i64(acc: &mut [i128], batch: &[Pending], lo: usize) {
    let n = acc.len();
    let mut part = [0i64; TILE];
    let part = &mut part[..n];
    for p in batch {
        let w = p.weight as i64;
        for (s, &x) in part.iter_mut().zip(&p.values[lo..lo + n]) {
            *s += fixed(x) * w;
        }
    }
    for (a, &s) in acc.iter_mut().zip(part.iter()) {
        *a += s as i128;
    }
}

/// One tile, every term added to the `i128` (huge values or weights).
fn fold_tile_i128(acc: &mut [i128], batch: &[Pending], lo: usize) {
    let n = acc.len();
    for p in batch {
        let w = p.weight as i128;
        for (a, &x) in acc.iter_mut().zip(&p.values[lo..lo + n]) {
            *a += fixed(x) as i128 * w;
        }
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
