//! Top-k sparsification over the whole update: the k values largest in magnitude, ties broken
//! by the lower index so the choice never depends on the sort, sent in index order.

/// How many values a top-`fraction` of `n` keeps: ⌈fraction · n⌉, at least 1.
pub(super) fn kept(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64).ceil() as usize).clamp(1.min(n), n)
}

/// Indices (ascending) of the `k` values of `values` largest in magnitude; a value that is
/// not finite counts as the largest.
pub(super) fn select(values: &[f32], k: usize) -> Vec<u32> {
    let key = |i: u32| {
        let v = values[i as usize];
        let m = if v.is_finite() {
            v.abs()
        } else {
            f32::INFINITY
        };
        (std::cmp::Reverse(m.to_bits()), i)
    };
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    if k < idx.len() {
        // Magnitudes as bits order as the magnitudes do (non-negative floats).
        idx.select_nth_unstable_by_key(k, |&i| key(i));
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}
