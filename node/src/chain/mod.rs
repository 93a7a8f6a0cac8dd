//! The ledger a router settles tasks on: stake, server authorization,
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

use cactus_protocol::TaskId;
use cactus_protocol::contract::{Abort, Address, Anchor, Config, Op, Orchestrator, Task, Totals};
use futures::future::BoxFuture;
use libp2p::PeerId;

/// Why a ledger call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The contract refused the operation.
    #[error("the ledger refused the operation: {0}")]
    Abort(#[from] Abort),
    /// The backend failed (storage, network, node).
    #[error("ledger backend: {0}")]
    Backend(String),
}

/// A ledger backend. Operations are signed by this node's ledger account
/// ([`ChainBackend::account`]).
pub trait ChainBackend: Send + Sync + std::fmt::Debug + 'static {
    /// This node's account on the ledger.
    fn account(&self) -> Address;
    /// Applies one operation, signed by [`Self::account`]; resolves when it is
    /// durable (committed locally, or executed on chain).
    fn submit(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>>;
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
    /// Anchored batches so far.
    fn anchor_count(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    /// One anchored batch.
    fn anchor(&self, index: u64) -> BoxFuture<'_, Result<Option<Anchor>, ChainError>>;
    /// Decides whether the orchestrator `peer`, which says it is the ledger
    /// account `account` with `declared_stake`, may be given tasks. A chain
    /// checks its registration (the PeerId on record must match) and stake; a
    /// local ledger registers it with the declared stake first.
    fn admit(
        &self,
        peer: PeerId,
        account: Address,
        declared_stake: u64,
    ) -> BoxFuture<'_, Result<bool, ChainError>>;
}

/// The account an orchestrator uses when it names none: its PeerId's address
/// on a local ledger.
pub fn default_account(peer: &PeerId) -> Address {
    Address::of_peer(peer)
}
