//! Private training data: the built-in synthetic generator with planted canaries, a loader for
//! MedAlpaca/Alpaca JSON, the held-out split and the partitioners that give each client a shard.

pub mod alpaca;
pub mod canary;
pub mod labelled;
pub mod partition;
pub mod record;
pub mod synthetic;

pub use canary::Canary;
pub use partition::Partition;
pub use record::Record;

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A stop was requested while the data was prepared.
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// A data file could not be read.
    #[error("cannot read data file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data file is not what its format promises.
    #[error("data file {path} is not valid {format}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The expected format.
        format: &'static str,
        /// What is wrong and where.
        message: String,
    },
    /// The data cannot be split as the scenario asks.
    #[error("{0}")]
    Split(String),
}

/// Where the records come from (scenario field `data.source`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DataSource {
    /// The built-in generator of private patient Q/A records.
    Synthetic {
        /// Number of records to generate (before canaries).
        records: usize,
    },
    /// MedAlpaca / Alpaca JSON: a list of `{instruction, input, output}`.
    Alpaca {
        /// Path of the JSON file.
        path: PathBuf,
        /// Use only the first `limit` records.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Financial PhraseBank: `sentence@label` per line, latin-1. With `test_split` (a FinGPT
    /// JSONL test file such as `fpb_test.jsonl`), every sentence in it is removed first.
    Fpb {
        /// Path of the FPB file (e.g. `Sentences_50Agree.txt`).
        path: PathBuf,
        /// A test split whose sentences are removed (normalised match).
        #[serde(default)]
        test_split: Option<PathBuf>,
        /// Use only the first `limit` sentences (after the removal).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// FinGPT / FlowerTune JSONL: `{context, target}` per line.
    FinGpt {
        /// Path of the JSONL file.
        path: PathBuf,
        /// Use only the first `limit` items.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// A labelled CSV or JSONL file of the user's: a text and a label column, and the word
    /// each label value is answered with.
    Classification {
        /// The file.
        path: PathBuf,
        /// Csv or Jsonl.
        format: labelled::TableFormat,
        /// The text column (CSV header) or key (JSONL).
        text: String,
        /// The label column or key.
        label: String,
        /// Label value → word, e.g. `{"0": "negative", "1": "positive", "2": "neutral"}`.
        labels: std::collections::BTreeMap<String, String>,
        /// The question asked; default: FinGPT's sentiment question over the words.
        #[serde(default)]
        instruction: Option<String>,
        /// Use only the first `limit` rows.
        #[serde(default)]
        limit: Option<usize>,
    },
}

impl DataSource {
    /// The file read, for sources that read one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataSource::Synthetic { .. } => None,
            DataSource::Alpaca { path, .. }
            | DataSource::Fpb { path, .. }
            | DataSource::FinGpt { path, .. }
            | DataSource::Classification { path, .. } => Some(path),
        }
    }

    /// `limit`, for sources that read a file.
    pub fn limit(&self) -> Option<usize> {
        match self {
            DataSource::Synthetic { .. } => None,
            DataSource::Alpaca { limit, .. }
            | DataSource::Fpb { limit, .. }
            | DataSource::FinGpt { limit, .. }
            | DataSource::Classification { limit, .. } => *limit,
        }
    }

    /// The variant's name (for field paths in messages).
    pub fn kind(&self) -> &'static str {
        match self {
            DataSource::Synthetic { .. } => "Synthetic",
            DataSource::Alpaca { .. } => "Alpaca",
            DataSource::Fpb { .. } => "Fpb",
            DataSource::FinGpt { .. } => "FinGpt",
            DataSource::Classification { .. } => "Classification",
        }
    }

    /// Whether records are labelled texts (trained and scored with FinGPT's prompt).
    pub fn is_labelled(&self) -> bool {
        matches!(
            self,
            DataSource::Fpb { .. } | DataSource::FinGpt { .. } | DataSource::Classification { .. }
        )
    }

    /// Read a file source: its records and how many were removed as test-split overlap.
    fn read(&self) -> Result<(Vec<Record>, usize), DataError> {
        let (labelled, removed) = match self {
            DataSource::Synthetic { .. } => return Ok((Vec::new(), 0)),
            DataSource::Alpaca { path, .. } => return Ok((alpaca::load(path)?, 0)),
            DataSource::Fpb {
                path,
                test_split: Some(test),
                ..
            } => labelled::fpb::train_split(path, test)?,
            DataSource::Fpb { path, .. } => (labelled::fpb::load(path)?, 0),
            DataSource::FinGpt { path, .. } => (labelled::fingpt::load(path)?, 0),
            DataSource::Classification {
                path,
                format,
                text,
                label,
                labels,
                instruction,
                ..
            } => {
                let c = labelled::Classification {
                    path: path.clone(),
                    format: *format,
                    text: text.clone(),
                    label: label.clone(),
                    labels: labels.clone(),
                    instruction: instruction.clone(),
                };
                (c.load()?, 0)
            }
        };
        let records = labelled
            .into_iter()
            .map(labelled::Labelled::into_record)
            .collect();
        Ok((records, removed))
    }
}

/// FNV-1a over the records' text, in order: `summary.json`'s `eval_fingerprint`, so tools
/// that rebuild a run's data can tell it is the data the run used.
pub fn fingerprint(records: &[Record]) -> String {
    let mut text = Vec::new();
    for r in records {
        for part in [&r.instruction, &r.input, &r.output] {
            text.extend_from_slice(part.as_bytes());
            text.push(0);
        }
    }
    format!("{:016x}", crate::hash::fnv1a(&text))
}

/// Shards without records (see [`DataPlan::shards_only`]).
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// For each client, indices of its (virtual) training records.
    pub shards: Vec<Vec<u32>>,
    /// Training records.
    pub train: usize,
    /// Held-out records.
    pub eval: usize,
}

/// The data of one run: training records, held-out records, per-client shards, canaries.
#[derive(Debug, Clone)]
pub struct FederatedData {
    /// Training records, canary copies included.
    pub train: Vec<Record>,
    /// Held-out evaluation records (never in any shard; no canaries).
    pub eval: Vec<Record>,
    /// For each client, indices into `train`.
    pub shards: Vec<Vec<usize>>,
    /// The planted secrets and where they went.
    pub canaries: Vec<Canary>,
    /// Records of the source removed because they are in its test split (`Fpb.test_split`).
    pub removed: usize,
}

/// Receives `(stage, done, total)` while data is prepared, at least every ~10,000 records of
/// work; answering [`Stopped`] ends the preparation there (a stop request).
pub type StageFn<'a> = &'a mut dyn FnMut(&str, usize, usize) -> Result<(), Stopped>;

/// A stage callback asked preparation to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped on request while preparing")]
pub struct Stopped;

/// A [`StageFn`] body that never stops and reports nothing.
pub fn no_progress(_: &str, _: usize, _: usize) -> Result<(), Stopped> {
    Ok(())
}

/// How the data is prepared (validated scenario values).
#[derive(Debug, Clone)]
pub struct DataPlan {
    /// Source of records.
    pub source: DataSource,
    /// Fraction of records held out for evaluation.
    pub eval_fraction: f64,
    /// Number of canaries to plant.
    pub canaries: usize,
    /// Copies of each canary in its client's shard.
    pub canary_repeats: usize,
    /// Partitioner.
    pub partition: Partition,
    /// Number of clients.
    pub clients: usize,
    /// Seed for generation, split, partition and canaries.
    pub seed: u64,
}

impl DataPlan {
    /// Load or generate the records, hold out the evaluation split, partition, plant canaries.
    ///
    /// The held-out split depends only on the source, `eval_fraction` and the seed, so runs
    /// that differ in client count or partitioner (federated vs. centralised) share it.
    ///
    /// # Errors
    /// A missing or malformed data file, or a partition that cannot be made.
    pub fn prepare(&self) -> Result<FederatedData, DataError> {
        self.prepare_with(&mut no_progress)
    }

    /// As [`DataPlan::prepare`], reporting `(stage, done, total)` as it goes.
    ///
    /// # Errors
    /// As [`DataPlan::prepare`].
    pub fn prepare_with(&self, progress: StageFn<'_>) -> Result<FederatedData, DataError> {
        let (mut records, removed) = self.read(progress)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed_da7a);
        records.shuffle(&mut rng);
        let n_eval = self.eval_count(records.len())?;
        let train_part = records.split_off(n_eval);
        let eval = records;
        let mut train = train_part;
        let mut prng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9a27_1710);
        progress("partitioning", 0, 1)?;
        let mut shards = self.partition.split(&train, self.clients, &mut prng)?;
        progress("partitioning", 1, 1)?;
        let mut crng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xca7a_7121);
        let canaries = canary::plant(
            self.canaries,
            self.canary_repeats,
            &mut train,
            &mut shards,
            self.seed,
            &mut crng,
        );
        Ok(FederatedData {
            train,
            eval,
            shards,
            canaries,
            removed,
        })
    }

    /// For a trainer that reads no text (the synthetic trainer): the shards and split sizes
    /// from topic labels alone. A `Synthetic` source draws each record's topic uniformly over
    /// the generator's clinical areas without generating text, so 10⁷ records cost 2 bytes
    /// each; an `Alpaca` source is read as usual.
    ///
    /// # Errors
    /// As [`DataPlan::prepare`].
    pub fn shards_only(&self, progress: StageFn<'_>) -> Result<ShardPlan, DataError> {
        match self.source {
            DataSource::Synthetic { records } => {
                let eval = self.eval_count(records)?;
                let train = records - eval;
                progress("drawing topics", 0, train)?;
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7091_c5ee);
                let areas = synthetic::AREAS as u16;
                let topics: Vec<u16> = (0..train)
                    .map(|_| rand::Rng::random_range(&mut rng, 0..areas))
                    .collect();
                progress("drawing topics", train, train)?;
                let mut prng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9a27_1710);
                progress("partitioning", 0, 1)?;
                let shards = self
                    .partition
                    .split_topics(&topics, self.clients, &mut prng)?;
                progress("partitioning", 1, 1)?;
                Ok(ShardPlan {
                    shards: shards
                        .into_iter()
                        .map(|s| s.into_iter().map(|i| i as u32).collect())
                        .collect(),
                    train,
                    eval,
                })
            }
            _ => {
                let d = self.prepare_with(progress)?;
                Ok(ShardPlan {
                    shards: d
                        .shards
                        .iter()
                        .map(|s| s.iter().map(|&i| i as u32).collect())
                        .collect(),
                    train: d.train.len(),
                    eval: d.eval.len(),
                })
            }
        }
    }

    /// The records of the source, before the split (generated, or read and cut to `limit`).
    ///
    /// # Errors
    /// A missing or malformed data file.
    pub fn records(&self, progress: StageFn<'_>) -> Result<Vec<Record>, DataError> {
        Ok(self.read(progress)?.0)
    }

    /// As [`DataPlan::records`], with how many records were removed as test-split overlap.
    ///
    /// # Errors
    /// As [`DataPlan::records`].
    pub fn read(&self, progress: StageFn<'_>) -> Result<(Vec<Record>, usize), DataError> {
        if let DataSource::Synthetic { records } = &self.source {
            return Ok((synthetic::generate_with(*records, self.seed, progress)?, 0));
        }
        progress("reading data", 0, 1)?;
        let (mut r, removed) = self.source.read()?;
        if let Some(l) = self.source.limit() {
            r.truncate(l);
        }
        progress("reading data", 1, 1)?;
        Ok((r, removed))
    }

    /// Held-out records out of `total`.
    ///
    /// # Errors
    /// [`DataError::Split`] when either side of the split would be empty, or the training
    /// side has fewer records than there are clients.
    pub fn eval_count(&self, total: usize) -> Result<usize, DataError> {
        let n_eval = ((total as f64) * self.eval_fraction).round() as usize;
        if n_eval == 0 || n_eval >= total {
            return Err(DataError::Split(format!(
                "{total} records with eval_fraction {} leave {n_eval} for evaluation and {} for \
                 training; both must be at least 1 (use more records or change data.eval_fraction)",
                crate::fmt::compact(self.eval_fraction),
                total.saturating_sub(n_eval)
            )));
        }
        if total - n_eval < self.clients {
            return Err(DataError::Split(format!(
                "{total} records leave {} for training after holding out {n_eval}, fewer than \
                 the {} clients (each needs at least one); lower clients.count or use more data",
                total - n_eval,
                self.clients
            )));
        }
        Ok(n_eval)
    }
}
