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

mod types;

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
