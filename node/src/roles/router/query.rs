//! Answers to questions about the router's receipts, anchors and status.

use super::RouterCtx;
use crate::chain::ChainError;
use crate::receipt_log::ReceiptLogError;
use crate::report::status::{StatusError, router_status};
use cactus_protocol::merkle::ReceiptBundle;
use cactus_protocol::messages::{
    AccountView, LedgerAnswer, LedgerView, MAX_PENDING_LISTED, Query, QueryAnswer, Standing,
    Transaction,
};
use cactus_protocol::{TaskError, TaskErrorKind, TaskResponse};
use std::sync::Arc;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The receipt log could not be read.
    #[error("receipt log")]
    ReceiptLog(#[from] ReceiptLogError),
    /// The chain could not be read.
    #[error("chain")]
    Chain(#[from] ChainError),
    /// The status could not be built.
    #[error("status")]
    Status(#[from] StatusError),
    /// The blocking reader stopped (the runtime is shutting down).
    #[error("receipt log reader")]
    Join(#[from] tokio::task::JoinError),
}

/// An error and its sources on one line, for an answer on the wire.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl RouterCtx {
    /// Answers a question about the router's receipts, anchors or status.
    pub async fn answer(&self, query: Query) -> TaskResponse {
        match self.try_answer(query).await {
            Ok(a) => TaskResponse::Answer(a),
            Err(e) => {
                TaskResponse::Failed(TaskError::new(TaskErrorKind::Unavailable, with_sources(&e)))
            }
        }
    }

    async fn try_answer(&self, query: Query) -> Result<QueryAnswer, QueryError> {
        // Every task answered before the question is paid in the answer.
        self.settling.drained().await;
        match query {
            Query::Receipt(id) => {
                let l = Arc::clone(&self.receipts);
                let found = tokio::task::spawn_blocking(move || -> Result<_, ReceiptLogError> {
                    let Some(receipt) = l.get(&id)? else {
                        return Ok(None);
                    };
                    let anchor = l.proof(&id)?;
                    Ok(Some(Box::new(ReceiptBundle { receipt, anchor })))
                })
                .await??;
                Ok(QueryAnswer::Receipt(found))
            }
            Query::Anchor(i) => Ok(QueryAnswer::Anchor(self.chain.anchor(i).await?)),
            Query::Status => {
                let known = self.with_table(|t| {
                    t.snapshot()
                        .into_iter()
                        .map(|o| (o.peer, o.account, o.reputation).into())
                        .collect()
                });
                let status = router_status(&*self.chain, Arc::clone(&self.receipts), known).await?;
                Ok(QueryAnswer::Status(Box::new(status)))
            }
            Query::Standing(peer) => {
                let account = self.account_of(&peer);
                // A peer is a server when the chain binds its PeerId to an
                // authorized server (this router: its own account).
                let server = if peer == self.network.local_peer_id() {
                    self.chain.is_server(account).await?
                } else {
                    self.chain.server_of_peer(peer).await?.is_some()
                };
                let record = self.chain.orchestrator(account).await?;
                let min_stake = self.chain.config().await?.map(|c| c.min_stake);
                let orchestrator = match (record, min_stake) {
                    (Some(o), Some(min)) => o.admits(&peer, min),
                    _ => false,
                };
                Ok(QueryAnswer::Standing(Standing {
                    server,
                    orchestrator,
                }))
            }
            Query::Ledger(view) => Ok(QueryAnswer::Ledger(self.view(view).await?)),
            Query::Account(peer) => {
                let account = self.account_of(&peer);
                let (deposit, max_price_per_unit) =
                    self.chain.client(account, self.chain.account()).await?;
                Ok(QueryAnswer::Account(AccountView {
                    account,
                    balance: self.chain.balance(account).await?,
                    orchestrator: self.chain.orchestrator(account).await?,
                    deposit,
                    max_price_per_unit,
                }))
            }
        }
    }

    /// The account a PeerId has on this router's ledger: on the embedded
    /// chain it is derived from the PeerId, so an answer about it binds the
    /// PeerId. This router's own is its chain account (on Aptos, a key of
    /// its own; other routers' PeerIds are bound by `set_server_peer`, see
    /// `ChainBackend::server_of_peer`).
    pub(super) fn account_of(&self, peer: &libp2p::PeerId) -> cactus_protocol::contract::Address {
        if *peer == self.network.local_peer_id() {
            self.chain.account()
        } else {
            crate::chain::default_account(peer)
        }
    }

    /// Reads one view of this router's chain.
    async fn view(&self, view: LedgerView) -> Result<LedgerAnswer, ChainError> {
        let c = &self.chain;
        Ok(match view {
            LedgerView::Config => LedgerAnswer::Config(c.config().await?),
            LedgerView::Orchestrator(a) => LedgerAnswer::Orchestrator(c.orchestrator(a).await?),
            LedgerView::IsServer(a) => LedgerAnswer::IsServer(c.is_server(a).await?),
            LedgerView::Task(id) => LedgerAnswer::Task(c.task(id).await?),
            LedgerView::Totals => LedgerAnswer::Totals(c.totals().await?),
            LedgerView::AnchorCount => LedgerAnswer::Count(c.anchor_count().await?),
            LedgerView::Balance(a) => LedgerAnswer::Count(c.balance(a).await?),
            LedgerView::Client { client, server } => {
                let (deposit, max_price_per_unit) = c.client(client, server).await?;
                LedgerAnswer::Client {
                    deposit,
                    max_price_per_unit,
                }
            }
            LedgerView::ServerFee(s) => LedgerAnswer::Count(c.server_fee(s).await?),
            LedgerView::PendingTasks { server, limit } => {
                let limit = limit.min(MAX_PENDING_LISTED) as usize;
                LedgerAnswer::Tasks(c.pending_tasks_of(server, limit).await?)
            }
        })
    }

    /// Applies a peer's transaction to its own account on this router's
    /// ledger (the embedded chain; other chains refuse) and answers with
    /// the account as it stands after; an operation (`Apply`) is answered
    /// with whether it applied or the contract's abort.
    pub async fn transact(&self, peer: libp2p::PeerId, tx: Transaction) -> TaskResponse {
        let is_op = matches!(tx, Transaction::Apply(_));
        let what = if is_op {
            String::new()
        } else {
            format!("{tx:?}")
        };
        let result = self.chain.transact(peer, tx).await;
        if is_op {
            let answer = match result {
                Ok(()) => LedgerAnswer::Applied,
                Err(ChainError::Abort(a)) => LedgerAnswer::Refused(a),
                Err(e) => {
                    return TaskResponse::Failed(TaskError::new(
                        TaskErrorKind::Unavailable,
                        with_sources(&e),
                    ));
                }
            };
            return TaskResponse::Answer(QueryAnswer::Ledger(answer));
        }
        match result {
            Ok(()) => {
                tracing::info!(%peer, transaction = %what, "ledger transaction applied");
                self.answer(Query::Account(peer)).await
            }
            Err(ChainError::Abort(a)) => TaskResponse::Failed(TaskError::new(
                TaskErrorKind::InvalidRequest,
                format!("the ledger refused it: {a}"),
            )),
            Err(ChainError::Unsupported(why)) => {
                TaskResponse::Failed(TaskError::new(TaskErrorKind::InvalidRequest, why))
            }
            Err(e) => {
                TaskResponse::Failed(TaskError::new(TaskErrorKind::Unavailable, with_sources(&e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("status")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading the chain")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn an_answer_on_the_wire_names_every_source() {
        let e = Outer(Middle(std::io::Error::other("disk gone")));
        assert_eq!(with_sources(&e), "status: reading the chain: disk gone");
        assert_eq!(with_sources(&std::io::Error::other("x")), "x");
    }
}
