//! Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ⌊β·K⌋ smallest and
//! ⌊β·K⌋ largest of the K clients' values and average the rest. Needs every update; unweighted.

/// The β-trimmed mean of `updates` (β in [0, 0.5); at least one value always remains).
pub fn trimmed_mean(updates: &[&[f32]], beta: f64) -> Vec<f32> {
    let k = updates.len();
    let len = updates.first().map_or(0, |u| u.len());
    let cut = ((beta * k as f64).floor() as usize).min(k.saturating_sub(1) / 2);
    let mut column = vec![0f32; k];
    (0..len)
        .map(|j| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u[j];
            }
            column.sort_by(f32::total_cmp);
            let kept = &column[cut..k - cut];
            (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64) as f32
        })
        .collect()
}
