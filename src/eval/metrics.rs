//! Classification metrics from a confusion matrix: accuracy with its Wilson 95 % interval,
//! macro-F1, per-class recall and the majority-class baseline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The normal quantile of a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Counts of (gold, predicted) label pairs over the class words, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// The class words, in the order of the rows and columns.
    pub labels: Vec<String>,
    /// `counts[gold][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// An empty matrix over `labels`.
    pub fn new(labels: Vec<String>) -> Self {
        let k = labels.len();
        Self {
            labels,
            counts: vec![vec![0; k]; k],
        }
    }

    /// From parallel gold and predicted class indices.
    pub fn from_pairs(labels: Vec<String>, gold: &[usize], predicted: &[usize]) -> Self {
        let mut c = Self::new(labels);
        for (&g, &p) in gold.iter().zip(predicted) {
            c.counts[g][p] += 1;
        }
        c
    }

    /// Items counted.
    pub fn items(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Items right.
    pub fn correct(&self) -> u64 {
        (0..self.labels.len()).map(|i| self.counts[i][i]).sum()
    }

    /// Share right (NaN with no items).
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.items() as f64
    }

    fn gold(&self, k: usize) -> u64 {
        self.counts[k].iter().sum()
    }

    fn predicted(&self, k: usize) -> u64 {
        self.counts.iter().map(|r| r[k]).sum()
    }

    /// Recall of each class that has gold items (None: no item of that class).
    pub fn recall(&self) -> BTreeMap<String, Option<f64>> {
        (0..self.labels.len())
            .map(|k| {
                let g = self.gold(k);
                let r = (g > 0).then(|| self.counts[k][k] as f64 / g as f64);
                (self.labels[k].clone(), r)
            })
            .collect()
    }

    /// Unweighted mean of per-class F1 over the classes that occur in the gold labels or the
    /// predictions (scikit-learn's `f1_score(average="macro")`, a class with no true positive
    /// scoring 0).
    pub fn macro_f1(&self) -> f64 {
        let mut sum = 0.0;
        let mut classes = 0;
        for k in 0..self.labels.len() {
            let (g, p, tp) = (self.gold(k), self.predicted(k), self.counts[k][k]);
            if g + p == 0 {
                continue;
            }
            classes += 1;
            sum += 2.0 * tp as f64 / (g + p) as f64;
        }
        sum / classes as f64
    }

    /// Share of the most common gold class: the accuracy of always answering it.
    pub fn majority(&self) -> f64 {
        let best = (0..self.labels.len())
            .map(|k| self.gold(k))
            .max()
            .unwrap_or(0);
        best as f64 / self.items() as f64
    }

    /// Wilson score 95 % interval of the accuracy.
    pub fn ci95(&self) -> [f64; 2] {
        wilson(self.correct(), self.items(), Z95)
    }

    /// The figures reported for a task evaluation.
    pub fn score(&self, task: &str) -> TaskScore {
        TaskScore {
            task: task.to_string(),
            items: self.items() as usize,
            accuracy: self.accuracy(),
            macro_f1: self.macro_f1(),
            ci95: self.ci95(),
            majority: self.majority(),
            recall: self.recall(),
            confusion: self.clone(),
        }
    }
}

/// Wilson's score interval for `k` successes out of `n` at normal quantile `z` (NaNs when
/// `n` is 0).
pub fn wilson(k: u64, n: u64, z: f64) -> [f64; 2] {
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// A task evaluation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// The task's name (`fpb`, `fiqa`, `tfns`, `pubmedqa`, or the file's stem).
    pub task: String,
    /// Items scored.
    pub items: usize,
    /// Share right.
    pub accuracy: f64,
    /// Macro-averaged F1.
    pub macro_f1: f64,
    /// Wilson 95 % interval of the accuracy.
    pub ci95: [f64; 2],
    /// Accuracy of always answering the most common class.
    pub majority: f64,
    /// Recall per class (null: no item of the class).
    pub recall: BTreeMap<String, Option<f64>>,
    /// The confusion matrix.
    pub confusion: Confusion,
}
