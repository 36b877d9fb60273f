//! Matmuls against a packed frozen weight in bfloat16 with f32 sums (`model.compute_dtype:
//! Bf16`, QLoRA's compute dtype): the activations (or, backward, their gradients) and the
//! weight's values are rounded to bf16, nearest even; products of bf16 values are exact in
//! f32 and are summed in f32. Training's forward `x · Wᵀ` and input gradient `g · W` take it;
//! adapters, optimiser state and the loss stay f32.
//!
//! A weight is packed per 32 output columns into a panel of bf16 pairs (two consecutive values
//! of the summed dimension in one 32-bit word, as `vdpbf16ps` takes them), dequantised from
//! its GGUF blocks on the fly; A is read in place (row-major bf16, an even row length), a pair
//! broadcast per row. On a CPU with AVX-512 BF16 the kernel keeps 12 × 32 sums in 24 zmm
//! registers, twice f32's FMA rate; elsewhere a portable kernel sums the same pairs in the same
//! order per output (not the same bits: `vdpbf16ps` rounds as the CPU does).

use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::weight::Packed;

/// Output columns per panel (two zmm of f32 sums).
const NR: usize = 32;
/// Rows of A per kernel call.
const MR: usize = 12;
/// Weight rows dequantised per parallel task of [`Bf16Rows::of_weight`].
const ROW_CHUNK: usize = 64;

/// What a packed frozen base multiplies in (`model.compute_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ComputeDtype {
    /// f32 activations and weight values, as transformers and PEFT compute.
    #[default]
    F32,
    /// bfloat16 activations and weight values, f32 sums (QLoRA's `compute_dtype`): about twice
    /// the multiply rate on a CPU with AVX-512 BF16; 8 significant bits per input value.
    Bf16,
}

impl ComputeDtype {
    /// Its name as scenarios spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "Bf16",
        }
    }
}

/// A name that is not a [`ComputeDtype`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a compute dtype: use F32 or Bf16")]
pub struct UnknownComputeDtype(pub String);

impl std::str::FromStr for ComputeDtype {
    type Err = UnknownComputeDtype;

    /// F32 or Bf16, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::F32, Self::Bf16]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownComputeDtype(s.to_string()))
    }
}

/// `x` rounded to bfloat16, nearest even (a NaN stays a NaN).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    (if x.is_nan() { nan } else { rounded }) as u16
}

/// The f32 value of a bfloat16.
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// A row-major matrix of bfloat16 values, each row padded with a zero to an even length.
pub struct Bf16Rows {
    rows: usize,
    cols: usize,
    /// Row length in the buffer: `cols` rounded up to even.
    stride: usize,
    data: Vec<u16>,
}

impl Bf16Rows {
    /// `x` (rows × cols, row-major f32) rounded.
    pub fn from_f32(x: &[f32], cols: usize) -> Self {
        let rows = x.len() / cols.max(1);
        let stride = cols.next_multiple_of(2);
        let mut data = vec![0u16; rows * stride];
        data.par_chunks_mut(stride * ROW_CHUNK)
            .zip(x.par_chunks(cols * ROW_CHUNK))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_exact_mut(stride).zip(src.chunks_exact(cols)) {
                    for (d, &s) in d.iter_mut().zip(s) {
                        *d = to_bf16(s);
                    }
                }
            });
        Self {
            rows,
            cols,
            stride,
            data,
        }
    }

    /// Rows `rows` of a packed weight, dequantised and rounded (in parallel).
    pub fn of_weight(w: &Packed, rows: Range<usize>) -> Self {
        let (cols, stride) = (w.cols(), w.cols().next_multiple_of(2));
        let n = rows.len();
        let mut data = vec![0u16; n * stride];
        data.par_chunks_mut(stride * ROW_CHUNK)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (c, dst)| {
                let lo = rows.start + c * ROW_CHUNK;
                if stride == cols {
                    return rows_bf16(w, lo, dst, scratch);
                }
                for (i, d) in dst.chunks_exact_mut(stride).enumerate() {
                    rows_bf16(w, lo + i, &mut d[..cols], scratch);
                }
            });
        Self {
            rows: n,
            cols,
            stride,
            data,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row (before padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Value (r, c).
    pub fn get(&self, r: usize, c: usize) -> u16 {
        self.data[r * self.stride + c]
    }
}

/// The kernel a matmul runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` (AVX-512 BF16).
    Avx512Bf16,
    /// Plain f32 arithmetic on the same pairs.
    Portable,
}

impl Kernel {
    /// The fastest this CPU runs.
    pub fn detect() -> Self {
        if has_avx512_bf16() {
            Self::Avx512Bf16
        } else {
            Self::Portable
        }
    }
}

/// `out (m, rows.len()) = a (m, k) · W[rows]ᵀ` for W (n, k): the forward, in bf16.
pub fn x_wt(w: &Packed, rows: Range<usize>, a: &Bf16Rows, out: &mut [f32]) {
    x_wt_on(Kernel::detect(), w, rows, a, out)
}

/// `out (m, k) (+)= g (m, rows.len()) · W[rows]` for W (n, k): the input gradient, in bf16,
/// added to `out` when `accumulate`.
pub fn g_w(w: &Packed, rows: Range<usize>, g: &Bf16Rows, out: &mut [f32], accumulate: bool) {
    g_w_on(Kernel::detect(), w, rows, g, out, accumulate)
}

/// [`x_wt`] on a given kernel (tests compare them).
///
/// # Panics
/// `Kernel::Avx512Bf16` on a CPU without it.
pub fn x_wt_on(kernel: Kernel, w: &Packed, rows: Range<usize>, a: &Bf16Rows, out: &mut [f32]) {
    let k = w.cols();
    debug_assert_eq!((a.cols(), out.len()), (k, a.rows() * rows.len()));
    let (base, pairs) = (rows.start, k.div_ceil(2));
    // Panel word (p, j) = (W[j][2p], W[j][2p + 1]) for the panel's output column j: the
    // panel's weight rows dequantised, rounded, and transposed pair by pair.
    let pack = |j0: usize, cols: usize, scratch: &mut Scratch| {
        let Scratch { panel, bf16, f32 } = scratch;
        bf16.clear();
        bf16.resize(NR * 2 * pairs, 0);
        for (j, row) in bf16.chunks_exact_mut(2 * pairs).take(cols).enumerate() {
            rows_bf16(w, base + j0 + j, &mut row[..k], f32);
        }
        panel.clear();
        panel.resize(pairs * NR, 0);
        for (j, row) in bf16.chunks_exact(2 * pairs).enumerate() {
            for (p, v) in row.chunks_exact(2).enumerate() {
                panel[p * NR + j] = pair(v[0], v[1]);
            }
        }
    };
    matmul(kernel, a, (rows.len(), pairs), pack, out, false);
}

/// [`g_w`] on a given kernel (tests compare them).
///
/// # Panics
/// `Kernel::Avx512Bf16` on a CPU without it.
pub fn g_w_on(
    kernel: Kernel,
    w: &Packed,
    rows: Range<usize>,
    g: &Bf16Rows,
    out: &mut [f32],
    accumulate: bool,
) {
    let (k, n) = (w.cols(), rows.len());
    debug_assert_eq!((g.cols(), out.len()), (n, g.rows() * k));
    let wb = Bf16Rows::of_weight(w, rows);
    let pairs = n.div_ceil(2);
    // Panel word (p, j) = (W[2p][c], W[2p + 1][c]) for the panel's output column c = j0 + j:
    // two weight rows interleaved.
    let pack = |j0: usize, cols: usize, scratch: &mut Scratch| {
        scratch.panel.clear();
        scratch.panel.resize(pairs * NR, 0);
        let row = |r: usize| &wb.data[r * wb.stride + j0..r * wb.stride + j0 + cols];
        for (p, dst) in scratch.panel.chunks_exact_mut(NR).enumerate() {
            let lo = row(2 * p);
            if 2 * p + 1 < n {
                for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(row(2 * p + 1)) {
                    *d = pair(l, h);
                }
            } else {
                for (d, &l) in dst.iter_mut().zip(lo) {
                    *d = pair(l, 0);
                }
            }
        }
    };
    matmul(kernel, g, (k, pairs), pack, out, accumulate);
}

/// Rows `lo..lo + out.len() / cols` of `w` as bf16 (rounded from their f32 values): Q8_0 rows
/// straight from their blocks (AVX-512 BF16 where the CPU has it), other formats through f32.
fn rows_bf16(w: &Packed, lo: usize, out: &mut [u16], scratch: &mut Vec<f32>) {
    let cols = w.cols();
    #[cfg(target_arch = "x86_64")]
    if w.format() == candle_core::quantized::GgmlDType::Q8_0 && has_avx512_bf16() {
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            // SAFETY: the CPU has AVX-512 F and BF16; a Q8_0 row of `cols` values is cols / 32
            // blocks of 34 bytes.
            unsafe { avx512::q8_0_row(w.raw_row(lo + r), row) };
        }
        return;
    }
    scratch.resize(out.len(), 0.0);
    w.rows_into(lo, scratch);
    for (d, &s) in out.iter_mut().zip(scratch.iter()) {
        *d = to_bf16(s);
    }
}

/// Two bf16 values as one word: `lo` the even index, as `vdpbf16ps` pairs them.
fn pair(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | u32::from(hi) << 16
}

/// A parallel task's buffers, kept across its panels.
#[derive(Default)]
struct Scratch {
    /// The panel: pairs × [`NR`] words.
    panel: Vec<u32>,
    /// The panel's weight rows in bf16, each padded to an even length.
    bf16: Vec<u16>,
    /// Dequantised weight rows (formats without a direct bf16 path).
    f32: Vec<f32>,
}

/// A's rows in strips of [`MR`]: word (p, i) of a strip is row i's pair p (zero past the
/// last row), so a kernel reads one short run of words per pair.
fn strips(a: &Bf16Rows) -> Vec<u32> {
    let (m, pairs) = (a.rows, a.stride / 2);
    let mut out = vec![0u32; m.div_ceil(MR) * MR * pairs];
    out.par_chunks_mut(MR * pairs)
        .enumerate()
        .for_each(|(s, strip)| {
            for i in 0..MR.min(m - s * MR) {
                let row = &a.data[(s * MR + i) * a.stride..(s * MR + i + 1) * a.stride];
                for (p, v) in row.chunks_exact(2).enumerate() {
                    strip[p * MR + i] = pair(v[0], v[1]);
                }
            }
        });
    out
}

/// A pointer the parallel panels share; each writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the panels write disjoint column ranges of the output, and the slice outlives the
// parallel loop that uses it.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `out (m, n) (+)= a (m, 2·pairs) · B (2·pairs, n)`, B given panel by panel by `pack(first
/// column, columns, scratch)` into `scratch.panel`; panels in parallel on the calling pool.
fn matmul(
    kernel: Kernel,
    a: &Bf16Rows,
    (n, pairs): (usize, usize),
    pack: impl Fn(usize, usize, &mut Scratch) + Sync,
    out: &mut [f32],
    accumulate: bool,
) {
    let m = a.rows();
    assert!(
        out.len() >= m * n && a.stride / 2 == pairs,
        "bf16 matmul shapes"
    );
    let dst = OutPtr(out.as_mut_ptr());
    let a = strips(a);
    assert!(
        kernel == Kernel::Portable || has_avx512_bf16(),
        "the AVX-512 BF16 kernel on a CPU without it"
    );
    let fast = kernel == Kernel::Avx512Bf16;
    (0..n.div_ceil(NR))
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, t| {
            let j0 = t * NR;
            let cols = NR.min(n - j0);
            pack(j0, cols, scratch);
            for (s, strip) in a.chunks_exact(MR * pairs).enumerate() {
                let i0 = s * MR;
                let tile = Tile {
                    a: strip.as_ptr(),
                    panel: scratch.panel.as_ptr(),
                    pairs,
                    c: dst.at(i0 * n + j0),
                    ldc: n,
                    rows: MR.min(m - i0),
                    cols,
                    accumulate,
                };
                // SAFETY: the strip holds pairs × MR words, the panel pairs × NR; C's block
                // (rows × cols at row stride n) is inside `out`, and only this panel writes
                // its columns.
                unsafe {
                    if fast {
                        tile.run_avx512()
                    } else {
                        tile.run_portable()
                    }
                }
            }
        });
}

/// One kernel call: C (rows × cols, ≤ MR × NR) (+)= A's rows · a panel.
struct Tile {
    /// A strip: pairs × MR words.
    a: *const u32,
    panel: *const u32,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
}

/// Whether this CPU runs `vdpbf16ps` (checked once).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Tile {
    /// The portable kernel: per output, Σ over pairs of (lo·lo + hi·hi) in f32.
    ///
    /// # Safety
    /// As [`matmul`] states for the tile's pointers.
    unsafe fn run_portable(&self) {
        for i in 0..self.rows {
            let mut acc = [0f32; NR];
            if self.accumulate {
                for (j, s) in acc.iter_mut().enumerate().take(self.cols) {
                    *s = *self.c.add(i * self.ldc + j);
                }
            }
            for p in 0..self.pairs {
                let a = *self.a.add(p * MR + i);
                let (alo, ahi) = (from_bf16(a as u16), from_bf16((a >> 16) as u16));
                let b = std::slice::from_raw_parts(self.panel.add(p * NR), NR);
                for (s, &b) in acc.iter_mut().zip(b) {
                    let (blo, bhi) = (from_bf16(b as u16), from_bf16((b >> 16) as u16));
                    *s += ahi * bhi + alo * blo;
                }
            }
            for (j, &s) in acc.iter().enumerate().take(self.cols) {
                *self.c.add(i * self.ldc + j) = s;
            }
        }
    }

    /// The AVX-512 BF16 kernel, [`MR`] rows at a time (fewer at the bottom edge).
    ///
    /// # Safety
    /// As [`matmul`] states, on a CPU with AVX-512 F and BF16.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_avx512(&self) {
        macro_rules! rows {
            ($($r:literal)*) => {
                match self.rows {
                    $($r => avx512::kernel::<$r>(self),)*
                    _ => unreachable!("a tile has 1..=MR rows"),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12)
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run_avx512(&self) {
        self.run_portable()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Tile, MR, NR};

    /// R rows × 32 columns of sums in 2R zmm registers; per pair of A's values, two panel
    /// loads, R broadcasts and 2R `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel<const R: usize>(t: &Tile) {
        let lo: __mmask16 = mask(t.cols.min(16));
        let hi: __mmask16 = mask(t.cols.saturating_sub(16));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if t.accumulate {
            for (i, s) in acc.iter_mut().enumerate() {
                let c = t.c.add(i * t.ldc);
                s[0] = _mm512_maskz_loadu_ps(lo, c);
                s[1] = _mm512_maskz_loadu_ps(hi, c.add(16));
            }
        }
        for p in 0..t.pairs {
            let b = t.panel.add(p * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
            for (i, s) in acc.iter_mut().enumerate() {
                let a = *t.a.add(p * MR + i);
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(a as i32));
                s[0] = _mm512_dpbf16_ps(s[0], a, b0);
                s[1] = _mm512_dpbf16_ps(s[1], a, b1);
            }
        }
        for (i, s) in acc.iter().enumerate() {
            let c = t.c.add(i * t.ldc);
            _mm512_mask_storeu_ps(c, lo, s[0]);
            _mm512_mask_storeu_ps(c.add(16), hi, s[1]);
        }
    }

    /// A Q8_0 row (blocks of an f16 scale and 32 int8) as bf16: `q · d` in f32, rounded to
    /// nearest even (`vcvtneps2bf16`, which also flushes subnormals: none arise, as |q · d| is
    /// 0 or at least the smallest normal f16).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn q8_0_row(raw: &[u8], out: &mut [u16]) {
        for (b, dst) in raw.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            let d = _mm512_set1_ps(d);
            let q = _mm256_loadu_si256(b.as_ptr().add(2).cast());
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
            let v = _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, d), _mm512_mul_ps(lo, d));
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), std::mem::transmute(v));
        }
    }

    /// The low `n` (≤ 16) lanes.
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }
}
