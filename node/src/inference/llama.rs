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
use cactus_protocol::messages::MAX_OUTPUT_BYTES;
use cactus_protocol::{FinishReason, ModelId, PromptFormat};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
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
    /// llama.cpp could not load it.
    #[error("llama.cpp could not load {path}: {message}")]
    Llama {
        /// The file.
        path: String,
        /// llama.cpp's error.
        message: String,
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

/// The process-wide llama.cpp backend.
pub fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl LlamaEngine {
    /// Checks and loads every model. Blocking: call from a blocking context.
    pub fn load(specs: &[ModelSpec], config: LlamaConfig) -> Result<Arc<Self>, LoadError> {
        let backend = backend().map_err(|message| LoadError::Llama {
            path: String::new(),
            message,
        })?;
        let mut models: Vec<Loaded> = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = model_file::verify(spec)?;
            if models.iter().any(|m| m.id.sha256 == id.sha256) {
                return Err(LoadError::Duplicate(spec.path.display().to_string()));
            }
            let started = Instant::now();
            let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
            let model = LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|e| {
                LoadError::Llama {
                    path: spec.path.display().to_string(),
                    message: e.to_string(),
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
                let engine_err = |e: &dyn std::fmt::Display| InferenceError::Engine(e.to_string());
                // A model without a template (a base model, like the demo's
                // Gemma 3 270M) is prompted as it is.
                let Ok(tmpl) = model.chat_template(None) else {
                    return Ok((job.prompt.clone(), true));
                };
                let msg = LlamaChatMessage::new("user".into(), job.prompt.clone())
                    .map_err(|e| engine_err(&e))?;
                let text = model
                    .apply_chat_template(&tmpl, &[msg], true)
                    .map_err(|e| engine_err(&e))?;
                // llama.cpp's templates leave BOS to the tokenizer, unless the
                // rendered text already starts with it.
                let bos = model.vocab().bos();
                let bos_text = model.vocab().token_to_piece(bos, true, None);
                Ok((text.clone(), !text.as_bytes().starts_with(&bos_text)))
            }
        }
    }
}

impl Engine for LlamaEngine {
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
        let backend = backend().map_err(InferenceError::Engine)?;
        let err = |e: &dyn std::fmt::Display| InferenceError::Engine(e.to_string());

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

        let threads = self.config.threads.max(1) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(PREFILL_BATCH as u32)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = {
            let _serial = loaded.new_context.lock().map_err(|e| err(&e))?;
            model.new_context(backend, params).map_err(|e| err(&e))?
        };

        // Prefill in batches; logits only for the last prompt token.
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let last = tokens.len() - 1;
        for (chunk_idx, chunk) in tokens.chunks(PREFILL_BATCH).enumerate() {
            batch.clear();
            for (i, &tok) in chunk.iter().enumerate() {
                let pos = chunk_idx * PREFILL_BATCH + i;
                batch
                    .add(tok, pos as i32, &[0], pos == last)
                    .map_err(|e| err(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| err(&e))?;
            if cancelled() {
                return Err(InferenceError::Cancelled);
            }
        }

        let mut sampler = if job.sampling.is_greedy() {
            LlamaSampler::greedy()
        } else {
            // llama.cpp seeds are 32-bit: fold the task's 64-bit seed.
            let seed = (job.sampling.seed ^ (job.sampling.seed >> 32)) as u32;
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(job.sampling.top_p, 1),
                LlamaSampler::temp(job.sampling.temperature),
                LlamaSampler::dist(seed),
            ])
        };

        let mut out: Vec<u8> = Vec::new();
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
            out.extend_from_slice(&vocab.token_to_piece(token, false, None));
            if out.len() >= MAX_OUTPUT_BYTES || output_tokens == max_tokens {
                break;
            }
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(|e| err(&e))?;
            pos += 1;
            logits_idx = 0;
            ctx.decode(&mut batch).map_err(|e| err(&e))?;
        }
        let mut text = String::from_utf8_lossy(&out).into_owned();
        cactus_protocol::messages::truncate_utf8(&mut text, MAX_OUTPUT_BYTES);
        Ok(Generation {
            text,
            prompt_tokens,
            output_tokens,
            finish,
            compute: started.elapsed(),
        })
    }
}
