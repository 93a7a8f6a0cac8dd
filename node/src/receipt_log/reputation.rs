//! The router's reputation records, one per orchestrator, kept beside its
//! receipts and restored when an orchestrator is admitted again.

use super::{ReceiptLog, ReceiptLogError};
use cactus_protocol::reputation::Reputation;
use cactus_protocol::wire::SourceError;
use redb::TableDefinition;

/// Reputation records (CBOR) by orchestrator PeerId bytes.
pub(super) const REPUTATION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reputation");
/// Largest stored reputation record read back.
const MAX_REPUTATION_BYTES: usize = 1024;

impl ReceiptLog {
    /// The router's stored record of an orchestrator.
    pub fn reputation(&self, peer: &libp2p::PeerId) -> Result<Option<Reputation>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(REPUTATION).map_err(|e| self.db_err(e))?;
        let key = peer.to_bytes();
        let Some(v) = table.get(key.as_slice()).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        if v.value().len() > MAX_REPUTATION_BYTES {
            return Err(self.oversized("oversized reputation record"));
        }
        cbor4ii::serde::from_slice(v.value())
            .map(Some)
            .map_err(|e| ReceiptLogError::Decode {
                path: self.path.clone(),
                source: SourceError::new(e),
            })
    }

    /// Stores the router's record of an orchestrator. Not synced on its
    /// own: the next durable write (the next receipt appended, or the log
    /// closing) makes it durable, so a kill -9 can lose the records updated
    /// since. Reputation is a moving average; a task's receipt, escrow and
    /// payment are what must never be lost, and this saves a disk sync per
    /// task.
    pub fn save_reputation(
        &self,
        peer: &libp2p::PeerId,
        rep: &Reputation,
    ) -> Result<(), ReceiptLogError> {
        let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.set_durability(redb::Durability::None);
        self.put_reputation(&tx, peer, rep)?;
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Writes `peer`'s record in `tx`.
    pub(super) fn put_reputation(
        &self,
        tx: &redb::WriteTransaction,
        peer: &libp2p::PeerId,
        rep: &Reputation,
    ) -> Result<(), ReceiptLogError> {
        let bytes = cbor4ii::serde::to_vec(Vec::new(), rep).map_err(|e| self.encode_err(e))?;
        let mut table = tx.open_table(REPUTATION).map_err(|e| self.db_err(e))?;
        let key = peer.to_bytes();
        table
            .insert(key.as_slice(), bytes.as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Up to `limit` stored records, by PeerId.
    pub fn reputations(
        &self,
        limit: usize,
    ) -> Result<Vec<(libp2p::PeerId, Reputation)>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(REPUTATION).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8]>(..)
            .map_err(|e| self.db_err(e))?
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let (Ok(peer), true) = (
                libp2p::PeerId::from_bytes(k.value()),
                v.value().len() <= MAX_REPUTATION_BYTES,
            ) else {
                continue;
            };
            if let Ok(rep) = cbor4ii::serde::from_slice(v.value()) {
                out.push((peer, rep));
            }
        }
        Ok(out)
    }
}
