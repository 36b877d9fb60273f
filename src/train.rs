//! Local supervised fine-tuning of LoRA adapters, and evaluation.
//!
//! The course's recipe: Alpaca-style prompt, loss on response tokens only (completion-only
//! collator), right padding with a causal + padding attention mask, AdamW on the LoRA
//! variables, a learning rate per round from cosine annealing between `lr_max` and `lr_min`.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use crate::batch::{make_batch, padding_mask, target_range};
use crate::model::lora::DropoutRng;
use crate::model::{AdapterSet, BaseModel, LoraConfig, LoraVars, ModelError};
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
    /// A split step failed (a malformed message, or the model).
    #[error(transparent)]
    Split(#[from] crate::split::SplitError),
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
    /// Split learning: the activation and gradient messages sent (None otherwise).
    pub split: Option<crate::split::SplitTraffic>,
}

/// A split step's gradients with FedProx's proximal term's added (its graph touches every
/// variable, on both sides of the cut).
fn with_proximal(
    mut grads: candle_core::backprop::GradStore,
    prox: Option<Tensor>,
    vars: &LoraVars,
) -> Result<candle_core::backprop::GradStore, TrainError> {
    if let Some(prox) = prox {
        crate::split::step::merge_grads(&mut grads, prox.backward()?, vars)?;
    }
    Ok(grads)
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
    /// Split learning: each step runs as a client half and a server half joined by encoded
    /// messages (topology `Split`); None trains the whole model in one graph.
    pub split: Option<crate::split::SplitConfig>,
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
        if examples.is_empty() {
            return Err(TrainError::NoExamples);
        }
        let vars = LoraVars::from_adapter(global, &self.lora, self.model.device())?;
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
        let mut traffic = crate::split::SplitTraffic::default();
        for (step, picks) in schedule.batches.iter().enumerate() {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(TrainError::Cancelled(step));
            }
            let batch: Vec<&TokenizedExample> =
                picks.iter().map(|&i| examples[i as usize]).collect();
            tokens += batch.iter().map(|e| e.ids.len()).sum::<usize>();
            let prox = (!anchors.is_empty())
                .then(|| {
                    crate::strategy::fedprox::proximal_term(vars.vars(), &anchors, proximal_mu)
                })
                .transpose()?;
            let value = self.step(&batch, (&vars, &mut opt, prox), &mut dropout, &mut traffic)?;
            if !value.is_finite() {
                return Err(TrainError::Diverged(value, step));
            }
            loss_sum += value as f64;
        }
        let local = vars.to_adapter()?;
        Ok(LocalResult {
            update: local.delta_from(global),
            train_loss: loss_sum / steps.max(1) as f64,
            steps,
            tokens,
            split: self.split.map(|_| traffic),
        })
    }

    /// One optimiser step on `batch` (the proximal term added when there is one): in one graph,
    /// or split at the cut. Returns the mean loss; a non-finite loss takes no step.
    fn step(
        &self,
        batch: &[&TokenizedExample],
        (vars, opt, prox): (&LoraVars, &mut AdamW, Option<Tensor>),
        dropout: &mut DropoutRng,
        traffic: &mut crate::split::SplitTraffic,
    ) -> Result<f32, TrainError> {
        let model = &*self.model;
        match &self.split {
            None => {
                let input = make_batch(batch, self.pad, model.device())?;
                let (nll, n) = model.loss_sum(&input, Some(vars), Some(dropout))?;
                let loss = (nll / n as f64)?;
                let value = loss.to_scalar::<f32>()?;
                if value.is_finite() {
                    opt.backward_step(&prox.map_or(Ok(loss.clone()), |p| loss + p)?)?;
                }
                Ok(value)
            }
            Some(cfg) => {
                let out = crate::split::step::step(model, cfg, (batch, self.pad), vars, dropout)?;
                out.messages.iter().for_each(|m| traffic.add(m));
                if out.loss.is_finite() {
                    opt.step(&with_proximal(out.grads, prox, vars)?)?;
                }
                Ok(out.loss)
            }
        }
    }

    /// `task`'s confusion matrices for `scope` with `adapter` applied (or the bare base).
    ///
    /// # Errors
    /// On a candle failure.
    pub fn score_task(
        &self,
        adapter: Option<&AdapterSet>,
        task: &crate::eval::classify::RunTask,
        scope: crate::eval::classify::TaskScope,
        batch_size: usize,
    ) -> Result<Option<crate::eval::classify::TaskConfusions>, TrainError> {
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
