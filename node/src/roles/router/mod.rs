//! The router role: accepts tasks from clients, picks an orchestrator from
//! the live table, escrows the task on the chain, hands it over, checks the
//! result, countersigns the receipt, records it, settles the payment and
//! answers the client.
//!
//! Every dispatch attempt is its own task on the chain: created (escrow)
//! before the hand-off, then completed (payment) or failed (refund). A
//! client's task that is retried on another orchestrator therefore never pays
//! twice.
//!
//! One file per concern, each an `impl RouterCtx` block:
//!
//! - [`handler`]: what the dispatcher hands this role (requests, adverts,
//!   round trips, ticks) and where each goes;
//! - [`admit`]: admission of an orchestrator heard from, by the chain's
//!   record of its stake and identity;
//! - [`dispatch`]: a client's task end to end, attempt by attempt, with
//!   failover;
//! - [`stream`]: one attempt over a token stream, passing tokens on to the
//!   client and keeping what was sent, so that a task can resume elsewhere;
//! - [`market`]: calls for bids when no orchestrator in the table can take a
//!   task, and the bids that answer them;
//! - [`spot_check`]: the replay draw and the verifiers' vote;
//! - [`slash`]: slashing the signer of a result found to be fraud;
//! - [`settle`]: escrow, countersigning, the receipt log and payment;
//! - [`query`]: answers to questions about receipts, anchors and status.
//!
//! The decisions that need no I/O live in `cactus-protocol`, where they are
//! unit-tested: [`cactus_protocol::attempt`] classifies a failed hand-off,
//! [`cactus_protocol::vote`] tallies the verifiers, `schedule` scores and draws.

mod admit;
mod after_payments;
mod again;
mod dispatch;
mod handler;
mod market;
mod query;
mod reconcile;
mod settle;
mod slash;
mod spot_check;
mod stream;

pub use after_payments::AfterPayments;
pub use again::{MAX_NAMED_IN_FLIGHT, Requests};
pub use dispatch::Payer;
pub use handler::RouterRole;
pub use market::Market;
pub use reconcile::{MAX_RECONCILED, Reconciled, reconcile};
pub use settle::{DEFAULT_FEE_BPS, MAX_SETTLING, Settling, set_fee};
pub use spot_check::Verification;
pub use stream::{Delivery, STALL_TIMEOUT};

use super::table::OrchestratorTable;
use crate::chain::ChainBackend;
use crate::network::Network;
use crate::receipt_log::ReceiptLog;
use cactus_protocol::contract::Config;
use cactus_protocol::reputation::FailureKind;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What the router's task handlers share.
pub struct RouterCtx {
    pub network: Network,
    /// This router's identity, to countersign receipts.
    pub key: Keypair,
    /// The orchestrators heard from, admitted or not, with their scores.
    pub table: Arc<Mutex<OrchestratorTable>>,
    /// Every countersigned receipt, durable before the client is answered.
    pub receipts: Arc<ReceiptLog>,
    /// Where tasks are escrowed and paid.
    pub chain: Arc<dyn ChainBackend>,
    /// The contract's configuration when the router started.
    pub contract: Config,
    /// Told after each recorded receipt (the anchorer listens).
    pub appended: Arc<Notify>,
    /// How long one orchestrator may take for one task.
    pub task_timeout: Duration,
    /// How long a client's task may take in all, retries included.
    pub task_deadline: Duration,
    /// Longest silence between two frames of a token stream, once tokens
    /// flow, before the orchestrator counts as stalled.
    pub stall_timeout: Duration,
    /// Orchestrators tried per task before giving up.
    pub max_attempts: usize,
    /// Whether a task goes first to an orchestrator whose prompt cache holds
    /// its prefix (a chat's next turn), ahead of the weighted draw.
    pub prefix_routing: bool,
    /// How results are spot-checked.
    pub verification: Verification,
    /// Calls for bids open now, for tasks no orchestrator in the table can
    /// take.
    pub market: Market,
    /// Payments of answered tasks still under way.
    pub settling: Arc<Settling>,
    /// Named requests being served now (see `again`).
    pub requests: Arc<Requests>,
    /// The node's metrics: outcomes, payments and spot checks are counted
    /// where they are decided.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When this router started: for a while after, while it knows no
    /// orchestrator at all, a model nobody serves is one whose orchestrators
    /// have not rejoined, not an unknown one.
    pub started_at: std::time::Instant,
    /// Whether this router had served before this start (its receipt log
    /// holds receipts): for a while after such a start, a model no
    /// orchestrator that rejoined serves may be one whose orchestrators
    /// have not rejoined yet.
    pub restarted: bool,
}

impl std::fmt::Debug for RouterCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCtx")
            .field("peer", &self.network.local_peer_id())
            .field("account", &self.chain.account())
            .finish_non_exhaustive()
    }
}

impl RouterCtx {
    pub(super) fn with_table<T>(&self, f: impl FnOnce(&mut OrchestratorTable) -> T) -> T {
        // A poisoned lock means a panic elsewhere; the table itself is still
        // consistent (every update is a single insert or remove).
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Records how a task ended in the table and persists the record.
    pub(super) async fn record_outcome(
        &self,
        peer: PeerId,
        outcome: Result<Option<u64>, FailureKind>,
    ) {
        let now = crate::time::now_ms();
        let Some(rep) = self.with_table(|t| t.record_outcome(&peer, outcome, now)) else {
            return;
        };
        let receipts = Arc::clone(&self.receipts);
        match tokio::task::spawn_blocking(move || receipts.save_reputation(&peer, &rep)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
            Err(e) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
        }
    }

    /// The per-orchestrator load gauges' data, from the table now.
    pub fn orchestrator_loads(&self) -> Vec<crate::metrics::OrchestratorLoad> {
        self.with_table(|t| t.snapshot())
            .into_iter()
            .map(|o| crate::metrics::OrchestratorLoad {
                peer: o.peer,
                active: o.total_slots.saturating_sub(o.free_slots),
                free_slots: o.free_slots,
                queued: o.queued,
                in_flight: o.in_flight,
            })
            .collect()
    }

    /// The seed of this hour's draws: anyone with the router's PeerId, the
    /// hour and the candidate table can recompute each pick.
    pub fn epoch_seed(&self) -> cactus_protocol::Digest {
        let hour = crate::time::now_ms() / 3_600_000;
        let mut b = b"cactus/epoch/v1\0".to_vec();
        b.extend_from_slice(&self.network.local_peer_id().to_bytes());
        b.extend_from_slice(&hour.to_le_bytes());
        cactus_protocol::Digest::of(&b)
    }
}
