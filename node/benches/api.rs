//! The router's OpenAI-compatible HTTP API next to `llama-server`, driven by
//! the same load generator (`support/llama.rs`: one HTTP/1.1 connection per
//! request, `/v1/completions`, greedy), same model, threads and prompts, in
//! one run:
//!
//! - aggregate generation tokens/s at 1, 4, 8 and 16 concurrent requests:
//!   HTTP → router → orchestrator (`--slots n`, llama.cpp) over loopback
//!   TCP + Noise + Yamux, ÷ `llama-server -np n` (target ≥ 1.0 at 8);
//! - time to first token of a streamed completion (`stream: true`, the
//!   first SSE chunk with text), one request at a time, through the API −
//!   llama-server's (target ≤ 5 ms).
//!
//! Every prompt begins with its own request number, so neither side serves
//! it from a prompt cache. Tokens are counted from each answer's `usage`.
//! Prints tables and `SUMMARY|...` lines for `scripts/bench.sh`.
//!
//! ```text
//! LLAMA_TOOLS=$(scripts/llama-tools.sh) cargo bench -p cactus-node --bench api
//! BENCH_STREAMS=1,8 BENCH_THREADS=2 BENCH_TOKENS=64 BENCH_RUNS=3 BENCH_MODEL=path.gguf ...
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/llama.rs"]
mod llama;
#[path = "support/mod.rs"]
mod support;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine};
use cactus_node::inference::model_file::ModelSpec;
use cluster::Cluster;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{PROMPTS, env_or, log_from_env, median, model_path};

const CTX_PER_SLOT: u32 = 1024;

/// A router serving the API, one orchestrator, and an API key whose
/// account has a deposit at the router.
struct Api {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    nodes: Cluster,
    addr: SocketAddr,
    key: String,
}

impl Api {
    fn start(engine: Arc<LlamaEngine>) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nodes = rt.block_on(Cluster::start(dir.path(), engine, true));
        let (key, _) = cactus_node::api::keys::create(
            &dir.path().join("router"),
            nodes.client_account(),
            "bench",
        )
        .unwrap();
        let addr = nodes.router.api_addr().expect("the router serves its API");
        Self {
            rt,
            _dir: dir,
            nodes,
            addr,
            key,
        }
    }

    fn stop(self) {
        self.rt.block_on(self.nodes.stop());
    }
}

/// `n` prompts, each starting with its own number.
fn prompts(n: usize, round: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("Request {round}-{i}. {}", PROMPTS[i % PROMPTS.len()]))
        .collect()
}

fn load(path: &Path, threads: u32, slots: usize) -> Arc<LlamaEngine> {
    LlamaEngine::load(
        &[ModelSpec {
            path: path.to_path_buf(),
            expected_sha256: None,
        }],
        LlamaConfig {
            threads,
            ctx_size: CTX_PER_SLOT,
            slots,
            queue: slots,
            ..LlamaConfig::default()
        },
    )
    .unwrap()
}

fn main() {
    log_from_env();
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
    let streams: Vec<usize> = std::env::var("BENCH_STREAMS")
        .unwrap_or_else(|_| "1,4,8,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "model {}, {threads} threads, {tokens} tokens per request, median of {runs} runs",
        path.display()
    );
    println!(
        "\n| concurrent requests | API tokens/s (orchestrator --slots n) | llama-server -np n tokens/s | ratio | target |"
    );
    println!("|---|---|---|---|---|");
    let mut summary = Vec::new();
    let mut ttft = None;
    for &n in &streams {
        let cluster = Api::start(load(&path, threads, n));
        let server = llama::Server::start(&tools, &path, threads, n, CTX_PER_SLOT);
        let key = Some(cluster.key.as_str());
        llama::complete(cluster.addr, key, "Warm up.", 4);
        llama::complete(server.addr, None, "Warm up.", 4);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let (t, s) =
                llama::concurrent(cluster.addr, key, &prompts(n, &format!("a{r}")), tokens);
            ours.push(t as f64 / s);
            let (t, s) =
                llama::concurrent(server.addr, None, &prompts(n, &format!("b{r}")), tokens);
            theirs.push(t as f64 / s);
        }
        let (o, t) = (median(ours), median(theirs));
        let target = if n == 8 { "≥ 1.0" } else { "" };
        println!("| {n} | {o:.1} | {t:.1} | {:.2} | {target} |", o / t);
        summary.push(format!(
            "SUMMARY|aggregate tokens/s, {n} concurrent requests, API vs llama-server -np {n}|{o:.1}|{t:.1}|{:.2}|{}",
            o / t,
            if target.is_empty() { "-" } else { target }
        ));
        if n == 1 {
            // One request at a time, alternating, each prompt its own.
            let context = PROMPTS.join(" ");
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for r in 0..runs * 3 {
                let p = |side: &str| format!("Session {side}{r}. {context}\nSummary:");
                ours.push(llama::time_to_first_token(cluster.addr, key, &p("a"), 4));
                theirs.push(llama::time_to_first_token(server.addr, None, &p("b"), 4));
            }
            let ms = |v: Vec<Duration>| median(v.iter().map(|d| d.as_secs_f64() * 1e3).collect());
            ttft = Some((ms(ours), ms(theirs)));
        }
        drop(server);
        cluster.stop();
    }
    if let Some((o, t)) = ttft {
        println!(
            "\n| time to first token, streamed, one at a time | API | llama-server | difference | target |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| {} prompt chars | {o:.1} ms | {t:.1} ms | {:+.1} ms | ≤ 5 ms |",
            PROMPTS.join(" ").len(),
            o - t
        );
        summary.push(format!(
            "SUMMARY|time to first token, API − llama-server (ms)|{o:.1}|{t:.1}|{:+.1} ms|≤ +5 ms",
            o - t
        ));
    }
    println!();
    for s in summary {
        println!("{s}");
    }
}
