//! A local Cactus cluster in one process: a router (which is also the
//! bootstrap node) and two orchestrators serving the real demo model on
//! loopback. It waits until the router has heard both orchestrators' adverts,
//! funds a client from the dev faucet (a deposit at the router, which pays
//! for its tasks), sends a prompt through the mesh, and prints the answer,
//! the orchestrator that served it and the verified receipt. It also makes
//! an API key for that client and prints it, for the OpenAI-compatible API.
//!
//! ```text
//! cargo run --release -p cactus-examples --example local_cluster -- <model.gguf> [prompt] [--serve]
//! ```
//!
//! With `--serve` it keeps running after the first answer, for
//! `cactus-node infer --router <address>` from other terminals; the engine's
//! `engine` log lines then show how many of those requests shared decode
//! steps. `scripts/demo.sh` fetches the model and runs this.

#![allow(clippy::print_stdout)] // An example prints its results.

use anyhow::{Context, Result, bail};
use cactus_node::chain::embedded::LocalSettings;
use cactus_node::inference::Engine;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::network::NetworkConfig;
use cactus_node::node::ChainChoice;
use cactus_node::{Node, NodeConfig, Role, cli, client};
use cactus_protocol::{PromptFormat, SamplingParams, TaskSpec};
use libp2p::identity::Keypair;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let serve = std::env::args().any(|a| a == "--serve");
    cli::init_tracing(if serve { "info" } else { "warn" });
    let mut args = std::env::args().skip(1).filter(|a| a != "--serve");
    let Some(model) = args.next() else {
        bail!("usage: local_cluster <model.gguf[:sha256]> [prompt] [--serve]");
    };
    let prompt = args
        .next()
        .unwrap_or_else(|| "The three largest cities in Europe are".to_owned());
    let spec: ModelSpec = model.parse()?;
    let data = tempfile_dir()?;

    // One engine for both orchestrators: llama.cpp's backend is per process,
    // the weights are shared read-only, and both orchestrators' tasks share
    // its decode steps.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let engine: Arc<dyn Engine> = {
        let config = LlamaConfig {
            threads,
            slots: 8,
            queue: 8,
            ..LlamaConfig::default()
        };
        tokio::task::spawn_blocking(move || LlamaEngine::load(&[spec], config)).await??
    };
    let loopback = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        ..NetworkConfig::default()
    };

    let router = Node::start(
        NodeConfig {
            role: Role::Router,
            data_dir: data.join("router"),
            network: loopback.clone(),
            // The OpenAI-compatible API on a free loopback port.
            api: Some("127.0.0.1:0".parse()?),
            // A development ledger: its faucet funds the orchestrators'
            // stakes (`cactus-node --dev-faucet`).
            chain: ChainChoice::Embedded(LocalSettings::dev()),
            ..NodeConfig::default()
        },
        Keypair::generate_ed25519(),
        None,
    )
    .await?;
    let router_addr = router.listen_addrs().await?[0].clone();
    println!("router + bootstrap  {router_addr}");

    // A client with a deposit at the router, from the dev faucet
    // (`cactus-node account faucet` and `account deposit`), and an API key
    // charging its account (`cactus-node keys create`).
    let client_key = Keypair::generate_ed25519();
    let client_account = cactus_node::chain::default_account(&client_key.public().to_peer_id());
    client::fund_key(
        client_key.clone(),
        &[],
        Some(router_addr.clone()),
        500_000,
        Duration::from_secs(30),
    )
    .await
    .context("funding the client")?;
    let (api_key, _) =
        cactus_node::api::keys::create(&data.join("router"), client_account, "local-cluster")?;
    if let Some(api) = router.api_addr() {
        println!("OpenAI API          http://{api}/v1");
        println!("API key             {api_key}");
    }

    let mut orchestrators = Vec::new();
    for _ in 0..2 {
        let config = NodeConfig {
            role: Role::Orchestrator,
            network: NetworkConfig {
                bootstrap: vec![router_addr.clone()],
                ..loopback.clone()
            },
            ..NodeConfig::default()
        };
        let node = Node::start(
            config,
            Keypair::generate_ed25519(),
            Some(Arc::clone(&engine)),
        )
        .await?;
        println!("orchestrator        {}", node.listen_addrs().await?[0]);
        orchestrators.push(node);
    }

    tokio::time::timeout(Duration::from_secs(60), router.wait_for_orchestrators(2))
        .await
        .context("the router did not hear both orchestrators within 60 s")??;
    for o in router.orchestrators() {
        let models: Vec<&str> = o.models.iter().map(|m| m.name.as_str()).collect();
        println!("router sees         {} serving {models:?}", o.peer);
    }

    // A client joins through the bootstrap node and finds the router on the DHT.
    let task = TaskSpec {
        model: None,
        prompt: prompt.clone(),
        format: PromptFormat::Chat,
        sampling: SamplingParams {
            max_tokens: 64,
            ..SamplingParams::default()
        },
        max_price_per_unit: None,
        request_id: None,
    };
    println!("\nprompt: {prompt}");
    print!("answer: ");
    let started = Instant::now();
    // The answer streams in as the orchestrator samples it.
    let result = client::submit(
        client_key,
        vec![router_addr.clone()],
        None,
        task,
        Duration::from_secs(300),
        Some(&mut |chunk: &cactus_protocol::TokenChunk| {
            print!("{}", chunk.text);
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }),
    )
    .await?;
    let elapsed = started.elapsed();
    let body = &result.receipt.body;
    println!();
    println!(
        "\nserved by {} in {:.2} s ({} prompt + {} output tokens, {:.1} tokens/s)",
        body.orchestrator,
        elapsed.as_secs_f64(),
        body.prompt_tokens,
        body.output_tokens,
        f64::from(body.output_tokens) / elapsed.as_secs_f64()
    );
    result.receipt.verify().context("receipt")?;
    println!("receipt (orchestrator-signed, router-countersigned, verified):");
    println!(
        "{}",
        serde_json::to_string_pretty(&cli::receipt_json(&result.receipt))?
    );

    // The embedded chain: the task was escrowed and paid; anchor the
    // receipt now (routers otherwise batch 64 receipts or 30 s).
    if let Some(chain) = router.chain() {
        let task = chain
            .task(body.task_id)
            .await?
            .context("task on the chain")?;
        let account = cactus_node::chain::default_account(&body.orchestrator);
        let record = chain
            .orchestrator(account)
            .await?
            .context("orchestrator on the chain")?;
        let (stake, escrow, vault) = chain.totals().await?;
        println!(
            "\nembedded chain: task {:?}, paid {} units (escrow released); orchestrator stake {}, tasks ok {}",
            task.status, task.payment, record.stake, record.successes
        );
        println!("chain totals: stake held {stake}, pending escrow {escrow}, vault {vault}");
        router.anchor_now(64).await?;
        if let Some(p) = router.receipt_proof(body.task_id).await? {
            println!(
                "receipt anchored in batch {} with Merkle root {}",
                p.anchor_index, p.root
            );
        }
    }

    if serve {
        println!(
            "\nserving until Ctrl-C; from another terminal (a client pays from its deposit at the router):\n  cactus-node account faucet --router {router_addr}\n  cactus-node account deposit 100000 --router {router_addr}\n  cactus-node infer --router {router_addr} --prompt \"...\""
        );
        if let Some(api) = router.api_addr() {
            println!(
                "  curl http://{api}/v1/chat/completions -H 'Authorization: Bearer {api_key}' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
            );
        }
        tokio::signal::ctrl_c().await?;
        let s = engine.stats();
        println!(
            "engine: {} decode steps, {} shared by several sequences, at most {} sequences in one step, {} tokens",
            s.steps, s.shared_steps, s.max_batch_sequences, s.generated_tokens
        );
    }
    for o in orchestrators {
        o.shutdown().await;
    }
    router.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cactus-local-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
