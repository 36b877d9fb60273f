//! Local supervised fine-tuning of LoRA adapters, and evaluation.
//!
//! The course's recipe: Alpaca-style prompt, loss on response tokens only (completion-only
//! collator), right padding with a causal + padding attention mask, AdamW on the LoRA
//! variables, a learning rate per round from cosine annealing between `lr_max` and `lr_min`.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::lora::DropoutRng;
use crate::model::{AdapterSet, BaseModel, LoraConfig, LoraVars, LossInput, ModelError};
use crate::tokenizer::TokenizedExample;

/// Errors of local training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A client had nothing to train on.
    #[error("no training examples")]
    NoExamples,
    /// The loss stopped being a number.
    #[error("training diverged: loss is {0} at step {1}; lower train.lr_max")]
    Diverged(f32, usize),
    /// Evaluation needs a model, and the synthetic trainer has none.
    #[error("the synthetic trainer has no model to evaluate")]
    NoModel,
    /// The training code panicked (caught on the slot thread).
    #[error("training panicked: {0}")]
    Panicked(String),
    /// The worker running the job was lost (its connection closed, or it answered nonsense).
    #[error("worker_lost: worker {worker}: {message}")]
    WorkerLost {
        /// The worker's address.
        worker: String,
        /// What happened.
        message: String,
    },
    /// The job was stopped before its end (its run was abandoned, or its coordinator left).
    #[error("cancelled at step {0}: the run that asked for it is gone")]
    Cancelled(usize),
    /// The job failed on a remote worker.
    #[error("on worker {worker}: {reason}")]
    Remote {
        /// The worker's address.
        worker: String,
        /// The worker's reason.
        reason: String,
    },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Model(ModelError::Candle(e))
    }
}

/// How long a client trains and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalTraining {
    /// Optimiser steps per round; `None` means `epochs` passes over the shard.
    pub steps: Option<usize>,
    /// Passes over the shard when `steps` is `None`.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// FedProx's μ: the local loss adds μ/2·‖w − w_global‖² over the LoRA parameters (0: off).
    pub proximal_mu: f64,
}

impl LocalTraining {
    /// Steps a client with `n` examples takes.
    pub fn steps_for(&self, n: usize) -> usize {
        self.steps
            .unwrap_or_else(|| self.epochs * n.div_ceil(self.batch_size))
    }
}

/// The learning rate of round `round` (1-based) of `total`, as the course's
/// `cosine_annealing(current_round, total_round, lr_max, lr_min)`.
pub fn cosine_annealing(round: usize, total: usize, lr_max: f64, lr_min: f64) -> f64 {
    let inner = std::f64::consts::PI * round as f64 / total.max(1) as f64;
    lr_min + 0.5 * (lr_max - lr_min) * (1.0 + inner.cos())
}

/// What a client's local training produced.
#[derive(Debug, Clone)]
pub struct LocalResult {
    /// `local − global` over every LoRA tensor.
    pub update: AdapterSet,
    /// Mean training loss over the local steps (nats per response token).
    pub train_loss: f64,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Tokens processed (prompt and response, padding excluded).
    pub tokens: usize,
}

/// Build the loss input for a batch of examples, right-padded with `pad`.
///
/// # Errors
/// On a candle error.
pub fn make_batch(
    examples: &[&TokenizedExample],
    pad: u32,
    device: &Device,
) -> Result<LossInput, ModelError> {
    let b = examples.len();
    let s = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = vec![pad; b * s];
    let mut mask = vec![-1e9f32; b * s * s];
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (bi, e) in examples.iter().enumerate() {
        let len = e.ids.len();
        ids[bi * s..bi * s + len].copy_from_slice(&e.ids);
        for i in 0..s {
            for j in 0..=i.min(len - 1) {
                mask[(bi * s + i) * s + j] = 0.0;
            }
        }
        for t in e.prompt_len.saturating_sub(1)..len - 1 {
            positions.push((bi * s + t) as u32);
            targets.push(e.ids[t + 1]);
        }
    }
    let n = targets.len();
    Ok(LossInput {
        input_ids: Tensor::from_vec(ids, (b, s), device)?,
        mask: Tensor::from_vec(mask, (b, 1, s, s), device)?,
        positions: Tensor::from_vec(positions, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
    })
}

/// The batches a client trains on in a round, drawn before training so that its token count —
/// and so its compute time on the virtual clock — is known in advance.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Seed of the LoRA dropout masks.
    pub dropout_seed: u64,
    /// Per step, indices into the client's examples.
    pub batches: Vec<Vec<u32>>,
}

impl Schedule {
    /// Draw the schedule of a client with `n` examples: epochs of seeded shuffles cut into
    /// batches (the order `rng` is consumed in is the trainer's, so results do not change).
    pub fn draw(n: usize, plan: &LocalTraining, rng: &mut ChaCha8Rng) -> Self {
        let dropout_seed: u64 = rand::Rng::random(rng);
        let steps = if n == 0 { 0 } else { plan.steps_for(n) };
        let mut order: Vec<usize> = Vec::new();
        let mut batches = Vec::with_capacity(steps);
        for _ in 0..steps {
            let mut batch = Vec::with_capacity(plan.batch_size.min(n));
            while batch.len() < plan.batch_size.min(n) {
                if order.is_empty() {
                    order = (0..n).collect();
                    order.shuffle(rng);
                    order.reverse();
                }
                batch.push(order.pop().expect("refilled above") as u32);
            }
            batches.push(batch);
        }
        Self {
            dropout_seed,
            batches,
        }
    }

    /// Every example index trained on, with repeats, in order.
    pub fn picks(&self) -> impl Iterator<Item = usize> + '_ {
        self.batches.iter().flatten().map(|&i| i as usize)
    }
}

/// What one optimiser step does, besides the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRule {
    /// Learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// FedProx's μ (0: plain local training).
    pub proximal_mu: f64,
}

/// The LoRA numerics: fine-tunes and evaluates LoRA adapters on a frozen base (what a slot's
/// [`crate::trainer::LocalTrainer::Lora`] runs).
pub struct LoraTrainer {
    /// The frozen base (one copy per device, shared by the slots).
    pub model: Arc<BaseModel>,
    /// LoRA hyper-parameters.
    pub lora: LoraConfig,
    /// Padding token id.
    pub pad: u32,
}

impl LoraTrainer {
    /// Fine-tune `global` on `examples` following a drawn `schedule`; `cancel` turning true
    /// stops it before the next step.
    ///
    /// # Errors
    /// No examples, a candle failure, a diverging loss, or cancelled.
    pub fn fit_schedule(
        &self,
        global: &AdapterSet,
        examples: &[&TokenizedExample],
        schedule: &Schedule,
        (rule, cancel): (StepRule, &std::sync::atomic::AtomicBool),
    ) -> Result<LocalResult, TrainError> {
        let StepRule {
            lr,
            weight_decay,
            proximal_mu,
        } = rule;
        let (model, lora, pad) = (&*self.model, &self.lora, self.pad);
        if examples.is_empty() {
            return Err(TrainError::NoExamples);
        }
        let device = model.device();
        let vars = LoraVars::from_adapter(global, lora, device)?;
        let params = ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.vars().to_vec(), params)?;
        // FedProx's anchor: a copy of the global LoRA parameters (the variables change).
        let anchors = if proximal_mu > 0.0 {
            crate::strategy::fedprox::anchors(vars.vars())?
        } else {
            Vec::new()
        };
        let mut dropout = DropoutRng::new(ChaCha8Rng::seed_from_u64(schedule.dropout_seed));
        let steps = schedule.batches.len();
        let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
        for (step, picks) in schedule.batches.iter().enumerate() {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(TrainError::Cancelled(step));
            }
            let batch: Vec<&TokenizedExample> =
                picks.iter().map(|&i| examples[i as usize]).collect();
            tokens += batch.iter().map(|e| e.ids.len()).sum::<usize>();
            let input = make_batch(&batch, pad, device)?;
            let (nll, n) = model.loss_sum(&input, Some(&vars), Some(&mut dropout))?;
            let loss = (nll / n as f64)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::Diverged(value, step));
            }
            loss_sum += value as f64;
            if anchors.is_empty() {
                opt.backward_step(&loss)?;
            } else {
                let prox =
                    crate::strategy::fedprox::proximal_term(vars.vars(), &anchors, proximal_mu)?;
                opt.backward_step(&(loss + prox)?)?;
            }
        }
        let local = vars.to_adapter()?;
        Ok(LocalResult {
            update: local.delta_from(global),
            train_loss: loss_sum / steps.max(1) as f64,
            steps,
            tokens,
        })
    }

    /// `task`'s confusion matrices for `scope` with `adapter` applied (or the bare base).
    ///
    /// # Errors
    /// On a candle failure.
    pub fn score_task(
        &self,
        adapter: Option<&AdapterSet>,
        task: &crate::eval::classify::RunTask,
        scope: crate::messages::TaskScope,
        batch_size: usize,
    ) -> Result<Option<crate::messages::TaskConfusions>, TrainError> {
        let vars = adapter
            .map(|a| LoraVars::fixed(a, &self.lora, self.model.device()))
            .transpose()?;
        Ok(task.score(&self.model, vars.as_ref(), scope, batch_size)?)
    }

    /// Summed NLL and response-token count of `adapter` (or the bare base) on `examples`.
    ///
    /// # Errors
    /// On a candle failure.
    pub fn evaluate(
        &self,
        adapter: Option<&AdapterSet>,
        examples: &[&TokenizedExample],
        batch_size: usize,
    ) -> Result<(f64, usize), TrainError> {
        let (model, lora, pad) = (&*self.model, &self.lora, self.pad);
        let device = model.device();
        let vars = adapter
            .map(|a| LoraVars::fixed(a, lora, device))
            .transpose()?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in examples.chunks(batch_size.max(1)) {
            let input = make_batch(chunk, pad, device)?;
            let (nll, n) = model.loss_sum(&input, vars.as_ref(), None)?;
            sum += nll.to_scalar::<f32>()? as f64;
            count += n;
        }
        Ok((sum, count))
    }
}
