//! Personal identifiers found by pattern in text: e-mail addresses, URLs, phone numbers and
//! medical record numbers — what an extraction attack looks for in generated samples and in
//! the training data.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The kind of identifier a pattern finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// `name@domain.tld`
    Email,
    /// `http(s)://…` or `www.…`
    Url,
    /// North-American style numbers: `+1-555-123-4567`, `(555) 123-4567`, `555.123.4567`.
    Phone,
    /// `MRN-123456` (also `MRN 123456`, `MRN:123456`).
    RecordNumber,
}

impl PiiKind {
    /// Every kind, in report order.
    pub const ALL: [PiiKind; 4] = [
        PiiKind::Email,
        PiiKind::Url,
        PiiKind::Phone,
        PiiKind::RecordNumber,
    ];

    /// Lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "e-mail",
            PiiKind::Url => "URL",
            PiiKind::Phone => "phone",
            PiiKind::RecordNumber => "record no.",
        }
    }

    fn regex(self) -> &'static Regex {
        static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(
                r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            )
            .expect("valid")
        });
        static URL: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r#"\b(?:https?://|www\.)[^\s<>"'()\[\]]+"#).expect("valid")
        });
        static PHONE: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"(?:\+\d{1,3}[-. ]?)?(?:\(\d{3}\) ?|\b\d{3}[-. ])\d{3}[-. ]\d{4}\b")
                .expect("valid")
        });
        static MRN: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"\bMRN[-: ]?\d{6,10}\b").expect("valid"));
        match self {
            PiiKind::Email => &EMAIL,
            PiiKind::Url => &URL,
            PiiKind::Phone => &PHONE,
            PiiKind::RecordNumber => &MRN,
        }
    }
}

/// One identifier found in a text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Found {
    /// Its kind.
    pub kind: PiiKind,
    /// The matched text (trailing punctuation removed).
    pub text: String,
}

/// Every identifier in `text`, in order of kind and then position. A phone-like digit run
/// inside an e-mail address or URL, or one glued to more digits or a dash on either side
/// (dates, ISBNs, longer numbers), is not a phone number.
pub fn find(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut taken: Vec<(usize, usize)> = Vec::new();
    for kind in PiiKind::ALL {
        for m in kind.regex().find_iter(text) {
            let s = m.as_str().trim_end_matches(['.', ',', ';', ':', '!', '?']);
            let (start, end) = (m.start(), m.start() + s.len());
            if taken.iter().any(|&(a, b)| start < b && a < end) {
                continue;
            }
            if kind == PiiKind::Phone && glued(text, start, end) {
                continue;
            }
            taken.push((start, end));
            out.push(Found {
                kind,
                text: s.to_string(),
            });
        }
    }
    out
}

/// Whether the match `start..end` continues into digits or number separators.
fn glued(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let joins = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '/');
    joins(before) || joins(after)
}
