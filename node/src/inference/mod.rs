//! Inference: the engine that turns a prompt into text, and the bounded worker
//! pool that runs it off the async runtime.
//!
//! The pool has a fixed number of worker threads (slots) and a fixed-length
//! queue. [`WorkerPool::try_submit`] never waits: when every slot is busy and
//! the queue is full it answers [`Rejected::Busy`] at once, so an overloaded
//! orchestrator says so instead of piling up work. A job whose caller has gone
//! away (the reply receiver was dropped) is cancelled between two tokens.

#[cfg(feature = "inference")]
pub mod llama;
pub mod model_file;
#[cfg(any(test, feature = "test-utils"))]
pub mod stub;

use cactus_protocol::fraud::{ReplayFindings, ReplayRequest};
use cactus_protocol::{FinishReason, ModelHash, ModelId, PromptFormat, SamplingParams};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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
    /// Tokens generated.
    pub output_tokens: u32,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Time spent in the engine.
    pub compute: Duration,
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

/// A token generator.
///
/// `generate` blocks; it is only ever called on a [`WorkerPool`] thread.
/// `cancelled` is polled between tokens.
pub trait Engine: Send + Sync + 'static {
    /// The models this engine serves.
    fn models(&self) -> Vec<ModelId>;
    /// Runs one generation.
    fn generate(
        &self,
        job: &Job,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, InferenceError>;
    /// Replays a result as one teacher-forced prefill and reports how far
    /// each returned token is from the model's pick (see
    /// [`cactus_protocol::fraud`]). Engines that cannot replay say so.
    fn replay(
        &self,
        request: &ReplayRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ReplayFindings, InferenceError> {
        let _ = (request, cancelled);
        Err(InferenceError::engine("this engine cannot replay results"))
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

/// A queued piece of work and where its result goes.
enum Queued {
    Generate(Job, oneshot::Sender<Result<Generation, InferenceError>>),
    Replay(
        Box<ReplayRequest>,
        oneshot::Sender<Result<ReplayFindings, InferenceError>>,
    ),
}

/// A fixed set of worker threads fed by a fixed-length queue.
pub struct WorkerPool {
    tx: Mutex<Option<SyncSender<Queued>>>,
    slots: usize,
    /// Jobs running or waiting at most.
    capacity: usize,
    /// Jobs queued or running.
    in_flight: Arc<AtomicUsize>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("slots", &self.slots)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl WorkerPool {
    /// Starts `slots` worker threads (at least one) running `engine`, with room
    /// for `queue` waiting jobs.
    pub fn new(engine: Arc<dyn Engine>, slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        let (tx, rx) = mpsc::sync_channel::<Queued>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let threads = (0..slots)
            .map(|i| {
                let rx = Arc::clone(&rx);
                let engine = Arc::clone(&engine);
                let in_flight = Arc::clone(&in_flight);
                std::thread::Builder::new()
                    .name(format!("cactus-worker-{i}"))
                    .spawn(move || worker(&*engine, &rx, &in_flight))
            })
            .filter_map(|t| match t {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "could not start a worker thread");
                    None
                }
            })
            .collect();
        Self {
            tx: Mutex::new(Some(tx)),
            slots,
            capacity: slots + queue,
            in_flight,
            threads: Mutex::new(threads),
        }
    }

    /// Worker threads.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether one more job would be taken now (a free slot or queue place).
    pub fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.capacity
    }

    /// Slots not running or about to run a job.
    pub fn free_slots(&self) -> usize {
        self.slots
            .saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    /// Queues a job without waiting; the result arrives on the returned
    /// receiver. Dropping the receiver cancels the job.
    pub fn try_submit(
        &self,
        job: Job,
    ) -> Result<oneshot::Receiver<Result<Generation, InferenceError>>, Rejected> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Queued::Generate(job, reply))?;
        Ok(rx)
    }

    /// Queues a replay (a spot check of another node's result) like a job.
    pub fn try_replay(
        &self,
        request: Box<ReplayRequest>,
    ) -> Result<oneshot::Receiver<Result<ReplayFindings, InferenceError>>, Rejected> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Queued::Replay(request, reply))?;
        Ok(rx)
    }

    fn enqueue(&self, work: Queued) -> Result<(), Rejected> {
        let guard = self.tx.lock().map_err(|_| Rejected::Stopped)?;
        let tx = guard.as_ref().ok_or(Rejected::Stopped)?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => Rejected::Busy,
                    TrySendError::Disconnected(_) => Rejected::Stopped,
                })
            }
        }
    }

    /// Stops taking jobs, lets queued ones finish and joins the threads.
    pub fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

fn worker(engine: &dyn Engine, rx: &Mutex<mpsc::Receiver<Queued>>, in_flight: &AtomicUsize) {
    loop {
        // Hold the lock only while taking a job, never while running one.
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(work) = next else {
            return;
        };
        let started = Instant::now();
        match work {
            Queued::Generate(job, reply) => {
                let result = if reply.is_closed() {
                    Err(InferenceError::Cancelled)
                } else {
                    engine.generate(&job, &|| reply.is_closed())
                };
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "generation finished"
                );
                in_flight.fetch_sub(1, Ordering::AcqRel);
                let _ = reply.send(result);
            }
            Queued::Replay(request, reply) => {
                let result = if reply.is_closed() {
                    Err(InferenceError::Cancelled)
                } else {
                    engine.replay(&request, &|| reply.is_closed())
                };
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "replay finished"
                );
                in_flight.fetch_sub(1, Ordering::AcqRel);
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stub::StubEngine;
    use super::*;
    use cactus_protocol::Digest;

    fn job(model: ModelHash) -> Job {
        Job {
            model,
            prompt: "hello".into(),
            format: PromptFormat::Raw,
            sampling: SamplingParams::default(),
        }
    }

    #[tokio::test]
    async fn runs_jobs_and_rejects_when_full() {
        let engine = Arc::new(StubEngine::new("stub").gated());
        let model = engine.model().sha256;
        let pool = WorkerPool::new(engine.clone(), 1, 1);
        assert_eq!(pool.free_slots(), 1);
        let first = pool.try_submit(job(model)).unwrap();
        engine.wait_started(1);
        let second = pool.try_submit(job(model)).unwrap();
        assert_eq!(pool.try_submit(job(model)).unwrap_err(), Rejected::Busy);
        assert_eq!(pool.free_slots(), 0);
        engine.open_gate();
        let a = first.await.unwrap().unwrap();
        let b = second.await.unwrap().unwrap();
        assert_eq!(
            a,
            Generation {
                compute: a.compute,
                ..b.clone()
            }
        );
        assert_eq!(a.text, "olleh");
        assert_eq!(pool.free_slots(), 1);
        let unknown = pool
            .try_submit(job(Digest::of(b"other")))
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(unknown, Err(InferenceError::UnknownModel(_))));
        pool.shutdown();
        assert_eq!(pool.try_submit(job(model)).unwrap_err(), Rejected::Stopped);
    }
}
