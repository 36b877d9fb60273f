//! Partitioners: how the training records are split over clients.
//!
//! - `Iid`: a seeded shuffle dealt into equal shards (sizes differ by at most one).
//! - `Dirichlet(alpha)`: per topic label, client proportions drawn from Dir(α) (Hsu et al. 2019);
//!   small α gives each client few topics, down to one topic per client as α → 0 (sampled in
//!   log space, so no α underflows). Redrawn (up to 100 times) until every client has data;
//!   then each client still empty gets one record from the largest shard.
//! - `SizeSkew(sigma)`: IID content, shard sizes proportional to LogNormal(0, σ) weights.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

use super::{DataError, Record};

/// A partitioner (scenario field `partition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Partition {
    /// Equal-sized random shards.
    Iid,
    /// Label skew: per-topic client proportions from a symmetric Dirichlet(α).
    Dirichlet {
        /// Concentration; 0.1 is very skewed, 100 is nearly IID.
        alpha: f64,
    },
    /// Quantity skew: shard sizes ∝ LogNormal(0, σ).
    SizeSkew {
        /// Spread of log sizes; 0 is equal sizes.
        sigma: f64,
    },
}

impl Partition {
    /// Split `records` over `clients`; every client gets at least one record.
    ///
    /// # Errors
    /// [`DataError::Split`] when there are fewer records than clients.
    pub fn split(
        &self,
        records: &[Record],
        clients: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Vec<usize>>, DataError> {
        // Topic ids in the order of the topic names, so grouping by id groups as by name.
        let names: BTreeMap<&str, u16> = records
            .iter()
            .map(|r| (r.topic.as_str(), 0))
            .collect::<BTreeMap<_, _>>()
            .into_keys()
            .zip(0..)
            .collect();
        let topics: Vec<u16> = records.iter().map(|r| names[r.topic.as_str()]).collect();
        self.split_topics(&topics, clients, rng)
    }

    /// Split records known only by their topic ids (`topics[i]` of record i) over `clients`.
    ///
    /// # Errors
    /// As [`Partition::split`].
    pub fn split_topics(
        &self,
        records: &[u16],
        clients: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Vec<usize>>, DataError> {
        if records.len() < clients {
            return Err(DataError::Split(format!(
                "{} training records cannot give each of {clients} clients at least one; \
                 lower clients.count or use more data",
                records.len()
            )));
        }
        let mut idx: Vec<usize> = (0..records.len()).collect();
        idx.shuffle(rng);
        match *self {
            Partition::Iid => Ok(deal(&idx, &vec![1.0; clients])),
            Partition::SizeSkew { sigma } => {
                let dist = LogNormal::new(0.0, sigma.max(0.0)).expect("sigma >= 0 is valid");
                let w: Vec<f64> = (0..clients).map(|_| dist.sample(rng)).collect();
                Ok(deal(&idx, &w))
            }
            Partition::Dirichlet { alpha } => dirichlet(records, &idx, clients, alpha, rng),
        }
    }
}

/// Contiguous shards of `idx` with sizes ∝ `weights`, each at least 1 (largest remainder).
fn deal(idx: &[usize], weights: &[f64]) -> Vec<Vec<usize>> {
    let k = weights.len();
    let n = idx.len();
    let spare = n - k;
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / total * spare as f64).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|e| 1 + e.floor() as usize).collect();
    let mut left = n - sizes.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.partial_cmp(&fa)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &c in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[c] += 1;
        left -= 1;
    }
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for s in sizes {
        out.push(idx[start..start + s].to_vec());
        start += s;
    }
    out
}

fn dirichlet(
    topics: &[u16],
    idx: &[usize],
    clients: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    let mut by_topic: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        by_topic.entry(topics[i]).or_default().push(i);
    }
    let sampler = DirichletSampler::new(alpha, clients);
    let mut shards = Vec::new();
    for _attempt in 0..REDRAWS {
        shards = vec![Vec::new(); clients];
        for members in by_topic.values() {
            let p = sampler.sample(rng);
            let mut start = 0usize;
            let mut acc = 0.0;
            for (c, pc) in p.iter().enumerate() {
                acc += pc;
                let end = if c + 1 == clients {
                    members.len()
                } else {
                    ((acc * members.len() as f64).round() as usize).min(members.len())
                };
                shards[c].extend_from_slice(&members[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if shards.iter().all(|s| !s.is_empty()) {
            return Ok(shards);
        }
    }
    let moved = fill_empty(&mut shards);
    tracing::warn!(
        "Dirichlet(alpha = {alpha}) left {moved} of {clients} clients without data in {REDRAWS} \
         draws ({} topics); each was given one record from the largest shard",
        by_topic.len()
    );
    Ok(shards)
}

/// Draws of the Dirichlet partition before empty clients are filled.
const REDRAWS: usize = 100;

/// Give each empty shard one record taken from the currently largest shard (lowest index on
/// ties); returns how many shards were filled. Needs at least as many records as shards.
fn fill_empty(shards: &mut [Vec<usize>]) -> usize {
    let mut moved = 0;
    for c in 0..shards.len() {
        if shards[c].is_empty() {
            let largest = (0..shards.len())
                .max_by(|&a, &b| shards[a].len().cmp(&shards[b].len()).then(b.cmp(&a)))
                .expect("at least one shard");
            let r = shards[largest].pop().expect("more records than clients");
            shards[c].push(r);
            moved += 1;
        }
    }
    moved
}

/// A symmetric Dirichlet(α) over `k` categories, sampled in log space so that no α > 0 — down
/// to the smallest positive f64 — underflows to an all-zero draw.
///
/// With X ~ Gamma(α) written as X = Y·U^(1/α), Y ~ Gamma(α + 1), U ~ Uniform(0, 1) (Marsaglia
/// & Tsang's small-shape trick, which rand_distr uses too), α·ln X = α·ln Y + ln U is finite
/// for every α, and the weights are p_i ∝ exp((s_i − max s)/α): as α → 0 the draw tends to
/// one category taking everything, which is what a tiny α means.
pub struct DirichletSampler {
    alpha: f64,
    k: usize,
    big: Gamma<f64>,
}

impl DirichletSampler {
    /// Dir(α, …, α) over `k` categories; `alpha` must be finite and positive.
    pub fn new(alpha: f64, k: usize) -> Self {
        let shape = if alpha < 1.0 { alpha + 1.0 } else { alpha };
        Self {
            alpha,
            k,
            big: Gamma::new(shape, 1.0).expect("alpha > 0 is validated"),
        }
    }

    /// One draw: `k` non-negative weights summing to 1.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let a = self.alpha;
        let scaled: Vec<f64> = (0..self.k)
            .map(|_| {
                if a < 1.0 {
                    let u: f64 = rng.sample(rand_distr::Open01);
                    a * self.big.sample(rng).ln() + u.ln()
                } else {
                    a * self.big.sample(rng).ln()
                }
            })
            .collect();
        let top = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scaled.iter().map(|s| ((s - top) / a).exp()).collect();
        let sum: f64 = w.iter().sum();
        w.into_iter().map(|x| x / sum).collect()
    }
}
