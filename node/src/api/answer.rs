//! A request's choices run on the mesh, one task each, and their tokens
//! answered as they come: as Server-Sent Events in OpenAI's chunk format,
//! or gathered into one JSON body.
//!
//! Each choice's tokens reach the HTTP response through bounded channels
//! from the router's token stream: a client that reads slowly slows its own
//! tasks, and one that goes away closes them (the router then stops the
//! orchestrator's generation and refunds the attempt).

use super::Api;
use super::error::ApiError;
use super::openai::{self, Prepared};
use crate::roles::TOKEN_SINK_CHUNKS;
use crate::roles::router::{Delivery, Payer};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cactus_protocol::stream::TokenLogprob;
use cactus_protocol::{TaskError, TaskErrorKind, TaskResponse, TaskResult, TokenChunk};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`.
    Text,
    /// `/v1/chat/completions`.
    Chat,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Text => "cmpl",
            Self::Chat => "chatcmpl",
        }
    }
}

/// Something one choice did.
#[derive(Debug)]
enum What {
    Tokens(TokenChunk),
    End(Box<TaskResponse>),
}

#[derive(Debug)]
struct ChoiceEvent {
    index: usize,
    what: What,
}

/// Starts one task per choice; every choice's tokens and end come on the
/// returned channel. A task stops when the channel's reader goes away.
fn run_choices(
    api: &Api,
    payer: Payer,
    prepared: &Prepared,
    permit: &Arc<OwnedSemaphorePermit>,
) -> mpsc::Receiver<ChoiceEvent> {
    let n = prepared.n as usize;
    let (tx, rx) = mpsc::channel(TOKEN_SINK_CHUNKS * n);
    let live = prepared.stream;
    for index in 0..n {
        let mut spec = prepared.spec.clone();
        // Choices differ by seed.
        spec.sampling.seed = spec.sampling.seed.wrapping_add(index as u64);
        spec.request_id = spec
            .request_id
            .map(|first| super::choice_request_id(first, index as u32));
        let router = Arc::clone(&api.router);
        let tx = tx.clone();
        let permit = Arc::clone(permit);
        tokio::spawn(async move {
            let _permit = permit;
            let (sink, mut tokens) = mpsc::channel(TOKEN_SINK_CHUNKS);
            let delivery = if live {
                Delivery::Live(sink)
            } else {
                Delivery::Checked(sink)
            };
            let serve = router.serve_streaming(payer, spec, Some(delivery));
            tokio::pin!(serve);
            let mut open = true;
            let response = loop {
                tokio::select! {
                    r = &mut serve => break r,
                    chunk = tokens.recv(), if open => match chunk {
                        Some(c) => {
                            let event = ChoiceEvent { index, what: What::Tokens(c) };
                            if tx.send(event).await.is_err() {
                                // The HTTP client left: the router sees the
                                // sink close and stops the task.
                                tokens.close();
                                open = false;
                            }
                        }
                        None => open = false,
                    },
                }
            };
            while let Some(c) = tokens.recv().await {
                let _ = tx
                    .send(ChoiceEvent {
                        index,
                        what: What::Tokens(c),
                    })
                    .await;
            }
            let _ = tx
                .send(ChoiceEvent {
                    index,
                    what: What::End(Box::new(response)),
                })
                .await;
        });
    }
    rx
}

/// The API error a failed task answers with.
fn task_error(response: TaskResponse) -> ApiError {
    match response {
        TaskResponse::Failed(e) => ApiError::from(e),
        _ => ApiError::from(TaskError::new(
            TaskErrorKind::BadResult,
            "unexpected answer",
        )),
    }
}

/// Runs the request and answers it.
pub(super) async fn answer(
    api: Api,
    prepared: Result<(Payer, Prepared), ApiError>,
    kind: Kind,
) -> Response {
    let (payer, prepared) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = Arc::clone(&api.permits).try_acquire_owned() else {
        return ApiError::overloaded().into_response();
    };
    // The request's place lasts as long as any of its tasks.
    let permit = Arc::new(permit);
    let mut events = run_choices(&api, payer, &prepared, &permit);
    // Nothing is sent before the first event, so that a task that fails at
    // once (no such model, no capacity) gets its HTTP status.
    let Some(first) = events.recv().await else {
        return task_error(TaskResponse::Failed(TaskError::new(
            TaskErrorKind::Unavailable,
            "the router stopped",
        )))
        .into_response();
    };
    let first = match first.what {
        What::End(r) if matches!(*r, TaskResponse::Failed(_)) => {
            return task_error(*r).into_response();
        }
        what => ChoiceEvent {
            index: first.index,
            what,
        },
    };
    let answer = Answer::new(&api, &prepared, kind);
    if prepared.stream {
        let stream = Streaming {
            answer,
            events,
            pending: VecDeque::new(),
            done: false,
            _permit: permit,
        };
        let stream = stream.start(first);
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        answer.gather(first, events).await
    }
}

/// The log-probabilities one chunk adds to a choice.
#[derive(Debug, Default)]
struct Taken {
    logprobs: Vec<TokenLogprob>,
    /// Bytes of the choice's text before each token.
    offsets: Vec<usize>,
    /// Each token as text.
    texts: Vec<String>,
}

/// Each token's share of the text. A character whose bytes are split over
/// several tokens (byte-fallback tokens) goes to the token that completes
/// it, and the tokens before get "", so that the tokens join to the text as
/// OpenAI's clients and llama.cpp's tests expect; each token's own bytes are
/// still in its `bytes`. `carry` holds an unfinished character between
/// chunks: at most 3 bytes, as a longer run is never a valid prefix.
fn token_texts(carry: &mut Vec<u8>, entries: &[TokenLogprob]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            carry.extend_from_slice(&e.sampled.bytes);
            match std::str::from_utf8(carry) {
                Ok(s) => {
                    let s = s.to_owned();
                    carry.clear();
                    s
                }
                // An unfinished character at the end: keep it for the next
                // token.
                Err(err) if err.error_len().is_none() => {
                    let done = err.valid_up_to();
                    let s = String::from_utf8_lossy(&carry[..done]).into_owned();
                    carry.drain(..done);
                    s
                }
                // Bytes that never make a character: shown as U+FFFD.
                Err(_) => {
                    let s = String::from_utf8_lossy(carry).into_owned();
                    carry.clear();
                    s
                }
            }
        })
        .collect()
}

/// What every chunk or body of one answer shares, and each choice's state.
#[derive(Debug)]
struct Answer {
    kind: Kind,
    model: String,
    created: u64,
    id: String,
    /// Top log-probabilities asked for per token (`None`: none).
    logprobs: Option<usize>,
    include_usage: bool,
    choices: Vec<Choice>,
}

#[derive(Debug, Default)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    /// Bytes of text before each logprob's token, for `text_offset`.
    offsets: Vec<usize>,
    /// Each logprob's token as text (see [`token_texts`]).
    token_texts: Vec<String>,
    /// The start of a character whose last bytes have not come yet.
    utf8_carry: Vec<u8>,
    /// Whether the stream sent this choice's role chunk.
    started: bool,
    result: Option<TaskResult>,
}

impl Answer {
    fn new(api: &Api, prepared: &Prepared, kind: Kind) -> Self {
        let requested = prepared.spec.model.as_deref();
        let model = api
            .router
            .table
            .lock()
            .ok()
            .and_then(|t| t.resolve_model(requested))
            .map(|m| m.name)
            .or_else(|| requested.map(str::to_owned))
            .unwrap_or_default();
        Self {
            kind,
            model,
            created: crate::time::now_ms() / 1000,
            id: format!(
                "{}-{}",
                kind.id_prefix(),
                hex::encode(rand::random::<[u8; 12]>())
            ),
            logprobs: prepared.logprobs.map(usize::from),
            include_usage: prepared.include_usage,
            choices: (0..prepared.n).map(|_| Choice::default()).collect(),
        }
    }

    /// OpenAI's log-probability object for one choice's `taken` tokens.
    fn logprobs_json(&self, taken: &Taken) -> Value {
        let Some(k) = self.logprobs else {
            return Value::Null;
        };
        let (entries, offsets, texts) = (&taken.logprobs, &taken.offsets, &taken.texts);
        let token = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.kind {
            Kind::Chat => json!({
                "content": entries.iter().zip(texts).map(|(e, text)| json!({
                    "token": text,
                    "logprob": e.sampled.logprob,
                    "bytes": e.sampled.bytes,
                    "top_logprobs": e.top.iter().take(k).map(|t| json!({
                        "token": token(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
            Kind::Text => json!({
                "tokens": texts,
                "token_logprobs": entries.iter().map(|e| e.sampled.logprob).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| {
                    e.top.iter().take(k).map(|t| (token(&t.bytes), json!(t.logprob)))
                        .collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            }),
        }
    }

    /// Takes a chunk into its choice; returns the log-probabilities it adds.
    fn take(&mut self, index: usize, chunk: &TokenChunk) -> Taken {
        let Some(c) = self.choices.get_mut(index) else {
            return Taken::default();
        };
        let mut offsets = Vec::with_capacity(chunk.logprobs.len());
        let mut at = c.text.len();
        for lp in &chunk.logprobs {
            offsets.push(at);
            at += lp.sampled.bytes.len();
        }
        c.text.push_str(&chunk.text);
        if self.logprobs.is_some() {
            let texts = token_texts(&mut c.utf8_carry, &chunk.logprobs);
            c.logprobs.extend_from_slice(&chunk.logprobs);
            c.offsets.extend_from_slice(&offsets);
            c.token_texts.extend_from_slice(&texts);
            Taken {
                logprobs: chunk.logprobs.clone(),
                offsets,
                texts,
            }
        } else {
            Taken::default()
        }
    }

    fn results(&self) -> Vec<TaskResult> {
        self.choices
            .iter()
            .filter_map(|c| c.result.clone())
            .collect()
    }

    /// Gathers every choice into one JSON body.
    async fn gather(
        mut self,
        first: ChoiceEvent,
        mut events: mpsc::Receiver<ChoiceEvent>,
    ) -> Response {
        let mut next = Some(first);
        let mut ended = 0;
        while let Some(event) = next {
            match event.what {
                What::Tokens(chunk) => {
                    self.take(event.index, &chunk);
                }
                What::End(end) if matches!(*end, TaskResponse::Done(_)) => {
                    if let (Some(c), TaskResponse::Done(r)) =
                        (self.choices.get_mut(event.index), *end)
                    {
                        c.result = Some(r);
                    }
                    ended += 1;
                    if ended == self.choices.len() {
                        break;
                    }
                }
                What::End(other) => return task_error(*other).into_response(),
            }
            next = events.recv().await;
        }
        let results = self.results();
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let reason = c.result.as_ref().map(|r| openai::finish_reason(r.finish));
                let logprobs = self.logprobs_json(&Taken {
                    logprobs: c.logprobs.clone(),
                    offsets: c.offsets.clone(),
                    texts: c.token_texts.clone(),
                });
                match self.kind {
                    Kind::Text => {
                        json!({"index": i, "text": c.text, "finish_reason": reason, "logprobs": logprobs})
                    }
                    Kind::Chat => json!({
                        "index": i, "finish_reason": reason, "logprobs": logprobs,
                        "message": {"role": "assistant", "content": c.text},
                    }),
                }
            })
            .collect();
        let object = match self.kind {
            Kind::Text => "text_completion",
            Kind::Chat => "chat.completion",
        };
        axum::Json(json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": openai::usage(&results),
            "cactus": openai::cactus_fields(&results),
        }))
        .into_response()
    }

    /// One chunk of the event stream.
    fn chunk(&self, choices: Value, usage: Value) -> Value {
        let object = match self.kind {
            Kind::Text => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        json!({
            "id": self.id, "object": object, "created": self.created,
            "model": self.model, "choices": choices, "usage": usage,
        })
    }

    /// A chat choice's first chunk carries only its role, as OpenAI's and
    /// llama-server's streams do (clients such as llama.cpp's test suite
    /// expect `{"role": "assistant", "content": null}` first and no role
    /// after): pushed once per choice, before its first content or its end.
    fn role_chunk(&mut self, i: usize, out: &mut VecDeque<Value>) {
        let first = self.choices.get_mut(i).is_some_and(|c| {
            let first = !c.started;
            c.started = true;
            first
        });
        if first && self.kind == Kind::Chat {
            let delta = json!({"role": "assistant", "content": null});
            let choice =
                json!({"index": i, "delta": delta, "finish_reason": null, "logprobs": null});
            out.push_back(self.chunk(json!([choice]), Value::Null));
        }
    }

    /// The events one choice event becomes; `true` once the answer is over.
    fn events(&mut self, event: ChoiceEvent, out: &mut VecDeque<Value>) -> bool {
        let i = event.index;
        match event.what {
            What::Tokens(chunk) => {
                let taken = self.take(i, &chunk);
                if chunk.text.is_empty() && taken.logprobs.is_empty() {
                    return false;
                }
                let logprobs = if taken.logprobs.is_empty() {
                    Value::Null
                } else {
                    self.logprobs_json(&taken)
                };
                self.role_chunk(i, out);
                let choice = match self.kind {
                    Kind::Text => {
                        json!({"index": i, "text": chunk.text, "finish_reason": null, "logprobs": logprobs})
                    }
                    Kind::Chat => json!({
                        "index": i, "delta": {"content": chunk.text},
                        "finish_reason": null, "logprobs": logprobs,
                    }),
                };
                out.push_back(self.chunk(json!([choice]), Value::Null));
                false
            }
            What::End(end) if matches!(*end, TaskResponse::Done(_)) => {
                let TaskResponse::Done(r) = *end else {
                    return false;
                };
                let reason = openai::finish_reason(r.finish);
                self.role_chunk(i, out);
                let choice = match self.kind {
                    Kind::Text => {
                        json!({"index": i, "text": "", "finish_reason": reason, "logprobs": null})
                    }
                    Kind::Chat => {
                        json!({"index": i, "delta": {}, "finish_reason": reason, "logprobs": null})
                    }
                };
                out.push_back(self.chunk(json!([choice]), Value::Null));
                if let Some(c) = self.choices.get_mut(i) {
                    c.result = Some(r);
                }
                if self.choices.iter().all(|c| c.result.is_some()) {
                    if self.include_usage {
                        let results = self.results();
                        let mut u = self.chunk(json!([]), openai::usage(&results));
                        u["cactus"] = openai::cactus_fields(&results);
                        out.push_back(u);
                    }
                    return true;
                }
                false
            }
            What::End(other) => {
                // Mid-stream, the status is sent: the error goes in the
                // stream, as OpenAI's API does.
                let e = task_error(*other);
                out.push_back(json!({"error": e.body()}));
                true
            }
        }
    }
}

/// The event stream's state.
struct Streaming {
    answer: Answer,
    events: mpsc::Receiver<ChoiceEvent>,
    pending: VecDeque<Value>,
    done: bool,
    _permit: Arc<OwnedSemaphorePermit>,
}

impl Streaming {
    fn start(
        mut self,
        first: ChoiceEvent,
    ) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        self.done = self.answer.events(first, &mut self.pending);
        futures::stream::unfold(Some(self), |state| async move {
            let mut s = state?;
            loop {
                if let Some(v) = s.pending.pop_front() {
                    return Some((Ok(SseEvent::default().data(v.to_string())), Some(s)));
                }
                if s.done {
                    return Some((Ok(SseEvent::default().data("[DONE]")), None));
                }
                match s.events.recv().await {
                    Some(e) => s.done = s.answer.events(e, &mut s.pending),
                    None => s.done = true,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::stream::TopLogprob;

    fn entry(bytes: &[u8]) -> TokenLogprob {
        TokenLogprob {
            sampled: TopLogprob {
                token: 0,
                logprob: -1.0,
                bytes: bytes.to_vec(),
            },
            top: Vec::new(),
        }
    }

    #[test]
    fn a_character_split_over_tokens_goes_to_the_token_that_completes_it() {
        let mut carry = Vec::new();
        // "\u{a0}there": U+00A0 is two bytes, split over two tokens, and the
        // second chunk starts in the middle of a three-byte character.
        let first = token_texts(
            &mut carry,
            &[entry(&[0xc2]), entry(&[0xa0]), entry(b"there ")],
        );
        assert_eq!(first, ["", "\u{a0}", "there "]);
        let euro = "€".as_bytes();
        let second = token_texts(&mut carry, &[entry(&euro[..1])]);
        assert_eq!(second, [""]);
        let third = token_texts(&mut carry, &[entry(&euro[1..]), entry(&[0xff])]);
        assert_eq!(third, ["€", "\u{fffd}"]);
        assert!(carry.is_empty());
        let joined: String = [first, second, third].concat().concat();
        assert_eq!(joined, "\u{a0}there €\u{fffd}");
    }
}
