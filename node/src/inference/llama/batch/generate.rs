//! A generating sequence: admission (tokenize, check the context, take the
//! slot with the longest cached prefix) and one sampling step.

use super::super::super::text::Output;
use super::super::super::{EngineStats, Event, InferenceError, Job, StreamSender, TokenLogprobs};
use super::super::sampler;
use super::{Loop, Task};
use cactus_protocol::FinishReason;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::time::Instant;

pub(super) struct Gen {
    pub(super) tx: StreamSender,
    pub(super) deadline: Option<Instant>,
    pub(super) started: Instant,
    /// The task's prompt as given, and its format: with the output, what
    /// the cache will hold, for adverts.
    pub(super) prompt: String,
    pub(super) format: cactus_protocol::PromptFormat,
    /// The text an earlier generation showed, when this one resumes it.
    pub(super) before: String,
    pub(super) tokens: Vec<LlamaToken>,
    pub(super) sampler: LlamaSampler,
    /// Greedy with nothing shaping the logits: sampled by
    /// [`sampler::argmax`] on the logits themselves.
    pub(super) plain_greedy: bool,
    pub(super) out: Output,
    pub(super) ids: Vec<u32>,
    pub(super) logprobs: Vec<TokenLogprobs>,
    pub(super) n_probs: usize,
    pub(super) max_tokens: u32,
    pub(super) cached_tokens: u32,
    /// The last sampled token, to feed at the next step.
    pub(super) next: Option<LlamaToken>,
    /// A token event waiting for room in the stream (the sequence pauses).
    pub(super) held: Option<Event>,
    /// Where this sequence's logits are in the current batch.
    pub(super) logits_at: Option<i32>,
}

impl Loop<'_> {
    pub(super) fn admit_gen(&mut self, job: Job, tx: StreamSender) -> Result<(), ()> {
        let started = Instant::now();
        if tx.is_closed() {
            tx.done(Err(InferenceError::Cancelled));
            return Err(());
        }
        let model = &self.loaded.model;
        let prepared = (|| {
            let (text, add_bos) = super::super::prompt_text(model, &job)?;
            let mut tokens = model.vocab().tokenize(text.as_bytes(), add_bos, true);
            let prompt_tokens = tokens.len() as u32;
            let max_tokens = job.sampling.max_tokens;
            let resumed = job.resume.as_ref().map_or(0, |r| r.tokens.len() as u32);
            if tokens.is_empty()
                || prompt_tokens
                    .saturating_add(resumed)
                    .saturating_add(max_tokens)
                    > self.n_ctx_seq
            {
                return Err(InferenceError::PromptTooLong {
                    prompt_tokens: prompt_tokens.saturating_add(resumed),
                    max_tokens,
                    n_ctx: self.n_ctx_seq,
                });
            }
            let mut sampler = sampler::generation(model, &job.sampling)?;
            let out = match &job.resume {
                None => Output::new(&job.sampling.stop),
                Some(r) => {
                    let before = sampler::resume(model, &job.sampling, &mut sampler, &r.tokens)?;
                    tokens.extend(r.tokens.iter().map(|&t| LlamaToken::new(t as i32)));
                    Output::resumed(&job.sampling.stop, before, &r.shown).ok_or_else(|| {
                        InferenceError::BadPrompt(
                            "the resumed text is not the text of the resumed tokens".into(),
                        )
                    })?
                }
            };
            Ok((tokens, sampler, out))
        })();
        let (tokens, sampler, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                tx.done(Err(e));
                return Err(());
            }
        };
        let limit = tokens.len() - 1;
        let Some((i, keep)) = self.pick_slot(&tokens, limit) else {
            tx.done(Err(InferenceError::engine("no free sequence slot")));
            return Err(());
        };
        self.stats.cached_prompt_tokens += keep as u64;
        let task = Gen {
            tx,
            deadline: job.deadline,
            started,
            before: job
                .resume
                .as_ref()
                .map(|r| r.shown.clone())
                .unwrap_or_default(),
            format: job.format,
            prompt: job.prompt,
            sampler,
            plain_greedy: sampler::plain_greedy(&job.sampling),
            out,
            ids: Vec::new(),
            logprobs: Vec::new(),
            n_probs: usize::from(job.sampling.n_probs),
            max_tokens: job.sampling.max_tokens,
            cached_tokens: keep as u32,
            tokens,
            next: None,
            held: None,
            logits_at: None,
        };
        self.slots[i].task = Some(Task::Gen(Box::new(task)));
        self.publish_cache();
        Ok(())
    }
}

/// Samples one generating sequence; `Some` when it has ended.
pub(super) fn step_gen(
    model: &llama_cpp_2::model::LlamaModel,
    ctx: &LlamaContext<'_>,
    g: &mut Gen,
    at: i32,
    stats: &mut EngineStats,
) -> Option<Result<FinishReason, InferenceError>> {
    let logprobs = (g.n_probs > 0).then(|| ctx.get_logits_ith(at));
    let token = if g.plain_greedy {
        let token = LlamaToken::new(sampler::argmax(ctx.get_logits_ith(at)) as i32);
        g.sampler.accept(token);
        token
    } else {
        g.sampler.sample(ctx, at)
    };
    let vocab = model.vocab();
    if vocab.is_eog(token) {
        return Some(Ok(FinishReason::EndOfGeneration));
    }
    let id = token.0 as u32;
    g.ids.push(id);
    if g.ids.len() == 1 {
        tracing::debug!(
            prompt_tokens = g.tokens.len(),
            cached_tokens = g.cached_tokens,
            since_admitted_us = g.started.elapsed().as_micros() as u64,
            "first token sampled"
        );
    }
    stats.generated_tokens += 1;
    let lp = logprobs.map(|l| {
        let mut lp = sampler::logprobs(l, id as usize, g.n_probs);
        lp.pieces = std::iter::once(lp.token)
            .chain(lp.top.iter().map(|t| t.0))
            .map(|t| vocab.token_to_piece(LlamaToken::new(t as i32), false, None))
            .collect();
        lp
    });
    if let Some(lp) = &lp {
        g.logprobs.push(lp.clone());
    }
    let step = g.out.push(&vocab.token_to_piece(token, false, None));
    let event = Event::Token {
        id,
        text: step.text,
        logprobs: lp,
    };
    if let Err(e) = g.tx.try_token(event) {
        g.held = Some(e);
    }
    if step.stopped {
        return Some(Ok(FinishReason::Stop));
    }
    if step.full || g.ids.len() as u32 >= g.max_tokens {
        return Some(Ok(FinishReason::MaxTokens));
    }
    g.next = Some(token);
    None
}
