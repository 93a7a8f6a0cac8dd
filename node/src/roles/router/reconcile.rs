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
//!
//! Which tasks are pending comes from the chain when it can list them, and
//! otherwise (Aptos) from the router's escrow journal, each entry checked
//! against the chain's record of the task.

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

/// Settles or refunds every task `chain`'s account left pending: those the
/// chain lists, or those in the escrow journal that the chain still holds
/// pending. `None` when neither can say (the journal unreadable).
pub async fn reconcile(
    chain: &dyn ChainBackend,
    receipts: &Arc<ReceiptLog>,
) -> Result<Option<Reconciled>, ChainError> {
    let journal = !chain.lists_pending();
    let pending = match chain.pending_tasks(MAX_RECONCILED).await? {
        Some(listed) if !journal => listed,
        _ => {
            let log = Arc::clone(receipts);
            let ids = match tokio::task::spawn_blocking(move || log.journaled(MAX_RECONCILED)).await
            {
                Ok(Ok(ids)) => ids,
                other => {
                    tracing::error!(error = ?other.err(), "the escrow journal is unreadable: pending tasks not reconciled");
                    return Ok(None);
                }
            };
            let mut pending = Vec::new();
            for id in ids {
                match chain.task(id).await? {
                    Some(t) if t.status == cactus_protocol::contract::TaskStatus::Pending => {
                        pending.push(id)
                    }
                    // Settled, or never escrowed (the escrow failed).
                    _ => forget(receipts, id).await,
                }
            }
            pending
        }
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
        let result = chain.submit(op).await;
        if journal && result.is_ok() {
            forget(receipts, id).await;
        }
        match result {
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

/// Drops task `id` from the escrow journal (logged when that fails: the
/// next start checks it against the chain again).
pub(super) async fn forget(receipts: &Arc<ReceiptLog>, id: TaskId) {
    let log = Arc::clone(receipts);
    match tokio::task::spawn_blocking(move || log.journal_settled(&id)).await {
        Ok(Ok(())) => {}
        other => {
            tracing::warn!(task_id = %id, error = ?other.err(), "could not drop a settled task from the escrow journal")
        }
    }
}

/// Drops task `id`, settled (or never escrowed), from the escrow journal
/// of a router whose chain cannot list pending tasks; nothing otherwise.
pub(super) async fn journal_settled(
    chain: &dyn ChainBackend,
    receipts: &Arc<ReceiptLog>,
    id: TaskId,
) {
    if !chain.lists_pending() {
        forget(receipts, id).await;
    }
}

impl super::RouterCtx {
    /// Notes task `id` in the escrow journal before it is escrowed, on a
    /// chain that cannot list pending tasks; durable when this returns.
    pub(super) async fn journal_escrow(&self, id: TaskId) -> Result<(), String> {
        if self.chain.lists_pending() {
            return Ok(());
        }
        let log = Arc::clone(&self.receipts);
        let now = crate::time::now_ms();
        match tokio::task::spawn_blocking(move || log.journal_escrow(&id, now)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Drops task `id` from the escrow journal once it is settled (or was
    /// never escrowed).
    pub(super) async fn journal_settled(&self, id: TaskId) {
        journal_settled(self.chain.as_ref(), &self.receipts, id).await;
    }
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

    /// A chain that cannot list pending tasks, as Aptos: the embedded chain
    /// behind it, every other call passed on.
    #[derive(Debug)]
    struct Unlisted(Embedded);

    impl ChainBackend for Unlisted {
        fn account(&self) -> Address {
            self.0.account()
        }
        fn submit(&self, op: Op) -> futures::future::BoxFuture<'_, Result<(), ChainError>> {
            self.0.submit(op)
        }
        fn config(
            &self,
        ) -> futures::future::BoxFuture<
            '_,
            Result<Option<cactus_protocol::contract::Config>, ChainError>,
        > {
            self.0.config()
        }
        fn orchestrator(
            &self,
            who: Address,
        ) -> futures::future::BoxFuture<
            '_,
            Result<Option<cactus_protocol::contract::Orchestrator>, ChainError>,
        > {
            self.0.orchestrator(who)
        }
        fn is_server(
            &self,
            who: Address,
        ) -> futures::future::BoxFuture<'_, Result<bool, ChainError>> {
            self.0.is_server(who)
        }
        fn task(
            &self,
            id: TaskId,
        ) -> futures::future::BoxFuture<
            '_,
            Result<Option<cactus_protocol::contract::Task>, ChainError>,
        > {
            self.0.task(id)
        }
        fn totals(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<cactus_protocol::contract::Totals, ChainError>>
        {
            self.0.totals()
        }
        fn client(
            &self,
            client: Address,
            server: Address,
        ) -> futures::future::BoxFuture<'_, Result<(u64, u64), ChainError>> {
            self.0.client(client, server)
        }
        fn server_fee(
            &self,
            server: Address,
        ) -> futures::future::BoxFuture<'_, Result<u64, ChainError>> {
            self.0.server_fee(server)
        }
        fn anchor_count(&self) -> futures::future::BoxFuture<'_, Result<u64, ChainError>> {
            self.0.anchor_count()
        }
        fn anchor(
            &self,
            index: u64,
        ) -> futures::future::BoxFuture<
            '_,
            Result<Option<cactus_protocol::contract::Anchor>, ChainError>,
        > {
            self.0.anchor(index)
        }
        fn admit(
            &self,
            peer: libp2p::PeerId,
            account: Address,
            declared: u64,
        ) -> futures::future::BoxFuture<'_, Result<bool, ChainError>> {
            self.0.admit(peer, account, declared)
        }
    }

    #[tokio::test]
    async fn without_a_listing_chain_the_escrow_journal_says_what_to_reconcile() {
        let (_dir, key, chain, receipts, orch) = router();
        let (done, lost, never) = (TaskId([1; 16]), TaskId([2; 16]), TaskId([3; 16]));
        for id in [done, lost] {
            receipts.journal_escrow(&id, 1).unwrap();
            escrow(&chain, orch, id);
        }
        // Noted, then the router died before its escrow went through.
        receipts.journal_escrow(&never, 1).unwrap();
        receipts.append(&receipt(&key, done)).unwrap();
        let chain = Unlisted(chain);
        assert_eq!(chain.pending_tasks(10).await.unwrap(), None);

        let r = reconcile(&chain, &receipts).await.unwrap().unwrap();
        assert_eq!(
            r,
            Reconciled {
                settled: 1,
                refunded: 1,
                failed: 0
            }
        );
        assert_eq!(
            chain.task(done).await.unwrap().unwrap().status,
            TaskStatus::Completed
        );
        assert_eq!(
            chain.task(lost).await.unwrap().unwrap().status,
            TaskStatus::Failed
        );
        assert_eq!(chain.totals().await.unwrap().1, 0, "nothing left in escrow");
        assert!(
            receipts.journaled(10).unwrap().is_empty(),
            "the journal is empty"
        );
    }
}
