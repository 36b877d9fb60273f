//! Evaluation of a model (and adapter): PubMedQA accuracy by log-likelihood of the answers
//! and by generation with answer parsing, against the majority-class baseline; answers to
//! given prompts, for side-by-side comparison.

pub mod classify;
pub mod metrics;
pub mod progress;
pub mod pubmedqa;
pub mod score;
pub mod task;

use std::path::PathBuf;

use serde::Serialize;

use crate::model::generate::{continuation_logprobs, generate, Budget, Sampling};
use crate::model::{BaseModel, ModelError};
use crate::tokenizer::chat::{ChatTemplate, Message, Role};
use crate::tokenizer::{TextTokenizer, TokenizerError};
use pubmedqa::{Answer, Item};

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An evaluation data file is unreadable or malformed.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A labelled data file is unreadable or malformed.
    #[error(transparent)]
    Source(#[from] crate::data::DataError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenising or templating failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// One question's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// PubMed id.
    pub pmid: String,
    /// The expert answer.
    pub answer: Answer,
    /// Log-probability of " yes", " no", " maybe" after the prompt.
    pub logprobs: [f64; 3],
    /// The most likely choice.
    pub by_likelihood: Answer,
    /// The generated answer's text.
    pub generated: String,
    /// The yes/no/maybe parsed from it (None: none found, counted wrong).
    pub by_generation: Option<Answer>,
}

/// Accuracy over a set of items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PubMedQaResult {
    /// Items scored.
    pub items: usize,
    /// Share right by log-likelihood.
    pub accuracy_likelihood: f64,
    /// Share right by generation (unparsable answers count as wrong).
    pub accuracy_generation: f64,
    /// Generated answers with no yes/no/maybe in them.
    pub unparsed: usize,
    /// Share of the most common answer among the items.
    pub majority_baseline: f64,
    /// Each item.
    pub scored: Vec<Scored>,
    /// Items asked for; more than `items` when a stop request ended the scoring early (the
    /// accuracies and the baseline are then over the first `items`).
    pub planned: usize,
}

/// The model plus what it needs to read and write text.
pub struct Evaluator<'a> {
    /// The model (adapter merged in, if any).
    pub model: &'a BaseModel,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// Its chat template (for generation).
    pub template: ChatTemplate,
    /// New tokens allowed for a generated PubMedQA answer.
    pub answer_tokens: usize,
}

/// The index of the largest value (the first on ties).
pub fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

impl Evaluator<'_> {
    /// Score one item both ways.
    ///
    /// # Errors
    /// A model or tokenizer failure (e.g. an abstract longer than the context).
    pub fn score(&self, item: &Item) -> Result<Scored, EvalError> {
        let prompt = self.tokenizer.encode(&item.prompt())?;
        let choices = Answer::ALL
            .iter()
            .map(|a| self.tokenizer.encode(&format!(" {}", a.word())))
            .collect::<Result<Vec<_>, _>>()?;
        let lp = continuation_logprobs(self.model, &prompt, &choices)?;
        let question = format!(
            "{}\n\nQuestion: {}\nAnswer with yes, no or maybe.",
            item.contexts.join(" "),
            item.question
        );
        let generated = self.answer(&question, self.answer_tokens)?;
        Ok(Scored {
            pmid: item.pmid.clone(),
            answer: item.answer,
            logprobs: [lp[0], lp[1], lp[2]],
            by_likelihood: Answer::ALL[argmax(&lp)],
            by_generation: pubmedqa::parse_answer(&generated),
            generated,
        })
    }

    /// The model's greedy answer to `prompt` as a user turn, at most `max_tokens` tokens.
    ///
    /// # Errors
    /// A model, template or tokenizer failure.
    pub fn answer(&self, prompt: &str, max_tokens: usize) -> Result<String, EvalError> {
        let msg = Message {
            role: Role::User,
            content: prompt,
        };
        let ids = self
            .tokenizer
            .encode(&self.template.render(&[msg], true)?)?;
        let eos = [self.tokenizer.eos_id()];
        let out = generate(
            self.model,
            &ids,
            Budget::up_to(max_tokens),
            Sampling::Greedy,
            &eos,
        )?;
        Ok(self.tokenizer.decode(&out.ids)?.trim().to_string())
    }

    /// Score every item, calling `progress(done, total)` after each.
    ///
    /// # Errors
    /// As [`Evaluator::score`].
    ///
    /// `progress(done, total)` is called after each item; when it answers `Err(Stopped)` the
    /// scoring ends there and the result covers the items scored (`planned` says how many were
    /// asked for).
    pub fn pubmedqa(
        &self,
        items: &[Item],
        progress: &mut dyn FnMut(usize, usize) -> Result<(), crate::data::Stopped>,
    ) -> Result<PubMedQaResult, EvalError> {
        let mut scored = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            scored.push(self.score(item)?);
            if progress(i + 1, items.len()).is_err() {
                break;
            }
        }
        let n = scored.len().max(1) as f64;
        let right = |f: &dyn Fn(&Scored) -> bool| scored.iter().filter(|s| f(s)).count() as f64 / n;
        Ok(PubMedQaResult {
            items: scored.len(),
            accuracy_likelihood: right(&|s| s.by_likelihood == s.answer),
            accuracy_generation: right(&|s| s.by_generation == Some(s.answer)),
            unparsed: scored.iter().filter(|s| s.by_generation.is_none()).count(),
            majority_baseline: pubmedqa::majority_share(&items[..scored.len()]),
            scored,
            planned: items.len(),
        })
    }
}
