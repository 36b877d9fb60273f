//! PubMedQA (Jin et al. 2019): expert-labelled yes/no/maybe questions over PubMed abstracts,
//! in the format of `ori_pqal.json` (an object keyed by PMID), with the official test split
//! (`test_ground_truth.json`: PMID → answer).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::EvalError;

/// A PubMedQA answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// yes
    Yes,
    /// no
    No,
    /// maybe
    Maybe,
}

impl Answer {
    /// Every answer, in the order choices are scored.
    pub const ALL: [Answer; 3] = [Answer::Yes, Answer::No, Answer::Maybe];

    /// The word.
    pub fn word(self) -> &'static str {
        match self {
            Answer::Yes => "yes",
            Answer::No => "no",
            Answer::Maybe => "maybe",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Answer::ALL.into_iter().find(|a| a.word() == s)
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// PubMed id.
    pub pmid: String,
    /// The question.
    pub question: String,
    /// The abstract's sections (without the conclusion, which gives the answer away).
    pub contexts: Vec<String>,
    /// The expert answer.
    pub answer: Answer,
}

impl Item {
    /// lm-eval-harness's prompt: `Abstract: …\nQuestion: …\nAnswer:`; the choices are scored as
    /// " yes", " no", " maybe" after it.
    pub fn prompt(&self) -> String {
        format!(
            "Abstract: {}\nQuestion: {}\nAnswer:",
            self.contexts.join(" "),
            self.question
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Raw {
    question: String,
    contexts: Vec<String>,
    #[serde(rename = "final_decision")]
    final_decision: String,
}

/// Read `ori_pqal.json`; with `split`, only the PMIDs of that file (e.g. the 500-item
/// `test_ground_truth.json`, whose answers must agree). Items are in PMID order.
///
/// # Errors
/// [`EvalError::Data`] naming the file and the problem.
pub fn load(path: &Path, split: Option<&Path>) -> Result<Vec<Item>, EvalError> {
    let bad = |p: &Path, message: String| EvalError::Data {
        path: p.to_path_buf(),
        message,
    };
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| bad(p, e.to_string()));
    let raw: BTreeMap<String, Raw> = serde_json::from_str(&read(path)?)
        .map_err(|e| bad(path, format!("not PubMedQA's ori_pqal.json format: {e}")))?;
    let mut items = Vec::with_capacity(raw.len());
    for (pmid, r) in raw {
        let answer = Answer::parse(&r.final_decision).ok_or_else(|| {
            bad(
                path,
                format!(
                    "item {pmid}: final_decision {:?} is not yes/no/maybe",
                    r.final_decision
                ),
            )
        })?;
        items.push(Item {
            pmid,
            question: r.question,
            contexts: r.contexts,
            answer,
        });
    }
    let Some(split) = split else {
        return non_empty(items, path);
    };
    let truth: BTreeMap<String, String> = serde_json::from_str(&read(split)?)
        .map_err(|e| bad(split, format!("not a PMID -> answer object: {e}")))?;
    let mut kept = Vec::with_capacity(truth.len());
    for (pmid, answer) in &truth {
        let item = items
            .iter()
            .find(|i| &i.pmid == pmid)
            .ok_or_else(|| bad(split, format!("PMID {pmid} is not in {}", path.display())))?;
        if Answer::parse(answer) != Some(item.answer) {
            return Err(bad(
                split,
                format!("PMID {pmid}: {answer:?} differs from the data set's answer"),
            ));
        }
        kept.push(item.clone());
    }
    non_empty(kept, split)
}

/// An empty set has no accuracy (not 0.000): refuse it, naming the file.
fn non_empty(items: Vec<Item>, path: &Path) -> Result<Vec<Item>, EvalError> {
    if items.is_empty() {
        return Err(EvalError::Data {
            path: path.to_path_buf(),
            message: "holds no PubMedQA items; an empty set has no accuracy".into(),
        });
    }
    Ok(items)
}

/// The first yes/no/maybe word of a generated answer (case-insensitive, whole words), as the
/// course's ClosedPubMedQA parsing does.
pub fn parse_answer(text: &str) -> Option<Answer> {
    text.split(|c: char| !c.is_alphanumeric())
        .find_map(|w| Answer::parse(&w.to_lowercase()))
}

/// Share of the most common answer among `items` (the majority-class baseline).
pub fn majority_share(items: &[Item]) -> f64 {
    let count = |a| items.iter().filter(|i| i.answer == a).count();
    let best = Answer::ALL.into_iter().map(count).max().unwrap_or(0);
    best as f64 / items.len().max(1) as f64
}
