//! L2 clipping of a client update (all LoRA tensors as one vector).

/// Result of clipping one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clipped {
    /// L2 norm before clipping.
    pub norm: f64,
    /// Whether the update was scaled down.
    pub clipped: bool,
}

/// Scale `update` in place so its L2 norm is at most `clip_norm` (Flower's `fixedclipping_mod`:
/// multiply by min(1, C / ‖Δ‖)). Updates already within the norm are left bit-for-bit unchanged.
pub fn clip_l2(update: &mut [f32], clip_norm: f64) -> Clipped {
    let norm = update
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm <= clip_norm {
        return Clipped {
            norm,
            clipped: false,
        };
    }
    let scale = clip_norm / norm;
    for v in update.iter_mut() {
        *v = (f64::from(*v) * scale) as f32;
    }
    Clipped {
        norm,
        clipped: true,
    }
}
