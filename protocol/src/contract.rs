//! The reference model of the `cactus_payment` contract: stake, server
//! authorization, escrowed tasks, payments, delegation splits, slashing and
//! receipt anchors, as a pure state machine.
//!
//! `contracts/SPEC.md` is the specification; the Move module
//! `contracts/sources/cactus_payment.move` and this model implement it with the
//! same operations, the same abort codes ([`Abort`], same numbers), the same
//! check order and the same integer formulas. The tests at the bottom mirror
//! the Move tests scenario by scenario, with the same names.
//!
//! Every operation is an [`Op`], applied by [`State::apply`] on behalf of a
//! signer at a given time. An operation either succeeds entirely or changes
//! nothing, as a Move transaction does: all checks run before any mutation.
//! Local clusters persist the sequence of applied ops (see `cactus-node`'s
//! embedded chain); replaying it rebuilds the state exactly.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Basis points in one whole.
pub const BPS: u64 = 10_000;
/// Most delegates after the responsible orchestrator.
pub const MAX_DELEGATES: usize = 2;
/// Longest PeerId accepted at registration.
pub const MAX_PEER_ID_BYTES: usize = 64;

/// Reason codes of `fail_task`, as routers use them.
pub mod reason {
    /// The orchestrator did not answer in time.
    pub const TIMEOUT: u8 = 1;
    /// Its result failed verification.
    pub const BAD_RESULT: u8 = 2;
    /// It refused the task (busy, model missing).
    pub const REFUSED: u8 = 3;
    /// It could not be reached or went away.
    pub const UNREACHABLE: u8 = 4;
    /// Its engine failed.
    pub const INFERENCE: u8 = 5;
    /// The request was invalid for it (prompt too long...).
    pub const INVALID: u8 = 6;
}

/// An account address (32 bytes, as on Aptos).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Address {
    /// The address a local (embedded) ledger gives a libp2p identity.
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
    #[error("E_NOT_INITIALIZED (3): the ledger is not initialized")]
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
    fn validate(&self) -> Result<(), Abort> {
        let bps_ok = [
            self.max_slash_bps,
            self.reporter_bps,
            self.delegation_fee_bps,
        ]
        .iter()
        .all(|b| *b <= BPS);
        if !bps_ok || self.prompt_weight.saturating_add(self.output_weight) == 0 {
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
    /// The server that created (and pays for) it.
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
/// exists only in local ledgers (a faucet) and in Move tests (a mint ref).
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
        /// The server.
        server: Address,
    },
    /// `revoke_server(server)`.
    RevokeServer {
        /// The server.
        server: Address,
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
    /// `slash(orchestrator, ratio_bps, evidence_hash)`.
    Slash {
        /// The orchestrator.
        orchestrator: Address,
        /// Share of its stake, bps.
        ratio_bps: u64,
        /// 32-byte evidence hash.
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
    /// Local ledgers only: credit `amount` to `to` out of thin air.
    Mint {
        /// Recipient.
        to: Address,
        /// Amount.
        amount: u64,
    },
}

/// The whole contract state, plus account balances of the payment asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The module's address: the admin.
    pub admin: Address,
    /// `None` until `initialize`.
    pub config: Option<Config>,
    /// Balances of the payment asset outside the vault.
    pub balances: BTreeMap<Address, u64>,
    /// The vault's balance.
    pub vault: u64,
    /// Registered orchestrators.
    pub orchestrators: BTreeMap<Address, Orchestrator>,
    /// Authorized servers.
    pub servers: BTreeSet<Address>,
    /// Tasks by id.
    pub tasks: BTreeMap<[u8; 16], Task>,
    /// Anchored receipt batches.
    pub anchors: Vec<Anchor>,
}

/// `(stake_held, escrow_held, vault_balance)`, the `totals` view.
pub type Totals = (u64, u64, u64);

fn task_id(bytes: &[u8]) -> Result<[u8; 16], Abort> {
    bytes.try_into().map_err(|_| Abort::InvalidArgument)
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], Abort> {
    bytes.try_into().map_err(|_| Abort::InvalidArgument)
}

fn mul_div(a: u64, b: u64, d: u64) -> u64 {
    // a * b / d with d > 0, in u128; the results used here never exceed a.
    (u128::from(a) * u128::from(b) / u128::from(d)) as u64
}

impl State {
    /// A fresh, uninitialized contract published at `admin`.
    pub fn new(admin: Address) -> Self {
        Self {
            admin,
            config: None,
            balances: BTreeMap::new(),
            vault: 0,
            orchestrators: BTreeMap::new(),
            servers: BTreeSet::new(),
            tasks: BTreeMap::new(),
            anchors: Vec::new(),
        }
    }

    fn config(&self) -> Result<&Config, Abort> {
        self.config.as_ref().ok_or(Abort::NotInitialized)
    }

    /// `balance` of the payment asset held by `who` outside the contract.
    pub fn balance(&self, who: &Address) -> u64 {
        self.balances.get(who).copied().unwrap_or(0)
    }

    fn credit(&mut self, who: Address, amount: u64) {
        let b = self.balances.entry(who).or_insert(0);
        *b = b.saturating_add(amount);
    }

    /// Moves `amount` from `who` into the vault; the caller checked the balance.
    fn pay_in(&mut self, who: Address, amount: u64) {
        if let Some(b) = self.balances.get_mut(&who) {
            *b -= amount;
        }
        self.vault += amount;
    }

    /// Moves `amount` out of the vault to `who`.
    fn pay_out(&mut self, who: Address, amount: u64) {
        self.vault -= amount;
        self.credit(who, amount);
    }

    fn require_server(&self, who: &Address) -> Result<(), Abort> {
        if self.servers.contains(who) {
            Ok(())
        } else {
            Err(Abort::NotAuthorizedServer)
        }
    }

    /// Applies `op` signed by `signer` at Unix time `now`: all or nothing.
    pub fn apply(&mut self, signer: Address, op: &Op, now: u64) -> Result<(), Abort> {
        if let Op::Mint { to, amount } = op {
            self.credit(*to, *amount);
            return Ok(());
        }
        if let Op::Initialize(config) = op {
            if signer != self.admin {
                return Err(Abort::NotAdmin);
            }
            if self.config.is_some() {
                return Err(Abort::AlreadyInitialized);
            }
            config.validate()?;
            self.config = Some(config.clone());
            return Ok(());
        }
        let config = self.config()?.clone();
        match op {
            Op::Initialize(_) | Op::Mint { .. } => Ok(()),
            Op::SetConfig(c) => {
                if signer != self.admin {
                    return Err(Abort::NotAdmin);
                }
                c.validate()?;
                self.config = Some(c.clone());
                Ok(())
            }
            Op::RegisterOrchestrator { peer_id, amount } => {
                if *amount == 0 {
                    return Err(Abort::ZeroAmount);
                }
                if peer_id.is_empty() || peer_id.len() > MAX_PEER_ID_BYTES {
                    return Err(Abort::InvalidArgument);
                }
                if self.orchestrators.contains_key(&signer) {
                    return Err(Abort::AlreadyRegistered);
                }
                if *amount < config.min_stake {
                    return Err(Abort::StakeTooLow);
                }
                if self.balance(&signer) < *amount {
                    return Err(Abort::InsufficientBalance);
                }
                self.pay_in(signer, *amount);
                self.orchestrators.insert(
                    signer,
                    Orchestrator {
                        peer_id: peer_id.clone(),
                        stake: *amount,
                        ..Orchestrator::default()
                    },
                );
                Ok(())
            }
            Op::AddStake { amount } => {
                if *amount == 0 {
                    return Err(Abort::ZeroAmount);
                }
                if !self.orchestrators.contains_key(&signer) {
                    return Err(Abort::NotRegistered);
                }
                if self.balance(&signer) < *amount {
                    return Err(Abort::InsufficientBalance);
                }
                self.pay_in(signer, *amount);
                if let Some(o) = self.orchestrators.get_mut(&signer) {
                    o.stake += amount;
                }
                Ok(())
            }
            Op::RequestUnstake { amount } => {
                if *amount == 0 {
                    return Err(Abort::ZeroAmount);
                }
                let o = self
                    .orchestrators
                    .get_mut(&signer)
                    .ok_or(Abort::NotRegistered)?;
                if *amount > o.stake {
                    return Err(Abort::InsufficientStake);
                }
                let left = o.stake - amount;
                if left != 0 && left < config.min_stake {
                    return Err(Abort::StakeTooLow);
                }
                o.stake = left;
                o.unbonding += amount;
                o.unlock_at = now.saturating_add(config.unbonding_secs);
                Ok(())
            }
            Op::Withdraw => {
                let o = self
                    .orchestrators
                    .get(&signer)
                    .ok_or(Abort::NotRegistered)?;
                if o.unbonding == 0 {
                    return Err(Abort::NothingUnbonding);
                }
                if now < o.unlock_at {
                    return Err(Abort::StillUnbonding);
                }
                let amount = o.unbonding;
                if let Some(o) = self.orchestrators.get_mut(&signer) {
                    o.unbonding = 0;
                }
                self.pay_out(signer, amount);
                Ok(())
            }
            Op::AuthorizeServer { server } => {
                if signer != self.admin {
                    return Err(Abort::NotAdmin);
                }
                if !self.servers.insert(*server) {
                    return Err(Abort::ServerAlreadyAuthorized);
                }
                Ok(())
            }
            Op::RevokeServer { server } => {
                if signer != self.admin {
                    return Err(Abort::NotAdmin);
                }
                if !self.servers.remove(server) {
                    return Err(Abort::ServerNotFound);
                }
                Ok(())
            }
            Op::CreateTask {
                task_id: id,
                orchestrator,
                price_per_unit,
                max_payment,
            } => {
                self.require_server(&signer)?;
                let id = task_id(id)?;
                if *max_payment == 0 {
                    return Err(Abort::ZeroAmount);
                }
                if self.tasks.contains_key(&id) {
                    return Err(Abort::TaskExists);
                }
                let o = self
                    .orchestrators
                    .get(orchestrator)
                    .ok_or(Abort::NotRegistered)?;
                if o.stake < config.min_stake {
                    return Err(Abort::OrchestratorIneligible);
                }
                if self.balance(&signer) < *max_payment {
                    return Err(Abort::InsufficientBalance);
                }
                self.pay_in(signer, *max_payment);
                self.tasks.insert(
                    id,
                    Task {
                        server: signer,
                        orchestrator: *orchestrator,
                        price_per_unit: *price_per_unit,
                        escrow: *max_payment,
                        status: TaskStatus::Pending,
                        payment: 0,
                        reason: 0,
                    },
                );
                Ok(())
            }
            Op::CompleteTask {
                task_id: id,
                prompt_tokens,
                output_tokens,
                compute_ms,
                delegates,
                receipt_hash,
            } => {
                self.require_server(&signer)?;
                let id = task_id(id)?;
                hash32(receipt_hash)?;
                let task = self.tasks.get(&id).ok_or(Abort::TaskNotFound)?.clone();
                if task.server != signer {
                    return Err(Abort::WrongServer);
                }
                if task.status != TaskStatus::Pending {
                    return Err(Abort::TaskNotPending);
                }
                self.check_delegation(&task.orchestrator, delegates)?;
                let payment = self.quote_payment(
                    &task.orchestrator,
                    task.price_per_unit,
                    *prompt_tokens,
                    *output_tokens,
                    *compute_ms,
                    task.escrow,
                )?;
                // Split along the chain; the executor (last) gets the rest.
                let mut remaining = payment;
                let chain: Vec<Address> = std::iter::once(task.orchestrator)
                    .chain(delegates.iter().copied())
                    .collect();
                for member in &chain[..chain.len() - 1] {
                    let cut = mul_div(remaining, config.delegation_fee_bps, BPS);
                    self.pay_out(*member, cut);
                    remaining -= cut;
                }
                let executor = chain[chain.len() - 1];
                self.pay_out(executor, remaining);
                self.pay_out(task.server, task.escrow - payment);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.status = TaskStatus::Completed;
                    t.payment = payment;
                }
                if let Some(o) = self.orchestrators.get_mut(&task.orchestrator) {
                    o.successes += 1;
                }
                if let Some(o) = self.orchestrators.get_mut(&executor) {
                    o.compute_ms = o.compute_ms.saturating_add(*compute_ms);
                }
                Ok(())
            }
            Op::FailTask {
                task_id: id,
                reason,
            } => {
                self.require_server(&signer)?;
                let id = task_id(id)?;
                let task = self.tasks.get(&id).ok_or(Abort::TaskNotFound)?.clone();
                if task.server != signer {
                    return Err(Abort::WrongServer);
                }
                if task.status != TaskStatus::Pending {
                    return Err(Abort::TaskNotPending);
                }
                self.pay_out(task.server, task.escrow);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.status = TaskStatus::Failed;
                    t.reason = *reason;
                }
                if let Some(o) = self.orchestrators.get_mut(&task.orchestrator) {
                    o.failures += 1;
                }
                Ok(())
            }
            Op::Slash {
                orchestrator,
                ratio_bps,
                evidence_hash,
            } => {
                self.require_server(&signer)?;
                hash32(evidence_hash)?;
                let o = self
                    .orchestrators
                    .get(orchestrator)
                    .ok_or(Abort::NotRegistered)?;
                if *ratio_bps == 0 || *ratio_bps > config.max_slash_bps {
                    return Err(Abort::InvalidRatio);
                }
                let amount = mul_div(o.stake + o.unbonding, *ratio_bps, BPS);
                let from_stake = amount.min(o.stake);
                let from_unbonding = amount - from_stake;
                if let Some(o) = self.orchestrators.get_mut(orchestrator) {
                    o.stake -= from_stake;
                    o.unbonding -= from_unbonding;
                }
                let reporter_cut = mul_div(amount, config.reporter_bps, BPS);
                self.pay_out(signer, reporter_cut);
                self.pay_out(config.treasury, amount - reporter_cut);
                Ok(())
            }
            Op::AnchorReceipts {
                merkle_root,
                count,
                first_task,
                last_task,
            } => {
                self.require_server(&signer)?;
                let root = hash32(merkle_root)?;
                let first = task_id(first_task)?;
                let last = task_id(last_task)?;
                if *count == 0 {
                    return Err(Abort::ZeroAmount);
                }
                self.anchors.push(Anchor {
                    server: signer,
                    root: crate::Digest(root),
                    count: *count,
                    first_task: crate::TaskId(first),
                    last_task: crate::TaskId(last),
                    anchored_at: now,
                });
                Ok(())
            }
        }
    }

    fn check_delegation(&self, orchestrator: &Address, delegates: &[Address]) -> Result<(), Abort> {
        if delegates.len() > MAX_DELEGATES {
            return Err(Abort::InvalidDelegation);
        }
        for (i, d) in delegates.iter().enumerate() {
            if d == orchestrator
                || delegates[..i].contains(d)
                || !self.orchestrators.contains_key(d)
            {
                return Err(Abort::InvalidDelegation);
            }
        }
        Ok(())
    }

    /// The `quote_payment` view: what completing a task would pay.
    pub fn quote_payment(
        &self,
        orchestrator: &Address,
        price_per_unit: u64,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        max_payment: u64,
    ) -> Result<u64, Abort> {
        let c = self.config()?;
        let o = self
            .orchestrators
            .get(orchestrator)
            .ok_or(Abort::NotRegistered)?;
        let units = u128::from(prompt_tokens) * u128::from(c.prompt_weight)
            + u128::from(output_tokens) * u128::from(c.output_weight);
        let base = units * u128::from(price_per_unit);
        let credited_ms = u128::from(compute_ms).min(units * u128::from(c.ms_cap_per_unit));
        let time_credit = credited_ms * u128::from(c.price_per_ms);
        let rep_bps = 5000
            + 5000 * (u128::from(o.successes) + 1)
                / (u128::from(o.successes) + u128::from(o.failures) + 1);
        let payment = (base + time_credit) * rep_bps / u128::from(BPS);
        Ok(payment.min(u128::from(max_payment)) as u64)
    }

    /// The `totals` view: stake held (active + unbonding), escrow held, vault.
    pub fn totals(&self) -> Totals {
        let stake = self
            .orchestrators
            .values()
            .map(|o| o.stake + o.unbonding)
            .sum();
        let escrow = self
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Pending)
            .map(|t| t.escrow)
            .sum();
        (stake, escrow, self.vault)
    }

    /// Whether `who` is an authorized server.
    pub fn is_server(&self, who: &Address) -> bool {
        self.servers.contains(who)
    }

    /// Whether `who` may be given tasks: registered with at least the minimum stake.
    pub fn is_eligible(&self, who: &Address) -> bool {
        match (self.config.as_ref(), self.orchestrators.get(who)) {
            (Some(c), Some(o)) => o.stake >= c.min_stake,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
