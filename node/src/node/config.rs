//! How a node is configured ([`NodeConfig`], its [`Role`] and
//! [`ChainChoice`]) and why it may fail to start ([`NodeError`]).

use crate::chain::embedded::LocalSettings;
use crate::chain::{ChainBackend, ChainError};
use crate::network::{NetworkConfig, NetworkError};
use crate::receipt_log::ReceiptLogError;
use crate::roles::anchor::AnchorPolicy;
use crate::roles::router::Verification;
use libp2p::PeerId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a node does on the mesh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves models: runs tasks and earns per task.
    Orchestrator,
    /// Takes clients' tasks, picks orchestrators, verifies, keeps the receipt log.
    Router,
    /// Only helps peers find each other (no tasks).
    Bootstrap,
    /// Submits tasks; serves nothing.
    Client,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub role: Role,
    /// Where the receipt log, the embedded chain and other state live (the
    /// identity is passed in).
    pub data_dir: PathBuf,
    /// The libp2p layer.
    pub network: NetworkConfig,
    /// Full advert refresh period (orchestrators).
    pub advert_interval: Duration,
    /// Orchestrators unheard of for this long are dropped (routers).
    pub stale_after: Duration,
    /// How long one orchestrator may take for one task (routers).
    pub task_timeout: Duration,
    /// How long a client's task may take in all, retries included (routers).
    pub task_deadline: Duration,
    /// Longest silence of a streaming orchestrator, once its tokens flow,
    /// before the task resumes on another (routers).
    pub stall_timeout: Duration,
    /// Whether an orchestrator delegates tasks it cannot take.
    pub delegation: bool,
    /// How long a router's call for bids stays open.
    pub bid_window: Duration,
    /// The highest price per work unit a router accepts in a bid.
    pub max_price_per_unit: u64,
    /// A router's fee, bps of each payment, charged to clients on top
    /// (set on the chain at start-up).
    pub fee_bps: u64,
    /// Orchestrators tried per task (routers).
    pub max_attempts: usize,
    /// Send a task first to an orchestrator whose prompt cache holds its
    /// prefix, when one has a free slot (routers).
    pub prefix_routing: bool,
    /// Asked price per generated token (orchestrators).
    pub price_per_token: u64,
    /// Task handlers in flight at most.
    pub max_tasks: usize,
    /// Where a router serves its OpenAI-compatible HTTP API (off when
    /// `None`).
    pub api: Option<std::net::SocketAddr>,
    /// HTTP requests the API serves at once; more are answered 429.
    pub api_max_in_flight: usize,
    /// Where any node serves `GET /metrics` on its own (off when `None`; a
    /// router's API serves it too).
    pub metrics: Option<std::net::SocketAddr>,
    /// Stake an orchestrator registers with, from its own account on the ledger.
    pub stake: u64,
    /// An orchestrator's account on the chain [default: its PeerId's local address].
    pub account: Option<cactus_protocol::contract::Address>,
    /// The chain a router settles on.
    pub chain: ChainChoice,
    /// The node whose ledger an orchestrator follows: it serves only the
    /// routers that ledger authorizes [default: the first bootstrap peer].
    pub ledger: Option<PeerId>,
    /// When a router anchors its receipts.
    pub anchor: AnchorPolicy,
    /// How a router spot-checks results.
    pub verification: Verification,
}

/// Which chain a router settles on.
#[derive(Clone)]
pub enum ChainChoice {
    /// An embedded chain in the data dir, created with these settings.
    Embedded(LocalSettings),
    /// A chain backend built by the caller (e.g. Aptos).
    Backend(Arc<dyn ChainBackend>),
    /// The embedded chain another node keeps (`--ledger`), over the mesh.
    Remote(PeerId),
}

impl std::fmt::Debug for ChainChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(s) => f.debug_tuple("Embedded").field(s).finish(),
            Self::Backend(b) => write!(f, "Backend({})", b.account()),
            Self::Remote(p) => write!(f, "Remote({p})"),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            role: Role::Orchestrator,
            data_dir: PathBuf::from("."),
            network: NetworkConfig::default(),
            advert_interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(35),
            task_timeout: Duration::from_secs(300),
            task_deadline: Duration::from_secs(540),
            stall_timeout: crate::roles::router::STALL_TIMEOUT,
            delegation: true,
            bid_window: Duration::from_millis(500),
            max_price_per_unit: 1_000,
            fee_bps: crate::roles::router::DEFAULT_FEE_BPS,
            max_attempts: 3,
            prefix_routing: true,
            price_per_token: 1,
            max_tasks: 256,
            api: None,
            api_max_in_flight: crate::api::MAX_IN_FLIGHT,
            metrics: None,
            stake: 10_000,
            account: None,
            // In-process clusters (tests, examples, benches) run a
            // development ledger; `cactus-node` only with --dev-faucet.
            chain: ChainChoice::Embedded(LocalSettings::dev()),
            ledger: None,
            anchor: AnchorPolicy::default(),
            verification: Verification::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The network failed to start.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The receipt log failed to open.
    #[error(transparent)]
    ReceiptLog(#[from] ReceiptLogError),
    /// The chain failed to open or answer.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The metrics server could not listen.
    #[error("the metrics server cannot listen on {addr}: {source} (check --metrics)")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP API could not listen.
    #[error("the HTTP API cannot listen on {addr}: {source}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A start-up step on a blocking thread did not finish (the runtime is
    /// shutting down).
    #[error("a start-up step was cancelled")]
    Join(#[from] tokio::task::JoinError),
    /// An orchestrator without models.
    #[error("an orchestrator needs at least one model (--model <file.gguf>)")]
    NoModels,
}
