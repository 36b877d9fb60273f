//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in GGUF
//! metadata or `tokenizer_config.json`), rendered with `minijinja` as Hugging Face's
//! `apply_chat_template` renders it; ChatML when a model has none.

use serde::Serialize;

use super::TokenizerError;

/// ChatML, SmolLM2's format, for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
    message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\n' }}{% endif %}";

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message<'a> {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: &'a str,
}

/// A model's chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    source: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        Self::new(CHATML)
    }
}

impl ChatTemplate {
    /// A template from its Jinja source.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_string(),
        }
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer starts.
    ///
    /// # Errors
    /// [`TokenizerError::Template`] when the template does not parse or render.
    pub fn render(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &self.source)
            .map_err(TokenizerError::Template)?;
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                })
            })
            .map_err(TokenizerError::Template)
    }
}
