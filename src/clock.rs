//! Virtual time. Each sampled client's round is a timeline on a simulated clock: download the
//! global adapter, compute, upload the update. Compute time is work ÷ device speed, where work
//! is counted in FLOPs from the model's shape and the tokens the client trains on — never host
//! wall-clock time — so simulated times are deterministic and the same on any machine.
//!
//! FLOPs of one training sequence of n tokens with a frozen base and LoRA adapters:
//! - frozen base matmuls: forward 2·P·n and the input-gradient backward 2·P·n (no weight
//!   gradients), P = the projection weights of all layers plus the LM head;
//! - causal attention: QKᵀ and AV forward ≈ 2·L·H·n² (n²/2 pairs × 2 matmuls × 2 FLOPs), the same
//!   again backward;
//! - LoRA: forward 2·R·n with R = Σ r·(in + out) over adapted projections and layers; backward
//!   (input and weight gradients) twice that.
//! - Prompt tuning's v virtual tokens lengthen the sequence to n + v (base and attention);
//!   prefix tuning's add v keys to every query's attention, 4·L·H·2·n·v more; the gradient of
//!   the prompt or prefix itself is a by-product of the input and attention backward.
//! - DoRA, once per step and not per token: each adapted weight's row norms ‖W + (α/r)·B A‖,
//!   (2r + 3)·out·in (the product B A, the sum, squares and row sums), not differentiated.

use serde::Serialize;

use crate::devices::DeviceProfile;
use crate::model::{LlamaConfig, LoraConfig, TargetModule};
use crate::network::transfer_seconds;

/// What a trained token costs on a given model and adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Frozen projection weights per token (all layers).
    base_weights: f64,
    /// The LM head's weights (vocab × hidden).
    head: f64,
    /// Decoder layers (the per-layer share of the layer terms).
    layers: usize,
    /// L·H: attention cost per token pair.
    attn: f64,
    /// Σ r·(in + out) over adapted projections and layers.
    lora: f64,
    /// Prompt tuning's virtual tokens (they join the sequence).
    prompt: usize,
    /// Prefix tuning's virtual tokens (they join every layer's keys).
    prefix: usize,
    /// FLOPs paid once per optimiser step (DoRA's row norms).
    per_step: f64,
}

impl CostModel {
    /// The cost model of LoRA fine-tuning `model` with `lora`.
    pub fn lora(model: &LlamaConfig, lora: &LoraConfig) -> Self {
        let l = model.num_hidden_layers as f64;
        let proj: f64 = TargetModule::ALL
            .iter()
            .map(|&m| {
                let (o, i) = model.projection_shape(m);
                (o * i) as f64
            })
            .sum();
        use crate::model::AdapterMethod as M;
        let adapted: f64 = lora
            .target_modules
            .iter()
            .map(|&m| {
                let (o, i) = model.projection_shape(m);
                match lora.method {
                    // One multiply per scaled value forward, two backward: 3 FLOPs against
                    // the 6 per adapter value below.
                    M::Ia3 { .. } if lora.method.scales_input(m) => i as f64 / 2.0,
                    M::Ia3 { .. } => o as f64 / 2.0,
                    M::Lora | M::Dora => (lora.r * (o + i)) as f64,
                    M::PromptTuning { .. } | M::PrefixTuning { .. } => 0.0,
                }
            })
            .sum();
        let v = lora.method.virtual_tokens();
        let per_step = match lora.method {
            M::Dora => lora
                .target_modules
                .iter()
                .map(|&m| {
                    let (o, i) = model.projection_shape(m);
                    ((2 * lora.r + 3) * o * i) as f64
                })
                .sum::<f64>(),
            _ => 0.0,
        };
        Self {
            per_step: l * per_step,
            base_weights: l * proj,
            head: (model.vocab_size * model.hidden_size) as f64,
            layers: model.num_hidden_layers,
            attn: l * model.hidden_size as f64,
            lora: l * adapted,
            prompt: if matches!(lora.method, M::PromptTuning { .. }) {
                v
            } else {
                0
            },
            prefix: if matches!(lora.method, M::PrefixTuning { .. }) {
                v
            } else {
                0
            },
        }
    }

    /// FLOPs paid once per optimiser step, whatever the batch (DoRA's row norms; 0 otherwise).
    pub fn step_flops(&self) -> f64 {
        self.per_step
    }

    /// FLOPs of training on one sequence of `n` tokens.
    pub fn sequence_flops(&self, n: usize) -> f64 {
        self.block_flops(n) + self.head_flops(n)
    }

    /// The decoder blocks' share of [`Self::sequence_flops`] (all layers; each layer costs the
    /// same, so k layers cost k/L of it).
    pub fn block_flops(&self, n: usize) -> f64 {
        let t = (n + self.prompt) as f64;
        let (n, v) = (n as f64, self.prefix as f64);
        4.0 * self.base_weights * t
            + 4.0 * self.attn * t * t
            + 8.0 * self.attn * n * v
            + 6.0 * self.lora * n
    }

    /// The LM head's share of [`Self::sequence_flops`].
    pub fn head_flops(&self, n: usize) -> f64 {
        4.0 * self.head * (n + self.prompt) as f64
    }

    /// Decoder layers of the model priced.
    pub fn layers(&self) -> usize {
        self.layers
    }
}

/// One client's round on the virtual clock (seconds; `start` is absolute, the rest durations).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Timeline {
    /// When the client received the instructions.
    pub start: f64,
    /// Downloading the global adapter.
    pub download: f64,
    /// Local training.
    pub compute: f64,
    /// Split learning: the server's half of every step (0 without).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub server: f64,
    /// Split learning: every step's activation and gradient messages (0 without).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exchange: f64,
    /// Masking the update before the upload (secure aggregation; 0 without).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mask: f64,
    /// Uploading the update.
    pub upload: f64,
}

impl Timeline {
    /// The timeline of a client with `profile` that downloads `down_bytes`, does `flops` of
    /// work and uploads `up_bytes`, starting at `start`.
    pub fn of(
        profile: &DeviceProfile,
        start: f64,
        down_bytes: u64,
        flops: f64,
        up_bytes: u64,
    ) -> Self {
        Self {
            start,
            download: transfer_seconds(down_bytes, profile.down_mbps, profile.latency_s),
            compute: flops / profile.flops,
            server: 0.0,
            exchange: 0.0,
            mask: 0.0,
            upload: transfer_seconds(up_bytes, profile.up_mbps, profile.latency_s),
        }
    }

    /// When the update reaches the server.
    pub fn finish(&self) -> f64 {
        self.start + self.download + self.training() + self.mask + self.upload
    }

    /// Local training: the client's compute, and under split learning the server's half and
    /// the messages of every step.
    pub fn training(&self) -> f64 {
        self.compute + self.server + self.exchange
    }

    /// When the client would crash having done `fraction` of its training.
    pub fn crash_time(&self, fraction: f64) -> f64 {
        self.start + self.download + fraction * self.training()
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
