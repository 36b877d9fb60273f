//! Split fine-tuning (SplitFed — Thapa et al. 2022; SplitLoRA — Lin et al. 2024; U-shaped
//! split learning — Vepakomma et al. 2018): a client keeps the embedding and the first
//! `cut_layer` decoder blocks with its private text; the server runs the rest. What travels
//! every step is the activations at the cut (up) and their gradient (down), each encoded by a
//! [`CutCompression`]; under `UShaped` the client also keeps the final norm and the LM head, so
//! the server sends its top activations down and gets their gradient back — the labels never
//! leave the client.
//!
//! LoRA (or DoRA, IA³) adapts both sides. Under SplitFed the server keeps one copy of its side
//! per client (SplitFed v1), so a round ends as a flat round does: every client's whole update
//! is folded by the strategy (FedAvg) — the client-side half travels to the server as an
//! adapter upload, the server-side half never leaves it.
//!
//! The two halves of a step run on the client's slot, one after the other, as two autograd
//! graphs joined only by the encoded messages ([`step`]); the clock prices each half on its own
//! device (the client's profile, `server_flops`) and each message on the client's link
//! ([`cost`]). The gradient through a lossy codec is the straight-through one: the server's
//! gradient with respect to the *decoded* activations is encoded, decoded and handed to the
//! client as the gradient of what it computed.

pub mod codec;
pub mod cost;
pub mod step;

use serde::{Deserialize, Serialize};

pub use codec::{CutCompression, Encoded};

fn default_server_flops() -> f64 {
    DEFAULT_SERVER_FLOPS
}

/// The server's sustained training throughput unless a scenario says otherwise, FLOP/s (an
/// accelerator at a realistic utilisation: 40 % of an A100's 125 dense bf16 TFLOP/s).
pub const DEFAULT_SERVER_FLOPS: f64 = 5e13;

/// Who keeps the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SplitMode {
    /// The server runs the blocks after the cut, the final norm, the head and the loss: the
    /// client sends the labels (the response tokens it trains on) with its activations.
    #[default]
    SplitFed,
    /// The client keeps the final norm, the head and the loss; the server only runs the
    /// blocks after the cut. No label token leaves the client.
    UShaped,
}

/// The scenario's `topology: Split(...)` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Decoder blocks on the client (0: only the embedding), below the model's layer count.
    pub cut_layer: usize,
    /// SplitFed or U-shaped.
    #[serde(default)]
    pub mode: SplitMode,
    /// How activations are encoded (the cut's up message, and U-shaped's top down message).
    #[serde(default)]
    pub activation_compression: CutCompression,
    /// How gradients are encoded (the cut's down message, and U-shaped's top up message).
    #[serde(default)]
    pub gradient_compression: CutCompression,
    /// The server's training throughput, FLOP/s (what its half of each step costs).
    #[serde(default = "default_server_flops")]
    pub server_flops: f64,
}

impl SplitConfig {
    /// Whether adapter tensor of decoder `layer` lives on the client.
    pub fn client_side(&self, layer: usize) -> bool {
        layer < self.cut_layer
    }

    /// Short label for tables: `splitfed@2 int8/none`.
    pub fn label(&self) -> String {
        let mode = match self.mode {
            SplitMode::SplitFed => "splitfed",
            SplitMode::UShaped => "ushaped",
        };
        format!(
            "{mode}@{} {}/{}",
            self.cut_layer,
            self.activation_compression.label(),
            self.gradient_compression.label()
        )
    }
}

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What a message between a client and the server carries during a split step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Activations at the cut (up).
    Activations,
    /// The response tokens the loss is computed on, with their positions (SplitFed, up).
    Labels,
    /// The gradient of the loss with respect to the cut's activations (down).
    Gradients,
    /// The server's last block's output (U-shaped, down).
    TopActivations,
    /// The gradient with respect to those (U-shaped, up).
    TopGradients,
}

/// One message of a split step: its kind, direction and encoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    /// What it carries.
    pub kind: MessageKind,
    /// Which way it went.
    pub direction: Direction,
    /// Its encoded size, bytes.
    pub bytes: u64,
}

/// What a client's split training sent, summed over its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SplitTraffic {
    /// Bytes client → server.
    pub up_bytes: u64,
    /// Bytes server → client.
    pub down_bytes: u64,
    /// Messages either way.
    pub messages: u64,
}

impl SplitTraffic {
    /// Count one message.
    pub fn add(&mut self, m: &SentMessage) {
        match m.direction {
            Direction::Up => self.up_bytes += m.bytes,
            Direction::Down => self.down_bytes += m.bytes,
        }
        self.messages += 1;
    }

    /// The sum of two tallies.
    pub fn plus(self, o: SplitTraffic) -> SplitTraffic {
        SplitTraffic {
            up_bytes: self.up_bytes + o.up_bytes,
            down_bytes: self.down_bytes + o.down_bytes,
            messages: self.messages + o.messages,
        }
    }
}

/// Errors of split training and of the cut's messages.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// A message did not decode.
    #[error("cut message: {0}")]
    Codec(#[from] codec::CodecError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The server's half found no gradient for the cut's activations.
    #[error("the server half produced no gradient for the cut's activations")]
    NoCutGradient,
}

impl From<candle_core::Error> for SplitError {
    fn from(e: candle_core::Error) -> Self {
        SplitError::Model(crate::model::ModelError::Candle(e))
    }
}
