//! A task evaluation of one model: constrained-scoring accuracy with its interval, macro-F1,
//! recall per class and confusion, and optionally generation accuracy with FinGPT's answer
//! parsing — over all of a task's items or a stratified subset.

use serde::{Deserialize, Serialize};

use super::metrics::{Confusion, TaskScore};
use super::score::{label_logprobs, predictions, TaskTokens};
use super::task::{parse_generated, Task};
use super::EvalError;
use crate::model::generate::{generate, Budget, Sampling};
use crate::model::{BaseModel, LoraVars};
use crate::tokenizer::TextTokenizer;

/// New tokens a generated answer may have (a class word and the end token fit easily).
pub const ANSWER_TOKENS: usize = 8;

/// Generation-based accuracy (FlowerTune's leaderboard way).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationScore {
    /// Items generated for.
    pub items: usize,
    /// Share whose parsed answer is the gold class.
    pub accuracy: f64,
    /// Answers that named no class (counted wrong; never for the sentiment classes, whose
    /// parsing falls back to neutral as FinGPT's does).
    pub unparsed: usize,
}

/// One model's result on a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// Constrained-scoring figures.
    pub score: TaskScore,
    /// Generation accuracy, when asked for.
    pub generation: Option<GenerationScore>,
    /// Items asked for; more than `score.items` when a stop ended the scoring early.
    pub planned: usize,
}

/// A model (with its adapter applied, if any) and its tokenizer, ready to score a task.
pub struct Classifier<'a> {
    /// The frozen base.
    pub model: &'a BaseModel,
    /// The adapter, applied unmerged (None: the pretrained model).
    pub lora: Option<&'a LoraVars>,
    /// The tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// Sequences per forward pass.
    pub batch: usize,
}

impl Classifier<'_> {
    /// The confusion matrix of the listed items (indices into the task).
    ///
    /// # Errors
    /// A candle failure.
    pub fn confusion(
        &self,
        task: &Task,
        tokens: &TaskTokens,
        items: &[usize],
    ) -> Result<Confusion, EvalError> {
        let lp = label_logprobs(self.model, self.lora, tokens, items, self.batch)?;
        let gold: Vec<usize> = items.iter().map(|&i| tokens.gold[i]).collect();
        Ok(Confusion::from_pairs(
            task.labels.clone(),
            &gold,
            &predictions(&lp),
        ))
    }

    /// Score `items` of `task` (in chunks, calling `progress(done, total)` after each; an
    /// `Err` from it ends the scoring there), and generate answers when `generation` is set.
    ///
    /// # Errors
    /// A model or tokenizer failure.
    pub fn evaluate(
        &self,
        task: &Task,
        items: &[usize],
        generation: bool,
        progress: &mut dyn FnMut(usize, usize) -> Result<(), crate::data::Stopped>,
    ) -> Result<TaskReport, EvalError> {
        let tokens = TaskTokens::new(
            task,
            self.tokenizer,
            self.model.config().max_position_embeddings,
        )?;
        let mut confusion = Confusion::new(task.labels.clone());
        let mut done = 0;
        for chunk in items.chunks(self.batch.max(1) * 4) {
            let c = self.confusion(task, &tokens, chunk)?;
            for (row, add) in confusion.counts.iter_mut().zip(&c.counts) {
                row.iter_mut().zip(add).for_each(|(a, b)| *a += b);
            }
            done += chunk.len();
            if progress(done, items.len()).is_err() {
                break;
            }
        }
        let generation = match generation && done == items.len() {
            true => Some(self.generation(task, &tokens, items)?),
            false => None,
        };
        Ok(TaskReport {
            score: confusion.score(&task.name),
            generation,
            planned: items.len(),
        })
    }

    /// Greedy answers (≤ [`ANSWER_TOKENS`], stopping at the end token) parsed for a class.
    fn generation(
        &self,
        task: &Task,
        tokens: &TaskTokens,
        items: &[usize],
    ) -> Result<GenerationScore, EvalError> {
        let merged;
        let model = match self.lora {
            Some(l) => {
                merged = self.model.merged(l)?;
                &merged
            }
            None => self.model,
        };
        let (mut right, mut unparsed) = (0, 0);
        for &i in items {
            let out = generate(
                model,
                &tokens.prompts[i],
                Budget::up_to(ANSWER_TOKENS),
                Sampling::Greedy,
                &[self.tokenizer.eos_id()],
            )?;
            match parse_generated(&self.tokenizer.decode(&out.ids)?, &task.labels) {
                Some(c) if c == tokens.gold[i] => right += 1,
                Some(_) => {}
                None => unparsed += 1,
            }
        }
        Ok(GenerationScore {
            items: items.len(),
            accuracy: right as f64 / items.len().max(1) as f64,
            unparsed,
        })
    }
}

/// Which task items an evaluation scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TaskScope {
    /// None: held-out loss only.
    #[default]
    Skip,
    /// The fixed stratified subset (`eval.subset`).
    Subset,
    /// The subset and the whole test split (before round 1 and after the last round).
    SubsetAndFull,
}

/// Confusion matrices of a task evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfusions {
    /// Over the fixed subset.
    pub subset: Confusion,
    /// Over the whole test split, when scored.
    pub full: Option<Confusion>,
}

/// A run's task as the slots hold it (scenario `eval`): tokenised items, class words, the
/// fixed stratified subset.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTask {
    /// The task's short name.
    pub name: String,
    /// Class words.
    pub labels: Vec<String>,
    /// Tokenised items.
    pub tokens: TaskTokens,
    /// Indices of the subset scored every `eval.every` rounds.
    pub subset: Vec<usize>,
}

impl RunTask {
    /// Score `scope`'s items with `lora` applied (None: the pretrained model): the subset's
    /// confusion, and the whole split's when asked (its items scored once, the subset's read
    /// from them).
    ///
    /// # Errors
    /// A candle failure.
    pub fn score(
        &self,
        model: &BaseModel,
        lora: Option<&LoraVars>,
        scope: TaskScope,
        batch: usize,
    ) -> Result<Option<TaskConfusions>, crate::model::ModelError> {
        let confusion = |items: &[usize], predicted: &[usize]| {
            let gold: Vec<usize> = items.iter().map(|&i| self.tokens.gold[i]).collect();
            Confusion::from_pairs(self.labels.clone(), &gold, predicted)
        };
        match scope {
            TaskScope::Skip => Ok(None),
            TaskScope::Subset => {
                let lp = label_logprobs(model, lora, &self.tokens, &self.subset, batch)?;
                Ok(Some(TaskConfusions {
                    subset: confusion(&self.subset, &predictions(&lp)),
                    full: None,
                }))
            }
            TaskScope::SubsetAndFull => {
                let all: Vec<usize> = (0..self.tokens.gold.len()).collect();
                let predicted =
                    predictions(&label_logprobs(model, lora, &self.tokens, &all, batch)?);
                let sub: Vec<usize> = self.subset.iter().map(|&i| predicted[i]).collect();
                Ok(Some(TaskConfusions {
                    subset: confusion(&self.subset, &sub),
                    full: Some(confusion(&all, &predicted)),
                }))
            }
        }
    }
}
