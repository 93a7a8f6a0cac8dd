//! Receipt anchoring: a router batches its receipts (by count or by age),
//! builds a Merkle tree over their hashes, anchors the root with one
//! `anchor_receipts` call, and stores each receipt's inclusion proof.
//!
//! One call per batch instead of one per task: with a batch of `B` receipts a
//! chain sees `1/B` calls and 32 bytes of root per batch, and each receipt
//! carries a `log2(B)`-step proof off chain.

use crate::chain::{ChainBackend, ChainError};
use crate::receipt_log::{ReceiptLog, ReceiptLogError};
use cactus_protocol::contract::Op;
use cactus_protocol::merkle::{self, AnchorProof};
use cactus_protocol::{Receipt, TaskId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// When to anchor.
#[derive(Debug, Clone, Copy)]
pub struct AnchorPolicy {
    /// Anchor as soon as this many receipts wait (and at most this many per call).
    pub batch: usize,
    /// Anchor whatever waits once the oldest has waited this long.
    pub max_age: Duration,
}

impl Default for AnchorPolicy {
    fn default() -> Self {
        Self {
            batch: 64,
            max_age: Duration::from_secs(30),
        }
    }
}

/// Why a batch was not anchored.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The receipt log failed.
    #[error(transparent)]
    ReceiptLog(#[from] ReceiptLogError),
    /// The chain refused or failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A receipt could not be hashed (encoded) for the batch.
    #[error("chain backend: {0}")]
    Hash(#[source] cactus_protocol::ReceiptError),
    /// The anchored batch could not be found again.
    #[error("the anchored batch is not in the chain's anchor list")]
    Lost,
}

/// Anchors one batch of up to `policy.batch` pending receipts, if any.
/// Returns how many receipts were anchored.
pub async fn anchor_once(
    log: &Arc<ReceiptLog>,
    chain: &dyn ChainBackend,
    batch: usize,
) -> Result<usize, AnchorError> {
    let l = Arc::clone(log);
    let receipts: Vec<Receipt> = tokio::task::spawn_blocking(move || l.pending(batch))
        .await
        .map_err(ReceiptLogError::Join)??;
    let (Some(first), Some(last)) = (receipts.first(), receipts.last()) else {
        return Ok(0);
    };
    let hashes = receipts
        .iter()
        .map(Receipt::hash)
        .collect::<Result<Vec<_>, _>>()
        .map_err(AnchorError::Hash)?;
    let (root, proofs) = merkle::build(&hashes).ok_or(AnchorError::Lost)?;
    chain
        .submit(Op::AnchorReceipts {
            merkle_root: root.0.to_vec(),
            count: receipts.len() as u64,
            first_task: first.body.task_id.0.to_vec(),
            last_task: last.body.task_id.0.to_vec(),
        })
        .await?;
    // Find our batch: the newest anchor with our root from this account.
    let count = chain.anchor_count().await?;
    let mut index = None;
    for i in (count.saturating_sub(64)..count).rev() {
        if let Some(a) = chain.anchor(i).await?
            && a.root == root
            && a.server == chain.account()
        {
            index = Some(i);
            break;
        }
    }
    let anchor_index = index.ok_or(AnchorError::Lost)?;
    let recorded: Vec<(TaskId, AnchorProof)> = receipts
        .iter()
        .zip(proofs)
        .map(|(r, proof)| {
            (
                r.body.task_id,
                AnchorProof {
                    anchor_index,
                    root,
                    proof,
                },
            )
        })
        .collect();
    let n = recorded.len();
    let l = Arc::clone(log);
    tokio::task::spawn_blocking(move || l.record_anchor(&recorded))
        .await
        .map_err(ReceiptLogError::Join)??;
    tracing::info!(receipts = n, anchor_index, root = %root, "receipts anchored");
    Ok(n)
}

/// Anchors pending receipts by `policy` until `shutdown`, then once more.
/// `appended` is notified after each receipt is recorded.
pub async fn run(
    receipts: Arc<ReceiptLog>,
    chain: Arc<dyn ChainBackend>,
    policy: AnchorPolicy,
    appended: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut age = tokio::time::interval(policy.max_age);
    age.tick().await;
    loop {
        let by_age = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = appended.notified() => false,
            _ = age.tick() => true,
        };
        let l = Arc::clone(&receipts);
        let waiting = tokio::task::spawn_blocking(move || l.pending_len())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        if waiting >= policy.batch as u64 || (by_age && waiting > 0) {
            if let Err(e) = anchor_once(&receipts, chain.as_ref(), policy.batch).await {
                tracing::warn!(error = %e, "anchoring failed; will retry");
            }
            age.reset();
        }
    }
    if let Err(e) = anchor_once(&receipts, chain.as_ref(), policy.batch).await {
        tracing::warn!(error = %e, "final anchoring failed; receipts stay pending");
    }
}
