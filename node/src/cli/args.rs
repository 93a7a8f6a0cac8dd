//! The flags of a running node, shared by `cactus-node` and
//! `cactus-bootstrap`. Every setting has an environment variable
//! (`CACTUS_` and the flag's name), which a `--config` file may set too.

use crate::inference::model_file::ModelSpec;
use crate::network::NetworkConfig;
use crate::node::{NodeConfig, Role};
use clap::Args;
use libp2p::Multiaddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a node keeps its identity and state.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory for the node's identity key, receipt log and embedded chain [default: the
    /// platform's data dir, e.g. ~/.local/share/cactus-node].
    #[arg(long, env = "CACTUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data dir: the flag, or the platform default.
    pub fn resolve(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            directories::ProjectDirs::from("org", "cactus", "cactus-node")
                .map(|d| d.data_dir().to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".cactus-node"))
        })
    }
}

/// How a node joins the mesh.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// A peer to join through, e.g. /ip4/1.2.3.4/tcp/4001/p2p/12D3Koo...
    /// (repeatable; comma-separated in the environment variable).
    #[arg(
        long = "bootstrap",
        env = "CACTUS_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<Multiaddr>,
    /// An address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1].
    #[arg(
        long = "listen",
        env = "CACTUS_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<Multiaddr>,
    /// Most connections open at once.
    #[arg(
        long,
        env = "CACTUS_MAX_CONNECTIONS",
        default_value_t = 256,
        value_name = "N"
    )]
    pub max_connections: u32,
    /// Inbound connections one IP address may hold (relayed ones are not
    /// counted), so that one host cannot take every slot with many PeerIds.
    #[arg(
        long,
        env = "CACTUS_MAX_CONNECTIONS_PER_IP",
        default_value_t = 32,
        value_name = "N"
    )]
    pub max_connections_per_ip: usize,
    /// Serve as a circuit relay (and AutoNAT dial-back server) for nodes
    /// behind NATs; for nodes with a public address. Bootstrap nodes always do.
    #[arg(long, env = "CACTUS_RELAY")]
    pub relay: bool,
    /// Longest life of one relayed circuit, in seconds (relay servers).
    #[arg(
        long,
        env = "CACTUS_RELAY_MAX_CIRCUIT_SECS",
        default_value_t = 1800,
        value_name = "SECS"
    )]
    pub relay_max_circuit_secs: u64,
    /// Most bytes one relayed circuit may carry (relay servers).
    #[arg(long, env = "CACTUS_RELAY_MAX_CIRCUIT_BYTES", default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub relay_max_circuit_bytes: u64,
    /// Peers learned from the DHT are dialled until this many are connected.
    #[arg(
        long,
        env = "CACTUS_TARGET_PEERS",
        default_value_t = 16,
        value_name = "N"
    )]
    pub target_peers: usize,
    /// Do not listen through a relay even when no public address is confirmed.
    #[arg(long, env = "CACTUS_NO_RELAY_CLIENT")]
    pub no_relay_client: bool,
    /// An address others can dial this node on, when it cannot be seen from
    /// --listen (e.g. a forwarded port on a public IP; repeatable).
    #[arg(
        long = "external",
        env = "CACTUS_EXTERNAL",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub external: Vec<Multiaddr>,
}

impl MeshArgs {
    /// The network settings these flags describe.
    pub fn network_config(&self) -> NetworkConfig {
        let mut c = NetworkConfig::default();
        if !self.listen.is_empty() {
            c.listen = self.listen.clone();
        }
        c.bootstrap = self.bootstrap.clone();
        c.max_connections = self.max_connections;
        c.max_connections_per_ip = self.max_connections_per_ip;
        c.relay_client = !self.no_relay_client;
        c.target_peers = self.target_peers;
        c.external = self.external.clone();
        if self.relay {
            c.relay_server = Some(crate::network::behaviour::RelayLimits {
                max_circuit_duration: Duration::from_secs(self.relay_max_circuit_secs.max(1)),
                max_circuit_bytes: self.relay_max_circuit_bytes.max(1),
                ..Default::default()
            });
        }
        c
    }
}

/// Flags of a running node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// What this node does on the mesh.
    #[arg(long, env = "CACTUS_ROLE", value_enum, default_value_t = Role::Orchestrator)]
    pub role: Role,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// A GGUF model to serve, optionally with its expected sha256 as
    /// FILE:SHA256 (repeatable; orchestrators).
    #[arg(
        long = "model",
        env = "CACTUS_MODEL",
        value_name = "FILE[:SHA256]",
        value_delimiter = ','
    )]
    pub models: Vec<ModelSpec>,
    /// CPU threads of the engine, shared by every sequence it runs [default:
    /// all cores].
    #[arg(long, env = "CACTUS_THREADS", value_name = "N")]
    pub threads: Option<u32>,
    /// Sequences each model generates at once, decoded together in shared
    /// batches.
    #[arg(long, env = "CACTUS_SLOTS", default_value_t = 4, value_name = "N")]
    pub slots: usize,
    /// Tasks that may wait for a free slot before new ones are refused as busy.
    #[arg(long, env = "CACTUS_QUEUE", default_value_t = 4, value_name = "N")]
    pub queue: usize,
    /// Most tokens one decode step carries (prompt chunks and the next token
    /// of every running sequence).
    #[arg(
        long,
        env = "CACTUS_BATCH_SIZE",
        default_value_t = 512,
        value_name = "TOKENS"
    )]
    pub batch_size: u32,
    /// Context of each slot in tokens (prompt plus output); a model's KV
    /// cache holds slots × ctx-size tokens.
    #[arg(
        long,
        env = "CACTUS_CTX_SIZE",
        default_value_t = 4096,
        value_name = "TOKENS"
    )]
    pub ctx_size: u32,
    /// Model layers to offload to the GPU (builds with a GPU backend only).
    #[arg(long, env = "CACTUS_GPU_LAYERS", default_value_t = 0, value_name = "N")]
    pub gpu_layers: u32,
    /// Serve the OpenAI-compatible HTTP API here (routers), e.g.
    /// 127.0.0.1:8080; off unless given.
    #[arg(long, env = "CACTUS_API", value_name = "ADDR:PORT")]
    pub api: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at GET /metrics here, e.g. 127.0.0.1:9090
    /// (any role; a router's --api serves /metrics too); off unless given.
    #[arg(long, env = "CACTUS_METRICS", value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Price asked per generated token, in the chain's smallest unit.
    #[arg(
        long,
        env = "CACTUS_PRICE_PER_TOKEN",
        default_value_t = 1,
        value_name = "UNITS"
    )]
    pub price_per_token: u64,
    /// Seconds between full capability adverts.
    #[arg(
        long,
        env = "CACTUS_ADVERT_INTERVAL",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub advert_interval: u64,
    /// Seconds a router waits for one orchestrator to finish one task.
    #[arg(
        long,
        env = "CACTUS_TASK_TIMEOUT",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub task_timeout: u64,
    /// Seconds a streaming orchestrator may fall silent, once its tokens
    /// flow, before a router resumes the task on another.
    #[arg(
        long,
        env = "CACTUS_STALL_TIMEOUT",
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub stall_timeout: u64,
    /// Seconds a router spends on one client task in all, retries on other
    /// orchestrators and spot checks included (clients wait 660 s at most).
    #[arg(
        long,
        env = "CACTUS_TASK_DEADLINE",
        default_value_t = 540,
        value_name = "SECS"
    )]
    pub task_deadline: u64,
    /// Milliseconds a router's call for bids stays open when no orchestrator
    /// in its table can take a task.
    #[arg(
        long,
        env = "CACTUS_BID_WINDOW",
        default_value_t = 500,
        value_name = "MS"
    )]
    pub bid_window: u64,
    /// The highest price per work unit a router pays: in a bid, or asked in
    /// an orchestrator's advert (one asking more is never picked).
    #[arg(
        long,
        env = "CACTUS_MAX_PRICE",
        default_value_t = 1_000,
        value_name = "UNITS"
    )]
    pub max_price: u64,
    /// A router's fee, in basis points of each payment, charged to the
    /// client on top of it (set on the chain at start-up).
    #[arg(
        long,
        env = "CACTUS_FEE_BPS",
        default_value_t = crate::roles::router::DEFAULT_FEE_BPS,
        value_name = "BPS",
        value_parser = clap::value_parser!(u64).range(0..=10_000)
    )]
    pub fee_bps: u64,
    /// An orchestrator runs only the tasks it can take itself, instead of
    /// delegating the others to orchestrators it knows from their adverts.
    #[arg(long, env = "CACTUS_NO_DELEGATION")]
    pub no_delegation: bool,
    /// Stake an orchestrator registers with, moved from its own account on
    /// the ledger at start-up (on a --dev-faucet ledger, funded from the
    /// faucet first); routers count the stake the ledger holds.
    #[arg(
        long,
        env = "CACTUS_STAKE",
        default_value_t = 10_000,
        value_name = "UNITS"
    )]
    pub stake: u64,
    /// An orchestrator's account on the chain, 0x-prefixed hex [default:
    /// derived from its PeerId, as embedded chains use].
    #[arg(long, env = "CACTUS_ACCOUNT", value_name = "ADDRESS", value_parser = parse_address)]
    pub account: Option<cactus_protocol::contract::Address>,
    /// The node keeping the cluster's ledger (a router's embedded chain), by
    /// PeerId. An orchestrator stakes there and serves only the routers it
    /// authorizes; a router naming one settles there instead of keeping a
    /// chain of its own [default for orchestrators: the first --bootstrap
    /// address's peer].
    #[arg(long, env = "CACTUS_LEDGER", value_name = "PEER_ID")]
    pub ledger: Option<libp2p::PeerId>,
    /// Another router, by PeerId, that this router's embedded chain
    /// authorizes as a server, so that orchestrators following this ledger
    /// serve it too; repeatable (comma-separated in the variable).
    #[arg(
        long = "authorize-server",
        env = "CACTUS_AUTHORIZE_SERVERS",
        value_name = "PEER_ID",
        value_delimiter = ','
    )]
    pub authorize_servers: Vec<libp2p::PeerId>,
    /// Development only: the router's embedded ledger gives every peer that
    /// asks free funds (up to a fixed amount each), so that a local cluster
    /// can stake without a funded account. Never on a ledger holding value.
    #[arg(long, env = "CACTUS_DEV_FAUCET")]
    pub dev_faucet: bool,
    /// The chain that settles tasks: `embedded` (a local chain in the data
    /// dir, for local clusters) or `aptos` (a deployed cactus_payment contract; needs a
    /// build with the `aptos` feature).
    #[arg(long, env = "CACTUS_CHAIN", value_enum, default_value_t = ChainKind::Embedded)]
    pub chain: ChainKind,
    /// Aptos fullnode REST URL (with --chain aptos).
    #[arg(long, env = "CACTUS_APTOS_URL", value_name = "URL")]
    pub aptos_url: Option<String>,
    /// File holding this node's Aptos ed25519 private key in hex, mode 0600
    /// (with --chain aptos).
    #[arg(long, env = "CACTUS_APTOS_KEY_FILE", value_name = "FILE")]
    pub aptos_key_file: Option<PathBuf>,
    /// Address the cactus_payment module is published at (with --chain aptos).
    #[arg(long, env = "CACTUS_CONTRACT_ADDRESS", value_name = "ADDRESS", value_parser = parse_address)]
    pub contract_address: Option<cactus_protocol::contract::Address>,
    /// A router anchors its receipts once this many wait.
    #[arg(
        long,
        env = "CACTUS_ANCHOR_BATCH",
        default_value_t = 64,
        value_name = "N"
    )]
    pub anchor_batch: usize,
    /// ... or once the oldest has waited this many seconds.
    #[arg(
        long,
        env = "CACTUS_ANCHOR_INTERVAL",
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub anchor_interval: u64,
    /// Percentage of results a router spot-checks by replaying them on
    /// another orchestrator (0 turns spot checks off).
    #[arg(
        long,
        env = "CACTUS_SPOT_CHECK",
        default_value_t = 5.0,
        value_name = "PERCENT"
    )]
    pub spot_check: f64,
    /// Largest logit gap between a returned token and the model's pick that a
    /// replay accepts; measure it for a model with `cargo bench --bench replay`.
    #[arg(
        long,
        env = "CACTUS_VERIFY_TOLERANCE",
        default_value_t = 1.0,
        value_name = "LOGITS",
        value_parser = parse_tolerance
    )]
    pub verify_tolerance: f32,
    /// Share of stake slashed for fraud confirmed by two verifiers, in basis
    /// points (capped by the contract's maximum).
    #[arg(
        long,
        env = "CACTUS_FRAUD_SLASH_BPS",
        default_value_t = 1_000,
        value_name = "BPS"
    )]
    pub fraud_slash_bps: u64,
}

/// Which chain settles a node's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChainKind {
    /// A local chain in the router's data dir.
    Embedded,
    /// A deployed `cactus_payment` contract on Aptos.
    Aptos,
}

/// Parses a replay tolerance: a number no smaller than the protocol's floor.
pub fn parse_tolerance(s: &str) -> Result<f32, String> {
    let min = cactus_protocol::fraud::MIN_TOLERANCE;
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= min => Ok(t),
        _ => Err(format!("expected a number of logits >= {min}, got {s:?}")),
    }
}

/// Parses a 0x-prefixed (or bare) 64-hex-digit account address.
pub fn parse_address(s: &str) -> Result<cactus_protocol::contract::Address, String> {
    let hex_part = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| format!("expected a 32-byte hex address, got {s:?}"))?;
    Ok(cactus_protocol::contract::Address(out))
}

impl NodeArgs {
    /// The embedded chain these flags describe.
    fn embedded_chain(&self) -> crate::node::ChainChoice {
        crate::node::ChainChoice::Embedded(crate::chain::embedded::LocalSettings {
            servers: self
                .authorize_servers
                .iter()
                .map(crate::chain::default_account)
                .collect(),
            dev_faucet: self
                .dev_faucet
                .then_some(crate::chain::embedded::FAUCET_AMOUNT),
            ..Default::default()
        })
    }

    /// The node settings these flags describe.
    pub fn node_config(&self) -> NodeConfig {
        let advert = Duration::from_secs(self.advert_interval.max(1));
        NodeConfig {
            role: self.role,
            data_dir: self.data.resolve(),
            network: self.mesh.network_config(),
            advert_interval: advert,
            stale_after: advert * 3 + Duration::from_secs(5),
            task_timeout: Duration::from_secs(self.task_timeout.max(1)),
            task_deadline: Duration::from_secs(self.task_deadline.max(1)),
            stall_timeout: Duration::from_secs(self.stall_timeout.max(1)),
            delegation: !self.no_delegation,
            bid_window: Duration::from_millis(self.bid_window.max(1)),
            max_price_per_unit: self.max_price,
            fee_bps: self.fee_bps,
            price_per_token: self.price_per_token,
            api: self.api,
            metrics: self.metrics,
            stake: self.stake,
            account: self.account,
            ledger: self.ledger,
            // A router naming another node's ledger settles there; any
            // other keeps (or, orchestrators, follows) an embedded one.
            chain: match self.ledger {
                Some(ledger) if self.role == Role::Router => {
                    crate::node::ChainChoice::Remote(ledger)
                }
                _ => self.embedded_chain(),
            },
            anchor: crate::roles::anchor::AnchorPolicy {
                batch: self.anchor_batch.max(1),
                max_age: Duration::from_secs(self.anchor_interval.max(1)),
            },
            verification: crate::roles::router::Verification {
                share_ppm: (self.spot_check.clamp(0.0, 100.0) * 10_000.0).round() as u32,
                tolerance: self.verify_tolerance,
                slash_bps: self.fraud_slash_bps,
            },
            ..NodeConfig::default()
        }
    }
}
