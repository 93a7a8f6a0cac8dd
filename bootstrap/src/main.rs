//! `cactus-bootstrap`: a public Cactus bootstrap node. It answers Kademlia
//! queries, identify and ping so that new nodes can find the mesh, and relays
//! capability gossip. It never runs inference and does not link llama.cpp.

use cactus_node::Role;
use cactus_node::cli::{self, DataDirArgs, MeshArgs, NodeArgs};
use clap::Parser;
use std::io::Write;
use tokio_util::sync::CancellationToken;

/// A Cactus bootstrap node.
#[derive(Debug, Parser)]
#[command(name = "cactus-bootstrap", version)]
struct Cli {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    data: DataDirArgs,
    /// Serve Prometheus metrics at GET /metrics here, e.g. 127.0.0.1:9090;
    /// off unless given.
    #[arg(long, env = "CACTUS_METRICS", value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

fn main() {
    let mut cli = Cli::parse();
    cli::init_tracing("info");
    // A bootstrap node is public infrastructure: it relays for nodes behind
    // NATs (with the limits given on the command line).
    cli.mesh.relay = true;
    let args = NodeArgs {
        role: Role::Bootstrap,
        mesh: cli.mesh,
        data: cli.data,
        models: Vec::new(),
        threads: None,
        slots: 1,
        queue: 0,
        ctx_size: 0,
        batch_size: 0,
        api: None,
        metrics: cli.metrics,
        gpu_layers: 0,
        price_per_token: 0,
        advert_interval: 10,
        task_timeout: 300,
        stall_timeout: 30,
        task_deadline: 540,
        no_delegation: true,
        bid_window: 500,
        max_price: 0,
        fee_bps: 0,
        stake: 0,
        account: None,
        ledger: None,
        authorize_servers: Vec::new(),
        dev_faucet: false,
        anchor_batch: 1,
        anchor_interval: 30,
        chain: cli::ChainKind::Embedded,
        aptos_url: None,
        aptos_key_file: None,
        contract_address: None,
        spot_check: 0.0,
        verify_tolerance: 1.0,
        fraud_slash_bps: 0,
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let trigger = shutdown.clone();
                tokio::spawn(async move {
                    cli::shutdown_signal().await;
                    trigger.cancel();
                });
                cli::run(args, shutdown).await.map_err(|e| e.to_string())
            })
        });
    if let Err(e) = result {
        let _ = writeln!(std::io::stderr(), "error: {e}");
        std::process::exit(1);
    }
}
