//! `sim eval --task`: a classification task scored for each model — constrained-scoring
//! accuracy with its 95 % interval, macro-F1, recall per class, the majority baseline, and
//! generation accuracy with FinGPT's parsing when `--generation` is given.

use std::path::PathBuf;

use fedsim::eval::classify::{Classifier, TaskReport};
use fedsim::eval::task::{Task, TaskSource};
use fedsim::model::BaseModel;
use fedsim::tokenizer::TextTokenizer;
use serde::Serialize;

use super::out::outln;

/// Tasks `--task` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskName {
    /// Financial PhraseBank, FinGPT's test split (fpb_test.jsonl).
    Fpb,
    /// FiQA-SA (fiqa_test.jsonl).
    Fiqa,
    /// Twitter Financial News Sentiment (tfns_valid.csv).
    Tfns,
    /// PubMedQA (ori_pqal.json; --split test_ground_truth.json).
    Pubmedqa,
}

/// The task `--task` and `--data` (and `--split` for PubMedQA) name.
pub fn source(name: TaskName, data: PathBuf, split: Option<PathBuf>) -> TaskSource {
    match name {
        TaskName::Fpb => TaskSource::Fpb(data),
        TaskName::Fiqa => TaskSource::Fiqa(data),
        TaskName::Tfns => TaskSource::Tfns(data),
        TaskName::Pubmedqa => TaskSource::PubMedQa { path: data, split },
    }
}

/// One model's task result, as eval.json records it.
#[derive(Serialize)]
pub struct ModelTask {
    /// The model's name.
    pub model: String,
    /// Its result.
    #[serde(flatten)]
    pub report: TaskReport,
    /// The indices (0-based lines of the task file) of the items scored.
    pub items: Vec<usize>,
}

/// What to score.
pub struct TaskPlan {
    /// The task.
    pub task: Task,
    /// Item indices (all, or a stratified subset).
    pub items: Vec<usize>,
    /// Also generate answers.
    pub generation: bool,
    /// Sequences per forward pass.
    pub batch: usize,
}

impl TaskPlan {
    /// Load `source`; keep a stratified subset of `subset` items (seed 0) when given.
    pub fn load(
        source: &TaskSource,
        subset: Option<usize>,
        generation: bool,
        batch: usize,
    ) -> anyhow::Result<Self> {
        let task = source.load()?;
        if subset == Some(0) {
            anyhow::bail!("--subset 0 scores no item; give at least 1");
        }
        let items = task.stratified(subset.unwrap_or(usize::MAX), 0);
        Ok(Self {
            task,
            items,
            generation,
            batch,
        })
    }

    /// Score `model` (its adapter merged in, if any).
    pub fn score(
        &self,
        name: &str,
        model: &BaseModel,
        tokenizer: &TextTokenizer,
        stopped: &dyn Fn() -> bool,
    ) -> anyhow::Result<ModelTask> {
        let c = Classifier {
            model,
            lora: None,
            tokenizer,
            batch: self.batch,
        };
        let report = c.evaluate(
            &self.task,
            &self.items,
            self.generation,
            &mut |done, total| {
                eprintln!("{name}: {} {done}/{total}", self.task.name);
                if stopped() {
                    return Err(fedsim::data::Stopped);
                }
                Ok(())
            },
        )?;
        Ok(ModelTask {
            model: name.to_string(),
            report,
            items: self.items.clone(),
        })
    }
}

/// The table: one row per model.
pub fn print(task: &Task, out: &[&ModelTask]) -> anyhow::Result<()> {
    outln!(
        "{:<40} {:>9} {:>8} {:>15} {:>8} {:>9} {:>10}",
        "model",
        "items",
        "accuracy",
        "95% CI",
        "macro-F1",
        "majority",
        "generation"
    )?;
    for m in out {
        let s = &m.report.score;
        let items = match s.items < m.report.planned {
            true => format!("{}/{}", s.items, m.report.planned),
            false => s.items.to_string(),
        };
        let generation = m
            .report
            .generation
            .as_ref()
            .map_or("-".to_string(), |g| format!("{:.3}", g.accuracy));
        outln!(
            "{:<40} {:>9} {:>8.3} {:>15} {:>8.3} {:>9.3} {:>10}",
            m.model,
            items,
            s.accuracy,
            format!("[{:.3}, {:.3}]", s.ci95[0], s.ci95[1]),
            s.macro_f1,
            s.majority,
            generation
        )?;
        let recall: Vec<String> = s
            .recall
            .iter()
            .map(|(k, v)| format!("{k} {}", v.map_or("-".into(), |r| format!("{r:.3}"))))
            .collect();
        outln!("{:<40} recall: {}", "", recall.join(", "))?;
    }
    outln!(
        "{} ({}): accuracy by constrained scoring of {} as \" <word>\" after the prompt, Wilson 95% interval; majority = always the most common class; generation = greedy answer parsed for a class word (FinGPT's rule for the sentiment classes)",
        task.name,
        task.path.display(),
        task.labels.join("/")
    )?;
    Ok(())
}
