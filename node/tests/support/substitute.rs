//! Test support, never installed: an orchestrator process that serves one
//! GGUF file while advertising another's hash and signing receipts for it —
//! the fraud spot checks exist to catch. Built only with the `test-utils`
//! feature, for the multi-process tests in `tests/it/e2e.rs`.
//!
//! ```text
//! cactus-test-substitute <serve.gguf> <claimed.gguf> <data-dir> <bootstrap> <price>
//! ```
#![allow(clippy::print_stdout)]

use cactus_node::inference::Engine;
use cactus_node::inference::llama::{LlamaConfig, LlamaEngine};
use cactus_node::inference::model_file::{self, ModelSpec};
use cactus_node::inference::stub::Substitute;
use cactus_node::network::NetworkConfig;
use cactus_node::{Node, NodeConfig, Role};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    cactus_node::cli::init_tracing("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [serve, claimed, data_dir, bootstrap, price] = args.as_slice() else {
        anyhow::bail!(
            "usage: cactus-test-substitute <serve.gguf> <claimed.gguf> <data-dir> <bootstrap> <price>"
        );
    };
    let claims = model_file::verify(&ModelSpec {
        path: PathBuf::from(claimed),
        expected_sha256: None,
    })?;
    let inner = LlamaEngine::load(
        &[ModelSpec {
            path: PathBuf::from(serve),
            expected_sha256: None,
        }],
        LlamaConfig {
            threads: 1,
            ..LlamaConfig::default()
        },
    )?;
    let engine: Arc<dyn Engine> = Arc::new(Substitute::new(inner, claims));
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
                    listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                    bootstrap: vec![bootstrap.parse()?],
                    ..NetworkConfig::default()
                },
                price_per_token: price.parse()?,
                ..NodeConfig::default()
            },
            key,
            Some(engine),
        )
        .await?;
        println!("substitute {} listening", node.peer_id());
        cactus_node::cli::shutdown_signal().await;
        node.shutdown().await;
        anyhow::Ok(())
    })
}
