//! Spot checks by replay: what they cost and where the tolerance lies.
//!
//! For each prompt, in one run on one machine:
//!
//! - the honest model generates (greedy) — the anchor: the replay's cost is
//!   reported as a fraction of this generation's compute time;
//! - the honest model replays that result as one teacher-forced prefill;
//! - the demo model re-quantized to Q2_K by llama.cpp's quantizer (a cheaper
//!   substitute a cheating orchestrator could serve) generates, and the honest
//!   model replays that result too.
//!
//! It prints the cost fraction and the largest logit gap per result for both,
//! then how many honest results a tolerance would wrongly refuse and how many
//! substituted ones it would catch, for a few tolerances: the figures behind
//! `--verify-tolerance`.
//!
//! ```text
//! cargo bench -p cactus-node --bench replay
//! BENCH_MODEL=path.gguf BENCH_THREADS=2 BENCH_TOKENS=128 cargo bench -p cactus-node --bench replay
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine, quantize_q2k};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::inference::{Blocking, Engine, Generation, Job};
use cactus_node::roles::router::Verification;
use cactus_protocol::fraud::ReplayRequest;
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::{Digest, PromptFormat, ReceiptBody, SamplingParams, TaskId};
use libp2p::identity::Keypair;
use std::path::Path;
use std::sync::Arc;
use support::{env_or, model_path};

const PROMPTS: [&str; 12] = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "A recipe for pancakes needs",
    "Write a short story about a cactus that learns to walk.",
    "Explain how a bicycle stays upright.",
    "The three primary colours are",
    "List five animals that live in the desert:",
    "In 1969, the first people to walk on the Moon",
    "A good way to learn a new language is",
    "The difference between weather and climate is",
    "Photosynthesis is the process by which",
];

fn load(path: &Path, threads: u32) -> Arc<LlamaEngine> {
    LlamaEngine::load(
        &[ModelSpec {
            path: path.to_path_buf(),
            expected_sha256: None,
        }],
        LlamaConfig {
            threads,
            ctx_size: 1024,
            gpu_layers: 0,
            ..LlamaConfig::default()
        },
    )
    .unwrap()
}

/// A replay request for `g`, its receipt signed by a fresh orchestrator key.
fn request(model: Digest, prompt: &str, sampling: SamplingParams, g: &Generation) -> ReplayRequest {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let body = ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([1; 16]),
        model,
        prompt_hash: Digest::of(prompt.as_bytes()),
        output_hash: Digest::of(g.text.as_bytes()),
        output_tokens_hash: Digest::of_tokens(&g.tokens),
        sampling,
        format: PromptFormat::Chat,
        finish: g.finish,
        prompt_tokens: g.prompt_tokens,
        output_tokens: g.output_tokens,
        compute_ms: 1,
        orchestrator: peer,
        router: peer,
        started_at_ms: 1,
        finished_at_ms: 2,
        delegation: None,
        resumed: None,
    };
    ReplayRequest {
        receipt: body.sign(&key).unwrap(),
        prompt: prompt.into(),
        tokens: g.tokens.clone(),
        text: g.text.clone(),
    }
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.0), at(0.5), at(1.0))
}

fn main() {
    let threads: u32 = env_or("BENCH_THREADS", 2);
    let tokens: u32 = env_or("BENCH_TOKENS", 128);
    let path = model_path();
    let honest = load(&path, threads);
    let model = honest.models()[0].sha256;
    let dir = tempfile::tempdir().unwrap();
    let sub_path = dir.path().join("substitute-q2_k.gguf");
    quantize_q2k(&path, &sub_path, threads).unwrap();
    let cheat = load(&sub_path, threads);
    let cheat_model = cheat.models()[0].sha256;
    let sampling = SamplingParams {
        max_tokens: tokens,
        ..SamplingParams::default()
    };
    println!(
        "model {} ({}), substitute Q2_K, {threads} threads, {tokens} greedy tokens, {} prompts",
        path.display(),
        model,
        PROMPTS.len()
    );
    println!(
        "{:<48} {:>8} {:>8} {:>6} {:>9} {:>9}",
        "prompt", "gen ms", "replay", "cost", "honest", "subst."
    );
    let (mut cost, mut honest_gaps, mut cheat_gaps) = (Vec::new(), Vec::new(), Vec::new());
    for prompt in PROMPTS {
        let job = Job {
            model,
            prompt: prompt.into(),
            format: PromptFormat::Chat,
            sampling: sampling.clone(),
            deadline: None,
            resume: None,
        };
        let g = honest.generate(&job).unwrap();
        let f = honest
            .replay_blocking(&request(model, prompt, sampling.clone(), &g))
            .unwrap();
        let c = cheat
            .generate(&Job {
                model: cheat_model,
                ..job
            })
            .unwrap();
        let fc = honest
            .replay_blocking(&request(model, prompt, sampling.clone(), &c))
            .unwrap();
        let gen_ms = g.compute.as_secs_f64() * 1e3;
        let fraction = f.compute_ms as f64 / gen_ms;
        cost.push(fraction);
        honest_gaps.push(f64::from(f.max_gap));
        cheat_gaps.push(f64::from(fc.max_gap));
        let short: String = prompt.chars().take(46).collect();
        println!(
            "{short:<48} {gen_ms:>8.0} {:>8} {:>5.0}% {:>9.3} {:>9.3}",
            f.compute_ms,
            fraction * 100.0,
            f.max_gap,
            fc.max_gap
        );
    }
    let (lo, med, hi) = quantiles(cost);
    println!(
        "replay cost / generation (anchor, same run): median {:.0}%  min {:.0}%  max {:.0}%",
        med * 100.0,
        lo * 100.0,
        hi * 100.0
    );
    // What spot checks cost the network per unit of generation: the share
    // of results checked, times the replays a verdict needs, times a
    // replay's cost.
    let share = f64::from(Verification::default().share_ppm) / 1e6;
    let replays = cactus_protocol::vote::QUORUM as f64;
    println!(
        "SUMMARY|verification compute ÷ generation compute, default spot-check rate ({:.0} %, {replays} replays)|{:.4}|-|-|-",
        share * 100.0,
        share * replays * med
    );
    let (_, hmed, hmax) = quantiles(honest_gaps.clone());
    let (cmin, cmed, _) = quantiles(cheat_gaps.clone());
    println!(
        "largest gap per result: honest median {hmed:.3} max {hmax:.3}; substituted median {cmed:.3} min {cmin:.3}"
    );
    for tol in [0.5f64, 0.75, 1.0, 1.5] {
        let wrong = honest_gaps.iter().filter(|&&g| g > tol).count();
        let caught = cheat_gaps.iter().filter(|&&g| g > tol).count();
        println!(
            "tolerance {tol:>4}: honest refused {wrong}/{n}, substituted caught {caught}/{n}",
            n = PROMPTS.len()
        );
    }
}
