//! The router's embedded ledger: every countersigned receipt, in order, in a
//! redb database under the data dir. redb commits are durable and atomic, so a
//! kill -9 at any moment loses no committed receipt and leaves no torn one.
//!
//! This ledger is a receipt log; stake, escrow and payments build on it.

use cactus_protocol::{Receipt, TaskId, Wire};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

/// File name of the ledger inside the data dir.
pub const LEDGER_FILE: &str = "ledger.redb";

/// Receipt frames by task id.
const RECEIPTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("receipts");
/// Task ids in the order their receipts were appended.
const ORDER: TableDefinition<u64, &[u8; 16]> = TableDefinition::new("receipt_order");

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed.
    #[error("ledger {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A receipt for the task is already recorded.
    #[error("a receipt for task {0} is already in the ledger")]
    Duplicate(TaskId),
    /// A stored receipt does not decode.
    #[error("stored receipt for task {0} is corrupt")]
    Corrupt(TaskId),
}

/// The receipt log.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
    path: PathBuf,
}

impl Ledger {
    /// Opens (or creates) the ledger in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        let db = Database::create(&path).map_err(|e| LedgerError::Db {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let ledger = Self { db, path };
        // Create the tables so readers never meet a missing one.
        let tx = ledger.db.begin_write().map_err(|e| ledger.db_err(e))?;
        {
            tx.open_table(RECEIPTS).map_err(|e| ledger.db_err(e))?;
            tx.open_table(ORDER).map_err(|e| ledger.db_err(e))?;
        }
        tx.commit().map_err(|e| ledger.db_err(e))?;
        Ok(ledger)
    }

    fn db_err(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Appends a receipt; durable when this returns.
    pub fn append(&self, receipt: &Receipt) -> Result<(), LedgerError> {
        let id = receipt.body.task_id;
        let bytes = receipt.encode().map_err(|e| self.db_err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
            if receipts.get(&id.0).map_err(|e| self.db_err(e))?.is_some() {
                return Err(LedgerError::Duplicate(id));
            }
            receipts
                .insert(&id.0, bytes.as_slice())
                .map_err(|e| self.db_err(e))?;
            let mut order = tx.open_table(ORDER).map_err(|e| self.db_err(e))?;
            let next = order.len().map_err(|e| self.db_err(e))?;
            order.insert(next, &id.0).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// The receipt of a task, if recorded.
    pub fn get(&self, id: &TaskId) -> Result<Option<Receipt>, LedgerError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
        let Some(v) = receipts.get(&id.0).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        Receipt::decode(v.value())
            .map(Some)
            .map_err(|_| LedgerError::Corrupt(*id))
    }

    /// Number of receipts.
    pub fn len(&self) -> Result<u64, LedgerError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let order = tx.open_table(ORDER).map_err(|e| self.db_err(e))?;
        order.len().map_err(|e| self.db_err(e))
    }

    /// Whether the ledger is empty.
    pub fn is_empty(&self) -> Result<bool, LedgerError> {
        Ok(self.len()? == 0)
    }

    /// Up to `limit` receipts in append order, starting at position `from`.
    pub fn list(&self, from: u64, limit: usize) -> Result<Vec<Receipt>, LedgerError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let order = tx.open_table(ORDER).map_err(|e| self.db_err(e))?;
        let receipts = tx.open_table(RECEIPTS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in order.range(from..).map_err(|e| self.db_err(e))?.take(limit) {
            let (_, id) = entry.map_err(|e| self.db_err(e))?;
            let id = TaskId(*id.value());
            let v = receipts
                .get(&id.0)
                .map_err(|e| self.db_err(e))?
                .ok_or(LedgerError::Corrupt(id))?;
            out.push(Receipt::decode(v.value()).map_err(|_| LedgerError::Corrupt(id))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            sampling: SamplingParams::default(),
            prompt_tokens: 1,
            output_tokens: 2,
            compute_ms: 3,
            orchestrator: orch.public().to_peer_id(),
            router: router.public().to_peer_id(),
            started_at_ms: 4,
            finished_at_ms: 5,
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
            let l = Ledger::open(dir.path()).unwrap();
            assert!(l.is_empty().unwrap());
            l.append(&a).unwrap();
            l.append(&b).unwrap();
            assert!(matches!(l.append(&a), Err(LedgerError::Duplicate(_))));
        }
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.len().unwrap(), 2);
        assert_eq!(l.get(&a.body.task_id).unwrap(), Some(a.clone()));
        assert_eq!(l.list(0, 10).unwrap(), vec![a, b.clone()]);
        assert_eq!(l.list(1, 10).unwrap(), vec![b]);
        assert_eq!(l.get(&TaskId([9; 16])).unwrap(), None);
    }
}
