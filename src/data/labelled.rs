//! Labelled text for classification tasks (sentiment of financial news and the like): a label
//! set with its verbalisers, the FinGPT / FlowerTune prompt, and the loaders — Financial
//! PhraseBank (`sentence@label`, latin-1), FinGPT JSONL (`{context, target}`) and CSV / JSONL
//! tables with a text and a label column.
//!
//! A labelled row becomes a [`Record`] whose `instruction` is the task's question, `input` the
//! text, `output` the label's word and `topic` the label's word too, so the Dirichlet
//! partitioner skews clients over labels (Hsu et al. 2019).

pub mod fingpt;
pub mod fpb;
pub mod table;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DataError, Record};

/// FinGPT's sentiment question for news (the `context` of `fpb_test.jsonl`).
pub const NEWS_INSTRUCTION: &str =
    "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.";

/// FinGPT's sentiment question for tweets (its TFNS and part of its FiQA items).
pub const TWEET_INSTRUCTION: &str =
    "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.";

/// The sentiment words of FPB, FiQA-SA and TFNS as FinGPT writes them.
pub const SENTIMENT: [&str; 3] = ["negative", "neutral", "positive"];

/// One labelled text and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The question asked about the text (FinGPT's `Instruction:` line, without the prefix).
    pub instruction: String,
    /// The text.
    pub text: String,
    /// The label's word (its verbaliser), e.g. `positive`.
    pub label: String,
    /// 1-based line of the file the row starts on.
    pub line: usize,
}

impl Labelled {
    /// As a training record (topic = label, for label-skewed partitions).
    pub fn into_record(self) -> Record {
        Record {
            instruction: self.instruction,
            input: self.text,
            topic: self.label.clone(),
            output: self.label,
            canary: None,
        }
    }
}

/// FinGPT's prompt: `Instruction: …\nInput: …\nAnswer:` (no trailing space: the label is
/// scored and trained as the continuation ` <label>`, its leading space in its own token).
pub fn fingpt_prompt(instruction: &str, text: &str) -> String {
    format!("Instruction: {instruction}\nInput: {text}\nAnswer:")
}

/// The comparison key of train/test overlap checks: lower-case ASCII letters and digits only,
/// so FPB's latin-1 sentences match the test split's copies whose characters were broken in
/// conversion (1,186 of its 1,212 sentences match exactly, all 1,212 this way).
pub fn normalise(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Labels by their value in a file, mapped to the words the model reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    /// value in the file → word.
    words: BTreeMap<String, String>,
}

impl LabelSet {
    /// From `value → word`; refuses an empty map, an empty word, and two different words that
    /// are equal after trimming and lower-casing or of which one starts the other (scoring
    /// could not tell them apart). Several values may share one word.
    ///
    /// # Errors
    /// [`DataError::Parse`] naming `path` and the colliding words.
    pub fn new(words: BTreeMap<String, String>, path: &Path) -> Result<Self, DataError> {
        let bad = |message: String| DataError::Parse {
            path: path.to_path_buf(),
            format: "a label set",
            message,
        };
        if words.is_empty() {
            return Err(bad(
                "labels is empty; map each label value to its word, e.g. {\"0\": \"negative\"}"
                    .into(),
            ));
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (value, word) in &words {
            if word.trim().is_empty() {
                return Err(bad(format!(
                    "label {value:?} has an empty word; give each label the word the model answers with"
                )));
            }
            let clash = seen.iter().find(|(_, w)| {
                let (a, b) = (w.trim().to_lowercase(), word.trim().to_lowercase());
                *w != word.as_str() && (a.starts_with(&b) || b.starts_with(&a))
            });
            if let Some((other, w)) = clash {
                return Err(bad(format!(
                    "the words of labels {other:?} ({w:?}) and {value:?} ({word:?}) collide (equal \
                     but for case or spaces, or one starts the other), so scoring could not tell \
                     them apart; give each label a distinct word"
                )));
            }
            seen.push((value, word));
        }
        Ok(Self { words })
    }

    /// The three sentiment words, each its own value.
    pub fn sentiment() -> Self {
        Self {
            words: SENTIMENT
                .iter()
                .map(|w| (w.to_string(), w.to_string()))
                .collect(),
        }
    }

    /// The word of a value, if known.
    pub fn word(&self, value: &str) -> Option<&str> {
        self.words.get(value.trim()).map(String::as_str)
    }

    /// The distinct words, sorted (the order classes are scored and reported in).
    pub fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = self.words.values().cloned().collect();
        w.sort();
        w.dedup();
        w
    }

    /// The known values, for messages.
    pub fn values(&self) -> String {
        self.words.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// FinGPT-style question listing the words: `What is the sentiment of this news? Please
    /// choose an answer from {a/b/c}.`
    pub fn default_instruction(&self) -> String {
        format!(
            "What is the sentiment of this news? Please choose an answer from {{{}}}.",
            self.words().join("/")
        )
    }
}

/// Format of a [`DataSource::Classification`](super::DataSource::Classification) table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TableFormat {
    /// Comma-separated with a header row; quoted fields may span lines.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// A user's labelled file (scenario `data.source: Classification(..)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classification {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: TableFormat,
    /// The column (CSV header) or key (JSONL) holding the text.
    pub text: String,
    /// The column or key holding the label.
    pub label: String,
    /// Label value in the file → the word the model answers with.
    pub labels: BTreeMap<String, String>,
    /// The question asked; default: FinGPT's sentiment question over the label words.
    #[serde(default)]
    pub instruction: Option<String>,
}

impl Classification {
    /// Read the rows.
    ///
    /// # Errors
    /// Unreadable file, missing column, empty text, unknown label value (file and line named).
    pub fn load(&self) -> Result<Vec<Labelled>, DataError> {
        let labels = LabelSet::new(self.labels.clone(), &self.path)?;
        let instruction = self
            .instruction
            .clone()
            .unwrap_or_else(|| labels.default_instruction());
        let rows = match self.format {
            TableFormat::Csv => table::read_csv(&self.path, &self.text, &self.label)?,
            TableFormat::Jsonl => table::read_jsonl(&self.path, &self.text, &self.label)?,
        };
        rows.into_iter()
            .map(|r| {
                let word = labels.word(&r.label).ok_or_else(|| DataError::Parse {
                    path: self.path.clone(),
                    format: "labelled text",
                    message: format!(
                        "line {}: unknown label value {:?} (known: {}); add it to `labels` or fix the row",
                        r.line,
                        r.label,
                        labels.values()
                    ),
                })?;
                Ok(Labelled {
                    instruction: instruction.clone(),
                    text: r.text,
                    label: word.to_string(),
                    line: r.line,
                })
            })
            .collect()
    }
}

/// A text that is empty after trimming: named with its file and line.
pub(crate) fn empty_text(path: &Path, line: usize, format: &'static str) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        format,
        message: format!("line {line}: the text is empty; remove the row or fill it in"),
    }
}

/// `rows`, or an error naming `path` when the file held none (`what`: "sentence", "row"…).
pub(crate) fn non_empty<T>(
    rows: Vec<T>,
    path: &Path,
    format: &'static str,
    what: &str,
) -> Result<Vec<T>, DataError> {
    if rows.is_empty() {
        return Err(DataError::Parse {
            path: path.to_path_buf(),
            format,
            message: format!("holds no {what}"),
        });
    }
    Ok(rows)
}

/// Read a file as bytes (for latin-1) with the path in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// How many of `train` appear in `test` by [`normalise`]d text.
pub fn overlap<'a>(train: impl IntoIterator<Item = &'a str>, test: &HashSet<String>) -> usize {
    train
        .into_iter()
        .filter(|t| test.contains(&normalise(t)))
        .count()
}
