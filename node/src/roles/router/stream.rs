//! One attempt over a token stream: the orchestrator's tokens are checked
//! and passed on to the client as they come, and what the client was sent
//! is kept so that a failure mid-stream can resume elsewhere.

use super::RouterCtx;
use crate::network::{NetworkError, OpenedStream};
use crate::roles::TokenSink;
use cactus_protocol::attempt::AttemptFailure;
use cactus_protocol::messages::MAX_OUTPUT_BYTES;
use cactus_protocol::stream::{MAX_CHUNK_TEXT_BYTES, MAX_CHUNK_TOKENS};
use cactus_protocol::{
    Assignment, Resume, StreamFrame, TaskError, TaskErrorKind, TaskRequest, TaskResponse,
    TaskResult, TokenChunk,
};
use libp2p::PeerId;
use std::time::Duration;

/// Default longest silence between two frames, once tokens flow, before the
/// orchestrator counts as stalled and the task resumes elsewhere
/// ([`RouterCtx::stall_timeout`]). Before
/// the first token (a long prompt's prefill) only the attempt's timeout
/// applies.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a client's tokens go.
#[derive(Debug)]
pub enum Delivery {
    /// As they come. When an orchestrator fails mid-stream, the task
    /// resumes on another from what was sent: the client sees one stream.
    Live(TokenSink),
    /// Once the attempt that made them is accepted (checked, spot-checked,
    /// paid); a failed attempt's tokens are dropped and the task starts
    /// over elsewhere. For clients that want the whole answer, with its
    /// tokens' details (log-probabilities).
    Checked(TokenSink),
}

/// What the client has been sent, over every attempt of its task.
#[derive(Debug)]
pub(super) struct Sent {
    sink: Option<TokenSink>,
    live: bool,
    /// Chunks of the current attempt, held until it is accepted (checked
    /// delivery only).
    held: Vec<TokenChunk>,
    tokens: Vec<u32>,
    shown: String,
    /// When the client's task began, until its first token (then `None`).
    waiting_since: Option<std::time::Instant>,
}

/// What one attempt streamed.
#[derive(Debug, Default)]
pub(super) struct This {
    tokens: Vec<u32>,
    text: String,
}

/// How a streamed attempt ended.
#[derive(Debug)]
pub(super) enum Streamed {
    /// A result whose tokens and text begin with what was streamed.
    Done(Box<TaskResult>, This),
    /// The orchestrator's own failure report.
    Failed(TaskError),
    /// The client stopped reading.
    ClientLeft,
}

impl Sent {
    pub(super) fn new(delivery: Option<Delivery>) -> Self {
        let (sink, live) = match delivery {
            None => (None, false),
            Some(Delivery::Live(s)) => (Some(s), true),
            Some(Delivery::Checked(s)) => (Some(s), false),
        };
        Self {
            sink,
            live,
            held: Vec::new(),
            tokens: Vec::new(),
            shown: String::new(),
            waiting_since: Some(std::time::Instant::now()),
        }
    }

    /// How long the client waited for its first token, the first time a
    /// token comes.
    fn first_token(&mut self) -> Option<Duration> {
        self.waiting_since.take().map(|t| t.elapsed())
    }

    /// Forgets a failed attempt's held chunks.
    pub(super) fn attempt_failed(&mut self) {
        self.held.clear();
    }

    /// Tokens sent so far.
    pub(super) fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Where the next attempt resumes, once something was sent.
    pub(super) fn resume(&self) -> Option<Resume> {
        (!self.tokens.is_empty()).then(|| Resume {
            tokens: self.tokens.clone(),
            shown: self.shown.clone(),
        })
    }

    /// Passes a chunk on, or holds it until its attempt is accepted;
    /// `false` when the client is gone.
    async fn push(&mut self, chunk: TokenChunk) -> bool {
        if !self.live {
            if self.sink.is_some() {
                self.held.push(chunk);
            }
            return true;
        }
        self.send(chunk).await
    }

    async fn send(&mut self, chunk: TokenChunk) -> bool {
        self.tokens.extend_from_slice(&chunk.tokens);
        self.shown.push_str(&chunk.text);
        match &self.sink {
            Some(sink) => sink.send(chunk).await.is_ok(),
            None => true,
        }
    }

    /// Sends what the accepted `result` holds beyond what its attempt
    /// streamed: the text it held back to the end, or everything when a
    /// delegate ran it (delegation does not stream).
    pub(super) async fn finish(&mut self, result: &TaskResult, this: &This) {
        for chunk in std::mem::take(&mut self.held) {
            if !self.send(chunk).await {
                return;
            }
        }
        let tokens = result.tokens.get(this.tokens.len()..).unwrap_or_default();
        let text = result.text.get(this.text.len()..).unwrap_or_default();
        self.send_all(tokens, text).await;
    }

    /// Sends a whole answer given before (a request asked again): what it
    /// resumed from, then its own tokens and text.
    pub(super) async fn replay(&mut self, result: &TaskResult) {
        if let Some(r) = &result.resumed
            && !self.send_all(&r.tokens, &r.shown).await
        {
            return;
        }
        self.finish(result, &This::default()).await;
    }

    /// Sends `tokens`, then `text`, in chunks within the stream's caps;
    /// `false` when the client is gone.
    async fn send_all(&mut self, tokens: &[u32], text: &str) -> bool {
        for group in tokens.chunks(MAX_CHUNK_TOKENS) {
            let chunk = TokenChunk {
                tokens: group.to_vec(),
                ..TokenChunk::default()
            };
            if !self.send(chunk).await {
                return false;
            }
        }
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = rest.len().min(MAX_CHUNK_TEXT_BYTES);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let chunk = TokenChunk {
                text: rest[..end].to_owned(),
                ..TokenChunk::default()
            };
            if !self.send(chunk).await {
                return false;
            }
            rest = &rest[end..];
        }
        true
    }
}

type Failure = (TaskError, AttemptFailure);

fn bad(peer: &PeerId, what: impl std::fmt::Display) -> Failure {
    (
        TaskError::new(
            TaskErrorKind::BadResult,
            format!("orchestrator {peer}: {what}"),
        ),
        AttemptFailure::BadResult,
    )
}

impl RouterCtx {
    /// Hands `assignment` to `peer` on a token stream and passes its tokens
    /// on as they come. Each chunk is checked (size, token count within
    /// `max_tokens`); the end frame's result must begin with exactly what
    /// was streamed.
    pub(super) async fn stream_attempt(
        &self,
        peer: PeerId,
        opened: Result<OpenedStream, NetworkError>,
        assignment: &Assignment,
        sent: &mut Sent,
    ) -> Result<Streamed, Failure> {
        let broke = |m: String| {
            (
                TaskError::new(TaskErrorKind::Unavailable, m),
                AttemptFailure::Unreachable,
            )
        };
        let mut stream = opened
            .map_err(|e| broke(e.to_string()))?
            .send(&TaskRequest::Execute(assignment.clone()))
            .await
            .map_err(|e| broke(e.to_string()))?;
        let max = assignment.sampling.max_tokens as usize;
        let mut this = This::default();
        let mut first_at = None;
        loop {
            let next = if this.tokens.is_empty() {
                stream.next().await
            } else {
                match tokio::time::timeout(self.stall_timeout, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Err((
                            TaskError::new(
                                TaskErrorKind::Unavailable,
                                format!("orchestrator {peer} stalled for {:?}", self.stall_timeout),
                            ),
                            AttemptFailure::Timeout,
                        ));
                    }
                }
            };
            let frame = next.map_err(|e| broke(format!("orchestrator {peer}: {e}")))?;
            match frame {
                None => {
                    return Err(broke(format!(
                        "orchestrator {peer} closed its stream after {} tokens",
                        this.tokens.len()
                    )));
                }
                Some(StreamFrame::Tokens(chunk)) => {
                    chunk.validate().map_err(|e| bad(&peer, e))?;
                    if this.tokens.len() + chunk.tokens.len() > max {
                        return Err(bad(&peer, "streamed more tokens than max_tokens"));
                    }
                    if this.text.len() + chunk.text.len() > MAX_OUTPUT_BYTES {
                        return Err(bad(&peer, "streamed more text than the output cap"));
                    }
                    if !chunk.tokens.is_empty() && first_at.is_none() {
                        tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, "first tokens streamed");
                        first_at = Some(std::time::Instant::now());
                        if let Some(ttft) = sent.first_token() {
                            self.metrics.observe_ttft(ttft);
                        }
                    }
                    this.tokens.extend_from_slice(&chunk.tokens);
                    this.text.push_str(&chunk.text);
                    if !sent.push(chunk).await {
                        return Ok(Streamed::ClientLeft);
                    }
                }
                Some(StreamFrame::End(TaskResponse::Done(result))) => {
                    if !result.tokens.starts_with(&this.tokens)
                        || !result.text.starts_with(&this.text)
                    {
                        return Err(bad(&peer, "the result is not what it streamed"));
                    }
                    // Decode speed as the client saw it: tokens after the
                    // first, over the time since the first.
                    if let Some(t) = first_at
                        && this.tokens.len() > 1
                    {
                        let secs = t.elapsed().as_secs_f64();
                        if secs > 0.0 {
                            self.metrics
                                .observe_tokens_per_second((this.tokens.len() - 1) as f64 / secs);
                        }
                    }
                    return Ok(Streamed::Done(Box::new(result), this));
                }
                Some(StreamFrame::End(TaskResponse::Failed(e))) => return Ok(Streamed::Failed(e)),
                Some(StreamFrame::End(_)) => {
                    return Err(bad(&peer, "answered a task with a query answer"));
                }
            }
        }
    }
}
