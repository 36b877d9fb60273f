//! Financial PhraseBank (Malo et al. 2014): `sentence@label` per line, latin-1 encoded (the
//! v1.0 files start with the bytes of a UTF-8 byte-order mark, read as such and dropped).

use std::collections::HashSet;
use std::path::Path;

use super::{
    empty_text, fingpt, non_empty, normalise, read_bytes, LabelSet, Labelled, NEWS_INSTRUCTION,
};
use crate::data::DataError;

const FORMAT: &str = "Financial PhraseBank (sentence@label per line, latin-1)";

/// Every sentence of an FPB file.
///
/// # Errors
/// Unreadable file; a line with no `@label`, an empty sentence or a label other than
/// negative / neutral / positive (file and line named).
pub fn load(path: &Path) -> Result<Vec<Labelled>, DataError> {
    let bytes = read_bytes(path)?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    // latin-1: every byte is the code point of the same number.
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let labels = LabelSet::sentiment();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::Parse {
            path: path.to_path_buf(),
            format: FORMAT,
            message: format!("line {line}: {message}"),
        };
        let (sentence, label) = raw
            .rsplit_once('@')
            .ok_or_else(|| bad("no `@label` at the end of the line".into()))?;
        let word = labels.word(label).ok_or_else(|| {
            bad(format!(
                "unknown label {label:?} (known: negative, neutral, positive)"
            ))
        })?;
        if sentence.trim().is_empty() {
            return Err(empty_text(path, line, FORMAT));
        }
        out.push(Labelled {
            instruction: NEWS_INSTRUCTION.to_string(),
            text: sentence.trim().to_string(),
            label: word.to_string(),
            line,
        });
    }
    non_empty(out, path, FORMAT, "sentence")
}

/// FPB's training split: every sentence of `path` whose normalised text is not in the test
/// split `test` (FinGPT JSONL), and how many were removed. Duplicated sentences go together.
///
/// # Errors
/// As [`load`] and [`fingpt::load`]; [`DataError::Split`] if an overlap remains (it cannot,
/// short of a bug, and a run on it would score memorised items).
pub fn train_split(path: &Path, test: &Path) -> Result<(Vec<Labelled>, usize), DataError> {
    let all = load(path)?;
    let test_keys: HashSet<String> = fingpt::load(test)?
        .iter()
        .map(|t| normalise(&t.text))
        .collect();
    let total = all.len();
    let kept: Vec<Labelled> = all
        .into_iter()
        .filter(|s| !test_keys.contains(&normalise(&s.text)))
        .collect();
    let left = super::overlap(kept.iter().map(|s| s.text.as_str()), &test_keys);
    if left > 0 {
        return Err(DataError::Split(format!(
            "{left} sentences of {} remain in the test split {} after removing it",
            path.display(),
            test.display()
        )));
    }
    let removed = total - kept.len();
    Ok((kept, removed))
}
