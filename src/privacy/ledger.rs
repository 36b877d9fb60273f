//! The server's privacy ledger: which sampling rate each round used, the composed RDP, the
//! (ε, δ) after each round, and whether the next round would exceed `max_epsilon`.

use super::{DpPlan, DpSampling, Guarantee, RdpAccountant};

/// Privacy state of a running federation.
#[derive(Debug, Clone)]
pub struct PrivacyLedger {
    plan: DpPlan,
    accountant: RdpAccountant,
    last: Option<Guarantee>,
}

impl PrivacyLedger {
    /// A ledger with nothing spent.
    pub fn new(plan: DpPlan) -> Self {
        let accountant = RdpAccountant::new(plan.scheme(), plan.series);
        Self {
            plan,
            accountant,
            last: None,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &DpPlan {
        &self.plan
    }

    /// ε after the rounds recorded so far.
    pub fn last(&self) -> Option<Guarantee> {
        self.last
    }

    /// The sampling rate a round is accounted with: `fraction_fit` under Poisson sampling,
    /// `sampled / available` under fixed-size sampling.
    pub fn sampling_rate(&self, fraction_fit: f64, sampled: usize, available: usize) -> f64 {
        match self.plan.sampling {
            DpSampling::Poisson => fraction_fit,
            DpSampling::Fixed => sampled as f64 / available.max(1) as f64,
        }
    }

    /// ε if one more round at rate `q` were run.
    pub fn peek(&self, q: f64) -> Guarantee {
        let mut next = self.accountant.clone();
        next.compose(q, self.plan.accounted_noise_multiplier(), 1)
            .expect("rate and noise are validated");
        next.epsilon(self.plan.delta).expect("delta is validated")
    }

    /// Record one round at rate `q`; returns ε after it.
    pub fn record(&mut self, q: f64) -> Guarantee {
        self.accountant
            .compose(q, self.plan.accounted_noise_multiplier(), 1)
            .expect("rate and noise are validated");
        let g = self
            .accountant
            .epsilon(self.plan.delta)
            .expect("delta is validated");
        self.last = Some(g);
        g
    }
}
