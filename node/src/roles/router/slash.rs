//! Slashing the orchestrator that signed a result the verifiers found to be
//! fraud, on the evidence the router has stored.

use super::RouterCtx;
use cactus_protocol::contract::Op;
use cactus_protocol::fraud::FraudEvidence;

/// How long a router refuses an orchestrator caught in fraud: thirty days.
pub const FRAUD_BAN_MS: u64 = 30 * 24 * 3600 * 1000;

impl RouterCtx {
    /// Slashes the orchestrator that signed a fraudulent receipt (the
    /// evidence's accused) and stops using it; returns whether the chain
    /// took the slash.
    pub(super) async fn slash(&self, evidence: &FraudEvidence) -> bool {
        let accused = evidence.accused();
        let Some((account, _)) = self.with_table(|t| t.admitted_terms(&accused)) else {
            tracing::warn!(orchestrator = %accused, "the accused is not an admitted orchestrator here: not slashed");
            return false;
        };
        self.with_table(|t| t.ban(&accused));
        // The ban is kept in the receipt log, so a restart does not lift it.
        let (log, now) = (std::sync::Arc::clone(&self.receipts), crate::time::now_ms());
        let kept = tokio::task::spawn_blocking(move || {
            log.ban(&accused, now.saturating_add(FRAUD_BAN_MS), now)
        })
        .await;
        if !matches!(kept, Ok(Ok(()))) {
            tracing::error!(orchestrator = %accused, "the ban could not be stored: it lasts until a restart");
        }
        let Ok(hash) = evidence.hash() else {
            return false;
        };
        // The account on the chain must be the accused's own.
        match self.chain.orchestrator(account).await {
            Ok(Some(record)) if record.peer_id == accused.to_bytes() => {}
            other => {
                tracing::error!(orchestrator = %accused, %account, record = ?other.map(|r| r.map(|r| r.peer_id.len())), "the account is not the accused's on the chain: not slashed");
                return false;
            }
        }
        let op = Op::Slash {
            orchestrator: account,
            ratio_bps: self
                .verification
                .slash_bps
                .clamp(1, self.contract.max_slash_bps.max(1)),
            evidence_hash: hash.0.to_vec(),
        };
        match self.chain.submit(op).await {
            Ok(()) => {
                tracing::warn!(orchestrator = %accused, %account, evidence = %hash, "slashed for fraud");
                true
            }
            Err(e) => {
                tracing::error!(orchestrator = %accused, error = %e, "could not slash");
                false
            }
        }
    }
}
