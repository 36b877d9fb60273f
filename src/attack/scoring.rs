//! Per-text membership scores from a causal LM's next-token distributions.
//!
//! A text is a record's response, scored given its prompt exactly as local training saw it
//! (same template, same truncation). For each response token the model gives its
//! log-probability and the mean and standard deviation of log p under the predicted
//! distribution (Min-K%++'s normalisation). Scores built from those:
//!
//! | score | definition | member when |
//! |---|---|---|
//! | loss | mean NLL, nats/token | low |
//! | ref. ratio | PPL_target / PPL_reference (the course's rule: member iff < 1) | low |
//! | ref. log-ratio | NLL_target − NLL_reference | low |
//! | zlib | mean NLL / zlib-compressed bytes of the response (Carlini et al. 2021) | low |
//! | lowercase | mean NLL of the lower-cased record / mean NLL of the record | high |
//! | Min-K% | mean of the lowest 20 % token log-probs (Shi et al. 2024) | high |
//! | Min-K%++ | mean of the lowest 20 % of (log p − μ)/σ (Zhang et al. 2024) | high |
//!
//! Every score is turned into a *signal* (negated where "member when low") so that higher
//! always means "more likely a member" before ROC metrics are computed.

use std::io::Write;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{BaseModel, ModelError};
use crate::tokenizer::TokenizedExample;
use crate::train::make_batch;

/// What the model says about one response token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenStat {
    /// log p(token | prefix).
    pub logp: f64,
    /// E[log p] under the predicted distribution.
    pub mean: f64,
    /// Its standard deviation.
    pub std: f64,
}

/// Share of tokens Min-K% and Min-K%++ average over (k = 20 %).
pub const MIN_K: f64 = 0.2;

/// Token statistics of the response tokens of each example, `batch` examples per forward.
///
/// # Errors
/// On a candle failure.
pub fn token_stats(
    model: &BaseModel,
    examples: &[&TokenizedExample],
    pad: u32,
    batch: usize,
) -> Result<Vec<Vec<TokenStat>>, ModelError> {
    let device = model.device();
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch.max(1)) {
        let input = make_batch(chunk, pad, device)?;
        let hidden = model.hidden_states(&input.input_ids, &input.mask, None, None)?;
        let picked = hidden.index_select(&input.positions, 0)?;
        let rows = picked.dims2()?.0;
        let mut stats = Vec::with_capacity(rows);
        // Logits in chunks of rows: a 49k vocabulary makes them the largest tensor by far.
        for start in (0..rows).step_by(256) {
            let n = 256.min(rows - start);
            let logits = model.logits(&picked.narrow(0, start, n)?)?;
            let targets = input.targets.narrow(0, start, n)?;
            stats.extend(row_stats(&logits, &targets)?);
        }
        let mut it = stats.into_iter();
        for e in chunk {
            let n = e.ids.len() - e.prompt_len.max(1);
            out.push(it.by_ref().take(n).collect());
        }
    }
    Ok(out)
}

fn row_stats(logits: &Tensor, targets: &Tensor) -> Result<Vec<TokenStat>, ModelError> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let targets = targets.to_vec1::<u32>()?;
    Ok(rows
        .iter()
        .zip(targets)
        .map(|(row, target)| stat(row, target as usize))
        .collect())
}

/// log p(target), E[log p] and its standard deviation under softmax(`row`). Exponentials in
/// f32, sums in f64; terms below e^−87 (under f32's smallest normal) are skipped: they add
/// nothing at f64 precision relative to the mode's term of 1.
fn stat(row: &[f32], target: usize) -> TokenStat {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row
        .iter()
        .map(|&v| v - max)
        .filter(|&d| d > -87.0)
        .map(|d| f64::from(d.exp()))
        .sum();
    let lse = sum.ln();
    let (mut mean, mut second) = (0.0, 0.0);
    for &v in row {
        let lp = f64::from(v - max) - lse;
        if lp > -87.0 {
            let p = f64::from((lp as f32).exp());
            mean += p * lp;
            second += p * lp * lp;
        }
    }
    TokenStat {
        logp: f64::from(row[target] - max) - lse,
        mean,
        std: (second - mean * mean).max(1e-12).sqrt(),
    }
}

/// Mean NLL (nats per token) of a text's tokens.
pub fn mean_nll(tokens: &[TokenStat]) -> f64 {
    -tokens.iter().map(|t| t.logp).sum::<f64>() / tokens.len().max(1) as f64
}

/// Mean of the lowest `k` share (at least one) of `values`.
pub fn lowest_mean(values: impl Iterator<Item = f64>, k: f64) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = ((v.len() as f64 * k).ceil() as usize).clamp(1, v.len());
    v[..n].iter().sum::<f64>() / n as f64
}

/// Min-K% Prob: mean of the lowest k share of token log-probabilities.
pub fn min_k(tokens: &[TokenStat]) -> f64 {
    lowest_mean(tokens.iter().map(|t| t.logp), MIN_K)
}

/// Min-K%++: mean of the lowest k share of (log p − μ) / σ.
pub fn min_k_plus(tokens: &[TokenStat]) -> f64 {
    lowest_mean(tokens.iter().map(|t| (t.logp - t.mean) / t.std), MIN_K)
}

/// Bytes of `text` compressed with zlib at the default level (6), as Python's
/// `zlib.compress`.
pub fn zlib_bytes(text: &str) -> usize {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(text.as_bytes()).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec").len()
}

/// The membership scores fedsim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Mean NLL.
    Loss,
    /// PPL_target / PPL_reference.
    RefRatio,
    /// NLL_target − NLL_reference.
    RefLogRatio,
    /// Mean NLL / zlib bytes.
    Zlib,
    /// NLL(lower-cased) / NLL.
    Lowercase,
    /// Min-K% Prob, k = 20 %.
    MinK,
    /// Min-K%++, k = 20 %.
    MinKPlus,
}

impl Score {
    /// Every score, in report order.
    pub const ALL: [Score; 7] = [
        Score::Loss,
        Score::RefRatio,
        Score::RefLogRatio,
        Score::Zlib,
        Score::Lowercase,
        Score::MinK,
        Score::MinKPlus,
    ];

    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Score::Loss => "loss",
            Score::RefRatio => "ref ratio",
            Score::RefLogRatio => "ref log-ratio",
            Score::Zlib => "zlib",
            Score::Lowercase => "lowercase",
            Score::MinK => "Min-20%",
            Score::MinKPlus => "Min-20%++",
        }
    }

    /// Whether the score compares the model with the pretrained reference (meaningless for
    /// the pretrained model itself).
    pub fn needs_reference(self) -> bool {
        matches!(self, Score::RefRatio | Score::RefLogRatio)
    }

    /// The score's value turned into "higher = more likely a member".
    pub fn signal(self, value: f64) -> f64 {
        match self {
            Score::Loss | Score::RefRatio | Score::RefLogRatio | Score::Zlib => -value,
            Score::Lowercase | Score::MinK | Score::MinKPlus => value,
        }
    }
}

/// What one model says about one text, and about its lower-cased copy.
#[derive(Debug, Clone)]
pub struct TextScores {
    /// Response-token statistics.
    pub tokens: Vec<TokenStat>,
    /// Mean NLL of the lower-cased record's response.
    pub lowercase_nll: f64,
    /// zlib bytes of the response text.
    pub zlib: usize,
}

impl TextScores {
    /// The value of `score`; `reference` is the same text under the pretrained model (None:
    /// reference scores are undefined, NaN).
    pub fn value(&self, score: Score, reference: Option<&TextScores>) -> f64 {
        let nll = mean_nll(&self.tokens);
        match score {
            Score::Loss => nll,
            Score::RefRatio => reference.map_or(f64::NAN, |r| (nll - mean_nll(&r.tokens)).exp()),
            Score::RefLogRatio => reference.map_or(f64::NAN, |r| nll - mean_nll(&r.tokens)),
            Score::Zlib => nll / self.zlib.max(1) as f64,
            Score::Lowercase => self.lowercase_nll / nll.max(1e-12),
            Score::MinK => min_k(&self.tokens),
            Score::MinKPlus => min_k_plus(&self.tokens),
        }
    }
}
