//! Fixtures shared by the crate's unit tests.

use cactus_protocol::receipt::{RECEIPT_VERSION, Receipt, ReceiptBody};
use cactus_protocol::{Digest, FinishReason, PromptFormat, SamplingParams, TaskId};
use libp2p::identity::Keypair;

/// A plausible receipt body for task `id`, run by `orch` for `router`:
/// 9 prompt tokens, output "because" as tokens `[10, 11]`. Tests change the
/// fields they care about with struct update syntax.
pub fn receipt_body(orch: &Keypair, router: &Keypair, id: TaskId) -> ReceiptBody {
    ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: id,
        model: Digest::of(b"model"),
        prompt_hash: Digest::of(b"why?"),
        output_hash: Digest::of(b"because"),
        output_tokens_hash: Digest::of_tokens(&[10, 11]),
        sampling: SamplingParams::default(),
        format: PromptFormat::Raw,
        finish: FinishReason::EndOfGeneration,
        prompt_tokens: 9,
        output_tokens: 2,
        compute_ms: 10,
        orchestrator: orch.public().to_peer_id(),
        router: router.public().to_peer_id(),
        started_at_ms: 100,
        finished_at_ms: 110,
        delegation: None,
        resumed: None,
    }
}

/// `body` signed by `orch` and countersigned by `router`, as a router logs it.
pub fn countersigned(body: ReceiptBody, orch: &Keypair, router: &Keypair) -> Receipt {
    let mut r = body
        .sign(orch)
        .expect("the orchestrator signs its own body");
    r.countersign(router)
        .expect("the router countersigns its own task");
    r
}
