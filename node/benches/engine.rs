//! The inference server next to llama.cpp's own tools, same model, threads
//! and prompts, in one run:
//!
//! - aggregate generation tokens/s at 1, 4 and 8 concurrent streams through
//!   the mesh (client → router → orchestrator on loopback, the orchestrator
//!   running `--slots 8`) ÷ `llama-server -np 8` driven the same way (target
//!   ≥ 1.0 at 8 streams), with the engine driven directly (no mesh) beside
//!   them, which splits the gap between the engine and the mesh;
//! - single-stream generation tokens/s through the mesh ÷ `llama-bench` tg
//!   (target ≥ 0.97): the mesh figure is (n − 1) tokens over the time of an
//!   n-token task less a 1-token one, so prefill and round trips cancel out.
//!   Measured first, on an orchestrator whose KV cache holds nothing else
//!   (as llama-bench's holds nothing else), then again once every slot
//!   holds a cached prompt: the slots share one cache, and a lone stream
//!   then attends over the others' cells too;
//! - time to first token of a chat's second turn with the prompt cache ÷
//!   without (target ≤ 0.3), through the engine's token stream.
//!
//! llama.cpp's tools come from `scripts/llama-tools.sh` (built once, cached
//! outside the repository); `scripts/bench-engine.sh` runs both.
//!
//! ```text
//! LLAMA_TOOLS=$(scripts/llama-tools.sh) cargo bench -p cactus-node --bench engine
//! BENCH_THREADS=2 BENCH_TOKENS=64 BENCH_RUNS=3 BENCH_MODEL=path.gguf ...
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/llama.rs"]
mod llama;
#[path = "support/mod.rs"]
mod support;
use cactus_node::client;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::inference::{Engine, Event, Job};
use cactus_protocol::{PromptFormat, SamplingParams, TaskSpec};
use cluster::Cluster;
use std::sync::Arc;
use std::time::Instant;
use support::{PROMPTS, env_or, median, model_path};

const SLOTS: usize = 8;
const CTX_PER_SLOT: u32 = 1024;

/// An in-process router, orchestrator and client on loopback.
struct Mesh {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    nodes: Cluster,
}

impl Mesh {
    fn start(engine: Arc<LlamaEngine>) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nodes = rt.block_on(Cluster::start(dir.path(), engine, false));
        Self {
            rt,
            _dir: dir,
            nodes,
        }
    }

    fn stop(self) {
        self.rt.block_on(self.nodes.stop());
    }

    /// Runs `n` tasks at once; returns the output tokens and the wall time.
    fn concurrent(&self, n: usize, tokens: u32) -> (u64, f64) {
        self.rt.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let spec = spec(PROMPTS[i % PROMPTS.len()], tokens);
                    let network = self.nodes.client.network().clone();
                    let router = self.nodes.router.peer_id();
                    tokio::spawn(async move { client::submit_to(&network, router, spec).await })
                })
                .collect();
            let mut total = 0u64;
            for t in tasks {
                total += u64::from(t.await.unwrap().unwrap().receipt.body.output_tokens);
            }
            (total, started.elapsed().as_secs_f64())
        })
    }
}

/// Generation tokens/s of one stream through the mesh: (n − 1) tokens over
/// the time of an n-token task less a 1-token one, so that prefill and
/// round trips cancel out.
fn single_stream(mesh: &Mesh, n: u32) -> f64 {
    let (_, one) = mesh.concurrent(1, 1);
    let (n, all) = mesh.concurrent(1, n);
    (n - 1) as f64 / (all - one)
}

fn spec(prompt: &str, max_tokens: u32) -> TaskSpec {
    TaskSpec {
        model: None,
        prompt: prompt.into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        },
        max_price_per_unit: None,
        request_id: None,
    }
}

/// Runs `n` jobs on the engine at once, without the mesh; returns the
/// output tokens and the wall time.
fn direct(engine: &LlamaEngine, n: usize, tokens: u32) -> (u64, f64) {
    let started = Instant::now();
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let mut job = Job {
                model: engine.models()[0].sha256,
                prompt: PROMPTS[i % PROMPTS.len()].into(),
                format: PromptFormat::Raw,
                sampling: SamplingParams::default(),
                deadline: None,
                resume: None,
            };
            job.sampling.max_tokens = tokens;
            engine.submit(job).unwrap()
        })
        .collect();
    let total = jobs
        .into_iter()
        .map(|j| u64::from(j.blocking_finish().unwrap().output_tokens))
        .sum();
    (total, started.elapsed().as_secs_f64())
}

/// Time to the first token event of `job`, in seconds.
fn ttft(engine: &LlamaEngine, job: Job) -> (f64, String) {
    let started = Instant::now();
    let mut s = engine.submit(job).unwrap();
    let mut first = None;
    loop {
        match s.blocking_next().expect("the stream ends with a result") {
            Event::Token { .. } => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            Event::Done(r) => return (first.unwrap(), r.unwrap().text),
        }
    }
}

fn main() {
    let path = model_path();
    assert!(
        path.exists(),
        "no model at {}: run scripts/fetch-model.sh or set BENCH_MODEL",
        path.display()
    );
    let tools = llama::tools();
    let threads: u32 = env_or("BENCH_THREADS", 2);
    let tokens: u32 = env_or("BENCH_TOKENS", 64);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let engine = LlamaEngine::load(
        &[ModelSpec {
            path: path.clone(),
            expected_sha256: None,
        }],
        LlamaConfig {
            threads,
            ctx_size: CTX_PER_SLOT,
            slots: SLOTS,
            queue: SLOTS,
            ..LlamaConfig::default()
        },
    )
    .unwrap();
    println!(
        "model {}, {threads} threads, {tokens} tokens per request, median of {runs} runs",
        path.display()
    );

    let mesh = Mesh::start(Arc::clone(&engine));
    mesh.concurrent(1, 8);
    // 1. Single stream through the mesh against llama-bench's tg, on an
    // orchestrator whose cache holds nothing else, as llama-bench's does.
    let long = tokens.max(64) * 2;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..runs {
        ours.push(single_stream(&mesh, long));
        theirs.push(llama::llama_bench(&tools, &path, threads, long));
    }
    let (o, t) = (median(ours), median(theirs));

    // 2. Aggregate tokens/s, mesh and llama-server interleaved.
    println!(
        "\n| concurrent streams | mesh tokens/s | engine alone tokens/s | llama-server -np {SLOTS} tokens/s | ratio | target |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [1usize, 4, 8] {
        let mut ours = Vec::new();
        let mut alone = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..runs {
            let (t, s) = mesh.concurrent(n, tokens);
            ours.push(t as f64 / s);
            let (t, s) = direct(&engine, n, tokens);
            alone.push(t as f64 / s);
            let server = llama::Server::start(&tools, &path, threads, SLOTS, CTX_PER_SLOT);
            llama::complete(server.addr, None, "Warm up.", 8);
            let prompts: Vec<String> = (0..n)
                .map(|i| format!("Request {i}. {}", PROMPTS[i % PROMPTS.len()]))
                .collect();
            let (t, s) = llama::concurrent(server.addr, None, &prompts, tokens);
            theirs.push(t as f64 / s);
        }
        let (o, a, t) = (median(ours), median(alone), median(theirs));
        let target = if n == 8 { "≥ 1.0" } else { "" };
        println!(
            "| {n} | {o:.1} | {a:.1} | {t:.1} | {:.2} | {target} |",
            o / t
        );
    }

    // 3. Single stream again, now that every slot holds a cached prompt:
    // one cache holds them all, so a lone stream attends over them too.
    let warm = median((0..runs).map(|_| single_stream(&mesh, long)).collect());
    println!(
        "\n| single stream, {long} tokens | mesh tokens/s | llama-bench tg{long} tokens/s | ratio | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| on a fresh orchestrator | {o:.1} | {t:.1} | {:.3} | ≥ 0.97 |",
        o / t
    );
    println!(
        "| with {SLOTS} slots' prompts cached | {warm:.1} | {t:.1} | {:.3} | |",
        warm / t
    );
    println!(
        "SUMMARY|single-stream tokens/s through the mesh vs llama-bench tg{long}|{o:.1}|{t:.1}|{:.3}|≥ 0.97",
        o / t
    );
    println!(
        "SUMMARY|the same with {SLOTS} slots' prompts cached (one KV cache for all slots)|{warm:.1}|{t:.1}|{:.3}|-",
        warm / t
    );

    // 4. A chat's second turn, prompt cache on and off.
    let model = engine.models()[0].sha256;
    let context = PROMPTS.join(" ").repeat(4);
    let turn = |prompt: String, max_tokens| Job {
        model,
        prompt,
        format: PromptFormat::Raw,
        sampling: SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        },
        deadline: None,
        resume: None,
    };
    let mut cached = Vec::new();
    let mut cold = Vec::new();
    for r in 0..runs {
        let first =
            format!("{context}\nRun {r}. Question: what is the first story about?\nAnswer:");
        let (_, answer) = ttft(&engine, turn(first.clone(), 16));
        let second = format!("{first}{answer}\nQuestion: and the second?\nAnswer:");
        let (hit, _) = ttft(&engine, turn(second.clone(), 4));
        // Fill every slot with other prompts so that nothing of this chat
        // is left in the cache, then ask the same second turn.
        let others: Vec<_> = (0..SLOTS)
            .map(|i| {
                engine
                    .submit(turn(format!("Unrelated {r} {i}: {}", PROMPTS[i]), 2))
                    .unwrap()
            })
            .collect();
        for s in others {
            s.blocking_finish().unwrap();
        }
        let (miss, _) = ttft(&engine, turn(second, 4));
        cached.push(hit);
        cold.push(miss);
    }
    let (h, m) = (median(cached), median(cold));
    println!(
        "\n| chat turn 2 | time to first token, cached prefix | without cache | ratio | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} prompt chars | {:.1} ms | {:.1} ms | {:.3} | ≤ 0.3 |",
        context.len(),
        h * 1e3,
        m * 1e3,
        h / m
    );
    println!(
        "SUMMARY|chat turn 2 time to first token, prompt cache vs none (ms)|{:.1}|{:.1}|{:.3}|≤ 0.3",
        h * 1e3,
        m * 1e3,
        h / m
    );
    // Stopping the orchestrator stops its engine: last.
    mesh.stop();
    let stats = engine.stats();
    println!(
        "\nengine: {} decode steps, {} shared by several sequences, at most {} sequences in one step",
        stats.steps, stats.shared_steps, stats.max_batch_sequences
    );
}
