//! Spot checks: which results are replayed, on which verifiers, and what
//! their vote decides (the tally itself is [`cactus_protocol::vote`]).

use super::RouterCtx;
use cactus_protocol::fraud::{FraudEvidenceBody, ReplayReport, ReplayRequest};
use cactus_protocol::reputation::FailureKind;
use cactus_protocol::vote::{Decision, MAX_VERIFIERS_ASKED, Outvoted, Tally};
use cactus_protocol::{Assignment, TaskId, TaskRequest, TaskResponse, TaskResult};
use libp2p::PeerId;
use std::collections::HashSet;
use std::sync::Arc;

/// Spot checks by replay (see [`cactus_protocol::fraud`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    /// Share of results replayed, in parts per million (50 000 = 5 %).
    pub share_ppm: u32,
    /// Largest logit gap an honest replay may show.
    pub tolerance: f32,
    /// Share of stake slashed for confirmed fraud, in basis points (capped by
    /// the contract's `max_slash_bps`).
    pub slash_bps: u64,
}

impl Verification {
    /// The default logit-gap tolerance. Measured on the demo model (Q4_K_M,
    /// CPU): honest replays stay under 0.6, substituted quantizations go past
    /// 1.0 on 18-19 of 20 tasks. `cargo bench --bench replay` measures it for
    /// a model.
    pub const DEFAULT_TOLERANCE: f32 = 1.0;
}

impl Default for Verification {
    fn default() -> Self {
        Self {
            share_ppm: 50_000,
            tolerance: Self::DEFAULT_TOLERANCE,
            slash_bps: 1_000,
        }
    }
}

/// How a spot check ended.
pub(super) enum Check {
    /// Not selected, or no verifier could replay it: accepted unchecked.
    Skipped,
    /// The replay agrees with the result.
    Passed,
    /// Two verifiers found the result off the model: it is refused, and the
    /// orchestrator that signed it slashed (`slashed` says whether the chain
    /// took it).
    Fraud { slashed: bool },
}

impl RouterCtx {
    /// The router's signature over a result's identity: the seed of the
    /// spot-check draw and of the verifier pick. ed25519 signatures are
    /// deterministic, so the draw is fixed by the result, yet nobody without
    /// the router's key can tell in advance which results will be replayed;
    /// afterwards anyone can check it against the router's PeerId.
    pub(super) fn check_seed(
        &self,
        task: &TaskId,
        receipt: &cactus_protocol::Digest,
    ) -> Option<Vec<u8>> {
        let mut msg = b"cactus/spot-check/v1\0".to_vec();
        msg.extend_from_slice(&task.0);
        msg.extend_from_slice(&receipt.0);
        self.key.sign(&msg).ok()
    }

    /// Whether a result is replayed, by the draw [`Self::check_seed`] seeds.
    pub(super) fn selected_for_check(&self, seed: &[u8]) -> bool {
        let share = self.verification.share_ppm;
        if share == 0 {
            return false;
        }
        let d = cactus_protocol::Digest::of(seed);
        let draw = u32::from_le_bytes([d.0[0], d.0[1], d.0[2], d.0[3]]) % 1_000_000;
        draw < share
    }

    /// Asks one verifier to replay; `None` if it could not.
    async fn replay_on(
        &self,
        verifier: PeerId,
        request: &ReplayRequest,
        deadline: tokio::time::Instant,
    ) -> Option<ReplayReport> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let sent = tokio::time::timeout(
            self.task_timeout.min(left),
            self.network
                .send_task(verifier, TaskRequest::Replay(Box::new(request.clone()))),
        )
        .await;
        let report = match sent {
            Ok(Ok(TaskResponse::Replayed(r))) => *r,
            Ok(Ok(TaskResponse::Failed(e))) => {
                tracing::info!(%verifier, kind = ?e.kind, message = %e.message, "verifier declined the replay");
                return None;
            }
            other => {
                tracing::info!(%verifier, answer = ?other.map(|r| r.map(|_| ())), "verifier gave no replay");
                return None;
            }
        };
        if report.body.verifier != verifier
            || report.body.router != self.network.local_peer_id()
            || report.body.findings.worst.len() > cactus_protocol::fraud::MAX_WORST
            || report.verify(&request.receipt.body).is_err()
        {
            tracing::warn!(%verifier, "verifier sent an invalid replay report");
            self.record_outcome(verifier, Err(FailureKind::BadResult))
                .await;
            return None;
        }
        Some(report)
    }

    /// Whether `verifier` is, on the chain at this moment, registered under
    /// its PeerId with at least the minimum stake.
    async fn staked_now(&self, verifier: &PeerId) -> bool {
        let Some((account, _)) = self.with_table(|t| t.admitted_terms(verifier)) else {
            return false;
        };
        match self.chain.orchestrator(account).await {
            Ok(Some(o)) => o.admits(verifier, self.contract.min_stake),
            _ => false,
        }
    }

    /// Replays a result on other admitted orchestrators serving the model
    /// (never the one assigned, nor any node of its delegation chain), drawn
    /// by the seeded scheduler, and decides by a quorum of reports from
    /// verifiers staked at that moment (`cactus_protocol::vote`): fraud when
    /// two find it off the model and outnumber those clearing it, cleared
    /// when two clear it and outnumber the others. A verifier outvoted is
    /// recorded as a bad result. Without a quorum (too few verifiers
    /// answer) the result is accepted and nobody is blamed: one verifier's
    /// word is never enough either way.
    pub(super) async fn spot_check(
        &self,
        peer: PeerId,
        assignment: &Assignment,
        result: &TaskResult,
        seed: &[u8],
        deadline: tokio::time::Instant,
    ) -> Check {
        let request = ReplayRequest {
            receipt: result.receipt.clone(),
            prompt: assignment.prompt.clone(),
            tokens: result.tokens.clone(),
            text: result.text.clone(),
        };
        let tolerance = self.verification.tolerance;
        let seed = cactus_protocol::Digest::of(seed);
        let mut exclude = HashSet::from([peer, result.receipt.body.orchestrator]);
        exclude.extend(
            result
                .delegation
                .iter()
                .flat_map(|l| [l.body.parent, l.body.child]),
        );
        let mut tally = Tally::default();
        let (mut guilty, mut cleared): (Vec<ReplayReport>, Vec<PeerId>) = (Vec::new(), Vec::new());
        // A few more verifiers may be asked when some cannot answer.
        for _ in 0..MAX_VERIFIERS_ASKED {
            if tally.settled() {
                break;
            }
            let Some(verifier) = self
                .with_table(|t| t.pick(&assignment.model, &exclude, &seed, &assignment.task_id))
            else {
                break;
            };
            exclude.insert(verifier);
            let Some(report) = self.replay_on(verifier, &request, deadline).await else {
                continue;
            };
            // Only a verifier staked now votes: one that has unstaked since
            // it was admitted risks nothing on its word.
            if !self.staked_now(&verifier).await {
                tracing::warn!(%verifier, task_id = %assignment.task_id, "a verifier no longer staked: its report does not count");
                continue;
            }
            let verdict = report.body.findings.judge(&request.receipt.body, tolerance);
            tracing::info!(
                task_id = %assignment.task_id, orchestrator = %peer, %verifier,
                max_gap = report.body.findings.max_gap,
                mismatches = report.body.findings.mismatches,
                positions = report.body.findings.positions,
                verdict = ?verdict,
                "spot check"
            );
            tally.record(verdict.is_err());
            match verdict {
                Ok(()) => cleared.push(verifier),
                Err(_) => guilty.push(report),
            }
        }
        // Outvoted verifiers reported falsely (or run another model).
        let outvoted: Vec<PeerId> = match tally.outvoted() {
            Outvoted::None => Vec::new(),
            Outvoted::Guilty => guilty.iter().map(|r| r.body.verifier).collect(),
            Outvoted::Cleared => cleared,
        };
        for v in outvoted {
            tracing::warn!(verifier = %v, orchestrator = %peer, "an outvoted verifier is recorded as a bad result");
            self.record_outcome(v, Err(FailureKind::BadResult)).await;
        }
        use crate::metrics::Verdict;
        match tally.decision() {
            Decision::Cleared => {
                self.metrics.spot_check(Verdict::Passed);
                return Check::Passed;
            }
            Decision::NoMajority => {
                self.metrics.spot_check(Verdict::NoMajority);
                tracing::info!(task_id = %assignment.task_id, failed = tally.guilty, cleared = tally.cleared, "no majority of verifiers; accepted unchecked");
                return Check::Skipped;
            }
            Decision::Fraud => self.metrics.spot_check(Verdict::Fraud),
        }
        let evidence = FraudEvidenceBody {
            receipt: result.receipt.clone(),
            reports: guilty,
            tolerance,
            router: self.network.local_peer_id(),
            issued_at_ms: crate::time::now_ms(),
        }
        .sign(&self.key);
        let evidence = match evidence {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "could not sign fraud evidence");
                return Check::Fraud { slashed: false };
            }
        };
        // Evidence first: a slash always points at evidence kept here.
        let receipts = Arc::clone(&self.receipts);
        let stored = evidence.clone();
        let saved = match tokio::task::spawn_blocking(move || receipts.save_fraud(&stored)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not store fraud evidence");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store fraud evidence");
                false
            }
        };
        let slashed = saved && self.slash(&evidence).await;
        tracing::warn!(task_id = %assignment.task_id, orchestrator = %peer, executor = %evidence.accused(), slashed, "result failed its spot check");
        Check::Fraud { slashed }
    }
}
