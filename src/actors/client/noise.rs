//! A client's share of distributed DP noise (`dp.noise_by: Clients`): a Gaussian on its f32
//! values before upload, or a discrete Gaussian on its fixed-point terms inside secure
//! aggregation's ring. Each client draws from its own stream of the round's noise (after the
//! server's two).

use crate::ids::{ClientId, RoundId};
use crate::messages::{ClientNoise, NoiseShare};
use crate::privacy::noise::DiscreteNoise;

/// The stream of client `id`'s noise in a round.
fn stream(id: ClientId) -> u64 {
    2 + id as u64
}

/// Add a Gaussian share to `values` (a discrete share waits for the ring: nothing here).
pub(super) fn add_gaussian(values: &mut [f32], n: ClientNoise, round: RoundId, id: ClientId) {
    let NoiseShare::Gaussian { stddev } = n.share else {
        return;
    };
    let mut noise = n.source.generator(n.seed, round, stream(id), stddev);
    for x in values {
        *x = (f64::from(*x) + noise.sample()) as f32;
    }
}

/// The discrete Gaussian shares client `id` adds to its encoded terms, if it adds any.
pub(super) fn discrete(
    n: Option<ClientNoise>,
    round: RoundId,
    id: ClientId,
) -> Option<DiscreteNoise> {
    let n = n?;
    match n.share {
        NoiseShare::Discrete(share) => Some(n.source.discrete(n.seed, round, stream(id), share)),
        NoiseShare::Gaussian { .. } => None,
    }
}
