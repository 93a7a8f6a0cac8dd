//! Command-line arguments shared by the `cactus-node` and `cactus-bootstrap`
//! binaries, and [`run`], which runs a node until shutdown.

use crate::identity::{self, IdentityError};
use crate::inference::model_file::ModelSpec;
use crate::network::NetworkConfig;
use crate::node::{Node, NodeConfig, NodeError, Role};
use clap::Args;
use libp2p::Multiaddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a node keeps its identity and state.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory for the node's identity key and ledger [default: the
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
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: u32,
    /// Serve as a circuit relay (and AutoNAT dial-back server) for nodes
    /// behind NATs; for nodes with a public address. Bootstrap nodes always do.
    #[arg(long)]
    pub relay: bool,
    /// Longest life of one relayed circuit, in seconds (relay servers).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub relay_max_circuit_secs: u64,
    /// Most bytes one relayed circuit may carry (relay servers).
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub relay_max_circuit_bytes: u64,
    /// Peers learned from the DHT are dialled until this many are connected.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub target_peers: usize,
    /// Do not listen through a relay even when no public address is confirmed.
    #[arg(long)]
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
    /// CPU threads per generation [default: all cores].
    #[arg(long, env = "CACTUS_THREADS", value_name = "N")]
    pub threads: Option<u32>,
    /// Generations run at once (worker threads).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub slots: usize,
    /// Tasks that may wait for a free slot before new ones are refused as busy.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub queue: usize,
    /// Context size in tokens (prompt plus output).
    #[arg(long, default_value_t = 4096, value_name = "TOKENS")]
    pub ctx_size: u32,
    /// Model layers to offload to the GPU (builds with a GPU backend only).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub gpu_layers: u32,
    /// Price asked per generated token, in the ledger's smallest unit.
    #[arg(long, default_value_t = 1, value_name = "UNITS")]
    pub price_per_token: u64,
    /// Seconds between full capability adverts.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub advert_interval: u64,
    /// Seconds a router waits for one orchestrator to finish one task.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub task_timeout: u64,
    /// Seconds a router spends on one client task in all, retries on other
    /// orchestrators and spot checks included (clients wait 660 s at most).
    #[arg(long, default_value_t = 540, value_name = "SECS")]
    pub task_deadline: u64,
    /// Milliseconds a router's call for bids stays open when no orchestrator
    /// in its table can take a task.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub bid_window: u64,
    /// The highest price per work unit a router accepts in a bid.
    #[arg(long, default_value_t = 1_000, value_name = "UNITS")]
    pub max_price: u64,
    /// An orchestrator runs only the tasks it can take itself, instead of
    /// delegating the others to orchestrators it knows from their adverts.
    #[arg(long)]
    pub no_delegation: bool,
    /// Stake an orchestrator declares; on a local (embedded) ledger the router
    /// registers it with this stake.
    #[arg(
        long,
        env = "CACTUS_STAKE",
        default_value_t = 10_000,
        value_name = "UNITS"
    )]
    pub stake: u64,
    /// An orchestrator's ledger account, 0x-prefixed hex [default: derived
    /// from its PeerId, as local ledgers use].
    #[arg(long, env = "CACTUS_ACCOUNT", value_name = "ADDRESS", value_parser = parse_address)]
    pub account: Option<cactus_protocol::contract::Address>,
    /// The ledger: `embedded` (a local ledger in the data dir, for local
    /// clusters) or `aptos` (a deployed cactus_payment contract; needs a
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
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub anchor_batch: usize,
    /// ... or once the oldest has waited this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
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
    #[arg(long, default_value_t = 1_000, value_name = "BPS")]
    pub fraud_slash_bps: u64,
}

/// Which ledger a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChainKind {
    /// A local ledger under the router's data dir.
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
            delegation: !self.no_delegation,
            bid_window: Duration::from_millis(self.bid_window.max(1)),
            max_price_per_unit: self.max_price,
            price_per_token: self.price_per_token,
            slots: self.slots.max(1),
            queue: self.queue,
            stake: self.stake,
            account: self.account,
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

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A model could not be loaded.
    #[error("{0}")]
    Model(String),
    /// The ledger could not be reached or refused the node.
    #[error("ledger: {0}")]
    Chain(String),
    /// Models were given to a binary built without inference.
    #[error("this binary was built without the `inference` feature; it cannot serve models")]
    NoInference,
    /// The node stopped by itself.
    #[error("the node stopped unexpectedly")]
    Stopped,
}

#[cfg(feature = "inference")]
async fn load_engine(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::inference::Engine>>, RunError> {
    use crate::inference::llama::{LlamaConfig, LlamaEngine};
    if args.models.is_empty() {
        return Ok(None);
    }
    let mut config = LlamaConfig {
        ctx_size: args.ctx_size,
        gpu_layers: args.gpu_layers,
        ..LlamaConfig::default()
    };
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    let specs = args.models.clone();
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&specs, config))
        .await
        .map_err(|e| RunError::Model(e.to_string()))?
        .map_err(|e| RunError::Model(e.to_string()))?;
    Ok(Some(engine))
}

#[cfg(not(feature = "inference"))]
async fn load_engine(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::inference::Engine>>, RunError> {
    if args.models.is_empty() {
        Ok(None)
    } else {
        Err(RunError::NoInference)
    }
}

/// Runs a node until `shutdown` is cancelled or the node fails.
pub async fn run(args: NodeArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let config = args.node_config();
    let dir = config.data_dir.clone();
    let key = tokio::task::spawn_blocking(move || identity::load_or_create(&dir))
        .await
        .map_err(|e| RunError::Model(e.to_string()))??;
    let engine = if args.role == Role::Orchestrator {
        load_engine(&args).await?
    } else {
        None
    };
    let mut config = config;
    if let Some(chain) = connect_chain(&args)? {
        if args.role == Role::Orchestrator {
            confirm_stake(chain.as_ref(), &key, args.stake).await?;
            config.account = Some(chain.account());
        }
        config.chain = crate::node::ChainChoice::Backend(chain);
    }
    let mut node = Node::start(config, key, engine).await?;
    tracing::info!(peer_id = %node.peer_id(), role = ?args.role, "node started");
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = node.stopped() => Err(RunError::Stopped),
    };
    tracing::info!("shutting down");
    node.shutdown().await;
    result
}

/// The chain backend the flags name, if not the embedded ledger.
#[cfg(feature = "aptos")]
fn connect_chain(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::chain::ChainBackend>>, RunError> {
    if args.chain == ChainKind::Embedded {
        return Ok(None);
    }
    let missing = |flag: &str| RunError::Chain(format!("--chain aptos needs {flag}"));
    let config = crate::chain::aptos::AptosConfig {
        url: args
            .aptos_url
            .clone()
            .ok_or_else(|| missing("--aptos-url"))?,
        key_file: args
            .aptos_key_file
            .clone()
            .ok_or_else(|| missing("--aptos-key-file"))?,
        contract: args
            .contract_address
            .ok_or_else(|| missing("--contract-address"))?,
    };
    let chain = crate::chain::aptos::AptosChain::connect(config)
        .map_err(|e| RunError::Chain(e.to_string()))?;
    Ok(Some(chain))
}

#[cfg(not(feature = "aptos"))]
fn connect_chain(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::chain::ChainBackend>>, RunError> {
    match args.chain {
        ChainKind::Embedded => Ok(None),
        ChainKind::Aptos => Err(RunError::Chain(
            "this binary was built without the `aptos` feature: cargo build --release --features aptos".into(),
        )),
    }
}

/// An orchestrator on a chain registers with `stake` if it is not registered
/// yet, and otherwise confirms its stake, at start-up.
async fn confirm_stake(
    chain: &dyn crate::chain::ChainBackend,
    key: &libp2p::identity::Keypair,
    stake: u64,
) -> Result<(), RunError> {
    let err = |e: crate::chain::ChainError| RunError::Chain(e.to_string());
    let account = chain.account();
    let peer = key.public().to_peer_id();
    match chain.orchestrator(account).await.map_err(err)? {
        Some(o) if o.peer_id != peer.to_bytes() => Err(RunError::Chain(format!(
            "ledger account {account} is registered for another PeerId; use that node's identity or another account"
        ))),
        Some(o) => {
            tracing::info!(%account, stake = o.stake, successes = o.successes, failures = o.failures, "stake confirmed on the ledger");
            Ok(())
        }
        None => {
            let op = cactus_protocol::contract::Op::RegisterOrchestrator {
                peer_id: peer.to_bytes(),
                amount: stake,
            };
            chain.submit(op).await.map_err(err)?;
            tracing::info!(%account, stake, "registered on the ledger");
            Ok(())
        }
    }
}

/// Installs the tracing subscriber: to stderr, filtered by `RUST_LOG` or
/// `default` when unset.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A receipt as JSON: every body field, both signatures in hex, and the whole
/// framed receipt in hex (`frame_hex`) for anyone to decode and re-verify.
pub fn receipt_json(r: &cactus_protocol::Receipt) -> serde_json::Value {
    use cactus_protocol::Wire;
    let b = &r.body;
    serde_json::json!({
        "version": b.version,
        "task_id": b.task_id.to_hex(),
        "model_sha256": b.model.to_hex(),
        "prompt_sha256": b.prompt_hash.to_hex(),
        "output_sha256": b.output_hash.to_hex(),
        "sampling": {
            "max_tokens": b.sampling.max_tokens,
            "temperature": b.sampling.temperature,
            "top_p": b.sampling.top_p,
            "seed": b.sampling.seed,
        },
        "prompt_tokens": b.prompt_tokens,
        "output_tokens": b.output_tokens,
        "compute_ms": b.compute_ms,
        "orchestrator": b.orchestrator.to_string(),
        "router": b.router.to_string(),
        "started_at_ms": b.started_at_ms,
        "finished_at_ms": b.finished_at_ms,
        "orchestrator_sig": hex::encode(&r.orchestrator_sig),
        "router_sig": r.router_sig.as_ref().map(|s| hex::encode(s.as_slice())),
        "verified": r.verify().is_ok(),
        "frame_hex": r.encode().map(hex::encode).unwrap_or_default(),
    })
}

/// A receipt bundle as JSON: the receipt's frame in hex and, once anchored,
/// the batch index, root and inclusion path.
pub fn bundle_json(b: &cactus_protocol::merkle::ReceiptBundle) -> serde_json::Value {
    use cactus_protocol::Wire;
    serde_json::json!({
        "task_id": b.receipt.body.task_id.to_hex(),
        "receipt": b.receipt.encode().map(hex::encode).unwrap_or_default(),
        "anchor": b.anchor.as_ref().map(|a| serde_json::json!({
            "index": a.anchor_index,
            "root": a.root.to_hex(),
            "leaf_index": a.proof.index,
            "leaves": a.proof.leaves,
            "path": a.proof.path.iter().map(|s| serde_json::json!({
                "sibling": s.sibling.to_hex(),
                "left": s.left,
            })).collect::<Vec<_>>(),
        })),
    })
}

/// Reads a receipt bundle written by [`bundle_json`].
pub fn bundle_from_json(
    v: &serde_json::Value,
) -> Result<cactus_protocol::merkle::ReceiptBundle, String> {
    use cactus_protocol::merkle::{AnchorProof, Proof, ReceiptBundle, Step};
    use cactus_protocol::{Digest, Receipt, Wire};
    let hex_field = |v: &serde_json::Value, k: &str| -> Result<Vec<u8>, String> {
        let s = v
            .get(k)
            .and_then(|x| x.as_str())
            .ok_or_else(|| format!("missing field {k:?}"))?;
        hex::decode(s).map_err(|_| format!("field {k:?} is not hex"))
    };
    let digest = |v: &serde_json::Value, k: &str| -> Result<Digest, String> {
        let b = hex_field(v, k)?;
        Ok(Digest(
            b.try_into()
                .map_err(|_| format!("field {k:?} is not 32 bytes"))?,
        ))
    };
    let receipt =
        Receipt::decode(&hex_field(v, "receipt")?).map_err(|e| format!("receipt: {e}"))?;
    let anchor = match v.get("anchor") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => {
            let num = |k: &str| {
                a.get(k)
                    .and_then(|x| x.as_u64())
                    .ok_or_else(|| format!("missing anchor field {k:?}"))
            };
            let path = a
                .get("path")
                .and_then(|p| p.as_array())
                .ok_or("missing anchor path")?
                .iter()
                .take(64)
                .map(|s| {
                    Ok(Step {
                        sibling: digest(s, "sibling")?,
                        left: s
                            .get("left")
                            .and_then(|x| x.as_bool())
                            .ok_or("missing path side")?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Some(AnchorProof {
                anchor_index: num("index")?,
                root: digest(a, "root")?,
                proof: Proof {
                    index: num("leaf_index")?,
                    leaves: num("leaves")?,
                    path,
                },
            })
        }
    };
    Ok(ReceiptBundle { receipt, anchor })
}
