//! The command line: the flags of a running node ([`args`]), the
//! `cactus-node` subcommands ([`commands`]), `--config` files ([`config`]),
//! and [`run`], which runs a node until shutdown.

pub mod args;
pub mod commands;
pub mod config;

pub use args::{ChainKind, DataDirArgs, MeshArgs, NodeArgs, parse_address, parse_tolerance};

use crate::identity::{self, IdentityError};
use crate::node::{Node, NodeError, Role};
use tokio_util::sync::CancellationToken;

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[cfg(feature = "inference")]
    #[error(transparent)]
    Model(#[from] crate::inference::llama::LoadError),
    /// A start-up step run off the async threads panicked.
    #[error("a start-up task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Chain(#[from] crate::chain::ChainError),
    #[error("--chain aptos needs {0}")]
    MissingFlag(&'static str),
    #[error(
        "chain account {0} is registered for another PeerId; use that node's identity or another account"
    )]
    AccountTaken(cactus_protocol::contract::Address),
    #[error(
        "this binary was built without the `aptos` feature: cargo build --profile dist --features aptos"
    )]
    NoAptos,
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
        slots: args.slots.max(1),
        queue: args.queue,
        batch_size: args.batch_size.max(1),
        ..LlamaConfig::default()
    };
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    let specs = args.models.clone();
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&specs, config)).await??;
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
    let key = tokio::task::spawn_blocking(move || identity::load_or_create(&dir)).await??;
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

/// The chain backend the flags name, if not the embedded chain.
#[cfg(feature = "aptos")]
fn connect_chain(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::chain::ChainBackend>>, RunError> {
    if args.chain == ChainKind::Embedded {
        return Ok(None);
    }
    let missing = RunError::MissingFlag;
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
    let chain = crate::chain::aptos::AptosChain::connect(config)?;
    Ok(Some(chain))
}

#[cfg(not(feature = "aptos"))]
fn connect_chain(
    args: &NodeArgs,
) -> Result<Option<std::sync::Arc<dyn crate::chain::ChainBackend>>, RunError> {
    match args.chain {
        ChainKind::Embedded => Ok(None),
        ChainKind::Aptos => Err(RunError::NoAptos),
    }
}

/// An orchestrator on a chain registers with `stake` if it is not registered
/// yet, and otherwise confirms its stake, at start-up.
async fn confirm_stake(
    chain: &dyn crate::chain::ChainBackend,
    key: &libp2p::identity::Keypair,
    stake: u64,
) -> Result<(), RunError> {
    let account = chain.account();
    let peer = key.public().to_peer_id();
    match chain.orchestrator(account).await? {
        Some(o) if o.peer_id != peer.to_bytes() => Err(RunError::AccountTaken(account)),
        Some(o) => {
            tracing::info!(%account, stake = o.stake, successes = o.successes, failures = o.failures, "stake confirmed on the chain");
            Ok(())
        }
        None => {
            let op = cactus_protocol::contract::Op::RegisterOrchestrator {
                peer_id: peer.to_bytes(),
                amount: stake,
            };
            chain.submit(op).await?;
            tracing::info!(%account, stake, "registered on the chain");
            Ok(())
        }
    }
}

/// Installs the tracing subscriber: to stderr, filtered by `RUST_LOG` or
/// `default` when unset.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_directives(default)));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The log filter when `RUST_LOG` is not set: `default` for Cactus and its
/// libraries, but only warnings from llama.cpp, whose loader dumps the
/// model's metadata (over a hundred lines per model) at info level.
/// `RUST_LOG=info,llama-cpp-2=info` shows them.
fn default_directives(default: &str) -> String {
    format!("{default},{LLAMA_CPP_LOG_TARGET}=warn")
}

/// The tracing target llama-cpp-2 gives the log lines of llama.cpp itself.
const LLAMA_CPP_LOG_TARGET: &str = "llama-cpp-2";

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
    serde_json::to_value(crate::report::output::ReceiptJson::from(r)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn llama_cpp_says_only_warnings_by_default() {
        let filter = tracing_subscriber::EnvFilter::new(default_directives("info"));
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(target: "llama-cpp-2", Level::INFO));
            assert!(tracing::enabled!(target: "llama-cpp-2", Level::WARN));
            assert!(tracing::enabled!(target: "cactus_node::cli", Level::INFO));
        });
    }
}
