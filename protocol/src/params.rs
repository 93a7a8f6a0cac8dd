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
    /// The prompt is a JSON array of chat turns, `[{"role": "system" |
    /// "user" | "assistant", "content": "..."}]`, rendered with the model's
    /// own chat template.
    Messages,
}

/// Most stop strings a task may give.
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;
/// Most logit-bias entries a task may give.
pub const MAX_LOGIT_BIAS: usize = 128;
/// Largest logit bias, in either direction (OpenAI's range).
pub const MAX_LOGIT_BIAS_VALUE: f32 = 100.0;
/// Most top log-probabilities returned per token.
pub const MAX_N_PROBS: u8 = 20;
/// Longest grammar (llama.cpp GBNF), in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 16 * 1024;
/// How many recent tokens the repeat, presence and frequency penalties look
/// at (llama.cpp's default).
pub const PENALTY_LAST_N: u32 = 64;
/// Most bytes the variable-size sampling fields (stop strings, logit bias,
/// grammar) take in CBOR, with room for their framing.
pub const MAX_SAMPLING_EXTRA_BYTES: usize =
    MAX_STOP_STRINGS * (MAX_STOP_BYTES + 4) + MAX_LOGIT_BIAS * 16 + MAX_GRAMMAR_BYTES + 256;

/// How tokens are sampled: every field is in the task message, in the
/// receipt's commitment and in what a verifier replays.
///
/// A temperature of zero means greedy decoding, which is deterministic for a
/// given model and backend; otherwise a seeded draw at that temperature from
/// the tokens that survive top-k, top-p and min-p. Logit biases, the
/// penalties and the grammar shape the logits first, in both cases. Fields
/// after `seed` were added later: a message without them decodes to their
/// neutral values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Most tokens to generate; generation also stops at end-of-generation
    /// or a stop string.
    pub max_tokens: u32,
    /// Softmax temperature in `[0, 2]`; `0` is greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`; `1` keeps every token.
    pub top_p: f32,
    /// Seed of the sampler's random draws.
    pub seed: u64,
    /// Keep only the `top_k` most likely tokens; `0` keeps all.
    #[serde(default)]
    pub top_k: u32,
    /// Drop tokens less likely than `min_p` times the most likely one, in
    /// `[0, 1)`; `0` keeps all.
    #[serde(default)]
    pub min_p: f32,
    /// Repeat penalty over the last [`PENALTY_LAST_N`] tokens, in `(0, 2]`;
    /// `1` is none.
    #[serde(default = "one")]
    pub repeat_penalty: f32,
    /// OpenAI's presence penalty, in `[-2, 2]`.
    #[serde(default)]
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in `[-2, 2]`.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Generation stops before the first of these strings; the text returned
    /// does not contain it.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Added to a token's logit before sampling (token id, bias in
    /// `[-100, 100]`; `-100` bans it).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Top log-probabilities to return per generated token, up to
    /// [`MAX_N_PROBS`]; `0` returns none.
    #[serde(default)]
    pub n_probs: u8,
    /// A llama.cpp GBNF grammar (root rule `root`) the output must follow.
    #[serde(default)]
    pub grammar: Option<String>,
}

fn one() -> f32 {
    1.0
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            logit_bias: Vec::new(),
            n_probs: 0,
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Whether decoding is greedy (deterministic).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether any penalty is on.
    pub fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Checks the parameters' ranges and sizes.
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
        let bad = |field: &'static str, value: f32| InvalidMessage::Sampling { field, value };
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 2.0) {
            return Err(bad("repeat_penalty", self.repeat_penalty));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(bad("presence_penalty", self.presence_penalty));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(bad("frequency_penalty", self.frequency_penalty));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(InvalidMessage::TooMany {
                field: "stop",
                len: self.stop.len(),
                max: MAX_STOP_STRINGS,
            });
        }
        for s in &self.stop {
            if s.is_empty() {
                return Err(InvalidMessage::EmptyStop);
            }
            check_len("stop", s, MAX_STOP_BYTES)?;
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(InvalidMessage::TooMany {
                field: "logit_bias",
                len: self.logit_bias.len(),
                max: MAX_LOGIT_BIAS,
            });
        }
        for &(_, b) in &self.logit_bias {
            if !(-MAX_LOGIT_BIAS_VALUE..=MAX_LOGIT_BIAS_VALUE).contains(&b) {
                return Err(bad("logit_bias", b));
            }
        }
        if self.n_probs > MAX_N_PROBS {
            return Err(InvalidMessage::TooMany {
                field: "n_probs",
                len: usize::from(self.n_probs),
                max: usize::from(MAX_N_PROBS),
            });
        }
        if let Some(g) = &self.grammar {
            check_len("grammar", g, MAX_GRAMMAR_BYTES)?;
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
    /// The text reached one of the task's stop strings (cut from the text;
    /// the tokens include the one that completed it).
    Stop,
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
    /// A sampling parameter out of its range (NaN included).
    #[error("{field} {value} is out of range")]
    Sampling {
        /// The parameter.
        field: &'static str,
        /// Its value.
        value: f32,
    },
    /// A list longer than its cap.
    #[error("{len} {field} entries is over the cap of {max}")]
    TooMany {
        /// The list.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// An empty stop string (it would stop every generation at once).
    #[error("a stop string is empty")]
    EmptyStop,
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

#[cfg(test)]
mod tests;
