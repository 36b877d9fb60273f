//! Constrained scoring: for each item, the summed log-probability of each class word's tokens
//! as the continuation ` <word>` after the prompt (the prompt's trailing space removed, so the
//! word's leading space belongs to its first token); the most likely class is the prediction.
//! Runs with the LoRA adapter applied (not merged), in batches, on whatever device the model
//! is on — so a slot can score a round's global adapter as it scores held-out loss.

use candle_core::{Device, Tensor};

use super::task::Task;
use super::EvalError;
use crate::model::{BaseModel, LoraVars, ModelError};
use crate::tokenizer::TextTokenizer;

/// A task's prompts and class words as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskTokens {
    /// Each item's prompt ids (left-cut to fit the context when needed).
    pub prompts: Vec<Vec<u32>>,
    /// Each class word's ids, as ` <word>`.
    pub labels: Vec<Vec<u32>>,
    /// Each item's gold class.
    pub gold: Vec<usize>,
}

impl TaskTokens {
    /// Tokenise `task` for a model of `context` positions.
    ///
    /// # Errors
    /// A tokenizer failure, or class words that tokenise to nothing.
    pub fn new(task: &Task, tokenizer: &TextTokenizer, context: usize) -> Result<Self, EvalError> {
        let labels = task
            .labels
            .iter()
            .map(|w| tokenizer.encode(&format!(" {w}")))
            .collect::<Result<Vec<_>, _>>()?;
        let longest = labels.iter().map(Vec::len).max().unwrap_or(0);
        if labels.iter().any(Vec::is_empty) || longest >= context {
            return Err(EvalError::Data {
                path: task.path.clone(),
                message: format!(
                    "class words {:?} do not tokenise to 1..{context} tokens",
                    task.labels
                ),
            });
        }
        let room = context - longest;
        let prompts = task
            .items
            .iter()
            .map(|i| {
                let ids = tokenizer.encode(i.prompt.trim_end())?;
                Ok(ids[ids.len().saturating_sub(room)..].to_vec())
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        Ok(Self {
            prompts,
            labels,
            gold: task.gold(),
        })
    }
}

/// One sequence to run: its ids, the row (in the flattened batch) of its first scored
/// position, and for each class it scores, (class, the class tokens).
struct Sequence<'a> {
    ids: Vec<u32>,
    classes: Vec<usize>,
    label_tokens: Vec<&'a [u32]>,
    first: usize,
}

/// Each listed item's log-probability of each class, items in the order of `items`.
///
/// Classes of one token share one sequence (the prompt); a longer class word gets its own
/// (prompt + its tokens but the last). `batch` sequences run per forward pass.
///
/// # Errors
/// A candle failure.
pub fn label_logprobs(
    model: &BaseModel,
    lora: Option<&LoraVars>,
    tokens: &TaskTokens,
    items: &[usize],
    batch: usize,
) -> Result<Vec<Vec<f64>>, ModelError> {
    let k = tokens.labels.len();
    let mut out = vec![vec![0.0; k]; items.len()];
    let mut seqs: Vec<(usize, Sequence<'_>)> = Vec::new();
    let (single, multi): (Vec<usize>, Vec<usize>) =
        (0..k).partition(|&c| tokens.labels[c].len() == 1);
    for (slot, &i) in items.iter().enumerate() {
        let prompt = &tokens.prompts[i];
        if !single.is_empty() {
            seqs.push((slot, sequence(prompt, &single, tokens)));
        }
        for &c in &multi {
            seqs.push((slot, sequence(prompt, &[c], tokens)));
        }
    }
    for chunk in seqs.chunks(batch.max(1)) {
        let scores = run_batch(model, lora, chunk.iter().map(|(_, s)| s))?;
        for ((slot, s), lp) in chunk.iter().zip(scores) {
            for (&c, v) in s.classes.iter().zip(lp) {
                out[*slot][c] = v;
            }
        }
    }
    Ok(out)
}

fn sequence<'a>(prompt: &[u32], classes: &[usize], tokens: &'a TaskTokens) -> Sequence<'a> {
    let label_tokens: Vec<&[u32]> = classes
        .iter()
        .map(|&c| tokens.labels[c].as_slice())
        .collect();
    let mut ids = prompt.to_vec();
    if let [one] = label_tokens.as_slice() {
        ids.extend_from_slice(&one[..one.len() - 1]);
    }
    Sequence {
        ids,
        classes: classes.to_vec(),
        label_tokens,
        first: prompt.len() - 1,
    }
}

/// Per sequence, the summed log-probability of each of its classes.
fn run_batch<'a>(
    model: &BaseModel,
    lora: Option<&LoraVars>,
    seqs: impl Iterator<Item = &'a Sequence<'a>> + Clone,
) -> Result<Vec<Vec<f64>>, ModelError> {
    let device: &Device = model.device();
    let b = seqs.clone().count();
    let s = seqs.clone().map(|q| q.ids.len()).max().unwrap_or(1);
    let mut ids = vec![0u32; b * s];
    let mut mask = vec![-1e9f32; b * s * s];
    let mut rows: Vec<u32> = Vec::new();
    for (bi, q) in seqs.clone().enumerate() {
        let len = q.ids.len();
        ids[bi * s..bi * s + len].copy_from_slice(&q.ids);
        for i in 0..s {
            for j in 0..=i.min(len - 1) {
                mask[(bi * s + i) * s + j] = 0.0;
            }
        }
        rows.extend((q.first..len).map(|t| (bi * s + t) as u32));
    }
    let input = Tensor::from_vec(ids, (b, s), device)?;
    let mask = Tensor::from_vec(mask, (b, 1, s, s), device)?;
    let hidden = model.hidden_states(&input, &mask, lora, None)?;
    let n = rows.len();
    let picked = hidden.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let logits: Vec<Vec<f32>> = model.logits(&picked)?.to_vec2()?;
    let mut row = 0;
    let mut out = Vec::with_capacity(b);
    for q in seqs {
        let span = q.ids.len() - q.first;
        let lp: Vec<Vec<f64>> = logits[row..row + span]
            .iter()
            .map(|l| log_softmax(l))
            .collect();
        row += span;
        out.push(
            q.label_tokens
                .iter()
                .map(|toks| {
                    toks.iter()
                        .enumerate()
                        .map(|(j, &t)| lp[j][t as usize])
                        .sum()
                })
                .collect(),
        );
    }
    Ok(out)
}

/// log-softmax of one row, in f64.
fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// The index of the largest log-probability of each item (the first on ties).
pub fn predictions(logprobs: &[Vec<f64>]) -> Vec<usize> {
    logprobs.iter().map(|lp| super::argmax(lp)).collect()
}
