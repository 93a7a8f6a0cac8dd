//! The router role: accepts tasks from clients, picks an orchestrator from
//! the live table, escrows the task on the ledger, hands it over, checks the
//! result, countersigns the receipt, records it, settles the payment and
//! answers the client.
//!
//! Every dispatch attempt is its own ledger task: created (escrow) before the
//! hand-off, then completed (payment) or failed (refund). A client's task that
//! is retried on another orchestrator therefore never pays twice.

use super::table::OrchestratorTable;
use crate::chain::ChainBackend;
use crate::ledger::Ledger;
use crate::network::Network;
use cactus_protocol::ledger::{Address, Config, Op, reason};
use cactus_protocol::merkle::ReceiptBundle;
use cactus_protocol::messages::{
    LedgerStatus, MAX_STATUS_ORCHESTRATORS, OrchestratorStatus, Query, QueryAnswer,
};
use cactus_protocol::reputation::FailureKind;
use cactus_protocol::verify::check_result;
use cactus_protocol::{
    Assignment, TaskError, TaskErrorKind, TaskId, TaskRequest, TaskResponse, TaskResult, TaskSpec,
};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What the router's task handlers share.
pub struct RouterCtx {
    /// The mesh.
    pub network: Network,
    /// This router's identity, to countersign receipts.
    pub key: Keypair,
    /// Known orchestrators.
    pub table: Arc<Mutex<OrchestratorTable>>,
    /// Receipt log.
    pub ledger: Arc<Ledger>,
    /// Where tasks are escrowed and paid.
    pub chain: Arc<dyn ChainBackend>,
    /// The contract's configuration when the router started.
    pub contract: Config,
    /// Told after each recorded receipt (the anchorer listens).
    pub appended: Arc<Notify>,
    /// How long one orchestrator may take for one task.
    pub task_timeout: Duration,
    /// Orchestrators tried per task before giving up.
    pub max_attempts: usize,
}

impl std::fmt::Debug for RouterCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCtx")
            .field("peer", &self.network.local_peer_id())
            .field("account", &self.chain.account())
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
enum Attempt {
    Done(Box<TaskResult>),
    /// Try another orchestrator.
    Retry(TaskError),
    /// The request itself is at fault: stop.
    Stop(TaskError),
}

impl RouterCtx {
    fn with_table<T>(&self, f: impl FnOnce(&mut OrchestratorTable) -> T) -> T {
        // A poisoned lock means a panic elsewhere; the table itself is still
        // consistent (every update is a single insert or remove).
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The most a task can cost under the contract's formula (100 %
    /// reputation): what the router escrows. A prompt has at most one token per
    /// byte, plus a few special tokens.
    pub fn escrow_for(&self, assignment: &Assignment, price_per_unit: u64) -> u64 {
        let c = &self.contract;
        let prompt_tokens = assignment.prompt.len() as u128 + 16;
        let units = prompt_tokens * u128::from(c.prompt_weight)
            + u128::from(assignment.sampling.max_tokens) * u128::from(c.output_weight);
        let most = units * u128::from(price_per_unit)
            + units * u128::from(c.ms_cap_per_unit) * u128::from(c.price_per_ms);
        u64::try_from(most).unwrap_or(u64::MAX).max(1)
    }

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
                let l = Arc::clone(&self.ledger);
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
                    let ledger = Arc::clone(&self.ledger);
                    tokio::task::spawn_blocking(move || {
                        Ok::<_, String>((
                            ledger.len().map_err(|e| e.to_string())?,
                            ledger.pending_len().map_err(|e| e.to_string())?,
                        ))
                    })
                    .await
                    .map_err(|e| e.to_string())??
                };
                let c = &self.chain;
                let err = |e: crate::chain::ChainError| e.to_string();
                Ok(QueryAnswer::Status(Box::new(LedgerStatus {
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

    /// Records how a task ended in the table and persists the record.
    async fn record_outcome(&self, peer: PeerId, outcome: Result<Option<u64>, FailureKind>) {
        let now = super::orchestrator::now_ms();
        let Some(rep) = self.with_table(|t| t.record_outcome(&peer, outcome, now)) else {
            return;
        };
        let ledger = Arc::clone(&self.ledger);
        match tokio::task::spawn_blocking(move || ledger.save_reputation(&peer, &rep)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
            Err(e) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
        }
    }

    /// The seed of this hour's draws: anyone with the router's PeerId, the
    /// hour and the candidate table can recompute each pick.
    pub fn epoch_seed(&self) -> cactus_protocol::Digest {
        let hour = super::orchestrator::now_ms() / 3_600_000;
        let mut b = b"cactus/epoch/v1\0".to_vec();
        b.extend_from_slice(&self.network.local_peer_id().to_bytes());
        b.extend_from_slice(&hour.to_le_bytes());
        cactus_protocol::Digest::of(&b)
    }

    /// Serves one client submission end to end.
    #[tracing::instrument(skip_all, fields(client = %client))]
    pub async fn serve(&self, client: PeerId, spec: TaskSpec) -> TaskResponse {
        match self.try_serve(spec).await {
            Ok(r) => TaskResponse::Done(r),
            Err(e) => {
                tracing::info!(kind = ?e.kind, message = %e.message, "task failed");
                TaskResponse::Failed(e)
            }
        }
    }

    async fn try_serve(&self, spec: TaskSpec) -> Result<TaskResult, TaskError> {
        spec.validate()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        let model = self
            .with_table(|t| t.resolve_model(spec.model.as_deref()))
            .ok_or_else(|| {
                let what = spec.model.as_deref().unwrap_or("any model");
                TaskError::new(
                    TaskErrorKind::NoSuchModel,
                    format!("no orchestrator on the mesh serves {what}"),
                )
            })?;
        let mut assignment = Assignment {
            task_id: TaskId([0; 16]),
            model: model.sha256,
            prompt: spec.prompt,
            format: spec.format,
            sampling: spec.sampling,
        };
        let mut tried = HashSet::new();
        let mut last = TaskError::new(
            TaskErrorKind::Unavailable,
            "no orchestrator could take the task",
        );
        for attempt in 0..self.max_attempts {
            assignment.task_id = TaskId(rand::random());
            let seed = self.epoch_seed();
            let Some(peer) =
                self.with_table(|t| t.pick(&assignment.model, &tried, &seed, &assignment.task_id))
            else {
                break;
            };
            tried.insert(peer);
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, attempt, "dispatching task");
            match self.attempt(peer, &assignment).await {
                Attempt::Done(result) => return Ok(*result),
                Attempt::Retry(e) => last = e,
                Attempt::Stop(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// One hand-off to one orchestrator, settled on the ledger.
    async fn attempt(&self, peer: PeerId, assignment: &Assignment) -> Attempt {
        let Some((account, price)) = self.with_table(|t| t.terms(&peer)) else {
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                "orchestrator left",
            ));
        };
        let task_id = assignment.task_id.0.to_vec();
        let create = Op::CreateTask {
            task_id: task_id.clone(),
            orchestrator: account,
            price_per_unit: price,
            max_payment: self.escrow_for(assignment, price),
        };
        if let Err(e) = self.chain.submit(create).await {
            tracing::warn!(orchestrator = %peer, error = %e, "ledger refused to escrow the task");
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("ledger: {e}"),
            ));
        }

        // Which path the task takes: direct, or through a relay when the
        // orchestrator is behind a NAT and hole punching has not (yet) worked.
        let connection = match self.network.connection_kind(peer).await {
            Ok(Some(kind)) => kind.to_string(),
            _ => "new".to_owned(),
        };
        tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, %connection, "handing task over");
        self.with_table(|t| t.adjust_in_flight(&peer, true));
        let sent = tokio::time::timeout(
            self.task_timeout,
            self.network
                .send_task(peer, TaskRequest::Execute(assignment.clone())),
        )
        .await;
        self.with_table(|t| t.adjust_in_flight(&peer, false));

        let (outcome, fail_reason) = match sent {
            Ok(Ok(TaskResponse::Done(result))) => {
                match self.accept(peer, assignment, result, &connection).await {
                    Ok(result) => return Attempt::Done(Box::new(result)),
                    Err(e) => (Attempt::Retry(e), reason::BAD_RESULT),
                }
            }
            Ok(Ok(TaskResponse::Failed(e))) => match e.kind {
                TaskErrorKind::Busy | TaskErrorKind::NoSuchModel | TaskErrorKind::Unavailable => {
                    tracing::info!(orchestrator = %peer, kind = ?e.kind, "orchestrator declined; trying another");
                    (Attempt::Retry(e), reason::REFUSED)
                }
                TaskErrorKind::Inference => (Attempt::Retry(e), reason::INFERENCE),
                _ => (Attempt::Stop(e), reason::INVALID),
            },
            Ok(Ok(TaskResponse::Answer(_))) => (
                Attempt::Retry(TaskError::new(
                    TaskErrorKind::BadResult,
                    "answered a task with a query answer",
                )),
                reason::BAD_RESULT,
            ),
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e, "orchestrator unreachable");
                (
                    Attempt::Retry(TaskError::new(TaskErrorKind::Unavailable, e.to_string())),
                    reason::UNREACHABLE,
                )
            }
            Err(_) => {
                tracing::warn!(orchestrator = %peer, "orchestrator timed out");
                let e = TaskError::new(
                    TaskErrorKind::Unavailable,
                    format!(
                        "orchestrator {peer} did not answer in {:?}",
                        self.task_timeout
                    ),
                );
                (Attempt::Retry(e), reason::TIMEOUT)
            }
        };
        let kind = match fail_reason {
            reason::TIMEOUT => FailureKind::Timeout,
            reason::BAD_RESULT => FailureKind::BadResult,
            reason::UNREACHABLE => FailureKind::Disconnected,
            _ => FailureKind::Refused,
        };
        self.record_outcome(peer, Err(kind)).await;
        if let Err(e) = self
            .chain
            .submit(Op::FailTask {
                task_id,
                reason: fail_reason,
            })
            .await
        {
            tracing::error!(task_id = %assignment.task_id, error = %e, "could not refund a failed task on the ledger");
        }
        outcome
    }

    /// Checks, countersigns, records and pays for a result.
    async fn accept(
        &self,
        peer: PeerId,
        assignment: &Assignment,
        mut result: TaskResult,
        connection: &str,
    ) -> Result<TaskResult, TaskError> {
        let router = self.network.local_peer_id();
        if let Err(e) = check_result(assignment, &router, &peer, &result) {
            tracing::warn!(orchestrator = %peer, error = %e, "result failed verification");
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!("orchestrator {peer}: {e}"),
            ));
        }
        let bad =
            |e: &dyn std::fmt::Display| TaskError::new(TaskErrorKind::BadResult, e.to_string());
        result.receipt.countersign(&self.key).map_err(|e| bad(&e))?;
        let receipt_hash = result.receipt.hash().map_err(|e| bad(&e))?;
        let ledger = Arc::clone(&self.ledger);
        let receipt = result.receipt.clone();
        tokio::task::spawn_blocking(move || ledger.append(&receipt))
            .await
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, format!("receipt log: {e}")))?;
        self.appended.notify_one();
        let body = &result.receipt.body;
        let per_token = body.compute_ms.checked_div(u64::from(body.output_tokens));
        self.record_outcome(peer, Ok(per_token)).await;
        let complete = Op::CompleteTask {
            task_id: assignment.task_id.0.to_vec(),
            prompt_tokens: u64::from(body.prompt_tokens),
            output_tokens: u64::from(body.output_tokens),
            compute_ms: body.compute_ms,
            delegates: Vec::new(),
            receipt_hash: receipt_hash.0.to_vec(),
        };
        // The work is done and the receipt recorded: the client gets its
        // answer even if settlement must be retried by the operator.
        if let Err(e) = self.chain.submit(complete).await {
            tracing::error!(task_id = %assignment.task_id, error = %e, "could not settle a completed task on the ledger");
        }
        tracing::info!(
            task_id = %assignment.task_id,
            orchestrator = %peer,
            output_tokens = body.output_tokens,
            compute_ms = body.compute_ms,
            %connection,
            "task done; receipt recorded and paid"
        );
        Ok(result)
    }
}
