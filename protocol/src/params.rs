//! The leaf vocabulary every message is built from: the byte and count
//! limits, model ids, prompt formats, sampling parameters, stop reasons and
//! the error for a message that decodes but breaks a rule.
//!
//! It imports nothing else of this crate but [`crate::ids`], so that messages,
//! receipts, fraud evidence and market messages can all use it without the
//! module graph growing a cycle.

use crate::ids::ModelHash;
use serde::{Deserialize, Serialize};

/// Longest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
/// Most tokens a task may ask to generate.
pub const MAX_OUTPUT_TOKENS: u32 = 8192;
/// Longest generated text returned, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Most models one advert may list.
pub const MAX_MODELS_PER_ADVERT: usize = 64;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 128;
/// Most addresses one advert may list.
pub const MAX_ADVERT_ADDRS: usize = 16;
/// Longest address in an advert, in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// Longest free-text field (error messages, version strings), in bytes.
pub const MAX_TEXT_FIELD_BYTES: usize = 1024;

/// A model an orchestrator serves: a name for people, a hash for machines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    /// Human-readable name, usually the GGUF file stem.
    pub name: String,
    /// SHA-256 of the GGUF file.
    pub sha256: ModelHash,
}

/// How the orchestrator turns the prompt into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PromptFormat {
    /// The prompt is one user turn, wrapped in the model's own chat template.
    #[default]
    Chat,
    /// The prompt is tokenized as it is (plain completion).
    Raw,
}

/// How tokens are sampled.
///
/// A temperature of zero means greedy decoding, which is deterministic for a
/// given model and backend; otherwise top-p sampling at that temperature,
/// seeded by `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Most tokens to generate; generation also stops at end-of-generation.
    pub max_tokens: u32,
    /// Softmax temperature in `[0, 2]`; `0` is greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`.
    pub top_p: f32,
    /// Seed of the sampler's random draws.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether decoding is greedy (deterministic).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the parameters' ranges.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.max_tokens == 0 || self.max_tokens > MAX_OUTPUT_TOKENS {
            return Err(InvalidMessage::MaxTokens(self.max_tokens));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(InvalidMessage::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InvalidMessage::TopP(self.top_p));
        }
        Ok(())
    }
}

/// Most bytes a list of [`MAX_OUTPUT_TOKENS`] token ids takes in CBOR.
pub const MAX_TOKEN_LIST_BYTES: usize = MAX_OUTPUT_TOKENS as usize * 5 + 16;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
}

/// A message that decodes but breaks a limit or a rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// Empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Prompt over [`MAX_PROMPT_BYTES`].
    #[error("prompt of {0} bytes is over the {MAX_PROMPT_BYTES}-byte cap")]
    PromptTooLarge(usize),
    /// `max_tokens` out of `1..=MAX_OUTPUT_TOKENS`.
    #[error("max_tokens {0} is outside 1..={MAX_OUTPUT_TOKENS}")]
    MaxTokens(u32),
    /// Temperature out of `[0, 2]`.
    #[error("temperature {0} is outside [0, 2]")]
    Temperature(f32),
    /// top-p out of `(0, 1]`.
    #[error("top_p {0} is outside (0, 1]")]
    TopP(f32),
    /// Too many addresses in an advert.
    #[error("{0} addresses is over the {MAX_ADVERT_ADDRS}-address cap")]
    TooManyAddrs(usize),
    /// Too many models in an advert.
    #[error("{0} models is over the {MAX_MODELS_PER_ADVERT}-model cap")]
    TooManyModels(usize),
    /// A text field over its cap.
    #[error("{field} of {len} bytes is over its {max}-byte cap")]
    FieldTooLong {
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A replay request whose prompt, text or tokens are not the ones its
    /// receipt commits to.
    #[error("the replay request does not match its receipt")]
    ReplayMismatch,
    /// More free slots than slots.
    #[error("{free} free slots out of {total}")]
    Slots {
        /// Free slots claimed.
        free: u32,
        /// Total slots claimed.
        total: u32,
    },
}

pub(crate) fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), InvalidMessage> {
    if s.len() > max {
        return Err(InvalidMessage::FieldTooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
