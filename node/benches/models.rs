//! Two models on one orchestrator: what serving a second model costs the
//! first, in one run.
//!
//! One engine loads the demo model (A) and the same model re-quantized to
//! Q2_K by llama.cpp's quantizer (B, a second model the registries need not
//! serve). Single-stream generation tokens/s of A alone is the anchor; then
//! A again once B has run (target ≥ 0.97: a model that sits idle must cost
//! the other nothing), B alone, and A and B generating at once (they share
//! the cores: together about what one does alone).
//!
//! Each figure is (n − 1) tokens over the time of an n-token job less a
//! 1-token one, through the engine directly, median of `BENCH_RUNS`.
//!
//! ```text
//! BENCH_MODEL=$(scripts/fetch-model.sh) cargo bench -p cactus-node --bench models
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, quantize_q2k};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::inference::{Engine, Job};
use cactus_protocol::{ModelHash, PromptFormat, SamplingParams};
use std::time::Instant;
use support::{PROMPTS, env_or, median, model_path};

/// Seconds to generate `n` tokens of `model` after a fixed prompt.
fn job(engine: &LlamaEngine, model: ModelHash, n: u32) -> f64 {
    let job = Job {
        model,
        prompt: PROMPTS[0].into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams {
            max_tokens: n,
            ..SamplingParams::default()
        },
        deadline: None,
        resume: None,
    };
    let started = Instant::now();
    engine.submit(job).unwrap().blocking_finish().unwrap();
    started.elapsed().as_secs_f64()
}

/// Generation tokens/s of one stream of `model`, median of `runs`.
fn single(engine: &LlamaEngine, model: ModelHash, n: u32, runs: usize) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let one = job(engine, model, 1);
                (n - 1) as f64 / (job(engine, model, n) - one)
            })
            .collect(),
    )
}

fn main() {
    let threads: u32 = env_or("BENCH_THREADS", 2);
    let tokens: u32 = env_or("BENCH_TOKENS", 64).max(64) * 2;
    let runs: usize = env_or("BENCH_RUNS", 3);
    let path = model_path();
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second-q2_k.gguf");
    quantize_q2k(&path, &second, threads).unwrap();
    let spec = |path| ModelSpec {
        path,
        expected_sha256: None,
    };
    let engine = LlamaEngine::load(
        &[spec(path.clone()), spec(second)],
        LlamaConfig {
            threads,
            ctx_size: 1024,
            slots: 8,
            queue: 8,
            ..LlamaConfig::default()
        },
    )
    .unwrap();
    let (a, b) = (engine.models()[0].sha256, engine.models()[1].sha256);
    println!(
        "models {} (A) and its Q2_K (B) on one engine, {threads} threads, {tokens} tokens, median of {runs} runs\n",
        path.display()
    );
    job(&engine, a, 8);
    let alone = single(&engine, a, tokens, runs);
    job(&engine, b, 8);
    let after = single(&engine, a, tokens, runs);
    let b_alone = single(&engine, b, tokens, runs);
    let together = median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                std::thread::scope(|s| {
                    s.spawn(|| job(&engine, a, tokens));
                    s.spawn(|| job(&engine, b, tokens));
                });
                f64::from(2 * tokens) / started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    println!("| what | tokens/s | ÷ A alone |");
    println!("|---|---|---|");
    println!("| A alone | {alone:.1} | 1.00 |");
    println!("| A after B has run | {after:.1} | {:.2} |", after / alone);
    println!("| B alone | {b_alone:.1} | {:.2} |", b_alone / alone);
    println!(
        "| A and B at once, both streams | {together:.1} | {:.2} |",
        together / alone
    );
    println!(
        "SUMMARY|model A single stream after model B ran on the same engine vs A alone|{after:.1}|{alone:.1}|{:.3}|≥ 0.97",
        after / alone
    );
    println!(
        "SUMMARY|models A and B generating at once, tokens/s in all, vs A alone|{together:.1}|{alone:.1}|{:.3}|-",
        together / alone
    );
}
