//! What a split round costs on the virtual clock, priced before training from the batch
//! schedule (as flat training's compute is): per step, the client's blocks (and under
//! U-shaped its head) on its device, the server's blocks (and under SplitFed the head) at
//! `server_flops`, and every message on the client's link — each one its own transfer, with
//! its latency. The bytes are those [`super::step`] sends (the same functions size them).

use std::sync::Arc;

use super::step::{label_bytes, lengths_bytes};
use super::{Direction, MessageKind, SentMessage, SplitConfig, SplitMode, SplitTraffic};
use crate::clock::CostModel;
use crate::devices::DeviceProfile;
use crate::network::transfer_seconds;

/// What the clock needs to price a client's split round.
#[derive(Debug, Clone)]
pub struct SplitPlan {
    /// The scenario's split.
    pub config: SplitConfig,
    /// Width of the activations at the cut.
    pub hidden: usize,
    /// Response tokens (loss targets) of every training example.
    pub targets: Arc<Vec<u32>>,
    /// Bytes of the client-side half of the adapter (what a client downloads and uploads
    /// each round; 0 when the cut leaves the client no adapter).
    pub adapter_bytes: u64,
}

/// One client's split round, priced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SplitRoundCost {
    /// The client's compute, seconds on its device.
    pub client_s: f64,
    /// The server's compute, seconds at `server_flops`.
    pub server_s: f64,
    /// Every message's transfer, seconds.
    pub exchange_s: f64,
    /// The messages' bytes.
    pub traffic: SplitTraffic,
}

impl SplitPlan {
    /// The plan of `config` for a model `hidden` wide, `global`'s layout and the training
    /// examples.
    ///
    /// # Errors
    /// A layout inconsistent with its data (never, for a set built by this crate).
    pub fn new(
        config: SplitConfig,
        hidden: usize,
        global: &crate::model::AdapterSet,
        examples: &[crate::tokenizer::TokenizedExample],
    ) -> Result<Self, crate::model::ModelError> {
        let client_side = |t: &crate::model::adapter::AdapterTensor| config.client_side(t.layer);
        let any = global.layout().tensors().iter().any(client_side);
        Ok(Self {
            config,
            hidden,
            targets: Arc::new(
                examples
                    .iter()
                    .map(|e| crate::batch::target_range(e).len() as u32)
                    .collect(),
            ),
            adapter_bytes: if any {
                global.to_safetensors_where(client_side)?.len() as u64
            } else {
                0
            },
        })
    }

    /// The messages of one step over sequences of `(tokens, targets)`.
    pub fn step_messages(&self, seqs: &[(usize, usize)]) -> Vec<SentMessage> {
        let c = &self.config;
        let rows: usize = seqs.iter().map(|s| s.0).sum();
        let targets: usize = seqs.iter().map(|s| s.1).sum();
        let act = c.activation_compression.encoded_len(rows, self.hidden);
        let grad = c.gradient_compression.encoded_len(rows, self.hidden);
        let m = |kind, direction, bytes| SentMessage {
            kind,
            direction,
            bytes,
        };
        let mut out = vec![m(
            MessageKind::Activations,
            Direction::Up,
            lengths_bytes(seqs.len()) + act,
        )];
        match c.mode {
            SplitMode::SplitFed => {
                out.push(m(MessageKind::Labels, Direction::Up, label_bytes(targets)));
            }
            SplitMode::UShaped => {
                out.push(m(MessageKind::TopActivations, Direction::Down, act));
                out.push(m(MessageKind::TopGradients, Direction::Up, grad));
            }
        }
        out.push(m(MessageKind::Gradients, Direction::Down, grad));
        out
    }

    /// FLOPs of one step for the client and the server.
    pub fn step_flops(&self, cost: &CostModel, seqs: &[(usize, usize)]) -> (f64, f64) {
        let c = &self.config;
        let share = c.cut_layer as f64 / cost.layers().max(1) as f64;
        let blocks: f64 =
            seqs.iter().map(|s| cost.block_flops(s.0)).sum::<f64>() + cost.step_flops();
        let head: f64 = seqs.iter().map(|s| cost.head_flops(s.0)).sum();
        let (client, server) = (blocks * share, blocks * (1.0 - share));
        match c.mode {
            SplitMode::SplitFed => (client, server + head),
            SplitMode::UShaped => (client + head, server),
        }
    }

    /// Price a round of `steps`, each a list of `(tokens, targets)` per sequence, for a client
    /// with `profile`.
    pub fn round(
        &self,
        cost: &CostModel,
        profile: &DeviceProfile,
        steps: impl Iterator<Item = Vec<(usize, usize)>>,
    ) -> SplitRoundCost {
        let mut out = SplitRoundCost::default();
        for seqs in steps {
            let (client, server) = self.step_flops(cost, &seqs);
            out.client_s += client / profile.flops;
            out.server_s += server / self.config.server_flops;
            for m in self.step_messages(&seqs) {
                let mbps = match m.direction {
                    Direction::Up => profile.up_mbps,
                    Direction::Down => profile.down_mbps,
                };
                out.exchange_s += transfer_seconds(m.bytes, mbps, profile.latency_s);
                out.traffic.add(&m);
            }
        }
        out
    }
}
