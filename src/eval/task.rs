//! Classification tasks scored by constrained likelihood: FPB, FiQA-SA and TFNS as FinGPT and
//! FlowerTune's finance track evaluate them, PubMedQA as lm-eval-harness does, or a labelled
//! file of the user's. A task is a list of prompts ending in `Answer:`, a gold class each, and
//! the class words scored as the continuation ` <word>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{pubmedqa, EvalError};
use crate::data::labelled::{
    self, fingpt_prompt, LabelSet, Labelled, TableFormat, TWEET_INSTRUCTION,
};

/// Which task, from which file (scenario `eval.task`; `sim eval --task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TaskSource {
    /// FinGPT's FPB test split (`fpb_test.jsonl`, `{context, target}`).
    Fpb(PathBuf),
    /// FinGPT's FiQA-SA test file (`fiqa_test.jsonl`).
    Fiqa(PathBuf),
    /// Twitter Financial News Sentiment, `text,label` CSV (0 bearish → negative, 1 bullish →
    /// positive, 2 neutral), asked FinGPT's tweet question.
    Tfns(PathBuf),
    /// PubMedQA's `ori_pqal.json`, optionally cut to a split (`test_ground_truth.json`).
    PubMedQa {
        /// `ori_pqal.json`.
        path: PathBuf,
        /// A PMID → answer file whose items are kept.
        #[serde(default)]
        split: Option<PathBuf>,
    },
    /// A labelled CSV or JSONL file (the fields of `data.source: Classification`).
    Classification {
        /// The file.
        path: PathBuf,
        /// Csv or Jsonl.
        format: TableFormat,
        /// Text column or key.
        text: String,
        /// Label column or key.
        label: String,
        /// Label value → word.
        labels: BTreeMap<String, String>,
        /// The question asked; default FinGPT's sentiment question over the words.
        #[serde(default)]
        instruction: Option<String>,
    },
}

impl TaskSource {
    /// The task's short name (a bounded metric label).
    pub fn name(&self) -> String {
        match self {
            TaskSource::Fpb(_) => "fpb".into(),
            TaskSource::Fiqa(_) => "fiqa".into(),
            TaskSource::Tfns(_) => "tfns".into(),
            TaskSource::PubMedQa { .. } => "pubmedqa".into(),
            TaskSource::Classification { .. } => "classification".into(),
        }
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        match self {
            TaskSource::Fpb(p) | TaskSource::Fiqa(p) | TaskSource::Tfns(p) => p,
            TaskSource::PubMedQa { path, .. } | TaskSource::Classification { path, .. } => path,
        }
    }

    /// Read the task.
    ///
    /// # Errors
    /// An unreadable or malformed file, or a label outside the task's classes (file and line).
    pub fn load(&self) -> Result<Task, EvalError> {
        let path = self.path().to_path_buf();
        let (labels, rows) = match self {
            TaskSource::Fpb(p) | TaskSource::Fiqa(p) => {
                (LabelSet::sentiment().words(), labelled::fingpt::load(p)?)
            }
            TaskSource::Tfns(p) => {
                let labels: BTreeMap<String, String> =
                    [("0", "negative"), ("1", "positive"), ("2", "neutral")]
                        .iter()
                        .map(|(v, w)| (v.to_string(), w.to_string()))
                        .collect();
                let c = labelled::Classification {
                    path: p.clone(),
                    format: TableFormat::Csv,
                    text: "text".into(),
                    label: "label".into(),
                    labels,
                    instruction: Some(TWEET_INSTRUCTION.into()),
                };
                (LabelSet::sentiment().words(), c.load()?)
            }
            TaskSource::PubMedQa { path, split } => return pubmedqa_task(path, split.as_deref()),
            TaskSource::Classification {
                path,
                format,
                text,
                label,
                labels,
                instruction,
            } => {
                let c = labelled::Classification {
                    path: path.clone(),
                    format: *format,
                    text: text.clone(),
                    label: label.clone(),
                    labels: labels.clone(),
                    instruction: instruction.clone(),
                };
                (LabelSet::new(labels.clone(), path)?.words(), c.load()?)
            }
        };
        Task::from_labelled(self.name(), path, labels, rows)
    }
}

/// One item: the prompt (ending `Answer:`), the text it asks about, the gold class.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskItem {
    /// The whole prompt, up to and including `Answer:`.
    pub prompt: String,
    /// The text classified (for overlap checks against training data).
    pub text: String,
    /// Index of the gold class in [`Task::labels`].
    pub label: usize,
}

/// A loaded task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Short name.
    pub name: String,
    /// The file read.
    pub path: PathBuf,
    /// The class words, sorted; each is scored as ` <word>`.
    pub labels: Vec<String>,
    /// The items, in file order.
    pub items: Vec<TaskItem>,
}

impl Task {
    /// From labelled rows whose words must be among `labels`.
    ///
    /// # Errors
    /// [`EvalError::Data`] naming the line of a word outside `labels`.
    pub fn from_labelled(
        name: String,
        path: PathBuf,
        labels: Vec<String>,
        rows: Vec<Labelled>,
    ) -> Result<Self, EvalError> {
        let items =
            rows.into_iter()
                .map(|r| {
                    let label = labels.iter().position(|l| *l == r.label).ok_or_else(|| {
                        EvalError::Data {
                            path: path.clone(),
                            message: format!(
                                "line {}: label {:?} is not one of {}",
                                r.line,
                                r.label,
                                labels.join(", ")
                            ),
                        }
                    })?;
                    Ok(TaskItem {
                        prompt: fingpt_prompt(&r.instruction, &r.text),
                        text: r.text,
                        label,
                    })
                })
                .collect::<Result<Vec<_>, EvalError>>()?;
        Ok(Self {
            name,
            path,
            labels,
            items,
        })
    }

    /// Gold class of each item.
    pub fn gold(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// `n` item indices (sorted) drawn per class in proportion to the class sizes (largest
    /// remainders, ties to the smaller class index), within each class by a seeded shuffle:
    /// the same subset for the same task, `n` and seed. All items when `n` ≥ their number.
    pub fn stratified(&self, n: usize, seed: u64) -> Vec<usize> {
        let total = self.items.len();
        if n >= total {
            return (0..total).collect();
        }
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.labels.len()];
        for (i, item) in self.items.iter().enumerate() {
            by_class[item.label].push(i);
        }
        let exact: Vec<f64> = by_class
            .iter()
            .map(|c| c.len() as f64 * n as f64 / total as f64)
            .collect();
        let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut order: Vec<usize> = (0..take.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let short = n - take.iter().sum::<usize>();
        for &k in order.iter().take(short) {
            take[k] += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x57a7_1f1e);
        let mut out = Vec::with_capacity(n);
        for (class, k) in by_class.iter_mut().zip(take) {
            class.shuffle(&mut rng);
            out.extend_from_slice(&class[..k]);
        }
        out.sort_unstable();
        out
    }
}

/// PubMedQA as a task: lm-eval-harness's prompt, classes no / yes / maybe.
fn pubmedqa_task(path: &Path, split: Option<&Path>) -> Result<Task, EvalError> {
    let labels: Vec<String> = ["maybe", "no", "yes"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let items = pubmedqa::load(path, split)?
        .into_iter()
        .map(|i| TaskItem {
            prompt: i.prompt(),
            label: labels
                .iter()
                .position(|l| l == i.answer.word())
                .unwrap_or(0),
            text: i.question,
        })
        .collect();
    Ok(Task {
        name: "pubmedqa".into(),
        path: path.to_path_buf(),
        labels,
        items,
    })
}

/// The class a generated answer names, as FinGPT / FlowerTune's finance evaluation parses it
/// for the sentiment classes (`positive` anywhere → positive, else `negative` → negative,
/// else neutral: never unparsed); for other classes, the first class word found
/// (case-insensitive, in the order of `labels`), None when none is.
pub fn parse_generated(text: &str, labels: &[String]) -> Option<usize> {
    let lower = text.to_lowercase();
    let sentiment = labels.iter().map(String::as_str).eq(labelled::SENTIMENT);
    let at = |w: &str| labels.iter().position(|l| l == w);
    if sentiment {
        // FinGPT's change_target: checks "positive"/"Positive" then "negative"/"Negative".
        let has = |w: &str| {
            let cap = format!("{}{}", w[..1].to_uppercase(), &w[1..]);
            text.contains(w) || text.contains(&cap)
        };
        return if has("positive") {
            at("positive")
        } else if has("negative") {
            at("negative")
        } else {
            at("neutral")
        };
    }
    labels
        .iter()
        .position(|l| lower.contains(&l.to_lowercase()))
}
