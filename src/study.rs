//! Privacy studies (`sim study`): one base scenario, several arms that change how it trains
//! (centralised, federated, federated + DP) but never the data, the model or the seed, and the
//! attacks run on every arm — pretrained vs. centralised vs. federated vs. federated + DP in
//! one table.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attack::canaries::CandidatePlan;
use crate::attack::extraction::SamplePlan;
use crate::attack::AttackPlan;
use crate::scenario::file::ScenarioFile;
use crate::scenario::{Scenario, ScenarioError};

/// Errors of reading a study file.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// RON syntax or an unknown field.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// An arm's scenario does not validate.
    #[error("{}: arm `{arm}`", path.display())]
    Arm {
        /// The file.
        path: PathBuf,
        /// The arm.
        arm: String,
        /// The scenario error.
        #[source]
        source: ScenarioError,
    },
    /// The study itself is inconsistent.
    #[error("{}: {field} {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// One arm: a name and the overrides that make it from the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Row label and run directory name.
    pub name: String,
    /// `--set` overrides on the base scenario.
    #[serde(default)]
    pub set: Vec<String>,
}

/// How hard the attacks work (defaults as `sim attack`'s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttackSection {
    /// Members (and as many non-members) scored, at most.
    pub members: usize,
    /// Random fills per canary when its space is not enumerated.
    pub candidates: usize,
    /// Enumerate a canary's space up to this many fills.
    pub enumerate_up_to: u64,
    /// Extraction samples per prompt.
    pub samples: usize,
    /// New tokens per extraction sample.
    pub max_tokens: usize,
}

impl Default for AttackSection {
    fn default() -> Self {
        let p = AttackPlan::default();
        Self {
            members: p.members,
            candidates: p.candidates.sampled,
            enumerate_up_to: p.candidates.enumerate_up_to,
            samples: p.samples.per_prompt,
            max_tokens: p.samples.max_tokens,
        }
    }
}

impl AttackSection {
    /// The attack plan.
    pub fn plan(&self) -> AttackPlan {
        AttackPlan {
            members: self.members,
            candidates: CandidatePlan {
                enumerate_up_to: self.enumerate_up_to,
                sampled: self.candidates,
            },
            samples: SamplePlan {
                per_prompt: self.samples,
                max_tokens: self.max_tokens,
            },
            ..AttackPlan::default()
        }
    }
}

/// A study file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFile {
    /// Name of the study (its directory).
    pub name: String,
    /// The scenario every arm starts from.
    pub base: ScenarioFile,
    /// The arms, in table order.
    pub arms: Vec<Arm>,
    /// Attack effort.
    #[serde(default)]
    pub attack: AttackSection,
    /// Attack each arm after training (false: train and compare only — `sim compare`'s
    /// table, task accuracy included — for studies of quality rather than leakage).
    #[serde(default = "attacks_by_default")]
    pub attacks: bool,
}

fn attacks_by_default() -> bool {
    true
}

/// A validated study: one scenario per arm.
#[derive(Debug, Clone)]
pub struct Study {
    /// Name.
    pub name: String,
    /// (arm name, its scenario), in order.
    pub arms: Vec<(String, Scenario)>,
    /// Attack effort.
    pub attack: AttackPlan,
    /// Whether the arms are attacked after training.
    pub attacks: bool,
}

impl Study {
    /// Read and validate `path`: every arm's scenario, distinct arm names, and the same data,
    /// model and seed in every arm.
    ///
    /// # Errors
    /// A [`StudyError`] naming the file, the arm or the field.
    pub fn load(path: &Path) -> Result<Self, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StudyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: StudyFile =
            ron::Options::default()
                .from_str(&text)
                .map_err(|e: ron::error::SpannedError| StudyError::Syntax {
                    path: path.to_path_buf(),
                    line: e.span.start.line,
                    col: e.span.start.col,
                    message: e.code.to_string(),
                })?;
        let invalid = |field: &str, message: String| StudyError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if file.arms.is_empty() {
            return Err(invalid("arms", "is empty; list at least one arm".into()));
        }
        let a = &file.attack;
        for (field, v) in [
            ("attack.members", a.members),
            ("attack.candidates", a.candidates),
            ("attack.samples", a.samples),
            ("attack.max_tokens", a.max_tokens),
        ] {
            if v == 0 {
                return Err(invalid(field, "is 0; it must be at least 1".into()));
            }
        }
        let mut arms: Vec<(String, Scenario)> = Vec::with_capacity(file.arms.len());
        for arm in &file.arms {
            let s = Self::arm(path, &file, arm, &arms)?;
            arms.push((arm.name.clone(), s));
        }
        Ok(Self {
            name: file.name,
            arms,
            attack: file.attack.plan(),
            attacks: file.attacks,
        })
    }

    /// One arm's scenario: the base with the arm's overrides, checked against the arms before
    /// it (a directory-safe, unique name; the same data, model and seed as the first).
    fn arm(
        path: &Path,
        file: &StudyFile,
        arm: &Arm,
        before: &[(String, Scenario)],
    ) -> Result<Scenario, StudyError> {
        let invalid = |field: &str, message: String| StudyError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if arm.name.is_empty() || arm.name.contains(['/', '\\']) || arm.name.starts_with('.') {
            return Err(invalid(
                "arms.name",
                format!(
                    "{:?} cannot name a directory; use letters, digits, - and _",
                    arm.name
                ),
            ));
        }
        if before.iter().any(|(n, _)| n == &arm.name) {
            return Err(invalid(
                "arms.name",
                format!("{:?} is used twice", arm.name),
            ));
        }
        let mut set = arm.set.clone();
        set.push(format!("name={}", arm.name));
        let s = Scenario::from_file(file.base.clone(), path, &set).map_err(|source| {
            StudyError::Arm {
                path: path.to_path_buf(),
                arm: arm.name.clone(),
                source,
            }
        })?;
        if let Some((first, f)) = before.first() {
            if !f.same_data_model_and_seed(&s) {
                return Err(invalid(
                    &format!("arms.{}.set", arm.name),
                    format!(
                        "changes the seed, the data or the model that arm `{first}` uses; a \
                         study compares arms on the same data, model and seed — override \
                         only how they train (clients, strategy, train, dp, system)"
                    ),
                ));
            }
        }
        Ok(s)
    }
}
