//! A batch of tokenised examples as the model takes it: right-padded ids, the causal +
//! padding mask, and the positions whose next token the loss counts (response tokens only,
//! the completion-only collator).

use candle_core::{Device, Tensor};

use crate::model::{LossInput, ModelError};
use crate::tokenizer::TokenizedExample;

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
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (bi, e) in examples.iter().enumerate() {
        let len = e.ids.len();
        ids[bi * s..bi * s + len].copy_from_slice(&e.ids);
        for t in target_range(e) {
            positions.push((bi * s + t) as u32);
            targets.push(e.ids[t + 1]);
        }
    }
    let n = targets.len();
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    Ok(LossInput {
        input_ids: Tensor::from_vec(ids, (b, s), device)?,
        mask: padding_mask(&lengths, s, device)?,
        positions: Tensor::from_vec(positions, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
    })
}

/// The positions of `e` whose next token the loss counts: the last prompt token up to the
/// second-to-last token (each predicts a response token).
pub fn target_range(e: &TokenizedExample) -> std::ops::Range<usize> {
    e.prompt_len.saturating_sub(1)..e.ids.len().saturating_sub(1)
}

/// The (b, 1, s, s) additive causal + padding mask of right-padded sequences of `lengths`:
/// row i of a sequence of length n sees columns 0..=min(i, n − 1).
///
/// # Errors
/// On a candle error.
pub fn padding_mask(lengths: &[usize], s: usize, device: &Device) -> Result<Tensor, ModelError> {
    let b = lengths.len();
    let mut mask = vec![-1e9f32; b * s * s];
    for (bi, &len) in lengths.iter().enumerate() {
        for i in 0..s {
            for j in 0..=i.min(len.max(1) - 1) {
                mask[(bi * s + i) * s + j] = 0.0;
            }
        }
    }
    Ok(Tensor::from_vec(mask, (b, 1, s, s), device)?)
}
