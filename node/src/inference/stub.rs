//! A stub engine for network tests: answers with the prompt reversed, one
//! "token" per character. Never the proof of a feature; real inference is
//! tested with llama.cpp on a real model.

use super::pool::Generator;
use super::{Engine, Event, Generation, InferenceError, Job, Rejected, ReplayReceiver, Stream};
use cactus_protocol::fraud::{PositionGap, ReplayFindings, ReplayRequest};
use cactus_protocol::{Digest, FinishReason, ModelId};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where generations wait in a gated stub.
#[derive(Debug, Default)]
struct Gate {
    open: bool,
    /// Generations that reached it.
    reached: usize,
    /// Generations cancelled while waiting at it.
    cancelled: usize,
}

/// Reverses the prompt. Optionally holds every generation at a gate until
/// [`StubEngine::open_gate`], so tests can fill a pool deterministically.
#[derive(Debug)]
pub struct StubEngine {
    model: ModelId,
    gate: Option<(Mutex<Gate>, Condvar)>,
    /// Answers something other than its "model" would (upper-cased), and
    /// replays as if its model did so: a cheating orchestrator and, as a
    /// verifier, a lying one.
    lying: bool,
    /// Reports this much more compute time than it spent: an orchestrator
    /// padding its bill.
    padding: Duration,
    /// Time spent per output token, as a real model would.
    pace: Duration,
}

impl StubEngine {
    /// A stub serving a model called `name` (hash: sha256 of the name).
    pub fn new(name: &str) -> Self {
        Self {
            model: ModelId {
                name: name.to_owned(),
                sha256: Digest::of(name.as_bytes()),
            },
            gate: None,
            lying: false,
            padding: Duration::ZERO,
            pace: Duration::ZERO,
        }
    }

    /// Makes every output token take `pace` (cancellable between tokens),
    /// so that a generation lasts long enough to be interrupted.
    pub fn paced(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// Makes the stub claim `padding` more compute time than it spent.
    pub fn padding_compute(mut self, padding: Duration) -> Self {
        self.padding = padding;
        self
    }

    /// Makes the stub cheat (see the field's docs).
    pub fn lying(mut self) -> Self {
        self.lying = true;
        self
    }

    fn answer(&self, prompt: &str) -> String {
        let reversed: String = prompt.chars().rev().collect();
        if self.lying {
            reversed.to_uppercase()
        } else {
            reversed
        }
    }

    /// Makes generations wait for [`Self::open_gate`].
    pub fn gated(mut self) -> Self {
        self.gate = Some((Mutex::new(Gate::default()), Condvar::new()));
        self
    }

    /// The model served.
    pub fn model(&self) -> ModelId {
        self.model.clone()
    }

    /// Blocks until `n` generations were cancelled while held at the gate.
    pub fn wait_cancelled(&self, n: usize) {
        if let Some((m, c)) = &self.gate
            && let Ok(g) = m.lock()
        {
            let _g = c.wait_while(g, |g| g.cancelled < n);
        }
    }

    /// Lets every waiting and future generation through.
    pub fn open_gate(&self) {
        if let Some((m, c)) = &self.gate {
            if let Ok(mut g) = m.lock() {
                g.open = true;
            }
            c.notify_all();
        }
    }

    /// Blocks until `n` generations have reached the gate.
    pub fn wait_started(&self, n: usize) {
        if let Some((m, c)) = &self.gate
            && let Ok(g) = m.lock()
        {
            let _g = c.wait_while(g, |g| g.reached < n);
        }
    }
}

impl Generator for StubEngine {
    fn models(&self) -> Vec<ModelId> {
        vec![self.model.clone()]
    }

    fn generate(
        &self,
        job: &Job,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, InferenceError> {
        let started = Instant::now();
        if job.model != self.model.sha256 {
            return Err(InferenceError::UnknownModel(job.model));
        }
        if let Some((m, c)) = &self.gate
            && let Ok(mut g) = m.lock()
        {
            g.reached += 1;
            c.notify_all();
            while !g.open {
                if cancelled() {
                    g.cancelled += 1;
                    c.notify_all();
                    return Err(InferenceError::Cancelled);
                }
                g = match c.wait_timeout(g, Duration::from_millis(20)) {
                    Ok((g, _)) => g,
                    Err(_) => return Err(InferenceError::engine("poisoned")),
                };
            }
        }
        // A resumed task continues after the tokens (characters) it was
        // given; `max_tokens` counts the rest.
        let done = job.resume.as_ref().map_or(0, |r| r.tokens.len());
        let rest: String = self.answer(&job.prompt).chars().skip(done).collect();
        let max = job.sampling.max_tokens as usize;
        let (text, finish) = if rest.chars().count() > max {
            (rest.chars().take(max).collect(), FinishReason::MaxTokens)
        } else {
            (rest, FinishReason::EndOfGeneration)
        };
        for _ in 0..text.chars().count() {
            if self.pace.is_zero() {
                break;
            }
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
            std::thread::sleep(self.pace);
        }
        Ok(Generation {
            output_tokens: text.chars().count() as u32,
            prompt_tokens: job.prompt.chars().count() as u32,
            cached_tokens: 0,
            logprobs: Vec::new(),
            tokens: text.chars().map(u32::from).collect(),
            text,
            finish,
            compute: started.elapsed() + self.padding,
        })
    }

    /// The stub's "model" answers the reversed prompt: a returned token that
    /// differs from it is 10 logits off, a matching one 0.
    fn replay(
        &self,
        request: &ReplayRequest,
        _cancelled: &dyn Fn() -> bool,
    ) -> Result<ReplayFindings, InferenceError> {
        let started = Instant::now();
        if request.model() != self.model.sha256 {
            return Err(InferenceError::UnknownModel(request.model()));
        }
        let expected: Vec<u32> = self
            .answer(&request.prompt)
            .chars()
            .map(u32::from)
            .collect();
        let mut worst = Vec::new();
        for (i, &t) in request.tokens.iter().enumerate() {
            let e = expected.get(i).copied().unwrap_or(0);
            if t != e && worst.len() < cactus_protocol::fraud::MAX_WORST {
                worst.push(PositionGap {
                    position: i as u32,
                    token: t,
                    expected: e,
                    gap: 10.0,
                });
            }
        }
        let text: String = request
            .tokens
            .iter()
            .filter_map(|&t| char::from_u32(t))
            .collect();
        Ok(ReplayFindings {
            prompt_tokens: request.prompt.chars().count() as u32,
            positions: request.tokens.len() as u32,
            mismatches: worst.len() as u32,
            max_gap: if worst.is_empty() { 0.0 } else { 10.0 },
            worst,
            text_matches: text == request.text,
            stop_gap: None,
            compute_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// An engine that serves another engine's model under a claimed identity:
/// an orchestrator advertising (and signing receipts for) one model while
/// running a cheaper one. Test support for spot checks, with real engines
/// inside.
pub struct Substitute {
    inner: Arc<dyn Engine>,
    claims: ModelId,
}

impl std::fmt::Debug for Substitute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Substitute")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Substitute {
    /// Runs `inner`'s first model, claiming to be `claims`.
    pub fn new(inner: Arc<dyn Engine>, claims: ModelId) -> Self {
        Self { inner, claims }
    }
}

impl Engine for Substitute {
    fn models(&self) -> Vec<ModelId> {
        vec![self.claims.clone()]
    }

    fn slots(&self) -> usize {
        self.inner.slots()
    }

    fn free_slots(&self) -> usize {
        self.inner.free_slots()
    }

    fn has_room(&self) -> bool {
        self.inner.has_room()
    }

    fn submit(&self, job: Job) -> Result<Stream, Rejected> {
        let Some(real) = self.inner.models().first().map(|m| m.sha256) else {
            return Err(Rejected::Stopped);
        };
        self.inner.submit(Job { model: real, ..job })
    }

    fn replay(&self, request: Box<ReplayRequest>) -> Result<ReplayReceiver, Rejected> {
        self.inner.replay(request)
    }
}

/// An engine whose first generation, of all the engines sharing its
/// `armed` flag, streams `after` tokens of the stub's answer and then falls
/// silent, holding its sequence until the reader goes away: an orchestrator
/// that stalls mid-stream. Every other generation runs on `inner`.
#[derive(Debug)]
pub struct StallsOnce {
    inner: Arc<dyn Engine>,
    stub: Arc<StubEngine>,
    armed: Arc<AtomicBool>,
    after: usize,
    /// Stalled generations whose reader has gone.
    released: Arc<AtomicUsize>,
}

impl StallsOnce {
    /// `stub`'s answers, run on `inner` (a pool around `stub`), except the
    /// first generation taken while `armed` is set.
    pub fn new(
        stub: Arc<StubEngine>,
        inner: Arc<dyn Engine>,
        armed: Arc<AtomicBool>,
        after: usize,
    ) -> Self {
        Self {
            inner,
            stub,
            armed,
            after,
            released: Arc::default(),
        }
    }

    /// Stalled generations whose reader has gone (the router gave up on
    /// them).
    pub fn released(&self) -> usize {
        self.released.load(Ordering::Acquire)
    }
}

impl Engine for StallsOnce {
    fn models(&self) -> Vec<ModelId> {
        self.inner.models()
    }

    fn slots(&self) -> usize {
        self.inner.slots()
    }

    fn free_slots(&self) -> usize {
        self.inner.free_slots()
    }

    fn has_room(&self) -> bool {
        self.inner.has_room()
    }

    fn submit(&self, job: Job) -> Result<Stream, Rejected> {
        if !self.armed.swap(false, Ordering::AcqRel) {
            return self.inner.submit(job);
        }
        let (tx, stream) = Stream::channel();
        let tokens: Vec<char> = self
            .stub
            .answer(&job.prompt)
            .chars()
            .take(self.after)
            .collect();
        let released = Arc::clone(&self.released);
        std::thread::spawn(move || {
            for c in tokens {
                let token = Event::Token {
                    id: u32::from(c),
                    text: c.to_string(),
                    logprobs: None,
                };
                if tx.try_token(token).is_err() {
                    break;
                }
            }
            // Silent from here on, as a hung process is, until the reader
            // drops the stream.
            while !tx.is_closed() {
                std::thread::sleep(Duration::from_millis(10));
            }
            released.fetch_add(1, Ordering::AcqRel);
        });
        Ok(stream)
    }

    fn replay(&self, request: Box<ReplayRequest>) -> Result<ReplayReceiver, Rejected> {
        self.inner.replay(request)
    }
}
