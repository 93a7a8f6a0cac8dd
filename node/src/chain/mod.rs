//! The chain a router settles tasks on: stake, server authorization,
//! escrowed tasks, payments, slashing and receipt anchors, with the rules of
//! the `cactus_payment` contract (`contracts/SPEC.md`).
//!
//! Two backends behind [`ChainBackend`]:
//!
//! - [`embedded::EmbeddedChain`] (the default): the reference state machine
//!   `cactus_protocol::contract` with its operation log in redb under the data
//!   dir, for local clusters with no chain at all;
//! - `aptos::AptosChain` (cargo feature `aptos`): entry-function transactions
//!   and view calls against a deployed `cactus_payment` module.

pub mod abi;
#[cfg(feature = "aptos")]
pub mod aptos;
pub mod embedded;
pub mod remote;

use cactus_protocol::TaskId;
use cactus_protocol::contract::{Abort, Address, Anchor, Config, Op, Orchestrator, Task, Totals};
use cactus_protocol::wire::SourceError;
use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use std::path::PathBuf;

/// Why a chain call failed. Every failure but [`ChainError::Abort`] is the
/// backend's (storage, network, node), and reads as `chain backend: ..`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The contract refused the operation.
    #[error("the chain refused the operation: {0}")]
    Abort(#[from] Abort),
    /// The embedded chain's database failed.
    #[error("chain backend: {}: {source}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// `open_existing` found no chain file.
    #[error("chain backend: no embedded chain at {} (check --data-dir)", path.display())]
    NoChain {
        /// Where the chain's file was looked for.
        path: PathBuf,
    },
    /// A record to store could not be encoded.
    #[error("chain backend: {0}")]
    Encode(#[source] SourceError),
    /// A stored record does not decode.
    #[error("chain backend: {}: corrupt chain record: {source}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: SourceError,
    },
    /// A stored record is larger than any record written.
    #[error("chain backend: {}: stored record of {len} bytes is over the cap", path.display())]
    RecordTooLarge {
        /// The database file.
        path: PathBuf,
        /// Its size.
        len: usize,
    },
    /// A logged operation no longer applies: the log is not this chain's.
    #[error("chain backend: {}: replaying operation {seq}: {abort}", path.display())]
    Replay {
        /// The database file.
        path: PathBuf,
        /// The operation's number in the log.
        seq: u64,
        /// Why the contract refused it.
        #[source]
        abort: Abort,
    },
    /// The blocking task that ran a chain call panicked or was cancelled.
    #[error("chain backend: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// The `cactus_payment` contract has not been initialized.
    #[error("chain backend: the cactus_payment contract is not initialized")]
    NotInitialized,
    /// The node keeping the ledger did not answer as it should.
    #[error("chain backend: {0}")]
    Remote(String),
    /// This backend cannot do what was asked.
    #[error("chain backend: {0}")]
    Unsupported(&'static str),
    /// An operation the contract accepted, and whose caller went on, was
    /// then not committed (the disk failed).
    #[error("chain backend: an operation the contract accepted was not committed: {0}")]
    Uncommitted(String),
    /// The Aptos node or SDK failed.
    #[cfg(feature = "aptos")]
    #[error("chain backend: {0}")]
    Aptos(#[source] Box<aptos::AptosError>),
}

/// Two chain errors are equal when they are the same abort, or when they say
/// the same: the sources (redb, the SDK) are not comparable, and callers
/// (tests) compare what a call failed with.
impl PartialEq for ChainError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Abort(a), Self::Abort(b)) => a == b,
            (Self::Abort(_), _) | (_, Self::Abort(_)) => false,
            (a, b) => a.to_string() == b.to_string(),
        }
    }
}

impl Eq for ChainError {}

/// A chain backend. Operations are signed by this node's account on the chain
/// ([`ChainBackend::account`]).
pub trait ChainBackend: Send + Sync + std::fmt::Debug + 'static {
    /// This node's account on the chain.
    fn account(&self) -> Address;
    /// Applies one operation, signed by [`Self::account`]; resolves when it is
    /// durable (committed locally, or executed on chain).
    fn submit(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>>;
    /// Applies a task's settlement (`complete_task`) whose countersigned
    /// receipt the caller already holds durably in its receipt log: a router
    /// restarted after a crash settles a still-pending task again from that
    /// receipt (`roles::router::reconcile`). A backend may therefore resolve
    /// before the settlement is on disk, so long as a crash loses it whole.
    /// By default, the same as [`submit`](Self::submit).
    fn submit_settlement(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        self.submit(op)
    }
    /// Applies a task's escrow (`create_client_task`) and resolves once the
    /// contract accepted it (a refusal is its abort), perhaps before it is
    /// committed and on disk: the caller hands the task over meanwhile and
    /// waits for [`sync`](Self::sync) before it counts on the escrow
    /// (before it says the task was handed over, or accepts its result).
    /// By default, the same as [`submit`](Self::submit).
    fn submit_escrow(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        self.submit(op)
    }
    /// Resolves once every operation this node submitted is durable. By
    /// default at once: [`submit`](Self::submit) resolves when durable.
    fn sync(&self) -> BoxFuture<'_, Result<(), ChainError>> {
        futures::future::ready(Ok(())).boxed()
    }
    /// The contract's configuration (`None` before `initialize`).
    fn config(&self) -> BoxFuture<'_, Result<Option<Config>, ChainError>>;
    /// An orchestrator's account (`None` if unregistered).
    fn orchestrator(&self, who: Address)
    -> BoxFuture<'_, Result<Option<Orchestrator>, ChainError>>;
    /// Whether `who` is an authorized server.
    fn is_server(&self, who: Address) -> BoxFuture<'_, Result<bool, ChainError>>;
    /// A task (`None` if unknown).
    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Task>, ChainError>>;
    /// `(stake_held, escrow_held, vault_balance)`.
    fn totals(&self) -> BoxFuture<'_, Result<Totals, ChainError>>;
    /// `(deposit, max_price_per_unit)`: what `client` has on its tab at
    /// `server`, and the most it pays per work unit.
    fn client(
        &self,
        client: Address,
        server: Address,
    ) -> BoxFuture<'_, Result<(u64, u64), ChainError>>;
    /// The authorized server whose router runs as `peer`, if any: the
    /// chain's binding (`set_server_peer`), or on a chain that binds none,
    /// the account the PeerId derives when that is a server.
    fn server_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        async move {
            let derived = default_account(&peer);
            Ok(self.is_server(derived).await?.then_some(derived))
        }
        .boxed()
    }
    /// The client account that bound `peer` as the PeerId it submits
    /// tasks as (`bind_client_peer`), if one did.
    fn client_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        let _ = peer;
        async { Ok(None) }.boxed()
    }
    /// `server`'s fee, bps of each payment, charged to clients on top.
    fn server_fee(&self, server: Address) -> BoxFuture<'_, Result<u64, ChainError>>;
    /// Anchored batches so far.
    fn anchor_count(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    /// One anchored batch.
    fn anchor(&self, index: u64) -> BoxFuture<'_, Result<Option<Anchor>, ChainError>>;
    /// Up to `limit` tasks this node's account escrowed that are still
    /// pending: after a restart, what the router left behind. `None` when
    /// the backend has no way to list them.
    fn pending_tasks(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<TaskId>>, ChainError>> {
        self.pending_tasks_of(self.account(), limit)
    }
    /// Whether [`Self::pending_tasks_of`] lists pending tasks; when it does
    /// not, a router keeps its own escrow journal (`receipt_log::journal`).
    fn lists_pending(&self) -> bool {
        false
    }
    /// Up to `limit` pending tasks `server` escrowed (`None` when the
    /// backend cannot list them).
    fn pending_tasks_of(
        &self,
        server: Address,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<TaskId>>, ChainError>> {
        let _ = (server, limit);
        async { Ok(None) }.boxed()
    }
    /// The balance of `who` outside the vault.
    fn balance(&self, who: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        let _ = who;
        async {
            Err(ChainError::Unsupported(
                "this chain's balances are read with its own tools",
            ))
        }
        .boxed()
    }
    /// Applies `tx` to the account of `peer`, for that peer: what a ledger
    /// node does for the peers following it. Only the embedded chain does;
    /// on a public chain each party signs its own transactions.
    fn transact(
        &self,
        peer: PeerId,
        tx: cactus_protocol::messages::Transaction,
    ) -> BoxFuture<'_, Result<(), ChainError>> {
        let _ = (peer, tx);
        async {
            Err(ChainError::Unsupported(
                "this chain takes transactions from their signers directly",
            ))
        }
        .boxed()
    }
    /// Decides whether the orchestrator `peer`, which says it is the chain
    /// account `account` with `declared_stake`, may be given tasks: the chain
    /// must hold its registration under that PeerId with at least the
    /// minimum stake (the declared stake is never taken on trust).
    fn admit(
        &self,
        peer: PeerId,
        account: Address,
        declared_stake: u64,
    ) -> BoxFuture<'_, Result<bool, ChainError>>;
}

/// The account an orchestrator uses when it names none: its PeerId's address
/// on a embedded chain.
pub fn default_account(peer: &PeerId) -> Address {
    Address::of_peer(peer)
}
