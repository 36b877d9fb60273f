//! The built-in generator of *private* patient records as Q/A pairs.
//!
//! Each record is about one fictitious patient: a condition (its clinical area is the topic
//! label), symptoms, a medication with dose and frequency, and a follow-up interval. Names and
//! facts are drawn from a seeded RNG, so the data set is reproducible and contains no real
//! person's information.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Record;

/// (area, condition, symptoms, medications with dose and frequency)
type Condition = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const CONDITIONS: &[Condition] = &[
    (
        "cardiology",
        "hypertension",
        &["headaches", "dizziness", "blurred vision", "nosebleeds"],
        &[
            "lisinopril 10 mg once daily",
            "amlodipine 5 mg once daily",
            "losartan 50 mg once daily",
        ],
    ),
    (
        "cardiology",
        "atrial fibrillation",
        &[
            "palpitations",
            "shortness of breath",
            "fatigue",
            "chest discomfort",
        ],
        &[
            "apixaban 5 mg twice daily",
            "metoprolol 25 mg twice daily",
            "diltiazem 120 mg once daily",
        ],
    ),
    (
        "cardiology",
        "heart failure",
        &[
            "ankle swelling",
            "shortness of breath",
            "fatigue",
            "weight gain",
        ],
        &[
            "furosemide 40 mg once daily",
            "bisoprolol 2.5 mg once daily",
            "sacubitril/valsartan 49/51 mg twice daily",
        ],
    ),
    (
        "endocrinology",
        "type 2 diabetes",
        &[
            "increased thirst",
            "frequent urination",
            "fatigue",
            "blurred vision",
        ],
        &[
            "metformin 500 mg twice daily",
            "empagliflozin 10 mg once daily",
            "sitagliptin 100 mg once daily",
        ],
    ),
    (
        "endocrinology",
        "hypothyroidism",
        &["fatigue", "weight gain", "cold intolerance", "dry skin"],
        &[
            "levothyroxine 50 mcg once daily",
            "levothyroxine 75 mcg once daily",
        ],
    ),
    (
        "respiratory",
        "asthma",
        &[
            "wheezing",
            "night cough",
            "chest tightness",
            "shortness of breath",
        ],
        &[
            "salbutamol 100 mcg as needed",
            "budesonide 200 mcg twice daily",
            "montelukast 10 mg at night",
        ],
    ),
    (
        "respiratory",
        "COPD",
        &[
            "chronic cough",
            "sputum production",
            "shortness of breath",
            "wheezing",
        ],
        &[
            "tiotropium 18 mcg once daily",
            "salmeterol 50 mcg twice daily",
        ],
    ),
    (
        "respiratory",
        "community-acquired pneumonia",
        &["fever", "productive cough", "chest pain", "chills"],
        &[
            "amoxicillin 1 g three times daily",
            "doxycycline 100 mg twice daily",
        ],
    ),
    (
        "neurology",
        "migraine",
        &[
            "throbbing headache",
            "nausea",
            "light sensitivity",
            "visual aura",
        ],
        &[
            "sumatriptan 50 mg at onset",
            "propranolol 40 mg twice daily",
            "topiramate 25 mg at night",
        ],
    ),
    (
        "neurology",
        "epilepsy",
        &["seizures", "confusion after episodes", "staring spells"],
        &[
            "levetiracetam 500 mg twice daily",
            "lamotrigine 25 mg once daily",
        ],
    ),
    (
        "infectious",
        "urinary tract infection",
        &[
            "burning on urination",
            "frequent urination",
            "lower abdominal pain",
        ],
        &[
            "nitrofurantoin 100 mg twice daily",
            "trimethoprim 200 mg twice daily",
        ],
    ),
    (
        "infectious",
        "influenza",
        &["fever", "muscle aches", "sore throat", "dry cough"],
        &[
            "oseltamivir 75 mg twice daily",
            "paracetamol 1 g four times daily",
        ],
    ),
    (
        "gastroenterology",
        "gastro-oesophageal reflux",
        &["heartburn", "regurgitation", "chest discomfort after meals"],
        &[
            "omeprazole 20 mg once daily",
            "pantoprazole 40 mg once daily",
        ],
    ),
    (
        "gastroenterology",
        "irritable bowel syndrome",
        &["abdominal cramps", "bloating", "alternating bowel habits"],
        &[
            "mebeverine 135 mg three times daily",
            "peppermint oil 0.2 ml three times daily",
        ],
    ),
    (
        "psychiatry",
        "major depressive disorder",
        &[
            "low mood",
            "poor sleep",
            "loss of interest",
            "poor concentration",
        ],
        &["sertraline 50 mg once daily", "mirtazapine 15 mg at night"],
    ),
    (
        "psychiatry",
        "generalised anxiety disorder",
        &["restlessness", "worry", "muscle tension", "poor sleep"],
        &[
            "escitalopram 10 mg once daily",
            "sertraline 25 mg once daily",
        ],
    ),
];

const FIRST: &[&str] = &[
    "Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Yuki", "Noah", "Elena",
    "Kofi", "Sara", "Mateo", "Ingrid", "Ravi", "Lucia", "Tomas", "Amara", "Jonas", "Mei", "Omar",
    "Hannah", "Diego", "Nadia", "Erik", "Priya", "Samuel", "Leila", "Viktor",
];
const LAST: &[&str] = &[
    "Keller",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Novak",
    "Haddad",
    "Silva",
    "Brennan",
    "Kowalski",
    "Ivanova",
    "Mensah",
    "Fischer",
    "Rossi",
    "Nakamura",
    "Petrov",
    "Alvarez",
    "Dubois",
    "Schmidt",
    "Costa",
    "Andersen",
    "Yilmaz",
    "Murphy",
    "Horvath",
    "Jensen",
    "Castillo",
];

/// Distinct clinical areas (topic labels) the generator draws from.
pub const AREAS: usize = 7;

const INSTRUCTION: &str = "Answer this question about the patient record truthfully";

/// Generate `n` records from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<Record> {
    generate_with(n, seed, &mut super::no_progress).expect("no_progress never stops")
}

/// As [`generate`], reporting progress about every 1 % (and at the end).
///
/// # Errors
/// [`super::Stopped`] when `progress` asks to stop.
pub fn generate_with(
    n: usize,
    seed: u64,
    progress: super::StageFn<'_>,
) -> Result<Vec<Record>, super::Stopped> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e1f_ca4e);
    let every = (n / 100).max(10_000);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i % every == 0 {
            progress("generating records", i, n)?;
        }
        out.push(one(&mut rng));
    }
    progress("generating records", n, n)?;
    Ok(out)
}

fn one(rng: &mut ChaCha8Rng) -> Record {
    let &(area, condition, symptoms, meds) = CONDITIONS.choose(rng).expect("non-empty");
    let name = format!(
        "{} {}",
        FIRST.choose(rng).expect("non-empty"),
        LAST.choose(rng).expect("non-empty")
    );
    let age: u32 = rng.random_range(18..90);
    let med = meds.choose(rng).expect("non-empty");
    let mut s: Vec<&str> = symptoms.choose_multiple(rng, 2).copied().collect();
    s.sort();
    let weeks = [2u32, 4, 6, 8, 12].choose(rng).copied().expect("non-empty");
    let (input, output) = match rng.random_range(0..4) {
        0 => (
            format!("What medication was prescribed to {name} for {condition}?"),
            format!("{name} was prescribed {med} for {condition}."),
        ),
        1 => (
            format!("What symptoms did {name}, aged {age}, report?"),
            format!("{name}, aged {age}, reported {} and {}; the working diagnosis is {condition}.", s[0], s[1]),
        ),
        2 => (
            format!("When is the follow-up visit for {name}?"),
            format!("{name} should return in {weeks} weeks to review {condition} and the response to {med}."),
        ),
        _ => (
            format!("Summarise the record of patient {name}."),
            format!(
                "{name}, aged {age}, has {condition} with {} and {}. Plan: {med}, follow-up in {weeks} weeks.",
                s[0], s[1]
            ),
        ),
    };
    Record {
        instruction: INSTRUCTION.to_string(),
        input,
        output,
        topic: area.to_string(),
        canary: None,
    }
}
