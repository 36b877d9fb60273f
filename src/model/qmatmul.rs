//! Matmuls against a packed frozen weight ([`Packed`]: bf16 or GGUF blocks), dequantising on
//! the fly: the forward `x · Wᵀ` and the input gradient `g · W`, never a weight gradient.
//!
//! Rows of W are dequantised a tile at a time (at most [`TILE_VALUES`] f32 values, a cache-sized
//! buffer) and multiplied with the `gemm` crate, as bitsandbytes dequantises a layer for
//! QLoRA's matmul; a handful of input rows (generation) take a fused row-by-row dot product
//! instead. Both run on the calling slot's rayon pool, so a slot's thread count holds.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bf16mm::{self, Bf16Rows, ComputeDtype};
use super::fused::exp_in_range;
use super::q8dot::Q8Row;
use super::weight::Packed;

/// f32 values of W dequantised at once (1 MiB).
const TILE_VALUES: usize = 1 << 18;
/// Up to this many input rows, a fused dequantise-and-dot per weight row.
const GEMV_ROWS: usize = 4;
/// Weight rows per parallel task when dequantising or in the fused path.
const ROW_CHUNK: usize = 16;

fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst (m, n) = a (m, k) · b (k, n)`, added to dst when `accumulate`; each matrix as (pointer,
/// column stride, row stride), on the calling pool's threads.
///
/// # Safety
/// Every pointer, with its strides, must address a matrix of its shape inside one allocation.
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    accumulate: bool,
    (a, a_cs, a_rs): (*const f32, isize, isize),
    (b, b_cs, b_rs): (*const f32, isize, isize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        a,
        a_cs,
        a_rs,
        b,
        b_cs,
        b_rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism(),
    );
}

/// Rows of W per tile.
fn tile_rows(w: &Packed) -> usize {
    (TILE_VALUES / w.cols()).clamp(ROW_CHUNK, w.rows().max(ROW_CHUNK))
}

/// Dequantise rows `lo..lo + tile.len() / cols` in parallel.
fn dequantise(w: &Packed, lo: usize, tile: &mut [f32]) {
    let k = w.cols();
    tile.par_chunks_mut(ROW_CHUNK * k)
        .enumerate()
        .for_each(|(i, c)| w.rows_into(lo + i * ROW_CHUNK, c));
}

/// `out (m, n) = x (m, k) · Wᵀ` for W (n, k).
pub fn forward(w: &Packed, x: &[f32], m: usize, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    debug_assert_eq!((x.len(), out.len()), (m * k, m * n));
    if m <= GEMV_ROWS {
        return gemv(w, x, m, out);
    }
    if w.compute() == ComputeDtype::Bf16 {
        return bf16mm::x_wt(w, 0..n, &Bf16Rows::from_f32(x, k), out);
    }
    let t = tile_rows(w);
    let mut tile = vec![0f32; t.min(n) * k];
    for n0 in (0..n).step_by(t) {
        let rows = t.min(n - n0);
        let tile = &mut tile[..rows * k];
        dequantise(w, n0, tile);
        // SAFETY: out[:, n0..n0 + rows] with row stride n is inside out (m·n); x is m × k with
        // row stride k; the tile read as (k × rows) has element (i, j) at j·k + i.
        unsafe {
            gemm_into(
                (m, rows, k),
                (out.as_mut_ptr().add(n0), 1, n as isize),
                false,
                (x.as_ptr(), 1, k as isize),
                (tile.as_ptr(), k as isize, 1),
            );
        }
    }
}

/// `gx (m, k) = g (m, n) · W` for W (n, k).
pub fn backward(w: &Packed, g: &[f32], m: usize) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let mut gx = zeros(m * k);
    if w.compute() == ComputeDtype::Bf16 {
        bf16mm::g_w(w, 0..n, &Bf16Rows::from_f32(g, n), &mut gx, false);
        return gx;
    }
    let t = tile_rows(w);
    let mut tile = vec![0f32; t.min(n) * k];
    for n0 in (0..n).step_by(t) {
        let rows = t.min(n - n0);
        let tile = &mut tile[..rows * k];
        dequantise(w, n0, tile);
        // SAFETY: gx is m × k (row stride k); g[:, n0..n0 + rows] has row stride n; the tile is
        // rows × k (row stride k).
        unsafe {
            gemm_into(
                (m, k, rows),
                (gx.as_mut_ptr(), 1, k as isize),
                n0 > 0,
                (g.as_ptr().add(n0), 1, n as isize),
                (tile.as_ptr(), 1, k as isize),
            );
        }
    }
    gx
}

/// A few input rows: each weight row dequantised once into a row buffer and dotted with every
/// input row (the weights are read once; nothing of W's size is written).
fn gemv(w: &Packed, x: &[f32], m: usize, out: &mut [f32]) {
    let k = w.cols();
    by_weight_row((w.rows(), k), m, out, |r, i, buf| {
        w.dot_row(r, &x[i * k..(i + 1) * k], buf)
    });
}

/// `x (m, k) · Wᵀ` for several weights of one width at once (q, k and v; gate and up), with
/// each row of x quantised to 8 bits per block and integer block products
/// ([`super::q8dot`]), as llama.cpp runs a token: x is quantised once and all their rows share
/// one parallel part; `out (m, Σ rows)` holds the results side by side, in the order given.
/// Every weight must [`Packed::takes_q8`].
pub fn forward_q8_many(ws: &[&Packed], x: &[f32], m: usize, out: &mut [f32]) {
    let k = ws[0].cols();
    assert!(
        ws.iter().all(|w| w.cols() == k && w.takes_q8()),
        "forward_q8_many: weights of one width, each taking 8-bit activations"
    );
    let rows: Vec<Q8Row> = x.chunks_exact(k).map(Q8Row::quantise).collect();
    // (first row, weight) of each weight in the side-by-side numbering.
    let starts: Vec<(usize, &Packed)> = ws
        .iter()
        .scan(0, |at, w| {
            let start = *at;
            *at += w.rows();
            Some((start, *w))
        })
        .collect();
    let n: usize = ws.iter().map(|w| w.rows()).sum();
    by_weight_row((n, k), m, out, |r, i, _| {
        let (start, w) = starts[starts.partition_point(|(s, _)| *s <= r) - 1];
        w.dot_row_q8(r - start, &rows[i])
            .expect("takes_q8 was checked")
    });
}

/// `out[i, r] = dot(r, i, scratch row)` for every weight row r < n and input row i < m, with
/// rows of k values: weight rows in parallel chunks (a few per thread: each wake-up costs).
fn by_weight_row(
    (n, k): (usize, usize),
    m: usize,
    out: &mut [f32],
    dot: impl Fn(usize, usize, &mut [f32]) -> f32 + Sync,
) {
    let chunk = n.div_ceil(4 * rayon::current_num_threads()).max(ROW_CHUNK);
    // (n, m), transposed into out below.
    let mut by_row = vec![0f32; n * m];
    by_row
        .par_chunks_mut(chunk * m)
        .enumerate()
        .for_each(|(c, dst)| {
            let mut buf = vec![0f32; k];
            for (j, d) in dst.chunks_exact_mut(m).enumerate() {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = dot(c * chunk + j, i, &mut buf);
                }
            }
        });
    for (r, vals) in by_row.chunks_exact(m).enumerate() {
        for (i, &v) in vals.iter().enumerate() {
            out[i * n + r] = v;
        }
    }
}

/// `n` zeros, written in parallel: a serial memset of a few MB would hold up the other threads.
fn zeros(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// `f` of `t`'s f32 values: borrowed when `t` is contiguous on the CPU, else a copy.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(s), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
        return Ok(f(&s.as_slice::<f32>()?[a..b]));
    }
    drop(storage);
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// The f32 values of a contiguous CPU tensor argument.
fn values<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{op}: argument is not contiguous"),
    }
}

/// `x (m, k) · Wᵀ` with W packed and frozen: the backward gives x's gradient only.
pub(super) struct PackedLinear {
    w: Arc<Packed>,
}

impl PackedLinear {
    pub(super) fn new(w: &Arc<Packed>) -> Self {
        Self { w: Arc::clone(w) }
    }
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        if k != self.w.cols() {
            candle_core::bail!(
                "packed-linear: input width {k} but weight width {}",
                self.w.cols()
            )
        }
        let x = values(s, l, self.name())?;
        let mut out = zeros(m * self.w.rows());
        forward(&self.w, x, m, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((m, self.w.rows()))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let m = g.dim(0)?;
        let gx = with_values(g, |gv| backward(&self.w, gv, m))?;
        Ok(Some(Tensor::from_vec(gx, x.shape(), x.device())?))
    }
}

/// Vocabulary rows per tile of the head in [`PackedHeadNll`].
const VOCAB_TILE: usize = 4096;

/// Next-token NLL of each row of `hidden (rows, h)` under a packed head `W (vocab, h)`, with
/// the vocabulary in tiles and a running log-sum-exp (the head is never dequantised whole);
/// the backward reuses the forward's log-sum-exp and returns `(softmax − onehot) · W`.
pub(super) struct PackedHeadNll {
    w: Arc<Packed>,
    targets: Vec<u32>,
    lse: Mutex<Vec<f32>>,
}

impl PackedHeadNll {
    pub(super) fn new(w: &Arc<Packed>, targets: &Tensor) -> Result<Self> {
        Ok(Self {
            w: Arc::clone(w),
            targets: targets.to_vec1::<u32>()?,
            lse: Mutex::new(Vec::new()),
        })
    }

    /// Logits of every row against vocabulary rows `v0..v0 + rows_v` into `logits` (n ×
    /// rows_v, every value written); `tile` holds W's rows dequantised (f32 matmuls only).
    fn tile_logits(
        &self,
        hidden: &Hidden,
        (v0, rows_v): (usize, usize),
        tile: &mut Vec<f32>,
        logits: &mut [f32],
    ) {
        let h = self.w.cols();
        let n = logits.len() / rows_v;
        let hidden = match hidden {
            Hidden::Bf16(a) => return bf16mm::x_wt(&self.w, v0..v0 + rows_v, a, logits),
            Hidden::F32(x) => x,
        };
        tile.resize(rows_v * h, 0.0);
        let tile = &mut tile[..rows_v * h];
        dequantise(&self.w, v0, tile);
        // SAFETY: logits is n × rows_v; hidden n × h; the tile read as (h × rows_v).
        unsafe {
            gemm_into(
                (n, rows_v, h),
                (logits.as_mut_ptr(), 1, rows_v as isize),
                false,
                (hidden.as_ptr(), 1, h as isize),
                (tile.as_ptr(), h as isize, 1),
            );
        }
    }
}

/// The head's input as its matmuls take it.
enum Hidden<'a> {
    F32(&'a [f32]),
    Bf16(Bf16Rows),
}

impl<'a> Hidden<'a> {
    fn new(w: &Packed, x: &'a [f32]) -> Self {
        match w.compute() {
            ComputeDtype::F32 => Self::F32(x),
            ComputeDtype::Bf16 => Self::Bf16(Bf16Rows::from_f32(x, w.cols())),
        }
    }
}

impl CustomOp1 for PackedHeadNll {
    fn name(&self) -> &'static str {
        "packed-head-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, _) = l.shape().dims2()?;
        let hidden = Hidden::new(&self.w, values(s, l, self.name())?);
        let vocab = self.w.rows();
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; n], vec![0f32; n]);
        let mut picked = vec![0f32; n];
        let (mut tile, mut buf) = (Vec::new(), zeros(n * VOCAB_TILE.min(vocab)));
        for v0 in (0..vocab).step_by(VOCAB_TILE) {
            let rows_v = VOCAB_TILE.min(vocab - v0);
            let logits = &mut buf[..n * rows_v];
            self.tile_logits(&hidden, (v0, rows_v), &mut tile, logits);
            // Rows in parallel: each row's running max and sum are its own.
            logits
                .par_chunks_exact(rows_v)
                .zip(picked.par_iter_mut())
                .zip(max.par_iter_mut().zip(sum.par_iter_mut()))
                .zip(self.targets.par_iter())
                .for_each(|(((row, picked), (max, sum)), &t)| {
                    let t = t as usize;
                    if (v0..v0 + rows_v).contains(&t) {
                        *picked = row[t - v0];
                    }
                    let m = row.iter().copied().fold(*max, f32::max);
                    *sum = *sum * exp_in_range(*max - m)
                        + row.iter().map(|&z| exp_in_range(z - m)).sum::<f32>();
                    *max = m;
                });
        }
        let lse: Vec<f32> = sum.iter().zip(&max).map(|(s, m)| s.ln() + m).collect();
        let nll = lse.iter().zip(&picked).map(|(l, p)| l - p).collect();
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, hidden: &Tensor, _nll: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, h) = hidden.dims2()?;
        let hv = with_values(hidden, <[f32]>::to_vec)?;
        let gv = grad.to_vec1::<f32>()?;
        let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if lse.len() != n {
            candle_core::bail!("packed-head-nll: backward before forward")
        }
        let vocab = self.w.rows();
        let mut gx = zeros(n * h);
        let input = Hidden::new(&self.w, &hv);
        let (mut tile, mut buf) = (Vec::new(), zeros(n * VOCAB_TILE.min(vocab)));
        for v0 in (0..vocab).step_by(VOCAB_TILE) {
            let rows_v = VOCAB_TILE.min(vocab - v0);
            let logits = &mut buf[..n * rows_v];
            self.tile_logits(&input, (v0, rows_v), &mut tile, logits);
            logits
                .par_chunks_exact_mut(rows_v)
                .zip(
                    self.targets
                        .par_iter()
                        .zip(lse.par_iter().zip(gv.par_iter())),
                )
                .for_each(|(row, (&t, (&lse, &g)))| {
                    for z in row.iter_mut() {
                        *z = exp_in_range(*z - lse) * g;
                    }
                    let t = t as usize;
                    if (v0..v0 + rows_v).contains(&t) {
                        row[t - v0] -= g;
                    }
                });
            if self.w.compute() == ComputeDtype::Bf16 {
                let p = Bf16Rows::from_f32(&logits, rows_v);
                bf16mm::g_w(&self.w, v0..v0 + rows_v, &p, &mut gx, v0 > 0);
                continue;
            }
            // SAFETY: gx is n × h; logits n × rows_v; the tile rows_v × h.
            unsafe {
                gemm_into(
                    (n, h, rows_v),
                    (gx.as_mut_ptr(), 1, h as isize),
                    v0 > 0,
                    (logits.as_ptr(), 1, rows_v as isize),
                    (tile.as_ptr(), 1, h as isize),
                );
            }
        }
        Ok(Some(Tensor::from_vec(gx, (n, h), hidden.device())?))
    }
}
