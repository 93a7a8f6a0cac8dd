//! What the router holds against orchestrators: bans, which outlive
//! restarts, and the signed fraud evidence behind them.

use super::{ReceiptLog, ReceiptLogError};
use cactus_protocol::TaskId;
use cactus_protocol::fraud::FraudEvidence;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

/// Fraud evidence (CBOR `FraudEvidence`) by the accused task's id.
pub(super) const FRAUD: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("fraud_evidence");
/// Banned PeerIds → when the ban ends (Unix ms).
pub(super) const BANS: TableDefinition<&[u8], u64> = TableDefinition::new("bans");
/// Bans kept at most; past it the expired ones go, then the one ending
/// soonest.
pub const MAX_BANS: u64 = 4096;
/// Largest stored piece of evidence read back.
const MAX_EVIDENCE_BYTES: usize = 64 * 1024;

impl ReceiptLog {
    /// Bans `peer` until `until_ms` (a longer ban already recorded stays);
    /// durable when this returns, so a ban outlives restarts.
    pub fn ban(
        &self,
        peer: &libp2p::PeerId,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReceiptLogError> {
        let key = peer.to_bytes();
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(BANS).map_err(|e| self.db_err(e))?;
            let old = table
                .get(key.as_slice())
                .map_err(|e| self.db_err(e))?
                .map(|v| v.value());
            if old.is_none() && table.len().map_err(|e| self.db_err(e))? >= MAX_BANS {
                table
                    .retain(|_, until| until > now_ms)
                    .map_err(|e| self.db_err(e))?;
                if table.len().map_err(|e| self.db_err(e))? >= MAX_BANS {
                    let mut soonest: Option<(Vec<u8>, u64)> = None;
                    for entry in table.iter().map_err(|e| self.db_err(e))? {
                        let (k, v) = entry.map_err(|e| self.db_err(e))?;
                        if soonest.as_ref().is_none_or(|(_, u)| v.value() < *u) {
                            soonest = Some((k.value().to_vec(), v.value()));
                        }
                    }
                    if let Some((k, _)) = soonest {
                        table.remove(k.as_slice()).map_err(|e| self.db_err(e))?;
                    }
                }
            }
            let until = old.map_or(until_ms, |o| o.max(until_ms));
            table
                .insert(key.as_slice(), until)
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// When `peer`'s ban ends, if it is banned at `now_ms`.
    pub fn banned_until(
        &self,
        peer: &libp2p::PeerId,
        now_ms: u64,
    ) -> Result<Option<u64>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(BANS).map_err(|e| self.db_err(e))?;
        let key = peer.to_bytes();
        let until = table
            .get(key.as_slice())
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value());
        Ok(until.filter(|&u| u > now_ms))
    }

    /// Stores signed fraud evidence against the result of a task.
    pub fn save_fraud(&self, evidence: &FraudEvidence) -> Result<(), ReceiptLogError> {
        let bytes = evidence.to_cbor().map_err(|e| self.encode_err(e))?;
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(self.oversized("oversized fraud evidence"));
        }
        let id = evidence.body.receipt.body.task_id;
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(FRAUD).map_err(|e| self.db_err(e))?;
            table
                .insert(&id.0, bytes.as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Up to `limit` stored pieces of fraud evidence, by task id.
    pub fn frauds(&self, limit: usize) -> Result<Vec<FraudEvidence>, ReceiptLogError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(FRAUD).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in table
            .range::<&[u8; 16]>(..)
            .map_err(|e| self.db_err(e))?
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            if v.value().len() > MAX_EVIDENCE_BYTES {
                return Err(ReceiptLogError::Corrupt(TaskId(*k.value())));
            }
            out.push(
                FraudEvidence::from_cbor(v.value())
                    .map_err(|_| ReceiptLogError::Corrupt(TaskId(*k.value())))?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn bans_outlive_a_reopen_expire_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let peer = || Keypair::generate_ed25519().public().to_peer_id();
        let (a, b) = (peer(), peer());
        {
            let log = ReceiptLog::open(dir.path()).unwrap();
            log.ban(&a, 1_000, 0).unwrap();
            // A shorter ban does not shorten a longer one.
            log.ban(&a, 500, 0).unwrap();
            assert_eq!(log.banned_until(&b, 0).unwrap(), None);
        }
        let log = ReceiptLog::open(dir.path()).unwrap();
        assert_eq!(log.banned_until(&a, 999).unwrap(), Some(1_000));
        assert_eq!(log.banned_until(&a, 1_000).unwrap(), None, "expired");
        // At the cap, the ban ending soonest makes room.
        for i in 0..MAX_BANS {
            log.ban(&peer(), 2_000 + i, 0).unwrap();
        }
        assert_eq!(log.banned_until(&a, 0).unwrap(), None);
        log.ban(&b, 10_000, 0).unwrap();
        assert_eq!(log.banned_until(&b, 0).unwrap(), Some(10_000));
        let tx = log.db.begin_read().unwrap();
        assert_eq!(tx.open_table(BANS).unwrap().len().unwrap(), MAX_BANS);
    }
}
