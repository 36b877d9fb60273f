//! Krum and multi-Krum (Blanchard et al. 2017): score each update by the sum of squared
//! distances to its K − f − 2 nearest neighbours (f: the number of Byzantine clients tolerated);
//! Krum keeps the update with the lowest score, multi-Krum averages the m lowest. Ties go to
//! the earlier update (updates are ordered by client id), so the choice never depends on
//! arrival order. Needs every update; unweighted.

use super::{FedAvgAccumulator, FoldError};

/// Indices of the `m` updates with the lowest Krum scores, best first.
pub fn select(updates: &[&[f32]], f: usize, m: usize) -> Vec<usize> {
    let k = updates.len();
    // Blanchard et al. need K > 2f + 2; with fewer updates (dropouts) at least one neighbour.
    let neighbours = k
        .saturating_sub(f.saturating_add(2))
        .max(1)
        .min(k.saturating_sub(1));
    let mut dist = vec![vec![0f64; k]; k];
    for i in 0..k {
        for j in i + 1..k {
            let d: f64 = updates[i]
                .iter()
                .zip(updates[j])
                .map(|(&a, &b)| {
                    let x = f64::from(a) - f64::from(b);
                    x * x
                })
                .sum();
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    let mut scored: Vec<(f64, usize)> = (0..k)
        .map(|i| {
            let mut row: Vec<f64> = (0..k).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            row.sort_by(f64::total_cmp);
            (row.iter().take(neighbours).sum(), i)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(m.clamp(1, k.max(1)))
        .map(|(_, i)| i)
        .collect()
}

/// Multi-Krum: the uniform mean of the `m` best-scored updates (Krum is m = 1), taken with
/// the exact FedAvg sum, so multi-Krum with m = K is FedAvg with uniform weights, bit for bit.
///
/// # Errors
/// A chosen update with a non-finite or oversized value (as FedAvg refuses it).
pub fn multi_krum(updates: &[&[f32]], f: usize, m: usize) -> Result<Vec<f32>, FoldError> {
    let len = updates.first().map_or(0, |u| u.len());
    let mut acc = FedAvgAccumulator::new(len);
    for i in select(updates, f, m) {
        acc.fold(updates[i], 1)?;
    }
    Ok(acc.mean().unwrap_or_else(|| vec![0.0; len]))
}
