//! Limits of the sampling parameters against the messages that carry them.

use super::*;
use crate::ids::{Digest, TaskId};
use crate::messages::{TaskRequest, TaskSpec};
use crate::receipt::{RECEIPT_VERSION, ReceiptBody};
use crate::wire::Wire;
use libp2p_identity::Keypair;

fn keypair(seed: [u8; 32]) -> Keypair {
    Keypair::ed25519_from_bytes(seed).unwrap()
}

/// The largest sampling a task may carry: every list and string at its cap.
fn maximal_sampling() -> SamplingParams {
    SamplingParams {
        max_tokens: MAX_OUTPUT_TOKENS,
        temperature: 2.0,
        top_p: 1.0,
        seed: u64::MAX,
        top_k: u32::MAX,
        min_p: 0.5,
        repeat_penalty: 2.0,
        presence_penalty: -2.0,
        frequency_penalty: 2.0,
        stop: vec!["\u{10FFFF}".repeat(MAX_STOP_BYTES / 4); MAX_STOP_STRINGS],
        logit_bias: (0..MAX_LOGIT_BIAS as u32)
            .map(|i| (u32::MAX - i, -100.0))
            .collect(),
        n_probs: MAX_N_PROBS,
        grammar: Some("g".repeat(MAX_GRAMMAR_BYTES)),
    }
}

#[test]
fn a_maximal_sampling_fits_every_message_that_carries_it() {
    let s = maximal_sampling();
    s.validate().unwrap();
    let orch = keypair([1; 32]);
    let router = keypair([2; 32]);
    let body = ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([7; 16]),
        model: Digest::of(b"m"),
        prompt_hash: Digest::of(b"p"),
        output_hash: Digest::of(b"o"),
        output_tokens_hash: Digest::of_tokens(&[]),
        sampling: s.clone(),
        format: PromptFormat::Chat,
        finish: FinishReason::MaxTokens,
        prompt_tokens: u32::MAX,
        output_tokens: u32::MAX,
        compute_ms: u64::MAX,
        orchestrator: orch.public().to_peer_id(),
        router: router.public().to_peer_id(),
        started_at_ms: u64::MAX,
        finished_at_ms: u64::MAX,
        delegation: Some(Digest::of(b"d")),
        resumed: None,
    };
    let mut receipt = body.sign(&orch).unwrap();
    receipt.countersign(&router).unwrap();
    receipt.encode().unwrap();
    let spec = TaskSpec {
        model: Some("m".repeat(MAX_MODEL_NAME_BYTES)),
        prompt: "x".repeat(MAX_PROMPT_BYTES),
        format: PromptFormat::Raw,
        sampling: s,
        max_price_per_unit: None,
        request_id: None,
    };
    spec.validate().unwrap();
    TaskRequest::Submit(spec).encode().unwrap();
    // One more stop string, or a longer grammar, is refused.
    let mut over = maximal_sampling();
    over.stop.push("x".into());
    assert!(over.validate().is_err());
    let mut over = maximal_sampling();
    over.grammar = Some("g".repeat(MAX_GRAMMAR_BYTES + 1));
    assert!(over.validate().is_err());
    let nan = SamplingParams {
        min_p: f32::NAN,
        ..SamplingParams::default()
    };
    assert!(nan.validate().is_err());
}
