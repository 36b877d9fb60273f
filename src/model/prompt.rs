//! Virtual tokens: prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021), as
//! PEFT's `PROMPT_TUNING` and `PREFIX_TUNING` compute them for a decoder.
//!
//! - **Prompt tuning** learns n input embeddings (n, hidden) put in front of every sequence.
//!   The sequence grows to n + s: the virtual rows attend causally among themselves, every real
//!   row attends to all of them, and the real tokens sit at RoPE positions n..n + s.
//! - **Prefix tuning** learns, per layer, n keys and n values. PEFT holds them as one
//!   (n, layers·2·kv_heads·head_dim) embedding viewed (n, layers·2, kv_heads, head_dim): row 2l
//!   holds layer l's keys, row 2l + 1 its values. They go in front of the layer's keys and
//!   values as a KV cache holds them (no RoPE applied), and the real tokens sit at positions
//!   n..n + s.
//!
//! Either way only the real positions come out, so the loss, scoring and generation see the
//! sequence they were given. The base is unchanged: "merging" such an adapter means carrying
//! its tensor along ([`BaseModel::merged`](super::BaseModel::merged)), and the KV cache starts
//! from it.

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{AdapterMethod, BaseModel, LlamaConfig, ModelError, PromptInit};

/// A trained prompt or prefix, on the model's device.
#[derive(Clone)]
pub enum VirtualTokens {
    /// Prompt tuning's embeddings (n, hidden).
    Prompt(Tensor),
    /// Prefix tuning's keys and values (n, layers·2·kv_heads·head_dim).
    Prefix(Tensor),
}

impl VirtualTokens {
    /// n, the number of virtual tokens.
    pub fn len(&self) -> usize {
        match self {
            Self::Prompt(t) | Self::Prefix(t) => t.dims()[0],
        }
    }

    /// Whether there are none (never, for a valid adapter).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The width of prefix tuning's tensor for `cfg`: layers · 2 · kv_heads · head_dim.
pub fn prefix_width(cfg: &LlamaConfig) -> usize {
    cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim()
}

/// Layer `layer`'s prefix keys and values, each (kv_heads, n, head_dim), from prefix tuning's
/// tensor (differentiable: the gradient reaches the tensor).
///
/// # Errors
/// A candle error (a tensor of another width).
pub fn prefix_kv(
    prefix: &Tensor,
    cfg: &LlamaConfig,
    layer: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = prefix.dims()[0];
    let (l, kv, hd) = (
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.head_dim(),
    );
    let all = prefix.reshape((n, 2 * l, kv, hd))?;
    let part = |row: usize| {
        all.narrow(1, row, 1)?
            .squeeze(1)?
            .transpose(0, 1)?
            .contiguous()
    };
    Ok((part(2 * layer)?, part(2 * layer + 1)?))
}

/// The input embeddings (b·s, hidden) with `prompt` (n, hidden) in front of each sequence:
/// (b·(n + s), hidden).
///
/// # Errors
/// A candle error.
pub fn prepend_prompt(
    prompt: &Tensor,
    x: &Tensor,
    (b, s): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (n, h) = prompt.dims2()?;
    let x = x.reshape((b, s, h))?;
    let p = prompt.unsqueeze(0)?.broadcast_as((b, n, h))?;
    Tensor::cat(&[&p, &x], 1)?.reshape((b * (n + s), h))
}

/// Hidden states (b·(n + s), hidden) without the n virtual rows of each sequence: (b·s, hidden).
///
/// # Errors
/// A candle error.
pub fn drop_prompt(x: &Tensor, n: usize, (b, s): (usize, usize)) -> candle_core::Result<Tensor> {
    let h = x.dim(1)?;
    x.reshape((b, n + s, h))?
        .narrow(1, n, s)?
        .contiguous()?
        .reshape((b * s, h))
}

/// The additive mask (b, 1, s, s) of a batch grown by a prompt of n rows: (b, 1, n + s, n + s).
/// Virtual rows see the virtual rows up to their own; real rows see every virtual row and what
/// `mask` allowed.
///
/// # Errors
/// A candle error.
pub fn prompt_mask(mask: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    let (b, _, s, _) = mask.dims4()?;
    let causal: Vec<f32> = (0..n)
        .flat_map(|i| (0..n + s).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    let top = Tensor::from_vec(causal, (1, 1, n, n + s), mask.device())?.broadcast_as((
        b,
        1,
        n,
        n + s,
    ))?;
    let bottom = prefix_mask(mask, n)?;
    Tensor::cat(&[&top, &bottom], 2)
}

/// The additive mask (b, 1, s, s) with n always-visible key columns in front: (b, 1, s, n + s).
///
/// # Errors
/// A candle error.
pub fn prefix_mask(mask: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    let (b, _, s, _) = mask.dims4()?;
    let open = Tensor::zeros((b, 1, s, n), DType::F32, mask.device())?;
    Tensor::cat(&[&open, mask], 3)
}

/// Prompt tuning's n starting rows taken from the base's embeddings: None for
/// [`PromptInit::Random`] (the N(0, 1) values stay) and for every other method; the embeddings
/// of n uniform draws from the vocabulary for `SampleVocab`, of `text_ids` repeated or cut to n
/// for `Text` (PEFT's `TEXT` init).
///
/// # Errors
/// [`ModelError::EmptyPromptText`] when a text init has no tokens; a packed embedding that
/// cannot be read.
pub(super) fn init_rows(
    method: &AdapterMethod,
    n: usize,
    text_ids: &[u32],
    model: &BaseModel,
    rng: &mut ChaCha8Rng,
) -> Result<Option<Vec<f32>>, ModelError> {
    let AdapterMethod::PromptTuning { init, .. } = method else {
        return Ok(None);
    };
    let ids: Vec<u32> = match init {
        PromptInit::Random => return Ok(None),
        PromptInit::SampleVocab => {
            let vocab = model.config().vocab_size as u32;
            (0..n).map(|_| rng.random_range(0..vocab)).collect()
        }
        PromptInit::Text(text) if text_ids.is_empty() => {
            return Err(ModelError::EmptyPromptText { text: text.clone() })
        }
        PromptInit::Text(_) => text_ids.iter().copied().cycle().take(n).collect(),
    };
    Ok(Some(model.embedding_rows(&ids)?))
}
