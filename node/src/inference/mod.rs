//! Inference: the engines that turn a prompt into tokens, and the streams
//! they hand tokens out on.
//!
//! An [`Engine`] takes work without waiting: [`Engine::submit`] answers
//! [`Rejected::Busy`] at once when every sequence slot and queue place is
//! taken, so an overloaded orchestrator says so instead of piling up work.
//! Each accepted generation yields its tokens on a bounded [`Stream`] as they
//! are sampled and ends with the whole [`Generation`]. Dropping the stream
//! cancels the generation at the engine's next step, as does its deadline.
//!
//! The real engine ([`llama`]) runs one decode loop per model over a shared
//! llama.cpp batch (continuous batching); [`pool::ThreadPool`] runs blocking
//! generators one per thread, for test engines.

pub mod grammar;
#[cfg(feature = "inference")]
pub mod llama;
pub mod model_file;
pub mod pool;
#[cfg(any(test, feature = "test-utils"))]
pub mod stub;
pub mod text;

use cactus_protocol::fraud::{ReplayFindings, ReplayRequest};
use cactus_protocol::{
    CachedPrefix, FinishReason, ModelHash, ModelId, PromptFormat, SamplingParams,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One generation to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model, by hash.
    pub model: ModelHash,
    /// The prompt text.
    pub prompt: String,
    /// How the prompt is tokenized.
    pub format: PromptFormat,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// When the generation is cancelled if it has not finished.
    pub deadline: Option<Instant>,
    /// Tokens an earlier orchestrator generated for this task before it
    /// failed: prefilled after the prompt, and continued from. The
    /// generation's tokens and text are only the new ones.
    pub resume: Option<Box<cactus_protocol::Resume>>,
}

/// The log-probabilities of one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The token.
    pub token: u32,
    /// Its log-probability under the model.
    pub logprob: f32,
    /// The most likely tokens at its position and their log-probabilities,
    /// most likely first (`n_probs` of them).
    pub top: Vec<(u32, f32)>,
    /// The token's bytes, then each of `top`'s, in order (filled by the
    /// engine, which has the vocabulary).
    pub pieces: Vec<Vec<u8>>,
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text.
    pub text: String,
    /// The generated token ids (end-of-generation excluded).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt, after templating.
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV cache was reused rather than computed.
    pub cached_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Time from admission to the last token.
    pub compute: Duration,
    /// Per-token log-probabilities, when the sampling asked for them.
    pub logprobs: Vec<TokenLogprobs>,
}

/// What a [`Stream`] yields.
#[derive(Debug, Clone)]
pub enum Event {
    /// One sampled token and the text it adds: possibly empty, when the
    /// token ends inside a character or could begin a stop string. The texts
    /// of all tokens form a prefix of the final text.
    Token {
        /// The token id.
        id: u32,
        /// Text safe to show now.
        text: String,
        /// Its log-probabilities, when asked for.
        logprobs: Option<TokenLogprobs>,
    },
    /// The end: the whole generation, or why it failed.
    Done(Result<Generation, InferenceError>),
}

/// Tokens of one generation as they are sampled. Bounded: an engine pauses
/// a sequence whose reader falls behind. Dropping it cancels the generation.
#[derive(Debug)]
pub struct Stream {
    rx: mpsc::Receiver<Event>,
}

/// Events a stream buffers before its sequence pauses; one more place is
/// kept for the final event.
pub const STREAM_BUFFER: usize = 64;

impl Stream {
    /// A stream and the sender an engine feeds it through.
    pub fn channel() -> (StreamSender, Self) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER + 1);
        (StreamSender { tx }, Self { rx })
    }

    /// The next event; `None` once the engine is gone without a final one.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// [`Self::next`] for threads outside the async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// An event already waiting, if any.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits for the end, skipping tokens.
    pub async fn finish(mut self) -> Result<Generation, InferenceError> {
        while let Some(e) = self.rx.recv().await {
            if let Event::Done(r) = e {
                return r;
            }
        }
        Err(InferenceError::engine("the engine stopped"))
    }

    /// [`Self::finish`] for threads outside the async runtime.
    pub fn blocking_finish(mut self) -> Result<Generation, InferenceError> {
        while let Some(e) = self.rx.blocking_recv() {
            if let Event::Done(r) = e {
                return r;
            }
        }
        Err(InferenceError::engine("the engine stopped"))
    }
}

/// The engine's end of a [`Stream`]. Never blocks.
#[derive(Debug)]
pub struct StreamSender {
    tx: mpsc::Sender<Event>,
}

impl StreamSender {
    /// Whether the reader is gone (the generation is cancelled).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether a token fits now, leaving the final event its place.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 1
    }

    /// Sends a token when [`Self::has_room`]; gives it back otherwise.
    pub fn try_token(&self, event: Event) -> Result<(), Event> {
        if !self.has_room() {
            return Err(event);
        }
        self.tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
        })
    }

    /// Sends the final event (its place is always kept free).
    pub fn done(self, result: Result<Generation, InferenceError>) {
        let _ = self.tx.try_send(Event::Done(result));
    }
}

/// Why a generation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InferenceError {
    /// The engine does not serve the model.
    #[error("model {0} is not loaded on this node")]
    UnknownModel(ModelHash),
    /// The prompt and the requested output do not fit in the context.
    #[error(
        "prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of {n_ctx} tokens (raise --ctx-size)"
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Requested output tokens.
        max_tokens: u32,
        /// Context size.
        n_ctx: u32,
    },
    /// The caller went away.
    #[error("cancelled")]
    Cancelled,
    /// The deadline passed first.
    #[error("the task's deadline passed")]
    DeadlineExceeded,
    /// The prompt is not what its format says (a chat-turn list that does
    /// not parse).
    #[error("bad prompt: {0}")]
    BadPrompt(String),
    /// The task's grammar does not parse.
    #[error("the grammar does not parse")]
    Grammar,
    /// The engine failed; llama.cpp's own error is the source.
    #[error("inference failed: {0}")]
    Engine(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl InferenceError {
    /// An engine failure caused by `e` (an error value, or a message where
    /// there is none).
    pub fn engine(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Engine(Arc::from(e.into()))
    }
}

/// A replay's findings, when they come.
pub type ReplayReceiver = oneshot::Receiver<Result<ReplayFindings, InferenceError>>;

/// What an engine is doing, for logs, adverts and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences generating or prefilling now.
    pub active: usize,
    /// Work waiting for a slot.
    pub queued: usize,
    /// Decode steps run.
    pub steps: u64,
    /// Decode steps that carried more than one sequence.
    pub shared_steps: u64,
    /// Most sequences one decode step has carried.
    pub max_batch_sequences: usize,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Prompt tokens reused from the cache instead of computed.
    pub cached_prompt_tokens: u64,
}

/// A token generator with a fixed number of sequence slots and a bounded
/// queue.
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// The models this engine serves.
    fn models(&self) -> Vec<ModelId>;
    /// Sequences it runs at once.
    fn slots(&self) -> usize;
    /// Slots not running or about to run work.
    fn free_slots(&self) -> usize;
    /// Whether one more piece of work would be taken now.
    fn has_room(&self) -> bool;
    /// Queues a generation without waiting.
    fn submit(&self, job: Job) -> Result<Stream, Rejected>;
    /// Queues a replay (a spot check of another node's result) like a job.
    fn replay(&self, request: Box<ReplayRequest>) -> Result<ReplayReceiver, Rejected>;
    /// What the prompt cache holds (see [`CachedPrefix`]).
    fn cache(&self) -> Vec<CachedPrefix> {
        Vec::new()
    }
    /// Counters.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
    /// Stops taking work and lets running work end.
    fn shutdown(&self) {}
}

/// Waiting on an engine from a plain thread (tests, benches, tools): never
/// from inside the async runtime.
pub trait Blocking {
    /// Runs one generation to its end.
    fn generate(&self, job: &Job) -> Result<Generation, InferenceError>;
    /// Runs one replay to its end.
    fn replay_blocking(&self, request: &ReplayRequest) -> Result<ReplayFindings, InferenceError>;
}

impl<E: Engine + ?Sized> Blocking for E {
    fn generate(&self, job: &Job) -> Result<Generation, InferenceError> {
        self.submit(job.clone())
            .map_err(InferenceError::engine)?
            .blocking_finish()
    }

    fn replay_blocking(&self, request: &ReplayRequest) -> Result<ReplayFindings, InferenceError> {
        self.replay(Box::new(request.clone()))
            .map_err(InferenceError::engine)?
            .blocking_recv()
            .map_err(|_| InferenceError::engine("the engine stopped"))?
    }
}

/// Counts work taken against a capacity, without locks.
#[derive(Debug)]
pub struct Admission {
    slots: usize,
    capacity: usize,
    in_flight: AtomicUsize,
}

impl Admission {
    /// `slots` running at once, `queue` more waiting.
    pub fn new(slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slots,
            capacity: slots + queue,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether one more would be taken.
    pub fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.capacity
    }

    /// Slots not taken.
    pub fn free_slots(&self) -> usize {
        self.slots
            .saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    /// Work queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a place, or says why not.
    pub fn take(&self) -> Result<(), Rejected> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| Rejected::Busy)
    }

    /// Gives a place back.
    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Why the pool did not take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Every slot and queue place is taken.
    #[error("all worker slots and queue places are busy")]
    Busy,
    /// The pool has shut down.
    #[error("the worker pool has stopped")]
    Stopped,
}
