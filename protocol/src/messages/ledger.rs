//! What nodes ask of a ledger node (a router keeping an embedded chain):
//! standings, accounts and views, and transactions on the sender's own
//! account.

use crate::TaskId;
use serde::{Deserialize, Serialize};

/// A ledger's answer about one peer ([`super::Query::Standing`]). On the embedded
/// ledger a peer's account is derived from its PeerId, so both answers are
/// about that PeerId and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The peer is an authorized server (a router that may assign tasks).
    pub server: bool,
    /// The peer is a registered orchestrator, under its own PeerId, with at
    /// least the contract's minimum stake.
    pub orchestrator: bool,
}

/// Most task ids one [`LedgerView::PendingTasks`] answer lists.
pub const MAX_PENDING_LISTED: u32 = 4096;

/// A view of a ledger's state, as the contract's view functions give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerView {
    /// The contract's configuration.
    Config,
    /// An orchestrator's record.
    Orchestrator(crate::contract::Address),
    /// Whether an address is an authorized server.
    IsServer(crate::contract::Address),
    /// A task.
    Task(TaskId),
    /// `(stake_held, escrow_held, vault_balance)`.
    Totals,
    /// Anchored batches so far.
    AnchorCount,
    /// A balance outside the vault.
    Balance(crate::contract::Address),
    /// A client's deposit at a server, and its price cap.
    Client {
        /// The client.
        client: crate::contract::Address,
        /// The server.
        server: crate::contract::Address,
    },
    /// A server's fee, bps.
    ServerFee(crate::contract::Address),
    /// Up to `limit` (at most [`MAX_PENDING_LISTED`]) pending tasks a server
    /// escrowed.
    PendingTasks {
        /// The server.
        server: crate::contract::Address,
        /// How many at most.
        limit: u32,
    },
}

/// A ledger's answer to a [`LedgerView`] or to a [`Transaction::Apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerAnswer {
    /// [`LedgerView::Config`].
    Config(Option<crate::contract::Config>),
    /// [`LedgerView::Orchestrator`].
    Orchestrator(Option<crate::contract::Orchestrator>),
    /// [`LedgerView::IsServer`].
    IsServer(bool),
    /// [`LedgerView::Task`].
    Task(Option<crate::contract::Task>),
    /// [`LedgerView::Totals`].
    Totals(crate::contract::Totals),
    /// [`LedgerView::AnchorCount`], [`LedgerView::Balance`] and
    /// [`LedgerView::ServerFee`].
    Count(u64),
    /// [`LedgerView::Client`].
    Client {
        /// What the client has on its tab at the server.
        deposit: u64,
        /// The most it pays per work unit.
        max_price_per_unit: u64,
    },
    /// [`LedgerView::PendingTasks`]; `None` when the ledger cannot list
    /// them.
    Tasks(Option<Vec<TaskId>>),
    /// The operation was applied.
    Applied,
    /// The contract refused the operation.
    Refused(crate::contract::Abort),
}

/// A peer's account on a ledger ([`super::Query::Account`], and the answer to a
/// [`super::TaskRequest::Transact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account (on the embedded ledger, derived from the PeerId).
    pub account: crate::contract::Address,
    /// Its balance of the payment asset, outside the vault.
    pub balance: u64,
    /// Its record as an orchestrator, if registered.
    pub orchestrator: Option<crate::contract::Orchestrator>,
    /// What it has deposited, as a client, at the ledger node's router
    /// account (absent from answers of older nodes: 0).
    #[serde(default)]
    pub deposit: u64,
    /// The most it pays per work unit, as a client.
    #[serde(default = "no_cap")]
    pub max_price_per_unit: u64,
}

fn no_cap() -> u64 {
    crate::contract::NO_CAP
}

/// What a peer may ask a ledger node to do with its own account. The ledger
/// applies it as the account of the sender's PeerId, which the connection
/// authenticated; no peer acts for another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transaction {
    /// Dev ledgers only (started with a faucet): top the sender's balance up
    /// to the faucet's amount.
    Faucet,
    /// Register as an orchestrator under the sender's PeerId, staking
    /// `stake` from the sender's balance.
    Register {
        /// The stake, moved from the balance into the vault.
        stake: u64,
    },
    /// Stake more, from the balance.
    AddStake {
        /// Amount.
        amount: u64,
    },
    /// Start unbonding part of the stake.
    Unstake {
        /// Amount.
        amount: u64,
    },
    /// Withdraw the unbonded stake once its unbonding period is over.
    Withdraw,
    /// Any contract operation, signed by the sender's account (what a router
    /// settling on another node's ledger submits). The contract checks who
    /// may do what; only the ledger's own faucet mints.
    Apply(crate::contract::Op),
}
