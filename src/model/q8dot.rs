//! Dot products of GGUF Q8_0 / Q4_1 weight rows with an activation row quantised to 8 bits,
//! as llama.cpp computes a token's matmuls: each 32-value block of the activation gets a scale
//! `d = max|x| / 127` and int8 values `round(x / d)`; a block's products are summed in integers
//! (exact), then scaled in f32. Inference only, and only when asked for
//! ([`InferenceActivations::Int8`]): training and the held-out loss keep f32 activations.
//!
//! The f32 part has one fixed order, so the AVX2 kernels (detected at run time) and the portable
//! ones give the same bits: within a block, lane j (0..8) holds the integer sum over values
//! 4j..4j+4 and is added to accumulator j as `d_w·d_x · sum`; Q4_1's minimum term
//! `m_w · d_x·Σq_x` goes to a separate scalar, block by block; the result is the eight
//! accumulators summed in order, plus that scalar.

use serde::{Deserialize, Serialize};

/// The activations KV-cache inference (generation and log-likelihood scoring of continuations) feeds a Q8_0 or
/// Q4_1 base (`model.inference_activations`); training and the held-out loss are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum InferenceActivations {
    /// f32, as transformers computes: the same numbers as the training forward.
    #[default]
    F32,
    /// 8-bit per 32-value block, integer block products, as llama.cpp runs a quantised model:
    /// about twice the tokens per second, with logits a little off the f32 ones.
    Int8,
}

impl InferenceActivations {
    /// Its name as scenarios spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Int8 => "Int8",
        }
    }
}

/// A name that is not an [`InferenceActivations`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an inference activation precision: use F32 or Int8")]
pub struct UnknownActivations(pub String);

impl std::str::FromStr for InferenceActivations {
    type Err = UnknownActivations;

    /// F32 or Int8, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::F32, Self::Int8]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownActivations(s.to_string()))
    }
}

/// Values per block (Q8_0, Q4_1 and the activation's).
const BLOCK: usize = 32;
/// Bytes of a Q8_0 block (f16 scale, 32 int8) and of a Q4_1 block (f16 scale and minimum, 16
/// bytes of nibbles: low nibbles are values 0..16, high ones 16..32).
const Q8_0_BYTES: usize = 34;
const Q4_1_BYTES: usize = 20;

/// An activation row quantised per 32-value block.
pub struct Q8Row {
    q: Vec<i8>,
    /// Each block's scale.
    d: Vec<f32>,
    /// Each block's `d · Σq`.
    ds: Vec<f32>,
}

impl Q8Row {
    /// Quantise `x`, whose length is a multiple of 32 (a packed weight's width always is).
    pub fn quantise(x: &[f32]) -> Self {
        assert_eq!(x.len() % BLOCK, 0, "Q8Row: a width of whole blocks");
        let blocks = x.len() / BLOCK;
        let mut out = Self {
            q: vec![0; x.len()],
            d: Vec::with_capacity(blocks),
            ds: Vec::with_capacity(blocks),
        };
        for (xs, qs) in x.chunks_exact(BLOCK).zip(out.q.chunks_exact_mut(BLOCK)) {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(*q);
            }
            out.d.push(d);
            out.ds.push(d * sum as f32);
        }
        out
    }

    /// Values.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// Σ x·w for one row of Q8_0 blocks: AVX2 where the CPU has it, else [`portable::dot_q8_0`]
/// (the same bits).
pub fn dot_q8_0(row: &[u8], x: &Q8Row) -> f32 {
    assert_eq!(row.len() / Q8_0_BYTES * BLOCK, x.len(), "dot_q8_0: lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the features were detected on this CPU; the lengths were checked.
            return unsafe { simd::dot_q8_0(row, x) };
        }
    }
    portable::dot_q8_0(row, x)
}

/// Σ x·w for one row of Q4_1 blocks (`w = q·d + m`), as [`dot_q8_0`] dispatches.
pub fn dot_q4_1(row: &[u8], x: &Q8Row) -> f32 {
    assert_eq!(row.len() / Q4_1_BYTES * BLOCK, x.len(), "dot_q4_1: lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: as in dot_q8_0.
            return unsafe { simd::dot_q4_1(row, x) };
        }
    }
    portable::dot_q4_1(row, x)
}

/// The kernels in plain Rust: the order every implementation follows.
pub mod portable {
    use super::{f16_at, Q8Row, BLOCK, Q4_1_BYTES, Q8_0_BYTES};

    /// Σ x·w for one row of Q8_0 blocks.
    pub fn dot_q8_0(row: &[u8], x: &Q8Row) -> f32 {
        let mut acc = [0f32; 8];
        for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let d = f16_at(blk, 0) * x.d[b];
            let (w, q) = (&blk[2..], &x.q[b * BLOCK..(b + 1) * BLOCK]);
            for (j, a) in acc.iter_mut().enumerate() {
                let s: i32 = (4 * j..4 * j + 4)
                    .map(|p| i32::from(w[p] as i8) * i32::from(q[p]))
                    .sum();
                *a = d.mul_add(s as f32, *a);
            }
        }
        acc.iter().sum()
    }

    /// Σ x·w for one row of Q4_1 blocks.
    pub fn dot_q4_1(row: &[u8], x: &Q8Row) -> f32 {
        let (mut acc, mut mins) = ([0f32; 8], 0f32);
        for (b, blk) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let (d, m) = (f16_at(blk, 0) * x.d[b], f16_at(blk, 2));
            let nibble = |p: usize| {
                let byte = blk[4 + p % 16];
                i32::from(if p < 16 { byte & 0x0F } else { byte >> 4 })
            };
            let q = &x.q[b * BLOCK..(b + 1) * BLOCK];
            for (j, a) in acc.iter_mut().enumerate() {
                let s: i32 = (4 * j..4 * j + 4)
                    .map(|p| nibble(p) * i32::from(q[p]))
                    .sum();
                *a = d.mul_add(s as f32, *a);
            }
            mins = m.mul_add(x.ds[b], mins);
        }
        acc.iter().sum::<f32>() + mins
    }
}

use super::kernels::f16_at;

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Q8Row, BLOCK, Q4_1_BYTES, Q8_0_BYTES};
    // The f32 kernels' feature check (AVX2, FMA, F16C) and f16 pair reader serve here too.
    pub(super) use crate::model::kernels::simd::{available, two_f16};

    /// Lane j of the result: Σ a·b over bytes 4j..4j+4 (a unsigned, b signed), as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lane_sums(a: __m256i, b: __m256i) -> __m256 {
        // Pairs of u8·i8 products fit i16: |a| ≤ 128, |b| ≤ 127.
        let pairs = _mm256_maddubs_epi16(a, b);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// The eight accumulators summed in order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn finish(acc: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(row: &[u8], x: &Q8Row) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            // (The f16 after the scale is the first two int8 values: read, not used.)
            let d = _mm256_set1_ps(two_f16(blk.as_ptr()).0 * x.d[b]);
            let w = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
            let q = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
            // w·q as |w| · (q with w's sign): unsigned times signed, for maddubs.
            let s = lane_sums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
            acc = _mm256_fmadd_ps(d, s, acc);
        }
        finish(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(row: &[u8], x: &Q8Row) -> f32 {
        let (mut acc, mut mins) = (_mm256_setzero_ps(), 0f32);
        let nibble = _mm_set1_epi8(0x0F);
        for (b, blk) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let (d, m) = two_f16(blk.as_ptr());
            let d = _mm256_set1_ps(d * x.d[b]);
            let bytes = _mm_loadu_si128(blk.as_ptr().add(4) as *const __m128i);
            let low = _mm_and_si128(bytes, nibble);
            let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
            let w = _mm256_set_m128i(high, low);
            let q = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
            acc = _mm256_fmadd_ps(d, lane_sums(w, q), acc);
            mins = m.mul_add(x.ds[b], mins);
        }
        finish(acc) + mins
    }
}
