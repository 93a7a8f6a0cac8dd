//! [`Embedded`] as a [`ChainBackend`]: reads from the in-memory state,
//! writes through [`EmbeddedChain::apply`] on tokio's blocking pool, and the
//! ledger node's side of [`Transaction`]s (each applied as the sender's own
//! account).

use super::{Durable, Embedded};
use crate::chain::{ChainBackend, ChainError};
use cactus_protocol::TaskId;
use cactus_protocol::contract::{
    Address, Anchor, Config, Op, Orchestrator, State, Task, TaskStatus, Totals,
};
use cactus_protocol::messages::Transaction;
use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use std::sync::Arc;

impl ChainBackend for Embedded {
    fn account(&self) -> Address {
        self.0.account
    }

    fn submit(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        let account = self.0.account;
        self.0.blocking(move |c| c.apply(account, op))
    }

    /// A settlement paying the assigned orchestrator alone is committed
    /// without a disk sync of its own: the next synced commit (the next
    /// task's escrow sync, at the latest the chain's close) makes it durable
    /// in order, and a crash before then loses it whole, which leaves the
    /// task pending for reconcile to pay from the receipt, the same way. One
    /// paying delegates too is synced: reconcile would pay the assigned
    /// orchestrator alone (the receipt names no delegates).
    fn submit_settlement(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        let account = self.0.account;
        let durable = match &op {
            Op::CompleteTask { delegates, .. } if delegates.is_empty() => Durable::Later,
            _ => Durable::Now,
        };
        self.0.blocking(move |c| c.apply_with(account, op, durable))
    }

    /// Resolves as soon as the contract accepted the escrow; its commit,
    /// without a sync, goes on meanwhile, and [`sync`](Self::sync) makes it
    /// durable (one sync covers every escrow committed before it).
    fn submit_escrow(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        let (account, chain) = (self.0.account, Arc::clone(&self.0));
        let (valid, accepted) = tokio::sync::oneshot::channel();
        let committed = tokio::task::spawn_blocking(move || chain.apply_escrow(account, op, valid));
        async move {
            if accepted.await.is_ok() {
                return Ok(());
            }
            // Refused (or the blocking task died): why.
            committed.await.map_err(ChainError::Join)?
        }
        .boxed()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), ChainError>> {
        self.0.blocking(|c| c.sync())
    }

    fn config(&self) -> BoxFuture<'_, Result<Option<Config>, ChainError>> {
        let c = self.0.with_state(|s| s.config.clone());
        async move { Ok(c) }.boxed()
    }

    fn orchestrator(
        &self,
        who: Address,
    ) -> BoxFuture<'_, Result<Option<Orchestrator>, ChainError>> {
        let o = self.0.with_state(|s| s.orchestrators.get(&who).cloned());
        async move { Ok(o) }.boxed()
    }

    fn is_server(&self, who: Address) -> BoxFuture<'_, Result<bool, ChainError>> {
        let b = self.0.with_state(|s| s.is_server(&who));
        async move { Ok(b) }.boxed()
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Task>, ChainError>> {
        match self.0.task_in_memory(&id.0) {
            Some(t) => async move { Ok(Some(t)) }.boxed(),
            None => self.0.blocking(move |c| c.settled(&id.0)),
        }
    }

    fn totals(&self) -> BoxFuture<'_, Result<Totals, ChainError>> {
        let t = self.0.with_state(State::totals);
        async move { Ok(t) }.boxed()
    }

    fn client(
        &self,
        client: Address,
        server: Address,
    ) -> BoxFuture<'_, Result<(u64, u64), ChainError>> {
        let c = self
            .0
            .with_state(|s| (s.clients.tab(client, server), s.clients.cap(&client)));
        async move { Ok(c) }.boxed()
    }

    fn server_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        let derived = crate::chain::default_account(&peer);
        let s = self.0.with_state(|s| {
            s.server_of_peer(&peer.to_bytes())
                .or_else(|| s.is_server(&derived).then_some(derived))
        });
        async move { Ok(s) }.boxed()
    }

    fn client_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        let c = self.0.with_state(|s| s.client_of_peer(&peer.to_bytes()));
        async move { Ok(c) }.boxed()
    }

    fn server_fee(&self, server: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        let f = self.0.with_state(|s| s.clients.fee(&server));
        async move { Ok(f) }.boxed()
    }

    fn anchor_count(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        let n = self.0.with_state(|s| s.anchors.len() as u64);
        async move { Ok(n) }.boxed()
    }

    fn anchor(&self, index: u64) -> BoxFuture<'_, Result<Option<Anchor>, ChainError>> {
        let a = self.0.with_state(|s| {
            usize::try_from(index)
                .ok()
                .and_then(|i| s.anchors.get(i).cloned())
        });
        async move { Ok(a) }.boxed()
    }

    fn lists_pending(&self) -> bool {
        true
    }

    fn pending_tasks_of(
        &self,
        me: Address,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<TaskId>>, ChainError>> {
        let ids = self.0.with_state(|s| {
            s.tasks
                .iter()
                .filter(|(_, t)| t.server == me && t.status == TaskStatus::Pending)
                .take(limit)
                .map(|(id, _)| TaskId(*id))
                .collect()
        });
        async move { Ok(Some(ids)) }.boxed()
    }

    fn admit(
        &self,
        peer: PeerId,
        account: Address,
        _declared_stake: u64,
    ) -> BoxFuture<'_, Result<bool, ChainError>> {
        // Stake is never minted for an advert: an orchestrator registers
        // itself with money it holds (`transact`), as on any chain.
        self.0.blocking(move |c| {
            Ok(c.with_state(|s| {
                s.orchestrators
                    .get(&account)
                    .is_some_and(|o| o.peer_id == peer.to_bytes())
                    && s.is_eligible(&account)
            }))
        })
    }

    fn balance(&self, who: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        let b = self.0.with_state(|s| s.balance(&who));
        async move { Ok(b) }.boxed()
    }

    fn transact(&self, peer: PeerId, tx: Transaction) -> BoxFuture<'_, Result<(), ChainError>> {
        self.0.blocking(move |c| {
            let account = crate::chain::default_account(&peer);
            match tx {
                Transaction::Faucet => {
                    let Some(amount) = c.faucet else {
                        return Err(ChainError::Unsupported(
                            "this ledger has no faucet (a development ledger is started with --dev-faucet)",
                        ));
                    };
                    let have = c.with_state(|s| s.balance(&account));
                    if have >= amount {
                        return Ok(());
                    }
                    c.apply(
                        c.account,
                        Op::Mint {
                            to: account,
                            amount: amount - have,
                        },
                    )
                }
                Transaction::Register { stake } => c.apply(
                    account,
                    Op::RegisterOrchestrator {
                        peer_id: peer.to_bytes(),
                        amount: stake,
                    },
                ),
                Transaction::AddStake { amount } => c.apply(account, Op::AddStake { amount }),
                Transaction::Unstake { amount } => {
                    c.apply(account, Op::RequestUnstake { amount })
                }
                Transaction::Withdraw => c.apply(account, Op::Withdraw),
                Transaction::Apply(Op::Mint { .. }) => Err(ChainError::Unsupported(
                    "only the ledger's faucet mints",
                )),
                // A peer registers under its own PeerId only, which the
                // connection authenticated.
                Transaction::Apply(Op::RegisterOrchestrator { peer_id, .. })
                    if peer_id != peer.to_bytes() =>
                {
                    Err(ChainError::Unsupported(
                        "an orchestrator registers under its own PeerId only",
                    ))
                }
                Transaction::Apply(op) => c.apply(account, op),
            }
        })
    }
}
