//! A finished run as an attacker's target: its scenario, the data it was trained on (rebuilt
//! from the seed and checked against the run's fingerprint), its base model, its final
//! adapter merged in, and which clients' updates it aggregated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Deserialize;

use super::AttackError;
use crate::data::FederatedData;
use crate::model::pretrained::Pretrained;
use crate::model::{peft, BaseModel, LoraVars};
use crate::report::Summary;
use crate::scenario::Scenario;
use crate::tokenizer::{PromptText, TextTokenizer};

/// A run loaded for attack.
pub struct Target {
    /// The run directory.
    pub dir: PathBuf,
    /// Its effective scenario.
    pub scenario: Scenario,
    /// Its summary.
    pub summary: Summary,
    /// Records, shards and canaries, as the run had them.
    pub data: FederatedData,
    /// The tokenizer the run trained with.
    pub tokenizer: TextTokenizer,
    /// How records were written for the model.
    pub format: PromptText,
    /// The base model (the pretrained reference).
    pub base: BaseModel,
    /// The base with the run's final adapter merged in.
    pub tuned: BaseModel,
    /// Clients with at least one completed update (their records are members).
    pub participants: BTreeSet<usize>,
}

/// `model.json` of a run on a pretrained base.
#[derive(Deserialize)]
struct ModelRecord {
    path: PathBuf,
    sha256: String,
}

fn file_error(path: &Path, message: impl Into<String>) -> AttackError {
    AttackError::Run {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Target {
    /// Load `dir`: checks that it holds a finished run's adapter and that its base model and
    /// data are what the run used.
    ///
    /// # Errors
    /// [`AttackError::Run`] naming the file and the problem, or a scenario, data or model
    /// error.
    pub fn open(dir: &Path) -> Result<Self, AttackError> {
        check_files(dir)?;
        let summary = Summary::read(dir)?;
        let scenario = Scenario::load(&dir.join("scenario.ron"), &[])?;
        if let crate::trainer::TrainerKind::Synthetic { .. } = scenario.trainer {
            return Err(file_error(
                dir,
                "the run used the synthetic trainer (no model, no text): nothing to attack",
            ));
        }
        let (source, generated) = open_base(dir)?;
        let tokenizer = source.tokenizer()?;
        let format = crate::sim::prompt_text(
            scenario.prompt,
            if generated { None } else { Some(&source) },
        );
        let data = scenario.data.prepare()?;
        check_held_out(dir, &summary, &data)?;
        tracing::debug!(run = %dir.display(), "loading the base model and the adapter");
        let base = source
            .load_as(&Device::Cpu, scenario.base_precision)?
            .with_inference_activations(scenario.inference_activations)
            .with_compute_dtype(scenario.compute_dtype);
        let base_path = source.path().to_path_buf();
        let (adapter, lora) =
            peft::load_peft(dir, base.config()).map_err(|e| match e.is_non_finite() {
                // Not a mismatch: the adapter itself is unusable; say so.
                true => AttackError::Model(e),
                false => AttackError::AdapterMismatch {
                    adapter: dir.join("adapter_model.safetensors"),
                    base: base_path,
                    source: Box::new(e),
                },
            })?;
        let vars = LoraVars::fixed(&adapter, &lora, &Device::Cpu)?;
        let tuned = base.merged(&vars)?;
        let participants = participants(dir, scenario.data.clients)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            scenario,
            summary,
            data,
            tokenizer,
            format,
            base,
            tuned,
            participants,
        })
    }

    /// Token id used to pad batches.
    pub fn pad(&self) -> u32 {
        self.tokenizer.eos_id()
    }
}

/// The files an attack reads: a run directory's summary and scenario, and a final adapter.
fn check_files(dir: &Path) -> Result<(), AttackError> {
    for name in ["summary.json", "scenario.ron"] {
        if !dir.join(name).is_file() {
            return Err(file_error(
                &dir.join(name),
                "missing: give a run directory written by `sim run`",
            ));
        }
    }
    for name in ["adapter_model.safetensors", "adapter_config.json"] {
        if !dir.join(name).is_file() {
            return Err(file_error(
                &dir.join(name),
                "missing: the run has no final adapter (it failed or was stopped before \
                 its first round finished); attack a run that completed at least one round",
            ));
        }
    }
    Ok(())
}

/// The held-out records rebuilt from the scenario are the ones the run evaluated on.
fn check_held_out(
    dir: &Path,
    summary: &Summary,
    data: &crate::data::FederatedData,
) -> Result<(), AttackError> {
    let fingerprint = crate::data::fingerprint(&data.eval);
    if !summary.eval_fingerprint.is_empty() && summary.eval_fingerprint != fingerprint {
        return Err(file_error(
            &dir.join("summary.json"),
            format!(
                "the held-out records rebuilt from scenario.ron (fingerprint {fingerprint}) \
                 are not the ones the run used ({}); the data file changed since the run",
                summary.eval_fingerprint
            ),
        ));
    }
    Ok(())
}

/// The base model a run names: `model.json` (pretrained, checked by SHA-256) or the
/// generated `base_model/` it saved. Returns it and whether it was generated.
fn open_base(dir: &Path) -> Result<(Pretrained, bool), AttackError> {
    let record = dir.join("model.json");
    if record.is_file() {
        let text =
            std::fs::read_to_string(&record).map_err(|e| file_error(&record, e.to_string()))?;
        let m: ModelRecord = serde_json::from_str(&text)
            .map_err(|e| file_error(&record, format!("not fedsim's model.json: {e}")))?;
        let spec = m.path.to_string_lossy().to_string();
        let source = Pretrained::open(&spec)?;
        let found = source.sha256()?;
        if found != m.sha256 {
            return Err(file_error(
                &m.path,
                format!(
                    "is not the base model the run trained on: its SHA-256 is {found}, \
                     {} records {}; restore that file (e.g. `sim fetch-model`)",
                    record.display(),
                    m.sha256
                ),
            ));
        }
        return Ok((source, false));
    }
    let base_dir = dir.join("base_model");
    if base_dir.is_dir() {
        return Ok((Pretrained::open_hf(&base_dir)?, true));
    }
    Err(file_error(
        dir,
        "has neither model.json (a pretrained base) nor base_model/ (a generated one)",
    ))
}

/// Clients with a completed update in `clients.jsonl`.
fn participants(dir: &Path, clients: usize) -> Result<BTreeSet<usize>, AttackError> {
    #[derive(Deserialize)]
    struct Line {
        client: usize,
        status: crate::messages::ClientStatus,
    }
    let path = dir.join("clients.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e.to_string()))?;
    let mut out = BTreeSet::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: Line = serde_json::from_str(line)
            .map_err(|e| file_error(&path, format!("line {}: {e}", i + 1)))?;
        if l.status == crate::messages::ClientStatus::Completed && l.client < clients {
            out.insert(l.client);
        }
    }
    if out.is_empty() {
        return Err(file_error(
            &path,
            "no client completed a round: the adapter holds no training data",
        ));
    }
    Ok(out)
}
