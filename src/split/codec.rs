//! The cut's messages: a (rows × cols) matrix of activations or gradients — one row per real
//! token, padding never travels — encoded as bytes. The bytes counted on the clock and in the
//! records are these buffers' lengths.
//!
//! Layout: one codec byte, rows and cols as little-endian u32, then
//! - `None`: rows·cols f32;
//! - `Fp16`: rows·cols IEEE half (round to nearest, clamped to ±65504);
//! - `Int8`: per row an f32 scale s = max|x|/127, then cols i8 q = round(x/s): |x − q·s| ≤ s/2;
//! - `TopK`: per row the k = ⌈fraction·cols⌉ values largest in magnitude as (u16 column, f32
//!   value) pairs, ties to the lower column; the rest decode to 0.

use serde::{Deserialize, Serialize};

use crate::compress::{from_f16, to_f16};

/// How a cut message is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CutCompression {
    /// f32, 4 bytes per value.
    #[default]
    None,
    /// IEEE half precision, 2 bytes per value.
    Fp16,
    /// 8-bit integers with one f32 scale per token (row).
    Int8,
    /// The `fraction` of each token's values largest in magnitude, 6 bytes per kept value.
    TopK {
        /// Share of each row kept, in (0, 1].
        fraction: f64,
    },
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than its header says.
    #[error("{kind} message of {len} bytes, {expected} expected for its {rows}×{cols} header")]
    Length {
        /// Its codec.
        kind: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes its header implies.
        expected: usize,
        /// Rows in the header.
        rows: usize,
        /// Columns in the header.
        cols: usize,
    },
    /// An unknown codec byte.
    #[error("unknown codec byte {0}")]
    Codec(u8),
    /// A top-k column outside the row.
    #[error("top-k column {column} outside a row of {cols}")]
    Column {
        /// The column read.
        column: usize,
        /// Row width.
        cols: usize,
    },
}

/// An encoded matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The message's bytes.
    pub bytes: Vec<u8>,
}

const HEADER: usize = 9;

impl CutCompression {
    /// Short label: `none`, `fp16`, `int8`, `top10%`.
    pub fn label(&self) -> String {
        match *self {
            CutCompression::None => "none".into(),
            CutCompression::Fp16 => "fp16".into(),
            CutCompression::Int8 => "int8".into(),
            CutCompression::TopK { fraction } => {
                format!("top{}%", crate::fmt::compact(fraction * 100.0))
            }
        }
    }

    fn tag(&self) -> u8 {
        match self {
            CutCompression::None => 0,
            CutCompression::Fp16 => 1,
            CutCompression::Int8 => 2,
            CutCompression::TopK { .. } => 3,
        }
    }

    /// Values kept per row by `TopK` (all of them otherwise).
    pub fn kept(&self, cols: usize) -> usize {
        match *self {
            CutCompression::TopK { fraction } => {
                ((fraction * cols as f64).ceil() as usize).clamp(1, cols.max(1))
            }
            _ => cols,
        }
    }

    /// The encoded size of a rows × cols message, bytes (what [`Self::encode`] returns).
    pub fn encoded_len(&self, rows: usize, cols: usize) -> u64 {
        let body = match self {
            CutCompression::None => rows * cols * 4,
            CutCompression::Fp16 => rows * cols * 2,
            CutCompression::Int8 => rows * (4 + cols),
            CutCompression::TopK { .. } => rows * self.kept(cols) * 6,
        };
        (HEADER + body) as u64
    }

    /// Encode `data`, rows × cols row-major (cols ≤ 65,535).
    pub fn encode(&self, data: &[f32], rows: usize, cols: usize) -> Encoded {
        debug_assert_eq!(data.len(), rows * cols);
        let mut b = Vec::with_capacity(self.encoded_len(rows, cols) as usize);
        b.push(self.tag());
        b.extend_from_slice(&(rows as u32).to_le_bytes());
        b.extend_from_slice(&(cols as u32).to_le_bytes());
        for row in data.chunks(cols.max(1)).take(rows) {
            match self {
                CutCompression::None => row.iter().for_each(|v| b.extend(v.to_le_bytes())),
                CutCompression::Fp16 => row.iter().for_each(|v| b.extend(to_f16(*v).to_le_bytes())),
                CutCompression::Int8 => {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = max / 127.0;
                    b.extend(s.to_le_bytes());
                    for v in row {
                        let q = if s > 0.0 {
                            (v / s).round().clamp(-127.0, 127.0)
                        } else {
                            0.0
                        };
                        b.push(q as i8 as u8);
                    }
                }
                CutCompression::TopK { .. } => {
                    let mut order: Vec<usize> = (0..row.len()).collect();
                    let k = self.kept(cols);
                    order.sort_by(|&i, &j| row[j].abs().total_cmp(&row[i].abs()).then(i.cmp(&j)));
                    let mut keep = order[..k].to_vec();
                    keep.sort_unstable();
                    for i in keep {
                        b.extend((i as u16).to_le_bytes());
                        b.extend(row[i].to_le_bytes());
                    }
                }
            }
        }
        Encoded { bytes: b }
    }
}

impl Encoded {
    /// Its size, bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether it holds no bytes (never, for an encoded matrix).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// (rows, cols, decoded values).
    ///
    /// # Errors
    /// A short buffer, an unknown codec byte, a column outside its row.
    pub fn decode(&self) -> Result<(usize, usize, Vec<f32>), CodecError> {
        let b = &self.bytes;
        let short = |kind, expected, rows, cols| CodecError::Length {
            kind,
            len: b.len(),
            expected,
            rows,
            cols,
        };
        if b.len() < HEADER {
            return Err(short("any", HEADER, 0, 0));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let (rows, cols) = (u32_at(1), u32_at(5));
        let codec = match b[0] {
            0 => CutCompression::None,
            1 => CutCompression::Fp16,
            2 => CutCompression::Int8,
            3 => CutCompression::TopK { fraction: 0.0 },
            t => return Err(CodecError::Codec(t)),
        };
        let body = &b[HEADER..];
        let mut out = vec![0f32; rows * cols];
        let f32_at = |s: &[u8], i: usize| f32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        match codec {
            CutCompression::None | CutCompression::Fp16 | CutCompression::Int8 => {
                let expected = codec.encoded_len(rows, cols) as usize;
                if b.len() != expected {
                    return Err(short(codec_name(b[0]), expected, rows, cols));
                }
                decode_dense(codec, body, cols, &mut out);
            }
            CutCompression::TopK { .. } => {
                if rows == 0 || body.len() % (6 * rows) != 0 {
                    return Err(short("top-k", HEADER + 6 * rows, rows, cols));
                }
                let k = body.len() / (6 * rows);
                for (r, pairs) in body.chunks(6 * k.max(1)).enumerate().take(rows) {
                    for p in pairs.chunks(6) {
                        let column = u16::from_le_bytes([p[0], p[1]]) as usize;
                        if column >= cols {
                            return Err(CodecError::Column { column, cols });
                        }
                        out[r * cols + column] = f32_at(p, 2);
                    }
                }
            }
        }
        Ok((rows, cols, out))
    }
}

fn codec_name(tag: u8) -> &'static str {
    ["f32", "fp16", "int8", "top-k"][tag as usize]
}

fn decode_dense(codec: CutCompression, body: &[u8], cols: usize, out: &mut [f32]) {
    match codec {
        CutCompression::None => {
            for (o, c) in out.iter_mut().zip(body.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        CutCompression::Fp16 => {
            for (o, c) in out.iter_mut().zip(body.chunks_exact(2)) {
                *o = from_f16(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        _ => {
            for (row, chunk) in out.chunks_mut(cols.max(1)).zip(body.chunks_exact(4 + cols)) {
                let s = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                for (o, q) in row.iter_mut().zip(&chunk[4..]) {
                    *o = *q as i8 as f32 * s;
                }
            }
        }
    }
}
