//! FedProx (Li et al. 2020): aggregation is FedAvg; each client adds the proximal term
//! μ/2·‖w − w_global‖² to its local loss, over the LoRA parameters, so local training cannot
//! drift far from the global adapter on heterogeneous shards. Streams; composes with DP.

use candle_core::{Tensor, Var};

/// μ/2·Σ‖v − a‖² over the variables and their anchors (copies of the global values).
///
/// # Errors
/// On a candle failure.
pub fn proximal_term(vars: &[Var], anchors: &[Tensor], mu: f64) -> candle_core::Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    for (v, a) in vars.iter().zip(anchors) {
        let d = v.as_tensor().sub(a)?.sqr()?.sum_all()?;
        sum = Some(match sum {
            Some(s) => (s + d)?,
            None => d,
        });
    }
    match sum {
        Some(s) => s * (mu / 2.0),
        None => Tensor::new(0f32, &candle_core::Device::Cpu),
    }
}

/// Copies of the variables' current values: the anchor of the proximal term (the variables
/// change as training steps).
///
/// # Errors
/// On a candle failure.
pub fn anchors(vars: &[Var]) -> candle_core::Result<Vec<Tensor>> {
    vars.iter()
        .map(|v| v.as_tensor().copy().map(|t| t.detach()))
        .collect()
}
