//! Folding a batch of buffered updates into the exact sums, on the fold pool, in one pass over
//! the updates' values.
//!
//! Each tile is scanned (max |x| of each update there) and, when every value in it is valid and
//! the tile's f64 sums stay exact, folded at once — while the tile is still in cache. Whether an
//! update is valid is only known once all its tiles are scanned, so the rare cases are settled
//! after the pass: an update with a non-finite or too large value is taken back out of the tiles
//! it was folded into (subtracting the same exact integers restores the exact sums), and the
//! tiles that could not be folded in f64 are folded then, through the i128 sums.

use super::fold::{self, Tile, F64_EXACT, I64_SAFE, LIMIT, SCALE};
use super::FoldError;

/// The exact sums: f64 while a tile's bound allows, i128 beyond.
#[derive(Debug, Clone)]
pub(super) struct Sums {
    /// Exact integer sums below 2⁵³.
    pub fast: Vec<f64>,
    /// Per tile: an upper bound on |fast[i]| over the tile.
    pub bound: Vec<f64>,
    /// Exact integer sums beyond f64's range (empty until a tile needs it).
    pub wide: Vec<i128>,
}

impl Sums {
    pub fn new(len: usize, tiles: usize) -> Self {
        Self {
            fast: vec![0.0; len],
            bound: vec![0.0; tiles],
            wide: Vec::new(),
        }
    }

    pub fn reset(&mut self) {
        self.fast.fill(0.0);
        self.bound.fill(0.0);
        self.wide = Vec::new();
    }

    /// The sums divided by `denom`, as f32: each exact integer sum rounded once to f64, so the
    /// same whichever of `fast` and `wide` holds it.
    pub fn divided(&self, denom: f64) -> Vec<f32> {
        if self.wide.is_empty() {
            fold::divide(&self.fast, denom)
        } else {
            fold::divide_wide(&self.wide, &self.fast, denom)
        }
    }

    /// The exact integer sums.
    pub fn exact(&self) -> Vec<i128> {
        if self.wide.is_empty() {
            self.fast.iter().map(|&f| f as i128).collect()
        } else {
            self.wide
                .iter()
                .zip(&self.fast)
                .map(|(&w, &f)| w + f as i64 as i128)
                .collect()
        }
    }

    /// The exact integer sums, each rounded once to f64.
    pub fn rounded(&self) -> Vec<f64> {
        if self.wide.is_empty() {
            self.fast.clone()
        } else {
            self.wide
                .iter()
                .zip(&self.fast)
                .map(|(&w, &f)| (w + f as i64 as i128) as f64)
                .collect()
        }
    }
}

/// One update of a batch, as the kernels see it: its values in a tile, its weight.
pub(super) trait Update: Sync {
    fn tile(&self, t: &Tile) -> &[f32];
    fn weight(&self) -> u64;
}

/// What the pass found in one tile.
struct Scan {
    /// Per update: the bit pattern of max |x| in this tile.
    max: Vec<u32>,
    /// Whether the whole batch was folded into this tile.
    folded: bool,
}

/// Fold `batch` into `sums`; the updates with a value that is not finite or |x| ≥ 2²³ are left
/// out and returned (index in the batch, first offender in flat order).
pub(super) fn fold_batch<U: Update>(
    sums: &mut Sums,
    tiles: &[Tile],
    pool: &rayon::ThreadPool,
    batch: &[U],
) -> Vec<(usize, FoldError)> {
    use rayon::prelude::*;
    let fast = fold::split_by_tiles(&mut sums.fast, tiles);
    let scans: Vec<Scan> = pool.install(|| {
        fast.into_par_iter()
            .zip(sums.bound.par_iter_mut())
            .zip(tiles.par_iter())
            .map(|((acc, bound), t)| scan_and_fold(acc, bound, t, batch))
            .collect()
    });
    let bad: Vec<(usize, FoldError)> = (0..batch.len())
        .filter_map(|k| first_offender(&scans, tiles, &batch[k], k).map(|e| (k, e)))
        .collect();
    let good: Vec<usize> = (0..batch.len())
        .filter(|k| !bad.iter().any(|(b, _)| b == k))
        .collect();
    if !bad.is_empty() || scans.iter().any(|s| !s.folded) {
        settle(sums, tiles, batch, &scans, &bad, &good);
    }
    bad
}

/// Scan one tile of every update and fold them into it when all are valid and its f64 sums
/// stay exact.
fn scan_and_fold<U: Update>(acc: &mut [f64], bound: &mut f64, t: &Tile, batch: &[U]) -> Scan {
    let max: Vec<u32> = batch
        .iter()
        .map(|u| fold::max_abs_bits(u.tile(t)))
        .collect();
    let valid = max.iter().all(|&m| m < LIMIT.to_bits());
    let added = terms_bound(batch.iter().zip(&max).map(|(u, &m)| (u, m)));
    let folded = valid && *bound + added < F64_EXACT;
    if folded {
        let terms: Vec<(&[f32], u64)> = batch.iter().map(|u| (u.tile(t), u.weight())).collect();
        fold::fold_f64(acc, &terms);
        *bound += added;
    }
    Scan { max, folded }
}

/// Σ ceil(max|x|·2⁴⁰)·w: a bound on the magnitude of these updates' terms.
fn terms_bound<'a, U: Update + 'a>(maxima: impl Iterator<Item = (&'a U, u32)>) -> f64 {
    maxima
        .map(|(u, m)| (f32::from_bits(m) as f64 * SCALE).ceil() * u.weight() as f64)
        .sum()
}

/// The first invalid value of update `k` in flat order, if any.
fn first_offender<U: Update>(scans: &[Scan], tiles: &[Tile], u: &U, k: usize) -> Option<FoldError> {
    let (_, t) = scans
        .iter()
        .zip(tiles)
        .find(|(s, _)| s.max[k] >= LIMIT.to_bits())?;
    let xs = u.tile(t);
    let i = xs.iter().position(|x| x.is_nan() || x.abs() >= LIMIT)?;
    Some(FoldError {
        index: t.flat + i,
        value: xs[i],
    })
}

/// The rare cases, after the pass: take rejected updates back out of the tiles they were
/// folded into, and fold the good ones into the tiles the pass left.
fn settle<U: Update>(
    sums: &mut Sums,
    tiles: &[Tile],
    batch: &[U],
    scans: &[Scan],
    bad: &[(usize, FoldError)],
    good: &[usize],
) {
    if scans.iter().any(|s| !s.folded) {
        sums.wide.resize(sums.fast.len(), 0);
    }
    for (ti, (t, s)) in tiles.iter().zip(scans).enumerate() {
        let span = t.flat..t.flat + t.len;
        if s.folded {
            // Exact: each partial result is an integer the pass's bound kept below 2⁵³.
            for (k, _) in bad {
                let (xs, w) = (batch[*k].tile(t), batch[*k].weight() as f64);
                for (a, &x) in sums.fast[span.clone()].iter_mut().zip(xs) {
                    *a -= (x as f64 * SCALE).trunc() * w;
                }
            }
            continue;
        }
        let added = terms_bound(good.iter().map(|&k| (&batch[k], s.max[k])));
        let terms: Vec<(&[f32], u64)> = good
            .iter()
            .map(|&k| (batch[k].tile(t), batch[k].weight()))
            .collect();
        let (fast, wide) = (&mut sums.fast[span.clone()], &mut sums.wide[span]);
        let bound = &mut sums.bound[ti];
        if *bound + added >= F64_EXACT {
            fold::spill(wide, fast);
            *bound = 0.0;
        }
        if added < F64_EXACT {
            fold::fold_f64(fast, &terms);
            *bound += added;
        } else if added < I64_SAFE {
            fold::fold_i64(wide, &terms);
        } else {
            fold::fold_i128(wide, &terms);
        }
    }
}
