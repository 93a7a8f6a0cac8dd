//! Generation throughput through the mesh next to llama.cpp called directly.
//!
//! Three figures from one run, same model, prompt, threads and greedy
//! decoding, runs interleaved so that the machine's noise hits all alike:
//!
//! - `direct`: a plain llama-cpp-2 loop written here (load once; per run a new
//!   context, prefill, sample, detokenize) — the anchor;
//! - `engine`: Cactus's engine called in-process (no network);
//! - `mesh`: a client submitting to a router that hands the task to an
//!   orchestrator, all over loopback TCP + Noise + Yamux, timed at the client.
//!
//! Tokens/s = output tokens / wall time of the whole request. Target:
//! mesh / direct >= 0.95.
//!
//! ```text
//! cargo bench -p cactus-node --bench mesh_throughput
//! BENCH_MODEL=path.gguf BENCH_THREADS=2 BENCH_RUNS=7 BENCH_TOKENS=128 cargo bench ...
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/mod.rs"]
mod support;
use cactus_node::client;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, backend};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::inference::{Blocking, Engine, Job};
use cactus_protocol::{PromptFormat, SamplingParams, TaskSpec};
use cluster::Cluster;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;
use support::{env_or, median, model_path};

const PROMPT: &str = "Write a long story about a cactus that learns to walk across the desert.";
const CTX: u32 = 4096;

/// The anchor: llama-cpp-2 used directly. Returns (output tokens, seconds).
fn direct(model: &LlamaModel, threads: i32, max_tokens: u32) -> (u32, f64) {
    let started = Instant::now();
    let backend = backend().unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CTX))
        .with_n_batch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(backend, params).unwrap();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(PROMPT.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i == tokens.len() - 1)
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let mut pos = tokens.len() as i32;
    let mut out = Vec::new();
    let mut n = 0;
    let mut idx = batch.n_tokens() - 1;
    while n < max_tokens {
        let t = sampler.sample(&ctx, idx);
        sampler.accept(t);
        if vocab.is_eog(t) {
            break;
        }
        n += 1;
        out.extend_from_slice(&vocab.token_to_piece(t, false, None));
        if n == max_tokens {
            break;
        }
        batch.clear();
        batch.add(t, pos, &[0], true).unwrap();
        pos += 1;
        idx = 0;
        ctx.decode(&mut batch).unwrap();
    }
    std::hint::black_box(String::from_utf8_lossy(&out));
    (n, started.elapsed().as_secs_f64())
}

fn main() {
    let threads: u32 = env_or("BENCH_THREADS", 2);
    let runs: usize = env_or("BENCH_RUNS", 7);
    let max_tokens: u32 = env_or("BENCH_TOKENS", 128);
    let path = model_path();
    assert!(
        path.exists(),
        "no model at {}: run scripts/fetch-model.sh or set BENCH_MODEL",
        path.display()
    );

    let engine = LlamaEngine::load(
        &[ModelSpec {
            path: path.clone(),
            expected_sha256: None,
        }],
        LlamaConfig {
            threads,
            ctx_size: CTX,
            gpu_layers: 0,
            ..LlamaConfig::default()
        },
    )
    .unwrap();
    let raw = LlamaModel::load_from_file(backend().unwrap(), &path, &LlamaModelParams::default())
        .unwrap();
    let sampling = SamplingParams {
        max_tokens,
        ..SamplingParams::default()
    };
    let job = Job {
        model: engine.models()[0].sha256,
        prompt: PROMPT.into(),
        format: PromptFormat::Raw,
        sampling: sampling.clone(),
        deadline: None,
        resume: None,
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = rt.block_on(Cluster::start(
        dir.path(),
        engine.clone() as Arc<dyn Engine>,
        false,
    ));
    let mesh = |spec: TaskSpec| {
        rt.block_on(async {
            let started = Instant::now();
            let r = client::submit_to(nodes.client.network(), nodes.router.peer_id(), spec)
                .await
                .unwrap();
            (
                r.receipt.body.output_tokens,
                started.elapsed().as_secs_f64(),
            )
        })
    };
    let spec = TaskSpec {
        model: None,
        prompt: PROMPT.into(),
        format: PromptFormat::Raw,
        sampling: sampling.clone(),
        max_price_per_unit: None,
        request_id: None,
    };

    // Warm-up: one of each, not counted.
    direct(&raw, threads as i32, max_tokens);
    engine.generate(&job).unwrap();
    mesh(spec.clone());

    let (mut d, mut e, mut m) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    for i in 0..runs {
        // Rotate the order so that no figure always runs first or last.
        for which in (0..3).map(|k| (i + k) % 3) {
            match which {
                0 => {
                    let (n, s) = direct(&raw, threads as i32, max_tokens);
                    d.push(f64::from(n) / s);
                    tokens = n;
                }
                1 => {
                    let t = Instant::now();
                    let g = engine.generate(&job).unwrap();
                    e.push(f64::from(g.output_tokens) / t.elapsed().as_secs_f64());
                }
                _ => {
                    let (n, s) = mesh(spec.clone());
                    m.push(f64::from(n) / s);
                }
            }
        }
    }
    let (d, e, m) = (median(d), median(e), median(m));
    println!(
        "mesh_throughput: model {}, {threads} threads, {tokens} output tokens, median of {runs} interleaved runs",
        path.display()
    );
    println!("  direct llama-cpp-2 (anchor)      {d:8.1} tokens/s");
    println!(
        "  cactus engine, in process        {e:8.1} tokens/s   ratio {:.3}",
        e / d
    );
    println!(
        "  client -> router -> orchestrator {m:8.1} tokens/s   ratio {:.3}  (target >= 0.95)",
        m / d
    );

    rt.block_on(nodes.stop());
}
