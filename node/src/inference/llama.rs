//! The llama.cpp engine (llama-cpp-2).
//!
//! Models are loaded once and shared by all workers. Each job gets a fresh
//! context sized `--ctx-size`: creation is cheap next to generation, and it
//! keeps jobs independent. llama.cpp's backend can be initialised once per
//! process, so every engine in a process shares one [`LlamaBackend`]; and
//! creating contexts from one model concurrently is unsound, so context
//! creation is serialised per model.

use super::model_file::{self, ModelFileError, ModelSpec};
use super::{Engine, Generation, InferenceError, Job};
use cactus_protocol::fraud::{PositionGap, ReplayFindings, ReplayRequest};
use cactus_protocol::messages::MAX_OUTPUT_BYTES;
use cactus_protocol::{FinishReason, ModelId, PromptFormat};
use llama_cpp_2::LlamaCppError;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Tokens per prefill batch.
const PREFILL_BATCH: usize = 512;

/// Settings of the llama.cpp engine.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// CPU threads per generation.
    pub threads: u32,
    /// Context size in tokens (prompt + output).
    pub ctx_size: u32,
    /// Layers to offload to a GPU, when llama.cpp was built with one.
    pub gpu_layers: u32,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2),
            ctx_size: 4096,
            gpu_layers: 0,
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file failed its checks.
    #[error(transparent)]
    File(#[from] ModelFileError),
    /// llama.cpp's backend did not start.
    #[error("llama.cpp did not start: {0}")]
    Backend(#[source] Arc<LlamaCppError>),
    /// llama.cpp could not load it.
    #[error("llama.cpp could not load {path}: {source}")]
    Llama {
        /// The file.
        path: String,
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    /// Two `--model` flags name the same weights.
    #[error("model {0} is given twice")]
    Duplicate(String),
}

struct Loaded {
    id: ModelId,
    model: LlamaModel,
    /// Serialises context creation (see the module docs).
    new_context: Mutex<()>,
}

/// Serves GGUF models through llama.cpp.
pub struct LlamaEngine {
    models: Vec<Loaded>,
    config: LlamaConfig,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field(
                "models",
                &self.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

/// The process-wide llama.cpp backend. Its start-up error is kept (it
/// cannot be retried: llama.cpp initializes once per process) and handed to
/// every caller.
pub fn backend() -> Result<&'static LlamaBackend, Arc<LlamaCppError>> {
    static BACKEND: OnceLock<Result<LlamaBackend, Arc<LlamaCppError>>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(Arc::new)
        })
        .as_ref()
        .map_err(Arc::clone)
}

impl LlamaEngine {
    /// Checks and loads every model. Blocking: call from a blocking context.
    pub fn load(specs: &[ModelSpec], config: LlamaConfig) -> Result<Arc<Self>, LoadError> {
        let backend = backend().map_err(LoadError::Backend)?;
        let mut models: Vec<Loaded> = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = model_file::verify(spec)?;
            if models.iter().any(|m| m.id.sha256 == id.sha256) {
                return Err(LoadError::Duplicate(spec.path.display().to_string()));
            }
            let started = Instant::now();
            let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
            let model =
                LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|source| {
                    LoadError::Llama {
                        path: spec.path.display().to_string(),
                        source,
                    }
                })?;
            tracing::info!(model = %id.name, sha256 = %id.sha256, load_ms = started.elapsed().as_millis() as u64, "model loaded");
            models.push(Loaded {
                id,
                model,
                new_context: Mutex::new(()),
            });
        }
        Ok(Arc::new(Self { models, config }))
    }

    fn prompt_text(model: &LlamaModel, job: &Job) -> Result<(String, bool), InferenceError> {
        match job.format {
            PromptFormat::Raw => Ok((job.prompt.clone(), true)),
            PromptFormat::Chat => {
                // A model without a template (a base model, like the demo's
                // Gemma 3 270M) is prompted as it is.
                let Ok(tmpl) = model.chat_template(None) else {
                    return Ok((job.prompt.clone(), true));
                };
                let msg = LlamaChatMessage::new("user".into(), job.prompt.clone())
                    .map_err(InferenceError::engine)?;
                let text = model
                    .apply_chat_template(&tmpl, &[msg], true)
                    .map_err(InferenceError::engine)?;
                // llama.cpp's templates leave BOS to the tokenizer, unless the
                // rendered text already starts with it.
                let bos = model.vocab().bos();
                let bos_text = model.vocab().token_to_piece(bos, true, None);
                Ok((text.clone(), !text.as_bytes().starts_with(&bos_text)))
            }
        }
    }
}

/// The sampler a task's parameters ask for: greedy, or top-p then
/// temperature then a seeded draw. Generation and replay use the same one.
fn sampler_for(sampling: &cactus_protocol::SamplingParams) -> LlamaSampler {
    if sampling.is_greedy() {
        LlamaSampler::greedy()
    } else {
        // llama.cpp seeds are 32-bit: fold the task's 64-bit seed.
        let seed = (sampling.seed ^ (sampling.seed >> 32)) as u32;
        LlamaSampler::chain_simple([
            LlamaSampler::top_p(sampling.top_p, 1),
            LlamaSampler::temp(sampling.temperature),
            LlamaSampler::dist(seed),
        ])
    }
}

/// How far `token` is from acceptable at one position, in logits: for greedy
/// decoding the top logit minus the token's; for top-p sampling how far the
/// token's logit falls below the smallest logit inside the nucleus (0 when
/// the token is inside it). The nucleus is computed on the untempered
/// distribution, as the sampler chain's top-p stage sees it.
fn gap(logits: &[f32], token: usize, sampling: &cactus_protocol::SamplingParams) -> f32 {
    let Some(&own) = logits.get(token) else {
        return f32::INFINITY;
    };
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if sampling.is_greedy() || sampling.top_p >= 1.0 {
        return if sampling.is_greedy() { top - own } else { 0.0 };
    }
    // Nucleus: the most likely tokens whose probabilities sum to top_p. It
    // is nearly always among the top few hundred of a 262k vocabulary: sort
    // those first, and the rest only if the mass is not reached.
    let z: f64 = logits.iter().map(|&l| f64::from(l - top).exp()).sum();
    let mut sorted: Vec<f32> = logits.to_vec();
    let head = NUCLEUS_HEAD.min(sorted.len());
    if head < sorted.len() {
        sorted.select_nth_unstable_by(head - 1, |a, b| b.total_cmp(a));
    }
    sorted[..head].sort_unstable_by(|a, b| b.total_cmp(a));
    let head_mass: f64 = sorted[..head]
        .iter()
        .map(|&l| f64::from(l - top).exp() / z)
        .sum();
    if head_mass < f64::from(sampling.top_p) {
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    }
    let mut mass = 0.0f64;
    let mut floor = top;
    for &l in &sorted {
        floor = l;
        mass += f64::from(l - top).exp() / z;
        if mass >= f64::from(sampling.top_p) {
            break;
        }
    }
    (floor - own).max(0.0)
}

/// Candidates sorted first when looking for a top-p nucleus.
const NUCLEUS_HEAD: usize = 1024;

/// Output positions whose logits one replay decode computes: the output
/// layer over a 262k vocabulary makes logits the large buffer.
const REPLAY_CHUNK: usize = 64;

impl LlamaEngine {
    fn replay_inner(
        &self,
        req: &ReplayRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ReplayFindings, InferenceError> {
        let started = Instant::now();
        let sampling = req.sampling();
        let loaded = self
            .models
            .iter()
            .find(|m| m.id.sha256 == req.model())
            .ok_or(InferenceError::UnknownModel(req.model()))?;
        let model = &loaded.model;
        let backend = backend().map_err(|e| InferenceError::Engine(e))?;
        let job = Job {
            model: req.model(),
            prompt: req.prompt.clone(),
            format: req.format(),
            sampling,
        };
        let (text, add_bos) = Self::prompt_text(model, &job)?;
        let vocab = model.vocab();
        let prompt = vocab.tokenize(text.as_bytes(), add_bos, true);
        let n_vocab = model.n_vocab().max(0) as usize;
        let n_ctx = self.config.ctx_size.min(model.n_ctx_train()).max(16);
        let (n_p, n_o) = (prompt.len(), req.tokens.len());
        let stop = req.finish() == FinishReason::EndOfGeneration;
        // Generation fits prompt + max_tokens in the context; the replay
        // feeds prompt + output tokens, no more.
        if n_p == 0 || (n_p + n_o) as u64 > u64::from(n_ctx) {
            return Err(InferenceError::PromptTooLong {
                prompt_tokens: n_p as u32,
                max_tokens: n_o as u32,
                n_ctx,
            });
        }
        // The whole sequence; an id outside the vocabulary is fed as token 0
        // and can never pass (its gap is infinite).
        let seq: Vec<LlamaToken> = prompt
            .iter()
            .copied()
            .chain(
                req.tokens
                    .iter()
                    .map(|&t| LlamaToken::new(if (t as usize) < n_vocab { t as i32 } else { 0 })),
            )
            .collect();
        // Logits at position p predict the token at p + 1: from the last
        // prompt token to the last output token (which predicts the stop).
        let first = n_p - 1;
        let last = if stop {
            n_p + n_o - 1
        } else {
            n_p + n_o - 1 - usize::from(n_o > 0)
        };
        let wants_logits = |p: usize| p >= first && p <= last && (n_o > 0 || stop);

        let mut ctx = self.context(loaded, backend, n_ctx)?;
        let mut sampler = sampler_for(&sampling);
        let eog: Vec<usize> = (0..n_vocab)
            .filter(|&t| vocab.is_eog(LlamaToken::new(t as i32)))
            .collect();

        let mut positions = 0u32;
        let mut mismatches = 0u32;
        let mut max_gap = 0.0f32;
        let mut worst: Vec<PositionGap> = Vec::new();
        let mut stop_gap = None;
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let mut p = 0usize;
        while p < seq.len() {
            // Big chunks for the prompt, small ones where logits are kept.
            let size = if p < first {
                (first - p).min(PREFILL_BATCH)
            } else {
                REPLAY_CHUNK
            };
            let end = (p + size).min(seq.len());
            batch.clear();
            for (q, &tok) in seq.iter().enumerate().take(end).skip(p) {
                batch
                    .add(tok, q as i32, &[0], wants_logits(q))
                    .map_err(InferenceError::engine)?;
            }
            ctx.decode(&mut batch).map_err(InferenceError::engine)?;
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
            for q in p..end {
                if !wants_logits(q) {
                    continue;
                }
                let i = (q - p) as i32;
                let k = q - first;
                let logits = ctx.get_logits_ith(i);
                if k < n_o {
                    let token = req.tokens[k];
                    let pick = sampler.sample(&ctx, i);
                    sampler.accept(seq[q + 1]);
                    positions += 1;
                    if pick.0 as u32 == token && (token as usize) < n_vocab {
                        continue;
                    }
                    mismatches += 1;
                    let g = if (token as usize) < n_vocab {
                        gap(logits, token as usize, &sampling)
                    } else {
                        f32::INFINITY
                    };
                    if g > max_gap || g.is_nan() {
                        max_gap = if g.is_nan() { f32::INFINITY } else { g };
                    }
                    worst.push(PositionGap {
                        position: k as u32,
                        token,
                        expected: pick.0 as u32,
                        gap: g,
                    });
                    worst.sort_by(|a, b| b.gap.total_cmp(&a.gap));
                    worst.truncate(cactus_protocol::fraud::MAX_WORST);
                } else if stop {
                    // The best end-of-generation token.
                    let g = eog
                        .iter()
                        .map(|&t| gap(logits, t, &sampling))
                        .fold(f32::INFINITY, f32::min);
                    stop_gap = Some(g);
                }
            }
            p = end;
        }

        // The tokens must decode to the text, exactly as generation builds it.
        let mut out: Vec<u8> = Vec::new();
        for &t in &req.tokens {
            if (t as usize) >= n_vocab {
                break;
            }
            out.extend_from_slice(&vocab.token_to_piece(LlamaToken::new(t as i32), false, None));
            if out.len() >= MAX_OUTPUT_BYTES {
                break;
            }
        }
        let mut decoded = String::from_utf8_lossy(&out).into_owned();
        cactus_protocol::messages::truncate_utf8(&mut decoded, MAX_OUTPUT_BYTES);
        Ok(ReplayFindings {
            prompt_tokens: n_p as u32,
            positions,
            mismatches,
            max_gap,
            worst,
            text_matches: decoded == req.text,
            stop_gap,
            compute_ms: started.elapsed().as_millis() as u64,
        })
    }
}

impl LlamaEngine {
    /// A fresh context of `n_ctx` tokens on `loaded`'s model, with this
    /// engine's threads; creation is serialised per model.
    fn context<'m>(
        &self,
        loaded: &'m Loaded,
        backend: &LlamaBackend,
        n_ctx: u32,
    ) -> Result<llama_cpp_2::context::LlamaContext<'m>, InferenceError> {
        let threads = self.config.threads.max(1) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(PREFILL_BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let _serial = loaded
            .new_context
            .lock()
            .map_err(|e| InferenceError::engine(e.to_string()))?;
        loaded
            .model
            .new_context(backend, params)
            .map_err(InferenceError::engine)
    }
}

impl Engine for LlamaEngine {
    fn replay(
        &self,
        request: &ReplayRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ReplayFindings, InferenceError> {
        self.replay_inner(request, cancelled)
    }

    fn models(&self) -> Vec<ModelId> {
        self.models.iter().map(|m| m.id.clone()).collect()
    }

    fn generate(
        &self,
        job: &Job,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, InferenceError> {
        let started = Instant::now();
        let loaded = self
            .models
            .iter()
            .find(|m| m.id.sha256 == job.model)
            .ok_or(InferenceError::UnknownModel(job.model))?;
        let model = &loaded.model;
        let backend = backend().map_err(|e| InferenceError::Engine(e))?;

        let n_ctx = self.config.ctx_size.min(model.n_ctx_train()).max(16);
        let (text, add_bos) = Self::prompt_text(model, job)?;
        let vocab = model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), add_bos, true);
        let prompt_tokens = tokens.len() as u32;
        let max_tokens = job.sampling.max_tokens;
        if tokens.is_empty() || prompt_tokens.saturating_add(max_tokens) > n_ctx {
            return Err(InferenceError::PromptTooLong {
                prompt_tokens,
                max_tokens,
                n_ctx,
            });
        }

        let mut ctx = self.context(loaded, backend, n_ctx)?;

        // Prefill in batches; logits only for the last prompt token.
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let last = tokens.len() - 1;
        for (chunk_idx, chunk) in tokens.chunks(PREFILL_BATCH).enumerate() {
            batch.clear();
            for (i, &tok) in chunk.iter().enumerate() {
                let pos = chunk_idx * PREFILL_BATCH + i;
                batch
                    .add(tok, pos as i32, &[0], pos == last)
                    .map_err(InferenceError::engine)?;
            }
            ctx.decode(&mut batch).map_err(InferenceError::engine)?;
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
        }

        let mut sampler = sampler_for(&job.sampling);

        let mut out: Vec<u8> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut pos = tokens.len() as i32;
        let mut logits_idx = batch.n_tokens() - 1;
        let mut output_tokens = 0u32;
        let mut finish = FinishReason::MaxTokens;
        while output_tokens < max_tokens {
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
            let token = sampler.sample(&ctx, logits_idx);
            sampler.accept(token);
            if vocab.is_eog(token) {
                finish = FinishReason::EndOfGeneration;
                break;
            }
            output_tokens += 1;
            ids.push(token.0 as u32);
            out.extend_from_slice(&vocab.token_to_piece(token, false, None));
            if out.len() >= MAX_OUTPUT_BYTES || output_tokens == max_tokens {
                break;
            }
            batch.clear();
            batch
                .add(token, pos, &[0], true)
                .map_err(InferenceError::engine)?;
            pos += 1;
            logits_idx = 0;
            ctx.decode(&mut batch).map_err(InferenceError::engine)?;
        }
        let mut text = String::from_utf8_lossy(&out).into_owned();
        cactus_protocol::messages::truncate_utf8(&mut text, MAX_OUTPUT_BYTES);
        Ok(Generation {
            text,
            tokens: ids,
            prompt_tokens,
            output_tokens,
            finish,
            compute: started.elapsed(),
        })
    }
}

/// Re-quantizes a GGUF model with llama.cpp's own quantizer to Q2_K: a
/// smaller, cheaper and worse model. An orchestrator that serves such a file
/// while advertising the original is the fraud that spot checks catch; tests
/// and `cargo bench --bench replay` build one with this. Blocking.
pub fn quantize_q2k(
    input: &std::path::Path,
    output: &std::path::Path,
    threads: u32,
) -> Result<(), QuantizeError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    backend().map_err(QuantizeError::Backend)?;
    let inp = CString::new(input.as_os_str().as_bytes())?;
    let out = CString::new(output.as_os_str().as_bytes())?;
    #[allow(unsafe_code)]
    // SAFETY: llama.cpp's C API: default parameters by value, then two
    // NUL-terminated paths and a pointer to those parameters, all alive for
    // the duration of the call, which neither keeps nor frees.
    let rc = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = threads.max(1) as i32;
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q2_K;
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(QuantizeError::Failed {
            path: input.to_path_buf(),
            code: rc,
        })
    }
}

/// Why [`quantize_q2k`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// llama.cpp's backend did not start.
    #[error("llama.cpp did not start: {0}")]
    Backend(#[source] Arc<LlamaCppError>),
    /// A path holds a NUL byte, which C cannot take.
    #[error("a model path holds a NUL byte")]
    Path(#[from] std::ffi::NulError),
    /// llama.cpp's quantizer returned an error code.
    #[error("llama.cpp could not quantize {} (code {code})", path.display())]
    Failed {
        /// The input model.
        path: std::path::PathBuf,
        /// llama.cpp's return code.
        code: u32,
    },
}

#[cfg(test)]
mod tests;
