//! Answers to questions about the router's receipts, anchors and status.

use super::RouterCtx;
use cactus_protocol::contract::Address;
use cactus_protocol::merkle::ReceiptBundle;
use cactus_protocol::messages::{
    MAX_STATUS_ORCHESTRATORS, OrchestratorStatus, Query, QueryAnswer, RouterStatus,
};
use cactus_protocol::{TaskError, TaskErrorKind, TaskResponse};
use libp2p::PeerId;
use std::sync::Arc;

impl RouterCtx {
    /// Answers a question about the ledger.
    pub async fn answer(&self, query: Query) -> TaskResponse {
        match self.try_answer(query).await {
            Ok(a) => TaskResponse::Answer(a),
            Err(e) => TaskResponse::Failed(TaskError::new(TaskErrorKind::Unavailable, e)),
        }
    }

    async fn try_answer(&self, query: Query) -> Result<QueryAnswer, String> {
        match query {
            Query::Receipt(id) => {
                let l = Arc::clone(&self.receipts);
                let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
                    let Some(receipt) = l.get(&id).map_err(|e| e.to_string())? else {
                        return Ok(None);
                    };
                    let anchor = l.proof(&id).map_err(|e| e.to_string())?;
                    Ok(Some(Box::new(ReceiptBundle { receipt, anchor })))
                })
                .await
                .map_err(|e| e.to_string())??;
                Ok(QueryAnswer::Receipt(found))
            }
            Query::Anchor(i) => Ok(QueryAnswer::Anchor(
                self.chain.anchor(i).await.map_err(|e| e.to_string())?,
            )),
            Query::Status => {
                let known: Vec<(PeerId, Address, cactus_protocol::reputation::Reputation)> = self
                    .with_table(|t| {
                        t.snapshot()
                            .into_iter()
                            .map(|o| (o.peer, o.account, o.reputation))
                            .take(MAX_STATUS_ORCHESTRATORS)
                            .collect()
                    });
                let mut orchestrators = Vec::with_capacity(known.len());
                for (peer, account, reputation) in known {
                    let record = self
                        .chain
                        .orchestrator(account)
                        .await
                        .map_err(|e| e.to_string())?;
                    orchestrators.push(OrchestratorStatus {
                        peer: Some(peer),
                        account,
                        record,
                        reputation: Some(reputation),
                    });
                }
                let (receipts, pending_anchor) = {
                    let receipts = Arc::clone(&self.receipts);
                    tokio::task::spawn_blocking(move || {
                        Ok::<_, String>((
                            receipts.len().map_err(|e| e.to_string())?,
                            receipts.pending_len().map_err(|e| e.to_string())?,
                        ))
                    })
                    .await
                    .map_err(|e| e.to_string())??
                };
                let c = &self.chain;
                let err = |e: crate::chain::ChainError| e.to_string();
                Ok(QueryAnswer::Status(Box::new(RouterStatus {
                    router_account: c.account(),
                    authorized: c.is_server(c.account()).await.map_err(err)?,
                    config: c.config().await.map_err(err)?,
                    orchestrators,
                    totals: c.totals().await.map_err(err)?,
                    receipts,
                    pending_anchor,
                    anchors: c.anchor_count().await.map_err(err)?,
                })))
            }
        }
    }
}
