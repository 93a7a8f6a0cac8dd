//! Blocking generators run one per thread behind the [`Engine`] interface:
//! for test engines (the stub) and anything that cannot batch. The real
//! engine batches instead ([`super::llama`]).

use super::{
    Admission, Engine, Event, Generation, InferenceError, Job, Rejected, ReplayReceiver, Stream,
    StreamSender,
};
use cactus_protocol::ModelId;
use cactus_protocol::fraud::{ReplayFindings, ReplayRequest};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// A generator that runs one job at a time on the calling thread.
pub trait Generator: Send + Sync + 'static {
    /// The models served.
    fn models(&self) -> Vec<ModelId>;
    /// Runs one generation; `cancelled` is polled between tokens.
    fn generate(
        &self,
        job: &Job,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, InferenceError>;
    /// Replays a result (see [`cactus_protocol::fraud`]).
    fn replay(
        &self,
        request: &ReplayRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ReplayFindings, InferenceError> {
        let _ = (request, cancelled);
        Err(InferenceError::engine("this engine cannot replay results"))
    }
}

enum Queued {
    Generate(Job, StreamSender),
    Replay(
        Box<ReplayRequest>,
        oneshot::Sender<Result<ReplayFindings, InferenceError>>,
    ),
}

/// A fixed set of threads, each running one job of a [`Generator`] at a time,
/// fed by a fixed-length queue.
pub struct ThreadPool {
    models: Vec<ModelId>,
    tx: Mutex<Option<SyncSender<Queued>>>,
    admission: Arc<Admission>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("models", &self.models)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// Starts `slots` threads (at least one) running `generator`, with room
    /// for `queue` waiting jobs.
    pub fn new(generator: Arc<dyn Generator>, slots: usize, queue: usize) -> Self {
        let admission = Arc::new(Admission::new(slots, queue));
        let (tx, rx) = mpsc::sync_channel::<Queued>(queue + admission.slots());
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..admission.slots())
            .filter_map(|i| {
                let rx = Arc::clone(&rx);
                let generator = Arc::clone(&generator);
                let admission = Arc::clone(&admission);
                std::thread::Builder::new()
                    .name(format!("cactus-worker-{i}"))
                    .spawn(move || worker(&*generator, &rx, &admission))
                    .map_err(|e| tracing::error!(error = %e, "could not start a worker thread"))
                    .ok()
            })
            .collect();
        Self {
            models: generator.models(),
            tx: Mutex::new(Some(tx)),
            admission,
            threads: Mutex::new(threads),
        }
    }

    fn enqueue(&self, work: Queued) -> Result<(), Rejected> {
        let guard = self.tx.lock().map_err(|_| Rejected::Stopped)?;
        let tx = guard.as_ref().ok_or(Rejected::Stopped)?;
        self.admission.take()?;
        tx.try_send(work).map_err(|e| {
            self.admission.release();
            match e {
                TrySendError::Full(_) => Rejected::Busy,
                TrySendError::Disconnected(_) => Rejected::Stopped,
            }
        })
    }
}

impl Engine for ThreadPool {
    fn models(&self) -> Vec<ModelId> {
        self.models.clone()
    }

    fn slots(&self) -> usize {
        self.admission.slots()
    }

    fn free_slots(&self) -> usize {
        self.admission.free_slots()
    }

    fn has_room(&self) -> bool {
        self.admission.has_room()
    }

    fn submit(&self, job: Job) -> Result<Stream, Rejected> {
        let (tx, stream) = Stream::channel();
        self.enqueue(Queued::Generate(job, tx))?;
        Ok(stream)
    }

    fn replay(&self, request: Box<ReplayRequest>) -> Result<ReplayReceiver, Rejected> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Queued::Replay(request, reply))?;
        Ok(rx)
    }

    fn shutdown(&self) {
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

impl Drop for ThreadPool {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

fn worker(generator: &dyn Generator, rx: &Mutex<mpsc::Receiver<Queued>>, admission: &Admission) {
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
            Queued::Generate(mut job, tx) => {
                let deadline = job.deadline.take();
                let past = || deadline.is_some_and(|d| Instant::now() >= d);
                let result = if tx.is_closed() {
                    Err(InferenceError::Cancelled)
                } else {
                    generator.generate(&job, &|| tx.is_closed() || past())
                };
                let result = match result {
                    Err(InferenceError::Cancelled) if past() => {
                        Err(InferenceError::DeadlineExceeded)
                    }
                    r => r,
                };
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "generation finished"
                );
                admission.release();
                if let Ok(g) = &result {
                    // A generator that does not stream hands its tokens out
                    // at the end, as far as the reader has room.
                    for &id in &g.tokens {
                        let event = Event::Token {
                            id,
                            text: String::new(),
                            logprobs: None,
                        };
                        if tx.try_token(event).is_err() {
                            break;
                        }
                    }
                }
                tx.done(result);
            }
            Queued::Replay(request, reply) => {
                let result = if reply.is_closed() {
                    Err(InferenceError::Cancelled)
                } else {
                    generator.replay(&request, &|| reply.is_closed())
                };
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "replay finished"
                );
                admission.release();
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stub::StubEngine;
    use super::*;
    use cactus_protocol::{Digest, ModelHash, PromptFormat, SamplingParams};

    fn job(model: ModelHash) -> Job {
        Job {
            model,
            prompt: "hello".into(),
            format: PromptFormat::Raw,
            sampling: SamplingParams::default(),
            deadline: None,
            resume: None,
        }
    }

    #[tokio::test]
    async fn runs_jobs_and_rejects_when_full() {
        let engine = Arc::new(StubEngine::new("stub").gated());
        let model = engine.model().sha256;
        let pool = ThreadPool::new(engine.clone(), 1, 1);
        assert_eq!(pool.free_slots(), 1);
        let first = pool.submit(job(model)).unwrap();
        engine.wait_started(1);
        let second = pool.submit(job(model)).unwrap();
        assert_eq!(pool.submit(job(model)).unwrap_err(), Rejected::Busy);
        assert_eq!(pool.free_slots(), 0);
        engine.open_gate();
        let a = first.finish().await.unwrap();
        let b = second.finish().await.unwrap();
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
            .submit(job(Digest::of(b"other")))
            .unwrap()
            .finish()
            .await;
        assert!(matches!(unknown, Err(InferenceError::UnknownModel(_))));
        pool.shutdown();
        assert_eq!(pool.submit(job(model)).unwrap_err(), Rejected::Stopped);
    }

    #[tokio::test]
    async fn a_passed_deadline_ends_the_job_with_its_own_error() {
        let engine = Arc::new(StubEngine::new("stub").gated());
        let model = engine.model().sha256;
        let pool = ThreadPool::new(engine.clone(), 1, 0);
        let mut j = job(model);
        j.deadline = Some(Instant::now());
        let r = pool.submit(j).unwrap().finish().await;
        assert!(matches!(r, Err(InferenceError::DeadlineExceeded)), "{r:?}");
        assert_eq!(pool.free_slots(), 1);
    }
}
