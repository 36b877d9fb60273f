//! Scenarios: RON file → [`ScenarioFile`] (syntax, defaults) → `--set` overrides →
//! [`Scenario`] (validated, derived, impossible to hold in a bad state).

pub mod file;
mod overrides;
pub mod resources;
mod ron_value;
mod validate;

pub use file::ScenarioFile;

use std::path::{Path, PathBuf};

use crate::data::DataPlan;
use crate::model::{LlamaConfig, LoraConfig};
use crate::privacy::DpPlan;
use crate::train::LocalTraining;

/// Errors of reading and validating a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// RON syntax or type error.
    #[error("{path}:{line}:{col}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What the parser says.
        message: String,
    },
    /// A value outside its allowed range, or an inconsistent combination.
    #[error("{path}: `{field}` {message}")]
    Invalid {
        /// The file (or `--set`).
        path: PathBuf,
        /// Dotted path of the field.
        field: String,
        /// What is wrong, the allowed range, and how to fix it.
        message: String,
    },
    /// A `--set path=value` that cannot be applied.
    #[error("--set {arg}: {message}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated scenario: every field in range and consistent.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The effective file (overrides applied): what the run directory records. Private to
    /// `scenario`: everything else reads the checked fields below.
    pub(in crate::scenario) file: ScenarioFile,
    /// Where it was read from.
    pub source_path: PathBuf,
    /// Run name.
    pub name: String,
    /// Master seed.
    pub seed: u64,
    /// Federated rounds.
    pub rounds: usize,
    /// Model shape.
    pub model: LlamaConfig,
    /// Human name of the base model.
    pub model_name: String,
    /// LoRA adapter.
    pub lora: LoraConfig,
    /// Data preparation.
    pub data: DataPlan,
    /// Longest tokenised example.
    pub max_seq_len: usize,
    /// Client sampling.
    pub sampling: Sampling,
    /// Local training.
    pub local: LocalTraining,
    /// Learning rate of round 1.
    pub lr_max: f64,
    /// Learning rate of the last round.
    pub lr_min: f64,
    /// Server-side evaluation batch size.
    pub eval_batch_size: usize,
    /// Number of compute slots.
    pub slots: usize,
    /// Threads per slot.
    pub threads_per_slot: usize,
    /// Client-level DP, if on.
    pub dp: Option<DpPlan>,
    /// Where the base model comes from.
    pub model_source: file::ModelSource,
    /// How the frozen base is held (`model.base_precision`).
    pub base_precision: crate::model::BasePrecision,
    /// What the base's weights will take in that precision, by format (planned from the
    /// shapes and the file's header; loading gives the same).
    pub base_footprint: crate::model::weight::Footprint,
    /// What KV-cache inference feeds a Q8_0/Q4_1 base (`model.inference_activations`).
    pub inference_activations: crate::model::InferenceActivations,
    /// What training's matmuls against a packed base multiply in (`model.compute_dtype`).
    pub compute_dtype: crate::model::ComputeDtype,
    /// How records are written for the model.
    pub prompt: file::PromptFormat,
    /// The local trainer: LoRA, or seeded synthetic updates.
    pub trainer: crate::trainer::TrainerKind,
    /// Slots one client's job occupies (`slots.client_resources`).
    pub client_resources: usize,
    /// Whether each client always trains on the same slot.
    pub slot_assignment: file::SlotAssignment,
    /// The systems simulation: profiles, availability, crashes, deadline, straggler policy,
    /// Byzantine clients (validated).
    pub system: file::SystemSection,
    /// Estimated peak memory of a run.
    pub memory: resources::MemoryEstimate,
    /// Flat, or clients under edge aggregators (checked: the assignment resolves).
    pub topology: crate::topology::Topology,
    /// What a client does to its update before upload (checked).
    pub compression: crate::compress::Compression,
    /// Task accuracy during the run (the `eval` section, checked).
    pub task_eval: Option<file::EvalSection>,
    /// Things that will work but not as well as they could (printed by `validate` and `run`).
    pub warnings: Vec<String>,
}

/// Flower's client-sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Fraction of clients sampled per round.
    pub fraction_fit: f64,
    /// Lower bound on the sample.
    pub min_fit_clients: usize,
    /// Rounds need at least this many available clients.
    pub min_available_clients: usize,
}

impl Sampling {
    /// Clients to sample out of `available` (Flower: `max(⌊fraction·n⌋, min_fit)`, capped at n).
    pub fn sample_size(&self, available: usize) -> usize {
        ((self.fraction_fit * available as f64) as usize)
            .max(self.min_fit_clients)
            .min(available)
    }
}

impl Scenario {
    /// Read, override and validate `path`.
    ///
    /// # Errors
    /// Any [`ScenarioError`]: unreadable file, RON error with line and column, bad override,
    /// or a field out of range.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_ron(&text, path, overrides)
    }

    /// Parse RON `text` (reported as `path`), apply overrides, validate.
    ///
    /// # Errors
    /// As [`Scenario::load`].
    pub fn from_ron(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ScenarioError> {
        // Editors on Windows write a UTF-8 byte-order mark; it is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let file: ScenarioFile =
            ron::Options::default()
                .from_str(text)
                .map_err(|e: ron::error::SpannedError| ScenarioError::Syntax {
                    path: path.to_path_buf(),
                    line: e.span.start.line,
                    col: e.span.start.col,
                    message: e.code.to_string(),
                })?;
        Self::from_file(file, path, overrides)
    }

    /// Apply overrides to a parsed file (reported as `path`) and validate it.
    ///
    /// # Errors
    /// A bad override or a field out of range.
    pub fn from_file(
        file: ScenarioFile,
        path: &Path,
        overrides: &[String],
    ) -> Result<Self, ScenarioError> {
        let file = overrides::apply(file, overrides)?;
        validate::validate(file, path)
    }

    /// The aggregation strategy `strategy.kind` names.
    pub fn strategy(&self) -> crate::strategy::Strategy {
        crate::strategy::Strategy::from_kind(self.file.strategy.kind)
    }

    /// Secure aggregation (`strategy.secure_aggregation`), if on.
    pub fn secure_aggregation(&self) -> Option<file::SecureAggregation> {
        self.file.strategy.secure_aggregation
    }

    /// The bound on update values SecAgg+'s ring is sized for: `value_bound` when given;
    /// else, when clients clip (`dp` with `ClientSideFixed`) and the server adds the noise,
    /// the clip norm C with 2⁻²⁰ to spare (a clipped f32 value exceeds C by at most its
    /// rounding, 2⁻²⁴ relative); else None (any value FedAvg accepts).
    pub fn secagg_value_bound(&self) -> Option<f64> {
        let Some(file::SecureAggregation::SecAggPlus { value_bound, .. }) =
            self.secure_aggregation()
        else {
            return None;
        };
        if value_bound.is_some() {
            return value_bound;
        }
        let dp = self.file.dp.as_ref()?;
        match (&dp.mechanism, &dp.noise_by) {
            (
                crate::privacy::Mechanism::ClientSideFixed { clip_norm, .. },
                crate::privacy::NoiseBy::Server,
            ) => {
                let bound = *clip_norm * (1.0 + 2f64.powi(-20));
                (bound.is_finite() && bound > 0.0 && bound < f64::from(1u32 << 23)).then_some(bound)
            }
            _ => None,
        }
    }

    /// SecAgg+'s ring for `train` training examples' weights: `ring_bits` and the value
    /// bound ([`Scenario::secagg_value_bound`]) checked, or the smallest that fits; None
    /// without SecAgg+.
    ///
    /// # Errors
    /// A given `ring_bits` in which sums could wrap, naming the bits they need.
    pub fn secagg_ring(&self, train: u64) -> Result<Option<crate::secagg::Ring>, ScenarioError> {
        use file::SecureAggregation;
        let Some(SecureAggregation::SecAggPlus { ring_bits, .. }) = self.secure_aggregation()
        else {
            return Ok(None);
        };
        let invalid = |field: &str, message: String| ScenarioError::Invalid {
            path: self.source_path.clone(),
            field: format!("strategy.secure_aggregation.SecAggPlus.{field}"),
            message,
        };
        let bound = self.secagg_value_bound();
        let sized = crate::secagg::Ring::sized(train, bound)
            .map_err(|e| invalid("value_bound", e.to_string()))?;
        let Some(b) = ring_bits else {
            return Ok(Some(sized));
        };
        let mut ring =
            crate::secagg::Ring::new(b).map_err(|e| invalid("ring_bits", e.to_string()))?;
        if let Some(bound) = bound {
            ring = ring
                .with_value_bound(bound)
                .map_err(|e| invalid("value_bound", e.to_string()))?;
        }
        ring.check(train)
            .map_err(|e| invalid("ring_bits", format!("{e} ({train} training examples)")))?;
        Ok(Some(ring))
    }

    /// The slot workers on other hosts (`slots.workers`), if any.
    pub fn workers(&self) -> Option<&file::WorkersSection> {
        self.file.slots.workers.as_ref()
    }

    /// The Byzantine clients of `system.byzantine`, if any.
    pub fn byzantine(&self) -> Option<crate::byzantine::Byzantine> {
        self.file.system.byzantine.as_ref().map(|b| {
            crate::byzantine::Byzantine::new(
                &b.clients,
                b.attack.clone(),
                self.data.clients,
                self.seed,
            )
        })
    }

    /// Threads one training job computes with: a slot's threads times the slots a client's job
    /// occupies (`slots.client_resources`). candle reads its matmul parallelism from the
    /// `RAYON_NUM_THREADS` environment variable, which only a program's `main` may set (before
    /// any thread starts): the `sim` binary sets it to this.
    pub fn threads_per_job(&self) -> usize {
        self.threads_per_slot * self.file.slots.client_resources.clamp(1, self.slots.max(1))
    }

    /// Whether `other` trains on the same data, with the same model and seed (a privacy
    /// study's arms must).
    pub fn same_data_model_and_seed(&self, other: &Scenario) -> bool {
        let key = |x: &Scenario| {
            (
                x.seed,
                serde_json::to_string(&x.file.data).expect("serialisable"),
                serde_json::to_string(&x.file.model).expect("serialisable"),
            )
        };
        key(self) == key(other)
    }

    /// The strategy section's rule as the scenario names it.
    pub fn strategy_kind(&self) -> crate::strategy::StrategyKind {
        self.file.strategy.kind
    }

    /// The effective scenario as pretty RON.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(&self.file, ron::ser::PrettyConfig::default())
            .expect("a scenario always serialises")
    }
}

/// What [`Scenario::check_data`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataCheck {
    /// Records the source yields.
    pub records: usize,
    /// Records for training (before canaries).
    pub train: usize,
    /// Records held out.
    pub eval: usize,
    /// Tokens the trained tokenizer reaches, for the `Tiny` preset (on at most
    /// [`TOKENIZER_SAMPLE`] training records).
    pub vocab: Option<usize>,
    /// Records removed as test-split overlap (`Fpb.test_split`).
    pub removed: usize,
}

/// Training records a `Tiny` model's tokenizer is trained on, at most — in a run and in the
/// vocabulary check alike, so `validate` accepts exactly the vocabularies `run` can build; it
/// also bounds tokenizer training, the one preparation stage that cannot hear a stop.
pub const TOKENIZER_SAMPLE: usize = 200_000;

impl Scenario {
    /// Read or generate the data as a run would, and check what only the data can tell: that
    /// the file parses, that the split leaves every client a record, and that a `Tiny`
    /// vocabulary can be trained from the corpus. `sim validate` calls it; a run finds the same
    /// errors while preparing.
    ///
    /// # Errors
    /// [`ScenarioError::Invalid`] naming the field to change.
    pub fn check_data(&self) -> Result<DataCheck, ScenarioError> {
        let fail = |field: &str, e: &(dyn std::error::Error + 'static)| ScenarioError::Invalid {
            path: self.source_path.clone(),
            field: field.to_string(),
            message: format!("cannot be used: {}", crate::fmt::chain(e)),
        };
        let source_field = match &self.data.source {
            crate::data::DataSource::Synthetic { .. } => "data.source.Synthetic.records".into(),
            other => format!("data.source.{}.path", other.kind()),
        };
        let (records, removed) = match &self.data.source {
            crate::data::DataSource::Synthetic { records } => (*records, 0),
            _ => {
                let (r, removed) = self
                    .data
                    .read(&mut crate::data::no_progress)
                    .map_err(|e| fail(&source_field, &e))?;
                (r.len(), removed)
            }
        };
        let eval = self
            .data
            .eval_count(records)
            .map_err(|e| fail("clients.count", &e))?;
        let mut check = DataCheck {
            records,
            train: records - eval,
            eval,
            vocab: None,
            removed,
        };
        let lora = self.file.trainer == crate::trainer::TrainerKind::Lora;
        if let (true, file::ModelSource::Tiny { vocab_size }) = (lora, &self.file.model.source) {
            let vocab_size = *vocab_size;
            let data = self.data.prepare().map_err(|e| fail("partition", &e))?;
            let sample = &data.train[..data.train.len().min(TOKENIZER_SAMPLE)];
            match crate::tokenizer::TextTokenizer::train(sample, vocab_size) {
                Ok(t) => check.vocab = Some(t.vocab_size()),
                Err(crate::tokenizer::TokenizerError::Vocabulary { got, want }) => {
                    return Err(ScenarioError::Invalid {
                        path: self.source_path.clone(),
                        field: "model.source.Tiny.vocab_size".into(),
                        message: format!(
                            "is {want} but the training corpus ({} records) yields only {got} \
                             tokens; set it to at most {got}, or use more data",
                            sample.len()
                        ),
                    })
                }
                Err(e) => return Err(fail("model.source.Tiny.vocab_size", &e)),
            }
        }
        self.secagg_ring(check.train as u64)?;
        Ok(check)
    }
}
