//! The run directory: effective scenario, tokenizer, partition sizes, canaries, `rounds.jsonl`
//! (one line per round, flushed as it happens so nothing is lost), `summary.json` (written
//! last: its presence marks a finished run) and the final adapter in PEFT's format.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::messages::RoundSummary;

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run directory being written.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Create `out` if given, else `runs/<name>-<UTC timestamp>` (suffixed if it exists).
    ///
    /// # Errors
    /// When the directory cannot be created, or `out` exists and already holds a finished run.
    pub fn create(out: Option<&Path>, name: &str) -> Result<Self, ReportError> {
        let path = match out {
            Some(p) => {
                if p.join("summary.json").exists() {
                    return Err(ReportError::Format {
                        path: p.to_path_buf(),
                        message: "already holds a finished run; choose another --out".into(),
                    });
                }
                p.to_path_buf()
            }
            None => {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(['-', ':'], "")
                    .replace('T', "-")
                    .trim_end_matches('Z')
                    .to_string();
                let base = PathBuf::from("runs").join(format!("{name}-{stamp}"));
                let mut p = base.clone();
                let mut k = 2;
                while p.exists() {
                    p = PathBuf::from(format!("{}-{k}", base.display()));
                    k += 1;
                }
                p
            }
        };
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        // A stale log from an unfinished run in the same --out would mix rounds.
        let _ = std::fs::remove_file(path.join("rounds.jsonl"));
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `name` with `text`.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn write(&self, name: &str, text: &str) -> Result<(), ReportError> {
        let p = self.path.join(name);
        std::fs::write(&p, text).map_err(io(&p))
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

    /// Open `rounds.jsonl` for appending rounds.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn round_log(&self) -> Result<RoundLog, ReportError> {
        let path = self.path.join("rounds.jsonl");
        let f = File::create(&path).map_err(io(&path))?;
        Ok(RoundLog {
            path,
            out: BufWriter::new(f),
        })
    }
}

/// `rounds.jsonl`, one flushed line per round.
pub struct RoundLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl RoundLog {
    /// Append one round.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn append(&mut self, round: &RoundSummary) -> Result<(), ReportError> {
        let line = serde_json::to_string(round).expect("serialisable");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(io(&self.path))
    }
}

/// `summary.json`: the run at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// `completed`, `interrupted` (Ctrl-C after a finished round) or `budget_exhausted`
    /// (`dp.max_epsilon` reached).
    pub status: String,
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
    /// LoRA parameters (trained, communicated).
    pub trainable_parameters: usize,
    /// trainable / (base + trainable) × 100.
    pub trainable_percent: f64,
    /// Clients.
    pub clients: usize,
    /// Training examples over all shards.
    pub train_examples: usize,
    /// Held-out examples.
    pub eval_examples: usize,
    /// Rounds asked for.
    pub rounds_planned: usize,
    /// Rounds finished.
    pub rounds_completed: usize,
    /// Held-out loss of the base model before training (nats/token).
    pub pretrained_eval_loss: f64,
    /// Its perplexity.
    pub pretrained_eval_perplexity: f64,
    /// Held-out loss after the last round (nats/token).
    pub final_eval_loss: f64,
    /// Its perplexity.
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
    /// Host wall-clock seconds of the run (set-up included).
    pub wall_seconds: f64,
}

/// What the run's privacy amounts to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpSummary {
    /// Clipping mechanism.
    pub mechanism: String,
    /// Clip in force at the end (C for fixed clipping).
    pub clip_norm: f64,
    /// z.
    pub noise_multiplier: f64,
    /// ε after the last round (RDP).
    pub epsilon: f64,
    /// ε after the last round by PLD, when `dp.pld` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_pld: Option<f64>,
    /// δ.
    pub delta: f64,
    /// Optimal RDP order.
    pub order: f64,
    /// What the accountant assumes (sampling, neighbouring relation, series).
    pub accountant: String,
    /// How the noise was seeded.
    pub noise_source: String,
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
