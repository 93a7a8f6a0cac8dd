//! One model's decode loop: continuous batching over one llama.cpp context,
//! stepped by the engine's decode thread ([`super::driver`]).
//!
//! The context holds `slots` sequences in one unified KV cache of
//! `n_ctx = slots × ctx_size` cells, each sequence held to `ctx_size` by
//! this loop. Unified, because llama.cpp splits a batch over a non-unified
//! cache into micro-batches with as many tokens of every sequence
//! (`split_equal`): the prompts of six tasks arriving together then took
//! some twenty decodes instead of one, and their first tokens came 350 ms
//! late. The price: a token attends over the cells of every sequence the
//! cache holds, idle slots' cached prompts included (masked), which costs a
//! lone stream a few per cent with short prompts cached.
//! Every step builds one `llama_batch` from the next token of every
//! generating sequence and prompt chunks of new ones (at most `n_batch`
//! tokens in all, generating sequences first, so that a long prompt cannot
//! freeze them), decodes it with the engine's threads, and samples each
//! sequence's next token. Work joins between steps; a finished, cancelled or
//! expired sequence leaves at once and its slot takes new work at the next
//! step.
//!
//! Each slot keeps the tokens its cache holds after its last task. New work
//! goes to the free slot sharing the longest token prefix with it, and only
//! the rest is prefilled (llama-server's `cache_prompt`).

use super::super::{Admission, EngineStats, Generation, InferenceError, Job, StreamSender};
use super::{LlamaConfig, Loaded};
use cactus_protocol::fraud::{ReplayFindings, ReplayRequest};
use cactus_protocol::{CachedPrefix, Digest, FinishReason};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod generate;
mod replay;

use generate::{Gen, step_gen};
use replay::{Replay, findings, step_replay};

/// Work for the loop.
pub(super) enum Work {
    Generate(Job, StreamSender),
    Replay(
        Box<ReplayRequest>,
        oneshot::Sender<Result<ReplayFindings, InferenceError>>,
    ),
}

/// What the loop publishes for the engine's callers.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub cache: Mutex<Vec<CachedPrefix>>,
    pub stats: Mutex<EngineStats>,
}

/// Output positions whose logits one replay keeps per step: the output
/// layer over a large vocabulary makes logits the large buffer.
const REPLAY_CHUNK: usize = 64;
/// How often a busy loop logs what it does.
const LOG_EVERY: Duration = Duration::from_secs(10);

enum Task {
    Gen(Box<Gen>),
    Replay(Box<Replay>),
}

struct Slot {
    seq: i32,
    /// Tokens whose KV this sequence holds, from position 0.
    cached: Vec<LlamaToken>,
    /// What the cache holds, in the task's own terms, for adverts.
    advert: Option<CachedPrefix>,
    used: u64,
    task: Option<Task>,
}

impl Slot {
    /// Tokens of `task` not yet fed.
    fn pending(&self) -> usize {
        match &self.task {
            Some(Task::Gen(g)) => g.tokens.len().saturating_sub(self.cached.len()),
            Some(Task::Replay(r)) => r.seq.len().saturating_sub(self.cached.len()),
            None => 0,
        }
    }
}

/// What one [`Loop::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Decoded a batch (or failed one): step again.
    Decoded,
    /// Has tasks, but every one waits for its reader to take a token.
    Paused,
    /// No task; waits for work.
    Idle,
    /// The engine stopped and every task has ended.
    Closed,
}

pub(super) struct Loop<'m> {
    loaded: &'m Loaded,
    ctx: LlamaContext<'m>,
    config: LlamaConfig,
    n_ctx_seq: u32,
    /// The model's sliding attention window (0: none; `None`: unknown).
    n_swa: Option<i32>,
    slots: Vec<Slot>,
    batch: LlamaBatch<'static>,
    rx: Receiver<Work>,
    /// Whether the engine may still send work (its sender is alive).
    open: bool,
    admission: Arc<Admission>,
    shared: Arc<Shared>,
    eog: Arc<Vec<usize>>,
    tick: u64,
    rotate: usize,
    stats: EngineStats,
    logged: Instant,
    logged_tokens: u64,
}

impl<'m> Loop<'m> {
    pub(super) fn new(
        loaded: &'m Loaded,
        ctx: LlamaContext<'m>,
        config: LlamaConfig,
        rx: Receiver<Work>,
        admission: Arc<Admission>,
        shared: Arc<Shared>,
    ) -> Self {
        let model = &loaded.model;
        let n_vocab = model.n_vocab().max(0) as usize;
        let vocab = model.vocab();
        let eog = (0..n_vocab)
            .filter(|&t| vocab.is_eog(LlamaToken::new(t as i32)))
            .collect();
        let n_swa = sliding_window(model);
        let slots = (0..admission.slots())
            .map(|i| Slot {
                seq: i as i32,
                cached: Vec::new(),
                advert: None,
                used: 0,
                task: None,
            })
            .collect();
        let batch_tokens = config.batch_size.max(1) as usize;
        // llama.cpp rounds the context up; a slot gets what was asked.
        let asked = config.ctx_size.min(model.n_ctx_train()).max(16);
        Self {
            loaded,
            n_ctx_seq: asked.min(ctx.n_ctx() / admission.slots().max(1) as u32),
            ctx,
            n_swa,
            slots,
            batch: LlamaBatch::new(batch_tokens, 1),
            rx,
            open: true,
            admission,
            shared,
            eog: Arc::new(eog),
            tick: 0,
            rotate: 0,
            stats: EngineStats::default(),
            logged: Instant::now(),
            logged_tokens: 0,
            config,
        }
    }

    /// One step of this model's loop, never blocking: takes new work while
    /// a slot is free, ends expired tasks, and decodes one batch. The
    /// engine's decode thread steps every model's loop in turn
    /// ([`super::driver`]).
    ///
    /// It reports [`Step::Idle`] only after finding the queue empty with
    /// every slot free, so that work sent later rings the doorbell after
    /// the thread looked: ended tasks leave before the queue is read.
    pub(super) fn step(&mut self) -> Step {
        self.expire();
        while self.open && self.slots.iter().any(|s| s.task.is_none()) {
            match self.rx.try_recv() {
                Ok(work) => self.admit(work),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.open = false,
            }
        }
        let fed = match self.build() {
            Ok(n) => n,
            Err(e) => {
                self.fail_batch(&e);
                return Step::Decoded;
            }
        };
        if fed == 0 {
            return if self.slots.iter().any(|s| s.task.is_some()) {
                // Every sequence waits for its reader.
                Step::Paused
            } else if self.open {
                Step::Idle
            } else {
                Step::Closed
            };
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.fail_batch(&InferenceError::engine(e));
            return Step::Decoded;
        }
        self.after_decode();
        self.publish();
        Step::Decoded
    }

    fn admit(&mut self, work: Work) {
        self.tick += 1;
        let result = match work {
            Work::Generate(job, tx) => self.admit_gen(job, tx),
            Work::Replay(request, reply) => self.admit_replay(request, reply),
        };
        if result.is_err() {
            self.admission.release();
        }
    }

    /// The free slot sharing the longest prefix with `tokens` (the least
    /// recently used among equals), and how many tokens of it to keep: at
    /// most `limit`, and none when llama.cpp's sliding-window cache no
    /// longer holds what the kept prefix needs.
    fn pick_slot(&mut self, tokens: &[LlamaToken], limit: usize) -> Option<(usize, usize)> {
        let (i, lcp) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.task.is_none())
            .map(|(i, s)| {
                let lcp = s
                    .cached
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, lcp, s.used)
            })
            .max_by_key(|&(_, lcp, used)| (lcp, std::cmp::Reverse(used)))
            .map(|(i, lcp, _)| (i, lcp))?;
        let mut keep = lcp.min(limit);
        let seq = self.slots[i].seq;
        // A sliding-window cache drops positions older than the window; the
        // kept prefix needs its last window (llama-server's rule). When the
        // window is unknown, only a cache that still starts at 0 is reused.
        if keep > 0 && self.n_swa != Some(0) {
            let pos_min = self.ctx.kv_cache_seq_pos_min(seq);
            let needed = self.n_swa.map_or(0, |w| (keep as i32 - w).max(0));
            if pos_min > needed {
                keep = 0;
            }
        }
        let removed = self
            .ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None)
            .unwrap_or(false);
        if !removed {
            keep = 0;
            let _ = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        }
        let slot = &mut self.slots[i];
        slot.cached.truncate(keep);
        slot.advert = None;
        slot.used = self.tick;
        Some((i, keep))
    }

    /// Ends tasks whose reader left or whose deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let why = match &self.slots[i].task {
                Some(Task::Gen(g)) if g.tx.is_closed() => Some(InferenceError::Cancelled),
                Some(Task::Gen(g)) if g.deadline.is_some_and(|d| now >= d) => {
                    Some(InferenceError::DeadlineExceeded)
                }
                Some(Task::Replay(r)) if r.reply.is_closed() => Some(InferenceError::Cancelled),
                _ => None,
            };
            if let Some(e) = why {
                self.end(i, Err(e));
            }
        }
    }

    /// Fills the batch; returns how many tokens it holds.
    fn build(&mut self) -> Result<usize, InferenceError> {
        self.batch.clear();
        let cap = self.config.batch_size.max(1) as usize;
        let mut used = 0usize;
        // Generating sequences first: one token each.
        for slot in &mut self.slots {
            let Some(Task::Gen(g)) = &mut slot.task else {
                continue;
            };
            g.logits_at = None;
            if g.held.is_some() {
                // Paused by its reader; try to hand the token out now.
                if let Some(e) = g.held.take()
                    && let Err(e) = g.tx.try_token(e)
                {
                    g.held = Some(e);
                    continue;
                }
            }
            let Some(t) = g.next.take() else { continue };
            if used >= cap {
                g.next = Some(t);
                continue;
            }
            let pos = slot.cached.len() as i32;
            self.batch
                .add(t, pos, &[slot.seq], true)
                .map_err(InferenceError::engine)?;
            g.logits_at = Some(used as i32);
            slot.cached.push(t);
            used += 1;
        }
        // Then prompt chunks, starting from a rotating slot so that several
        // long prompts share the room.
        let n = self.slots.len();
        self.rotate = (self.rotate + 1) % n.max(1);
        for k in 0..n {
            let i = (self.rotate + k) % n;
            if used >= cap {
                break;
            }
            let slot = &mut self.slots[i];
            let pending = slot.pending();
            match &mut slot.task {
                Some(Task::Gen(g)) if pending > 0 => {
                    let from = slot.cached.len();
                    let take = pending.min(cap - used);
                    let last = g.tokens.len() - 1;
                    for p in from..from + take {
                        self.batch
                            .add(g.tokens[p], p as i32, &[slot.seq], p == last)
                            .map_err(InferenceError::engine)?;
                        if p == last {
                            g.logits_at = Some(used as i32);
                        }
                        used += 1;
                    }
                    slot.cached.extend_from_slice(&g.tokens[from..from + take]);
                }
                Some(Task::Replay(r)) if pending > 0 => {
                    r.logits_at.clear();
                    let from = slot.cached.len();
                    let mut p = from;
                    while p < r.seq.len() && used < cap {
                        let wants = p >= r.first && p <= r.last;
                        if wants && r.logits_at.len() >= REPLAY_CHUNK {
                            break;
                        }
                        self.batch
                            .add(r.seq[p], p as i32, &[slot.seq], wants)
                            .map_err(InferenceError::engine)?;
                        if wants {
                            r.logits_at.push((p, used as i32));
                        }
                        used += 1;
                        p += 1;
                    }
                    slot.cached.extend_from_slice(&r.seq[from..p]);
                }
                _ => {}
            }
        }
        if used > 0 {
            let seqs = self
                .slots
                .iter()
                .filter(|s| match &s.task {
                    Some(Task::Gen(g)) => g.logits_at.is_some() || s.pending() > 0,
                    Some(Task::Replay(_)) => true,
                    None => false,
                })
                .count();
            self.stats.steps += 1;
            if seqs > 1 {
                self.stats.shared_steps += 1;
            }
            self.stats.max_batch_sequences = self.stats.max_batch_sequences.max(seqs);
        }
        Ok(used)
    }

    /// Samples every sequence that has logits in the decoded batch.
    fn after_decode(&mut self) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let outcome = match &mut slot.task {
                Some(Task::Gen(g)) => match g.logits_at.take() {
                    Some(at) => step_gen(&self.loaded.model, &self.ctx, g, at, &mut self.stats)
                        .map(|r| r.map(Some)),
                    None => None,
                },
                Some(Task::Replay(r)) => {
                    let done = r.seq.len() <= slot.cached.len();
                    step_replay(&self.loaded.model, &self.ctx, r);
                    done.then_some(Ok(None))
                }
                None => None,
            };
            if let Some(result) = outcome {
                self.end(i, result);
            }
        }
    }

    /// Ends slot `i`'s task with `result` (a generation's finish reason, or
    /// `None` for a replay); the slot is free at once.
    fn end(&mut self, i: usize, result: Result<Option<FinishReason>, InferenceError>) {
        let model_hash = self.loaded.id.sha256;
        let slot = &mut self.slots[i];
        let Some(task) = slot.task.take() else { return };
        self.admission.release();
        match task {
            Task::Gen(g) => {
                let g = *g;
                let result = match result {
                    Ok(finish) => {
                        let text = g.out.finish();
                        // What the cache holds, as the next turn of a chat
                        // would send it: this prompt, then this answer.
                        let answer = format!("{}{}", g.before, text);
                        slot.advert = cactus_protocol::messages::cache_key_after(
                            g.format, &g.prompt, &answer,
                        )
                        .map(|held| CachedPrefix {
                            model: model_hash,
                            bytes: held.len() as u32,
                            hash: Digest::of(&held),
                            tokens: slot.cached.len() as u32,
                        });
                        Ok(Generation {
                            text,
                            prompt_tokens: g.tokens.len() as u32,
                            cached_tokens: g.cached_tokens,
                            output_tokens: g.ids.len() as u32,
                            tokens: g.ids,
                            finish: finish.unwrap_or(FinishReason::MaxTokens),
                            compute: g.started.elapsed(),
                            logprobs: g.logprobs,
                        })
                    }
                    Err(e) => Err(e),
                };
                tracing::debug!(
                    seq = slot.seq,
                    ok = result.is_ok(),
                    elapsed_ms = g.started.elapsed().as_millis() as u64,
                    "generation finished"
                );
                // The cache is published before the answer leaves, so that
                // whoever sees the answer sees the cache that holds it.
                self.publish_cache();
                // The last token event goes if there is room; the final
                // event always has its place.
                if let Some(e) = g.held {
                    let _ = g.tx.try_token(e);
                }
                g.tx.done(result);
            }
            Task::Replay(r) => {
                let r = *r;
                let result = result.map(|_| findings(&self.loaded.model, r.started, &r));
                let _ = r.reply.send(result);
                self.publish_cache();
            }
        }
    }

    /// Fails every task that had tokens in the last batch and forgets what
    /// their caches hold.
    fn fail_batch(&mut self, e: &InferenceError) {
        tracing::warn!(error = %e, "decode failed");
        for i in 0..self.slots.len() {
            if self.slots[i].task.is_some() {
                let seq = self.slots[i].seq as u32;
                let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
                self.slots[i].cached.clear();
                self.end(i, Err(e.clone()));
                self.slots[i].advert = None;
            }
        }
    }

    fn publish_cache(&self) {
        let mut entries: Vec<(u64, CachedPrefix)> = self
            .slots
            .iter()
            .filter_map(|s| s.advert.clone().map(|a| (s.used, a)))
            .collect();
        entries.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        if let Ok(mut c) = self.shared.cache.lock() {
            *c = entries.into_iter().map(|(_, a)| a).collect();
        }
    }

    fn publish(&mut self) {
        self.stats.active = self.slots.iter().filter(|s| s.task.is_some()).count();
        self.stats.queued = self.admission.in_flight().saturating_sub(self.stats.active);
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = self.stats;
        }
        let since = self.logged.elapsed();
        if since >= LOG_EVERY {
            let tokens = self.stats.generated_tokens - self.logged_tokens;
            tracing::info!(
                model = %self.loaded.id.name,
                active = self.stats.active,
                queued = self.stats.queued,
                steps = self.stats.steps,
                shared_steps = self.stats.shared_steps,
                max_batch_sequences = self.stats.max_batch_sequences,
                tokens_per_s = format!("{:.1}", tokens as f64 / since.as_secs_f64()),
                cached_prompt_tokens = self.stats.cached_prompt_tokens,
                "engine"
            );
            self.logged = Instant::now();
            self.logged_tokens = self.stats.generated_tokens;
        }
    }
}

/// The model's attention window, from its GGUF metadata: `Some(0)` for
/// full attention, `None` when the metadata does not say.
fn sliding_window(model: &llama_cpp_2::model::LlamaModel) -> Option<i32> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    match model.meta_val_str(&format!("{arch}.attention.sliding_window")) {
        Ok(v) => v.trim().parse().ok(),
        Err(_) => Some(0),
    }
}
