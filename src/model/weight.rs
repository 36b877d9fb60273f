//! The frozen base's weights in the precision a scenario chooses (`model.base_precision`):
//! f32 tensors, or rows packed as bf16 or GGUF blocks (Q8_0, Q4_1, … as candle's
//! `k_quants` define them), dequantised inside the matmul ([`super::qmatmul`]).
//!
//! QLoRA's recipe (Dettmers et al. 2023): the base stays in its compact form, adapters,
//! optimiser state and the loss stay in f32. Only the 2-D weights are packed — the token
//! embedding (and tied head) and the seven projections of each block; norms stay f32.

use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bf16mm::ComputeDtype;
pub use super::footprint::{Footprint, FormatShare};
use super::q8dot::Q8Row;
use super::ModelError;

/// How the frozen base is held in memory (`model.base_precision`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BasePrecision {
    /// Every weight in f32 (the reference; 4 bytes per value).
    #[default]
    F32,
    /// bfloat16 (2 bytes per value; the same exponent range as f32).
    Bf16,
    /// GGUF Q8_0: blocks of 32 int8 values with one f16 scale (1.06 bytes per value).
    Q8_0,
    /// GGUF Q4_1 projections (blocks of 32 4-bit values, an f16 scale and minimum: 0.625 bytes
    /// per value); the embedding, which is also the tied output head, in Q8_0 as llama.cpp's
    /// Q4_1 files store it.
    Q4_1,
    /// Each tensor as the GGUF file stores it (any GGUF block type); f32 for other sources.
    Stored,
}

impl std::str::FromStr for BasePrecision {
    type Err = String;

    /// A name as scenarios spell it (any case): F32, Bf16, Q8_0, Q4_1, Stored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::F32, Self::Bf16, Self::Q8_0, Self::Q4_1, Self::Stored]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("{s:?} is not a base precision: use F32, Bf16, Q8_0, Q4_1 or Stored")
            })
    }
}

/// Which of the base's 2-D weights a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRole {
    /// The token embedding (and tied output head) or an untied output head.
    Embedding,
    /// A decoder block's projection.
    Projection,
}

impl BasePrecision {
    /// The format a weight is held in: `stored` is its type in a GGUF file (None for other
    /// sources), `cols` its input width. A width that is not a whole number of blocks keeps
    /// the weight in f32 (as llama.cpp's quantiser falls back); [`Footprint`] reports it.
    pub fn format(self, role: WeightRole, stored: Option<GgmlDType>, cols: usize) -> GgmlDType {
        let want = match (self, role) {
            (Self::F32, _) => GgmlDType::F32,
            (Self::Bf16, _) => GgmlDType::BF16,
            (Self::Q8_0, _) | (Self::Q4_1, WeightRole::Embedding) => GgmlDType::Q8_0,
            (Self::Q4_1, WeightRole::Projection) => GgmlDType::Q4_1,
            (Self::Stored, _) => match stored {
                Some(t) if block_type(t) => t,
                _ => GgmlDType::F32,
            },
        };
        if cols % want.block_size() == 0 {
            want
        } else {
            GgmlDType::F32
        }
    }

    /// Its name as scenarios spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "Bf16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_1 => "Q4_1",
            Self::Stored => "Stored",
        }
    }
}

/// GGUF block types fedsim keeps packed (candle's dequantisers cover each).
fn block_type(t: GgmlDType) -> bool {
    use GgmlDType::*;
    matches!(
        t,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | BF16
    )
}

/// Bytes of `rows × cols` values held as `format`.
pub fn format_bytes(format: GgmlDType, rows: usize, cols: usize) -> usize {
    rows * cols / format.block_size() * format.type_size()
}

/// Rows of a packed weight, each a whole number of blocks.
trait Rows: Send + Sync {
    /// Dequantise row `r` into `out` (`cols` values).
    fn row(&self, r: usize, out: &mut [f32]);
    /// Row `r` as stored (its blocks' bytes).
    fn raw_row(&self, r: usize) -> &[u8];
    /// The same rows in another order: row i of the result is row `order[i]`.
    fn permuted(&self, order: &[usize]) -> Box<dyn Rows>;
    /// Bytes held.
    fn bytes(&self) -> usize;
}

struct Blocks<T> {
    blocks: Vec<T>,
    per_row: usize,
}

impl<T: GgmlType + 'static> Rows for Blocks<T> {
    fn row(&self, r: usize, out: &mut [f32]) {
        T::to_float(&self.blocks[r * self.per_row..(r + 1) * self.per_row], out);
    }

    fn raw_row(&self, r: usize) -> &[u8] {
        let blocks = &self.blocks[r * self.per_row..(r + 1) * self.per_row];
        // SAFETY: the blocks are plain `repr(C)` data; the slice covers exactly their bytes.
        unsafe {
            std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
        }
    }

    fn permuted(&self, order: &[usize]) -> Box<dyn Rows> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for &r in order {
            blocks.extend_from_slice(&self.blocks[r * self.per_row..(r + 1) * self.per_row]);
        }
        Box::new(Blocks {
            blocks,
            per_row: self.per_row,
        })
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<T>()
    }
}

impl<T: GgmlType + 'static> Blocks<T> {
    /// Quantise `values` (rows × cols, row-major) row by row.
    fn quantize(values: &[f32], cols: usize) -> Box<dyn Rows> {
        let per_row = cols / T::BLCK_SIZE;
        let rows = values.len() / cols;
        let mut blocks = vec![T::zeros(); rows * per_row];
        for (src, dst) in values
            .chunks_exact(cols)
            .zip(blocks.chunks_exact_mut(per_row))
        {
            T::from_float(src, dst);
        }
        Box::new(Self { blocks, per_row })
    }

    /// The blocks as a GGUF file stores them, copied byte for byte.
    fn from_bytes(bytes: &[u8], cols: usize) -> Box<dyn Rows> {
        let size = std::mem::size_of::<T>();
        let n = bytes.len() / size;
        let mut blocks = vec![T::zeros(); n];
        // SAFETY: GGUF block types are `repr(C)` structs of integers and f16 values, for which
        // every bit pattern is valid; `blocks` owns exactly n·size bytes and `bytes` has them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr().cast::<u8>(),
                n * size,
            );
        }
        Box::new(Self {
            blocks,
            per_row: cols / T::BLCK_SIZE,
        })
    }
}

/// Dispatch on a GGUF block type: `$f::<Block>(args)`.
macro_rules! by_type {
    ($t:expr, $f:ident ( $($a:expr),* )) => {
        match $t {
            GgmlDType::BF16 => Some(Blocks::<half::bf16>::$f($($a),*)),
            GgmlDType::Q4_0 => Some(Blocks::<BlockQ4_0>::$f($($a),*)),
            GgmlDType::Q4_1 => Some(Blocks::<BlockQ4_1>::$f($($a),*)),
            GgmlDType::Q5_0 => Some(Blocks::<BlockQ5_0>::$f($($a),*)),
            GgmlDType::Q5_1 => Some(Blocks::<BlockQ5_1>::$f($($a),*)),
            GgmlDType::Q8_0 => Some(Blocks::<BlockQ8_0>::$f($($a),*)),
            GgmlDType::Q2K => Some(Blocks::<BlockQ2K>::$f($($a),*)),
            GgmlDType::Q3K => Some(Blocks::<BlockQ3K>::$f($($a),*)),
            GgmlDType::Q4K => Some(Blocks::<BlockQ4K>::$f($($a),*)),
            GgmlDType::Q5K => Some(Blocks::<BlockQ5K>::$f($($a),*)),
            GgmlDType::Q6K => Some(Blocks::<BlockQ6K>::$f($($a),*)),
            _ => None,
        }
    };
}

/// A weight (rows, cols) packed row by row.
pub struct Packed {
    rows: usize,
    cols: usize,
    format: GgmlDType,
    data: Arc<dyn Rows>,
    /// What training's matmuls multiply in (`model.compute_dtype`).
    compute: ComputeDtype,
}

impl Packed {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How its values are held.
    pub fn format(&self) -> GgmlDType {
        self.format
    }

    /// What training's matmuls against it multiply in.
    pub fn compute(&self) -> ComputeDtype {
        self.compute
    }

    /// Σ x·row `r`, `buf` a scratch row (`cols` values).
    pub fn dot_row(&self, r: usize, x: &[f32], buf: &mut [f32]) -> f32 {
        use super::kernels;
        match self.format {
            GgmlDType::Q8_0 => kernels::dot_q8_0(self.data.raw_row(r), x),
            GgmlDType::Q4_1 => kernels::dot_q4_1(self.data.raw_row(r), x),
            _ => {
                self.data.row(r, buf);
                kernels::dot(x, buf)
            }
        }
    }

    /// Row `r` as stored: its blocks' bytes (GGUF's layout).
    pub fn raw_row(&self, r: usize) -> &[u8] {
        self.data.raw_row(r)
    }

    /// Whether [`Self::dot_row_q8`] covers this format (Q8_0 and Q4_1).
    pub fn takes_q8(&self) -> bool {
        matches!(self.format, GgmlDType::Q8_0 | GgmlDType::Q4_1)
    }

    /// Σ x·row `r` for an activation row quantised to 8 bits ([`Q8Row`]), in integers within
    /// each block; None for a format [`Self::takes_q8`] refuses.
    pub fn dot_row_q8(&self, r: usize, x: &Q8Row) -> Option<f32> {
        match self.format {
            GgmlDType::Q8_0 => Some(super::q8dot::dot_q8_0(self.data.raw_row(r), x)),
            GgmlDType::Q4_1 => Some(super::q8dot::dot_q4_1(self.data.raw_row(r), x)),
            _ => None,
        }
    }

    /// Dequantise rows `lo..lo + out.len() / cols` into `out`.
    pub fn rows_into(&self, lo: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.data.row(lo + i, row);
        }
    }
}

/// One frozen 2-D weight (out, in): an f32 tensor on the model's device, or packed rows on
/// the CPU. Cloning shares the values.
#[derive(Clone)]
pub enum FrozenWeight {
    /// f32, as candle holds it.
    F32(Tensor),
    /// bf16 or GGUF blocks.
    Packed(Arc<Packed>),
}

impl FrozenWeight {
    /// `w` (rows, cols, f32) held as `format` (F32 keeps the tensor).
    ///
    /// # Errors
    /// A candle error; [`ModelError::Layout`] for a format fedsim does not pack or a width that
    /// is not a whole number of blocks.
    pub fn new(w: Tensor, format: GgmlDType) -> Result<Self, ModelError> {
        if format == GgmlDType::F32 {
            return Ok(Self::F32(w));
        }
        let (rows, cols) = w.dims2()?;
        check_blocks(format, cols)?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let data = by_type!(format, quantize(&values, cols)).ok_or_else(|| unpackable(format))?;
        Ok(Self::packed(rows, cols, format, data))
    }

    /// A GGUF tensor kept byte for byte in its own block type.
    ///
    /// # Errors
    /// A block type fedsim does not keep packed, or a candle error.
    pub fn from_gguf(q: &QTensor) -> Result<Self, ModelError> {
        let (rows, cols) = q.shape().dims2()?;
        let format = q.dtype();
        check_blocks(format, cols)?;
        let bytes = q.data()?;
        let data = by_type!(format, from_bytes(&bytes, cols)).ok_or_else(|| unpackable(format))?;
        Ok(Self::packed(rows, cols, format, data))
    }

    fn packed(rows: usize, cols: usize, format: GgmlDType, data: Box<dyn Rows>) -> Self {
        Self::Packed(Arc::new(Packed {
            rows,
            cols,
            format,
            data: Arc::from(data),
            compute: ComputeDtype::F32,
        }))
    }

    /// The same values (shared), a packed weight's training matmuls multiplying in `compute`
    /// (`model.compute_dtype`); an f32 weight is returned as it is.
    pub fn computing_in(&self, compute: ComputeDtype) -> Self {
        match self {
            Self::F32(_) => self.clone(),
            Self::Packed(p) => Self::Packed(Arc::new(Packed {
                data: Arc::clone(&p.data),
                compute,
                ..**p
            })),
        }
    }

    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::F32(t) => {
                let d = t.dims();
                (d[0], d.get(1).copied().unwrap_or(1))
            }
            Self::Packed(p) => (p.rows, p.cols),
        }
    }

    /// How the values are held.
    pub fn format(&self) -> GgmlDType {
        match self {
            Self::F32(_) => GgmlDType::F32,
            Self::Packed(p) => p.format,
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(t) => t.elem_count() * 4,
            Self::Packed(p) => p.data.bytes(),
        }
    }

    /// The values as an f32 tensor on `device` (dequantised when packed).
    ///
    /// # Errors
    /// A candle error.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, ModelError> {
        match self {
            Self::F32(t) => Ok(t.clone()),
            Self::Packed(p) => {
                let mut v = vec![0f32; p.rows * p.cols];
                p.rows_into(0, &mut v);
                Ok(Tensor::from_vec(v, (p.rows, p.cols), device)?)
            }
        }
    }

    /// Rows `ids` as an f32 tensor (ids.len(), cols): an embedding lookup.
    ///
    /// # Errors
    /// A candle error, or an id past the last row.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Self::F32(t) => Ok(t.index_select(&ids.flatten_all()?, 0)?),
            Self::Packed(p) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut v = vec![0f32; ids.len() * p.cols];
                for (&id, row) in ids.iter().zip(v.chunks_exact_mut(p.cols)) {
                    if id as usize >= p.rows {
                        return Err(ModelError::Layout(format!(
                            "token id {id} is past the vocabulary of {}",
                            p.rows
                        )));
                    }
                    p.data.row(id as usize, row);
                }
                Ok(Tensor::from_vec(v, (ids.len(), p.cols), &Device::Cpu)?)
            }
        }
    }

    /// The same weight with its rows reordered: row i of the result is row `order[i]`.
    ///
    /// # Errors
    /// A candle error.
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self, ModelError> {
        Ok(match self {
            Self::F32(t) => {
                let idx: Vec<u32> = order.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, order.len(), t.device())?;
                Self::F32(t.index_select(&idx, 0)?.contiguous()?)
            }
            Self::Packed(p) => Self::packed(p.rows, p.cols, p.format, p.data.permuted(order))
                .computing_in(p.compute),
        })
    }
}

fn check_blocks(format: GgmlDType, cols: usize) -> Result<(), ModelError> {
    if cols % format.block_size() != 0 {
        return Err(ModelError::Layout(format!(
            "a row of {cols} values is not a whole number of {format:?} blocks of {}",
            format.block_size()
        )));
    }
    Ok(())
}

fn unpackable(format: GgmlDType) -> ModelError {
    ModelError::Layout(format!("fedsim does not hold weights as {format:?}"))
}
