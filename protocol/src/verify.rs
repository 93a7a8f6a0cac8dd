//! The checks a router makes on an orchestrator's result before it
//! countersigns: the receipt is signed by the orchestrator it asked, names the
//! task, model, prompt and sampling it was given, hashes the text it returned,
//! and counts tokens consistently with the stop reason.

use crate::delegation::{DelegationError, MAX_DELEGATION_DEPTH, chain_hash, verify_chain};
use crate::ids::Digest;
use crate::messages::{Assignment, TaskResult};
use crate::params::{FinishReason, MAX_OUTPUT_BYTES};
use crate::receipt::ReceiptError;
use libp2p_identity::PeerId;

/// Why a result is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The orchestrator's signature does not verify.
    #[error(transparent)]
    Signature(#[from] ReceiptError),
    /// The receipt names another task, model, prompt, sampling or peer.
    #[error("the receipt's {0} does not match the assignment")]
    Mismatch(&'static str),
    /// The output hash is not the hash of the returned text.
    #[error("the receipt's output hash does not match the returned text")]
    OutputHash,
    /// The token ids are not the ones the receipt commits to.
    #[error("the receipt's token hash or count does not match the returned tokens")]
    TokensHash,
    /// Token counts are impossible for the request and stop reason.
    #[error("implausible token counts: {0}")]
    TokenCounts(&'static str),
    /// The delegation chain is invalid.
    #[error("delegation: {0}")]
    Delegation(#[from] DelegationError),
    /// Timestamps run backwards.
    #[error("the receipt finishes before it starts")]
    Timestamps,
}

/// Checks `result` against the `assignment` that `router` sent to `orchestrator`.
pub fn check_result(
    assignment: &Assignment,
    router: &PeerId,
    orchestrator: &PeerId,
    result: &TaskResult,
) -> Result<(), ResultError> {
    let body = &result.receipt.body;
    // Run by the orchestrator asked, or by one it delegated to along a valid
    // chain that the receipt commits to.
    if result.delegation.is_empty() {
        if &body.orchestrator != orchestrator {
            return Err(ResultError::Mismatch("orchestrator"));
        }
        if body.delegation.is_some() {
            return Err(ResultError::Mismatch("delegation"));
        }
    } else {
        if result.delegation.len() > MAX_DELEGATION_DEPTH {
            return Err(ResultError::Delegation(DelegationError::TooDeep {
                len: result.delegation.len(),
                max: MAX_DELEGATION_DEPTH,
            }));
        }
        if body.delegation != Some(chain_hash(&result.delegation)?) {
            return Err(ResultError::Mismatch("delegation"));
        }
        verify_chain(
            &result.delegation,
            &assignment.task_id,
            router,
            orchestrator,
            &body.orchestrator,
            MAX_DELEGATION_DEPTH,
            body.finished_at_ms,
        )?;
    }
    result.receipt.verify_orchestrator()?;
    if &body.router != router {
        return Err(ResultError::Mismatch("router"));
    }
    if body.task_id != assignment.task_id {
        return Err(ResultError::Mismatch("task id"));
    }
    if body.model != assignment.model {
        return Err(ResultError::Mismatch("model"));
    }
    if body.prompt_hash != Digest::of(assignment.prompt.as_bytes()) {
        return Err(ResultError::Mismatch("prompt hash"));
    }
    if body.sampling != assignment.sampling {
        return Err(ResultError::Mismatch("sampling parameters"));
    }
    if body.format != assignment.format {
        return Err(ResultError::Mismatch("prompt format"));
    }
    if body.resumed
        != assignment
            .resume
            .as_ref()
            .map(crate::messages::Resume::digest)
    {
        return Err(ResultError::Mismatch("resumed tokens"));
    }
    if body.finish != result.finish {
        return Err(ResultError::Mismatch("stop reason"));
    }
    if body.output_hash != Digest::of(result.text.as_bytes()) {
        return Err(ResultError::OutputHash);
    }
    if body.output_tokens as usize != result.tokens.len()
        || body.output_tokens_hash != Digest::of_tokens(&result.tokens)
    {
        return Err(ResultError::TokensHash);
    }
    if body.prompt_tokens == 0 {
        return Err(ResultError::TokenCounts("no prompt tokens"));
    }
    let max = assignment.sampling.max_tokens;
    if body.output_tokens > max {
        return Err(ResultError::TokenCounts(
            "more output tokens than max_tokens",
        ));
    }
    if body.output_tokens == 0 && !result.text.is_empty() {
        return Err(ResultError::TokenCounts("text without tokens"));
    }
    if result.finish == FinishReason::MaxTokens
        && body.output_tokens < max
        && result.text.len() < MAX_OUTPUT_BYTES
    {
        return Err(ResultError::TokenCounts(
            "stopped at max_tokens before reaching it",
        ));
    }
    if result.finish == FinishReason::Stop && assignment.sampling.stop.is_empty() {
        return Err(ResultError::TokenCounts(
            "stopped at a stop string the task did not give",
        ));
    }
    if body.finished_at_ms < body.started_at_ms {
        return Err(ResultError::Timestamps);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TaskId;
    use crate::params::{PromptFormat, SamplingParams};
    use crate::receipt::{RECEIPT_VERSION, ReceiptBody};
    use libp2p_identity::Keypair;

    fn setup() -> (Assignment, Keypair, PeerId, TaskResult) {
        let orch = Keypair::generate_ed25519();
        let router = Keypair::generate_ed25519().public().to_peer_id();
        let a = Assignment {
            task_id: TaskId([3; 16]),
            model: Digest::of(b"model"),
            prompt: "why?".into(),
            format: PromptFormat::Chat,
            sampling: SamplingParams {
                max_tokens: 4,
                ..SamplingParams::default()
            },
            deadline_ms: 1_000,
            resume: None,
        };
        let text = "because".to_owned();
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            task_id: a.task_id,
            model: a.model,
            prompt_hash: Digest::of(a.prompt.as_bytes()),
            output_hash: Digest::of(text.as_bytes()),
            output_tokens_hash: Digest::of_tokens(&[10, 11]),
            sampling: a.sampling.clone(),
            format: PromptFormat::Chat,
            finish: FinishReason::EndOfGeneration,
            prompt_tokens: 9,
            output_tokens: 2,
            compute_ms: 10,
            orchestrator: orch.public().to_peer_id(),
            router,
            started_at_ms: 100,
            finished_at_ms: 110,
            delegation: None,
            resumed: None,
        };
        let receipt = body.sign(&orch).unwrap();
        let r = TaskResult {
            text,
            tokens: vec![10, 11],
            finish: FinishReason::EndOfGeneration,
            receipt,
            delegation: Vec::new(),
            resumed: None,
        };
        (a, orch, router, r)
    }

    #[test]
    fn honest_result_passes_and_each_lie_is_caught() {
        let (a, orch, router, r) = setup();
        let o = orch.public().to_peer_id();
        check_result(&a, &router, &o, &r).unwrap();

        let mut bad = r.clone();
        bad.text.push('!');
        assert_eq!(
            check_result(&a, &router, &o, &bad),
            Err(ResultError::OutputHash)
        );

        let mut bad = r.clone();
        bad.tokens[1] = 12;
        assert_eq!(
            check_result(&a, &router, &o, &bad),
            Err(ResultError::TokensHash)
        );

        let mut other = a.clone();
        other.prompt = "how?".into();
        assert_eq!(
            check_result(&other, &router, &o, &r),
            Err(ResultError::Mismatch("prompt hash"))
        );

        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(
            check_result(&a, &stranger, &o, &r),
            Err(ResultError::Mismatch("router"))
        );
        assert_eq!(
            check_result(&a, &router, &stranger, &r),
            Err(ResultError::Mismatch("orchestrator"))
        );

        // Re-signed lies: the orchestrator cannot claim impossible counts.
        let resign = |f: &dyn Fn(&mut ReceiptBody), finish| {
            let mut body = r.receipt.body.clone();
            f(&mut body);
            body.finish = finish;
            // Consistent tokens, so that only the counts are wrong.
            let tokens: Vec<u32> = (0..body.output_tokens).collect();
            body.output_tokens_hash = Digest::of_tokens(&tokens);
            TaskResult {
                text: r.text.clone(),
                tokens,
                finish,
                receipt: body.sign(&orch).unwrap(),
                delegation: Vec::new(),
                resumed: None,
            }
        };
        let many = resign(&|b| b.output_tokens = 5, FinishReason::EndOfGeneration);
        assert!(matches!(
            check_result(&a, &router, &o, &many),
            Err(ResultError::TokenCounts(_))
        ));
        let early = resign(&|b| b.output_tokens = 3, FinishReason::MaxTokens);
        assert!(matches!(
            check_result(&a, &router, &o, &early),
            Err(ResultError::TokenCounts(_))
        ));
        let back = resign(&|b| b.finished_at_ms = 1, FinishReason::EndOfGeneration);
        assert_eq!(
            check_result(&a, &router, &o, &back),
            Err(ResultError::Timestamps)
        );

        // A forged signature.
        let mut forged = r;
        forged.receipt.orchestrator_sig[0] ^= 1;
        assert!(matches!(
            check_result(&a, &router, &o, &forged),
            Err(ResultError::Signature(_))
        ));
    }

    #[test]
    fn a_resumed_result_commits_to_the_tokens_it_continued() {
        let (mut a, orch, router, r) = setup();
        let o = orch.public().to_peer_id();
        a.resume = Some(crate::messages::Resume {
            tokens: vec![7, 8],
            shown: "be".into(),
        });
        // A receipt that does not say it resumed is not this task's.
        assert_eq!(
            check_result(&a, &router, &o, &r),
            Err(ResultError::Mismatch("resumed tokens"))
        );
        let mut body = r.receipt.body.clone();
        body.resumed = a.resume.as_ref().map(crate::messages::Resume::digest);
        let resumed = TaskResult {
            receipt: body.clone().sign(&orch).unwrap(),
            ..r.clone()
        };
        check_result(&a, &router, &o, &resumed).unwrap();
        // Other resumed tokens.
        body.resumed = Some(Digest::of_tokens(&[7]));
        let other = TaskResult {
            receipt: body.sign(&orch).unwrap(),
            ..r
        };
        assert_eq!(
            check_result(&a, &router, &o, &other),
            Err(ResultError::Mismatch("resumed tokens"))
        );
    }

    #[test]
    fn delegated_results_need_the_chain_their_receipt_commits_to() {
        let (a, assigned, router, r) = setup();
        let assigned_peer = assigned.public().to_peer_id();
        let child = Keypair::generate_ed25519();
        let child_peer = child.public().to_peer_id();
        let chain = crate::delegation::extend(&[], &assigned, a.task_id, router, child_peer, 1_000)
            .unwrap();
        let chain = vec![chain];
        let mut body = r.receipt.body.clone();
        body.orchestrator = child_peer;
        body.delegation = Some(chain_hash(&chain).unwrap());
        let delegated = TaskResult {
            receipt: body.clone().sign(&child).unwrap(),
            delegation: chain.clone(),
            ..r.clone()
        };
        check_result(&a, &router, &assigned_peer, &delegated).unwrap();

        // Without its chain, the child's receipt is not the assigned one's.
        let bare = TaskResult {
            delegation: Vec::new(),
            ..delegated.clone()
        };
        assert!(matches!(
            check_result(&a, &router, &assigned_peer, &bare),
            Err(ResultError::Mismatch(_))
        ));
        // A chain the receipt does not commit to.
        let mut other = body.clone();
        other.delegation = None;
        let uncommitted = TaskResult {
            receipt: other.sign(&child).unwrap(),
            ..delegated.clone()
        };
        assert_eq!(
            check_result(&a, &router, &assigned_peer, &uncommitted),
            Err(ResultError::Mismatch("delegation"))
        );
        // A chain that starts at someone the router did not assign.
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            check_result(&a, &router, &stranger, &delegated),
            Err(ResultError::Delegation(_))
        ));
        // Finished after the delegation's deadline.
        let mut late = body;
        late.finished_at_ms = 2_000;
        let late = TaskResult {
            receipt: late.sign(&child).unwrap(),
            ..delegated
        };
        assert!(matches!(
            check_result(&a, &router, &assigned_peer, &late),
            Err(ResultError::Delegation(DelegationError::Late { .. }))
        ));
    }
}
