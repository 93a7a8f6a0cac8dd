//! The orchestrator role: runs assigned tasks on the worker pool, signs their
//! receipts, and keeps its capability advert fresh.

use crate::inference::{InferenceError, Job, Rejected, WorkerPool};
use crate::network::Network;
use cactus_protocol::ledger::Address;
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::{
    Assignment, CapabilityAdvert, Digest, ModelId, PROTOCOL_VERSION, ReceiptBody, TaskError,
    TaskErrorKind, TaskResponse, TaskResult, Wire,
};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Whether an address is useless to others: an unspecified (0.0.0.0) one.
fn is_unspecified_or_loopback_only(a: &libp2p::Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified()))
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the orchestrator's task handlers share.
#[derive(Debug)]
pub struct OrchestratorCtx {
    /// The mesh.
    pub network: Network,
    /// This node's identity, to sign receipts.
    pub key: Keypair,
    /// Models served.
    pub models: Vec<ModelId>,
    /// Where inference runs.
    pub pool: Arc<WorkerPool>,
    /// Asked price per work unit.
    pub price_per_token: u64,
    /// Its ledger account.
    pub account: Address,
    /// The stake it declares.
    pub stake: u64,
    /// Last advert sequence number.
    seq: AtomicU64,
}

/// A job accepted by the pool, waiting for its result.
#[derive(Debug)]
pub struct Accepted {
    assignment: Assignment,
    router: PeerId,
    started_at_ms: u64,
    result: oneshot::Receiver<Result<crate::inference::Generation, InferenceError>>,
}

impl OrchestratorCtx {
    /// A new context.
    pub fn new(
        network: Network,
        key: Keypair,
        models: Vec<ModelId>,
        pool: Arc<WorkerPool>,
        price_per_token: u64,
        account: Address,
        stake: u64,
    ) -> Self {
        Self {
            network,
            key,
            models,
            pool,
            price_per_token,
            account,
            stake,
            seq: AtomicU64::new(0),
        }
    }

    /// Checks an assignment and queues it without waiting; refusals are
    /// answered at once.
    pub fn accept(&self, router: PeerId, assignment: Assignment) -> Result<Accepted, TaskError> {
        assignment
            .validate()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        if !self.models.iter().any(|m| m.sha256 == assignment.model) {
            return Err(TaskError::new(
                TaskErrorKind::NoSuchModel,
                format!("model {} is not served here", assignment.model),
            ));
        }
        let job = Job {
            model: assignment.model,
            prompt: assignment.prompt.clone(),
            format: assignment.format,
            sampling: assignment.sampling,
        };
        let result = self.pool.try_submit(job).map_err(|e| match e {
            Rejected::Busy => TaskError::new(TaskErrorKind::Busy, e.to_string()),
            Rejected::Stopped => TaskError::new(TaskErrorKind::Unavailable, e.to_string()),
        })?;
        Ok(Accepted {
            assignment,
            router,
            started_at_ms: now_ms(),
            result,
        })
    }

    /// Waits for an accepted job and turns it into a signed result.
    #[tracing::instrument(skip_all, fields(task_id = %accepted.assignment.task_id, router = %accepted.router))]
    pub async fn finish(&self, accepted: Accepted) -> TaskResponse {
        let Accepted {
            assignment,
            router,
            started_at_ms,
            result,
        } = accepted;
        let generation = match result.await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                let kind = match e {
                    InferenceError::UnknownModel(_) => TaskErrorKind::NoSuchModel,
                    InferenceError::PromptTooLong { .. } => TaskErrorKind::PromptTooLong,
                    InferenceError::Cancelled => TaskErrorKind::Unavailable,
                    _ => TaskErrorKind::Inference,
                };
                tracing::info!(error = %e, "task failed");
                return TaskResponse::Failed(TaskError::new(kind, e.to_string()));
            }
            Err(_) => {
                return TaskResponse::Failed(TaskError::new(
                    TaskErrorKind::Unavailable,
                    "worker pool stopped",
                ));
            }
        };
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            task_id: assignment.task_id,
            model: assignment.model,
            prompt_hash: Digest::of(assignment.prompt.as_bytes()),
            output_hash: Digest::of(generation.text.as_bytes()),
            sampling: assignment.sampling,
            prompt_tokens: generation.prompt_tokens,
            output_tokens: generation.output_tokens,
            compute_ms: generation.compute.as_millis() as u64,
            orchestrator: self.network.local_peer_id(),
            router,
            started_at_ms,
            finished_at_ms: now_ms().max(started_at_ms),
        };
        match body.sign(&self.key) {
            Ok(receipt) => {
                tracing::info!(
                    output_tokens = generation.output_tokens,
                    compute_ms = receipt.body.compute_ms,
                    "task done"
                );
                TaskResponse::Done(TaskResult {
                    text: generation.text,
                    finish: generation.finish,
                    receipt,
                })
            }
            Err(e) => TaskResponse::Failed(TaskError::new(TaskErrorKind::Inference, e.to_string())),
        }
    }

    /// The current advert, encoded. Sequence numbers follow the clock so that
    /// a restarted node's adverts still supersede its old ones.
    pub fn advert(&self) -> Result<Vec<u8>, cactus_protocol::EncodeError> {
        let now = now_ms();
        let prev = self.seq.load(Ordering::Acquire);
        let seq = now.max(prev + 1);
        self.seq.store(seq, Ordering::Release);
        CapabilityAdvert {
            peer: self.network.local_peer_id(),
            protocol_version: PROTOCOL_VERSION,
            node_version: env!("CARGO_PKG_VERSION").to_owned(),
            models: self.models.clone(),
            free_slots: self.pool.free_slots() as u32,
            total_slots: self.pool.slots() as u32,
            price_per_token: self.price_per_token,
            account: self.account,
            stake: self.stake,
            addrs: self
                .network
                .current_listen_addrs()
                .iter()
                .filter(|a| !is_unspecified_or_loopback_only(a))
                .take(cactus_protocol::messages::MAX_ADVERT_ADDRS)
                .map(|a| a.to_string())
                .filter(|a| a.len() <= cactus_protocol::messages::MAX_ADDR_BYTES)
                .collect(),
            seq,
            issued_at_ms: now,
        }
        .encode()
    }
}
