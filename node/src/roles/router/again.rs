//! A request asked again: a client that names its request
//! (`TaskSpec::request_id`) and lost the answer (its connection cut, this
//! router killed after the receipt was logged) sends the same request
//! again. Its answer is kept with its receipt (`receipt_log::KeptAnswer`),
//! so the client gets that answer back, paid once, instead of a second
//! task. While the first is still being served, the second is told to
//! wait.

use super::RouterCtx;
use super::dispatch::Payer;
use super::stream::{Delivery, Sent};
use cactus_protocol::contract::Address;
use cactus_protocol::{Digest, RequestId, TaskError, TaskErrorKind, TaskResult, TaskSpec};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Named requests being served at most; past it a named request is told to
/// come back (unnamed ones are not counted).
pub const MAX_NAMED_IN_FLIGHT: usize = 65_536;

/// The named requests being served now.
#[derive(Debug, Default)]
pub struct Requests {
    serving: Arc<Mutex<HashSet<(Address, RequestId)>>>,
}

/// A named request being served, until dropped.
pub(super) struct Serving {
    key: (Address, RequestId),
    serving: Arc<Mutex<HashSet<(Address, RequestId)>>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Requests {
    /// Claims `key`, unless it is being served already (or too many are).
    fn claim(&self, key: (Address, RequestId)) -> Option<Serving> {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving.len() >= MAX_NAMED_IN_FLIGHT || !serving.insert(key) {
            return None;
        }
        Some(Serving {
            key,
            serving: Arc::clone(&self.serving),
        })
    }
}

/// What a named request asked, to tell the same request from another
/// sent under the same name.
pub(super) fn digest_of(spec: &TaskSpec) -> Result<Digest, TaskError> {
    cbor4ii::serde::to_vec(Vec::new(), spec)
        .map(|bytes| Digest::of(&bytes))
        .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))
}

/// How a named request is to be served.
pub(super) enum Named {
    /// Answered before: this is the answer.
    Answered(Box<TaskResult>),
    /// New: serve it, keeping its answer under this digest while the
    /// claim is held.
    New(Digest, Serving),
}

impl RouterCtx {
    /// Looks `request` up for `payer`: its kept answer, or a claim to serve
    /// it. The same name with another request is refused, as is one being
    /// served now (the client asks again once it has ended).
    pub(super) async fn named(
        &self,
        payer: &Payer,
        request: RequestId,
        spec: &TaskSpec,
    ) -> Result<Named, TaskError> {
        let asked = digest_of(spec)?;
        let Some(claim) = self.requests.claim((payer.account, request)) else {
            return Err(TaskError::new(
                TaskErrorKind::Busy,
                format!("request {request} is being served now: ask again once it has ended"),
            ));
        };
        let receipts = Arc::clone(&self.receipts);
        let account = payer.account;
        let kept = tokio::task::spawn_blocking(move || receipts.answer(&account, &request))
            .await
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, format!("receipt log: {e}")))?;
        match kept {
            None => Ok(Named::New(asked, claim)),
            Some((digest, result)) if digest == asked => {
                tracing::info!(%request, task_id = %result.receipt.body.task_id, "request asked again: its kept answer");
                Ok(Named::Answered(Box::new(result)))
            }
            Some(_) => Err(TaskError::new(
                TaskErrorKind::InvalidRequest,
                format!("request id {request} was used before for another request"),
            )),
        }
    }

    /// Sends a kept answer's tokens to a streaming client, as its first
    /// asking would have.
    pub(super) async fn deliver_again(result: &TaskResult, delivery: Option<Delivery>) {
        if delivery.is_some() {
            Sent::new(delivery).replay(result).await;
        }
    }
}
