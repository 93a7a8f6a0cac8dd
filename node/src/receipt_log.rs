//! The router's receipt log: every countersigned receipt, in order, in a
//! redb database under the data dir. redb commits are durable and atomic, so a
//! kill -9 at any moment loses no committed receipt and leaves no torn one.
//!
//! Receipts wait in a pending list until they are anchored (see
//! [`crate::roles::anchor`]); anchoring moves them, in one transaction, to the
//! proofs table with their inclusion proofs.

use cactus_protocol::merkle::AnchorProof;
use cactus_protocol::reputation::Reputation;
use cactus_protocol::wire::SourceError;
use cactus_protocol::{Receipt, TaskId, Wire};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

/// File name of the receipt log inside the data dir.
pub const RECEIPT_LOG_FILE: &str = "receipts.redb";
/// What the receipt log's file was called before it had its own name; a data
/// dir that still has it is moved to the new name when the log opens.
const OLD_RECEIPT_LOG_FILE: &str = "ledger.redb";

mod answers;
mod journal;
mod misconduct;
mod reputation;
pub use answers::{KeptAnswer, MAX_ANSWER_BYTES, MAX_ANSWERS};
pub use journal::MAX_JOURNALED;
pub use misconduct::MAX_BANS;

/// Receipt frames by task id.
const RECEIPTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("receipts");
/// Task ids in the order their receipts were appended.
const ORDER: TableDefinition<u64, &[u8; 16]> = TableDefinition::new("receipt_order");
/// Receipts not anchored yet: append position → task id.
const PENDING: TableDefinition<u64, &[u8; 16]> = TableDefinition::new("pending_anchor");
/// Anchor proofs (CBOR `AnchorProof`) by task id.
const PROOFS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("anchor_proofs");
/// Largest stored proof read back.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Why a receipt log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptLogError {
    /// The database failed.
    #[error("receipt log {path}: {source}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A file operation around the receipt log failed: renaming the old log,
    /// or creating the data dir.
    #[error("receipt log {path}: {source}")]
    Io {
        /// The file or dir operated on.
        path: PathBuf,
        /// Why the operation failed.
        #[source]
        source: std::io::Error,
    },
    /// A record to store could not be encoded.
    #[error("receipt log {path}: {source}")]
    Encode {
        /// The database file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: SourceError,
    },
    /// A stored record does not decode.
    #[error("receipt log {path}: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: SourceError,
    },
    /// A record is over its size cap.
    #[error("receipt log {path}: {what}")]
    Oversized {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: &'static str,
    },
    /// The blocking task that ran a receipt log call panicked or was
    /// cancelled.
    #[error("receipt log: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// A receipt for the task is already recorded.
    #[error("a receipt for task {0} is already in the receipt log")]
    Duplicate(TaskId),
    /// A stored receipt does not decode.
    #[error("stored receipt for task {0} is corrupt")]
    Corrupt(TaskId),
}

/// The receipt log.
#[derive(Debug)]
pub struct ReceiptLog {
    db: Database,
    path: PathBuf,
}

impl Drop for ReceiptLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "the receipt log could not sync its last reputation records");
        }
    }
}

impl ReceiptLog {
    /// Opens (or creates) the receipt log in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, ReceiptLogError> {
        let path = data_dir.join(RECEIPT_LOG_FILE);
        let old = data_dir.join(OLD_RECEIPT_LOG_FILE);
        if !path.exists() && old.exists() {
            std::fs::rename(&old, &path).map_err(|source| ReceiptLogError::Io {
                path: old.clone(),
                source,
            })?;
        }
        let db = Database::create(&path).map_err(|e| ReceiptLogError::Storage {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let log = Self { db, path };
        // Create the tables so readers never meet a missing one.
        let tx = log.db.begin_write().map_err(|e| log.db_err(e))?;
        {
            tx.open_table(RECEIPTS).map_err(|e| log.db_err(e))?;
            tx.open_table(ORDER).map_err(|e| log.db_err(e))?;
            tx.open_table(PENDING).map_err(|e| log.db_err(e))?;
            tx.open_table(PROOFS).map_err(|e| log.db_err(e))?;
            tx.open_table(reputation::REPUTATION)
                .map_err(|e| log.db_err(e))?;
            tx.open_table(misconduct::FRAUD)
                .map_err(|e| log.db_err(e))?;
            tx.open_table(misconduct::BANS).map_err(|e| log.db_err(e))?;
            tx.open_table(journal::ESCROWED)
                .map_err(|e| log.db_err(e))?;
            tx.open_table(answers::ANSWERS).map_err(|e| log.db_err(e))?;
            tx.open_table(answers::ANSWER_ORDER)
                .map_err(|e| log.db_err(e))?;
            tx.open_table(answers::ANSWER_BYTES)
                .map_err(|e| log.db_err(e))?;
        }
        tx.commit().map_err(|e| log.db_err(e))?;
        Ok(log)
    }

    /// Makes every write so far durable (the reputation records are
    /// written without a sync of their own).
    pub fn flush(&self) -> Result<(), ReceiptLogError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> ReceiptLogError {
        ReceiptLogError::Storage {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn encode_err(&self, e: impl std::error::Error + Send + Sync + 'static) -> ReceiptLogError {
        ReceiptLogError::Encode {
            path: self.path.clone(),
            source: SourceError::new(e),
        }
    }

    fn oversized(&self, what: &'static str) -> ReceiptLogError {
        ReceiptLogError::Oversized {
            path: self.path.clone(),
            what,
        }
    }

    /// Appends a receipt; durable when this returns.
    pub fn append(&self, receipt: &Receipt) -> Result<(), ReceiptLogError> {
        self.append_with(receipt, None)
    }

    /// Appends a receipt and, in the same durable commit, the router's
    /// updated record of the orchestrator that answered for it.
    pub fn append_with(
        &self,
        receipt: &Receipt,
        reputation: Option<(&libp2p::PeerId, &Reputation)>,
    ) -> Result<(), ReceiptLogError> {
        self.append_kept(receipt, reputation, None)
    }

    /// Appends a receipt and, in the same durable commit, the router's
    /// updated record of the orchestrator that answered for it and the
    /// answer to keep for a client that asks again (see [`KeptAnswer`]).
    pub fn append_kept(
        &self,
        receipt: &Receipt,
        reputation: Option<(&libp2p::PeerId, &Reputation)>,
        answer: Option<&KeptAnswer<'_>>,
    ) -> Result<(), ReceiptLogError> {
        let id = receipt.body.task_id;
        let bytes = receipt.encode().map_err(|e| self.encode_err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        if let Some((peer, rep)) = reputation {
            self.put_reputation(&tx, peer, rep)?;
        }
        if let Some(answer) = answer {
            self.put_answer(&tx, answer)?;
        }
        {
            let mut receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
            if receipts.get(&id.0).map_err(|e| self.db_err(e))?.is_some() {
                return Err(ReceiptLogError::Duplicate(id));
            }
            receipts
                .insert(&id.0, bytes.as_slice())
                .map_err(|e| self.db_err(e))?;
            let mut order = tx.open_table(ORDER).map_err(|e| self.db_err(e))?;
            let next = order.len().map_err(|e| self.db_err(e))?;
            order.insert(next, &id.0).map_err(|e| self.db_err(e))?;
            let mut pending = tx.open_table(PENDING).map_err(|e| self.db_err(e))?;
            pending.insert(next, &id.0).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// The receipt of a task, if recorded.
    pub fn get(&self, id: &TaskId) -> Result<Option<Receipt>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
        let Some(v) = receipts.get(&id.0).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        Receipt::decode(v.value())
            .map(Some)
            .map_err(|_| ReceiptLogError::Corrupt(*id))
    }

    /// Up to `limit` receipts waiting to be anchored, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Receipt>, ReceiptLogError> {
        self.resolve(PENDING, 0, limit)
    }

    /// Number of receipts waiting to be anchored.
    pub fn pending_len(&self) -> Result<u64, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let pending = tx.open_table(PENDING).map_err(|e| self.db_err(e))?;
        pending.len().map_err(|e| self.db_err(e))
    }

    /// Records that the receipts of `proofs` were anchored: they leave the
    /// pending list and their proofs are stored, atomically.
    pub fn record_anchor(&self, proofs: &[(TaskId, AnchorProof)]) -> Result<(), ReceiptLogError> {
        let done: std::collections::HashSet<[u8; 16]> = proofs.iter().map(|(id, _)| id.0).collect();
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut pending = tx.open_table(PENDING).map_err(|e| self.db_err(e))?;
            let keys: Vec<u64> = pending
                .iter()
                .map_err(|e| self.db_err(e))?
                .filter_map(|e| e.ok())
                .filter(|(_, id)| done.contains(id.value()))
                .map(|(k, _)| k.value())
                .collect();
            for k in keys {
                pending.remove(k).map_err(|e| self.db_err(e))?;
            }
            let mut table = tx.open_table(PROOFS).map_err(|e| self.db_err(e))?;
            for (id, proof) in proofs {
                let bytes =
                    cbor4ii::serde::to_vec(Vec::new(), proof).map_err(|e| self.encode_err(e))?;
                table
                    .insert(&id.0, bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// The anchor proof of a task's receipt, once anchored.
    pub fn proof(&self, id: &TaskId) -> Result<Option<AnchorProof>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(PROOFS).map_err(|e| self.db_err(e))?;
        let Some(v) = table.get(&id.0).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        if v.value().len() > MAX_PROOF_BYTES {
            return Err(ReceiptLogError::Corrupt(*id));
        }
        cbor4ii::serde::from_slice(v.value())
            .map(Some)
            .map_err(|_| ReceiptLogError::Corrupt(*id))
    }

    /// Number of receipts.
    pub fn len(&self) -> Result<u64, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let order = tx.open_table(ORDER).map_err(|e| self.db_err(e))?;
        order.len().map_err(|e| self.db_err(e))
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> Result<bool, ReceiptLogError> {
        Ok(self.len()? == 0)
    }

    /// Up to `limit` receipts in append order, starting at position `from`.
    pub fn list(&self, from: u64, limit: usize) -> Result<Vec<Receipt>, ReceiptLogError> {
        self.resolve(ORDER, from, limit)
    }

    /// The receipts an index table (position → task id) points at, from `from`.
    fn resolve(
        &self,
        index: TableDefinition<u64, &[u8; 16]>,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Receipt>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let index = tx.open_table(index).map_err(|e| self.db_err(e))?;
        let receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in index.range(from..).map_err(|e| self.db_err(e))?.take(limit) {
            let (_, id) = entry.map_err(|e| self.db_err(e))?;
            let id = TaskId(*id.value());
            let v = receipts
                .get(&id.0)
                .map_err(|e| self.db_err(e))?
                .ok_or(ReceiptLogError::Corrupt(id))?;
            out.push(Receipt::decode(v.value()).map_err(|_| ReceiptLogError::Corrupt(id))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::reputation::Reputation;
    use cactus_protocol::{Digest, ReceiptBody, SamplingParams, receipt::RECEIPT_VERSION};
    use libp2p::identity::Keypair;

    fn receipt(n: u8) -> Receipt {
        let orch = Keypair::generate_ed25519();
        let router = Keypair::generate_ed25519();
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            task_id: TaskId([n; 16]),
            model: Digest::of(b"m"),
            prompt_hash: Digest::of(b"p"),
            output_hash: Digest::of(b"o"),
            output_tokens_hash: Digest::of_tokens(&[]),
            sampling: SamplingParams::default(),
            format: cactus_protocol::PromptFormat::Chat,
            finish: cactus_protocol::FinishReason::MaxTokens,
            prompt_tokens: 1,
            output_tokens: 2,
            compute_ms: 3,
            orchestrator: orch.public().to_peer_id(),
            router: router.public().to_peer_id(),
            started_at_ms: 4,
            finished_at_ms: 5,
            delegation: None,
            resumed: None,
        };
        let mut r = body.sign(&orch).unwrap();
        r.countersign(&router).unwrap();
        r
    }

    #[test]
    fn append_survives_reopen_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (receipt(1), receipt(2));
        {
            let l = ReceiptLog::open(dir.path()).unwrap();
            assert!(l.is_empty().unwrap());
            l.append(&a).unwrap();
            l.append(&b).unwrap();
            assert!(matches!(l.append(&a), Err(ReceiptLogError::Duplicate(_))));
        }
        let l = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(l.len().unwrap(), 2);
        assert_eq!(l.get(&a.body.task_id).unwrap(), Some(a.clone()));
        assert_eq!(l.list(0, 10).unwrap(), vec![a, b.clone()]);
        assert_eq!(l.list(1, 10).unwrap(), vec![b]);
        assert_eq!(l.get(&TaskId([9; 16])).unwrap(), None);
    }

    /// An orchestrator and a record of one success from it.
    fn one_success() -> (libp2p::PeerId, Reputation) {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let mut rep = Reputation::default();
        rep.record_success(1_000, 10_000, Some(12));
        (peer, rep)
    }

    #[test]
    fn reputation_survives_reopen() {
        use cactus_protocol::reputation::FailureKind;
        let dir = tempfile::tempdir().unwrap();
        let (peer, mut rep) = one_success();
        rep.record_failure(1_000, 10_000, FailureKind::Disconnected);
        {
            let l = ReceiptLog::open(dir.path()).unwrap();
            assert_eq!(l.reputation(&peer).unwrap(), None);
            l.save_reputation(&peer, &rep).unwrap();
        }
        let l = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(l.reputation(&peer).unwrap(), Some(rep.clone()));
        assert_eq!(l.reputations(10).unwrap(), vec![(peer, rep)]);
    }

    #[test]
    fn a_receipt_and_its_orchestrators_record_are_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (peer, rep) = one_success();
        let (a, b) = (receipt(1), receipt(2));
        {
            let l = ReceiptLog::open(dir.path()).unwrap();
            l.append_with(&a, Some((&peer, &rep))).unwrap();
            // A duplicate receipt is refused, and its record with it.
            let mut later = rep.clone();
            later.record_success(2_000, 10_000, Some(99));
            assert!(matches!(
                l.append_with(&a, Some((&peer, &later))),
                Err(ReceiptLogError::Duplicate(_))
            ));
            l.append_with(&b, None).unwrap();
        }
        let l = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(l.list(0, 10).unwrap(), vec![a, b]);
        assert_eq!(l.reputation(&peer).unwrap(), Some(rep));
    }

    #[test]
    fn anchoring_moves_receipts_from_pending_to_proofs() {
        use cactus_protocol::merkle;
        let dir = tempfile::tempdir().unwrap();
        let l = ReceiptLog::open(dir.path()).unwrap();
        let rs: Vec<Receipt> = (1..=3).map(receipt).collect();
        for r in &rs {
            l.append(r).unwrap();
        }
        assert_eq!(l.pending(10).unwrap(), rs);
        let batch = &rs[..2];
        let hashes: Vec<_> = batch.iter().map(|r| r.hash().unwrap()).collect();
        let (root, proofs) = merkle::build(&hashes).unwrap();
        let recorded: Vec<(TaskId, AnchorProof)> = batch
            .iter()
            .zip(proofs)
            .map(|(r, proof)| {
                (
                    r.body.task_id,
                    AnchorProof {
                        anchor_index: 0,
                        root,
                        proof,
                    },
                )
            })
            .collect();
        l.record_anchor(&recorded).unwrap();
        drop(l);
        let l = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(l.pending(10).unwrap(), vec![rs[2].clone()]);
        assert_eq!(l.pending_len().unwrap(), 1);
        let p = l.proof(&rs[0].body.task_id).unwrap().unwrap();
        assert!(p.proof.verify(&hashes[0], &p.root));
        assert_eq!(l.proof(&rs[2].body.task_id).unwrap(), None);
    }
}
