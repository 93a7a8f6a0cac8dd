//! Spot checks by replay, and the evidence a failed one produces.
//!
//! A router checks a share of results: it sends the prompt and the returned
//! tokens to a *verifier* (another orchestrator serving the same model) as a
//! [`ReplayRequest`]. The verifier runs them through the model as one
//! teacher-forced prefill, which yields the model's logits at every output
//! position at once, and reports, per position, how far the returned token is
//! from the one the task's sampler would pick ([`ReplayFindings`]). Honest
//! replays differ from incremental generation only by floating-point noise
//! (batched and one-token matrix products round differently), so the check is
//! a *tolerance* on the logit gap, measured per model and backend
//! (`BENCHMARKS.md`, `cargo bench --bench replay`), not exact equality.
//!
//! The verifier signs its [`ReplayReport`]. When the findings break the
//! tolerance, the router signs [`FraudEvidence`]: the orchestrator-signed
//! receipt plus the verifiers' signed reports. Anyone can check the evidence
//! offline, and can re-run the replay to check the verifiers themselves; its
//! [`FraudEvidence::hash`] is what `slash` records on the chain.

use crate::ids::{Digest, ModelHash, TaskId};
use crate::params::{
    FinishReason, InvalidMessage, MAX_OUTPUT_BYTES, MAX_OUTPUT_TOKENS, MAX_PROMPT_BYTES,
    PromptFormat, SamplingParams,
};
use crate::receipt::{Receipt, ReceiptBody, ReceiptError, public_key_of};
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

const REPORT_DOMAIN: &[u8] = b"cactus/replay/v1\0";
const EVIDENCE_DOMAIN: &[u8] = b"cactus/fraud/v1\0";
/// Most positions a report lists individually.
pub const MAX_WORST: usize = 8;
/// Most verifier reports one piece of evidence carries.
pub const MAX_REPORTS: usize = 3;
/// Fewest agreeing verifier reports that make evidence: one verifier's word
/// is never enough.
pub const MIN_REPORTS: usize = 2;
/// The smallest tolerance evidence may apply, in logits: below it honest
/// floating-point noise would read as fraud (honest replays of the demo model
/// reach 0.5; see BENCHMARKS.md).
pub const MIN_TOLERANCE: f32 = 0.5;

/// A router's request to replay a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// The receipt under check, with the orchestrator's signature: it fixes
    /// the model, the prompt format, the sampling and the stop reason.
    pub receipt: Receipt,
    /// The prompt text.
    pub prompt: String,
    /// The generated token ids, as returned.
    pub tokens: Vec<u32>,
    /// The generated text, as returned.
    pub text: String,
}

impl ReplayRequest {
    /// Checks sizes, and that prompt, tokens and text are the ones the
    /// receipt commits to.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.prompt.is_empty() {
            return Err(InvalidMessage::EmptyPrompt);
        }
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return Err(InvalidMessage::PromptTooLarge(self.prompt.len()));
        }
        if self.tokens.len() > MAX_OUTPUT_TOKENS as usize {
            return Err(InvalidMessage::MaxTokens(self.tokens.len() as u32));
        }
        if self.text.len() > MAX_OUTPUT_BYTES {
            return Err(InvalidMessage::FieldTooLong {
                field: "text",
                len: self.text.len(),
                max: MAX_OUTPUT_BYTES,
            });
        }
        if self.receipt.verify_orchestrator().is_err() {
            return Err(InvalidMessage::ReplayMismatch);
        }
        let b = &self.receipt.body;
        b.sampling.validate()?;
        if b.prompt_hash != Digest::of(self.prompt.as_bytes())
            || b.output_hash != Digest::of(self.text.as_bytes())
            || b.output_tokens_hash != Digest::of_tokens(&self.tokens)
            || b.output_tokens as usize != self.tokens.len()
        {
            return Err(InvalidMessage::ReplayMismatch);
        }
        Ok(())
    }

    /// The model to replay with.
    pub fn model(&self) -> ModelHash {
        self.receipt.body.model
    }

    /// The task's sampling parameters.
    pub fn sampling(&self) -> &SamplingParams {
        &self.receipt.body.sampling
    }

    /// How the prompt was tokenized.
    pub fn format(&self) -> PromptFormat {
        self.receipt.body.format
    }

    /// Why generation stopped, as the orchestrator signed it.
    pub fn finish(&self) -> FinishReason {
        self.receipt.body.finish
    }
}

/// One output position where the returned token is not the sampler's pick.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionGap {
    /// Index in the output (0 = first generated token).
    pub position: u32,
    /// The token returned.
    pub token: u32,
    /// The token the replay's sampler picks there.
    pub expected: u32,
    /// How far the returned token is from acceptable, in logits: for greedy
    /// tasks the top logit minus the returned token's; for sampled tasks how
    /// far the returned token's logit falls below the top-p nucleus (0 inside).
    pub gap: f32,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayFindings {
    /// Prompt tokens after templating, as the verifier counts them.
    pub prompt_tokens: u32,
    /// Output positions checked.
    pub positions: u32,
    /// Positions where the returned token is not the sampler's pick.
    pub mismatches: u32,
    /// The largest gap over all positions (0 when all match).
    pub max_gap: f32,
    /// The largest gaps, largest first, at most [`MAX_WORST`].
    pub worst: Vec<PositionGap>,
    /// Whether the returned tokens decode to the returned text.
    pub text_matches: bool,
    /// For a result that claims to stop at end-of-generation: how far the best
    /// end-of-generation token is below the top logit after the last token.
    pub stop_gap: Option<f32>,
    /// Wall-clock milliseconds the replay took.
    pub compute_ms: u64,
}

/// Why findings count as fraud.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum FraudReason {
    /// A returned token is further from the sampler's pick than the tolerance.
    #[error("output token {position} is {gap:.2} logits off the model (tolerance {tolerance:.2})")]
    OffModel {
        /// Output position.
        position: u32,
        /// How many logits the returned token is below the sampler's pick.
        gap: f32,
        /// The tolerance applied.
        tolerance: f32,
    },
    /// The returned tokens do not decode to the returned text.
    #[error("the returned tokens do not decode to the returned text")]
    TextMismatch,
    /// The receipt claims another prompt length than the model's tokenizer.
    #[error("the receipt claims {claimed} prompt tokens; the model's tokenizer gives {replayed}")]
    PromptTokens {
        /// In the receipt.
        claimed: u32,
        /// In the replay.
        replayed: u32,
    },
    /// End-of-generation claimed where the model would not stop.
    #[error("generation claimed to stop where the model does not ({gap:.2} logits)")]
    Stop {
        /// The gap of the best end-of-generation token.
        gap: f32,
    },
    /// The replay covered fewer positions than the receipt claims.
    #[error("the replay checked {checked} of {claimed} output tokens")]
    Incomplete {
        /// Checked.
        checked: u32,
        /// Claimed.
        claimed: u32,
    },
}

impl ReplayFindings {
    /// Judges findings about `receipt` with a logit-gap `tolerance`:
    /// `Ok(())` when the result is consistent with the model.
    pub fn judge(&self, receipt: &ReceiptBody, tolerance: f32) -> Result<(), FraudReason> {
        if !self.text_matches {
            return Err(FraudReason::TextMismatch);
        }
        if self.prompt_tokens != receipt.prompt_tokens {
            return Err(FraudReason::PromptTokens {
                claimed: receipt.prompt_tokens,
                replayed: self.prompt_tokens,
            });
        }
        if self.positions != receipt.output_tokens {
            return Err(FraudReason::Incomplete {
                checked: self.positions,
                claimed: receipt.output_tokens,
            });
        }
        // NaN never passes.
        let within = |gap: f32| gap.partial_cmp(&tolerance).is_some_and(|o| o.is_le());
        if !within(self.max_gap) {
            let w = self.worst.first();
            return Err(FraudReason::OffModel {
                position: w.map_or(0, |w| w.position),
                gap: self.max_gap,
                tolerance,
            });
        }
        if let Some(gap) = self.stop_gap
            && !within(gap)
        {
            return Err(FraudReason::Stop { gap });
        }
        Ok(())
    }
}

/// The signed part of a [`ReplayReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReportBody {
    /// The task replayed.
    pub task_id: TaskId,
    /// [`ReceiptBody::digest`] of the receipt checked.
    pub receipt: Digest,
    pub verifier: PeerId,
    /// The router that asked.
    pub router: PeerId,
    /// What the replay found.
    pub findings: ReplayFindings,
}

/// A verifier's signed findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The findings and what they are about.
    pub body: ReplayReportBody,
    /// The verifier's signature.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// Why a report or evidence does not check out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A signature does not verify, or a PeerId carries no key.
    #[error("the {0} signature does not verify")]
    Signature(&'static str),
    /// The receipt's own signature does not verify.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// A report is about another task or receipt.
    #[error("a report is about another receipt")]
    WrongReceipt,
    /// Too few or too many reports, or two from the same verifier.
    #[error(
        "the evidence needs {MIN_REPORTS}..={MAX_REPORTS} reports from distinct verifiers other than the accused"
    )]
    Reports,
    /// A tolerance below [`MIN_TOLERANCE`] (or not a number).
    #[error("tolerance {0} is below the protocol's minimum {MIN_TOLERANCE}")]
    Tolerance(f32),
    /// The receipt or a report names another router than the evidence.
    #[error("the receipt or a report belongs to another router")]
    WrongRouter,
    /// A report's findings pass the tolerance: no fraud shown.
    #[error("a report shows no fraud at tolerance {0}")]
    NotFraud(f32),
    /// Signing or encoding failed.
    #[error("{0}")]
    Encode(#[source] crate::wire::SourceError),
}

fn signing_bytes<T: Serialize>(domain: &[u8], body: &T) -> Result<Vec<u8>, EvidenceError> {
    let mut out = domain.to_vec();
    cbor4ii::serde::to_writer(&mut out, body)
        .map_err(|e| EvidenceError::Encode(crate::wire::SourceError::new(e)))?;
    Ok(out)
}

fn check_sig(
    peer: &PeerId,
    msg: &[u8],
    sig: &[u8],
    what: &'static str,
) -> Result<(), EvidenceError> {
    let key = public_key_of(peer).ok_or(EvidenceError::Signature(what))?;
    if sig.len() > crate::receipt::MAX_SIGNATURE_BYTES || !key.verify(msg, sig) {
        return Err(EvidenceError::Signature(what));
    }
    Ok(())
}

impl ReplayReportBody {
    /// Signs as the verifier, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<ReplayReport, EvidenceError> {
        if key.public().to_peer_id() != self.verifier {
            return Err(EvidenceError::Signature("verifier"));
        }
        let sig = key
            .sign(&signing_bytes(REPORT_DOMAIN, &self)?)
            .map_err(|e| EvidenceError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(ReplayReport { body: self, sig })
    }
}

impl ReplayReport {
    /// Checks the verifier's signature and that the report is about `receipt`.
    pub fn verify(&self, receipt: &ReceiptBody) -> Result<(), EvidenceError> {
        check_sig(
            &self.body.verifier,
            &signing_bytes(REPORT_DOMAIN, &self.body)?,
            &self.sig,
            "verifier",
        )?;
        if self.body.task_id != receipt.task_id || self.body.receipt != receipt.digest()? {
            return Err(EvidenceError::WrongReceipt);
        }
        Ok(())
    }
}

/// The signed part of [`FraudEvidence`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudEvidenceBody {
    /// The accused result's receipt, with the orchestrator's signature.
    pub receipt: Receipt,
    /// The verifiers' signed reports, each showing fraud at `tolerance`.
    pub reports: Vec<ReplayReport>,
    /// The logit-gap tolerance applied.
    pub tolerance: f32,
    /// The router that judged.
    pub router: PeerId,
    /// Unix time of the judgement, milliseconds.
    pub issued_at_ms: u64,
}

/// Signed proof that an orchestrator returned a result its model did not
/// produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudEvidence {
    /// What is alleged, as signed.
    pub body: FraudEvidenceBody,
    /// The router's signature.
    #[serde(with = "serde_bytes")]
    pub router_sig: Vec<u8>,
}

impl FraudEvidenceBody {
    /// Checks the body and signs it as its router, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<FraudEvidence, EvidenceError> {
        if key.public().to_peer_id() != self.router {
            return Err(EvidenceError::Signature("router"));
        }
        self.check()?;
        let router_sig = key
            .sign(&signing_bytes(EVIDENCE_DOMAIN, &self)?)
            .map_err(|e| EvidenceError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(FraudEvidence {
            body: self,
            router_sig,
        })
    }

    fn check(&self) -> Result<(), EvidenceError> {
        self.receipt.verify_orchestrator()?;
        if !(self.tolerance.is_finite() && self.tolerance >= MIN_TOLERANCE) {
            return Err(EvidenceError::Tolerance(self.tolerance));
        }
        if self.receipt.body.router != self.router {
            return Err(EvidenceError::WrongRouter);
        }
        let accused = &self.receipt.body.orchestrator;
        if self.reports.len() < MIN_REPORTS || self.reports.len() > MAX_REPORTS {
            return Err(EvidenceError::Reports);
        }
        for (i, r) in self.reports.iter().enumerate() {
            if &r.body.verifier == accused
                || self.reports[..i]
                    .iter()
                    .any(|o| o.body.verifier == r.body.verifier)
            {
                return Err(EvidenceError::Reports);
            }
            if r.body.router != self.router {
                return Err(EvidenceError::WrongRouter);
            }
            r.verify(&self.receipt.body)?;
            if r.body
                .findings
                .judge(&self.receipt.body, self.tolerance)
                .is_ok()
            {
                return Err(EvidenceError::NotFraud(self.tolerance));
            }
        }
        Ok(())
    }
}

impl FraudEvidence {
    /// Checks every signature and that every report shows fraud.
    pub fn verify(&self) -> Result<(), EvidenceError> {
        check_sig(
            &self.body.router,
            &signing_bytes(EVIDENCE_DOMAIN, &self.body)?,
            &self.router_sig,
            "router",
        )?;
        self.body.check()
    }

    /// The evidence hash recorded by `slash` on the chain.
    pub fn hash(&self) -> Result<Digest, EvidenceError> {
        Ok(Digest::of(&signing_bytes(EVIDENCE_DOMAIN, self)?))
    }

    /// The accused orchestrator.
    pub fn accused(&self) -> PeerId {
        self.body.receipt.body.orchestrator
    }

    /// Canonical CBOR encoding, for storage.
    pub fn to_cbor(&self) -> Result<Vec<u8>, EvidenceError> {
        let mut out = Vec::new();
        cbor4ii::serde::to_writer(&mut out, self)
            .map_err(|e| EvidenceError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(out)
    }

    /// Decodes [`to_cbor`](Self::to_cbor)'s output.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, EvidenceError> {
        cbor4ii::serde::from_slice(bytes)
            .map_err(|e| EvidenceError::Encode(crate::wire::SourceError::new(e)))
    }
}

#[cfg(test)]
mod tests;
