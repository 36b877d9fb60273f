//! Activation inversion by the server of a split run: what the cut's activations, as the
//! server decodes them, reveal of the client's private text.
//!
//! The server is honest-but-curious and white-box: it knows the base and, under SplitFed,
//! the client-side adapter it averages. Two attacks on each activation row (one per token):
//! - **nearest token**: the vocabulary embedding most aligned (cosine) with the row — exact
//!   at cut 0, where the row *is* the token's embedding;
//! - **learned decoder**: a linear map from rows to token embeddings, fitted by ridge
//!   regression (centred, λ = 10⁻² × the mean diagonal of XᵀX) on the activations of public
//!   text the server holds — the run's held-out split — then the nearest token to the mapped
//!   row. It is scored on the members' text, which the fit never saw.
//!
//! Each figure is the share of private tokens recovered, with a Wilson 95 % interval; beside
//! them the share a guess of the most frequent fitted token gets (the floor).

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::AttackError;
use crate::batch::make_batch;
use crate::model::BaseModel;
use crate::split::step::{client_forward, RealRows};
use crate::split::SplitConfig;
use crate::tokenizer::TokenizedExample;

/// Rows scored against the vocabulary at once.
const CHUNK: usize = 128;

/// A share of tokens recovered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recovered {
    /// Tokens recovered.
    pub recovered: u64,
    /// Tokens attacked.
    pub tokens: u64,
    /// recovered / tokens.
    pub rate: f64,
    /// Wilson 95 % interval of the rate.
    pub interval: [f64; 2],
}

impl Recovered {
    fn of(hits: impl Iterator<Item = bool>) -> Self {
        let (mut recovered, mut tokens) = (0u64, 0u64);
        for h in hits {
            recovered += h as u64;
            tokens += 1;
        }
        Self {
            recovered,
            tokens,
            rate: recovered as f64 / tokens.max(1) as f64,
            interval: crate::eval::metrics::wilson(recovered, tokens, 1.96),
        }
    }
}

/// `attack.json`'s `inversion`: the server's view of a split run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inversion {
    /// Blocks on the client.
    pub cut_layer: usize,
    /// The activations' codec.
    pub codec: String,
    /// Tokens of public text the decoder was fitted on.
    pub fit_tokens: u64,
    /// Nearest token, every private token.
    pub nearest: Recovered,
    /// Learned decoder, every private token.
    pub learned: Recovered,
    /// Learned decoder, response tokens only (the labels — U-shaped never sends them as
    /// labels, but they are inputs, and their activations go up).
    pub learned_response: Recovered,
    /// Guessing the most frequent fitted token, every private token (the floor).
    pub floor: Recovered,
}

/// What the server sees of `examples`: decoded activation rows (tokens × hidden), the tokens,
/// and whether each is a response token.
struct Seen {
    rows: Vec<f32>,
    ids: Vec<u32>,
    response: Vec<bool>,
}

fn seen(
    model: &BaseModel,
    split: &SplitConfig,
    examples: &[TokenizedExample],
    (pad, batch): (u32, usize),
) -> Result<Seen, AttackError> {
    let device = model.device();
    let mut out = Seen {
        rows: Vec::new(),
        ids: Vec::new(),
        response: Vec::new(),
    };
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let input = make_batch(&refs, pad, device)?;
        let s = input.input_ids.dims2()?.1;
        let real = RealRows::new(chunk.iter().map(|e| e.ids.len()).collect(), s, device)?;
        let (h, _) = client_forward(model, split.cut_layer, &input, None, None)?;
        let msg = real.encode(&h, split.activation_compression)?;
        let (_, _, values) = msg.decode().map_err(crate::split::SplitError::from)?;
        out.rows.extend(values);
        for e in chunk {
            out.ids.extend(&e.ids);
            out.response
                .extend((0..e.ids.len()).map(|t| t >= e.prompt_len));
        }
    }
    Ok(out)
}

/// Fitted on at most this many held-out texts.
const FIT_TEXTS: usize = 400;

/// The inversion attack on a split run: fitted on the held-out split, scored on `members`
/// (indices into the training records).
///
/// # Errors
/// A tokenizer or model failure.
pub fn attack(
    t: &super::Target,
    split: &SplitConfig,
    members: &[usize],
    batch: usize,
) -> Result<Inversion, AttackError> {
    let tokenize = |r: &crate::data::Record| -> Result<TokenizedExample, AttackError> {
        Ok(t.tokenizer
            .example_as(r, t.scenario.max_seq_len, &t.format)?
            .0)
    };
    let public: Vec<TokenizedExample> = t
        .data
        .eval
        .iter()
        .take(FIT_TEXTS)
        .map(tokenize)
        .collect::<Result<_, _>>()?;
    let private: Vec<TokenizedExample> = members
        .iter()
        .map(|&i| tokenize(&t.data.train[i]))
        .collect::<Result<_, _>>()?;
    invert(&t.tuned, split, (&public, &private), (t.pad(), batch))
}

/// `sim invert`: the inversion attack alone on the split run in `dir`, scored on up to
/// `members` member texts; writes `inversion.json` there.
///
/// # Errors
/// A directory that is not a split run, or a model, tokenizer or I/O failure.
pub fn invert_run(
    dir: &std::path::Path,
    members: usize,
    batch: usize,
) -> Result<Inversion, AttackError> {
    let t = super::Target::open(dir)?;
    let Some(split) = t.scenario.topology.split() else {
        return Err(AttackError::Run {
            path: dir.join("scenario.ron"),
            message: "is not a split run (topology Split): no activations reached the server; \
                      `sim attack` measures what its adapters leak"
                .into(),
        });
    };
    let chosen = super::membership::split(&t, members)?;
    let inversion = attack(&t, &split, &chosen.members, batch)?;
    crate::report::RunDir::existing(dir).write_json("inversion.json", &inversion)?;
    Ok(inversion)
}

/// Invert the cut's activations of `private` with `model` (the run's merged model), the
/// decoder fitted on `public`.
///
/// # Errors
/// A model failure.
pub fn invert(
    model: &BaseModel,
    split: &SplitConfig,
    (public, private): (&[TokenizedExample], &[TokenizedExample]),
    (pad, batch): (u32, usize),
) -> Result<Inversion, AttackError> {
    let d = model.config().hidden_size;
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = (0..vocab as u32).collect();
    let emb = Tensor::from_vec(model.embedding_rows(&ids)?, (vocab, d), &Device::Cpu)?;
    let fit = seen(model, split, public, (pad, batch))?;
    let target = seen(model, split, private, (pad, batch))?;
    let x_fit = Tensor::from_slice(&fit.rows, (fit.ids.len(), d), &Device::Cpu)?;
    let y_fit = emb.index_select(
        &Tensor::from_slice(&fit.ids, fit.ids.len(), &Device::Cpu)?,
        0,
    )?;
    let map = ridge(&x_fit, &y_fit)?;
    let x = Tensor::from_slice(&target.rows, (target.ids.len(), d), &Device::Cpu)?;
    let nearest = nearest_tokens(&x, &emb)?;
    let learned = nearest_tokens(&map.apply(&x)?, &emb)?;
    let hits =
        |pred: &[u32]| -> Vec<bool> { pred.iter().zip(&target.ids).map(|(p, t)| p == t).collect() };
    let (near, learn) = (hits(&nearest), hits(&learned));
    let common = most_frequent(&fit.ids);
    Ok(Inversion {
        cut_layer: split.cut_layer,
        codec: split.activation_compression.label(),
        fit_tokens: fit.ids.len() as u64,
        nearest: Recovered::of(near.into_iter()),
        learned: Recovered::of(learn.iter().copied()),
        learned_response: Recovered::of(
            learn
                .iter()
                .zip(&target.response)
                .filter(|(_, r)| **r)
                .map(|(h, _)| *h),
        ),
        floor: Recovered::of(target.ids.iter().map(|&t| t == common)),
    })
}

fn most_frequent(ids: &[u32]) -> u32 {
    let mut counts = std::collections::HashMap::new();
    ids.iter()
        .for_each(|&i| *counts.entry(i).or_insert(0usize) += 1);
    counts
        .into_iter()
        .max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))
        .map_or(0, |(i, _)| i)
}

/// The vocabulary row most aligned (cosine) with each row of `x`.
fn nearest_tokens(x: &Tensor, emb: &Tensor) -> Result<Vec<u32>, AttackError> {
    let unit = |t: &Tensor| -> candle_core::Result<Tensor> {
        let norm = t
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        t.broadcast_div(&norm)
    };
    let e_t = unit(emb)?.t()?.contiguous()?;
    let x = unit(x)?;
    let mut out = Vec::with_capacity(x.dim(0)?);
    for start in (0..x.dim(0)?).step_by(CHUNK) {
        let n = CHUNK.min(x.dim(0)? - start);
        let scores = x.narrow(0, start, n)?.matmul(&e_t)?;
        out.extend(scores.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// A centred linear map y ≈ (x − x̄) W + ȳ.
struct LinearMap {
    w: Tensor,
    x_mean: Tensor,
    y_mean: Tensor,
}

impl LinearMap {
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_sub(&self.x_mean)?
            .matmul(&self.w)?
            .broadcast_add(&self.y_mean)
    }
}

/// Ridge regression of `y` on `x` (rows are samples), solved in f64 by Cholesky.
fn ridge(x: &Tensor, y: &Tensor) -> Result<LinearMap, AttackError> {
    let (x_mean, y_mean) = (x.mean_keepdim(0)?, y.mean_keepdim(0)?);
    let (xc, yc) = (x.broadcast_sub(&x_mean)?, y.broadcast_sub(&y_mean)?);
    let xtx = xc.t()?.matmul(&xc)?.to_dtype(DType::F64)?;
    let xty = xc.t()?.matmul(&yc)?.to_dtype(DType::F64)?;
    let d = xtx.dim(0)?;
    let mut a: Vec<f64> = xtx.flatten_all()?.to_vec1()?;
    let lambda = 1e-2 * (0..d).map(|i| a[i * d + i]).sum::<f64>() / d as f64 + 1e-12;
    (0..d).for_each(|i| a[i * d + i] += lambda);
    let b: Vec<f64> = xty.flatten_all()?.to_vec1()?;
    let w = cholesky_solve(a, b, d, y.dim(1)?);
    let w: Vec<f32> = w.into_iter().map(|v| v as f32).collect();
    Ok(LinearMap {
        w: Tensor::from_vec(w, (d, y.dim(1)?), &Device::Cpu)?,
        x_mean,
        y_mean,
    })
}

/// Solve A X = B for a symmetric positive definite A (d × d) and B (d × m), row-major.
pub fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>, d: usize, m: usize) -> Vec<f64> {
    // A = L Lᵀ, L stored in the lower triangle of `a`.
    for j in 0..d {
        let s: f64 = (0..j).map(|k| a[j * d + k] * a[j * d + k]).sum();
        let diag = (a[j * d + j] - s).max(1e-300).sqrt();
        a[j * d + j] = diag;
        for i in j + 1..d {
            let s: f64 = (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum();
            a[i * d + j] = (a[i * d + j] - s) / diag;
        }
    }
    for c in 0..m {
        // L z = b, then Lᵀ x = z, column c in place.
        for i in 0..d {
            let s: f64 = (0..i).map(|k| a[i * d + k] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * d + i];
        }
        for i in (0..d).rev() {
            let s: f64 = (i + 1..d).map(|k| a[k * d + i] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * d + i];
        }
    }
    b
}
