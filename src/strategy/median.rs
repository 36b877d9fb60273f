//! Coordinate-wise median (Yin et al. 2018): each coordinate of the aggregate is the median of
//! the clients' values (the mean of the two middle ones for an even count). Needs every update
//! of the round; unweighted.

/// The coordinate-wise median of `updates` (all the same length; at least one).
pub fn median(updates: &[&[f32]]) -> Vec<f32> {
    let k = updates.len();
    let len = updates.first().map_or(0, |u| u.len());
    let mut column = vec![0f32; k];
    (0..len)
        .map(|j| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u[j];
            }
            column.sort_by(f32::total_cmp);
            if k % 2 == 1 {
                column[k / 2]
            } else {
                ((f64::from(column[k / 2 - 1]) + f64::from(column[k / 2])) / 2.0) as f32
            }
        })
        .collect()
}
