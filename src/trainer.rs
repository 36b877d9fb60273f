//! What trains on a slot: the LoRA trainer (candle, the real model) or the synthetic trainer,
//! which produces seeded pseudo-updates of N values with the real payload sizes and the same
//! timing model, so 10³–10⁵ clients × rounds run in seconds (systems studies, scale tests).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::messages::{EvaluateIns, EvaluateRes};
use crate::model::{AdapterLayout, AdapterSet, LlamaConfig, LoraConfig};
use crate::tokenizer::TokenizedExample;
use crate::train::{LocalResult, LoraTrainer, Schedule, StepRule, TrainError};

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

/// The local trainer of a run, as its slots hold it. The one place the trainer is matched:
/// everything else asks it to train or evaluate.
pub enum LocalTrainer {
    /// LoRA on the frozen base, with the tokenised examples.
    Lora {
        /// The numerics (base, LoRA settings, padding).
        trainer: LoraTrainer,
        /// Tokenised training examples (clients' shards index into it).
        train: Arc<Vec<TokenizedExample>>,
        /// Tokenised held-out examples.
        eval: Arc<Vec<TokenizedExample>>,
        /// Evaluation batch size.
        eval_batch_size: usize,
        /// The task scored with the held-out loss (scenario `eval`), if any.
        task: Option<Arc<crate::eval::classify::RunTask>>,
    },
    /// Seeded pseudo-updates; each scheduled example counts `seq_len` tokens.
    Synthetic {
        /// Tokens per example.
        seq_len: usize,
    },
}

impl LocalTrainer {
    /// Train from `global` on the examples of `shard` following `schedule`; `cancel` turning
    /// true stops it before the next step.
    ///
    /// # Errors
    /// An empty shard, a candle failure, a diverging loss, or cancelled.
    pub fn train(
        &self,
        layout: &Arc<AdapterLayout>,
        global: &AdapterSet,
        shard: &[u32],
        schedule: &Schedule,
        (rule, cancel): (StepRule, &std::sync::atomic::AtomicBool),
    ) -> Result<LocalResult, TrainError> {
        match self {
            LocalTrainer::Lora { trainer, train, .. } => {
                let examples: Vec<&TokenizedExample> =
                    shard.iter().map(|&i| &train[i as usize]).collect();
                trainer.fit_schedule(global, &examples, schedule, (rule, cancel))
            }
            LocalTrainer::Synthetic { seq_len } => {
                if shard.is_empty() {
                    return Err(TrainError::NoExamples);
                }
                Ok(synthetic_update(layout, schedule, *seq_len))
            }
        }
    }

    /// Evaluate `ins.adapter` (the base model when `None`) on the held-out examples.
    ///
    /// # Errors
    /// [`TrainError::NoModel`] for the synthetic trainer; a candle failure.
    pub fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes, TrainError> {
        let LocalTrainer::Lora {
            trainer,
            eval,
            eval_batch_size,
            task,
            ..
        } = self
        else {
            return Err(TrainError::NoModel);
        };
        let examples: Vec<&TokenizedExample> = eval.iter().collect();
        let (sum, tokens) =
            trainer.evaluate(ins.adapter.as_deref(), &examples, *eval_batch_size)?;
        let loss = sum / tokens.max(1) as f64;
        let task = match task {
            Some(t) => trainer.score_task(ins.adapter.as_deref(), t, ins.task, *eval_batch_size)?,
            None => None,
        };
        Ok(EvaluateRes {
            round: ins.round,
            loss,
            perplexity: loss.exp(),
            tokens,
            task,
        })
    }
}

impl TrainerKind {
    /// The adapter layout this trainer's updates have.
    pub fn layout(&self, model: &LlamaConfig, lora: &LoraConfig) -> AdapterLayout {
        match *self {
            TrainerKind::Lora => AdapterLayout::new(model, lora),
            TrainerKind::Synthetic { params } => AdapterLayout::flat(params),
        }
    }
}

/// Magnitude of synthetic update values (uniform in ±SCALE).
const SCALE: f32 = 1e-3;

/// A synthetic client's update: `params` values drawn from the schedule's seed; the tokens it
/// "trained on" are `seq_len` per scheduled example.
fn synthetic_update(
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
        split: None,
    }
}
