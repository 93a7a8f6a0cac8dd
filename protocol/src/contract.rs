//! The reference model of the `cactus_payment` contract: stake, server
//! authorization, client deposits, escrowed tasks, payments, server fees,
//! delegation splits, slashing and receipt anchors, as a pure state machine.
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
//! Arithmetic on amounts is checked: where Move's `u64` (or `u128`) arithmetic
//! would abort the transaction on overflow or underflow, the model returns
//! [`Abort::ArithmeticError`]; every new value is computed before any is
//! assigned.
//! Local clusters persist the sequence of applied ops (see `cactus-node`'s
//! embedded chain); replaying it rebuilds the state exactly.

mod clients;
mod transfers;
mod types;
mod views;

pub use clients::{ClientTask, Clients, NO_CAP, Tab};
use transfers::{Transfers, add, add_wide, bps_of, sub};
pub use types::{Abort, Address, Anchor, Config, Op, Orchestrator, Task, TaskStatus};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    /// Nobody settled it before its deadline (`expire_task`).
    pub const EXPIRED: u8 = 7;
}

/// Seconds after its creation when anyone may expire a task still pending
/// (`expire_task`), refunding its escrow: a server that died or walked away
/// cannot keep it locked.
pub const TASK_EXPIRY_SECS: u64 = 86_400;

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
    /// Hashes of the evidence of every slash so far: each evidence slashes
    /// once. Absent from snapshots written before it existed (empty then).
    #[serde(default)]
    pub used_evidence: BTreeSet<[u8; 32]>,
    /// When each pending task was created (Unix seconds), for its deadline;
    /// an entry goes when its task settles. Absent from snapshots written
    /// before it existed: such tasks count as created at 0.
    #[serde(default)]
    pub task_created: BTreeMap<[u8; 16], u64>,
    /// Clients' deposits, caps, server fees and client-funded tasks. Absent
    /// from snapshots written before it existed (empty then).
    #[serde(default)]
    pub clients: Clients,
    /// The PeerId each authorized server's router runs as
    /// (`set_server_peer`); absent from older snapshots (empty then).
    #[serde(default)]
    pub server_peers: BTreeMap<Address, Vec<u8>>,
}

/// `(stake_held, escrow_held, vault_balance)`, the `totals` view.
pub type Totals = (u64, u64, u64);

fn task_id(bytes: &[u8]) -> Result<[u8; 16], Abort> {
    bytes.try_into().map_err(|_| Abort::InvalidArgument)
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], Abort> {
    bytes.try_into().map_err(|_| Abort::InvalidArgument)
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
            used_evidence: BTreeSet::new(),
            task_created: BTreeMap::new(),
            clients: Clients::default(),
            server_peers: BTreeMap::new(),
        }
    }

    fn config(&self) -> Result<&Config, Abort> {
        self.config.as_ref().ok_or(Abort::NotInitialized)
    }

    /// `balance` of the payment asset held by `who` outside the contract.
    pub fn balance(&self, who: &Address) -> u64 {
        self.balances.get(who).copied().unwrap_or(0)
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
            let balance = add(self.balance(to), *amount)?;
            self.balances.insert(*to, balance);
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
                let mut moves = Transfers::new(self);
                moves.pay_in(self, signer, *amount)?;
                moves.commit(self);
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
                let o = self
                    .orchestrators
                    .get(&signer)
                    .ok_or(Abort::NotRegistered)?;
                let mut moves = Transfers::new(self);
                moves.pay_in(self, signer, *amount)?;
                let stake = add(o.stake, *amount)?;
                moves.commit(self);
                if let Some(o) = self.orchestrators.get_mut(&signer) {
                    o.stake = stake;
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
                let left = sub(o.stake, *amount)?;
                if left != 0 && left < config.min_stake {
                    return Err(Abort::StakeTooLow);
                }
                let unlock_at = add(now, config.unbonding_secs)?;
                let unbonding = add(o.unbonding, *amount)?;
                o.stake = left;
                o.unbonding = unbonding;
                o.unlock_at = unlock_at;
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
                let mut moves = Transfers::new(self);
                moves.pay_out(self, signer, o.unbonding)?;
                moves.commit(self);
                if let Some(o) = self.orchestrators.get_mut(&signer) {
                    o.unbonding = 0;
                }
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
                self.server_peers.remove(server);
                Ok(())
            }
            Op::SetServerPeer { server, peer_id } => {
                if signer != self.admin {
                    return Err(Abort::NotAdmin);
                }
                if !self.servers.contains(server) {
                    return Err(Abort::ServerNotFound);
                }
                if peer_id.is_empty() || peer_id.len() > MAX_PEER_ID_BYTES {
                    return Err(Abort::InvalidArgument);
                }
                if self.server_of_peer(peer_id).is_some_and(|s| s != *server) {
                    return Err(Abort::PeerTaken);
                }
                self.server_peers.insert(*server, peer_id.clone());
                Ok(())
            }
            Op::CreateTask {
                task_id: id,
                orchestrator,
                price_per_unit,
                max_payment,
            } => {
                let id = self.check_open(&config, &signer, id, orchestrator, *max_payment)?;
                let mut moves = Transfers::new(self);
                moves.pay_in(self, signer, *max_payment)?;
                moves.commit(self);
                self.open_task(
                    id,
                    signer,
                    *orchestrator,
                    *price_per_unit,
                    *max_payment,
                    now,
                );
                Ok(())
            }
            Op::CreateClientTask {
                client,
                task_id: id,
                orchestrator,
                price_per_unit,
                max_payment,
            } => self.create_client_task(
                &config,
                signer,
                *client,
                id,
                *orchestrator,
                *price_per_unit,
                *max_payment,
                now,
            ),
            Op::Deposit { server, amount } => self.deposit(signer, *server, *amount),
            Op::WithdrawDeposit { server, amount } => {
                self.withdraw_deposit(signer, *server, *amount)
            }
            Op::SetMaxPrice { max_price_per_unit } => {
                self.set_max_price(signer, *max_price_per_unit);
                Ok(())
            }
            Op::SetServerFee { fee_bps } => self.set_server_fee(signer, *fee_bps),
            Op::BindClientPeer { peer_id } => self.bind_client_peer(signer, peer_id),
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
                let mut moves = Transfers::new(self);
                let mut remaining = payment;
                let mut executor = task.orchestrator;
                for next in delegates {
                    let cut = bps_of(u128::from(remaining), config.delegation_fee_bps)?;
                    moves.pay_out(self, executor, cut)?;
                    remaining = sub(remaining, cut)?;
                    executor = *next;
                }
                moves.pay_out(self, executor, remaining)?;
                let payback = self.settle_payer(
                    &mut moves,
                    &id,
                    task.server,
                    sub(task.escrow, payment)?,
                    payment,
                )?;
                let record =
                    |who: &Address| self.orchestrators.get(who).ok_or(Abort::NotRegistered);
                let successes = add(record(&task.orchestrator)?.successes, 1)?;
                let executed_ms = add(record(&executor)?.compute_ms, *compute_ms)?;
                moves.commit(self);
                self.apply_payback(payback);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.status = TaskStatus::Completed;
                    t.payment = payment;
                }
                if let Some(o) = self.orchestrators.get_mut(&task.orchestrator) {
                    o.successes = successes;
                }
                if let Some(o) = self.orchestrators.get_mut(&executor) {
                    o.compute_ms = executed_ms;
                }
                self.task_created.remove(&id);
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
                let mut moves = Transfers::new(self);
                let payback = self.settle_payer(&mut moves, &id, task.server, task.escrow, 0)?;
                let o = self
                    .orchestrators
                    .get(&task.orchestrator)
                    .ok_or(Abort::NotRegistered)?;
                let failures = add(o.failures, 1)?;
                moves.commit(self);
                self.apply_payback(payback);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.status = TaskStatus::Failed;
                    t.reason = *reason;
                }
                if let Some(o) = self.orchestrators.get_mut(&task.orchestrator) {
                    o.failures = failures;
                }
                self.task_created.remove(&id);
                Ok(())
            }
            Op::ExpireTask { task_id: id } => {
                let id = task_id(id)?;
                let task = self.tasks.get(&id).ok_or(Abort::TaskNotFound)?.clone();
                if task.status != TaskStatus::Pending {
                    return Err(Abort::TaskNotPending);
                }
                let created = self.task_created.get(&id).copied().unwrap_or(0);
                if now < add(created, TASK_EXPIRY_SECS)? {
                    return Err(Abort::TaskNotExpired);
                }
                let mut moves = Transfers::new(self);
                let payback = self.settle_payer(&mut moves, &id, task.server, task.escrow, 0)?;
                moves.commit(self);
                self.apply_payback(payback);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.status = TaskStatus::Failed;
                    t.reason = reason::EXPIRED;
                }
                self.task_created.remove(&id);
                Ok(())
            }
            Op::Slash {
                orchestrator,
                ratio_bps,
                evidence_hash,
            } => {
                self.require_server(&signer)?;
                let evidence = hash32(evidence_hash)?;
                if self.used_evidence.contains(&evidence) {
                    return Err(Abort::EvidenceUsed);
                }
                let o = self
                    .orchestrators
                    .get(orchestrator)
                    .ok_or(Abort::NotRegistered)?;
                if *ratio_bps == 0 || *ratio_bps > config.max_slash_bps {
                    return Err(Abort::InvalidRatio);
                }
                let held = add_wide(u128::from(o.stake), u128::from(o.unbonding))?;
                let amount = bps_of(held, *ratio_bps)?;
                let from_stake = amount.min(o.stake);
                let stake = sub(o.stake, from_stake)?;
                let unbonding = sub(o.unbonding, sub(amount, from_stake)?)?;
                let reporter_cut = bps_of(u128::from(amount), config.reporter_bps)?;
                let mut moves = Transfers::new(self);
                moves.pay_out(self, signer, reporter_cut)?;
                moves.pay_out(self, config.treasury, sub(amount, reporter_cut)?)?;
                moves.commit(self);
                if let Some(o) = self.orchestrators.get_mut(orchestrator) {
                    o.stake = stake;
                    o.unbonding = unbonding;
                }
                self.used_evidence.insert(evidence);
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

    /// The checks every task opening makes, in Move's order; the task id.
    fn check_open(
        &self,
        config: &Config,
        server: &Address,
        id: &[u8],
        orchestrator: &Address,
        max_payment: u64,
    ) -> Result<[u8; 16], Abort> {
        self.require_server(server)?;
        let id = task_id(id)?;
        if max_payment == 0 {
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
        Ok(id)
    }

    /// Records a task whose escrow is already in the vault.
    fn open_task(
        &mut self,
        id: [u8; 16],
        server: Address,
        orchestrator: Address,
        price_per_unit: u64,
        max_payment: u64,
        now: u64,
    ) {
        self.tasks.insert(
            id,
            Task {
                server,
                orchestrator,
                price_per_unit,
                escrow: max_payment,
                status: TaskStatus::Pending,
                payment: 0,
                reason: 0,
            },
        );
        self.task_created.insert(id, now);
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
}

#[cfg(test)]
mod tests;
