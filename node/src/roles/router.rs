//! The router role: accepts tasks from clients, picks an orchestrator from
//! the live table, hands the task over, checks the result, countersigns the
//! receipt, records it in the ledger and answers the client.

use super::table::OrchestratorTable;
use crate::ledger::Ledger;
use crate::network::Network;
use cactus_protocol::verify::check_result;
use cactus_protocol::{
    Assignment, TaskError, TaskErrorKind, TaskId, TaskRequest, TaskResponse, TaskSpec,
};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the router's task handlers share.
#[derive(Debug)]
pub struct RouterCtx {
    /// The mesh.
    pub network: Network,
    /// This router's identity, to countersign receipts.
    pub key: Keypair,
    /// Known orchestrators.
    pub table: Arc<Mutex<OrchestratorTable>>,
    /// Receipt log.
    pub ledger: Arc<Ledger>,
    /// How long one orchestrator may take for one task.
    pub task_timeout: Duration,
    /// Orchestrators tried per task before giving up.
    pub max_attempts: usize,
}

impl RouterCtx {
    fn with_table<T>(&self, f: impl FnOnce(&mut OrchestratorTable) -> T) -> T {
        // A poisoned lock means a panic elsewhere; the table itself is still
        // consistent (every update is a single insert or remove).
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Serves one client submission end to end.
    #[tracing::instrument(skip_all, fields(client = %client))]
    pub async fn serve(&self, client: PeerId, spec: TaskSpec) -> TaskResponse {
        match self.try_serve(spec).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(kind = ?e.kind, message = %e.message, "task failed");
                TaskResponse::Failed(e)
            }
        }
    }

    async fn try_serve(&self, spec: TaskSpec) -> Result<TaskResponse, TaskError> {
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
        let assignment = Assignment {
            task_id: TaskId(rand::random()),
            model: model.sha256,
            prompt: spec.prompt,
            format: spec.format,
            sampling: spec.sampling,
        };
        let router = self.network.local_peer_id();
        let mut tried = HashSet::new();
        let mut last = TaskError::new(
            TaskErrorKind::Unavailable,
            "no orchestrator could take the task",
        );
        for attempt in 0..self.max_attempts {
            let Some(peer) = self.with_table(|t| t.pick(&assignment.model, &tried)) else {
                break;
            };
            tried.insert(peer);
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, attempt, "dispatching task");
            self.with_table(|t| t.adjust_in_flight(&peer, true));
            let sent = tokio::time::timeout(
                self.task_timeout,
                self.network
                    .send_task(peer, TaskRequest::Execute(assignment.clone())),
            )
            .await;
            self.with_table(|t| t.adjust_in_flight(&peer, false));
            match sent {
                Ok(Ok(TaskResponse::Done(mut result))) => {
                    if let Err(e) = check_result(&assignment, &router, &peer, &result) {
                        tracing::warn!(orchestrator = %peer, error = %e, "result failed verification");
                        last = TaskError::new(
                            TaskErrorKind::BadResult,
                            format!("orchestrator {peer}: {e}"),
                        );
                        continue;
                    }
                    result
                        .receipt
                        .countersign(&self.key)
                        .map_err(|e| TaskError::new(TaskErrorKind::BadResult, e.to_string()))?;
                    let ledger = Arc::clone(&self.ledger);
                    let receipt = result.receipt.clone();
                    tokio::task::spawn_blocking(move || ledger.append(&receipt))
                        .await
                        .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, e.to_string()))?
                        .map_err(|e| {
                            TaskError::new(TaskErrorKind::Unavailable, format!("ledger: {e}"))
                        })?;
                    tracing::info!(
                        task_id = %assignment.task_id,
                        orchestrator = %peer,
                        output_tokens = result.receipt.body.output_tokens,
                        compute_ms = result.receipt.body.compute_ms,
                        "task done; receipt recorded"
                    );
                    return Ok(TaskResponse::Done(result));
                }
                Ok(Ok(TaskResponse::Failed(e))) => match e.kind {
                    // The orchestrator could not run it: another one may.
                    TaskErrorKind::Busy
                    | TaskErrorKind::Unavailable
                    | TaskErrorKind::Inference
                    | TaskErrorKind::NoSuchModel => {
                        tracing::info!(orchestrator = %peer, kind = ?e.kind, "orchestrator declined; trying another");
                        last = e;
                    }
                    // The request itself is at fault: no point retrying.
                    _ => return Err(e),
                },
                Ok(Err(e)) => {
                    tracing::warn!(orchestrator = %peer, error = %e, "orchestrator unreachable");
                    last = TaskError::new(TaskErrorKind::Unavailable, e.to_string());
                }
                Err(_) => {
                    tracing::warn!(orchestrator = %peer, "orchestrator timed out");
                    last = TaskError::new(
                        TaskErrorKind::Unavailable,
                        format!(
                            "orchestrator {peer} did not answer in {:?}",
                            self.task_timeout
                        ),
                    );
                }
            }
        }
        Err(last)
    }
}
