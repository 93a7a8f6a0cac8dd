//! The escrow journal: the tasks this router escrowed and has not settled.
//!
//! A chain that lists a server's pending tasks (the embedded chain, and a
//! remote embedded ledger) needs none: after a restart the router asks it
//! (`ChainBackend::pending_tasks`). On one that cannot (Aptos: a Move table
//! is not enumerable), the router notes each task id here, durably, before it
//! escrows, and drops it once the task is settled, so that after a kill -9
//! it still knows what to reconcile (`roles/router/reconcile.rs`).

use super::{ReceiptLog, ReceiptLogError};
use cactus_protocol::TaskId;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

/// Task id → when it was noted (Unix milliseconds).
pub(super) const ESCROWED: TableDefinition<&[u8; 16], u64> = TableDefinition::new("escrowed_tasks");

/// Most tasks the journal holds; past it a router escrows nothing more until
/// some settle (far above what its task budget keeps in flight).
pub const MAX_JOURNALED: u64 = 65_536;

impl ReceiptLog {
    /// Notes that task `id` is being escrowed; durable when this returns.
    pub fn journal_escrow(&self, id: &TaskId, now_ms: u64) -> Result<(), ReceiptLogError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(ESCROWED).map_err(|e| self.db_err(e))?;
            if table.len().map_err(|e| self.db_err(e))? >= MAX_JOURNALED {
                return Err(self.oversized("escrow journal"));
            }
            table.insert(&id.0, now_ms).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Drops task `id`: settled, or never escrowed.
    pub fn journal_settled(&self, id: &TaskId) -> Result<(), ReceiptLogError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(ESCROWED).map_err(|e| self.db_err(e))?;
            table.remove(&id.0).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Up to `limit` task ids in the journal.
    pub fn journaled(&self, limit: usize) -> Result<Vec<TaskId>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(ESCROWED).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_err(e))?.take(limit) {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            out.push(TaskId(*k.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_a_reopen_and_forgets_settled_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (TaskId([1; 16]), TaskId([2; 16]));
        {
            let log = ReceiptLog::open(dir.path()).unwrap();
            log.journal_escrow(&a, 5).unwrap();
            log.journal_escrow(&b, 6).unwrap();
            log.journal_settled(&a).unwrap();
        }
        let log = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(log.journaled(10).unwrap(), vec![b]);
        assert_eq!(log.journaled(0).unwrap(), vec![]);
    }
}
