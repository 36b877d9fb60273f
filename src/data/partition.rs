//! Partitioners: how the training records are split over clients.
//!
//! - `Iid`: a seeded shuffle dealt into equal shards (sizes differ by at most one).
//! - `Dirichlet(alpha)`: per topic label, client proportions drawn from Dir(α) (Hsu et al. 2019);
//!   small α gives each client few topics. Redrawn (up to 100 times) until every client has data.
//! - `SizeSkew(sigma)`: IID content, shard sizes proportional to LogNormal(0, σ) weights.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

use super::{DataError, Record};

/// A partitioner (scenario field `partition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// [`DataError::Split`] when there are fewer records than clients, or a Dirichlet draw
    /// keeps leaving a client empty.
    pub fn split(
        &self,
        records: &[Record],
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
    records: &[Record],
    idx: &[usize],
    clients: usize,
    alpha: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    let mut by_topic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        by_topic
            .entry(records[i].topic.as_str())
            .or_default()
            .push(i);
    }
    let gamma = Gamma::new(alpha, 1.0).expect("alpha > 0 is validated");
    for _attempt in 0..100 {
        let mut shards = vec![Vec::new(); clients];
        for members in by_topic.values() {
            let mut p: Vec<f64> = (0..clients).map(|_| gamma.sample(rng)).collect();
            let sum: f64 = p.iter().sum();
            if sum <= 0.0 {
                p = vec![1.0; clients];
            }
            let sum: f64 = p.iter().sum();
            let mut start = 0usize;
            let mut acc = 0.0;
            for (c, pc) in p.iter().enumerate() {
                acc += pc / sum;
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
    Err(DataError::Split(format!(
        "Dirichlet(alpha = {alpha}) left a client without data in 100 draws ({} records, \
         {} topics, {clients} clients); raise partition.alpha or lower clients.count",
        records.len(),
        by_topic.len()
    )))
}
