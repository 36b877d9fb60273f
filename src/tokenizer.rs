//! Tokenizer for the `tiny` model: a byte-level BPE trained with the `tokenizers` crate's
//! trainer on the training corpus (deterministic for a given corpus), saved as
//! `tokenizer.json` in the run directory so any Hugging Face tokenizer can reload it.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::data::Record;

pub mod chat;
mod gguf;

pub use gguf::{chat_template, GgufMetadata};

/// Errors of tokenizer training, loading and encoding.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The `tokenizers` crate failed.
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    /// A chat template does not parse or render.
    #[error("chat template")]
    Template(#[source] minijinja::Error),
    /// A GGUF file's tokenizer metadata is missing or malformed.
    #[error("GGUF metadata {key} {problem}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The trained vocabulary is smaller than the model's.
    #[error("the training corpus yields only {got} tokens but the model needs {want}")]
    Vocabulary {
        /// Tokens learned.
        got: usize,
        /// Tokens asked for.
        want: usize,
    },
}

fn tk(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// End of text; also the padding token (id 0, as in SmolLM2).
pub const EOS: &str = "<|endoftext|>";

/// A tokenizer and the ids the trainer needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_id: u32,
}

/// How a record's prompt and response are written.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptText {
    /// The Alpaca template ("Below is an instruction…### Response:") and " " + output.
    Alpaca,
    /// A chat template: the instruction (and input) as the user's turn, rendered with the
    /// assistant's turn opened; the response is the output (the end-of-turn id follows it).
    Chat(chat::ChatTemplate),
    /// FinGPT's `Instruction: …\nInput: …\nAnswer:` and " " + output (the label).
    FinGpt,
}

impl PromptText {
    /// (prompt, response) of `record`.
    ///
    /// # Errors
    /// When the chat template fails to render.
    pub fn texts(&self, record: &Record) -> Result<(String, String), TokenizerError> {
        match self {
            PromptText::Alpaca => Ok((record.prompt(), record.response())),
            PromptText::FinGpt => Ok((
                crate::data::labelled::fingpt_prompt(&record.instruction, &record.input),
                record.response(),
            )),
            PromptText::Chat(template) => {
                let user = if record.input.is_empty() {
                    record.instruction.clone()
                } else {
                    format!("{}\n\n{}", record.instruction, record.input)
                };
                let msg = chat::Message {
                    role: chat::Role::User,
                    content: &user,
                };
                Ok((template.render(&[msg], true)?, record.output.clone()))
            }
        }
    }
}

/// One tokenised record: prompt followed by response and EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedExample {
    /// Token ids, at most `max_seq_len`.
    pub ids: Vec<u32>,
    /// Number of leading prompt tokens (no loss on them).
    pub prompt_len: usize,
}

impl TokenizedExample {
    /// Number of tokens the loss is computed on.
    pub fn response_tokens(&self) -> usize {
        self.ids.len().saturating_sub(self.prompt_len)
    }
}

impl TextTokenizer {
    /// Train a byte-level BPE with exactly `vocab_size` tokens on `corpus`.
    ///
    /// # Errors
    /// When training fails or the corpus is too small to reach `vocab_size`.
    pub fn train(corpus: &[Record], vocab_size: usize) -> Result<Self, TokenizerError> {
        let specials = vec![
            AddedToken::from(EOS, true),
            AddedToken::from("<|im_start|>", true),
            AddedToken::from("<|im_end|>", true),
        ];
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(ByteLevelDecoder::default()))
            .build()
            .map_err(tk)?;
        // Planted canaries are left out: BPE merges would memorise their secrets (24 copies of
        // "MRN-012612" earn it a few merges), so a model that never trained would already rank
        // them first and exposure would measure the tokenizer, not the fine-tuning.
        let texts: Vec<String> = corpus
            .iter()
            .filter(|r| r.canary.is_none())
            .map(Record::full_text)
            .collect();
        tokenizer.train(&mut trainer, texts.iter()).map_err(tk)?;
        let inner: Tokenizer = tokenizer.into();
        let got = inner.get_vocab_size(true);
        if got < vocab_size {
            return Err(TokenizerError::Vocabulary {
                got,
                want: vocab_size,
            });
        }
        Self::from_tokenizer(inner)
    }

    /// Wrap an existing tokenizer (`tokenizer.json`).
    ///
    /// # Errors
    /// When the file cannot be read or has no `<|endoftext|>` token.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_tokenizer(Tokenizer::from_file(path).map_err(tk)?)
    }

    /// A `tokenizer.json` whose end-of-sequence id is `eos_id` (a model's `eos_token_id`), or
    /// `<|endoftext|>` when None.
    ///
    /// # Errors
    /// When the file cannot be read, or the id is not in its vocabulary.
    pub fn from_file_with_eos(path: &Path, eos_id: Option<u32>) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", path.display())))?;
        match eos_id {
            Some(id) if inner.id_to_token(id).is_some() => Ok(Self { inner, eos_id: id }),
            Some(_) => Err(TokenizerError::Metadata {
                key: "eos_token_id",
                problem: "is not in the tokenizer's vocabulary",
            }),
            None => Self::from_tokenizer(inner),
        }
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, TokenizerError> {
        let eos_id = inner
            .token_to_id(EOS)
            .ok_or_else(|| TokenizerError::Tokenizers(format!("no {EOS} token")))?;
        Ok(Self { inner, eos_id })
    }

    /// The end-of-text (and padding) id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of the document separator `<|endoftext|>` when the vocabulary has one, else the
    /// end-of-sequence id: what an unconditioned sample starts from.
    pub fn document_start_id(&self) -> u32 {
        self.inner.token_to_id(EOS).unwrap_or(self.eos_id)
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encode text without adding special tokens.
    ///
    /// # Errors
    /// On a tokenizer failure.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tk)?
            .get_ids()
            .to_vec())
    }

    /// Decode ids to text.
    ///
    /// # Errors
    /// On a tokenizer failure.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(tk)
    }

    /// Decode ids to text, special tokens (`<|im_start|>`, …) included.
    ///
    /// # Errors
    /// On a tokenizer failure.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(tk)
    }

    /// Tokenise a record as prompt + response + EOS in at most `max_seq_len` tokens.
    ///
    /// When it does not fit, the response keeps at least half the budget: the prompt is cut
    /// from the left (its end, with the response marker, stays) and the response from the
    /// right, so no example loses all its training signal. Returns the example and whether it
    /// was truncated.
    ///
    /// # Errors
    /// On a tokenizer failure.
    pub fn example(
        &self,
        record: &Record,
        max_seq_len: usize,
    ) -> Result<(TokenizedExample, bool), TokenizerError> {
        self.example_as(record, max_seq_len, &PromptText::Alpaca)
    }

    /// As [`TextTokenizer::example`], with the prompt written as `format` says.
    ///
    /// # Errors
    /// On a tokenizer or template failure.
    pub fn example_as(
        &self,
        record: &Record,
        max_seq_len: usize,
        format: &PromptText,
    ) -> Result<(TokenizedExample, bool), TokenizerError> {
        let (prompt, response) = format.texts(record)?;
        let prompt = self.encode(&prompt)?;
        let mut response = self.encode(&response)?;
        response.push(self.eos_id);
        let fits = prompt.len() + response.len() <= max_seq_len;
        let keep_response = response
            .len()
            .min((max_seq_len / 2).max(max_seq_len.saturating_sub(prompt.len())))
            .max(1);
        let keep_prompt = (max_seq_len.saturating_sub(keep_response)).min(prompt.len());
        let mut ids = prompt[prompt.len() - keep_prompt..].to_vec();
        ids.extend_from_slice(&response[..keep_response]);
        Ok((
            TokenizedExample {
                ids,
                prompt_len: keep_prompt,
            },
            !fits,
        ))
    }

    /// Save as `tokenizer.json`.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner.save(path, true).map_err(tk)
    }
}
