//! Server optimisers on the averaged pseudo-gradient (Reddi et al. 2021, *Adaptive Federated
//! Optimization*; FedAvgM: Hsu et al. 2019). Each round the server takes Δ, the (weighted)
//! mean of the clients' `local − global` updates, and moves the global adapter by an optimiser
//! step on it instead of adding it: state (m, v) persists across rounds.
//!
//! - FedAvgM: m ← β·m + Δ;                 x ← x + η·m
//! - FedAdagrad: m ← β1·m + (1−β1)·Δ;      v ← v + Δ²;                        x ← x + η·m/(√v + τ)
//! - FedAdam:    m ← β1·m + (1−β1)·Δ;      v ← β2·v + (1−β2)·Δ²;              x ← x + η·m/(√v + τ)
//! - FedYogi:    m ← β1·m + (1−β1)·Δ;      v ← v − (1−β2)·Δ²·sign(v − Δ²);    x ← x + η·m/(√v + τ)
//!
//! v starts at τ² (the paper's v₋₁ ≥ τ²), m at 0. Arithmetic per coordinate in f64, stored in
//! f32; with β = 0 and η = 1, FedAvgM is exactly FedAvg.

use serde::{Deserialize, Serialize};

/// Which optimiser, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ServerOptimizer {
    /// Server momentum.
    FedAvgM {
        /// η.
        server_lr: f64,
        /// β.
        momentum: f64,
    },
    /// Adagrad on the server.
    FedAdagrad {
        /// η.
        server_lr: f64,
        /// β1.
        beta1: f64,
        /// τ (adaptivity).
        tau: f64,
    },
    /// Adam on the server.
    FedAdam {
        /// η.
        server_lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// τ.
        tau: f64,
    },
    /// Yogi on the server.
    FedYogi {
        /// η.
        server_lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// τ.
        tau: f64,
    },
}

impl ServerOptimizer {
    /// η.
    pub fn server_lr(&self) -> f64 {
        match *self {
            ServerOptimizer::FedAvgM { server_lr, .. }
            | ServerOptimizer::FedAdagrad { server_lr, .. }
            | ServerOptimizer::FedAdam { server_lr, .. }
            | ServerOptimizer::FedYogi { server_lr, .. } => server_lr,
        }
    }

    /// Name as in the papers.
    pub fn name(&self) -> &'static str {
        match self {
            ServerOptimizer::FedAvgM { .. } => "FedAvgM",
            ServerOptimizer::FedAdagrad { .. } => "FedAdagrad",
            ServerOptimizer::FedAdam { .. } => "FedAdam",
            ServerOptimizer::FedYogi { .. } => "FedYogi",
        }
    }
}

/// The optimiser's state across rounds (saved in a run's checkpoint, exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// Which optimiser.
    pub optimizer: ServerOptimizer,
    /// First moment (momentum).
    #[serde(with = "crate::bytes::f32s")]
    pub m: Vec<f32>,
    /// Second moment (empty for FedAvgM).
    #[serde(with = "crate::bytes::f32s")]
    pub v: Vec<f32>,
    /// Steps taken.
    pub steps: u64,
}

impl ServerState {
    /// Fresh state for `len` parameters.
    pub fn new(optimizer: ServerOptimizer, len: usize) -> Self {
        let v = match optimizer {
            ServerOptimizer::FedAvgM { .. } => Vec::new(),
            ServerOptimizer::FedAdagrad { tau, .. }
            | ServerOptimizer::FedAdam { tau, .. }
            | ServerOptimizer::FedYogi { tau, .. } => vec![(tau * tau) as f32; len],
        };
        Self {
            optimizer,
            m: vec![0.0; len],
            v,
            steps: 0,
        }
    }

    /// One server step: the change to apply to the global adapter for pseudo-gradient `delta`.
    pub fn step(&mut self, delta: &[f32]) -> Vec<f32> {
        self.steps += 1;
        let mut out = vec![0f32; delta.len()];
        match self.optimizer {
            ServerOptimizer::FedAvgM {
                server_lr,
                momentum,
            } => {
                for ((o, m), &d) in out.iter_mut().zip(&mut self.m).zip(delta) {
                    *m = (momentum * f64::from(*m) + f64::from(d)) as f32;
                    *o = (server_lr * f64::from(*m)) as f32;
                }
            }
            ServerOptimizer::FedAdagrad {
                server_lr,
                beta1,
                tau,
            } => self.adaptive(delta, &mut out, server_lr, beta1, tau, |v, d2| v + d2),
            ServerOptimizer::FedAdam {
                server_lr,
                beta1,
                beta2,
                tau,
            } => self.adaptive(delta, &mut out, server_lr, beta1, tau, |v, d2| {
                beta2 * v + (1.0 - beta2) * d2
            }),
            ServerOptimizer::FedYogi {
                server_lr,
                beta1,
                beta2,
                tau,
            } => self.adaptive(delta, &mut out, server_lr, beta1, tau, |v, d2| {
                v - (1.0 - beta2) * d2 * (v - d2).signum() * f64::from(u8::from(v != d2))
            }),
        }
        out
    }

    fn adaptive(
        &mut self,
        delta: &[f32],
        out: &mut [f32],
        lr: f64,
        beta1: f64,
        tau: f64,
        second: impl Fn(f64, f64) -> f64,
    ) {
        for (((o, m), v), &d) in out.iter_mut().zip(&mut self.m).zip(&mut self.v).zip(delta) {
            let d = f64::from(d);
            let mm = beta1 * f64::from(*m) + (1.0 - beta1) * d;
            let vv = second(f64::from(*v), d * d);
            *m = mm as f32;
            *v = vv as f32;
            *o = (lr * mm / (vv.max(0.0).sqrt() + tau)) as f32;
        }
    }
}

impl ServerState {
    /// The state as safetensors (`m`, and `v` for the adaptive optimisers, flat f32 over the
    /// adapter's values in layout order), with the optimiser, its hyper-parameters and the
    /// steps taken as metadata: `server_state.safetensors` in the run directory.
    ///
    /// # Errors
    /// When safetensors refuses the buffers (it does not for flat f32 vectors).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (m, v) = (bytes(&self.m), bytes(&self.v));
        let mut views = vec![(
            "m".to_string(),
            TensorView::new(Dtype::F32, vec![self.m.len()], &m)?,
        )];
        if !self.v.is_empty() {
            views.push((
                "v".to_string(),
                TensorView::new(Dtype::F32, vec![self.v.len()], &v)?,
            ));
        }
        let metadata = std::collections::HashMap::from([
            ("optimizer".to_string(), self.optimizer.name().to_string()),
            (
                "hyperparameters".to_string(),
                format!("{:?}", self.optimizer),
            ),
            ("steps".to_string(), self.steps.to_string()),
        ]);
        let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
        Ok(sorted_header(bytes))
    }
}

/// `bytes` with its safetensors header's keys in sorted order. safetensors writes the metadata
/// map in `HashMap` order, which differs from run to run; the same state must give the same
/// file. The data (and the offsets, relative to it) are unchanged.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    let parsed = bytes
        .get(..8)
        .and_then(|n| usize::try_from(u64::from_le_bytes(n.try_into().ok()?)).ok())
        .and_then(|n| Some((n, bytes.get(8..8 + n)?)))
        .and_then(|(n, h)| {
            Some((
                n,
                serde_json::from_slice::<std::collections::BTreeMap<String, serde_json::Value>>(h)
                    .ok()?,
            ))
        });
    let Some((n, header)) = parsed else {
        return bytes; // not reached: safetensors wrote it
    };
    let mut text = serde_json::to_string(&header).expect("JSON values serialise");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}
