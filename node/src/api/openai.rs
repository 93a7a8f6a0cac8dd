//! OpenAI's request and response bodies, and their mapping to Cactus tasks.

use super::error::ApiError;
use crate::inference::grammar;
use cactus_protocol::messages::MAX_N_PROBS;
use cactus_protocol::{FinishReason, PromptFormat, SamplingParams, TaskResult, TaskSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Most completions one request may ask for (`n`).
pub const MAX_CHOICES: u32 = 8;

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Sampling fields both endpoints take, read from the same body as the
/// request (not flattened into it, so that a bad field is named).
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    pub(super) seed: Option<u64>,
    stop: Option<OneOrMany>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    /// llama-server's GBNF grammar.
    grammar: Option<String>,
    /// llama-server's JSON schema field, the same as a `json_schema`
    /// `response_format`.
    json_schema: Option<Value>,
    response_format: Option<ResponseFormat>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Cactus's extension: the most the client pays per work unit; no
    /// orchestrator asking more is picked.
    max_price_per_unit: Option<u64>,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text.
    Text,
    /// Any JSON object, or (llama-server's extension) JSON following
    /// `schema`.
    JsonObject {
        /// The schema, if any.
        schema: Option<Value>,
    },
    /// JSON following a schema.
    JsonSchema {
        /// `{"name", "schema", "strict"}`.
        json_schema: JsonSchemaSpec,
    },
}

/// The schema of `response_format: json_schema`.
#[derive(Debug, Deserialize)]
pub struct JsonSchemaSpec {
    schema: Value,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: Option<String>,
    prompt: OneOrMany,
    max_tokens: Option<u32>,
    logprobs: Option<u8>,
}

/// One chat turn; `content` is text or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct Message {
    role: String,
    content: Content,
}

/// A turn's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// Parts: only `{"type": "text", "text": ...}` ones are taken.
    Parts(Vec<Part>),
}

/// A content part.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u8>,
}

/// A request turned into what the mesh runs, with what the answer needs.
#[derive(Debug)]
pub struct Prepared {
    /// The task (the first choice's; others differ by seed).
    pub spec: TaskSpec,
    /// How many choices.
    pub n: u32,
    /// Whether to answer with Server-Sent Events.
    pub stream: bool,
    /// Whether the stream ends with a usage chunk.
    pub include_usage: bool,
    /// Log-probabilities asked for: how many alternatives per token
    /// (`None`: no log-probabilities).
    pub logprobs: Option<u8>,
}

/// Parses a JSON body into `T`, naming the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(param, e.into_inner().to_string())
    })
}

impl Sampling {
    fn to_params(&self, max_tokens: Option<u32>) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let logit_bias = self
            .logit_bias
            .iter()
            .flatten()
            .map(|(k, &v)| {
                k.parse::<u32>().map(|t| (t, v)).map_err(|_| {
                    ApiError::invalid("logit_bias", format!("{k:?} is not a token id"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // At most one of grammar, json_schema and a JSON response_format.
        let schema = match (&self.json_schema, &self.response_format) {
            (
                Some(_),
                Some(ResponseFormat::JsonObject { .. } | ResponseFormat::JsonSchema { .. }),
            ) => {
                return Err(ApiError::invalid(
                    "json_schema",
                    "give either json_schema or a JSON response_format, not both",
                ));
            }
            (Some(s), _) => Some(("json_schema", s)),
            (None, Some(ResponseFormat::JsonObject { schema: Some(s) })) => {
                Some(("response_format", s))
            }
            (None, Some(ResponseFormat::JsonSchema { json_schema })) => {
                Some(("response_format", &json_schema.schema))
            }
            (None, _) => None,
        };
        let json_object = matches!(
            self.response_format,
            Some(ResponseFormat::JsonObject { schema: None })
        );
        let grammar = match (&self.grammar, schema) {
            (Some(_), Some((param, _))) => {
                return Err(ApiError::invalid(
                    "grammar",
                    format!("give either grammar or {param}, not both"),
                ));
            }
            (Some(_), None) if json_object => {
                return Err(ApiError::invalid(
                    "grammar",
                    "give either grammar or a JSON response_format, not both",
                ));
            }
            (Some(g), None) => Some(g.clone()),
            (None, Some((param, s))) => {
                Some(grammar::json_schema(s).map_err(|e| ApiError::invalid(param, e.to_string()))?)
            }
            (None, None) if json_object => Some(grammar::json_object()),
            (None, None) => None,
        };
        let p = SamplingParams {
            max_tokens: max_tokens.unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(d.top_p),
            seed: self.seed.unwrap_or_else(rand::random),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            stop: match &self.stop {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s.clone()],
                Some(OneOrMany::Many(v)) => v.clone(),
            },
            logit_bias,
            n_probs: 0,
            grammar,
        };
        p.validate()?;
        Ok(p)
    }

    fn finish(
        &self,
        model: Option<String>,
        prompt: String,
        format: PromptFormat,
        mut sampling: SamplingParams,
        logprobs: Option<(&str, u8)>,
    ) -> Result<Prepared, ApiError> {
        if let Some((param, k)) = logprobs {
            if k > MAX_N_PROBS {
                return Err(ApiError::invalid(
                    param,
                    format!("at most {MAX_N_PROBS} alternatives per token"),
                ));
            }
            // The engine always gives the sampled token's; `k` more.
            sampling.n_probs = k.max(1);
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::invalid(
                "n",
                format!("n must be in 1..={MAX_CHOICES}"),
            ));
        }
        let spec = TaskSpec {
            model,
            prompt,
            format,
            sampling,
            max_price_per_unit: self.max_price_per_unit,
            request_id: None,
        };
        spec.validate()?;
        Ok(Prepared {
            spec,
            n,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            logprobs: logprobs.map(|(_, k)| k),
        })
    }
}

impl CompletionRequest {
    /// The task this request asks for.
    pub fn prepare(self, sampling: &Sampling) -> Result<Prepared, ApiError> {
        let prompt = match self.prompt {
            OneOrMany::One(p) => p,
            OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
            OneOrMany::Many(_) => {
                return Err(ApiError::invalid("prompt", "give one prompt per request"));
            }
        };
        let params = sampling.to_params(self.max_tokens)?;
        let logprobs = self.logprobs.map(|k| ("logprobs", k));
        sampling.finish(self.model, prompt, PromptFormat::Raw, params, logprobs)
    }
}

impl ChatRequest {
    /// The task this request asks for: the turns, rendered by the
    /// orchestrator with the model's own chat template.
    pub fn prepare(self, sampling: &Sampling) -> Result<Prepared, ApiError> {
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), k) => Some(("top_logprobs", k.unwrap_or(0))),
            (_, Some(k)) if k > 0 => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                ));
            }
            _ => None,
        };
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "no messages"));
        }
        let mut turns = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("role {:?} is not supported", m.role),
                ));
            }
            let role = if m.role == "developer" {
                "system".to_owned()
            } else {
                m.role
            };
            let content = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join(""),
            };
            turns.push(json!({"role": role, "content": content}));
        }
        let prompt = Value::Array(turns).to_string();
        let max = self.max_completion_tokens.or(self.max_tokens);
        let params = sampling.to_params(max)?;
        sampling.finish(self.model, prompt, PromptFormat::Messages, params, logprobs)
    }
}

/// OpenAI's name for a stop reason.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::EndOfGeneration | FinishReason::Stop => "stop",
        FinishReason::MaxTokens => "length",
    }
}

/// Where a task's receipt is served.
pub fn receipt_link(r: &TaskResult) -> String {
    format!("/v1/receipts/{}", r.receipt.body.task_id)
}

/// Cactus's own fields on every answer: the task, its receipt and who ran it.
pub fn cactus_fields(results: &[TaskResult]) -> Value {
    Value::Array(
        results
            .iter()
            .map(|r| {
                json!({
                    "task_id": r.receipt.body.task_id.to_string(),
                    "receipt": receipt_link(r),
                    "orchestrator": r.receipt.body.orchestrator.to_string(),
                    "model_sha256": r.receipt.body.model.to_string(),
                })
            })
            .collect(),
    )
}

/// Token counts over every choice (the prompt counted once).
pub fn usage(results: &[TaskResult]) -> Value {
    let prompt = results.first().map_or(0, |r| r.receipt.body.prompt_tokens);
    // Tokens an earlier orchestrator produced before a resumed task count
    // too: the client got them.
    let completion: u64 = results
        .iter()
        .map(|r| u64::from(r.full_output_tokens()))
        .sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": u64::from(prompt) + completion,
    })
}
