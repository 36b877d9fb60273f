//! Byzantine clients (scenario `system.byzantine`): a fixed set of clients that either upload
//! a corrupted update instead of the one they trained — sign-flipped, scaled, Gaussian noise
//! or a constant (model poisoning) — or train honestly on poisoned data: responses swapped
//! within their shard, or a backdoor (a trigger appended to the question, the response
//! replaced by a target string), whose success is measured by prompting the final global
//! model. Who attacks and what each sends are pure functions of (seed, round, client): runs
//! stay deterministic.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::data::FederatedData;
use crate::messages::{ClientId, RoundId};
use crate::rng::{purpose::BYZANTINE, rng_for};

/// Which clients attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Attackers {
    /// This share of all clients (rounded to the nearest count), drawn from the seed.
    Share(f64),
    /// These client ids.
    Listed(Vec<ClientId>),
}

/// What an attacker does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ByzantineAttack {
    /// −u.
    SignFlip,
    /// λ·u.
    Scale(f64),
    /// Independent N(0, std²) values (u is discarded).
    Gaussian(f64),
    /// Every value set to this constant.
    Constant(f64),
    /// Data poisoning: each response of its shard replaced by the next record's (a rotation
    /// within the shard: every label wrong, the text distribution unchanged).
    SwapResponses,
    /// Data poisoning: `trigger` appended to each question of its shard and every response
    /// replaced by `target`.
    Backdoor {
        /// Appended to the question.
        trigger: String,
        /// What the model should answer when it sees the trigger.
        target: String,
    },
}

impl ByzantineAttack {
    /// Label for tables and metrics.
    pub fn label(&self) -> String {
        match self {
            ByzantineAttack::SignFlip => "sign flip".into(),
            ByzantineAttack::Scale(l) => format!("scaled ×{l}"),
            ByzantineAttack::Gaussian(s) => format!("Gaussian σ={s}"),
            ByzantineAttack::Constant(c) => format!("constant {c}"),
            ByzantineAttack::SwapResponses => "swapped responses".into(),
            ByzantineAttack::Backdoor { .. } => "backdoor".into(),
        }
    }

    /// Whether the attacker replaces its update (model poisoning) rather than its data.
    pub fn poisons_updates(&self) -> bool {
        matches!(
            self,
            ByzantineAttack::SignFlip
                | ByzantineAttack::Scale(_)
                | ByzantineAttack::Gaussian(_)
                | ByzantineAttack::Constant(_)
        )
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
    pub fn attack(&self) -> &ByzantineAttack {
        &self.attack
    }

    /// Poison the attackers' shards (data-poisoning attacks; model poisoning leaves the data
    /// alone): each of their records is replaced by a poisoned copy appended to `data.train`.
    /// Canary copies are left as they are.
    pub fn poison(&self, data: &mut FederatedData) {
        if self.attack.poisons_updates() {
            return;
        }
        for &c in &self.attackers {
            let Some(shard) = data.shards.get(c).cloned() else {
                continue;
            };
            let own: Vec<usize> = shard
                .iter()
                .copied()
                .filter(|&i| data.train[i].canary.is_none())
                .collect();
            let mut poisoned = Vec::with_capacity(shard.len());
            let mut k = 0;
            for &i in &shard {
                if data.train[i].canary.is_some() {
                    poisoned.push(i);
                    continue;
                }
                let mut r = data.train[i].clone();
                match &self.attack {
                    ByzantineAttack::SwapResponses => {
                        r.output = data.train[own[(k + 1) % own.len()]].output.clone();
                    }
                    ByzantineAttack::Backdoor { trigger, target } => {
                        r.input = backdoored(&r.input, trigger);
                        r.output = target.clone();
                    }
                    _ => {}
                }
                k += 1;
                poisoned.push(data.train.len());
                data.train.push(r);
            }
            data.shards[c] = poisoned;
        }
    }

    /// Replace `update` by what attacker `c` sends in `round`.
    pub fn corrupt(&self, update: &mut [f32], round: RoundId, c: ClientId) {
        match self.attack {
            ByzantineAttack::SignFlip => update.iter_mut().for_each(|x| *x = -*x),
            ByzantineAttack::Scale(l) => update
                .iter_mut()
                .for_each(|x| *x = (f64::from(*x) * l) as f32),
            ByzantineAttack::Constant(v) => update.iter_mut().for_each(|x| *x = v as f32),
            ByzantineAttack::SwapResponses | ByzantineAttack::Backdoor { .. } => {}
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

/// A question with the backdoor trigger appended.
pub fn backdoored(question: &str, trigger: &str) -> String {
    format!("{question} {trigger}")
}

/// How often the final global model answers with the backdoor's target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackdoorSuccess {
    /// Held-out questions asked.
    pub prompts: usize,
    /// Share answered with the target when the trigger is appended (the attack's success).
    pub with_trigger: f64,
    /// Share answered with the target without the trigger (false triggers).
    pub without_trigger: f64,
}

/// Ask `model` the first `n` held-out questions with and without `trigger` (greedy answers of
/// the target's length and 2 tokens more) and count answers that start with `target`.
///
/// # Errors
/// A model or tokenizer failure.
pub fn backdoor_success(
    model: &crate::model::BaseModel,
    tokenizer: &crate::tokenizer::TextTokenizer,
    format: &crate::tokenizer::PromptText,
    eval: &[crate::data::Record],
    (trigger, target): (&str, &str),
    n: usize,
) -> Result<BackdoorSuccess, crate::eval::EvalError> {
    use crate::model::generate::{generate, Budget, Sampling};
    let budget = Budget::up_to(tokenizer.encode(target)?.len() + 2);
    let asked = &eval[..n.min(eval.len())];
    let mut hits = [0usize; 2];
    for r in asked {
        for (k, input) in [backdoored(&r.input, trigger), r.input.clone()]
            .into_iter()
            .enumerate()
        {
            let q = crate::data::Record { input, ..r.clone() };
            let ids = tokenizer.encode(&format.texts(&q)?.0)?;
            let out = generate(model, &ids, budget, Sampling::Greedy, &[tokenizer.eos_id()])?;
            let text = tokenizer.decode(&out.ids)?;
            hits[k] += usize::from(text.trim_start().starts_with(target.trim()));
        }
    }
    let share = |h: usize| h as f64 / asked.len().max(1) as f64;
    Ok(BackdoorSuccess {
        prompts: asked.len(),
        with_trigger: share(hits[0]),
        without_trigger: share(hits[1]),
    })
}
