//! The server's privacy ledger: the sampling rate each round is accounted with, the composed
//! RDP, (ε, δ) after each round, whether the next round would exceed `max_epsilon`, and the
//! clipping norm in force (which adaptive clipping moves).

use super::noise::GaussianNoise;
use super::{DpPlan, DpSampling, Guarantee, Mechanism, RdpAccountant};

/// Privacy state of a running federation.
#[derive(Debug, Clone)]
pub struct PrivacyLedger {
    plan: DpPlan,
    accountant: RdpAccountant,
    last: Option<Guarantee>,
    clip: f64,
    rounds: usize,
    last_q: f64,
    /// The sampling rate of every round recorded, in order (what a resumed run replays).
    rates: Vec<f64>,
}

/// What a ledger needs to continue where it stopped: the rates composed so far (replayed, so
/// the accountant's state is the same to the bit) and the clipping norm in force.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerSnapshot {
    /// Sampling rate of each recorded round.
    pub rates: Vec<f64>,
    /// The clipping norm in force (adaptive clipping moves it).
    pub clip: f64,
}

impl PrivacyLedger {
    /// A ledger with nothing spent.
    pub fn new(plan: DpPlan) -> Self {
        let accountant = RdpAccountant::new(plan.scheme(), plan.series);
        let clip = plan.mechanism.initial_clip();
        Self {
            plan,
            accountant,
            last: None,
            clip,
            rounds: 0,
            last_q: 0.0,
            rates: Vec::new(),
        }
    }

    /// A ledger of `plan` that has recorded what `snap` says.
    pub fn resume(plan: DpPlan, snap: &LedgerSnapshot) -> Self {
        let mut ledger = Self::new(plan);
        for &q in &snap.rates {
            ledger.record(q);
        }
        ledger.clip = snap.clip;
        ledger
    }

    /// What [`PrivacyLedger::resume`] needs.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            rates: self.rates.clone(),
            clip: self.clip,
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

    /// The clipping norm in force.
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// Std of the noise on the sum of clipped updates this round: z_update · C.
    pub fn sum_stddev(&self) -> f64 {
        self.plan.mechanism.value_noise_multiplier() * self.clip
    }

    /// Distributed DP: the std of each client's share, in the update's units (a discrete
    /// share's σ over the 2⁴⁰ fixed-point steps); None when the server adds the noise.
    pub fn client_stddev(&self) -> Option<f64> {
        match self.plan.distributed_noise() {
            Some(n) => Some(n.share.std() / crate::fixed::STEPS_PER_UNIT),
            None => self.plan.noise_by.client_stddev(self.sum_stddev()),
        }
    }

    /// Std of the noise on the unclipped count (adaptive clipping), else 0.
    pub fn count_stddev(&self) -> f64 {
        match self.plan.mechanism {
            Mechanism::Adaptive { count_stddev, .. } => count_stddev,
            _ => 0.0,
        }
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
        charge(&self.plan, &mut next, q);
        next.epsilon(self.plan.delta).expect("delta is validated")
    }

    /// Record one round at rate `q`; returns ε after it.
    pub fn record(&mut self, q: f64) -> Guarantee {
        charge(&self.plan, &mut self.accountant, q);
        let g = self
            .accountant
            .epsilon(self.plan.delta)
            .expect("delta is validated");
        self.last = Some(g);
        self.rounds += 1;
        self.last_q = q;
        self.rates.push(q);
        g
    }

    /// ε by the PLD accountant after the rounds recorded so far, when `dp.pld` is on
    /// (Poisson sampling, so every round has the same q).
    pub fn pld_epsilon(&self) -> Option<f64> {
        if !self.plan.pld || self.rounds == 0 || self.plan.distributed_noise().is_some() {
            return None;
        }
        let z = self.plan.accounted_noise_multiplier();
        match super::pld_epsilon(z, self.last_q, self.rounds, self.plan.delta) {
            Ok(g) => Some(g.epsilon),
            Err(e) => {
                tracing::warn!("round {}: no PLD epsilon: {e}", self.rounds);
                None
            }
        }
    }

    /// Adaptive clipping after a round: from the pre-clip `norms` of the aggregated updates,
    /// release the noised unclipped fraction b̃ = (Σ(1[‖Δ‖ ≤ C] − ½) + N(0, σ_b²))/m + ½ and
    /// move the clip geometrically, C ← C·exp(−η(b̃ − γ)). Returns b̃, or `None` for fixed
    /// clipping or m = 0.
    pub fn adapt_clip(&mut self, norms: &[f64], m: f64, noise: &mut GaussianNoise) -> Option<f64> {
        let Mechanism::Adaptive {
            target_quantile,
            clip_lr,
            ..
        } = self.plan.mechanism
        else {
            return None;
        };
        if m <= 0.0 {
            return None;
        }
        let centred: f64 = norms
            .iter()
            .map(|&n| if n <= self.clip { 0.5 } else { -0.5 })
            .sum();
        let b = (centred + noise.sample()) / m + 0.5;
        self.clip *= (-clip_lr * (b - target_quantile)).exp();
        Some(b)
    }
}

/// One round of `plan` at rate `q` into `accountant`: the subsampled Gaussian, or the
/// distributed discrete Gaussian's own bound.
fn charge(plan: &DpPlan, accountant: &mut RdpAccountant, q: f64) {
    match plan.distributed_noise() {
        Some(n) => accountant.compose_curve(|a| n.rdp(q, a), 1),
        None => accountant
            .compose(q, plan.accounted_noise_multiplier(), 1)
            .expect("rate and noise are validated"),
    }
}
