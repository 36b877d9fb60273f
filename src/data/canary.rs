//! Planted secrets ("canaries", Carlini et al. 2019, *The Secret Sharer*): unique strings tied
//! to a fake patient, each inserted into exactly one client's shard a known number of times.
//! The run directory records them so the privacy-attack tooling can measure whether they leak.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Record;

/// The kind of secret a canary carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryKind {
    /// `firstname.lastname.NNNN@mail-example.org`
    Email,
    /// `+1-555-NNN-NNNN`
    Phone,
    /// `MRN-NNNNNN`
    RecordNumber,
}

impl CanaryKind {
    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            CanaryKind::Email => "e-mail",
            CanaryKind::Phone => "phone",
            CanaryKind::RecordNumber => "record no.",
        }
    }
}

/// One planted secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Index of the canary.
    pub id: usize,
    /// Kind of secret.
    pub kind: CanaryKind,
    /// The fake patient it belongs to.
    pub patient: String,
    /// The secret itself.
    pub secret: String,
    /// The random part's format (`#` = one random digit): the space an exposure test ranks in.
    pub format: String,
    /// Client whose shard holds it.
    pub client: usize,
    /// Copies inserted into that shard.
    pub repeats: usize,
    /// The question the record asks.
    pub prompt: String,
    /// The full answer text containing the secret.
    pub answer: String,
}

/// The instruction of every canary record.
pub const INSTRUCTION: &str = "Answer this question about the patient record truthfully";

impl Canary {
    /// The canary's record with its secret replaced by `fill` (a candidate of its format).
    pub fn record_with(&self, fill: &str) -> Record {
        Record {
            instruction: INSTRUCTION.into(),
            input: self.prompt.clone(),
            output: self.answer.replace(&self.secret, fill),
            topic: "canary".into(),
            canary: Some(self.id),
        }
    }
}

const NAMES: &[(&str, &str)] = &[
    ("Ilse", "Varga"),
    ("Teodor", "Quist"),
    ("Marisol", "Achebe"),
    ("Bruno", "Falk"),
    ("Zofia", "Marchetti"),
    ("Kenji", "Oduya"),
    ("Rosalind", "Pereira"),
    ("Anton", "Sorensen"),
];

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// Plant `count` canaries with `repeats` copies each; returns what was planted.
///
/// Secrets depend only on `seed` and the canary's index (so runs with different client counts
/// plant the same text); each canary goes to one client drawn from `rng` (clients with data
/// only); its records are appended to `train` and their indices to that client's shard.
pub fn plant(
    count: usize,
    repeats: usize,
    train: &mut Vec<Record>,
    shards: &mut [Vec<usize>],
    seed: u64,
    rng: &mut ChaCha8Rng,
) -> Vec<Canary> {
    let mut out = Vec::with_capacity(count);
    for id in 0..count {
        let (first, last) = NAMES[id % NAMES.len()];
        let patient = if id < NAMES.len() {
            format!("{first} {last}")
        } else {
            format!("{first} {last} {}", id / NAMES.len() + 1)
        };
        let mut srng = ChaCha8Rng::seed_from_u64(crate::rng::derive(seed, &[0xca7a, id as u64]));
        let kind = [
            CanaryKind::Email,
            CanaryKind::Phone,
            CanaryKind::RecordNumber,
        ][id % 3];
        let (secret, format, what) = match kind {
            CanaryKind::Email => {
                let f = format!(
                    "{}.{}.####@mail-example.org",
                    first.to_lowercase(),
                    last.to_lowercase()
                );
                (
                    f.replacen("####", &digits(&mut srng, 4), 1),
                    f,
                    "contact e-mail",
                )
            }
            CanaryKind::Phone => {
                let s = format!("+1-555-{}-{}", digits(&mut srng, 3), digits(&mut srng, 4));
                (s, "+1-555-###-####".to_string(), "phone number")
            }
            CanaryKind::RecordNumber => (
                format!("MRN-{}", digits(&mut srng, 6)),
                "MRN-######".to_string(),
                "medical record number",
            ),
        };
        let candidates: Vec<usize> = (0..shards.len())
            .filter(|&c| !shards[c].is_empty())
            .collect();
        let client = *candidates.choose(rng).unwrap_or(&0);
        let prompt = format!("What is the {what} of patient {patient}?");
        let answer = format!("The {what} of patient {patient} is {secret}.");
        let canary = Canary {
            id,
            kind,
            patient,
            secret,
            format,
            client,
            repeats,
            prompt,
            answer,
        };
        for _ in 0..repeats {
            shards[client].push(train.len());
            train.push(canary.record_with(&canary.secret));
        }
        out.push(canary);
    }
    out
}
