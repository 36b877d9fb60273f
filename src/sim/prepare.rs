//! Everything a run needs before the actors start: records, shards, canaries, the trained
//! tokenizer, tokenised examples and the frozen base model. CPU-bound: call it off the async
//! executor.

use std::collections::HashSet;

use crate::data::labelled::normalise;
use crate::eval::classify::RunTask;
use crate::eval::score::TaskTokens;
use crate::eval::EvalError;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::SimError;
use crate::data::{FederatedData, Record, StageFn};
use crate::model::pretrained::Pretrained;
use crate::model::BaseModel;
use crate::report::RunDir;
use crate::rng::{derive, purpose};
use crate::scenario::file::{ModelSource, PromptFormat};
use crate::scenario::Scenario;
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::PromptText;
use crate::tokenizer::{TextTokenizer, TokenizedExample};
use crate::trainer::TrainerKind;

/// Everything prepared before the actors start.
pub struct Prepared {
    /// Each client's example indices.
    pub shards: Vec<Vec<u32>>,
    /// Training examples over all shards.
    pub train_examples: usize,
    /// Held-out examples.
    pub eval_examples: usize,
    /// Text, tokenizer and model: for the LoRA trainer (the synthetic trainer needs none).
    pub lora: Option<LoraData>,
}

/// What the LoRA trainer needs.
pub struct LoraData {
    /// Records, shards, canaries.
    pub data: FederatedData,
    /// The trained tokenizer.
    pub tokenizer: TextTokenizer,
    /// Tokenised training examples.
    pub train: Arc<Vec<TokenizedExample>>,
    /// Tokenised held-out examples.
    pub eval: Arc<Vec<TokenizedExample>>,
    /// Examples (training and held-out) cut to fit `data.max_seq_len`.
    pub truncated: usize,
    /// The frozen base (one copy, shared by every slot).
    pub model: Arc<BaseModel>,
    /// Where a pretrained base came from (None: generated from the seed).
    pub source: Option<ModelRecord>,
    /// How records are written for the model.
    pub format: PromptText,
    /// The task scored during the run (scenario `eval`), tokenised.
    pub task: Option<Arc<RunTask>>,
}

/// A pretrained base as the run directory records it (`model.json`), instead of a copy.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRecord {
    /// As the scenario names it.
    pub source: String,
    /// The file or directory read.
    pub path: std::path::PathBuf,
    /// SHA-256 of its weights.
    pub sha256: String,
}

/// The base model a scenario asks for.
enum Base {
    /// Random weights from the seed, tokenizer trained on the corpus.
    Generated,
    /// Read from files.
    Pretrained(Pretrained),
}

impl Base {
    fn open(s: &Scenario) -> Result<Self, SimError> {
        Ok(match &s.model_source {
            ModelSource::Tiny { .. } | ModelSource::Custom(_) => Base::Generated,
            ModelSource::Pretrained(spec) => Base::Pretrained(Pretrained::open_gguf(spec)?),
            ModelSource::HuggingFace(dir) => {
                Base::Pretrained(Pretrained::open_hf(std::path::Path::new(dir))?)
            }
        })
    }
}

/// How records are written for the model: `prompt` as the scenario says, for a generated base
/// (`None`) or a pretrained one (`Auto` picks its chat template when it ships one).
pub fn prompt_text(prompt: PromptFormat, pretrained: Option<&Pretrained>) -> PromptText {
    match (prompt, pretrained) {
        (PromptFormat::FinGpt, _) => PromptText::FinGpt,
        (PromptFormat::Alpaca, _) | (PromptFormat::Auto, None) => PromptText::Alpaca,
        (PromptFormat::Chat, None) => PromptText::Chat(ChatTemplate::default()),
        (PromptFormat::Auto, Some(p)) => match p.chat_template() {
            Some(t) => PromptText::Chat(t),
            None => PromptText::Alpaca,
        },
        (PromptFormat::Chat, Some(p)) => PromptText::Chat(p.chat_template().unwrap_or_default()),
    }
}

#[derive(Serialize)]
struct ClientPartition {
    client: usize,
    examples: usize,
    topics: BTreeMap<String, usize>,
}

/// Load data, train the tokenizer, tokenise, build the base model.
///
/// # Errors
/// Data, tokenizer or model failures.
pub fn prepare(s: &Scenario) -> Result<Prepared, SimError> {
    prepare_with(s, &mut crate::data::no_progress)
}

/// As [`prepare`], reporting `(stage, done, total)` as it goes (linear in the data).
///
/// # Errors
/// As [`prepare`].
pub fn prepare_with(s: &Scenario, progress: StageFn<'_>) -> Result<Prepared, SimError> {
    if let TrainerKind::Synthetic { .. } = s.trainer {
        let plan = s.data.shards_only(progress)?;
        return Ok(Prepared {
            shards: plan.shards,
            train_examples: plan.train,
            eval_examples: plan.eval,
            lora: None,
        });
    }
    let mut data = s.data.prepare_with(progress)?;
    // Data-poisoning Byzantine clients train on poisoned copies of their records.
    if let Some(b) = s.byzantine() {
        b.poison(&mut data);
    }
    let base = Base::open(s)?;
    let tokenizer = base_tokenizer(s, &base, &data, progress)?;
    let format = prompt_text(
        s.prompt,
        match &base {
            Base::Generated => None,
            Base::Pretrained(p) => Some(p),
        },
    );
    let (train, eval, truncated) = tokenize_all(s, &tokenizer, &format, &data, progress)?;
    let shards: Vec<Vec<u32>> = data
        .shards
        .iter()
        .map(|sh| sh.iter().map(|&i| i as u32).collect())
        .collect();
    let (model, source) = base_model(s, &base, progress)?;
    let task = run_task(s, &data, &tokenizer, model.config().max_position_embeddings)?;
    Ok(Prepared {
        shards,
        train_examples: train.len(),
        eval_examples: eval.len(),
        lora: Some(LoraData {
            data,
            tokenizer,
            train: Arc::new(train),
            eval: Arc::new(eval),
            truncated,
            model: Arc::new(model),
            source,
            format,
            task,
        }),
    })
}

/// The tokenizer: trained on the data for a generated base, the pretrained model's own.
fn base_tokenizer(
    s: &Scenario,
    base: &Base,
    data: &FederatedData,
    progress: StageFn<'_>,
) -> Result<TextTokenizer, SimError> {
    Ok(match base {
        Base::Generated => {
            progress("training the tokenizer", 0, 1)?;
            // The same sample `validate` checks the vocabulary on; it also bounds the one stage
            // that cannot hear a stop (the tokenizers crate's trainer).
            let sample = &data.train[..data.train.len().min(crate::scenario::TOKENIZER_SAMPLE)];
            let t = TextTokenizer::train(sample, s.model.vocab_size)?;
            progress("training the tokenizer", 1, 1)?;
            t
        }
        Base::Pretrained(p) => p.tokenizer()?,
    })
}

/// The training and held-out records tokenised, and how many were cut to fit.
fn tokenize_all(
    s: &Scenario,
    tokenizer: &TextTokenizer,
    format: &PromptText,
    data: &FederatedData,
    progress: StageFn<'_>,
) -> Result<(Vec<TokenizedExample>, Vec<TokenizedExample>, usize), SimError> {
    let mut truncated = 0;
    let total = data.train.len() + data.eval.len();
    let mut done = 0;
    let every = (total / 100).max(10_000);
    let mut tokenize = |records: &[Record]| {
        records
            .iter()
            .map(|r| {
                if done % every == 0 {
                    progress("tokenising", done, total)?;
                }
                done += 1;
                let (e, cut) = tokenizer.example_as(r, s.max_seq_len, format)?;
                truncated += usize::from(cut);
                Ok(e)
            })
            .collect::<Result<Vec<TokenizedExample>, SimError>>()
    };
    let train = tokenize(&data.train)?;
    let eval = tokenize(&data.eval)?;
    progress("tokenising", total, total)?;
    Ok((train, eval, truncated))
}

/// The frozen base: generated from the seed, or read from the pretrained file (with the record
/// of where it came from).
fn base_model(
    s: &Scenario,
    base: &Base,
    progress: StageFn<'_>,
) -> Result<(BaseModel, Option<ModelRecord>), SimError> {
    Ok(match base {
        Base::Generated => {
            let seed = derive(s.seed, &[purpose::MODEL]);
            let model = BaseModel::random(&s.model, seed, &candle_core::Device::Cpu)?
                .with_precision(s.base_precision)?
                .with_inference_activations(s.inference_activations)
                .with_compute_dtype(s.compute_dtype);
            (model, None)
        }
        Base::Pretrained(p) => {
            progress("reading the pretrained weights", 0, 1)?;
            let model = p
                .load_as(&candle_core::Device::Cpu, s.base_precision)?
                .with_inference_activations(s.inference_activations)
                .with_compute_dtype(s.compute_dtype);
            progress("reading the pretrained weights", 1, 1)?;
            let source = ModelRecord {
                source: s.model_name.clone(),
                path: p.path().to_path_buf(),
                sha256: p.sha256()?,
            };
            (model, Some(source))
        }
    })
}

impl Prepared {
    /// Write what the run directory keeps of the preparation: the tokenizer, the base model as
    /// a Hugging Face directory, the canaries and the partition (sizes only for the synthetic
    /// trainer).
    ///
    /// # Errors
    /// I/O or export failures.
    pub fn write(&self, dir: &RunDir) -> Result<(), SimError> {
        let Some(l) = &self.lora else {
            let sizes: Vec<ClientPartition> = self
                .shards
                .iter()
                .enumerate()
                .map(|(client, s)| ClientPartition {
                    client,
                    examples: s.len(),
                    topics: BTreeMap::new(),
                })
                .collect();
            dir.write_json("partitions.json", &sizes)?;
            return Ok(());
        };
        l.tokenizer.save(&dir.path().join("tokenizer.json"))?;
        match &l.source {
            // A pretrained base is named, not copied (hundreds of MB per run).
            Some(source) => dir.write_json("model.json", source)?,
            None => {
                let base_dir = dir.path().join("base_model");
                l.model.save_hf(&base_dir, l.tokenizer.eos_id())?;
                l.tokenizer.save(&base_dir.join("tokenizer.json"))?;
            }
        }
        dir.write_json("canaries.json", &l.data.canaries)?;
        let partitions: Vec<ClientPartition> = l
            .data
            .shards
            .iter()
            .enumerate()
            .map(|(client, shard)| {
                let mut topics = BTreeMap::new();
                for &i in shard {
                    *topics.entry(l.data.train[i].topic.clone()).or_insert(0) += 1;
                }
                ClientPartition {
                    client,
                    examples: self.shards[client].len(),
                    topics,
                }
            })
            .collect();
        dir.write_json("partitions.json", &partitions)?;
        Ok(())
    }

    /// Token length of every training example (the synthetic trainer: `seq_len` each).
    pub fn lengths(&self, seq_len: usize) -> Vec<u32> {
        match &self.lora {
            Some(l) => l.train.iter().map(|e| e.ids.len() as u32).collect(),
            None => vec![seq_len as u32; self.train_examples],
        }
    }
}

/// The scenario's task, loaded, checked against the data and tokenised: refused when any of
/// its items' texts is among the run's records (normalised match), since a run trained or
/// evaluated on them would score memorised items.
fn run_task(
    s: &Scenario,
    data: &FederatedData,
    tokenizer: &TextTokenizer,
    context: usize,
) -> Result<Option<Arc<RunTask>>, SimError> {
    let Some(e) = &s.task_eval else {
        return Ok(None);
    };
    let fail = |e: EvalError| SimError::Task(Box::new(e));
    let task = e.task.load().map_err(fail)?;
    let keys: HashSet<String> = task.items.iter().map(|i| normalise(&i.text)).collect();
    let texts = data
        .train
        .iter()
        .chain(&data.eval)
        .map(|r| r.input.as_str());
    let overlap = crate::data::labelled::overlap(texts.filter(|t| !t.is_empty()), &keys);
    if overlap > 0 {
        return Err(fail(EvalError::Data {
            path: task.path.clone(),
            message: format!(
                "{overlap} of the run's records are items of this test split; remove them from \
                 the training data (for FPB: data.source Fpb(test_split: this file))"
            ),
        }));
    }
    let tokens = TaskTokens::new(&task, tokenizer, context).map_err(fail)?;
    Ok(Some(Arc::new(RunTask {
        name: task.name.clone(),
        labels: task.labels.clone(),
        subset: task.stratified(e.subset, s.seed),
        tokens,
    })))
}
