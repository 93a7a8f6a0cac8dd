//! Test support, never installed: an orchestrator process running the stub
//! engine (it answers the reversed prompt, one character per token, at a
//! set pace), for multi-process tests that need many orchestrators and
//! many tasks without llama.cpp: the chaos test in `tests/it/chaos.rs`.
//! Built only with the `test-utils` feature.
//!
//! ```text
//! cactus-test-stub <data-dir> <listen> <bootstrap> <ms-per-token> <slots>
//! ```
#![allow(clippy::print_stdout)]

use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::StubEngine;
use cactus_node::network::NetworkConfig;
use cactus_node::{Node, NodeConfig, Role};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The name of the model the stub serves (its hash: the name's sha256).
const MODEL: &str = "chaos-stub";

fn main() -> anyhow::Result<()> {
    cactus_node::cli::init_tracing("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, listen, bootstrap, pace_ms, slots] = args.as_slice() else {
        anyhow::bail!(
            "usage: cactus-test-stub <data-dir> <listen> <bootstrap> <ms-per-token> <slots>"
        );
    };
    let slots: usize = slots.parse()?;
    let stub = StubEngine::new(MODEL).paced(Duration::from_millis(pace_ms.parse()?));
    let engine: Arc<dyn Engine> = Arc::new(ThreadPool::new(Arc::new(stub), slots, slots));
    let data_dir = PathBuf::from(data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let key = cactus_node::identity::load_or_create(&data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let node = Node::start(
            NodeConfig {
                role: Role::Orchestrator,
                data_dir,
                network: NetworkConfig {
                    listen: vec![listen.parse()?],
                    bootstrap: vec![bootstrap.parse()?],
                    ..NetworkConfig::default()
                },
                ..NodeConfig::default()
            },
            key,
            Some(engine),
        )
        .await?;
        println!("stub orchestrator {} listening", node.peer_id());
        cactus_node::cli::shutdown_signal().await;
        node.shutdown().await;
        anyhow::Ok(())
    })
}
