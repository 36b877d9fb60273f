//! Text generation with a KV cache: prefill the prompt once, then one token per step, each step
//! attending to the cached keys and values of every earlier position. Greedy decoding or seeded
//! sampling (temperature, top-k, top-p); stops at an end-of-sequence id or a token budget.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ops::{decode_matmul, decode_matmuls, rms_norm, rope, swiglu};
use super::prompt::{prefix_kv, VirtualTokens};
use super::weight::FrozenWeight;
use super::{BaseModel, ModelError, TargetModule};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties: the lowest id).
    Greedy,
    /// Drawn from the softmax at `temperature`, keeping the `top_k` most likely tokens (all
    /// when None) and then the smallest set whose probability reaches `top_p` (all when None).
    Random {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Keep only the k most likely tokens.
        top_k: Option<usize>,
        /// Nucleus: keep the most likely tokens up to this cumulative probability.
        top_p: Option<f64>,
        /// RNG seed (the same seed gives the same text).
        seed: u64,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A stop id was generated (it is the last id of the output).
    EndOfSequence,
    /// The token budget was spent.
    MaxTokens,
    /// The model's context (`max_position_embeddings`) is full.
    ContextFull,
}

/// A generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids (the stop id included when there was one).
    pub ids: Vec<u32>,
    /// Why it stopped.
    pub stop: Stop,
    /// Seconds spent on the prompt (one forward over it).
    pub prefill_seconds: f64,
    /// Seconds spent generating after the prompt.
    pub decode_seconds: f64,
}

impl Generation {
    /// Generated tokens per second after the prompt (the first token comes from the prefill).
    pub fn tokens_per_second(&self) -> f64 {
        (self.ids.len().saturating_sub(1)) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Keys and values of every position so far, per layer: (1, kv_heads, len, head_dim).
#[derive(Clone)]
struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// The cache before the first real token: empty, or holding a merged prefix tuning
    /// adapter's keys and values, or the prompt tuning embeddings already read (a virtual row
    /// never attends to a later one, so reading them first changes nothing).
    fn start(model: &BaseModel) -> Result<Self, ModelError> {
        let mut cache = Self {
            layers: vec![None; model.cfg.num_hidden_layers],
            len: 0,
        };
        match &model.virtual_tokens {
            None => {}
            Some(VirtualTokens::Prompt(p)) => {
                forward(model, &mut cache, p.clone())?;
            }
            Some(VirtualTokens::Prefix(p)) => {
                for (layer, slot) in cache.layers.iter_mut().enumerate() {
                    let (k, v) = prefix_kv(p, &model.cfg, layer)?;
                    *slot = Some((k.unsqueeze(0)?, v.unsqueeze(0)?));
                }
                cache.len = p.dim(0)?;
            }
        }
        Ok(cache)
    }
}

/// How many tokens to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Stop ids are ignored before this many new tokens (Hugging Face's `min_new_tokens`).
    pub min_new: usize,
    /// At most this many new tokens.
    pub max_new: usize,
}

impl Budget {
    /// Up to `max_new` tokens, stopping at the first stop id.
    pub fn up_to(max_new: usize) -> Self {
        Self {
            min_new: 0,
            max_new,
        }
    }
}

/// Generate after `prompt` within `budget`.
///
/// # Errors
/// A candle error, or an empty prompt / one longer than the context.
pub fn generate(
    model: &BaseModel,
    prompt: &[u32],
    budget: Budget,
    sampling: Sampling,
    stop_ids: &[u32],
) -> Result<Generation, ModelError> {
    on_pool(|| generate_here(model, prompt, budget, sampling, stop_ids))
}

/// Run `f` on a thread of the current rayon pool (the global one when called from outside any
/// pool), so each matmul's parallel part starts from a worker instead of waking the pool from
/// outside: 200-odd small parallel parts per token cost a third of the token's time otherwise.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        // `scope` runs its closure on a worker of the current pool (`in_place_scope` would not).
        let mut out = None;
        rayon::scope(|_| out = Some(f()));
        out.expect("the scope ran its closure")
    }
}

fn generate_here(
    model: &BaseModel,
    prompt: &[u32],
    budget: Budget,
    sampling: Sampling,
    stop_ids: &[u32],
) -> Result<Generation, ModelError> {
    let context = model.cfg.max_position_embeddings;
    let virtual_tokens = model.virtual_tokens.as_ref().map_or(0, VirtualTokens::len);
    if prompt.is_empty() || virtual_tokens + prompt.len() >= context {
        return Err(ModelError::Prompt {
            tokens: virtual_tokens + prompt.len(),
            context,
        });
    }
    let mut rng = match sampling {
        Sampling::Greedy => None,
        Sampling::Random { seed, .. } => Some(ChaCha8Rng::seed_from_u64(seed)),
    };
    // The prefill: the virtual tokens (if any) and the prompt.
    let start = Instant::now();
    let mut cache = KvCache::start(model)?;
    let mut logits = step(model, &mut cache, prompt)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut ids = Vec::new();
    let stop = loop {
        let next = choose(&logits, sampling, rng.as_mut())?;
        ids.push(next);
        if ids.len() > budget.min_new && stop_ids.contains(&next) {
            break Stop::EndOfSequence;
        }
        if ids.len() >= budget.max_new {
            break Stop::MaxTokens;
        }
        if cache.len >= context {
            break Stop::ContextFull;
        }
        logits = step(model, &mut cache, &[next])?;
    };
    Ok(Generation {
        ids,
        stop,
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Log-probability of each continuation after `prompt` (summed over its tokens): the prompt is
/// read once, each continuation from a copy of its KV cache — lm-eval-harness's
/// log-likelihood scoring of answer choices.
///
/// # Errors
/// A candle error, or an empty prompt / one that with a continuation exceeds the context.
pub fn continuation_logprobs(
    model: &BaseModel,
    prompt: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<f64>, ModelError> {
    on_pool(|| continuation_logprobs_here(model, prompt, continuations))
}

fn continuation_logprobs_here(
    model: &BaseModel,
    prompt: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<f64>, ModelError> {
    let context = model.cfg.max_position_embeddings;
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let virtual_tokens = model.virtual_tokens.as_ref().map_or(0, VirtualTokens::len);
    if prompt.is_empty() || virtual_tokens + prompt.len() + longest > context {
        return Err(ModelError::Prompt {
            tokens: virtual_tokens + prompt.len() + longest,
            context,
        });
    }
    let mut cache = KvCache::start(model)?;
    let first = log_probs(&step(model, &mut cache, prompt)?)?;
    continuations
        .iter()
        .map(|c| {
            let mut total = 0.0;
            let mut lp = first.clone();
            let mut cache = cache.clone();
            for (i, &t) in c.iter().enumerate() {
                total += lp[t as usize];
                if i + 1 < c.len() {
                    lp = log_probs(&step(model, &mut cache, &[t])?)?;
                }
            }
            Ok(total)
        })
        .collect()
}

/// log-softmax of a logits vector, in f64.
fn log_probs(logits: &Tensor) -> Result<Vec<f64>, ModelError> {
    let v: Vec<f32> = logits.to_vec1()?;
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    Ok(v.iter().map(|&x| x as f64 - lse).collect())
}

/// Run `tokens` (at positions cache.len..) through the model, extending the cache; the
/// logits (vocab) of the last one.
fn step(model: &BaseModel, cache: &mut KvCache, tokens: &[u32]) -> Result<Tensor, ModelError> {
    let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), model.device())?;
    let x = forward(model, cache, model.embed_tokens.embed(&ids)?)?;
    let last = rms_norm(
        &x.narrow(0, x.dim(0)? - 1, 1)?,
        &model.norm,
        model.cfg.rms_norm_eps,
    )?;
    Ok(decode_matmul(&last, model.head(), model.inference)?.squeeze(0)?)
}

/// Run input embeddings `x` (n, hidden) at positions cache.len.. through the decoder blocks,
/// extending the cache; the last block's output (n, hidden), before the final norm.
fn forward(model: &BaseModel, cache: &mut KvCache, mut x: Tensor) -> Result<Tensor, ModelError> {
    let cfg = &model.cfg;
    let (n, pos) = (x.dim(0)?, cache.len);
    let device = model.device();
    let cos = model.cos.narrow(0, pos, n)?;
    let sin = model.sin.narrow(0, pos, n)?;
    let mask = causal_mask(
        n,
        pos,
        cfg.num_attention_heads / cfg.num_key_value_heads,
        device,
    )?;
    for (layer, block) in model.blocks.iter().enumerate() {
        let h = rms_norm(&x, &block.input_layernorm, cfg.rms_norm_eps)?;
        let proj = |ms: &[TargetModule], t: &Tensor| {
            let ws: Vec<&FrozenWeight> = ms.iter().map(|m| &block.proj[m.index()]).collect();
            decode_matmuls(t, &ws, model.inference)
        };
        use TargetModule::{DownProj, GateProj, KProj, OProj, QProj, UpProj, VProj};
        let [q, k, v]: [Tensor; 3] = proj(&[QProj, KProj, VProj], &h)?
            .try_into()
            .expect("three projections");
        let attn = attend(
            model,
            &mut cache.layers[layer],
            [q, k, v],
            (&cos, &sin, mask.as_ref()),
        )?;
        x = (x + decode_matmul(&attn, &block.proj[OProj.index()], model.inference)?)?;
        let h = rms_norm(&x, &block.post_attention_layernorm, cfg.rms_norm_eps)?;
        let [gate, up]: [Tensor; 2] = proj(&[GateProj, UpProj], &h)?
            .try_into()
            .expect("two projections");
        let act = swiglu(&gate, &up)?;
        x = (x + decode_matmul(&act, &block.proj[DownProj.index()], model.inference)?)?;
    }
    cache.len += n;
    Ok(x)
}

/// Additive mask for `n` new queries at positions pos.. over pos + n keys, rows grouped as
/// (query heads per KV head, n); None for a single query (it sees every key).
fn causal_mask(
    n: usize,
    pos: usize,
    rep: usize,
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    if n == 1 {
        return Ok(None);
    }
    let total = pos + n;
    let row = |i: usize| (0..total).map(move |j| if j <= pos + i { 0f32 } else { -1e9 });
    let mask: Vec<f32> = (0..rep).flat_map(|_| (0..n).flat_map(row)).collect();
    Ok(Some(Tensor::from_vec(mask, (rep * n, total), device)?))
}

/// Attention of the new positions over the cache: q, k, v are (n, heads·head_dim).
fn attend(
    model: &BaseModel,
    cache: &mut Option<(Tensor, Tensor)>,
    [q, k, v]: [Tensor; 3],
    (cos, sin, mask): (&Tensor, &Tensor, Option<&Tensor>),
) -> Result<Tensor, ModelError> {
    let cfg = &model.cfg;
    let (nh, nkv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
    );
    let n = q.dim(0)?;
    let heads = |t: &Tensor, h: usize| t.reshape((1, n, h, hd))?.transpose(1, 2)?.contiguous();
    let q = rope(&heads(&q, nh)?, cos, sin)?;
    let k = rope(&heads(&k, nkv)?, cos, sin)?;
    let v = heads(&v, nkv)?;
    let (k, v) = match cache.take() {
        Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    // Query heads sharing a KV head are stacked as rows: (1, nkv, rep·n, hd).
    let rep = nh / nkv;
    let q = q.reshape((1, nkv, rep * n, hd))?;
    let mut scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?.reshape((1, nh, n, hd))?;
    Ok(out.transpose(1, 2)?.contiguous()?.reshape((n, nh * hd))?)
}

/// The next token from the last position's logits.
fn choose(
    logits: &Tensor,
    sampling: Sampling,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<u32, ModelError> {
    let logits: Vec<f32> = logits.to_vec1()?;
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    let (
        Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        },
        Some(rng),
    ) = (sampling, rng)
    else {
        return Ok(argmax());
    };
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(top_k.unwrap_or(order.len()).max(1));
    let top = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                acc += q;
                acc >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * mass;
    for (k, &p) in probs.iter().enumerate() {
        if u < p {
            return Ok(order[k] as u32);
        }
        u -= p;
    }
    Ok(order[probs.len() - 1] as u32)
}
