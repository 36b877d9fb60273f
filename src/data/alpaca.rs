//! MedAlpaca / Alpaca JSON loader: `[{"instruction": …, "input": …, "output": …}, …]`.

use std::path::Path;

use serde::Deserialize;

use super::{DataError, Record};

#[derive(Deserialize)]
struct AlpacaRow {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

/// Read an Alpaca-format JSON file.
///
/// # Errors
/// [`DataError::Read`] when the file cannot be read, [`DataError::Parse`] with line and column
/// when it is not a JSON list of `{instruction, input, output}`.
pub fn load(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Windows editors often start UTF-8 files with a byte-order mark; JSON does not allow it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let rows: Vec<AlpacaRow> = serde_json::from_str(text).map_err(|e| DataError::Parse {
        path: path.to_path_buf(),
        format: "Alpaca JSON (a list of {instruction, input, output})",
        message: e.to_string(),
    })?;
    if rows.is_empty() {
        return Err(DataError::Parse {
            path: path.to_path_buf(),
            format: "Alpaca JSON (a list of {instruction, input, output})",
            message: "the list is empty".into(),
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let topic = question_topic(if r.input.is_empty() {
                &r.instruction
            } else {
                &r.input
            });
            Record {
                instruction: r.instruction,
                input: r.input,
                output: r.output,
                topic: topic.to_string(),
                canary: None,
            }
        })
        .collect())
}

/// Coarse question type, the label the Dirichlet partitioner uses for Alpaca data
/// (MedAlpaca has no label field: its questions ask about symptoms, causes, outlook, risk…).
pub fn question_topic(question: &str) -> &'static str {
    const RULES: [(&str, &str); 10] = [
        ("symptom", "symptoms"),
        ("when to seek", "seek-care"),
        ("when to contact", "seek-care"),
        ("what to expect", "prognosis"),
        ("prognosis", "prognosis"),
        ("who is at", "risk"),
        ("risk", "risk"),
        ("cause", "causes"),
        ("treat", "treatment"),
        ("diagnos", "diagnosis"),
    ];
    let q = question.to_lowercase();
    RULES
        .iter()
        .find(|(k, _)| q.contains(k))
        .map_or("other", |(_, t)| t)
}
