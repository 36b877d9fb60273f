//! FinGPT / FlowerTune JSONL: one `{"context": "Instruction: …\nInput: …\nAnswer: ",
//! "target": "positive"}` per line (their FPB, FiQA-SA and TFNS test files).

use std::path::Path;

use serde::Deserialize;

use super::{empty_text, non_empty, read_bytes, Labelled};
use crate::data::DataError;

const FORMAT: &str = "FinGPT JSONL ({context, target} per line)";

#[derive(Deserialize)]
struct Row {
    context: String,
    target: String,
}

/// Every item of a FinGPT JSONL file: the instruction and the text taken from `context`
/// (`Instruction: …\nInput: …\nAnswer:`), the label from `target`.
///
/// # Errors
/// Unreadable file; a line that is not `{context, target}`, whose context lacks the
/// `Instruction:` / `Input:` / `Answer:` parts, or whose text or target is empty.
pub fn load(path: &Path) -> Result<Vec<Labelled>, DataError> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::Parse {
            path: path.to_path_buf(),
            format: FORMAT,
            message: format!("line {line}: {message}"),
        };
        let row: Row = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let (instruction, text) = split_context(&row.context)
            .ok_or_else(|| bad("context is not `Instruction: …\\nInput: …\\nAnswer:`".into()))?;
        if text.trim().is_empty() {
            return Err(empty_text(path, line, FORMAT));
        }
        let label = row.target.trim().to_lowercase();
        if label.is_empty() {
            return Err(bad("target is empty".into()));
        }
        out.push(Labelled {
            instruction: instruction.to_string(),
            text: text.trim().to_string(),
            label,
            line,
        });
    }
    non_empty(out, path, FORMAT, "item")
}

/// (instruction, text) of a FinGPT context.
fn split_context(context: &str) -> Option<(&str, &str)> {
    let rest = context.strip_prefix("Instruction: ")?;
    let (instruction, rest) = rest.split_once("\nInput: ")?;
    let (text, _) = rest.rsplit_once("\nAnswer:")?;
    Some((instruction.trim(), text))
}
