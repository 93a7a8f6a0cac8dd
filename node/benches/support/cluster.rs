//! A cluster in the bench's own process, on loopback: a router keeping a
//! development ledger, one orchestrator running the engine it is given, and
//! a client node with a deposit at the router.
// Each bench uses its own part of this.
#![allow(dead_code)]

use cactus_node::chain::embedded::FAUCET_AMOUNT;
use cactus_node::client;
use cactus_node::inference::Engine;
use cactus_node::network::NetworkConfig;
use cactus_node::{Node, NodeConfig, Role};
use libp2p::identity::Keypair;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn loopback() -> NetworkConfig {
    NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetworkConfig::default()
    }
}

/// The nodes; the data dirs live under the caller's directory.
pub struct Cluster {
    pub router: Node,
    pub orchestrator: Node,
    pub client: Node,
}

impl Cluster {
    /// Starts the router (serving its API on a free port when `api`), the
    /// orchestrator running `engine`, waits until the router admits it,
    /// then starts the client and funds its deposit from the dev faucet.
    pub async fn start(dir: &Path, engine: Arc<dyn Engine>, api: bool) -> Self {
        let router = Node::start(
            NodeConfig {
                role: Role::Router,
                data_dir: dir.join("router"),
                network: loopback(),
                api: api.then(|| "127.0.0.1:0".parse().unwrap()),
                ..NodeConfig::default()
            },
            Keypair::generate_ed25519(),
            None,
        )
        .await
        .unwrap();
        let addr = router.listen_addrs().await.unwrap()[0].clone();
        let orchestrator = Node::start(
            NodeConfig {
                role: Role::Orchestrator,
                data_dir: dir.join("orchestrator"),
                network: NetworkConfig {
                    bootstrap: vec![addr.clone()],
                    ..loopback()
                },
                ..NodeConfig::default()
            },
            Keypair::generate_ed25519(),
            Some(engine),
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(60), router.wait_for_orchestrators(1))
            .await
            .unwrap()
            .unwrap();
        let client = Node::start(
            NodeConfig {
                role: Role::Client,
                data_dir: dir.join("client"),
                network: NetworkConfig {
                    listen: vec![],
                    ..loopback()
                },
                ..NodeConfig::default()
            },
            Keypair::generate_ed25519(),
            None,
        )
        .await
        .unwrap();
        client.network().dial(addr).await.unwrap();
        // Its tasks are paid from a deposit at the router (dev faucet).
        let r = router.peer_id();
        client::fund_from_faucet(client.network(), r, r, FAUCET_AMOUNT)
            .await
            .unwrap();
        Self {
            router,
            orchestrator,
            client,
        }
    }

    /// The client's account on the router's ledger.
    pub fn client_account(&self) -> cactus_protocol::contract::Address {
        cactus_node::chain::default_account(&self.client.peer_id())
    }

    /// Shuts the nodes down, client first.
    pub async fn stop(self) {
        self.client.shutdown().await;
        self.orchestrator.shutdown().await;
        self.router.shutdown().await;
    }
}
