//! CSV (header row, quoted multi-line fields) and JSONL tables with a text and a label column.

use std::path::Path;

use super::{empty_text, non_empty, read_bytes};
use crate::data::DataError;

/// One row's text and raw label value, with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The text, trimmed.
    pub text: String,
    /// The label value as written.
    pub label: String,
    /// 1-based line the row starts on.
    pub line: usize,
}

const CSV: &str = "CSV with a header row";
const JSONL: &str = "JSONL (one object per line)";

/// The `text` and `label` columns of a CSV file.
///
/// # Errors
/// Unreadable or malformed file, a missing column, an empty text (file and line named).
pub fn read_csv(path: &Path, text: &str, label: &str) -> Result<Vec<Row>, DataError> {
    let bytes = read_bytes(path)?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes);
    let bad = |message: String| DataError::Parse {
        path: path.to_path_buf(),
        format: CSV,
        message,
    };
    let header = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            bad(format!(
                "line 1: no column {name:?} (columns: {}); name the text and label columns as the header does",
                header.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (ti, li) = (column(text)?, column(label)?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let t = record.get(ti).unwrap_or("").trim();
        if t.is_empty() {
            return Err(empty_text(path, line, CSV));
        }
        rows.push(Row {
            text: t.to_string(),
            label: record.get(li).unwrap_or("").trim().to_string(),
            line,
        });
    }
    non_empty(rows, path, CSV, "row")
}

/// The `text` and `label` keys of a JSONL file (a label may be a string or a number).
///
/// # Errors
/// Unreadable file, a line that is not an object, a missing key, an empty text.
pub fn read_jsonl(path: &Path, text: &str, label: &str) -> Result<Vec<Row>, DataError> {
    let bytes = read_bytes(path)?;
    let content = String::from_utf8_lossy(&bytes);
    let content = content.strip_prefix('\u{feff}').unwrap_or(&content);
    let mut rows = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::Parse {
            path: path.to_path_buf(),
            format: JSONL,
            message: format!("line {line}: {message}"),
        };
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let field = |key: &str| match v.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.trim().to_string()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(bad(format!("{key:?} is {other}, not a string or number"))),
            None => Err(bad(format!(
                "no key {key:?}; name the text and label keys the file uses"
            ))),
        };
        let t = field(text)?;
        if t.is_empty() {
            return Err(empty_text(path, line, JSONL));
        }
        rows.push(Row {
            text: t,
            label: field(label)?,
            line,
        });
    }
    non_empty(rows, path, JSONL, "row")
}
