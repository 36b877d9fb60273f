//! One instruction-tuning record and the course's Alpaca-style prompt template.

use serde::{Deserialize, Serialize};

/// An instruction / input / output triple (Alpaca format) with a topic label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The task (`Answer this question truthfully`).
    pub instruction: String,
    /// The question or context; may be empty.
    pub input: String,
    /// The answer the model learns to produce.
    pub output: String,
    /// Label used by the Dirichlet partitioner (condition area, question type).
    pub topic: String,
    /// Index into the run's canaries when this record carries a planted secret.
    pub canary: Option<usize>,
}

/// Text before the response of the course's Alpaca prompt.
const PREAMBLE: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

/// The separator whose following tokens are the only ones the loss sees.
pub const RESPONSE_MARKER: &str = "### Response:";

impl Record {
    /// The prompt up to and including the response marker.
    pub fn prompt(&self) -> String {
        let mut s = format!("{PREAMBLE}\n### Instruction:\n{}", self.instruction);
        if !self.input.is_empty() {
            s.push('\n');
            s.push_str(&self.input);
        }
        s.push('\n');
        s.push_str(RESPONSE_MARKER);
        s
    }

    /// The response text as trained on (leading space after the marker).
    pub fn response(&self) -> String {
        format!(" {}", self.output)
    }

    /// Prompt and response concatenated (for tokenizer training).
    pub fn full_text(&self) -> String {
        self.prompt() + &self.response()
    }
}
