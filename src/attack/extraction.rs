//! Training-data extraction: sample from the model (top-k 40, seeded) after a few prompts,
//! find identifiers by pattern in what it writes, and match them verbatim against the
//! training records — which secrets came out, whose, and how many of the identifiers it wrote
//! were real (precision).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::patterns::{self, PiiKind};
use super::target::Target;
use super::{AttackError, Progress};
use crate::model::generate::{generate, Budget, Sampling};
use crate::model::BaseModel;
use crate::rng::{derive, purpose};

/// What extraction samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplePlan {
    /// Samples per prompt.
    pub per_prompt: usize,
    /// New tokens per sample.
    pub max_tokens: usize,
}

/// A prompt samples start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractionPrompt {
    /// How it reads in reports.
    pub label: String,
    /// The raw text before generation (`""`: the document-start token alone).
    pub text: String,
    /// For a canary's context: its id (the text follows the canary's question in the run's
    /// prompt template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_of: Option<usize>,
}

/// The prompts: empty, the course's "email address:", and for each canary its patient's
/// name and its own question with the answer up to the secret.
pub fn prompts(t: &Target) -> Vec<ExtractionPrompt> {
    let mut out = vec![
        ExtractionPrompt {
            label: "empty".into(),
            text: String::new(),
            context_of: None,
        },
        ExtractionPrompt {
            label: "\"email address:\"".into(),
            text: "email address:".into(),
            context_of: None,
        },
    ];
    for c in &t.data.canaries {
        out.push(ExtractionPrompt {
            label: format!("name of canary {}", c.id),
            text: c.patient.clone(),
            context_of: None,
        });
        let prefix = c.answer[..c.answer.find(&c.secret).unwrap_or(c.answer.len())].trim_end();
        out.push(ExtractionPrompt {
            label: format!("context of canary {}", c.id),
            text: prefix.to_string(),
            context_of: Some(c.id),
        });
    }
    out
}

/// An identifier found in the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extracted {
    /// Its kind.
    pub kind: PiiKind,
    /// The text.
    pub text: String,
    /// Samples it appeared in.
    pub samples: usize,
    /// Whether a training record holds it verbatim.
    pub in_training: bool,
    /// Clients whose shards hold it.
    pub clients: Vec<usize>,
    /// The canary it is, if any.
    pub canary: Option<usize>,
}

/// One model's extraction result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// Samples generated.
    pub samples: usize,
    /// Distinct identifiers found.
    pub found: usize,
    /// Distinct identifiers that are verbatim in the training data.
    pub training_secrets: usize,
    /// training_secrets / found (None when nothing was found).
    pub precision: Option<f64>,
    /// Canaries extracted.
    pub canaries: Vec<usize>,
    /// Distinct training identifiers extracted per owning client.
    pub by_client: BTreeMap<usize, usize>,
    /// Every identifier found.
    pub extracted: Vec<Extracted>,
    /// The first sample of each prompt (label, text), to read what the model writes.
    pub examples: Vec<(String, String)>,
}

/// Identifiers in the training data: text → (owning clients, canary).
type Index = BTreeMap<String, (BTreeSet<usize>, Option<usize>)>;

fn training_index(t: &Target) -> Index {
    let d = &t.data;
    let mut owner = vec![None; d.train.len()];
    for (c, shard) in d.shards.iter().enumerate() {
        for &i in shard {
            owner[i] = Some(c);
        }
    }
    let mut index = Index::new();
    for (i, r) in d.train.iter().enumerate() {
        let text = format!("{}\n{}\n{}", r.instruction, r.input, r.output);
        for f in patterns::find(&text) {
            let e = index.entry(f.text).or_default();
            e.0.extend(owner[i]);
            e.1 = e.1.or(r.canary);
        }
    }
    index
}

/// The prompts and the training data's identifiers, built once for every model attacked.
pub struct Extractor {
    /// The prompts samples start from.
    pub prompts: Vec<ExtractionPrompt>,
    index: Index,
}

impl Extractor {
    /// Prompts and index of `t`'s training data.
    pub fn new(t: &Target) -> Self {
        Self {
            prompts: prompts(t),
            index: training_index(t),
        }
    }

    /// Sample from `model` after every prompt and match what it writes against the training
    /// data.
    ///
    /// # Errors
    /// A tokenizer or model failure.
    pub fn run(
        &self,
        t: &Target,
        model: &BaseModel,
        plan: SamplePlan,
        stage: &str,
        progress: Progress<'_>,
    ) -> Result<Extraction, AttackError> {
        let (prompts, index) = (&self.prompts, &self.index);
        let total = prompts.len() * plan.per_prompt;
        let mut seen: BTreeMap<(PiiKind, String), usize> = BTreeMap::new();
        let stop = [t.tokenizer.eos_id(), t.tokenizer.document_start_id()];
        let mut examples = Vec::with_capacity(prompts.len());
        for (p, prompt) in prompts.iter().enumerate() {
            let ids = prompt_ids(t, prompt)?;
            for k in 0..plan.per_prompt {
                let sampling = Sampling::Random {
                    temperature: 1.0,
                    top_k: Some(40),
                    top_p: None,
                    seed: derive(t.scenario.seed, &[purpose::ATTACK, 3, p as u64, k as u64]),
                };
                let out = generate(model, &ids, Budget::up_to(plan.max_tokens), sampling, &stop)?;
                let text = t.tokenizer.decode(&out.ids)?;
                if k == 0 {
                    examples.push((prompt.label.clone(), text.clone()));
                }
                let found: BTreeSet<_> = patterns::find(&text)
                    .into_iter()
                    .map(|f| (f.kind, f.text))
                    .collect();
                for f in found {
                    *seen.entry(f).or_default() += 1;
                }
                progress(stage, p * plan.per_prompt + k + 1, total)?;
            }
        }
        Ok(summarise(seen, index, total, examples))
    }
}

/// What the samples held: each identifier found, whether (and whose) training data it is,
/// and the precision.
fn summarise(
    seen: BTreeMap<(PiiKind, String), usize>,
    index: &Index,
    total: usize,
    examples: Vec<(String, String)>,
) -> Extraction {
    let extracted: Vec<Extracted> = seen
        .into_iter()
        .map(|((kind, text), samples)| {
            let hit = index.get(&text);
            Extracted {
                kind,
                in_training: hit.is_some(),
                clients: hit
                    .map(|h| h.0.iter().copied().collect())
                    .unwrap_or_default(),
                canary: hit.and_then(|h| h.1),
                text,
                samples,
            }
        })
        .collect();
    let training: Vec<&Extracted> = extracted.iter().filter(|e| e.in_training).collect();
    let mut by_client = BTreeMap::new();
    for e in &training {
        for &c in &e.clients {
            *by_client.entry(c).or_default() += 1;
        }
    }
    Extraction {
        samples: total,
        found: extracted.len(),
        training_secrets: training.len(),
        precision: (!extracted.is_empty()).then(|| training.len() as f64 / extracted.len() as f64),
        canaries: training.iter().filter_map(|e| e.canary).collect(),
        by_client,
        extracted,
        examples,
    }
}

fn prompt_ids(t: &Target, p: &ExtractionPrompt) -> Result<Vec<u32>, AttackError> {
    if p.text.is_empty() {
        return Ok(vec![t.tokenizer.document_start_id()]);
    }
    let Some(canary) = p.context_of.and_then(|id| t.data.canaries.get(id)) else {
        return Ok(t.tokenizer.encode(&p.text)?);
    };
    // The canary's question in the run's template, then the answer up to the secret —
    // tokenised in two parts, as training tokenised prompt and response.
    let mut record = canary.record_with(&canary.secret);
    record.output = p.text.clone();
    let (prompt, response) = t.format.texts(&record)?;
    let mut ids = t.tokenizer.encode(&prompt)?;
    ids.extend(t.tokenizer.encode(&response)?);
    Ok(ids)
}
