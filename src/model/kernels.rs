//! Small f32 kernels with a fixed summation order (16 lanes, then the lanes in order), so a
//! result never depends on which instruction set ran it: AVX2 + FMA where the CPU has them
//! (detected at run time), plain Rust otherwise.

const LANES: usize = 16;

/// Σ a[i]·b[i] over the common length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected on this CPU.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..LANES {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    for (j, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[j] = x.mul_add(*y, acc[j]);
    }
    acc.iter().sum()
}

/// Σ x[i]·w[i] for one row of GGUF Q8_0 blocks (`row`: 34 bytes per 32 values: an f16 scale,
/// then 32 int8), each weight dequantised as candle's `to_float` does (`q as f32 · d`) and
/// summed as [`dot`] sums: the same bits as dequantising the row and calling [`dot`].
pub fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the features were detected on this CPU; lengths are checked inside.
            return unsafe { simd::dot_q8_0(row, x) };
        }
    }
    let mut w = vec![0f32; x.len()];
    for (b, out) in row.chunks_exact(34).zip(w.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (o, &q) in out.iter_mut().zip(&b[2..34]) {
            *o = q as i8 as f32 * d;
        }
    }
    dot(x, &w)
}

/// As [`dot_q8_0`] for GGUF Q4_1 blocks (20 bytes per 32 values: f16 scale d and minimum m,
/// then 16 bytes of nibbles: low nibbles are values 0..16, high ones 16..32; `q·d + m`).
pub fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: as in dot_q8_0.
            return unsafe { simd::dot_q4_1(row, x) };
        }
    }
    let mut w = vec![0f32; x.len()];
    for (b, out) in row.chunks_exact(20).zip(w.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (j, &q) in b[4..20].iter().enumerate() {
            out[j] = (q & 0x0F) as f32 * d + m;
            out[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
    dot(x, &w)
}

/// The little-endian f16 at `b[at..at + 2]`, as f32.
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// AVX2, FMA and F16C, detected once.
    pub(crate) fn available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }

    /// The f16 values at `p` and `p + 2` as f32 (exact, as `half` converts them).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn two_f16(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
    }

    /// The two 8-lane halves of [`super::dot`]'s 16 accumulators, summed in its order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn finish(lo: __m256, hi: __m256) -> f32 {
        let mut acc = [0f32; 16];
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
        acc.iter().sum()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
        assert_eq!(row.len() / 34 * 32, x.len(), "dot_q8_0: row and x lengths");
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (b, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
            // (The f16 after the scale is the first two int8 values: read, not used.)
            let d = _mm256_set1_ps(two_f16(b.as_ptr()).0);
            let q = b.as_ptr().add(2);
            for g in 0..4 {
                let qi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * g) as *const __m128i));
                let w = _mm256_mul_ps(_mm256_cvtepi32_ps(qi), d);
                let xv = _mm256_loadu_ps(xs.as_ptr().add(8 * g));
                if g % 2 == 0 {
                    lo = _mm256_fmadd_ps(xv, w, lo);
                } else {
                    hi = _mm256_fmadd_ps(xv, w, hi);
                }
            }
        }
        finish(lo, hi)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
        assert_eq!(row.len() / 20 * 32, x.len(), "dot_q4_1: row and x lengths");
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let nibble = _mm_set1_epi8(0x0F);
        for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(32)) {
            let (d, m) = two_f16(b.as_ptr());
            let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
            let bytes = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
            let low = _mm_and_si128(bytes, nibble);
            let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
            // Values 0..8, 8..16 (low nibbles), 16..24, 24..32 (high nibbles).
            for (g, q) in [low, _mm_srli_si128(low, 8), high, _mm_srli_si128(high, 8)]
                .into_iter()
                .enumerate()
            {
                let qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                let w = _mm256_add_ps(_mm256_mul_ps(qf, d), m);
                let xv = _mm256_loadu_ps(xs.as_ptr().add(8 * g));
                if g % 2 == 0 {
                    lo = _mm256_fmadd_ps(xv, w, lo);
                } else {
                    hi = _mm256_fmadd_ps(xv, w, hi);
                }
            }
        }
        finish(lo, hi)
    }
}
