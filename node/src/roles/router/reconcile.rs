//! After a restart (a kill -9, a crash, a power cut): the tasks this router
//! escrowed and never settled are settled or refunded before it takes new
//! work, so that no escrow stays locked.
//!
//! A router appends a result's countersigned receipt to its receipt log
//! before it pays on the chain (`settle.rs`). So a pending task whose receipt
//! is in the log was done and accepted: it is paid, from the receipt's
//! counts. Any other pending task never got an accepted result: it is
//! refunded (`fail_task`, reason `UNREACHABLE`, which the contract counts as
//! the orchestrator's failure, as it would have counted the timeout).
//!
//! A delegated task's delegates are not in its receipt (only the chain's
//! hash), so one found done is paid to the assigned orchestrator alone.

use crate::chain::{ChainBackend, ChainError};
use crate::receipt_log::ReceiptLog;
use cactus_protocol::TaskId;
use cactus_protocol::contract::{Op, reason};
use std::sync::Arc;

/// Most pending tasks settled at one start; a router has at most its task
/// budget in flight when it stops.
pub const MAX_RECONCILED: usize = 4096;

/// What [`reconcile`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Tasks paid from the receipt in the log.
    pub settled: usize,
    /// Tasks refunded.
    pub refunded: usize,
    /// Tasks the chain refused to settle or refund (left pending, logged).
    pub failed: usize,
}

/// Settles or refunds every task `chain`'s account left pending. Returns
/// `None` when the chain cannot list pending tasks.
pub async fn reconcile(
    chain: &dyn ChainBackend,
    receipts: &Arc<ReceiptLog>,
) -> Result<Option<Reconciled>, ChainError> {
    let Some(pending) = chain.pending_tasks(MAX_RECONCILED).await? else {
        return Ok(None);
    };
    let mut done = Reconciled::default();
    for id in pending {
        let logged = match receipt_of(receipts, id).await {
            Ok(r) => r,
            Err(e) => {
                // It may have been done: neither pay nor refund blind.
                tracing::error!(task_id = %id, error = %e, "receipt log unreadable for a pending task; task left pending");
                done.failed += 1;
                continue;
            }
        };
        let op = match logged {
            Some(receipt) => {
                let body = &receipt.body;
                if body.delegation.is_some() {
                    tracing::warn!(task_id = %id, "a delegated task is paid to its assigned orchestrator alone: its delegates are not in the receipt");
                }
                let hash = match receipt.hash() {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(task_id = %id, error = %e, "a logged receipt does not hash; task left pending");
                        done.failed += 1;
                        continue;
                    }
                };
                Op::CompleteTask {
                    task_id: id.0.to_vec(),
                    prompt_tokens: u64::from(body.prompt_tokens),
                    output_tokens: u64::from(body.output_tokens),
                    compute_ms: body.compute_ms,
                    delegates: Vec::new(),
                    receipt_hash: hash.0.to_vec(),
                }
            }
            None => Op::FailTask {
                task_id: id.0.to_vec(),
                reason: reason::UNREACHABLE,
            },
        };
        let paying = matches!(op, Op::CompleteTask { .. });
        match chain.submit(op).await {
            Ok(()) if paying => done.settled += 1,
            Ok(()) => done.refunded += 1,
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "could not settle a task left pending");
                done.failed += 1;
            }
        }
    }
    if done != Reconciled::default() {
        tracing::info!(
            settled = done.settled,
            refunded = done.refunded,
            failed = done.failed,
            "tasks left pending by the last run reconciled"
        );
    }
    Ok(Some(done))
}

async fn receipt_of(
    receipts: &Arc<ReceiptLog>,
    id: TaskId,
) -> Result<Option<cactus_protocol::receipt::Receipt>, String> {
    let log = Arc::clone(receipts);
    match tokio::task::spawn_blocking(move || log.get(&id)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::embedded::{Embedded, EmbeddedChain, LocalSettings};
    use crate::test_support::{countersigned, receipt_body};
    use cactus_protocol::contract::{Address, TaskStatus};
    use libp2p::identity::Keypair;

    /// A router's embedded chain with one registered orchestrator, and its
    /// receipt log.
    fn router() -> (
        tempfile::TempDir,
        Keypair,
        Embedded,
        Arc<ReceiptLog>,
        Address,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::generate_ed25519();
        let me = crate::chain::default_account(&key.public().to_peer_id());
        let chain = EmbeddedChain::open(dir.path(), me, &LocalSettings::default()).unwrap();
        let orch = Address([2; 32]);
        chain
            .apply(
                me,
                Op::Mint {
                    to: orch,
                    amount: 5_000,
                },
            )
            .unwrap();
        chain
            .apply(
                orch,
                Op::RegisterOrchestrator {
                    peer_id: vec![9; 38],
                    amount: 2_000,
                },
            )
            .unwrap();
        let receipts = Arc::new(ReceiptLog::open(dir.path()).unwrap());
        (dir, key, Embedded(chain), receipts, orch)
    }

    fn escrow(chain: &Embedded, orch: Address, id: TaskId) {
        chain
            .0
            .apply(
                chain.account(),
                Op::CreateTask {
                    task_id: id.0.to_vec(),
                    orchestrator: orch,
                    price_per_unit: 1,
                    max_payment: 500,
                },
            )
            .unwrap();
    }

    /// A countersigned receipt for task `id`, as the router logs it.
    fn receipt(router: &Keypair, id: TaskId) -> cactus_protocol::receipt::Receipt {
        let orch = Keypair::generate_ed25519();
        countersigned(receipt_body(&orch, router, id), &orch, router)
    }

    #[tokio::test]
    async fn tasks_left_pending_are_paid_when_logged_and_refunded_otherwise() {
        let (_dir, key, chain, receipts, orch) = router();
        let (done, lost) = (TaskId([1; 16]), TaskId([2; 16]));
        escrow(&chain, orch, done);
        escrow(&chain, orch, lost);
        // The first was accepted (its receipt logged) but the router died
        // before paying; the second never came back.
        receipts.append(&receipt(&key, done)).unwrap();
        let (_, escrowed, _) = chain.totals().await.unwrap();
        assert_eq!(escrowed, 1_000);

        let r = reconcile(&chain, &receipts).await.unwrap().unwrap();
        assert_eq!(
            r,
            Reconciled {
                settled: 1,
                refunded: 1,
                failed: 0
            }
        );
        let paid = chain.task(done).await.unwrap().unwrap();
        assert_eq!(paid.status, TaskStatus::Completed);
        assert!(paid.payment > 0);
        let refunded = chain.task(lost).await.unwrap().unwrap();
        assert_eq!(refunded.status, TaskStatus::Failed);
        let (_, escrowed, _) = chain.totals().await.unwrap();
        assert_eq!(escrowed, 0);
        // Nothing is left for a second start.
        assert_eq!(
            reconcile(&chain, &receipts).await.unwrap(),
            Some(Reconciled::default())
        );
    }
}
