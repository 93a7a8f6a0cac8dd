//! Clients' money, Move's `ClientBook`: deposits ("tabs") that clients keep
//! at servers, the most each client pays per work unit, each server's fee,
//! and the pending tasks clients fund.
//!
//! A client deposits at one server; only that server may escrow from that
//! deposit, for that client's tasks, at prices within the client's cap. When
//! a client's task settles, the server takes its fee (a share of the
//! payment, charged on top of it) and everything else comes back to the
//! tab, which the client may withdraw at any time.

use super::transfers::{Transfers, add, bps_of, sub};
use super::{Abort, Address, BPS, Config, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A client's price cap when it set none.
pub const NO_CAP: u64 = u64::MAX;

/// The key of a client's deposit at one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tab {
    /// Whose money it is.
    pub client: Address,
    /// The server that may escrow from it.
    pub server: Address,
}

/// Who funds a pending client task, the server's fee rate when it was
/// opened, and the fee escrowed beside its payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTask {
    /// The paying client.
    pub client: Address,
    /// The server's fee, bps of the payment.
    pub fee_bps: u64,
    /// The most the fee can be: `fee_bps` of the task's escrow.
    pub fee_escrow: u64,
}

/// Clients' money in the contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clients {
    /// What each client has left at each server; no zero entries.
    pub tabs: BTreeMap<Tab, u64>,
    /// The most each client pays per work unit ([`NO_CAP`] when absent).
    pub caps: BTreeMap<Address, u64>,
    /// Each server's fee, bps of each payment (0 when absent).
    pub fees: BTreeMap<Address, u64>,
    /// Pending tasks a client funds.
    pub tasks: BTreeMap<[u8; 16], ClientTask>,
    /// Sum of all tabs and of the fee escrows of pending client tasks.
    pub held: u64,
    /// The account each client PeerId (bytes) pays from
    /// (`bind_client_peer`).
    #[serde(default)]
    pub peers: BTreeMap<Vec<u8>, Address>,
}

impl Clients {
    /// What `client` has on its tab at `server`.
    pub fn tab(&self, client: Address, server: Address) -> u64 {
        self.tabs.get(&Tab { client, server }).copied().unwrap_or(0)
    }

    /// The most `client` pays per work unit.
    pub fn cap(&self, client: &Address) -> u64 {
        self.caps.get(client).copied().unwrap_or(NO_CAP)
    }

    /// `server`'s fee, bps.
    pub fn fee(&self, server: &Address) -> u64 {
        self.fees.get(server).copied().unwrap_or(0)
    }

    fn set_tab(&mut self, tab: Tab, amount: u64) {
        if amount == 0 {
            self.tabs.remove(&tab);
        } else {
            self.tabs.insert(tab, amount);
        }
    }
}

/// Where what a settled task did not spend goes, worked out before anything
/// changes ([`State::apply_payback`] applies it).
#[derive(Debug)]
pub(super) enum Payback {
    /// Back to the server that escrowed it (a transfer, already counted).
    Server,
    /// Back to a client's tab.
    Client {
        task: [u8; 16],
        tab: Tab,
        tab_after: u64,
        held_after: u64,
    },
}

impl State {
    /// `deposit(server, amount)`, signed by the client.
    pub(super) fn deposit(
        &mut self,
        client: Address,
        server: Address,
        amount: u64,
    ) -> Result<(), Abort> {
        if amount == 0 {
            return Err(Abort::ZeroAmount);
        }
        if !self.servers.contains(&server) {
            return Err(Abort::ServerNotFound);
        }
        let mut moves = Transfers::new(self);
        moves.pay_in(self, client, amount)?;
        let tab = Tab { client, server };
        let on_tab = add(self.clients.tab(client, server), amount)?;
        let held = add(self.clients.held, amount)?;
        moves.commit(self);
        self.clients.set_tab(tab, on_tab);
        self.clients.held = held;
        Ok(())
    }

    /// `withdraw_deposit(server, amount)`, signed by the client.
    pub(super) fn withdraw_deposit(
        &mut self,
        client: Address,
        server: Address,
        amount: u64,
    ) -> Result<(), Abort> {
        if amount == 0 {
            return Err(Abort::ZeroAmount);
        }
        let on_tab = self.clients.tab(client, server);
        if on_tab < amount {
            return Err(Abort::InsufficientDeposit);
        }
        let left = sub(on_tab, amount)?;
        let held = sub(self.clients.held, amount)?;
        let mut moves = Transfers::new(self);
        moves.pay_out(self, client, amount)?;
        moves.commit(self);
        self.clients.set_tab(Tab { client, server }, left);
        self.clients.held = held;
        Ok(())
    }

    /// `set_max_price(max_price_per_unit)`, signed by the client.
    pub(super) fn set_max_price(&mut self, client: Address, max_price_per_unit: u64) {
        self.clients.caps.insert(client, max_price_per_unit);
    }

    /// `bind_client_peer(peer_id)`, signed by the client.
    pub(super) fn bind_client_peer(
        &mut self,
        client: Address,
        peer_id: &[u8],
    ) -> Result<(), Abort> {
        if peer_id.is_empty() || peer_id.len() > super::MAX_PEER_ID_BYTES {
            return Err(Abort::InvalidArgument);
        }
        // First come: nobody redirects another client's tasks.
        if self.client_of_peer(peer_id).is_some_and(|c| c != client) {
            return Err(Abort::PeerTaken);
        }
        self.clients.peers.insert(peer_id.to_vec(), client);
        Ok(())
    }

    /// The `client_of_peer` view: the client that bound `peer_id`, if any.
    pub fn client_of_peer(&self, peer_id: &[u8]) -> Option<Address> {
        self.clients.peers.get(peer_id).copied()
    }

    /// `set_server_fee(fee_bps)`, signed by the server.
    pub(super) fn set_server_fee(&mut self, server: Address, fee_bps: u64) -> Result<(), Abort> {
        if !self.servers.contains(&server) {
            return Err(Abort::NotAuthorizedServer);
        }
        if fee_bps > BPS {
            return Err(Abort::InvalidFee);
        }
        self.clients.fees.insert(server, fee_bps);
        Ok(())
    }

    /// `create_client_task(client, task_id, orchestrator, price_per_unit,
    /// max_payment)`, signed by the server: the task's escrow and the fee's
    /// come from the client's tab at the server; nothing enters the vault.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_client_task(
        &mut self,
        config: &Config,
        server: Address,
        client: Address,
        id: &[u8],
        orchestrator: Address,
        price_per_unit: u64,
        max_payment: u64,
        now: u64,
    ) -> Result<(), Abort> {
        let id = self.check_open(config, &server, id, &orchestrator, max_payment)?;
        if price_per_unit > self.clients.cap(&client) {
            return Err(Abort::PriceAboveCap);
        }
        let fee_bps = self.clients.fee(&server);
        let fee_escrow = bps_of(u128::from(max_payment), fee_bps)?;
        let total = add(max_payment, fee_escrow)?;
        let on_tab = self.clients.tab(client, server);
        if on_tab < total {
            return Err(Abort::InsufficientDeposit);
        }
        let left = sub(on_tab, total)?;
        let held = sub(self.clients.held, max_payment)?;
        self.clients.set_tab(Tab { client, server }, left);
        self.clients.held = held;
        self.clients.tasks.insert(
            id,
            ClientTask {
                client,
                fee_bps,
                fee_escrow,
            },
        );
        self.open_task(id, server, orchestrator, price_per_unit, max_payment, now);
        Ok(())
    }

    /// Gives back what a settled task did not spend (`refund`): to the
    /// client's tab, less the server's fee on `payment`, for a client's
    /// task; to the server otherwise. Adds its transfers to `moves`.
    pub(super) fn settle_payer(
        &self,
        moves: &mut Transfers,
        id: &[u8; 16],
        server: Address,
        refund: u64,
        payment: u64,
    ) -> Result<Payback, Abort> {
        let Some(task) = self.clients.tasks.get(id) else {
            moves.pay_out(self, server, refund)?;
            return Ok(Payback::Server);
        };
        let fee = bps_of(u128::from(payment), task.fee_bps)?;
        let back = add(refund, sub(task.fee_escrow, fee)?)?;
        let tab = Tab {
            client: task.client,
            server,
        };
        let tab_after = add(self.clients.tab(task.client, server), back)?;
        let held_after = sub(add(self.clients.held, refund)?, fee)?;
        moves.pay_out(self, server, fee)?;
        Ok(Payback::Client {
            task: *id,
            tab,
            tab_after,
            held_after,
        })
    }

    /// Applies what [`State::settle_payer`] worked out.
    pub(super) fn apply_payback(&mut self, payback: Payback) {
        if let Payback::Client {
            task,
            tab,
            tab_after,
            held_after,
        } = payback
        {
            self.clients.tasks.remove(&task);
            self.clients.set_tab(tab, tab_after);
            self.clients.held = held_after;
        }
    }

    /// The `deposits_held` view: all tabs plus pending fee escrows.
    pub fn deposits_held(&self) -> u64 {
        self.clients.held
    }
}
