//! The engine's one decode thread: it creates every model's context and
//! steps every model's [`Loop`] in turn, one batch each, sleeping on a
//! [`Doorbell`] when none has anything to decode.
//!
//! One thread for all models, not one per model: llama.cpp computes each
//! batch on an OpenMP team of `threads` threads, and libgomp spins its
//! threads between the many barriers of a graph only while it manages no
//! more threads than there are CPUs. A second model's loop thread brought a
//! second team; past that count libgomp throttles its spinning to a few
//! hundred turns, and every barrier became a futex sleep: each model then
//! ran at 0.6 of its speed alone, idle or not. Two teams would also fight
//! for the same cores whenever both models had work. Taking turns costs a
//! model nothing while the other is idle, and halves each when both are
//! busy, which is what sharing the cores means.

use super::batch::{Loop, Shared, Step, Work};
use super::{LlamaConfig, LoadError, Loaded};
use crate::inference::Admission;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use std::num::NonZeroU32;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the thread sleeps, unless new work comes, while every sequence
/// is paused by its reader.
const PAUSED_WAIT: Duration = Duration::from_millis(2);

/// Rung by the engine after each piece of work it queues, and when it
/// stops: wakes the decode thread.
#[derive(Debug, Default)]
pub(super) struct Doorbell {
    rings: Mutex<u64>,
    cv: Condvar,
}

impl Doorbell {
    pub(super) fn ring(&self) {
        let mut n = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.wrapping_add(1);
        self.cv.notify_one();
    }

    fn rings(&self) -> u64 {
        *self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until it rings past `seen` (at once if it already has), or
    /// for `timeout`.
    fn wait(&self, seen: u64, timeout: Option<Duration>) {
        let n = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        // A poisoned lock still counts rings: waiting on is safe.
        match timeout {
            None => drop(self.cv.wait_while(n, |n| *n == seen)),
            Some(t) => drop(self.cv.wait_timeout_while(n, t, |n| *n == seen)),
        }
    }
}

/// One model's side of the thread: where its work comes from, and what
/// its loop shares with the engine.
pub(super) struct Input {
    pub rx: Receiver<Work>,
    pub admission: Arc<Admission>,
    pub shared: Arc<Shared>,
}

/// Starts the decode thread for `loaded` (one [`Input`] each, in order)
/// and waits until every context exists.
pub(super) fn spawn(
    loaded: Vec<Loaded>,
    inputs: Vec<Input>,
    config: &LlamaConfig,
    backend: &'static LlamaBackend,
    bell: Arc<Doorbell>,
) -> Result<JoinHandle<()>, LoadError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let cfg = config.clone();
    let thread = std::thread::Builder::new()
        .name("cactus-decode".into())
        .spawn(move || {
            // Declared after `loaded`, dropped before it: the loops borrow
            // the models.
            let mut loops = Vec::with_capacity(loaded.len());
            for (model, input) in loaded.iter().zip(inputs) {
                match context(model, &cfg, backend, input.admission.slots()) {
                    Ok(ctx) => loops.push(Loop::new(
                        model,
                        ctx,
                        cfg.clone(),
                        input.rx,
                        input.admission,
                        input.shared,
                    )),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            }
            let _ = ready_tx.send(Ok(()));
            drive(&mut loops, &bell);
        })
        .map_err(LoadError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LoadError::Thread(std::io::Error::other(
            "the decode thread ended while starting",
        ))),
    }
}

/// `model`'s one context: `slots` sequences of `ctx_size` in one unified
/// KV cache (see [`super::batch`]).
fn context<'m>(
    model: &'m Loaded,
    cfg: &LlamaConfig,
    backend: &LlamaBackend,
    slots: usize,
) -> Result<LlamaContext<'m>, LoadError> {
    let threads = cfg.threads.max(1) as i32;
    let n_ctx = cfg
        .ctx_size
        .min(model.model.n_ctx_train())
        .max(16)
        .saturating_mul(slots as u32);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(cfg.batch_size.max(1))
        .with_n_seq_max(slots as u32)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = model
        .model
        .new_context(backend, params)
        .map_err(|source| LoadError::Context {
            model: model.id.name.clone(),
            source,
        })?;
    tracing::info!(
        model = %model.id.name,
        slots,
        ctx_per_slot = ctx.n_ctx() / slots as u32,
        threads,
        batch = cfg.batch_size,
        "decode loop started"
    );
    Ok(ctx)
}

/// Steps every loop in turn until the engine stops and every task ended.
fn drive(loops: &mut [Loop<'_>], bell: &Doorbell) {
    loop {
        let seen = bell.rings();
        let (mut decoded, mut paused, mut closed) = (false, false, 0);
        for l in loops.iter_mut() {
            match l.step() {
                Step::Decoded => decoded = true,
                Step::Paused => paused = true,
                Step::Idle => {}
                Step::Closed => closed += 1,
            }
        }
        if closed == loops.len() {
            return;
        }
        if !decoded {
            bell.wait(seen, paused.then_some(PAUSED_WAIT));
        }
    }
}
