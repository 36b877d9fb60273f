//! A run's task accuracy as `summary.json` records it: the final and pretrained figures (on
//! the whole test split when it was scored), and time-to-accuracy — the simulated seconds,
//! rounds and bytes until the subset accuracy first reached `eval.target_accuracy`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::classify::TaskConfusions;
use super::metrics::Confusion;

/// `summary.json`'s `task_eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvalSummary {
    /// The task's short name.
    pub task: String,
    /// Items behind the final figures: the whole split, or the subset when the run ended
    /// before the last round's full scoring.
    pub items: usize,
    /// Items of the subset scored during the run.
    pub subset_items: usize,
    /// Final accuracy.
    pub accuracy: f64,
    /// Final macro-F1.
    pub macro_f1: f64,
    /// Wilson 95 % interval of the final accuracy.
    pub ci95: [f64; 2],
    /// Accuracy of always answering the most common class.
    pub majority: f64,
    /// Final recall per class.
    pub recall: BTreeMap<String, Option<f64>>,
    /// Final confusion matrix (`counts[gold][predicted]`).
    pub confusion: Confusion,
    /// The pretrained model on the same items, scored the same way (the control).
    pub pretrained_accuracy: Option<f64>,
    /// The pretrained model's macro-F1.
    pub pretrained_macro_f1: Option<f64>,
    /// Time-to-accuracy, when `eval.target_accuracy` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_accuracy: Option<TimeToAccuracy>,
}

/// When the subset accuracy first reached the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeToAccuracy {
    /// The target (`eval.target_accuracy`).
    pub target: f64,
    /// The first round whose subset accuracy reached it (0: the pretrained model already
    /// did); null when never reached.
    pub round: Option<usize>,
    /// Simulated seconds from the start to the end of that round.
    pub sim_seconds: Option<f64>,
    /// Bytes sent by clients up to and including that round.
    pub bytes_up: Option<u64>,
    /// Bytes sent to clients up to and including that round.
    pub bytes_down: Option<u64>,
    /// Why it is null, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What time-to-accuracy reads of a round (a line of `rounds.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundPoint {
    /// The round.
    pub round: usize,
    /// Its subset accuracy, when the task was scored.
    pub accuracy: Option<f64>,
    /// When it ended on the virtual clock, seconds.
    pub sim_end_s: f64,
    /// Bytes clients sent in it.
    pub bytes_up: u64,
    /// Bytes sent to clients in it.
    pub bytes_down: u64,
}

/// Time-to-accuracy over `rounds` (their subset accuracies), starting from the pretrained
/// model's subset accuracy `pretrained`.
pub fn time_to_accuracy(
    rounds: &[RoundPoint],
    target: f64,
    pretrained: Option<f64>,
) -> TimeToAccuracy {
    let reached = |round, sim_seconds, up, down| TimeToAccuracy {
        target,
        round: Some(round),
        sim_seconds: Some(sim_seconds),
        bytes_up: Some(up),
        bytes_down: Some(down),
        reason: None,
    };
    if pretrained.is_some_and(|a| a >= target) {
        return reached(0, 0.0, 0, 0);
    }
    let (mut up, mut down) = (0u64, 0u64);
    for r in rounds {
        up = up.saturating_add(r.bytes_up);
        down = down.saturating_add(r.bytes_down);
        if r.accuracy.is_some_and(|a| a >= target) {
            return reached(r.round, r.sim_end_s, up, down);
        }
    }
    let scored: Vec<f64> = rounds.iter().filter_map(|r| r.accuracy).collect();
    let reason = match scored.iter().copied().reduce(f64::max) {
        Some(best) => format!(
            "not reached in {} rounds: best subset accuracy {best:.3} < target {target}",
            rounds.len()
        ),
        None => format!(
            "not reached: no round scored the task ({} rounds)",
            rounds.len()
        ),
    };
    TimeToAccuracy {
        target,
        round: None,
        sim_seconds: None,
        bytes_up: None,
        bytes_down: None,
        reason: Some(reason),
    }
}

/// The summary's `task_eval` from the pretrained and final evaluations' confusions.
pub fn summarise(
    name: &str,
    pretrained: Option<&TaskConfusions>,
    last: &TaskConfusions,
    rounds: &[RoundPoint],
    target: Option<f64>,
) -> TaskEvalSummary {
    // Compare like with like: the whole split when both have it, else the subsets.
    let (fin, pre) = match (&last.full, pretrained.and_then(|p| p.full.as_ref())) {
        (Some(f), p) => (
            f,
            p.or(pretrained.map(|p| &p.subset))
                .filter(|p| p.items() == f.items()),
        ),
        (None, _) => (&last.subset, pretrained.map(|p| &p.subset)),
    };
    let score = fin.score(name);
    TaskEvalSummary {
        task: name.to_string(),
        items: score.items,
        subset_items: last.subset.items() as usize,
        accuracy: score.accuracy,
        macro_f1: score.macro_f1,
        ci95: score.ci95,
        majority: score.majority,
        recall: score.recall,
        confusion: score.confusion,
        pretrained_accuracy: pre.map(Confusion::accuracy),
        pretrained_macro_f1: pre.map(Confusion::macro_f1),
        time_to_accuracy: target
            .map(|t| time_to_accuracy(rounds, t, pretrained.map(|p| p.subset.accuracy()))),
    }
}
