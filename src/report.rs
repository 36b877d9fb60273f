//! The run directory: effective scenario, tokenizer, partition sizes, canaries, `rounds.jsonl`
//! (one line per round, flushed as it happens so nothing is lost), `summary.json` (status
//! `running` until the run ends, then its final status; every file is replaced atomically)
//! and the final adapter in PEFT's format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod ownership;
mod round_log;

pub use ownership::{read_marker, DirKind, DirLock, Marker, LOCK_FILE, MARKER_FILE};
pub use round_log::{read_journal, LogLengths, RoundLog, JOURNAL};

/// Errors of writing or reading run directories.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An I/O failure on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not what fedsim writes.
    #[error("{path}: {message}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another process writes the directory.
    #[error("{path} is in use by {holder}; wait for it to end, or choose another --out")]
    Busy {
        /// The directory.
        path: PathBuf,
        /// Who holds its lock (from the lock file).
        holder: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory fedsim writes (a run, a sweep, a study), locked for this process's use.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    /// Held while any clone lives; `None` for a finished run that tools only add files to.
    _lock: Option<Arc<DirLock>>,
}

/// A directory claimed for a new run (locked, marked) before the work that fills it starts.
/// Dropped without [`Claim::begin`] (a failure or a stop during preparation), it leaves an
/// unfinished run's files as they were, and removes the directory if it created it.
#[derive(Debug)]
pub struct Claim {
    dir: Option<RunDir>,
    stale: Vec<String>,
    created: bool,
}

impl Claim {
    /// The directory, its unfinished run's files removed: the new run starts writing.
    ///
    /// # Errors
    /// When a file cannot be removed.
    pub fn begin(mut self) -> Result<RunDir, ReportError> {
        let dir = self.dir.take().expect("a claim begins once");
        ownership::clear(&dir.path, &self.stale)?;
        Ok(dir)
    }

    /// Where the run will be written.
    pub fn path(&self) -> &Path {
        &self.dir.as_ref().expect("a claim begins once").path
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let (Some(dir), true) = (self.dir.take(), self.created) {
            // Nothing was written but the marker and the lock: leave no empty directory.
            let _ = std::fs::remove_file(dir.path.join(ownership::MARKER_FILE));
            let _ = std::fs::remove_file(dir.path.join(ownership::LOCK_FILE));
            let _ = std::fs::remove_dir(&dir.path);
        }
    }
}

impl RunDir {
    /// Claim `out` if given, else a new `runs/<name>-<UTC timestamp>`, for what `marker` says:
    /// take its lock (a second process is refused, naming the holder), check it may be used,
    /// write the marker.
    ///
    /// `out` may be new, empty, or hold an unfinished run (status `running` or `failed`) of
    /// the same scenario, whose files [`Claim::begin`] replaces.
    ///
    /// # Errors
    /// When `out` is in use, is not a directory, holds a finished run, a corrupt one, another
    /// scenario's, files fedsim did not write, or cannot be created.
    pub fn claim(out: Option<&Path>, marker: &Marker) -> Result<Claim, ReportError> {
        let (path, created) = match out {
            Some(p) => (p.to_path_buf(), ownership::make_dir(p)?),
            None => (ownership::fresh_default(&marker.name)?, true),
        };
        if !created {
            // Read first: a directory fedsim may not use never receives even the lock file.
            ownership::inspect(&path, marker, false)?;
        }
        let lock = ownership::lock(&path)?;
        // Inspected again under the lock: no other fedsim process can write it meanwhile.
        let stale = match ownership::inspect(&path, marker, true)? {
            ownership::Inspection::Empty => Vec::new(),
            ownership::Inspection::Unfinished(names) => names,
        };
        let dir = RunDir {
            path,
            _lock: Some(Arc::new(lock)),
        };
        dir.write_json(ownership::MARKER_FILE, marker)?;
        Ok(Claim {
            dir: Some(dir),
            stale,
            created,
        })
    }

    /// [`RunDir::claim`] and [`Claim::begin`] at once, for a directory whose work starts now.
    ///
    /// # Errors
    /// As [`RunDir::claim`].
    pub fn create(out: Option<&Path>, marker: &Marker) -> Result<Self, ReportError> {
        Self::claim(out, marker)?.begin()
    }

    /// A stopped run's directory `path`, locked to continue its run (`sim run --resume`), and
    /// its marker.
    ///
    /// # Errors
    /// When `path` is not a run directory fedsim marked, or another process holds it.
    pub fn reopen(path: &Path) -> Result<(Self, Marker), ReportError> {
        let (lock, marker) = ownership::reopen(path)?;
        let dir = RunDir {
            path: path.to_path_buf(),
            _lock: Some(Arc::new(lock)),
        };
        Ok((dir, marker))
    }

    /// A finished run's directory, for tools that add files to it (`sim attack`).
    pub fn existing(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            _lock: None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `name` with `text` (atomically, see [`write_atomically`]).
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn write(&self, name: &str, text: &str) -> Result<(), ReportError> {
        self.write_bytes(name, text.as_bytes())
    }

    /// Write `name` with `bytes` (atomically, see [`write_atomically`]).
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), ReportError> {
        write_atomically(&self.path.join(name), bytes)
    }

    /// Remove `name` if it is there.
    ///
    /// # Errors
    /// On an I/O failure other than its absence.
    pub fn remove(&self, name: &str) -> Result<(), ReportError> {
        let path = self.path.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Write `name` as pretty JSON.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ReportError> {
        self.write(
            name,
            &(serde_json::to_string_pretty(value).expect("serialisable") + "\n"),
        )
    }

    /// A new round log (`rounds.jsonl`, `clients.jsonl`, the journal) for appending rounds.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn round_log(&self) -> Result<RoundLog, ReportError> {
        RoundLog::create(&self.path)
    }

    /// The round log cut back to `lengths` (a checkpoint's), for a resumed run to append to.
    ///
    /// # Errors
    /// On an I/O failure, or a file shorter than `lengths` says.
    pub fn round_log_at(&self, lengths: LogLengths) -> Result<RoundLog, ReportError> {
        RoundLog::reopen(&self.path, lengths)
    }
}

/// Write `path` beside, then rename: a reader (or a kill) never sees half a file.
///
/// # Errors
/// On an I/O failure, naming the path.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Every name fedsim writes into a run directory.
pub const RUN_FILES: [&str; 16] = [
    "scenario.ron",
    "tokenizer.json",
    "canaries.json",
    "partitions.json",
    "rounds.jsonl",
    "clients.jsonl",
    "summary.json",
    "metrics.om",
    // Written by earlier versions on failure; listed so their directories can be reused.
    "error.txt",
    "adapter_model.safetensors",
    "adapter_config.json",
    "base_model",
    "model.json",
    "server_state.safetensors",
    JOURNAL,
    CHECKPOINT,
];

/// The state a stopped run resumes from (`sim run --resume`), replaced after every round.
pub const CHECKPOINT: &str = "checkpoint.msgpack";

/// `summary.json`: the run at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// How the run ended (or `running` while it runs, or after it was killed).
    pub status: RunStatus,
    /// What stopped a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the run stopped early, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The privacy guarantee, when DP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpSummary>,
    /// Master seed.
    pub seed: u64,
    /// Base model.
    pub model: String,
    /// Base parameters (frozen).
    pub base_parameters: usize,
    /// How the frozen base was held (`model.base_precision`).
    #[serde(default = "f32_name")]
    pub base_precision: String,
    /// What KV-cache inference (task evaluation, extraction) fed a Q8_0/Q4_1 base
    /// (`model.inference_activations`: F32 or Int8).
    #[serde(default = "f32_name")]
    pub inference_activations: String,
    /// What training's matmuls against a packed base multiplied in (`model.compute_dtype`).
    #[serde(default = "f32_name")]
    pub compute_dtype: String,
    /// Bytes the frozen base's weights took in that precision (one copy, shared by slots).
    #[serde(default)]
    pub base_bytes: u64,
    /// LoRA parameters (trained, communicated).
    pub trainable_parameters: usize,
    /// trainable / (base + trainable) × 100.
    #[serde(deserialize_with = "nan_if_null")]
    pub trainable_percent: f64,
    /// Clients.
    pub clients: usize,
    /// Training examples over all shards.
    pub train_examples: usize,
    /// Held-out examples.
    pub eval_examples: usize,
    /// FNV-1a of the held-out records' text: runs compare only on the same held-out set.
    #[serde(default)]
    pub eval_fingerprint: String,
    /// Rounds asked for.
    pub rounds_planned: usize,
    /// Rounds finished.
    pub rounds_completed: usize,
    /// Held-out loss of the base model before training (nats/token).
    #[serde(deserialize_with = "nan_if_null")]
    pub pretrained_eval_loss: f64,
    /// Its perplexity.
    #[serde(deserialize_with = "nan_if_null")]
    pub pretrained_eval_perplexity: f64,
    /// Held-out loss after the last round (nats/token).
    #[serde(deserialize_with = "nan_if_null")]
    pub final_eval_loss: f64,
    /// Its perplexity.
    #[serde(deserialize_with = "nan_if_null")]
    pub final_eval_perplexity: f64,
    /// Bytes sent to clients over the run.
    pub bytes_down_total: u64,
    /// Bytes received from clients over the run.
    pub bytes_up_total: u64,
    /// Tokens trained on over all clients and rounds (padding excluded).
    pub tokens_trained: usize,
    /// Compute slots.
    pub slots: usize,
    /// Threads per slot.
    pub threads_per_slot: usize,
    /// Seconds each slot was busy.
    pub slot_busy_seconds: Vec<f64>,
    /// Simulated seconds the federation took on the virtual clock.
    #[serde(default)]
    pub sim_seconds: f64,
    /// Clients dropped over the run, by reason (sampled clients that crashed or missed the
    /// deadline, failures).
    #[serde(default)]
    pub dropped: Dropped,
    /// Backdoor success of the final global model, when Byzantine clients plant one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backdoor: Option<crate::byzantine::BackdoorSuccess>,
    /// Task accuracy (scenario `eval`): final and pretrained figures, time-to-accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_eval: Option<crate::eval::progress::TaskEvalSummary>,
    /// Host wall-clock seconds of the run (set-up included).
    #[serde(deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
    /// The process's peak resident memory when the run ended (Linux `VmHWM`; 0 elsewhere).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Workers on other hosts that ran jobs (`sim run --workers`): address, slots, jobs,
    /// busy seconds and bytes each way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<crate::cluster::WorkerRecord>,
    /// What secure aggregation cost the run, phase by phase, and the rounds it could not
    /// unmask (`strategy.secure_aggregation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<crate::secagg::cost::SecAggRun>,
    /// Bytes per tier and edges lost over the run (topology `Hierarchical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hierarchy: Option<crate::topology::HierarchyTotals>,
    /// Split learning's activation and gradient messages over the run (topology `Split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::split::SplitTraffic>,
    /// The uploads' codec and its bytes against f32 (`compression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::compress::CompressionRecord>,
}

fn f32_name() -> String {
    "F32".to_string()
}

/// Sampled clients without an update, over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Crashed during fit.
    pub crashed: usize,
    /// Missed the deadline (or the over-selection quota).
    pub deadline: usize,
    /// Training or upload failed.
    pub failed: usize,
    /// Their edge aggregator was lost (hierarchical topology).
    #[serde(default)]
    pub edge_lost: usize,
}

/// What the run's privacy amounts to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpSummary {
    /// Clipping mechanism.
    pub mechanism: String,
    /// Clip in force at the end (C for fixed clipping).
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_norm: f64,
    /// z.
    #[serde(deserialize_with = "nan_if_null")]
    pub noise_multiplier: f64,
    /// ε after the last round (RDP).
    #[serde(deserialize_with = "nan_if_null")]
    pub epsilon: f64,
    /// ε after the last round by PLD, when `dp.pld` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_pld: Option<f64>,
    /// δ.
    #[serde(deserialize_with = "nan_if_null")]
    pub delta: f64,
    /// Optimal RDP order.
    #[serde(deserialize_with = "nan_if_null")]
    pub order: f64,
    /// What the accountant assumes (sampling, neighbouring relation, series).
    pub accountant: String,
    /// How the noise was seeded.
    pub noise_source: String,
}

/// How a run ended; `Running` is what a run directory says while its run is in progress — or
/// after the process was killed before it could say anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// In progress, or killed (SIGKILL, power loss): the directory is incomplete.
    Running,
    /// Every planned round finished.
    Completed,
    /// Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) after the last recorded round.
    Interrupted,
    /// `dp.max_epsilon` would have been exceeded by the next round.
    BudgetExhausted,
    /// A round had too few clients available and `system.short_round` is `Stop`.
    TooFewClients,
    /// No slot was left: no local slots, and every worker lost (`slots.workers.rejoin_s`).
    WorkersLost,
    /// An error stopped the run (see `error`); the adapter is the last good round's.
    Failed,
}

impl RunStatus {
    /// Whether `sim run --resume` may continue a run that ended so (its checkpoint is kept):
    /// interrupted, failed, or stopped with every worker lost.
    pub fn resumable(self) -> bool {
        matches!(
            self,
            RunStatus::Interrupted | RunStatus::Failed | RunStatus::WorkersLost
        )
    }

    /// The word written in `summary.json` and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::BudgetExhausted => "budget_exhausted",
            RunStatus::TooFewClients => "too_few_clients",
            RunStatus::WorkersLost => "workers_lost",
            RunStatus::Failed => "failed",
        }
    }

    /// Whether the run reached an end it recorded (anything but `Running`).
    pub fn is_final(self) -> bool {
        self != RunStatus::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// serde_json writes non-finite floats as `null`; read them back as NaN so that every summary
/// fedsim writes is readable.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Summary {
    /// Read `summary.json` from a run directory.
    ///
    /// # Errors
    /// A missing file (an unfinished run) or one that is not a fedsim summary.
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|e| ReportError::Format {
            path,
            message: e.to_string(),
        })
    }
}
