//! Exposure of each planted canary under the run's model and under the pretrained base.

use std::collections::BTreeSet;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::exposure::{self, ExposureMethod, SkewNormal};
use super::slots::ScoringSlots;
use super::target::Target;
use super::{AttackError, Progress};
use crate::data::canary::{Canary, CanaryKind};
use crate::model::BaseModel;
use crate::rng::{purpose, rng_for};

/// How candidates are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidatePlan {
    /// Enumerate the whole space when it has at most this many fills.
    pub enumerate_up_to: u64,
    /// Otherwise, score this many distinct random fills.
    pub sampled: usize,
}

/// One canary's exposure under one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Bits: log2|R| − log2 rank (enumerated), or the skew-normal extrapolation.
    pub exposure: f64,
    /// How it was obtained.
    pub method: ExposureMethod,
    /// The canary's log-perplexity: summed NLL of its answer, nats.
    pub canary_nll: f64,
    /// Rank among the scored candidates (1 = lowest NLL; ties count against the canary).
    pub rank_among_scored: usize,
    /// The fitted distribution, when sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<SkewNormal>,
}

/// One canary's line of `attack.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryExposure {
    /// Canary index.
    pub id: usize,
    /// Kind of secret.
    pub kind: CanaryKind,
    /// The secret.
    pub secret: String,
    /// Owning client.
    pub client: usize,
    /// Copies in its shard.
    pub repeats: usize,
    /// Whether the owning client completed a round (else the run never saw the canary).
    pub seen: bool,
    /// |R|: fills of the format.
    pub space: f64,
    /// log2 |R|: the largest exposure possible.
    pub max_exposure: f64,
    /// Candidates scored besides the canary.
    pub candidates: usize,
    /// Under the run's model.
    pub run: Exposure,
    /// Under the pretrained base.
    pub pretrained: Exposure,
}

/// Fills of `format` to score beside the canary's own `secret`.
pub fn candidates(format: &str, secret: &str, plan: CandidatePlan, seed: u64) -> Vec<String> {
    let slots = format.matches('#').count() as u32;
    let space = 10u64.saturating_pow(slots);
    let fill = |mut n: u64| {
        let mut digits: Vec<char> = (0..slots)
            .map(|_| {
                let d = char::from(b'0' + (n % 10) as u8);
                n /= 10;
                d
            })
            .collect();
        digits.reverse();
        let mut it = digits.into_iter();
        format
            .chars()
            .map(|c| {
                if c == '#' {
                    it.next().unwrap_or('0')
                } else {
                    c
                }
            })
            .collect::<String>()
    };
    if space <= plan.enumerate_up_to {
        return (0..space).map(fill).filter(|s| s != secret).collect();
    }
    let mut rng = rng_for(seed, &[purpose::ATTACK, 2]);
    let want = plan.sampled.min((space - 1) as usize);
    let mut picked = BTreeSet::new();
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let s = fill(rng.random_range(0..space));
        if s != secret && picked.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

/// Summed NLL of each example's response under each of `models`.
fn nlls(
    t: &Target,
    models: [&BaseModel; 2],
    canary: &Canary,
    fills: &[String],
    slots: &ScoringSlots,
    tick: &mut dyn FnMut() -> Result<(), super::Stopped>,
) -> Result<[Vec<f64>; 2], AttackError> {
    let examples = fills
        .iter()
        .map(|f| {
            let r = canary.record_with(f);
            Ok(t.tokenizer
                .example_as(&r, t.scenario.max_seq_len, &t.format)?
                .0)
        })
        .collect::<Result<Vec<_>, AttackError>>()?;
    let refs: Vec<_> = examples.iter().collect();
    // A batch for every slot at a time, with a stop check after each.
    let step = slots.batch() * slots.len();
    let mut score = |model: &BaseModel| -> Result<Vec<f64>, AttackError> {
        let mut nll = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(step.max(1)) {
            let stats = slots.stats(model, chunk, t.pad())?;
            nll.extend(stats.iter().map(|s| -s.iter().map(|x| x.logp).sum::<f64>()));
            tick()?;
        }
        Ok(nll)
    };
    Ok([score(models[0])?, score(models[1])?])
}

fn exposure_of(scores: &[f64], space: f64, enumerated: bool) -> Exposure {
    let (canary, others) = (scores[0], &scores[1..]);
    let rank = exposure::rank(canary, others);
    let fit = (!enumerated).then(|| SkewNormal::fit(others)).flatten();
    let value = match (&fit, enumerated) {
        (_, true) => exposure::exposure_from_rank(space, rank),
        (Some(f), false) => f.exposure(canary, space),
        // Every sampled candidate scored the same: no spread to extrapolate from.
        (None, false) => exposure::exposure_from_sample(space, rank - 1, others.len()),
    };
    Exposure {
        exposure: value,
        method: if enumerated {
            ExposureMethod::Enumerated
        } else {
            ExposureMethod::SkewNormal
        },
        canary_nll: canary,
        rank_among_scored: rank,
        fit,
    }
}

/// Exposure of every canary under the run's model and the pretrained base.
///
/// # Errors
/// A tokenizer or model failure.
pub fn attack(
    t: &Target,
    plan: CandidatePlan,
    slots: &ScoringSlots,
    progress: Progress<'_>,
) -> Result<Vec<CanaryExposure>, AttackError> {
    let canaries = &t.data.canaries;
    let mut out = Vec::with_capacity(canaries.len());
    for (k, c) in canaries.iter().enumerate() {
        let digits = c.format.matches('#').count() as i32;
        let space = 10f64.powi(digits);
        let fills = candidates(&c.format, &c.secret, plan, t.scenario.seed ^ c.id as u64);
        let enumerated = fills.len() as f64 + 1.0 >= space;
        let mut all = vec![c.secret.clone()];
        all.extend(fills);
        let mut tick = || progress("canary exposure", k, canaries.len());
        let [run, pre] = nlls(t, [&t.tuned, &t.base], c, &all, slots, &mut tick)?;
        out.push(CanaryExposure {
            id: c.id,
            kind: c.kind,
            secret: c.secret.clone(),
            client: c.client,
            repeats: c.repeats,
            seen: t.participants.contains(&c.client),
            space,
            max_exposure: space.log2(),
            candidates: all.len() - 1,
            run: exposure_of(&run, space, enumerated),
            pretrained: exposure_of(&pre, space, enumerated),
        });
        progress("canary exposure", k + 1, canaries.len())?;
    }
    Ok(out)
}
