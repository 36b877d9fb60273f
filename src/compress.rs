//! Update compression: what a client does to its update before upload (`compression:` in a
//! scenario) — half precision, block quantisation to 8 or 4 bits with power-of-two scales
//! (optionally with stochastic rounding), or top-k sparsification with error feedback (Stich
//! et al. 2018).
//!
//! Every decoded value is a plain `f32` that the exact fold takes as it takes an uncompressed
//! one: half-precision values and `q · 2ᵉ` (with e ≥ −40) are exact in `f32` and lie on the
//! fold's 2⁻⁴⁰ grid, and top-k sends the kept values unchanged. So aggregation stays exact and
//! order-independent, and the bytes counted are those of the real encoded message: a
//! safetensors buffer whose metadata carries the codec and one `f64` scale.
//!
//! Under client-side DP clipping the bound is enforced **after decoding**: the client decodes
//! its own message and, when the decoded vector is longer than C, sets the message's scale to
//! C/‖decoded‖, which the aggregator applies exactly as [`crate::privacy::clip_l2`] does. What
//! is folded therefore has norm ≤ C whatever the codec's rounding did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, RoundId};
use crate::model::AdapterLayout;

mod quantize;
mod topk;
mod wire;

pub use quantize::{dequantize_block, from_f16, quantize_block, to_f16, BLOCK};
pub use wire::Message;

/// What a client does to its update before upload.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Compression {
    /// The update as `f32` (4 bytes per value).
    #[default]
    None,
    /// IEEE half precision, rounded to nearest (2 bytes per value).
    Fp16,
    /// Symmetric block quantisation: blocks of 32 values share a power-of-two scale.
    Quantize {
        /// 8 or 4 bits per value.
        bits: u8,
        /// Round up or down at random with the probability that makes the decoded value
        /// unbiased (seeded per round and client); otherwise round to nearest.
        #[serde(default)]
        stochastic_rounding: bool,
    },
    /// Keep the `fraction` of values largest in magnitude (over the whole update), sent as
    /// (u32 index, f32 value) pairs.
    TopK {
        /// Share of values kept, in (0, 1].
        fraction: f64,
        /// Add what was not sent to the next round's update (a per-client residual).
        #[serde(default)]
        error_feedback: bool,
    },
}

impl Compression {
    /// Short label (`fp16`, `q8`, `q4-sr`, `top1%-ef`…) for tables and metrics.
    pub fn label(&self) -> String {
        match *self {
            Compression::None => "none".into(),
            Compression::Fp16 => "fp16".into(),
            Compression::Quantize {
                bits,
                stochastic_rounding,
            } => format!("q{bits}{}", if stochastic_rounding { "-sr" } else { "" }),
            Compression::TopK {
                fraction,
                error_feedback,
            } => format!(
                "top{}%{}",
                crate::fmt::compact(fraction * 100.0),
                if error_feedback { "-ef" } else { "" }
            ),
        }
    }

    /// Whether a client keeps a residual between rounds.
    pub fn error_feedback(&self) -> bool {
        matches!(
            self,
            Compression::TopK {
                error_feedback: true,
                ..
            }
        )
    }
}

/// The run's compression as `summary.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionRecord {
    /// [`Compression::label`].
    pub codec: String,
    /// Bytes of one compressed upload.
    pub bytes_per_upload: u64,
    /// Bytes of the same update uncompressed (f32 safetensors).
    pub plain_bytes_per_upload: u64,
    /// plain / compressed.
    pub ratio: f64,
}

impl CompressionRecord {
    /// The record of `compression` on `layout` (None without compression).
    pub fn of(compression: Compression, layout: Arc<AdapterLayout>) -> Option<Self> {
        if compression == Compression::None {
            return None;
        }
        let zeros = crate::model::AdapterSet::new(layout.clone(), vec![0.0; layout.len()]);
        let plain = zeros.to_safetensors().map_or(0, |b| b.len() as u64);
        let bytes = Codec::new(compression, layout).encoded_len();
        Some(Self {
            codec: compression.label(),
            bytes_per_upload: bytes,
            plain_bytes_per_upload: plain,
            ratio: plain as f64 / bytes.max(1) as f64,
        })
    }
}

/// Why an update could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The message is not a safetensors buffer of this codec and layout.
    #[error("compressed update: {what}")]
    Malformed {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The safetensors container could not be written or read.
    #[error("compressed update: {0}")]
    Container(#[from] safetensors::SafeTensorError),
    /// A tensor of the message has the wrong dtype or size.
    #[error("compressed update: tensor {name} has {found} bytes, expected {expected}")]
    Size {
        /// The tensor.
        name: String,
        /// Bytes found.
        found: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// What one client's round looks like to the codec: its seeded stochastic rounding.
#[derive(Debug, Clone, Copy)]
pub struct EncodeFor {
    /// Master seed.
    pub seed: u64,
    /// The round.
    pub round: RoundId,
    /// The client.
    pub client: ClientId,
}

/// A codec for one adapter layout.
#[derive(Debug, Clone)]
pub struct Codec {
    compression: Compression,
    layout: Arc<AdapterLayout>,
}

/// An encoded update: the bytes on the wire and the values the aggregator will decode from
/// them (what error feedback subtracts).
#[derive(Debug)]
pub struct Encoded {
    /// The message.
    pub payload: Vec<u8>,
    /// Its decoded values, with the scale applied.
    pub decoded: Vec<f32>,
    /// The scale set by clipping after decoding (1 when within the bound).
    pub scale: f64,
}

impl Codec {
    /// A codec for `compression` on adapters of `layout`.
    pub fn new(compression: Compression, layout: Arc<AdapterLayout>) -> Self {
        Self {
            compression,
            layout,
        }
    }

    /// Its compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Values in an update.
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether the layout is empty.
    pub fn is_empty(&self) -> bool {
        self.layout.len() == 0
    }

    /// Encode `values`; with `clip`, bound the decoded vector's L2 norm by it (the scale).
    ///
    /// # Errors
    /// Fails when the container cannot be written (a broken invariant).
    pub fn encode(
        &self,
        values: &[f32],
        who: EncodeFor,
        clip: Option<f64>,
    ) -> Result<Encoded, CompressError> {
        assert_eq!(values.len(), self.layout.len(), "update length mismatch");
        let message = Message::encode(self.compression, &self.layout, values, who);
        let mut decoded = vec![0f32; values.len()];
        message.decode_into(&self.layout, 1.0, &mut decoded);
        // Clipping the decoded vector is the scale the aggregator will apply.
        let scale = match clip.map(|c| (c, crate::privacy::clip_l2(&mut decoded, c))) {
            Some((c, r)) if r.clipped => c / r.norm,
            _ => 1.0,
        };
        let payload = message.to_bytes(&self.layout, scale)?;
        Ok(Encoded {
            payload,
            decoded,
            scale,
        })
    }

    /// Decode a message into `out` (of the layout's length).
    ///
    /// # Errors
    /// A message that is not this codec's on this layout.
    pub fn decode_into(&self, payload: &[u8], out: &mut [f32]) -> Result<(), CompressError> {
        assert_eq!(out.len(), self.layout.len(), "buffer length mismatch");
        let (message, scale) = Message::from_bytes(self.compression, &self.layout, payload)?;
        message.decode_into(&self.layout, 1.0, out);
        if scale != 1.0 {
            apply_scale(out, scale);
        }
        Ok(())
    }

    /// Bytes of every encoded update (they do not depend on the values): what the virtual
    /// clock prices an upload at before the client trains.
    pub fn encoded_len(&self) -> u64 {
        let zeros = vec![0f32; self.layout.len()];
        let who = EncodeFor {
            seed: 0,
            round: 1,
            client: 0,
        };
        let message = Message::encode(self.compression, &self.layout, &zeros, who);
        message
            .to_bytes(&self.layout, 1.0)
            .map_or(0, |b| b.len() as u64)
    }
}

/// Multiply by `scale` as [`crate::privacy::clip_l2`] does.
fn apply_scale(values: &mut [f32], scale: f64) {
    for v in values.iter_mut() {
        *v = (f64::from(*v) * scale) as f32;
    }
}

/// Error feedback's per-client residuals: what each client's compression has not yet sent.
/// Shared by the client actors (each touches only its own entry) and saved in checkpoints.
#[derive(Debug, Default)]
pub struct Residuals {
    by_client: Mutex<BTreeMap<ClientId, Vec<f32>>>,
}

impl Residuals {
    /// Residuals restored from a checkpoint.
    pub fn restored(saved: Vec<(ClientId, Vec<f32>)>) -> Self {
        Self {
            by_client: Mutex::new(saved.into_iter().collect()),
        }
    }

    /// Add `client`'s residual to `update` (before encoding).
    pub fn add_to(&self, client: ClientId, update: &mut [f32]) {
        let map = self.by_client.lock().expect("residuals lock");
        if let Some(r) = map.get(&client) {
            for (u, e) in update.iter_mut().zip(r) {
                *u += e;
            }
        }
    }

    /// Keep `client`'s new residual: what it meant to send minus what was decoded.
    pub fn keep(&self, client: ClientId, meant: &[f32], decoded: &[f32]) {
        let residual: Vec<f32> = meant.iter().zip(decoded).map(|(m, d)| m - d).collect();
        self.by_client
            .lock()
            .expect("residuals lock")
            .insert(client, residual);
    }

    /// Every residual, by client (a checkpoint).
    pub fn snapshot(&self) -> Vec<(ClientId, Vec<f32>)> {
        let map = self.by_client.lock().expect("residuals lock");
        map.iter().map(|(c, r)| (*c, r.clone())).collect()
    }

    /// Clients holding a residual.
    pub fn count(&self) -> usize {
        self.by_client.lock().expect("residuals lock").len()
    }
}
