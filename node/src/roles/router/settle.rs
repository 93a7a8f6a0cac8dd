//! What happens to a result that comes back: it is checked, spot-checked
//! when drawn, countersigned and written to the receipt log; once the
//! client has its answer, it is paid for on the chain, with the payment
//! retried on transient errors.

use super::RouterCtx;
use super::dispatch::Keep;
use super::spot_check::Check;
use crate::chain::ChainBackend;
use crate::receipt_log::{KeptAnswer, ReceiptLog};
use cactus_protocol::contract::{Address, Op};
use cactus_protocol::verify::check_result;
use cactus_protocol::{Assignment, TaskError, TaskErrorKind, TaskId, TaskResult};
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much more compute time than the router saw pass between hand-off
/// and result a receipt may claim: timer granularity on both sides.
pub const COMPUTE_SLACK: Duration = Duration::from_millis(50);

/// Whether a receipt's `compute_ms` fits in the `observed` time between
/// hand-off and result, plus [`COMPUTE_SLACK`]. Compute time is
/// self-reported and paid for: a claim beyond what could have happened is a
/// bad result.
pub fn compute_fits(compute_ms: u64, observed: Duration) -> bool {
    let most = observed.saturating_add(COMPUTE_SLACK).as_millis();
    u128::from(compute_ms) <= most
}

/// A router's fee unless it sets another (`--fee-bps`): 1 % of each
/// payment, charged to the client on top.
pub const DEFAULT_FEE_BPS: u64 = 100;

/// Sets this router's fee on the chain when it differs: what clients pay
/// it on top of each payment, from the tasks it opens from now on. A chain
/// that refuses (this router is not authorized yet) is logged, not fatal.
pub async fn set_fee(chain: &dyn ChainBackend, fee_bps: u64) {
    match chain.server_fee(chain.account()).await {
        Ok(now) if now == fee_bps => {}
        Ok(_) => match chain.submit(Op::SetServerFee { fee_bps }).await {
            Ok(()) => tracing::info!(fee_bps, "router fee set on the chain"),
            Err(e) => tracing::warn!(fee_bps, error = %e, "could not set the router's fee"),
        },
        Err(e) => tracing::warn!(error = %e, "could not read the router's fee"),
    }
}

impl RouterCtx {
    /// The most a task can cost under the contract's formula (100 %
    /// reputation): what the router escrows. A prompt has at most one token per
    /// byte, plus a few special tokens; a resumed task also prefills the
    /// tokens it resumes from.
    pub fn escrow_for(&self, assignment: &Assignment, price_per_unit: u64) -> u64 {
        let c = &self.contract;
        let resumed = assignment.resume.as_ref().map_or(0, |r| r.tokens.len());
        let prompt_tokens = (assignment.prompt.len() + resumed) as u128 + 16;
        let units = prompt_tokens * u128::from(c.prompt_weight)
            + u128::from(assignment.sampling.max_tokens) * u128::from(c.output_weight);
        let most = units * u128::from(price_per_unit)
            + units * u128::from(c.ms_cap_per_unit) * u128::from(c.price_per_ms);
        u64::try_from(most).unwrap_or(u64::MAX).max(1)
    }

    /// Checks, countersigns and records a result, ready to go to the client
    /// (with what it resumed from); what pays for it. A named request's
    /// answer is kept with the receipt, under the account that pays.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn accept(
        &self,
        peer: PeerId,
        assignment: &Assignment,
        mut result: TaskResult,
        observed: Duration,
        connection: &str,
        deadline: tokio::time::Instant,
        keep: Option<(Address, &Keep)>,
    ) -> Result<(TaskResult, Settlement), TaskError> {
        let router = self.network.local_peer_id();
        if let Err(e) = check_result(assignment, &router, &peer, &result) {
            tracing::warn!(orchestrator = %peer, error = %e, "result failed verification");
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!("orchestrator {peer}: {e}"),
            ));
        }
        let compute_ms = result.receipt.body.compute_ms;
        if !compute_fits(compute_ms, observed) {
            tracing::warn!(orchestrator = %peer, compute_ms, observed_ms = observed.as_millis() as u64, "result claims more compute time than passed");
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!(
                    "orchestrator {peer} claims {compute_ms} ms of compute in {} ms",
                    observed.as_millis()
                ),
            ));
        }
        let bad =
            |e: &dyn std::fmt::Display| TaskError::new(TaskErrorKind::BadResult, e.to_string());
        // Delegates are paid their share along the chain: they must be
        // orchestrators this router knows.
        let mut delegates = Vec::with_capacity(result.delegation.len());
        let assigned_account = self.with_table(|t| t.terms(&peer)).map(|(a, _)| a);
        for link in &result.delegation {
            let child = link.body.child;
            let Some((account, _)) = self.with_table(|t| t.admitted_terms(&child)) else {
                return Err(bad(&format!(
                    "delegate {child} is not an orchestrator admitted here"
                )));
            };
            // What the chain's complete_task checks, checked before the
            // receipt is countersigned.
            if Some(account) == assigned_account || delegates.contains(&account) {
                return Err(bad(&format!(
                    "delegate {child} repeats an account of the chain"
                )));
            }
            delegates.push(account);
        }
        if !result.delegation.is_empty() {
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, executor = %result.receipt.body.orchestrator, depth = delegates.len(), "delegated result");
        }
        let seed = result
            .receipt
            .body
            .digest()
            .ok()
            .and_then(|d| self.check_seed(&assignment.task_id, &d));
        // A resumed result is not replayed: a replay request does not carry
        // the tokens it resumed from, so a verifier would judge it against
        // the wrong context.
        if let Some(seed) = seed
            && assignment.resume.is_none()
            && self.selected_for_check(&seed)
            && let Check::Fraud { slashed } = self
                .spot_check(peer, assignment, &result, &seed, deadline)
                .await
        {
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!(
                    "orchestrator {peer}: the result failed its replay check{}",
                    if slashed { "; stake slashed" } else { "" }
                ),
            ));
        }
        result.receipt.countersign(&self.key).map_err(|e| bad(&e))?;
        let receipt_hash = result.receipt.hash().map_err(|e| bad(&e))?;
        let body = &result.receipt.body;
        // The assigned orchestrator answers for the task, delegated or not:
        // the outcome is its record, stored in the receipt's own commit and
        // counted in the table once that commit holds (a receipt log that
        // fails makes the attempt a failure instead).
        let per_token = body.compute_ms.checked_div(u64::from(body.output_tokens));
        let now = crate::time::now_ms();
        let rep = self.with_table(|t| t.after_outcome(&peer, Ok(per_token), now));
        result.resumed = assignment.resume.clone();
        let receipts = Arc::clone(&self.receipts);
        let receipt = result.receipt.clone();
        let kept = keep.map(|(account, k)| (account, k.request, k.asked, result.clone()));
        tokio::task::spawn_blocking(move || {
            let kept = kept
                .as_ref()
                .map(|(account, request, asked, result)| KeptAnswer {
                    account,
                    request,
                    asked,
                    result,
                });
            receipts.append_kept(&receipt, rep.as_ref().map(|r| (&peer, r)), kept.as_ref())
        })
        .await
        .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, e.to_string()))?
        .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, format!("receipt log: {e}")))?;
        self.appended.notify_one();
        self.with_table(|t| t.record_outcome(&peer, Ok(per_token), now));
        self.metrics.task_outcome(crate::metrics::Outcome::Done);
        self.metrics
            .output_tokens(body.output_tokens, crate::time::now_ms());
        let settle = Settlement {
            chain: Arc::clone(&self.chain),
            receipts: Arc::clone(&self.receipts),
            metrics: Arc::clone(&self.metrics),
            complete: Op::CompleteTask {
                task_id: assignment.task_id.0.to_vec(),
                prompt_tokens: u64::from(body.prompt_tokens),
                output_tokens: u64::from(body.output_tokens),
                compute_ms: body.compute_ms,
                delegates,
                receipt_hash: receipt_hash.0.to_vec(),
            },
            task_id: assignment.task_id,
            orchestrator: peer,
            output_tokens: body.output_tokens,
            compute_ms: body.compute_ms,
            connection: connection.to_owned(),
        };
        Ok((result, settle))
    }

    /// Pays an accepted task from `payer`'s deposit in a task of its own:
    /// the work is done and the receipt durable, so the client gets its
    /// answer now and the payment follows it (a router killed in between
    /// pays it from the receipt when it starts again, see `reconcile`).
    pub(super) async fn pay_after_answer(&self, payer: Address, settle: Settlement) {
        let place = self.settling.place(payer).await;
        tokio::spawn(async move {
            settle.run().await;
            drop(place);
        });
    }
}

/// Settlements of answered tasks still under way: at most
/// [`MAX_SETTLING`] at once (a result that would be one more waits for a
/// place before its answer goes out), counted per paying account.
#[derive(Debug)]
pub struct Settling {
    places: Arc<Semaphore>,
    /// Settlements under way per paying account (at most [`MAX_SETTLING`]
    /// entries: one place each).
    payers: Arc<Mutex<HashMap<Address, u32>>>,
}

/// Settlements under way at once, at most.
pub const MAX_SETTLING: u32 = 1024;

impl Default for Settling {
    fn default() -> Self {
        Self {
            places: Arc::new(Semaphore::new(MAX_SETTLING as usize)),
            payers: Arc::default(),
        }
    }
}

/// One settlement's place, and its count against its payer, until dropped.
pub(super) struct Place {
    _permit: OwnedSemaphorePermit,
    payer: Address,
    payers: Arc<Mutex<HashMap<Address, u32>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut payers = self.payers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = payers.get_mut(&self.payer) {
            *n -= 1;
            if *n == 0 {
                payers.remove(&self.payer);
            }
        }
    }
}

impl Settling {
    /// A place for one settlement paid by `payer`, held until it ends.
    async fn place(&self, payer: Address) -> Option<Place> {
        let permit = Arc::clone(&self.places).acquire_owned().await.ok()?;
        *self
            .payers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(payer)
            .or_default() += 1;
        Some(Place {
            _permit: permit,
            payer,
            payers: Arc::clone(&self.payers),
        })
    }

    /// Whether a settlement paid by `payer` is under way: only then can
    /// its deposit be held by a task already answered.
    pub fn owes(&self, payer: &Address) -> bool {
        self.payers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(payer)
    }

    /// Returns once every settlement started before the call has ended:
    /// what reads balances or payments (a client's query, a metrics
    /// scrape, shutdown; a refused escrow about to be retried, when its
    /// payer [`owes`](Self::owes)) waits for this so that it sees every
    /// task answered before it as paid.
    pub async fn drained(&self) {
        // The semaphore is fair: settlements started after this call wait
        // behind it, so this cannot be starved.
        let _all = self.places.acquire_many(MAX_SETTLING).await;
    }
}

/// The payment of one answered task, run after its answer went out.
pub(super) struct Settlement {
    chain: Arc<dyn ChainBackend>,
    receipts: Arc<ReceiptLog>,
    metrics: Arc<crate::metrics::Metrics>,
    complete: Op,
    task_id: TaskId,
    orchestrator: PeerId,
    output_tokens: u32,
    compute_ms: u64,
    connection: String,
}

impl Settlement {
    /// Pays the task on the chain. A transient chain error is retried; the
    /// task stays escrowed (and its receipt recorded) for the operator if
    /// it persists, since a refund would count as the orchestrator's
    /// failure.
    async fn run(self) {
        let mut settled = false;
        for attempt in 0..3u32 {
            match self.chain.submit_settlement(self.complete.clone()).await {
                Ok(()) => {
                    settled = true;
                    break;
                }
                Err(e) => {
                    tracing::error!(task_id = %self.task_id, error = %e, attempt, "could not settle a completed task on the chain");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if settled {
            super::reconcile::journal_settled(self.chain.as_ref(), &self.receipts, self.task_id)
                .await;
            // What the contract paid (it may be less than the escrow): read
            // back, since the chain applies the orchestrator's reputation.
            let paid = match self.chain.task(self.task_id).await {
                Ok(Some(task)) => Some(task.payment),
                _ => None,
            };
            self.metrics.payment(paid);
        } else {
            self.metrics.payment_failed();
            tracing::error!(task_id = %self.task_id, "the task stays escrowed on the chain: settle it by hand");
        }
        tracing::info!(
            task_id = %self.task_id,
            orchestrator = %self.orchestrator,
            output_tokens = self.output_tokens,
            compute_ms = self.compute_ms,
            connection = %self.connection,
            paid = settled,
            "task done; receipt recorded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn reads_wait_for_the_payments_under_way_and_no_longer() {
        let settling = Settling::default();
        let (payer, other) = (Address([1; 32]), Address([2; 32]));
        let place = settling.place(payer).await.unwrap();
        let again = settling.place(payer).await.unwrap();
        assert!(settling.owes(&payer) && !settling.owes(&other));
        let mut drained = std::pin::pin!(settling.drained());
        assert!(futures::poll!(drained.as_mut()).is_pending());
        // A payment started after the read waits behind it.
        let mut later = std::pin::pin!(settling.place(other));
        assert!(futures::poll!(later.as_mut()).is_pending());
        drop(place);
        assert!(settling.owes(&payer));
        assert!(futures::poll!(drained.as_mut()).is_pending());
        drop(again);
        assert!(!settling.owes(&payer));
        drained.await;
        let later = later.await.unwrap();
        assert!(settling.owes(&other));
        drop(later);
        assert!(!settling.owes(&other));
        assert!(settling.drained().now_or_never().is_some());
    }

    #[test]
    fn compute_time_fits_in_what_the_router_saw_plus_the_slack() {
        let observed = Duration::from_millis(800);
        assert!(compute_fits(0, observed));
        assert!(compute_fits(800, observed));
        assert!(compute_fits(850, observed));
        assert!(!compute_fits(851, observed));
        assert!(!compute_fits(u64::MAX, observed));
        assert!(compute_fits(u64::MAX, Duration::MAX));
    }
}
