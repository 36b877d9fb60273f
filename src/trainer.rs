//! What trains on a slot: the LoRA trainer (candle, the real model) or the synthetic trainer,
//! which produces seeded pseudo-updates of N values with the real payload sizes and the same
//! timing model, so 10³–10⁵ clients × rounds run in seconds (systems studies, scale tests).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{AdapterLayout, AdapterSet};
use crate::train::{LocalResult, Schedule};

/// The local trainer (scenario field `trainer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TrainerKind {
    /// Fine-tune LoRA adapters of the scenario's model.
    #[default]
    Lora,
    /// Seeded pseudo-updates of `params` f32 values; no model, no text, no evaluation.
    Synthetic {
        /// Values per update.
        params: usize,
    },
}

/// Magnitude of synthetic update values (uniform in ±SCALE).
const SCALE: f32 = 1e-3;

/// A synthetic client's update: `params` values drawn from the schedule's seed; the tokens it
/// "trained on" are `seq_len` per scheduled example.
pub fn synthetic_update(
    layout: &Arc<AdapterLayout>,
    schedule: &Schedule,
    seq_len: usize,
) -> LocalResult {
    let mut rng = ChaCha8Rng::seed_from_u64(schedule.dropout_seed);
    let data: Vec<f32> = (0..layout.len())
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * SCALE)
        .collect();
    LocalResult {
        update: AdapterSet::new(layout.clone(), data),
        train_loss: f64::NAN,
        steps: schedule.batches.len(),
        tokens: schedule.picks().count() * seq_len,
    }
}
