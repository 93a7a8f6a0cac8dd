//! The llama.cpp engine (llama-cpp-2): one decode loop per model, batching
//! every running sequence into shared llama.cpp batches (see [`batch`]),
//! all stepped in turn by the engine's one decode thread (see [`driver`]
//! for why one).
//!
//! llama.cpp's backend can be initialised once per process, so every engine
//! in a process shares one [`LlamaBackend`]. Creating contexts from one model
//! concurrently is unsound; each model gets exactly one context, created by
//! the decode thread while [`LlamaEngine::load`] waits.

mod batch;
mod driver;
mod sampler;

use super::model_file::{self, ModelFileError, ModelSpec};
use super::{
    Admission, Engine, EngineStats, InferenceError, Job, Rejected, ReplayReceiver, Stream,
};
use batch::{Shared, Work};
use cactus_protocol::fraud::ReplayRequest;
use cactus_protocol::{CachedPrefix, ModelId, PromptFormat};
use driver::Doorbell;
use llama_cpp_2::LlamaCppError;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::oneshot;

/// Settings of the llama.cpp engine.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// CPU threads that compute each batch (every model's in turn, all
    /// its sequences together).
    pub threads: u32,
    /// Context of each sequence slot in tokens (prompt + output); a model's
    /// KV cache holds `slots × ctx_size` tokens.
    pub ctx_size: u32,
    /// Layers to offload to a GPU, when llama.cpp was built with one.
    pub gpu_layers: u32,
    /// Sequences each model runs at once, in shared batches.
    pub slots: usize,
    /// Work waiting for a slot, per model, at most.
    pub queue: usize,
    /// Most tokens one decode step carries (llama.cpp's `n_batch`).
    pub batch_size: u32,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2),
            ctx_size: 4096,
            gpu_layers: 0,
            slots: 4,
            queue: 4,
            batch_size: 512,
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
    /// llama.cpp could not make the model's context (usually memory).
    #[error("llama.cpp could not create a context for {model}: {source}")]
    Context {
        /// The model.
        model: String,
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    /// The decode loop's thread did not start.
    #[error("could not start the decode thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Two `--model` flags name the same weights.
    #[error("model {0} is given twice")]
    Duplicate(String),
}

/// A loaded model.
pub(crate) struct Loaded {
    id: ModelId,
    model: LlamaModel,
}

/// One model's loop, seen from outside.
struct Worker {
    id: ModelId,
    tx: Mutex<Option<SyncSender<Work>>>,
    admission: Arc<Admission>,
    shared: Arc<Shared>,
}

/// Serves GGUF models through llama.cpp.
pub struct LlamaEngine {
    workers: Vec<Worker>,
    config: LlamaConfig,
    /// Wakes the decode thread.
    bell: Arc<Doorbell>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field(
                "models",
                &self.workers.iter().map(|m| &m.id).collect::<Vec<_>>(),
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

/// Says which devices llama.cpp found, once per process.
fn log_devices() {
    static LOGGED: OnceLock<()> = OnceLock::new();
    LOGGED.get_or_init(|| {
        for d in llama_cpp_2::list_llama_ggml_backend_devices() {
            tracing::info!(
                backend = %d.backend,
                device = %d.name,
                description = %d.description,
                memory_mib = d.memory_total / (1024 * 1024),
                "llama.cpp device"
            );
        }
    });
}

impl LlamaEngine {
    /// Checks and loads every model and starts its decode loop. Blocking:
    /// call from a blocking context.
    pub fn load(specs: &[ModelSpec], config: LlamaConfig) -> Result<Arc<Self>, LoadError> {
        let backend = backend().map_err(LoadError::Backend)?;
        log_devices();
        let mut loaded: Vec<Loaded> = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = model_file::verify(spec)?;
            if loaded.iter().any(|m| m.id.sha256 == id.sha256) {
                return Err(LoadError::Duplicate(spec.path.display().to_string()));
            }
            let started = Instant::now();
            let name = id.name.clone();
            let mut last = Instant::now();
            let params = LlamaModelParams::default()
                .with_n_gpu_layers(config.gpu_layers)
                .with_progress_callback(move |p| {
                    if last.elapsed() >= model_file::PROGRESS_EVERY {
                        last = Instant::now();
                        tracing::info!(model = %name, "loading: {:.0} %", p * 100.0);
                    }
                    true
                });
            let model =
                LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|source| {
                    LoadError::Llama {
                        path: spec.path.display().to_string(),
                        source,
                    }
                })?;
            tracing::info!(model = %id.name, sha256 = %id.sha256, load_ms = started.elapsed().as_millis() as u64, gpu_layers = config.gpu_layers, "model loaded");
            loaded.push(Loaded { id, model });
        }
        // Each model's queue and gauges, then the one thread that decodes
        // them all.
        let bell = Arc::new(Doorbell::default());
        let mut workers = Vec::with_capacity(loaded.len());
        let mut inputs = Vec::with_capacity(loaded.len());
        for model in &loaded {
            let admission = Arc::new(Admission::new(config.slots, config.queue));
            let shared = Arc::new(Shared::default());
            let (tx, rx) = mpsc::sync_channel::<Work>(admission.slots() + config.queue);
            workers.push(Worker {
                id: model.id.clone(),
                tx: Mutex::new(Some(tx)),
                admission: Arc::clone(&admission),
                shared: Arc::clone(&shared),
            });
            inputs.push(driver::Input {
                rx,
                admission,
                shared,
            });
        }
        let thread = driver::spawn(loaded, inputs, &config, backend, Arc::clone(&bell))?;
        Ok(Arc::new(Self {
            workers,
            config,
            bell,
            thread: Mutex::new(Some(thread)),
        }))
    }

    fn worker(&self, model: &cactus_protocol::ModelHash) -> Option<&Worker> {
        self.workers.iter().find(|w| &w.id.sha256 == model)
    }

    fn send(&self, worker: &Worker, work: Work) -> Result<(), Rejected> {
        let guard = worker.tx.lock().map_err(|_| Rejected::Stopped)?;
        let tx = guard.as_ref().ok_or(Rejected::Stopped)?;
        worker.admission.take()?;
        tx.try_send(work).map_err(|e| {
            worker.admission.release();
            match e {
                TrySendError::Full(_) => Rejected::Busy,
                TrySendError::Disconnected(_) => Rejected::Stopped,
            }
        })?;
        self.bell.ring();
        Ok(())
    }
}

/// One turn of a [`PromptFormat::Messages`] prompt.
#[derive(serde::Deserialize)]
struct Turn {
    role: String,
    content: String,
}

/// The text a job's prompt is tokenized from, and whether the tokenizer
/// adds BOS.
fn prompt_text(model: &LlamaModel, job: &Job) -> Result<(String, bool), InferenceError> {
    let turns: Vec<(String, String)> = match job.format {
        PromptFormat::Raw => return Ok((job.prompt.clone(), true)),
        PromptFormat::Chat => vec![("user".into(), job.prompt.clone())],
        PromptFormat::Messages => {
            let turns: Vec<Turn> = serde_json::from_str(&job.prompt)
                .map_err(|e| InferenceError::BadPrompt(e.to_string()))?;
            if turns.is_empty() {
                return Err(InferenceError::BadPrompt("no chat turns".into()));
            }
            turns.into_iter().map(|t| (t.role, t.content)).collect()
        }
    };
    // A model without a template (a base model, like the demo's Gemma 3
    // 270M) gets the turns as plain lines, ending with the assistant's cue.
    let Ok(tmpl) = model.chat_template(None) else {
        if job.format == PromptFormat::Chat {
            return Ok((job.prompt.clone(), true));
        }
        let mut text = String::new();
        for (role, content) in &turns {
            text.push_str(&format!("{role}: {content}\n"));
        }
        text.push_str("assistant:");
        return Ok((text, true));
    };
    let msgs = turns
        .into_iter()
        .map(|(role, content)| LlamaChatMessage::new(role, content))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InferenceError::BadPrompt(e.to_string()))?;
    let text = model
        .apply_chat_template(&tmpl, &msgs, true)
        .map_err(InferenceError::engine)?;
    // llama.cpp's templates leave BOS to the tokenizer, unless the rendered
    // text already starts with it.
    let bos = model.vocab().bos();
    let bos_text = model.vocab().token_to_piece(bos, true, None);
    Ok((text.clone(), !text.as_bytes().starts_with(&bos_text)))
}

impl Engine for LlamaEngine {
    fn models(&self) -> Vec<ModelId> {
        self.workers.iter().map(|w| w.id.clone()).collect()
    }

    fn slots(&self) -> usize {
        self.workers.iter().map(|w| w.admission.slots()).sum()
    }

    fn free_slots(&self) -> usize {
        self.workers.iter().map(|w| w.admission.free_slots()).sum()
    }

    fn has_room(&self) -> bool {
        self.workers.iter().any(|w| w.admission.has_room())
    }

    fn submit(&self, job: Job) -> Result<Stream, Rejected> {
        let (tx, stream) = Stream::channel();
        match self.worker(&job.model) {
            Some(w) => self.send(w, Work::Generate(job, tx))?,
            None => tx.done(Err(InferenceError::UnknownModel(job.model))),
        }
        Ok(stream)
    }

    fn replay(&self, request: Box<ReplayRequest>) -> Result<ReplayReceiver, Rejected> {
        let (reply, rx) = oneshot::channel();
        match self.worker(&request.model()) {
            Some(w) => self.send(w, Work::Replay(request, reply))?,
            None => {
                let _ = reply.send(Err(InferenceError::UnknownModel(request.model())));
            }
        }
        Ok(rx)
    }

    fn cache(&self) -> Vec<CachedPrefix> {
        self.workers
            .iter()
            .flat_map(|w| w.shared.cache.lock().map(|c| c.clone()).unwrap_or_default())
            .take(cactus_protocol::messages::MAX_CACHE_ENTRIES)
            .collect()
    }

    fn stats(&self) -> EngineStats {
        let mut total = EngineStats::default();
        for w in &self.workers {
            let s = w.shared.stats.lock().map(|s| *s).unwrap_or_default();
            total.active += s.active;
            total.queued += s.queued;
            total.steps += s.steps;
            total.shared_steps += s.shared_steps;
            total.max_batch_sequences = total.max_batch_sequences.max(s.max_batch_sequences);
            total.generated_tokens += s.generated_tokens;
            total.cached_prompt_tokens += s.cached_prompt_tokens;
        }
        total
    }

    fn shutdown(&self) {
        for w in &self.workers {
            if let Ok(mut tx) = w.tx.lock() {
                tx.take();
            }
        }
        self.bell.ring();
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.shutdown();
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
