//! FedAvg (McMahan et al. 2017) folded in as updates arrive, in O(model) memory.
//!
//! The running sum is kept in fixed point: each value is truncated to a 2⁻⁴⁰ grid (exact for
//! |x| ≥ 2⁻¹⁶, error < 2⁻⁴⁰ below), multiplied by its integer weight and summed exactly.
//! Integer addition is associative, so the average is bit-identical whatever order updates
//! arrive in — which is what makes runs deterministic across slot counts without holding K
//! updates to sort them (at most [`BATCH`] are buffered, to fold them in one pass). Values must
//! be finite with |x| < 2²³; an update outside that is rejected whole (it would be a diverged
//! client anyway). The kernels are in [`super::fold`].

use std::sync::Arc;

use super::batch::{self, Sums, Update};
use super::fold::{self, Tile, LIMIT, SCALE};
use crate::model::AdapterSet;
use crate::privacy::noise::GaussianNoise;

/// An update that cannot be averaged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("update value {value} at index {index} is not finite or exceeds 2^23 in magnitude")]
pub struct FoldError {
    /// Position in the flat adapter.
    pub index: usize,
    /// The value.
    pub value: f32,
}

/// The integer FedAvg folds for value `x` of an update of weight `w`: trunc(x·2⁴⁰)·w — what
/// a protocol that sums in a ring (secure aggregation) must sum to release FedAvg's mean.
///
/// # Errors
/// `x` not finite, or |x| ≥ 2²³ (FedAvg rejects such an update whole).
pub fn fixed_term(index: usize, x: f32, w: u64) -> Result<i128, FoldError> {
    if !(x.is_finite() && x.abs() < LIMIT) {
        return Err(FoldError { index, value: x });
    }
    Ok((x as f64 * SCALE).trunc() as i64 as i128 * w as i128)
}

/// A noise value on the fold's grid, trunc(x·2⁴⁰) (DP noise added to exact sums).
pub fn fixed_noise(x: f64) -> i128 {
    (x * SCALE).trunc() as i128
}

/// The mean FedAvg releases from the exact sums of [`fixed_term`]s and their total weight:
/// each sum rounded once to f64, divided by 2⁴⁰·weight, rounded to f32 — bit for bit
/// [`FedAvgAccumulator::mean`] over the same updates.
pub fn mean_of_exact_sums(sums: &[i128], total_weight: u64) -> Vec<f32> {
    use rayon::prelude::*;
    let denom = SCALE * total_weight as f64;
    // Element by element on the fold's pool: the same values whatever the thread count.
    pool().install(|| {
        sums.par_iter()
            .map(|&s| (exact_to_f64(s) / denom) as f32)
            .collect()
    })
}

/// `s as f64` (rounded to nearest, ties to even), through the hardware's 64-bit conversion
/// when `s` fits in 64 bits (the common case; the same value) rather than the slower 128-bit
/// routine.
#[inline]
fn exact_to_f64(s: i128) -> f64 {
    match i64::try_from(s) {
        Ok(v) => v as f64,
        Err(_) => s as f64,
    }
}

/// The noised mean DP releases from the exact sums of [`fixed_term`]s (weight 1 each):
/// (sum / 2⁴⁰ + noise) / `denominator` per value — bit for bit
/// [`FedAvgAccumulator::noised_mean`] over the same updates and noise.
pub fn noised_mean_of_exact_sums(
    sums: &[i128],
    denominator: f64,
    noise: &mut crate::privacy::noise::GaussianNoise,
) -> Vec<f32> {
    sums.iter()
        .map(|&s| ((s as f64 / SCALE + noise.sample()) / denominator) as f32)
        .collect()
}

/// Streaming, order-independent, example-weighted average of adapter updates.
///
/// Updates are buffered up to [`BATCH`] and folded together, tile by tile over the model (each
/// tile of the sums is read and written once per batch, not once per update), on all cores, in
/// one pass over the updates' values that both checks and folds them (see [`super::batch`]). An
/// update can be handed over as values, or as the little-endian payload it arrived in
/// ([`FedAvgAccumulator::fold_payload`]): then it is read in place, never copied. The sum of the
/// integer terms trunc(x·2⁴⁰)·w is kept in f64 while a per-tile bound on it stays below 2⁵³ —
/// for LoRA updates of |x| ≤ 10⁻² and ~100 examples, a round of thousands of updates: the common
/// case, vectorised with AVX2 where the CPU has it — and in `i128` beyond. Every path is an
/// exact integer sum, so the result is the same bit for bit whatever the batching, the arrival
/// order, the path or the thread count.
#[derive(Debug)]
pub struct FedAvgAccumulator {
    tiles: Arc<[Tile]>,
    /// Lengths of the segments (tensors of the wire format) the flat vector is made of.
    segments: Arc<[usize]>,
    sums: Sums,
    total_weight: u64,
    count: usize,
    pending: Vec<Pending>,
    /// Updates found invalid when their batch was folded: (tag, why).
    rejected: Vec<(u64, FoldError)>,
    /// Buffers of folded updates, reused (fresh 1.8 MB allocations cost page faults).
    spare: Vec<Vec<f32>>,
}

/// An update waiting to be folded.
#[derive(Debug, Clone)]
struct Pending {
    source: Source,
    weight: u64,
    /// The caller's name for it, returned with a rejection.
    tag: u64,
}

/// Where a pending update's values are.
#[derive(Debug, Clone)]
enum Source {
    /// Its own buffer, in flat order.
    Values(Vec<f32>),
    /// Its payload: segment `s` starts at byte `starts[s]` (4-aligned, little-endian host).
    Payload {
        bytes: Arc<Vec<u8>>,
        starts: Vec<usize>,
    },
}

impl Update for Pending {
    fn tile(&self, t: &Tile) -> &[f32] {
        match &self.source {
            Source::Values(v) => &v[t.flat..t.flat + t.len],
            Source::Payload { bytes, starts } => {
                let lo = starts[t.seg] + 4 * t.seg_lo;
                bytemuck::cast_slice(&bytes[lo..lo + 4 * t.len])
            }
        }
    }

    fn weight(&self) -> u64 {
        self.weight
    }
}

/// An update folded from the caller's slice.
struct Borrowed<'a>(&'a [f32], u64);

impl Update for Borrowed<'_> {
    fn tile(&self, t: &Tile) -> &[f32] {
        &self.0[t.flat..t.flat + t.len]
    }

    fn weight(&self) -> u64 {
        self.1
    }
}

/// Updates folded together in one pass over the accumulator.
pub const BATCH: usize = 8;

/// The pool the folds run on: one thread per core, its own (not the slots', not rayon's
/// global, which `sim` sizes for one job's matmuls). Secure aggregation's mask expansions and
/// masked sums run on it too.
pub(crate) fn pool() -> &'static rayon::ThreadPool {
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
            tiles: self.tiles.clone(),
            segments: self.segments.clone(),
            sums: self.sums.clone(),
            total_weight: self.total_weight,
            count: self.count,
            pending: self.pending.clone(),
            rejected: self.rejected.clone(),
            spare: Vec::new(),
        }
    }
}

impl FedAvgAccumulator {
    /// An empty accumulator for updates of `len` values.
    pub fn new(len: usize) -> Self {
        Self::with_segments(&[len])
    }

    /// An empty accumulator for updates made of segments of these lengths, in order (the
    /// tensors of the wire format: see [`FedAvgAccumulator::fold_payload`]).
    pub fn with_segments(segments: &[usize]) -> Self {
        let tiles = fold::tiles(segments);
        Self {
            sums: Sums::new(segments.iter().sum(), tiles.len()),
            tiles: tiles.into(),
            segments: segments.into(),
            total_weight: 0,
            count: 0,
            pending: Vec::with_capacity(BATCH),
            rejected: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Start over (a new round) keeping the allocations: the sum is zeroed, buffers are kept.
    pub fn reset(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.recycle(p.source);
        }
        self.sums.reset();
        self.rejected.clear();
        self.total_weight = 0;
        self.count = 0;
    }

    /// Values per update.
    pub fn len(&self) -> usize {
        self.sums.fast.len()
    }

    /// Whether updates have no values (an empty layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn recycle(&mut self, source: Source) {
        if let Source::Values(v) = source {
            if self.spare.len() < BATCH {
                self.spare.push(v);
            }
        }
    }

    /// A buffer of the accumulator's length to parse an update into (recycled when possible;
    /// its contents are unspecified).
    pub fn take_buffer(&mut self) -> Vec<f32> {
        self.spare.pop().unwrap_or_else(|| vec![0.0; self.len()])
    }

    /// Add `update` with weight `num_examples` now, in a pass of its own over the sums (no
    /// copy; [`FedAvgAccumulator::fold_owned`] and [`FedAvgAccumulator::fold_payload`] batch).
    ///
    /// # Errors
    /// [`FoldError`] when a value is not finite or |x| ≥ 2²³; nothing is folded then.
    ///
    /// # Panics
    /// When the update's length differs from the accumulator's (a broken invariant).
    pub fn fold(&mut self, update: &[f32], num_examples: u64) -> Result<(), FoldError> {
        assert_eq!(update.len(), self.len(), "update length mismatch");
        check(update)?;
        let one = [Borrowed(update, num_examples)];
        let rejected = batch::fold_batch(&mut self.sums, &self.tiles, pool(), &one);
        debug_assert!(rejected.is_empty(), "checked above");
        self.total_weight += num_examples;
        self.count += 1;
        Ok(())
    }

    /// Add `update` with weight `num_examples`, taking ownership (no copy). The update is
    /// checked now (one more pass over it than [`FedAvgAccumulator::fold_payload`] makes).
    ///
    /// # Errors
    /// As [`FedAvgAccumulator::fold`].
    ///
    /// # Panics
    /// As [`FedAvgAccumulator::fold`].
    pub fn fold_owned(&mut self, update: Vec<f32>, num_examples: u64) -> Result<(), FoldError> {
        assert_eq!(update.len(), self.len(), "update length mismatch");
        if let Err(e) = check(&update) {
            self.recycle(Source::Values(update));
            return Err(e);
        }
        self.push(Source::Values(update), num_examples, u64::MAX);
        Ok(())
    }

    /// Add an update straight from the bytes it arrived in: segment `s` (see
    /// [`FedAvgAccumulator::with_segments`]) is `segments[s]` little-endian f32 values starting
    /// at byte `starts[s]` of `bytes`. The bytes are kept until the update's batch is folded and
    /// read in place (copied first only on a big-endian host or at an unaligned start). The
    /// update is checked as it is folded: one with a value that is not finite or |x| ≥ 2²³ is
    /// left out whole and reported, with `tag`, by [`FedAvgAccumulator::take_rejected`].
    ///
    /// # Panics
    /// When `starts` does not name one in-bounds start per segment (a broken invariant).
    pub fn fold_payload(&mut self, bytes: Arc<Vec<u8>>, starts: Vec<usize>, weight: u64, tag: u64) {
        assert_eq!(starts.len(), self.segments.len(), "one start per segment");
        let segments = self.segments.clone();
        let ranges = || {
            starts
                .iter()
                .zip(segments.iter())
                .map(|(&s, &n)| s..s + 4 * n)
        };
        assert!(
            ranges().all(|r| r.end <= bytes.len()),
            "segment out of bounds"
        );
        let in_place = cfg!(target_endian = "little")
            && ranges().all(|r| (bytes.as_ptr() as usize + r.start) % 4 == 0);
        if in_place {
            self.push(Source::Payload { bytes, starts }, weight, tag);
            return;
        }
        let mut buf = self.take_buffer();
        let mut at = 0;
        for r in ranges() {
            let n = r.len() / 4;
            for (dst, src) in buf[at..at + n].iter_mut().zip(bytes[r].chunks_exact(4)) {
                *dst = f32::from_le_bytes(src.try_into().expect("4 bytes"));
            }
            at += n;
        }
        self.push(Source::Values(buf), weight, tag);
    }

    fn push(&mut self, source: Source, weight: u64, tag: u64) {
        self.total_weight += weight;
        self.count += 1;
        self.pending.push(Pending {
            source,
            weight,
            tag,
        });
        if self.pending.len() == BATCH {
            self.flush();
        }
    }

    /// Fold the buffered updates into the sum.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        for (k, e) in batch::fold_batch(&mut self.sums, &self.tiles, pool(), &batch) {
            self.total_weight -= batch[k].weight;
            self.count -= 1;
            self.rejected.push((batch[k].tag, e));
        }
        for p in batch {
            self.recycle(p.source);
        }
    }

    /// The updates from [`FedAvgAccumulator::fold_payload`] found invalid (after folding what
    /// is buffered), with their tags, in the order they were folded; they count nowhere.
    pub fn take_rejected(&mut self) -> Vec<(u64, FoldError)> {
        self.flush();
        std::mem::take(&mut self.rejected)
    }

    /// Updates folded so far (buffered ones included, rejected ones not once found).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sum of weights (examples) folded so far (as [`FedAvgAccumulator::count`]).
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The weighted mean update, or `None` when nothing was folded.
    pub fn mean(&mut self) -> Option<Vec<f32>> {
        self.flush();
        if self.total_weight == 0 {
            return None;
        }
        Some(self.sums.divided(SCALE * self.total_weight as f64))
    }

    /// The exact integer sums Σ trunc(x·2⁴⁰)·w of the updates folded (what is buffered
    /// folded first): what an edge aggregator forwards, so that [`mean_of_exact_sums`] over
    /// every edge's sums added is [`FedAvgAccumulator::mean`] over all their updates, bit for
    /// bit.
    pub fn exact_sums(&mut self) -> Vec<i128> {
        self.flush();
        self.sums.exact()
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
        self.sums
            .rounded()
            .iter()
            .map(|&s| ((s / SCALE + noise.sample()) / denominator) as f32)
            .collect()
    }
}

/// Ok when every value is finite with |x| < 2²³; else the first offender.
fn check(values: &[f32]) -> Result<(), FoldError> {
    if fold::max_abs_bits(values) < LIMIT.to_bits() {
        return Ok(());
    }
    let index = values
        .iter()
        .position(|x| x.is_nan() || x.abs() >= LIMIT)
        .expect("found by the scan");
    Err(FoldError {
        index,
        value: values[index],
    })
}

/// `global + delta`.
pub fn add(global: &AdapterSet, delta: &[f32]) -> AdapterSet {
    let mut next = global.clone();
    for (g, d) in next.data_mut().iter_mut().zip(delta) {
        *g += d;
    }
    next
}
