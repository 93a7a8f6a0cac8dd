//! A replay: the task's prompt and output fed as one teacher-forced
//! sequence, each output position checked against what the sampler could
//! pick (see [`cactus_protocol::fraud`]).

use super::super::super::InferenceError;
use super::super::super::Job;
use super::super::super::text::stop_position;
use super::super::sampler;
use super::{Loop, Task};
use cactus_protocol::FinishReason;
use cactus_protocol::fraud::{MAX_WORST, PositionGap, ReplayFindings, ReplayRequest};
use cactus_protocol::messages::{MAX_OUTPUT_BYTES, truncate_utf8};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

pub(super) struct Replay {
    pub(super) request: Box<ReplayRequest>,
    pub(super) reply: oneshot::Sender<Result<ReplayFindings, InferenceError>>,
    pub(super) started: Instant,
    /// Prompt then output tokens (out-of-vocabulary ids fed as 0).
    pub(super) seq: Vec<LlamaToken>,
    pub(super) n_prompt: usize,
    /// First and last positions whose logits are checked.
    pub(super) first: usize,
    pub(super) last: usize,
    pub(super) shape: Option<LlamaSampler>,
    pub(super) choose: LlamaSampler,
    pub(super) eog: Arc<Vec<usize>>,
    pub(super) positions: u32,
    pub(super) mismatches: u32,
    pub(super) max_gap: f32,
    pub(super) worst: Vec<PositionGap>,
    pub(super) stop_gap: Option<f32>,
    /// Positions in the current batch whose logits belong to this replay.
    pub(super) logits_at: Vec<(usize, i32)>,
}

impl Loop<'_> {
    pub(super) fn admit_replay(
        &mut self,
        request: Box<ReplayRequest>,
        reply: oneshot::Sender<Result<ReplayFindings, InferenceError>>,
    ) -> Result<(), ()> {
        let started = Instant::now();
        let model = &self.loaded.model;
        let prepared = (|| {
            let job = Job {
                model: request.model(),
                prompt: request.prompt.clone(),
                format: request.format(),
                sampling: request.sampling().clone(),
                deadline: None,
                resume: None,
            };
            let (text, add_bos) = super::super::prompt_text(model, &job)?;
            let prompt = model.vocab().tokenize(text.as_bytes(), add_bos, true);
            let n_vocab = model.n_vocab().max(0) as usize;
            let (n_p, n_o) = (prompt.len(), request.tokens.len());
            if n_p == 0 || (n_p + n_o) as u64 > u64::from(self.n_ctx_seq) {
                return Err(InferenceError::PromptTooLong {
                    prompt_tokens: n_p as u32,
                    max_tokens: n_o as u32,
                    n_ctx: self.n_ctx_seq,
                });
            }
            // An id outside the vocabulary is fed as token 0 and can never
            // pass (its gap is infinite).
            let seq: Vec<LlamaToken> =
                prompt
                    .iter()
                    .copied()
                    .chain(request.tokens.iter().map(|&t| {
                        LlamaToken::new(if (t as usize) < n_vocab { t as i32 } else { 0 })
                    }))
                    .collect();
            let (shape, choose) = sampler::replay(model, &job.sampling)?;
            Ok((seq, n_p, shape, choose))
        })();
        let (seq, n_p, shape, choose) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Err(());
            }
        };
        let n_o = request.tokens.len();
        let stop = request.finish() == FinishReason::EndOfGeneration;
        // Logits at position p predict the token at p + 1: from the last
        // prompt token to the last output token (which predicts the stop).
        let first = n_p - 1;
        let last = if stop {
            n_p + n_o - 1
        } else {
            n_p + n_o - 1 - usize::from(n_o > 0)
        };
        let Some((i, _keep)) = self.pick_slot(&seq, first) else {
            let _ = reply.send(Err(InferenceError::engine("no free sequence slot")));
            return Err(());
        };
        let replay = Replay {
            request,
            reply,
            started,
            seq,
            n_prompt: n_p,
            first,
            last,
            shape,
            choose,
            eog: Arc::clone(&self.eog),
            positions: 0,
            mismatches: 0,
            max_gap: 0.0,
            worst: Vec::new(),
            stop_gap: None,
            logits_at: Vec::new(),
        };
        self.slots[i].task = Some(Task::Replay(Box::new(replay)));
        Ok(())
    }
}

/// Checks the output positions of a replay decoded in the last batch.
pub(super) fn step_replay(
    model: &llama_cpp_2::model::LlamaModel,
    ctx: &LlamaContext<'_>,
    r: &mut Replay,
) {
    let n_o = r.request.tokens.len();
    let n_vocab = model.n_vocab().max(0) as usize;
    let sampling = r.request.sampling();
    let stop = r.request.finish() == FinishReason::EndOfGeneration;
    for &(q, i) in &std::mem::take(&mut r.logits_at) {
        let k = q - r.first;
        // The shaped logits by token id; the model's own when nothing
        // shapes them (no copy of the vocabulary-sized row then).
        let shaped: Option<Vec<f32>> = r.shape.as_mut().map(|shape| {
            let mut arr = ctx.token_data_array_ith(i);
            arr.apply_sampler(shape);
            let mut v = vec![f32::NEG_INFINITY; n_vocab];
            for d in &arr.data {
                if let Some(l) = v.get_mut(d.id().0 as usize) {
                    *l = d.logit();
                }
            }
            v
        });
        let logits: &[f32] = shaped.as_deref().unwrap_or_else(|| ctx.get_logits_ith(i));
        if k < n_o {
            let token = r.request.tokens[k];
            let pick = if sampling.is_greedy() {
                argmax(logits)
            } else {
                let mut arr = LlamaTokenDataArray::from_iter(
                    logits
                        .iter()
                        .enumerate()
                        .map(|(t, &l)| LlamaTokenData::new(LlamaToken::new(t as i32), l, 0.0)),
                    false,
                );
                arr.apply_sampler(&mut r.choose);
                arr.selected_token().map_or(u32::MAX, |t| t.0 as u32)
            };
            // A token the grammar forbids here would make llama.cpp throw
            // as it is accepted; it is a mismatch anyway (its gap is
            // infinite), so the shaping stages never see it.
            let next = r.seq[q + 1];
            let allowed = logits
                .get(next.0 as usize)
                .is_some_and(|&l| l != f32::NEG_INFINITY);
            if let Some(shape) = &mut r.shape
                && allowed
            {
                shape.accept(next);
            }
            r.choose.accept(r.seq[q + 1]);
            r.positions += 1;
            if pick == token && (token as usize) < n_vocab {
                continue;
            }
            r.mismatches += 1;
            let g = if (token as usize) < n_vocab {
                sampler::gap(logits, token as usize, sampling)
            } else {
                f32::INFINITY
            };
            if g > r.max_gap || g.is_nan() {
                r.max_gap = if g.is_nan() { f32::INFINITY } else { g };
            }
            r.worst.push(PositionGap {
                position: k as u32,
                token,
                expected: pick,
                gap: g,
            });
            r.worst.sort_by(|a, b| b.gap.total_cmp(&a.gap));
            r.worst.truncate(MAX_WORST);
        } else if stop {
            // The best end-of-generation token.
            let g = r
                .eog
                .iter()
                .map(|&t| sampler::gap(logits, t, sampling))
                .fold(f32::INFINITY, f32::min);
            r.stop_gap = Some(g);
        }
    }
}

/// The first most likely token (what llama.cpp's greedy sampler picks).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (t, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (t, l);
        }
    }
    best.0 as u32
}

/// A replay's findings once every position is checked. The tokens must
/// decode to the text exactly as generation builds it.
pub(super) fn findings(
    model: &llama_cpp_2::model::LlamaModel,
    started: Instant,
    r: &Replay,
) -> ReplayFindings {
    let vocab = model.vocab();
    let n_vocab = model.n_vocab().max(0) as usize;
    let mut out: Vec<u8> = Vec::new();
    let mut before_last = 0usize;
    for &t in &r.request.tokens {
        if (t as usize) >= n_vocab {
            break;
        }
        before_last = out.len();
        out.extend_from_slice(&vocab.token_to_piece(LlamaToken::new(t as i32), false, None));
        if out.len() >= MAX_OUTPUT_BYTES {
            break;
        }
    }
    let sampling = r.request.sampling();
    let text_matches = if r.request.finish() == FinishReason::Stop {
        // The text ends where the first stop string begins, and only the
        // last token completed it (generation would have stopped earlier).
        stop_position(&out, &sampling.stop).is_some_and(|at| {
            at == r.request.text.len()
                && out.starts_with(r.request.text.as_bytes())
                && stop_position(&out[..before_last], &sampling.stop).is_none()
        })
    } else {
        let mut decoded = String::from_utf8_lossy(&out).into_owned();
        truncate_utf8(&mut decoded, MAX_OUTPUT_BYTES);
        decoded == r.request.text
    };
    ReplayFindings {
        prompt_tokens: r.n_prompt as u32,
        positions: r.positions,
        mismatches: r.mismatches,
        max_gap: r.max_gap,
        worst: r.worst.clone(),
        text_matches,
        stop_gap: r.stop_gap,
        compute_ms: started.elapsed().as_millis() as u64,
    }
}
