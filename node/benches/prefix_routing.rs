//! Prefix-aware routing: mean time to first token of turns 2..5 of a chat when
//! the router sends each turn to the orchestrator whose prompt cache holds
//! the conversation so far, ÷ the same with cache-blind routing (the
//! weighted draw alone), same run (target ≤ 0.3).
//!
//! Three orchestrators (each its own llama.cpp engine on the real model) and
//! two routers on loopback, one with prefix routing and one without; a
//! client holds five-turn chats through each, a different long system
//! prompt per chat so that no chat profits from another's cache, with a
//! pause between turns as a person would take (the orchestrator's next
//! advert, which carries its cache, goes out in it).
//!
//! ```text
//! cargo bench -p cactus-node --bench prefix_routing
//! BENCH_CHATS=3 BENCH_THREADS=2 BENCH_MODEL=path.gguf ...
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;
use cactus_node::chain::default_account;
use cactus_node::chain::embedded::FAUCET_AMOUNT;
use cactus_node::chain::embedded::LocalSettings;
use cactus_node::client;
use cactus_node::inference::Engine;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine};
use cactus_node::inference::model_file::ModelSpec;
use cactus_node::network::NetworkConfig;
use cactus_node::node::ChainChoice;
use cactus_node::{Node, NodeConfig, Role};
use cactus_protocol::{PromptFormat, SamplingParams, TaskSpec};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_or, median, model_path};

const ORCHESTRATORS: usize = 3;
const TURNS: [&str; 5] = [
    "Summarise the rules above in one sentence.",
    "Which rule matters most, and why?",
    "Give an example of breaking the third rule.",
    "How would you teach these rules to a child?",
    "Write a short slogan for them.",
];
/// What a person takes between turns.
const THINK: Duration = Duration::from_secs(1);

/// A long system prompt, different for each chat.
fn system(chat: usize) -> String {
    let mut s = format!("You are the assistant of garden number {chat}. House rules:\n");
    for i in 0..40 {
        s.push_str(&format!(
            "Rule {i} of garden {chat}: water bed {} on day {} with {} litres, never after {} o'clock, and write it in log {}.\n",
            (i * 7 + chat) % 13,
            (i * 3 + chat) % 7,
            i % 5 + 1,
            (i + chat) % 12 + 6,
            i * 11 + chat
        ));
    }
    s
}

/// Holds one chat through `router`; returns the time to first token of each
/// turn.
async fn chat(client: &Node, router: PeerId, n: usize) -> Vec<f64> {
    let mut turns = vec![json!({"role": "system", "content": system(n)})];
    let mut ttft = Vec::new();
    for (i, question) in TURNS.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(THINK).await;
        }
        turns.push(json!({"role": "user", "content": question}));
        let spec = TaskSpec {
            model: None,
            prompt: serde_json::Value::Array(turns.clone()).to_string(),
            format: PromptFormat::Messages,
            sampling: SamplingParams {
                max_tokens: 24,
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_price_per_unit: None,
            request_id: None,
        };
        let started = Instant::now();
        let mut first = None;
        let result = client::submit_streaming(client.network(), router, spec, |c| {
            if first.is_none() && !c.tokens.is_empty() {
                first = Some(started.elapsed().as_secs_f64());
            }
        })
        .await
        .unwrap();
        ttft.push(first.unwrap_or_else(|| started.elapsed().as_secs_f64()));
        turns.push(json!({"role": "assistant", "content": result.full_text()}));
    }
    ttft
}

fn main() {
    let path = model_path();
    assert!(
        path.exists(),
        "no model at {}: run scripts/fetch-model.sh or set BENCH_MODEL",
        path.display()
    );
    let threads: u32 = env_or("BENCH_THREADS", 2);
    let chats: usize = env_or("BENCH_CHATS", 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (aware, blind, client, _orchs) = rt.block_on(async {
        let net = NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..NetworkConfig::default()
        };
        // The aware router keeps the cluster's ledger (a development one,
        // whose faucet funds the orchestrators' stakes) and authorizes the
        // blind router, which settles on it.
        let blind_key = Keypair::generate_ed25519();
        let blind_account = default_account(&blind_key.public().to_peer_id());
        let router = |name: &str, prefix_routing: bool, key: Keypair, chain, bootstrap| {
            Node::start(
                NodeConfig {
                    role: Role::Router,
                    data_dir: dir.path().join(name),
                    network: NetworkConfig {
                        bootstrap,
                        ..net.clone()
                    },
                    prefix_routing,
                    chain,
                    ..NodeConfig::default()
                },
                key,
                None,
            )
        };
        let ledger = ChainChoice::Embedded(LocalSettings {
            servers: vec![blind_account],
            ..LocalSettings::dev()
        });
        let aware = router("aware", true, Keypair::generate_ed25519(), ledger, vec![])
            .await
            .unwrap();
        let aware_addr = aware.listen_addrs().await.unwrap()[0].clone();
        let blind = router(
            "blind",
            false,
            blind_key,
            ChainChoice::Remote(aware.peer_id()),
            vec![aware_addr],
        )
        .await
        .unwrap();
        let addrs = vec![
            aware.listen_addrs().await.unwrap()[0].clone(),
            blind.listen_addrs().await.unwrap()[0].clone(),
        ];
        let mut orchs = Vec::new();
        for i in 0..ORCHESTRATORS {
            let engine = LlamaEngine::load(
                &[ModelSpec {
                    path: path.clone(),
                    expected_sha256: None,
                }],
                LlamaConfig {
                    threads,
                    ctx_size: 2048,
                    slots: 2,
                    queue: 2,
                    ..LlamaConfig::default()
                },
            )
            .unwrap();
            orchs.push(
                Node::start(
                    NodeConfig {
                        role: Role::Orchestrator,
                        data_dir: dir.path().join(format!("orch{i}")),
                        network: NetworkConfig {
                            bootstrap: addrs.clone(),
                            ..net.clone()
                        },
                        ..NodeConfig::default()
                    },
                    Keypair::generate_ed25519(),
                    Some(engine as Arc<dyn Engine>),
                )
                .await
                .unwrap(),
            );
        }
        for r in [&aware, &blind] {
            tokio::time::timeout(
                Duration::from_secs(120),
                r.wait_for_orchestrators(ORCHESTRATORS),
            )
            .await
            .unwrap()
            .unwrap();
        }
        let client = Node::start(
            NodeConfig {
                role: Role::Client,
                network: NetworkConfig {
                    listen: vec![],
                    ..net
                },
                ..NodeConfig::default()
            },
            Keypair::generate_ed25519(),
            None,
        )
        .await
        .unwrap();
        for a in addrs {
            client.network().dial(a).await.unwrap();
        }
        // Its tasks are paid from a deposit at each router, on the ledger
        // both follow (dev faucet).
        for r in [aware.peer_id(), blind.peer_id()] {
            client::fund_from_faucet(client.network(), aware.peer_id(), r, FAUCET_AMOUNT / 2)
                .await
                .unwrap();
        }
        (aware, blind, client, orchs)
    });
    println!(
        "model {}, {ORCHESTRATORS} orchestrators, {threads} threads each, {chats} five-turn chats per router",
        path.display()
    );
    let mut first = (Vec::new(), Vec::new());
    let mut later = (Vec::new(), Vec::new());
    rt.block_on(async {
        // Chats alternate between the routers, each with its own system
        // prompt.
        for c in 0..chats {
            for (k, router) in [&aware, &blind].into_iter().enumerate() {
                let t = chat(&client, router.peer_id(), 2 * c + k).await;
                let (f, l) = if k == 0 {
                    (&mut first.0, &mut later.0)
                } else {
                    (&mut first.1, &mut later.1)
                };
                f.push(t[0]);
                l.extend_from_slice(&t[1..]);
            }
        }
    });
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (fa, fb) = (mean(&first.0), mean(&first.1));
    let (la, lb) = (mean(&later.0), mean(&later.1));
    let (ma, mb) = (median(later.0.clone()), median(later.1.clone()));
    // The mean is the figure: a cache-blind draw often lands on the node
    // that served the last turn anyway (its record scores it higher), and
    // what the misses cost shows in the mean, not the median.
    println!(
        "\n| chat turns | time to first token, prefix-aware routing | cache-blind routing | ratio | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| turn 1, mean (nothing cached) | {:.0} ms | {:.0} ms | {:.2} | |",
        fa * 1e3,
        fb * 1e3,
        fa / fb
    );
    println!(
        "| turns 2..5, mean | {:.0} ms | {:.0} ms | {:.2} | ≤ 0.3 |",
        la * 1e3,
        lb * 1e3,
        la / lb
    );
    println!(
        "| turns 2..5, median | {:.0} ms | {:.0} ms | {:.2} | |",
        ma * 1e3,
        mb * 1e3,
        ma / mb
    );
    let slow = |v: &[f64], t1: f64| v.iter().filter(|&&t| t > t1 / 4.0).count();
    println!(
        "\nturns 2..5 that prefilled most of the conversation (over a quarter of turn 1's time): {} of {} prefix-aware, {} of {} cache-blind",
        slow(&later.0, fa),
        later.0.len(),
        slow(&later.1, fb),
        later.1.len()
    );
}
