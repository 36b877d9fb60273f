//! The kernels behind [`super::FedAvgAccumulator`]: tiles, the validation scan and the exact
//! fixed-point folds.
//!
//! Every value x becomes the integer trunc(x·2⁴⁰) and is multiplied by its integer weight.
//! Sums of such integers are exact in f64 while their magnitude stays below 2⁵³, in i64 below
//! 2⁶³, and in i128 beyond: each kernel below is only called where its type is exact, so every
//! path gives the same integers and the average is the same bit for bit whatever the path,
//! batching, arrival order or thread count.

/// The fixed-point grid: values are truncated to multiples of 2⁻⁴⁰.
pub(super) const SCALE: f64 = crate::fixed::STEPS_PER_UNIT;
/// f64 holds every integer below this exactly.
pub(super) const F64_EXACT: f64 = (1u64 << 53) as f64;
/// Values must be finite and below this in magnitude (so |x·2⁴⁰| < 2⁶³).
pub(super) const LIMIT: f32 = (1u32 << 23) as f32;
/// i64 partial sums stay below this (headroom below 2⁶³).
pub(super) const I64_SAFE: f64 = (1u64 << 62) as f64;
/// Elements per tile: a tile of the f64 accumulator (32 KiB) stays in L1 while a batch of
/// updates is folded into it.
const TILE: usize = 4096;

/// A contiguous run of the flat vector folded as a unit: it never crosses a segment (a tensor
/// of the wire format), so a tile of an update read from its payload is one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tile {
    /// Segment it lies in.
    pub seg: usize,
    /// Start within the segment.
    pub seg_lo: usize,
    /// Start in the flat vector.
    pub flat: usize,
    /// Number of values.
    pub len: usize,
}

/// Tiles of at most [`TILE`] values covering segments of these lengths, in flat order.
pub(super) fn tiles(segments: &[usize]) -> Vec<Tile> {
    let mut out = Vec::new();
    let mut flat = 0;
    for (seg, &n) in segments.iter().enumerate() {
        let mut seg_lo = 0;
        while seg_lo < n {
            let len = TILE.min(n - seg_lo);
            out.push(Tile {
                seg,
                seg_lo,
                flat,
                len,
            });
            seg_lo += len;
            flat += len;
        }
    }
    out
}

/// Split `acc` into one mutable slice per tile (tiles cover it in order).
pub(super) fn split_by_tiles<'a, T>(mut acc: &'a mut [T], tiles: &[Tile]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(tiles.len());
    for t in tiles {
        let (head, rest) = std::mem::take(&mut acc).split_at_mut(t.len);
        out.push(head);
        acc = rest;
    }
    out
}

/// The largest `bits & 0x7fff_ffff` of `xs`: the bit pattern of max |x|, where NaN and
/// infinity sort above every finite value (AVX2 where the CPU has it).
pub(super) fn max_abs_bits(xs: &[f32]) -> u32 {
    #[inline(always)]
    fn scan(xs: &[f32]) -> u32 {
        xs.iter()
            .map(|x| x.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0)
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

/// Fold `terms` (each a slice of one tile and its weight) into the f64 tile `acc`: every
/// partial sum is an integer below 2⁵³ (the caller's bound), so each addition is exact — and so
/// is a fused multiply-add, used where the CPU has FMA. trunc(x·2⁴⁰) is computed in f32, eight
/// lanes at a time: scaling by a power of two and truncating are exact in f32 for |x| < 2²³.
pub(super) fn fold_f64(acc: &mut [f64], terms: &[(&[f32], u64)]) {
    #[inline(always)]
    fn step<const FMA: bool>(a: f64, x: f32, w: f64) -> f64 {
        let q = (x * SCALE as f32).trunc() as f64;
        if FMA {
            q.mul_add(w, a)
        } else {
            a + q * w
        }
    }
    /// L sums at a time stay in registers while every term is added to them.
    #[inline(always)]
    fn fold<const FMA: bool>(acc: &mut [f64], terms: &[(&[f32], u64)]) {
        const L: usize = 16;
        let n = acc.len();
        let terms: Vec<(&[f32], f64)> = terms.iter().map(|&(xs, w)| (&xs[..n], w as f64)).collect();
        let full = n / L * L;
        for i in (0..full).step_by(L) {
            let mut a: [f64; L] = acc[i..i + L].try_into().expect("L values");
            for &(xs, w) in &terms {
                let x: &[f32; L] = xs[i..i + L].try_into().expect("L values");
                for j in 0..L {
                    a[j] = step::<FMA>(a[j], x[j], w);
                }
            }
            acc[i..i + L].copy_from_slice(&a);
        }
        for &(xs, w) in &terms {
            for (a, &x) in acc[full..].iter_mut().zip(&xs[full..]) {
                *a = step::<FMA>(*a, x, w);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fold_avx2(acc: &mut [f64], terms: &[(&[f32], u64)]) {
            fold::<true>(acc, terms)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { fold_avx2(acc, terms) };
        }
    }
    fold::<false>(acc, terms)
}

/// Fixed-point value of `x` on the 2⁻⁴⁰ grid (truncated toward zero).
#[inline(always)]
fn fixed(x: f32) -> i64 {
    debug_assert!(x.abs() < (1u32 << 23) as f32);
    // SAFETY: values are checked finite with |x| < 2²³ before they are folded, so |x·2⁴⁰| <
    // 2⁶³: the conversion cannot overflow.
    unsafe { (x as f64 * SCALE).to_int_unchecked::<i64>() }
}

/// Fold `terms` into the i128 tile `wide` through i64 partial sums (the caller's bound keeps
/// them below 2⁶²).
pub(super) fn fold_i64(wide: &mut [i128], terms: &[(&[f32], u64)]) {
    let mut part = [0i64; TILE];
    let part = &mut part[..wide.len()];
    for &(xs, w) in terms {
        let w = w as i64;
        for (s, &x) in part.iter_mut().zip(xs) {
            *s += fixed(x) * w;
        }
    }
    for (a, &s) in wide.iter_mut().zip(part.iter()) {
        *a += s as i128;
    }
}

/// Fold `terms` into the i128 tile `wide` term by term (huge values or weights).
pub(super) fn fold_i128(wide: &mut [i128], terms: &[(&[f32], u64)]) {
    for &(xs, w) in terms {
        let w = w as i128;
        for (a, &x) in wide.iter_mut().zip(xs) {
            *a += fixed(x) as i128 * w;
        }
    }
}

/// Move the f64 tile into the i128 tile: `wide += fast; fast = 0` (exact: |fast| < 2⁵³).
pub(super) fn spill(wide: &mut [i128], fast: &mut [f64]) {
    for (w, f) in wide.iter_mut().zip(fast.iter_mut()) {
        *w += *f as i64 as i128;
        *f = 0.0;
    }
}

/// `fast[i] / denom` as f32, vectorised (every fast[i] is an exact integer).
pub(super) fn divide(fast: &[f64], denom: f64) -> Vec<f32> {
    fast.iter().map(|&s| (s / denom) as f32).collect()
}

/// `(wide[i] + fast[i]) / denom` as f32: the exact integer sum, rounded once to f64 — the
/// same f64 as [`divide`] gives whenever the sum fits f64's exact range.
pub(super) fn divide_wide(wide: &[i128], fast: &[f64], denom: f64) -> Vec<f32> {
    wide.iter()
        .zip(fast)
        .map(|(&w, &f)| ((w + f as i64 as i128) as f64 / denom) as f32)
        .collect()
}
