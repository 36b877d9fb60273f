//! The encoded update as it travels: a safetensors buffer. Half precision keeps PEFT's tensor
//! names (as `F16`); a quantised update is one `q` tensor over the flat update in layout order
//! (`I8`, or `U8` nibbles at 4 bits, low nibble first) with `exp` (`I8`, one exponent per
//! block; blocks never cross an adapter tensor); top-k is `indices` (`U32`) and `values`
//! (`F32`). The metadata names the codec and carries the clip scale as the 16 hex digits of
//! an `f64`, so every message of a run has the same length.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::quantize::{
    dequantize_block, from_f16, pack_nibbles, quantize_block, to_f16, unpack_nibbles, BLOCK,
};
use super::{topk, CompressError, Compression, EncodeFor};
use crate::model::AdapterLayout;
use crate::rng::{purpose, rng_for};

/// An encoded update, before or after the container.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Every value as `f32` (no compression).
    F32(Vec<f32>),
    /// Every value as half-precision bits.
    Fp16(Vec<u16>),
    /// Block-quantised integers and one exponent per block (blocks never cross tensors).
    Quantized {
        /// 8 or 4.
        bits: u8,
        /// One integer per value, in layout order.
        q: Vec<i8>,
        /// One exponent per block, in layout order.
        exps: Vec<i8>,
    },
    /// The kept values and their indices (ascending) in the flat update.
    Sparse {
        /// Where.
        indices: Vec<u32>,
        /// What.
        values: Vec<f32>,
    },
}

const CODEC_KEY: &str = "fedsim.compression";
const SCALE_KEY: &str = "fedsim.scale";

impl Message {
    /// Encode `values` (laid out as `layout`) with `compression`.
    pub fn encode(
        compression: Compression,
        layout: &AdapterLayout,
        values: &[f32],
        who: EncodeFor,
    ) -> Self {
        match compression {
            Compression::None => Message::F32(values.to_vec()),
            Compression::Fp16 => Message::Fp16(values.iter().map(|&v| to_f16(v)).collect()),
            Compression::Quantize {
                bits,
                stochastic_rounding,
            } => {
                let mut rng = stochastic_rounding.then(|| {
                    rng_for(
                        who.seed,
                        &[purpose::COMPRESS, who.round as u64, who.client as u64],
                    )
                });
                let mut q = vec![0i8; values.len()];
                let mut exps = Vec::with_capacity(values.len() / BLOCK + layout.tensors().len());
                for t in layout.tensors() {
                    let range = t.offset..t.offset + t.numel();
                    for (x, out) in values[range.clone()]
                        .chunks(BLOCK)
                        .zip(q[range].chunks_mut(BLOCK))
                    {
                        exps.push(quantize_block(x, bits, rng.as_mut(), out));
                    }
                }
                Message::Quantized { bits, q, exps }
            }
            Compression::TopK { fraction, .. } => {
                let indices = topk::select(values, topk::kept(fraction, values.len()));
                let values = indices.iter().map(|&i| values[i as usize]).collect();
                Message::Sparse { indices, values }
            }
        }
    }

    /// Decode into `out` (every value written), times `scale` when it is not 1.
    pub fn decode_into(&self, layout: &AdapterLayout, scale: f64, out: &mut [f32]) {
        match self {
            Message::F32(v) => out.copy_from_slice(v),
            Message::Fp16(bits) => {
                for (o, &b) in out.iter_mut().zip(bits) {
                    *o = from_f16(b);
                }
            }
            Message::Quantized { q, exps, .. } => {
                let mut e = exps.iter();
                for t in layout.tensors() {
                    let range = t.offset..t.offset + t.numel();
                    for (qb, ob) in q[range.clone()]
                        .chunks(BLOCK)
                        .zip(out[range].chunks_mut(BLOCK))
                    {
                        dequantize_block(qb, *e.next().expect("one exponent per block"), ob);
                    }
                }
            }
            Message::Sparse { indices, values } => {
                out.iter_mut().for_each(|v| *v = 0.0);
                for (&i, &v) in indices.iter().zip(values) {
                    out[i as usize] = v;
                }
            }
        }
        if scale != 1.0 {
            super::apply_scale(out, scale);
        }
    }

    /// The message as a safetensors buffer with the clip `scale` in its metadata.
    ///
    /// # Errors
    /// Fails when safetensors refuses the tensors (a broken invariant).
    pub fn to_bytes(&self, layout: &AdapterLayout, scale: f64) -> Result<Vec<u8>, CompressError> {
        let tensors = self.tensors(layout);
        let views = tensors
            .iter()
            .map(|(name, dtype, bytes)| {
                let n = bytes.len() * 8 / dtype.bitsize();
                TensorView::new(*dtype, vec![n], bytes).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (CODEC_KEY.to_string(), self.codec_name().to_string()),
            (SCALE_KEY.to_string(), format!("{:016x}", scale.to_bits())),
        ]);
        Ok(safetensors::tensor::serialize(views, Some(metadata))?)
    }

    /// Parse a message of `compression` on `layout`, and its clip scale.
    ///
    /// # Errors
    /// A buffer that is not safetensors, of another codec, or with tensors of the wrong size.
    pub fn from_bytes(
        compression: Compression,
        layout: &AdapterLayout,
        bytes: &[u8],
    ) -> Result<(Self, f64), CompressError> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let info = meta.metadata().as_ref();
        let field = |k: &str| info.and_then(|m| m.get(k)).map(String::as_str);
        let expected = name_of(compression);
        if field(CODEC_KEY) != Some(expected) {
            return Err(CompressError::Malformed {
                what: "its metadata names another codec than the run's",
            });
        }
        let scale = field(SCALE_KEY)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(f64::from_bits)
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1.0)
            .ok_or(CompressError::Malformed {
                what: "its scale is missing or not in (0, 1]",
            })?;
        let tensor = |name: &str, dtype: Dtype, expected: usize| {
            let view = st.tensor(name).map_err(|_| CompressError::Malformed {
                what: "a tensor of the layout is missing",
            })?;
            let data = view.data();
            if view.dtype() != dtype || data.len() != expected {
                return Err(CompressError::Size {
                    name: name.to_string(),
                    found: data.len(),
                    expected,
                });
            }
            Ok(data)
        };
        let message = parse(compression, layout, &tensor, st.len())?;
        Ok((message, scale))
    }
}

/// The metadata name of a codec.
fn name_of(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "f32",
        Compression::Fp16 => "fp16",
        Compression::Quantize { bits: 8, .. } => "q8",
        Compression::Quantize { .. } => "q4",
        Compression::TopK { .. } => "topk",
    }
}

impl Message {
    fn codec_name(&self) -> &'static str {
        match self {
            Message::F32(_) => "f32",
            Message::Fp16(_) => "fp16",
            Message::Quantized { bits: 8, .. } => "q8",
            Message::Quantized { .. } => "q4",
            Message::Sparse { .. } => "topk",
        }
    }

    /// (name, dtype, little-endian bytes) of each tensor of the container.
    fn tensors(&self, layout: &AdapterLayout) -> Vec<(String, Dtype, Vec<u8>)> {
        let per_tensor = |f: &dyn Fn(std::ops::Range<usize>) -> Vec<u8>, dtype| {
            layout
                .tensors()
                .iter()
                .map(|t| (t.peft_name(), dtype, f(t.offset..t.offset + t.numel())))
                .collect::<Vec<_>>()
        };
        match self {
            Message::F32(v) => per_tensor(&|r| le(&v[r], |x| x.to_le_bytes()), Dtype::F32),
            Message::Fp16(b) => per_tensor(&|r| le(&b[r], |x| x.to_le_bytes()), Dtype::F16),
            Message::Quantized { bits, q, exps } => {
                let (dtype, bytes) = if *bits == 8 {
                    (Dtype::I8, q.iter().map(|&x| x as u8).collect())
                } else {
                    (Dtype::U8, pack_nibbles(q))
                };
                let e = exps.iter().map(|&x| x as u8).collect();
                vec![("q".into(), dtype, bytes), ("exp".into(), Dtype::I8, e)]
            }
            Message::Sparse { indices, values } => vec![
                (
                    "indices".into(),
                    Dtype::U32,
                    le(indices, |x| x.to_le_bytes()),
                ),
                ("values".into(), Dtype::F32, le(values, |x| x.to_le_bytes())),
            ],
        }
    }
}

type TensorOf<'a, 'b> = dyn Fn(&str, Dtype, usize) -> Result<&'a [u8], CompressError> + 'b;

/// The message's tensors read back (`count`: tensors in the container).
fn parse(
    compression: Compression,
    layout: &AdapterLayout,
    tensor: &TensorOf<'_, '_>,
    count: usize,
) -> Result<Message, CompressError> {
    let n = layout.len();
    let flat = |dtype: Dtype, width: usize| -> Result<Vec<u8>, CompressError> {
        let mut out = Vec::with_capacity(n * width);
        for t in layout.tensors() {
            out.extend_from_slice(tensor(&t.peft_name(), dtype, t.numel() * width)?);
        }
        Ok(out)
    };
    let message = match compression {
        Compression::None => Message::F32(
            flat(Dtype::F32, 4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        Compression::Fp16 => Message::Fp16(
            flat(Dtype::F16, 2)?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes")))
                .collect(),
        ),
        Compression::Quantize { bits, .. } => parse_quantized(bits, layout, tensor)?,
        Compression::TopK { fraction, .. } => {
            let k = topk::kept(fraction, n);
            let idx = tensor("indices", Dtype::U32, 4 * k)?;
            let indices: Vec<u32> = idx
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            let ascending = indices.windows(2).all(|w| w[0] < w[1]);
            if !ascending || indices.last().is_some_and(|&i| i as usize >= n) {
                return Err(CompressError::Malformed {
                    what: "its indices are not ascending within the update",
                });
            }
            let values = (tensor("values", Dtype::F32, 4 * k)?)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Message::Sparse { indices, values }
        }
    };
    let expected = match &message {
        Message::Quantized { .. } | Message::Sparse { .. } => 2,
        _ => layout.tensors().len(),
    };
    if count != expected {
        return Err(CompressError::Malformed {
            what: "it holds tensors the layout does not name",
        });
    }
    Ok(message)
}

fn parse_quantized(
    bits: u8,
    layout: &AdapterLayout,
    tensor: &TensorOf<'_, '_>,
) -> Result<Message, CompressError> {
    let n = layout.len();
    let q = if bits == 8 {
        tensor("q", Dtype::I8, n)?
            .iter()
            .map(|&x| x as i8)
            .collect()
    } else {
        let mut q = Vec::with_capacity(n);
        unpack_nibbles(tensor("q", Dtype::U8, n.div_ceil(2))?, n, &mut q);
        q
    };
    let blocks: usize = layout
        .tensors()
        .iter()
        .map(|t| t.numel().div_ceil(BLOCK))
        .sum();
    let exps = tensor("exp", Dtype::I8, blocks)?
        .iter()
        .map(|&x| x as i8)
        .collect();
    let limit = super::quantize::qmax(bits) as i8;
    if q.iter().any(|&x| x < -limit || x > limit) {
        return Err(CompressError::Malformed {
            what: "an integer is outside the bit width",
        });
    }
    Ok(Message::Quantized { bits, q, exps })
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}
