//! Who masks with whom: SecAgg+'s sparse graph. The round's clients are placed on a circle
//! in a seeded random order and each is joined to the ⌈k/2⌉ nearest on either side (a
//! k-regular ring lattice, k rounded up to even, as Bell et al.'s Harary graph); with
//! k ≥ n − 1 every client is joined to every other (Bonawitz et al.'s SecAgg).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;

use crate::ids::ClientId;
use crate::rng::{purpose, rng_for};

/// The neighbours of each of a round's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    neighbours: BTreeMap<ClientId, Vec<ClientId>>,
}

impl Graph {
    /// The graph of `clients` (any order; duplicates ignored) with `k` neighbours each, drawn
    /// from `seed` and `round`.
    pub fn new(clients: &[ClientId], k: usize, seed: u64, round: u64) -> Self {
        let mut order: Vec<ClientId> = clients.to_vec();
        order.sort_unstable();
        order.dedup();
        let n = order.len();
        order.shuffle(&mut rng_for(seed, &[purpose::SECAGG, round]));
        let half = k.div_ceil(2);
        let mut neighbours = BTreeMap::new();
        for (p, &c) in order.iter().enumerate() {
            let mut ns: Vec<ClientId> = if 2 * half >= n.saturating_sub(1) {
                order.iter().copied().filter(|&o| o != c).collect()
            } else {
                (1..=half)
                    .flat_map(|d| [order[(p + d) % n], order[(p + n - d) % n]])
                    .collect()
            };
            ns.sort_unstable();
            ns.dedup();
            neighbours.insert(c, ns);
        }
        Self { neighbours }
    }

    /// `client`'s neighbours, in id order (empty for a client not in the round).
    pub fn of(&self, client: ClientId) -> &[ClientId] {
        self.neighbours.get(&client).map_or(&[], Vec::as_slice)
    }

    /// Whether `a` and `b` are neighbours.
    pub fn joined(&self, a: ClientId, b: ClientId) -> bool {
        self.of(a).binary_search(&b).is_ok()
    }

    /// The round's clients, in id order.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.neighbours.keys().copied()
    }
}
