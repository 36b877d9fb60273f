//! Membership inference: records the run trained on against held-out records of the same
//! source that no client saw, scored by the run's model and by the pretrained base.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::roc::{self, RocPoint, RocSummary};
use super::scoring::{Score, TextScores};
use super::slots::ScoringSlots;
use super::target::Target;
use super::{AttackError, Progress};
use crate::data::Record;
use crate::model::BaseModel;
use crate::rng::{purpose, rng_for};
use crate::tokenizer::TokenizedExample;

/// Indices of the texts attacked.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Into `data.train`: records of clients whose updates were aggregated (no canaries).
    pub members: Vec<usize>,
    /// Into `data.eval`: held-out records whose text no training record has.
    pub non_members: Vec<usize>,
}

fn key(r: &Record) -> (&str, &str, &str) {
    (&r.instruction, &r.input, &r.output)
}

/// Draw up to `want` members and as many non-members (equal counts), seeded by the run.
///
/// Members come from the shards of clients that completed a round, canary copies excluded
/// (canaries are measured by exposure); a text that also appears in the held-out split is
/// neither. Non-members are held-out records whose exact text is in no training record.
pub fn split(t: &Target, want: usize) -> Result<Split, AttackError> {
    let d = &t.data;
    let train_keys: HashSet<_> = d.train.iter().map(key).collect();
    let eval_keys: HashSet<_> = d.eval.iter().map(key).collect();
    let mut seen = HashSet::new();
    let mut members: Vec<usize> = t
        .participants
        .iter()
        .flat_map(|&c| d.shards[c].iter().copied())
        .filter(|&i| d.train[i].canary.is_none() && !eval_keys.contains(&key(&d.train[i])))
        .collect();
    members.sort_unstable();
    members.retain(|&i| seen.insert(key(&d.train[i])));
    let mut seen = HashSet::new();
    let mut non_members: Vec<usize> = (0..d.eval.len())
        .filter(|&i| !train_keys.contains(&key(&d.eval[i])))
        .collect();
    non_members.retain(|&i| seen.insert(key(&d.eval[i])));
    let n = want.min(members.len()).min(non_members.len());
    if n < 2 {
        return Err(AttackError::TooFew {
            members: members.len(),
            non_members: non_members.len(),
        });
    }
    let mut rng = rng_for(t.scenario.seed, &[purpose::ATTACK, 1]);
    members.shuffle(&mut rng);
    non_members.shuffle(&mut rng);
    members.truncate(n);
    non_members.truncate(n);
    Ok(Split {
        members,
        non_members,
    })
}

/// One score's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    /// Which score.
    pub score: Score,
    /// With the run's model.
    pub roc: RocSummary,
    /// The same score with the pretrained model alone: the distribution-shift control (None
    /// for scores that compare against the pretrained model).
    pub control: Option<RocSummary>,
    /// ROC curve with the run's model.
    pub curve: Vec<RocPoint>,
    /// ROC curve of the control.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_curve: Vec<RocPoint>,
}

/// The membership-inference part of `attack.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// Members scored.
    pub members: usize,
    /// Non-members scored (as many).
    pub non_members: usize,
    /// Clients whose records are members.
    pub member_clients: Vec<usize>,
    /// Mean loss of members / non-members with the run's model, nats/token.
    pub loss_members: f64,
    /// See `loss_members`.
    pub loss_non_members: f64,
    /// Per score.
    pub scores: Vec<ScoreResult>,
    /// The course's rule, "member iff PPL_finetuned / PPL_pretrained < 1", as accuracy on
    /// the balanced set.
    pub course_rule_accuracy: f64,
}

/// The attacked texts, tokenised once for every model: as trained on, lower-cased, and the
/// zlib size of each response.
struct Texts {
    plain: Vec<TokenizedExample>,
    lower: Vec<TokenizedExample>,
    zlib: Vec<usize>,
}

impl Texts {
    fn new(t: &Target, records: &[&Record]) -> Result<Self, AttackError> {
        let tokenize = |r: &Record| -> Result<TokenizedExample, AttackError> {
            Ok(t.tokenizer
                .example_as(r, t.scenario.max_seq_len, &t.format)?
                .0)
        };
        Ok(Self {
            plain: records
                .iter()
                .map(|r| tokenize(r))
                .collect::<Result<_, _>>()?,
            lower: records
                .iter()
                .map(|r| tokenize(&lowercase(r)))
                .collect::<Result<_, _>>()?,
            zlib: records
                .iter()
                .map(|r| super::scoring::zlib_bytes(&r.output))
                .collect(),
        })
    }
}

/// Everything one model says about the texts.
fn score_texts(
    t: &Target,
    model: &BaseModel,
    texts: &Texts,
    slots: &ScoringSlots,
    progress: Progress<'_>,
    stage: &str,
) -> Result<Vec<TextScores>, AttackError> {
    let total = texts.plain.len();
    let mut stats = Vec::with_capacity(total);
    let mut lowered = Vec::with_capacity(total);
    // A batch for every slot at a time, so progress shows while all slots work.
    let step = slots.batch() * slots.len();
    for start in (0..total).step_by(step) {
        let end = (start + step).min(total);
        let plain: Vec<&TokenizedExample> = texts.plain[start..end].iter().collect();
        let lower: Vec<&TokenizedExample> = texts.lower[start..end].iter().collect();
        stats.extend(slots.stats(model, &plain, t.pad())?);
        lowered.extend(slots.stats(model, &lower, t.pad())?);
        progress(stage, end, total)?;
    }
    Ok(stats
        .into_iter()
        .zip(lowered)
        .zip(&texts.zlib)
        .map(|((tokens, low), &zlib)| TextScores {
            tokens,
            lowercase_nll: super::scoring::mean_nll(&low),
            zlib,
        })
        .collect())
}

fn lowercase(r: &Record) -> Record {
    Record {
        instruction: r.instruction.to_lowercase(),
        input: r.input.to_lowercase(),
        output: r.output.to_lowercase(),
        ..r.clone()
    }
}

/// One score's ROC on the run's model (members are the first `m` texts) and, where the score
/// needs no reference model, on the pretrained one as the control.
fn score_result(s: Score, tuned: &[TextScores], base: &[TextScores], m: usize) -> ScoreResult {
    let values = |of: &[TextScores], reference: Option<&[TextScores]>| -> Vec<f64> {
        of.iter()
            .enumerate()
            .map(|(i, x)| s.signal(x.value(s, reference.map(|r| &r[i]))))
            .collect()
    };
    let run = values(tuned, Some(base));
    let (control, control_curve) = if s.needs_reference() {
        (None, Vec::new())
    } else {
        let c = values(base, None);
        (
            Some(roc::summarize(&c[..m], &c[m..])),
            roc::curve(&c[..m], &c[m..]),
        )
    };
    ScoreResult {
        score: s,
        roc: roc::summarize(&run[..m], &run[m..]),
        control,
        curve: roc::curve(&run[..m], &run[m..]),
        control_curve,
    }
}

/// Score the split with the run's model and the base; compute every score's metrics.
///
/// # Errors
/// A tokenizer or model failure.
pub fn attack(
    t: &Target,
    split: &Split,
    slots: &ScoringSlots,
    progress: Progress<'_>,
) -> Result<Membership, AttackError> {
    let records: Vec<&Record> = split
        .members
        .iter()
        .map(|&i| &t.data.train[i])
        .chain(split.non_members.iter().map(|&i| &t.data.eval[i]))
        .collect();
    let texts = Texts::new(t, &records)?;
    let tuned = score_texts(
        t,
        &t.tuned,
        &texts,
        slots,
        &mut *progress,
        "membership: run's model",
    )?;
    let base = score_texts(
        t,
        &t.base,
        &texts,
        slots,
        &mut *progress,
        "membership: pretrained",
    )?;
    let m = split.members.len();
    let scores = Score::ALL
        .into_iter()
        .map(|s| score_result(s, &tuned, &base, m))
        .collect();
    let ratio: Vec<f64> = tuned
        .iter()
        .zip(&base)
        .map(|(x, b)| x.value(Score::RefRatio, Some(b)))
        .collect();
    let loss = |r: &[TextScores]| {
        r.iter().map(|x| x.value(Score::Loss, None)).sum::<f64>() / r.len().max(1) as f64
    };
    Ok(Membership {
        members: m,
        non_members: split.non_members.len(),
        member_clients: t.participants.iter().copied().collect(),
        loss_members: loss(&tuned[..m]),
        loss_non_members: loss(&tuned[m..]),
        scores,
        course_rule_accuracy: roc::rule_accuracy(&ratio[..m], &ratio[m..], |r| r < 1.0),
    })
}
