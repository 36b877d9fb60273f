//! Byzantine clients (scenario `system.byzantine`): a fixed set of clients that upload a
//! corrupted update instead of the one they trained — sign-flipped, scaled, Gaussian noise or a
//! constant — to test which aggregation rules survive them. Who attacks and what each sends
//! are pure functions of (seed, round, client): runs stay deterministic.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::messages::{ClientId, RoundId};
use crate::rng::{purpose::BYZANTINE, rng_for};

/// Which clients attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Attackers {
    /// This share of all clients (rounded to the nearest count), drawn from the seed.
    Share(f64),
    /// These client ids.
    Listed(Vec<ClientId>),
}

/// What an attacker uploads in place of its update u.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ByzantineAttack {
    /// −u.
    SignFlip,
    /// λ·u.
    Scale(f64),
    /// Independent N(0, std²) values (u is discarded).
    Gaussian(f64),
    /// Every value set to this constant.
    Constant(f64),
}

impl ByzantineAttack {
    /// Label for tables and metrics.
    pub fn label(&self) -> String {
        match self {
            ByzantineAttack::SignFlip => "sign flip".into(),
            ByzantineAttack::Scale(l) => format!("scaled ×{l}"),
            ByzantineAttack::Gaussian(s) => format!("Gaussian σ={s}"),
            ByzantineAttack::Constant(c) => format!("constant {c}"),
        }
    }
}

/// The attackers of a run and their attack.
#[derive(Debug, Clone, PartialEq)]
pub struct Byzantine {
    attackers: BTreeSet<ClientId>,
    attack: ByzantineAttack,
    seed: u64,
}

impl Byzantine {
    /// The attackers among `clients` clients.
    pub fn new(attackers: &Attackers, attack: ByzantineAttack, clients: usize, seed: u64) -> Self {
        let set = match attackers {
            Attackers::Listed(ids) => ids.iter().copied().filter(|&c| c < clients).collect(),
            Attackers::Share(p) => {
                let n = ((p * clients as f64).round() as usize).min(clients);
                let mut ids: Vec<ClientId> = (0..clients).collect();
                ids.shuffle(&mut rng_for(seed, &[BYZANTINE, 0]));
                ids.into_iter().take(n).collect()
            }
        };
        Self {
            attackers: set,
            attack,
            seed,
        }
    }

    /// Whether client `c` attacks.
    pub fn is_attacker(&self, c: ClientId) -> bool {
        self.attackers.contains(&c)
    }

    /// The attackers.
    pub fn attackers(&self) -> &BTreeSet<ClientId> {
        &self.attackers
    }

    /// The attack.
    pub fn attack(&self) -> ByzantineAttack {
        self.attack
    }

    /// Replace `update` by what attacker `c` sends in `round`.
    pub fn corrupt(&self, update: &mut [f32], round: RoundId, c: ClientId) {
        match self.attack {
            ByzantineAttack::SignFlip => update.iter_mut().for_each(|x| *x = -*x),
            ByzantineAttack::Scale(l) => update
                .iter_mut()
                .for_each(|x| *x = (f64::from(*x) * l) as f32),
            ByzantineAttack::Constant(v) => update.iter_mut().for_each(|x| *x = v as f32),
            ByzantineAttack::Gaussian(std) => {
                let mut rng = rng_for(self.seed, &[BYZANTINE, 1, round as u64, c as u64]);
                update.iter_mut().for_each(|x| {
                    let z: f64 = rng.sample(StandardNormal);
                    *x = (z * std) as f32;
                });
            }
        }
    }
}
