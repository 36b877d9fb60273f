//! The fault model: who is online in a round, who crashes during fit, who is Byzantine. Both are pure
//! functions of (scenario seed, round, client) — the server asks it who is available without
//! messaging 10⁵ actors, and a client knows its own fate when it plans its round.

use std::sync::Arc;

use crate::byzantine::Byzantine;
use crate::devices::Fleet;
use crate::ids::{ClientId, RoundId};
use crate::rng::{derive, purpose};

/// Availability and crashes (scenario `system.availability`, `system.crash_probability`, trace
/// windows).
#[derive(Debug, Clone)]
pub struct FaultModel {
    /// Probability a client is online in a given round.
    pub availability: f64,
    /// Probability a client that starts fitting crashes before it uploads.
    pub crash_probability: f64,
    /// Clients whose actor panics while fitting (fault injection, to exercise supervision).
    pub inject_panic: Arc<[ClientId]>,
    /// Byzantine clients and their attack (`system.byzantine`).
    pub byzantine: Option<Arc<Byzantine>>,
    seed: u64,
    fleet: Arc<Fleet>,
}

/// A uniform draw in [0, 1) from a hash of (seed, parts).
fn uniform(seed: u64, parts: &[u64]) -> f64 {
    (derive(seed, parts) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl FaultModel {
    /// A fault model over `fleet`.
    pub fn new(
        availability: f64,
        crash_probability: f64,
        inject_panic: Vec<ClientId>,
        seed: u64,
        fleet: Arc<Fleet>,
    ) -> Self {
        Self {
            availability,
            crash_probability,
            inject_panic: inject_panic.into(),
            byzantine: None,
            seed,
            fleet,
        }
    }

    /// With these Byzantine clients.
    pub fn with_byzantine(mut self, byzantine: Option<Byzantine>) -> Self {
        self.byzantine = byzantine.map(Arc::new);
        self
    }

    /// Whether client `c` is online in `round`, which starts at virtual time `t`.
    pub fn available(&self, round: RoundId, c: ClientId, t: f64) -> bool {
        self.fleet.in_window(c, t)
            && (self.availability >= 1.0
                || uniform(self.seed, &[purpose::AVAILABILITY, round as u64, c as u64])
                    < self.availability)
    }

    /// `Some(fraction of its compute done)` when client `c` crashes during fit in `round`.
    pub fn crash(&self, round: RoundId, c: ClientId) -> Option<f64> {
        if self.crash_probability <= 0.0 {
            return None;
        }
        let u = uniform(self.seed, &[purpose::CRASH, round as u64, c as u64]);
        (u < self.crash_probability).then(|| u / self.crash_probability)
    }

    /// Whether client `c`'s actor is set to panic while fitting.
    pub fn panics(&self, c: ClientId) -> bool {
        self.inject_panic.contains(&c)
    }

    /// The fleet of device profiles.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }
}
