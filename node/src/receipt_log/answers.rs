//! Answers kept for a client that asks again: a request that names itself
//! (`TaskSpec::request_id`) has its answer stored in its receipt's commit,
//! under the paying account and the request's id, so that the same request
//! sent again after its answer was lost (a connection cut, a router killed
//! between the receipt and the answer) gets that answer back instead of a
//! second task and a second charge. The latest are kept, within
//! [`MAX_ANSWERS`] and [`MAX_ANSWER_BYTES`].

use super::{ReceiptLog, ReceiptLogError};
use cactus_protocol::contract::Address;
use cactus_protocol::wire::SourceError;
use cactus_protocol::{Digest, RequestId, TaskResponse, TaskResult, Wire};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

/// Paying account ‖ request id → the request's digest ‖ its answer (a
/// `TaskResponse::Done` frame).
pub(super) const ANSWERS: TableDefinition<&[u8; 48], &[u8]> = TableDefinition::new("answers");
/// The order answers were kept in: position → their key in [`ANSWERS`].
pub(super) const ANSWER_ORDER: TableDefinition<u64, &[u8; 48]> =
    TableDefinition::new("answer_order");

/// The bytes the kept answers take, under key 0.
pub(super) const ANSWER_BYTES: TableDefinition<u8, u64> = TableDefinition::new("answer_bytes");

/// Answers kept at most; past it, or past [`MAX_ANSWER_BYTES`], the oldest
/// go. At a hundred tasks a second that is still ten minutes of them.
pub const MAX_ANSWERS: u64 = 65_536;
/// Bytes of kept answers at most (an answer is at most a task response
/// frame, its output capped by `MAX_OUTPUT_BYTES`, and each was paid for).
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// An answer to keep with its receipt.
#[derive(Debug, Clone, Copy)]
pub struct KeptAnswer<'a> {
    /// The account that paid for it.
    pub account: &'a Address,
    /// The client's name for the request.
    pub request: &'a RequestId,
    /// What the request asked ([`TaskSpec`](cactus_protocol::TaskSpec)'s
    /// digest): the same id sent with another request is refused.
    pub asked: &'a Digest,
    /// The answer, as the client is sent it.
    pub result: &'a TaskResult,
}

fn key(account: &Address, request: &RequestId) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..32].copy_from_slice(&account.0);
    key[32..].copy_from_slice(&request.0);
    key
}

impl ReceiptLog {
    /// Writes `answer` in `tx`; one already kept under its key stays.
    pub(super) fn put_answer(
        &self,
        tx: &redb::WriteTransaction,
        answer: &KeptAnswer<'_>,
    ) -> Result<(), ReceiptLogError> {
        let key = key(answer.account, answer.request);
        let frame = match TaskResponse::Done(answer.result.clone()).encode() {
            Ok(frame) => frame,
            Err(e) => {
                // Over a frame (a long answer with what it resumed from):
                // the receipt is what must be logged; the client can still
                // ask again, as a new task.
                tracing::warn!(request = %answer.request, error = %e, "answer not kept");
                return Ok(());
            }
        };
        let mut answers = tx.open_table(ANSWERS).map_err(|e| self.db_err(e))?;
        if answers.get(&key).map_err(|e| self.db_err(e))?.is_some() {
            return Ok(());
        }
        let mut value = Vec::with_capacity(32 + frame.len());
        value.extend_from_slice(&answer.asked.0);
        value.extend_from_slice(&frame);
        answers
            .insert(&key, value.as_slice())
            .map_err(|e| self.db_err(e))?;
        let mut bytes = tx.open_table(ANSWER_BYTES).map_err(|e| self.db_err(e))?;
        let mut total = bytes
            .get(0)
            .map_err(|e| self.db_err(e))?
            .map_or(0, |v| v.value())
            + value.len() as u64;
        let mut order = tx.open_table(ANSWER_ORDER).map_err(|e| self.db_err(e))?;
        let next = order
            .last()
            .map_err(|e| self.db_err(e))?
            .map_or(0, |(k, _)| k.value() + 1);
        order.insert(next, &key).map_err(|e| self.db_err(e))?;
        while total > MAX_ANSWER_BYTES || order.len().map_err(|e| self.db_err(e))? > MAX_ANSWERS {
            let Some((_, oldest)) = order.pop_first().map_err(|e| self.db_err(e))? else {
                break;
            };
            if let Some(gone) = answers.remove(oldest.value()).map_err(|e| self.db_err(e))? {
                total = total.saturating_sub(gone.value().len() as u64);
            }
        }
        bytes.insert(0, total).map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// The answer kept for `request` paid by `account`, with the digest of
    /// what it asked.
    pub fn answer(
        &self,
        account: &Address,
        request: &RequestId,
    ) -> Result<Option<(Digest, TaskResult)>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(ANSWERS).map_err(|e| self.db_err(e))?;
        let Some(v) = table
            .get(&key(account, request))
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        let v = v.value();
        let (Some(asked), Some(frame)) = (v.get(..32), v.get(32..)) else {
            return Err(self.oversized("truncated kept answer"));
        };
        let decoded = TaskResponse::decode(frame).map_err(|e| ReceiptLogError::Decode {
            path: self.path.clone(),
            source: SourceError::new(e),
        })?;
        let TaskResponse::Done(result) = decoded else {
            return Err(self.oversized("kept answer is not an answer"));
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(asked);
        Ok(Some((Digest(digest), result)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{countersigned, receipt_body};
    use cactus_protocol::{FinishReason, TaskId};
    use libp2p::identity::Keypair;

    fn result(id: u8) -> TaskResult {
        let (orch, router) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        TaskResult {
            text: format!("answer {id}"),
            tokens: vec![u32::from(id)],
            finish: FinishReason::EndOfGeneration,
            receipt: countersigned(
                receipt_body(&orch, &router, TaskId([id; 16])),
                &orch,
                &router,
            ),
            delegation: Vec::new(),
            resumed: None,
        }
    }

    #[test]
    fn an_answer_kept_with_its_receipt_survives_a_reopen_and_the_oldest_go_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob) = (Address([1; 32]), Address([2; 32]));
        let asked = Digest::of(b"the request");
        let first = result(1);
        {
            let log = ReceiptLog::open(dir.path()).unwrap();
            let kept = KeptAnswer {
                account: &alice,
                request: &RequestId([7; 16]),
                asked: &asked,
                result: &first,
            };
            log.append_kept(&first.receipt, None, Some(&kept)).unwrap();
        }
        let log = ReceiptLog::open(dir.path()).unwrap();
        let (digest, kept) = log.answer(&alice, &RequestId([7; 16])).unwrap().unwrap();
        assert_eq!((digest, kept), (asked, first));
        // Keyed by the paying account: another account's same id is not it.
        assert!(log.answer(&bob, &RequestId([7; 16])).unwrap().is_none());
        // Past the byte cap the oldest answers go, receipts stay.
        let big = "x".repeat(512 * 1024);
        let fit = MAX_ANSWER_BYTES / (big.len() as u64 + 1024);
        for i in 0..=fit {
            let mut r = result(2);
            r.text.clone_from(&big);
            r.receipt.body.task_id = TaskId((u128::from(i) + 1000).to_le_bytes());
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            let kept = KeptAnswer {
                account: &bob,
                request: &RequestId(id),
                asked: &asked,
                result: &r,
            };
            log.append_kept(&r.receipt, None, Some(&kept)).unwrap();
        }
        assert!(log.answer(&alice, &RequestId([7; 16])).unwrap().is_none());
        assert!(log.answer(&bob, &RequestId([0; 16])).unwrap().is_none());
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&fit.to_le_bytes());
        assert!(log.answer(&bob, &RequestId(last)).unwrap().is_some());
        assert!(log.get(&TaskId([1; 16])).unwrap().is_some());
    }
}
