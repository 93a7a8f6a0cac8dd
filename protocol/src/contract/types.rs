//! The contract's records, configuration, operations and abort codes.

use super::BPS;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An account address (32 bytes, as on Aptos).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Address {
    /// The address a embedded chain gives a libp2p identity.
    pub fn of_peer(peer: &libp2p_identity::PeerId) -> Self {
        let mut data = b"cactus/address/v1\0".to_vec();
        data.extend_from_slice(&peer.to_bytes());
        Self(crate::Digest::of(&data).0)
    }

    /// Hex with a `0x` prefix.
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The contract's abort codes: the same numbers as the Move module's `E_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[repr(u64)]
#[non_exhaustive]
pub enum Abort {
    /// An admin-only call by someone else.
    #[error("E_NOT_ADMIN (1): only the admin may do this")]
    NotAdmin = 1,
    /// `initialize` twice.
    #[error("E_ALREADY_INITIALIZED (2)")]
    AlreadyInitialized = 2,
    /// A call before `initialize`.
    #[error("E_NOT_INITIALIZED (3): the chain is not initialized")]
    NotInitialized = 3,
    /// A zero amount.
    #[error("E_ZERO_AMOUNT (4): the amount must be above zero")]
    ZeroAmount = 4,
    /// A malformed id, hash or PeerId.
    #[error("E_INVALID_ARGUMENT (5): a task id, hash or PeerId has the wrong length")]
    InvalidArgument = 5,
    /// Stake below the minimum.
    #[error("E_STAKE_TOO_LOW (6): stake below the minimum")]
    StakeTooLow = 6,
    /// Registering twice.
    #[error("E_ALREADY_REGISTERED (7)")]
    AlreadyRegistered = 7,
    /// Not a registered orchestrator.
    #[error("E_NOT_REGISTERED (8): not a registered orchestrator")]
    NotRegistered = 8,
    /// Unstaking more than the stake.
    #[error("E_INSUFFICIENT_STAKE (9)")]
    InsufficientStake = 9,
    /// Nothing to withdraw.
    #[error("E_NOTHING_UNBONDING (10)")]
    NothingUnbonding = 10,
    /// Withdrawing too early.
    #[error("E_STILL_UNBONDING (11): the unbonding period has not passed")]
    StillUnbonding = 11,
    /// Authorizing twice.
    #[error("E_SERVER_ALREADY_AUTHORIZED (12)")]
    ServerAlreadyAuthorized = 12,
    /// Revoking an unknown server.
    #[error("E_SERVER_NOT_FOUND (13)")]
    ServerNotFound = 13,
    /// A server-only call by an unauthorized address.
    #[error("E_NOT_AUTHORIZED_SERVER (14): not an authorized routing server")]
    NotAuthorizedServer = 14,
    /// A task id used twice.
    #[error("E_TASK_EXISTS (15)")]
    TaskExists = 15,
    /// An unknown task.
    #[error("E_TASK_NOT_FOUND (16)")]
    TaskNotFound = 16,
    /// A task already completed or failed.
    #[error("E_TASK_NOT_PENDING (17)")]
    TaskNotPending = 17,
    /// A task of another server.
    #[error("E_WRONG_SERVER (18): the task belongs to another server")]
    WrongServer = 18,
    /// An orchestrator below the minimum stake.
    #[error("E_ORCHESTRATOR_INELIGIBLE (19): the orchestrator's stake is below the minimum")]
    OrchestratorIneligible = 19,
    /// A malformed delegation chain.
    #[error("E_INVALID_DELEGATION (20)")]
    InvalidDelegation = 20,
    /// A slash ratio out of range.
    #[error("E_INVALID_RATIO (21)")]
    InvalidRatio = 21,
    /// A payer without enough funds.
    #[error("E_INSUFFICIENT_BALANCE (22)")]
    InsufficientBalance = 22,
    /// An invalid configuration.
    #[error("E_INVALID_CONFIG (23)")]
    InvalidConfig = 23,
    /// A slash naming evidence that has already slashed.
    #[error("E_EVIDENCE_USED (24): this evidence has already been used for a slash")]
    EvidenceUsed = 24,
    /// Expiring a task before its deadline.
    #[error("E_TASK_NOT_EXPIRED (25): the task's deadline has not passed")]
    TaskNotExpired = 25,
    /// A client's deposit at the server does not cover the escrow or the
    /// withdrawal.
    #[error("E_INSUFFICIENT_DEPOSIT (26): the client's deposit at this router does not cover it")]
    InsufficientDeposit = 26,
    /// A server fee above 10 000 bps.
    #[error("E_INVALID_FEE (27): a fee is at most 10000 bps")]
    InvalidFee = 27,
    /// A task priced above what its client pays at most.
    #[error("E_PRICE_ABOVE_CAP (28): the price is above the client's cap")]
    PriceAboveCap = 28,
    /// A PeerId already bound to another server, or to another client.
    #[error("E_PEER_TAKEN (29): the PeerId is bound to another account")]
    PeerTaken = 29,
    /// An amount would pass `u64::MAX` or drop below 0 (or an intermediate
    /// `u128` product would overflow). Move has no abort code for this: the
    /// VM aborts the transaction with its `ARITHMETIC_ERROR` status, whose
    /// number (4017) the model reports.
    #[error("ARITHMETIC_ERROR (4017): an amount would overflow or underflow")]
    ArithmeticError = 4017,
}

impl Abort {
    /// The numeric abort code.
    pub fn code(self) -> u64 {
        self as u64
    }
}

/// The contract's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The least active stake an orchestrator needs to be given tasks.
    pub min_stake: u64,
    /// Seconds between an unstake request and its withdrawal.
    pub unbonding_secs: u64,
    /// The largest share of stake one slash may take, bps.
    pub max_slash_bps: u64,
    /// Share of a slash paid to the reporting server, bps; the rest to treasury.
    pub reporter_bps: u64,
    /// Where slashed stake goes.
    pub treasury: Address,
    /// Work units per prompt token.
    pub prompt_weight: u64,
    /// Work units per output token.
    pub output_weight: u64,
    /// Price per millisecond of credited compute time.
    pub price_per_ms: u64,
    /// Most milliseconds credited per work unit.
    pub ms_cap_per_unit: u64,
    /// Share each delegator keeps of what passes through it, bps.
    pub delegation_fee_bps: u64,
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), Abort> {
        let bps_ok = [
            self.max_slash_bps,
            self.reporter_bps,
            self.delegation_fee_bps,
        ]
        .iter()
        .all(|b| *b <= BPS);
        if !bps_ok || (self.prompt_weight == 0 && self.output_weight == 0) {
            return Err(Abort::InvalidConfig);
        }
        Ok(())
    }
}

/// An orchestrator's account in the contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orchestrator {
    /// Its libp2p PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Active stake.
    pub stake: u64,
    /// Stake waiting out the unbonding period.
    pub unbonding: u64,
    /// When `unbonding` may be withdrawn.
    pub unlock_at: u64,
    /// Tasks completed as the responsible orchestrator.
    pub successes: u64,
    /// Tasks failed as the responsible orchestrator.
    pub failures: u64,
    /// Compute milliseconds of tasks it executed.
    pub compute_ms: u64,
}

impl Orchestrator {
    /// Whether this record admits `peer` as an orchestrator: registered under
    /// that PeerId, with at least `min_stake` active. The one rule routers,
    /// ledgers and spot checks apply.
    pub fn admits(&self, peer: &libp2p_identity::PeerId, min_stake: u64) -> bool {
        self.peer_id == peer.to_bytes() && self.stake >= min_stake
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum TaskStatus {
    /// Created, escrow held.
    Pending = 0,
    /// Paid.
    Completed = 1,
    /// Refunded.
    Failed = 2,
}

/// A task in the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The server that created it (and pays for it, unless a client does).
    pub server: Address,
    /// The responsible orchestrator.
    pub orchestrator: Address,
    /// Price per work unit.
    pub price_per_unit: u64,
    /// Escrowed amount.
    pub escrow: u64,
    /// Status.
    pub status: TaskStatus,
    /// Amount paid out on completion.
    pub payment: u64,
    /// Failure reason code, when failed.
    pub reason: u8,
}

/// A batch of receipts anchored by its Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The anchoring server.
    pub server: Address,
    /// Merkle root of the receipt hashes.
    pub root: crate::Digest,
    /// Receipts in the batch.
    pub count: u64,
    /// First task of the batch.
    pub first_task: crate::TaskId,
    /// Last task of the batch.
    pub last_task: crate::TaskId,
    /// When it was anchored.
    pub anchored_at: u64,
}

/// One operation: an entry function of the contract, plus `Mint`, which
/// exists only in embedded chains (a faucet) and in Move tests (a mint ref).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// `initialize`: the signer must be the module address.
    Initialize(Config),
    /// `set_config`.
    SetConfig(Config),
    /// `register_orchestrator(peer_id, amount)`.
    RegisterOrchestrator {
        /// PeerId bytes.
        #[serde(with = "serde_bytes")]
        peer_id: Vec<u8>,
        /// Initial stake.
        amount: u64,
    },
    /// `add_stake(amount)`.
    AddStake {
        /// Amount.
        amount: u64,
    },
    /// `request_unstake(amount)`.
    RequestUnstake {
        /// Amount.
        amount: u64,
    },
    /// `withdraw()`.
    Withdraw,
    /// `authorize_server(server)`.
    AuthorizeServer {
        /// The server's account.
        server: Address,
    },
    /// `revoke_server(server)`.
    RevokeServer {
        /// The server's account.
        server: Address,
    },
    /// `set_server_peer(server, peer_id)`: admin only.
    SetServerPeer {
        /// The server's account.
        server: Address,
        /// The PeerId its router runs as.
        #[serde(with = "serde_bytes")]
        peer_id: Vec<u8>,
    },
    /// `deposit(server, amount)`: signed by a client.
    Deposit {
        /// The server the deposit is for.
        server: Address,
        /// Amount.
        amount: u64,
    },
    /// `withdraw_deposit(server, amount)`: signed by a client.
    WithdrawDeposit {
        /// The server the deposit is at.
        server: Address,
        /// Amount.
        amount: u64,
    },
    /// `set_max_price(max_price_per_unit)`: signed by a client.
    SetMaxPrice {
        /// The most the client pays per work unit.
        max_price_per_unit: u64,
    },
    /// `bind_client_peer(peer_id)`: signed by a client.
    BindClientPeer {
        /// The PeerId it submits tasks as over the mesh.
        #[serde(with = "serde_bytes")]
        peer_id: Vec<u8>,
    },
    /// `set_server_fee(fee_bps)`: signed by a server.
    SetServerFee {
        /// Share of each payment charged on top to the client, bps.
        fee_bps: u64,
    },
    /// `create_client_task(client, task_id, orchestrator, price_per_unit, max_payment)`.
    CreateClientTask {
        /// The paying client.
        client: Address,
        /// 16-byte task id.
        #[serde(with = "serde_bytes")]
        task_id: Vec<u8>,
        /// Responsible orchestrator.
        orchestrator: Address,
        /// Price per work unit.
        price_per_unit: u64,
        /// Amount escrowed for the payment (the fee's escrow comes on top).
        max_payment: u64,
    },
    /// `create_task(task_id, orchestrator, price_per_unit, max_payment)`.
    CreateTask {
        /// 16-byte task id.
        #[serde(with = "serde_bytes")]
        task_id: Vec<u8>,
        /// Responsible orchestrator.
        orchestrator: Address,
        /// Price per work unit.
        price_per_unit: u64,
        /// Amount escrowed.
        max_payment: u64,
    },
    /// `complete_task(task_id, prompt_tokens, output_tokens, compute_ms, delegates, receipt_hash)`.
    CompleteTask {
        /// 16-byte task id.
        #[serde(with = "serde_bytes")]
        task_id: Vec<u8>,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Compute milliseconds.
        compute_ms: u64,
        /// Delegation chain after the responsible orchestrator.
        delegates: Vec<Address>,
        /// 32-byte receipt hash.
        #[serde(with = "serde_bytes")]
        receipt_hash: Vec<u8>,
    },
    /// `fail_task(task_id, reason)`.
    FailTask {
        /// 16-byte task id.
        #[serde(with = "serde_bytes")]
        task_id: Vec<u8>,
        /// Reason code.
        reason: u8,
    },
    /// `expire_task(task_id)`: anyone, once the task's deadline has passed.
    ExpireTask {
        /// 16-byte task id.
        #[serde(with = "serde_bytes")]
        task_id: Vec<u8>,
    },
    /// `slash(orchestrator, ratio_bps, evidence_hash)`.
    Slash {
        /// The account whose stake is slashed.
        orchestrator: Address,
        /// Share of its stake, bps.
        ratio_bps: u64,
        /// 32-byte evidence hash; each evidence slashes once.
        #[serde(with = "serde_bytes")]
        evidence_hash: Vec<u8>,
    },
    /// `anchor_receipts(merkle_root, count, first_task, last_task)`.
    AnchorReceipts {
        /// 32-byte Merkle root.
        #[serde(with = "serde_bytes")]
        merkle_root: Vec<u8>,
        /// Receipts in the batch.
        count: u64,
        /// 16-byte first task id.
        #[serde(with = "serde_bytes")]
        first_task: Vec<u8>,
        /// 16-byte last task id.
        #[serde(with = "serde_bytes")]
        last_task: Vec<u8>,
    },
    /// Local chains only: credit `amount` to `to` out of thin air.
    Mint {
        /// Recipient.
        to: Address,
        /// Amount.
        amount: u64,
    },
}
