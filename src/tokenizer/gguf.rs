//! The tokenizer stored in a GGUF file's metadata (llama.cpp's `gpt2` byte-level BPE, as
//! SmolLM2 uses): vocabulary from `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`,
//! control and user-defined tokens (types 3 and 4) as special tokens, and the pre-tokenizer
//! Hugging Face's converter gives SmolLM2: digits split one by one, then byte-level.
//! (candle's `Tokenizer::from_gguf` adds a leading-space marker, so ids differ from HF's.)

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer, TokenizerBuilder};

use super::{tk, TextTokenizer, TokenizerError};

/// GGUF metadata by key: what the tokenizer reads from a GGUF file (the model's header
/// implements it, so the tokenizer does not depend on the model module).
pub trait GgufMetadata {
    /// The value of `key`, if the file has it.
    fn metadata(&self, key: &str) -> Option<&Value>;
}

impl GgufMetadata for std::collections::HashMap<String, Value> {
    fn metadata(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

fn strings<'a>(
    header: &'a impl GgufMetadata,
    key: &'static str,
) -> Result<Vec<&'a str>, TokenizerError> {
    let bad = |problem| TokenizerError::Metadata { key, problem };
    let Some(Value::Array(items)) = header.metadata(key) else {
        return Err(bad("is missing or not an array"));
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(bad("holds a non-string")),
        })
        .collect()
}

fn id(header: &impl GgufMetadata, key: &'static str) -> Result<u32, TokenizerError> {
    match header.metadata(key) {
        Some(Value::U32(v)) => Ok(*v),
        Some(Value::I32(v)) if *v >= 0 => Ok(*v as u32),
        _ => Err(TokenizerError::Metadata {
            key,
            problem: "is missing or not a token id",
        }),
    }
}

/// The chat template in a GGUF file's metadata (`tokenizer.chat_template`), if any.
pub fn chat_template(header: &impl GgufMetadata) -> Option<super::chat::ChatTemplate> {
    match header.metadata("tokenizer.chat_template") {
        Some(Value::String(s)) => Some(super::chat::ChatTemplate::new(s)),
        _ => None,
    }
}

impl TextTokenizer {
    /// The tokenizer in a GGUF file's metadata; its end-of-sequence id is the file's
    /// `tokenizer.ggml.eos_token_id` (`<|im_end|>` for SmolLM2-Instruct, which ends each turn).
    ///
    /// # Errors
    /// [`TokenizerError::Metadata`] naming a missing or malformed key, or a tokenizer failure.
    pub fn from_gguf(header: &impl GgufMetadata) -> Result<Self, TokenizerError> {
        match header.metadata("tokenizer.ggml.model") {
            Some(Value::String(m)) if m == "gpt2" => {}
            _ => {
                return Err(TokenizerError::Metadata {
                    key: "tokenizer.ggml.model",
                    problem: "is not \"gpt2\" (byte-level BPE), the only kind fedsim reads",
                })
            }
        }
        let tokens = strings(header, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(header, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or(TokenizerError::Metadata {
                        key: "tokenizer.ggml.merges",
                        problem: "holds a merge that is not two tokens",
                    })
            })
            .collect::<Result<_, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tk)?;
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        let mut tokenizer: Tokenizer = TokenizerBuilder::new()
            .with_model(bpe)
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(pre))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(ByteLevelDecoder::default()))
            .build()
            .map_err(tk)?
            .into();
        let specials: Vec<AddedToken> = match header.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(types)) => tokens
                .iter()
                .zip(types)
                .filter(|(_, t)| matches!(t, Value::I32(3 | 4)))
                .map(|(tok, _)| AddedToken::from(tok.to_string(), true))
                .collect(),
            _ => Vec::new(),
        };
        tokenizer.add_special_tokens(specials).map_err(tk)?;
        let eos_id = id(header, "tokenizer.ggml.eos_token_id")?;
        if eos_id as usize >= tokens.len() {
            return Err(TokenizerError::Metadata {
                key: "tokenizer.ggml.eos_token_id",
                problem: "is beyond the vocabulary",
            });
        }
        Ok(Self {
            inner: tokenizer,
            eos_id,
        })
    }
}
