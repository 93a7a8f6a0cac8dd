//! Spot checks asked of this orchestrator: replaying another's result and
//! signing the findings.

use super::{OrchestratorCtx, inference_error, rejected};
use crate::inference::ReplayReceiver;
use cactus_protocol::fraud::{ReplayReportBody, ReplayRequest};
use cactus_protocol::{Digest, TaskError, TaskErrorKind, TaskId, TaskResponse};
use libp2p::PeerId;

/// A replay accepted by the engine, waiting for its findings.
#[derive(Debug)]
pub struct AcceptedReplay {
    task_id: TaskId,
    receipt: Digest,
    router: PeerId,
    result: ReplayReceiver,
}

impl OrchestratorCtx {
    /// Checks a replay request (a spot check of another orchestrator's result,
    /// asked by the router that assigned it) and queues it like a task.
    pub fn accept_replay(
        &self,
        router: PeerId,
        request: Box<ReplayRequest>,
    ) -> Result<AcceptedReplay, TaskError> {
        request
            .validate()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        if request.receipt.body.router != router {
            return Err(TaskError::new(
                TaskErrorKind::InvalidRequest,
                "only the router named in a receipt may ask for its replay",
            ));
        }
        if !self.models.iter().any(|m| m.sha256 == request.model()) {
            return Err(TaskError::new(
                TaskErrorKind::NoSuchModel,
                format!("model {} is not served here", request.model()),
            ));
        }
        let receipt = request
            .receipt
            .body
            .digest()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        let task_id = request.receipt.body.task_id;
        let result = self.engine.replay(request).map_err(rejected)?;
        Ok(AcceptedReplay {
            task_id,
            receipt,
            router,
            result,
        })
    }

    /// Waits for a replay and signs its findings.
    #[tracing::instrument(skip_all, fields(task_id = %accepted.task_id, router = %accepted.router))]
    pub async fn finish_replay(&self, accepted: AcceptedReplay) -> TaskResponse {
        let findings = match accepted.result.await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "replay failed");
                return TaskResponse::Failed(inference_error(&e));
            }
            Err(_) => {
                return TaskResponse::Failed(TaskError::new(
                    TaskErrorKind::Unavailable,
                    "the engine stopped",
                ));
            }
        };
        tracing::info!(
            positions = findings.positions,
            mismatches = findings.mismatches,
            max_gap = findings.max_gap,
            compute_ms = findings.compute_ms,
            "replay done"
        );
        match (ReplayReportBody {
            task_id: accepted.task_id,
            receipt: accepted.receipt,
            verifier: self.network.local_peer_id(),
            router: accepted.router,
            findings,
        })
        .sign(&self.key)
        {
            Ok(report) => TaskResponse::Replayed(Box::new(report)),
            Err(e) => TaskResponse::Failed(TaskError::new(TaskErrorKind::Inference, e.to_string())),
        }
    }
}
