//! Receipt anchoring cost: one `anchor_receipts` call per batch of B receipts
//! (a Merkle root) next to the one-call-per-task baseline (B = 1), measured
//! in the same run through the embedded ledger (redb, a durable commit per
//! call) and the router's receipt log.
//!
//! Per receipt it prints: ledger calls, contract-argument bytes (BCS, what a
//! chain stores and charges for; each Aptos transaction adds its own ~250-byte
//! envelope on top), the embedded ledger's logged operation bytes, the
//! off-chain proof size, and wall time.
//!
//! ```text
//! cargo bench -p cactus-node --bench anchoring
//! BENCH_RECEIPTS=4096 cargo bench -p cactus-node --bench anchoring
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use cactus_node::chain::ChainBackend;
use cactus_node::chain::embedded::{Embedded, EmbeddedChain, LocalSettings};
use cactus_node::receipt_log::ReceiptLog;
use cactus_node::roles::anchor::{self, AnchorPolicy};
use cactus_protocol::contract::Address;
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::{Digest, Receipt, ReceiptBody, SamplingParams, TaskId};
use libp2p::identity::Keypair;
use std::sync::Arc;
use std::time::Instant;

/// BCS size of `anchor_receipts(merkle_root, count, first_task, last_task)`'s
/// arguments: three `vector<u8>` (a one-byte length prefix each) and a u64.
const ANCHOR_ARG_BYTES: usize = (1 + 32) + 8 + (1 + 16) + (1 + 16);

fn receipts(n: usize) -> Vec<Receipt> {
    let orch = Keypair::generate_ed25519();
    let router = Keypair::generate_ed25519();
    (0..n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let body = ReceiptBody {
                version: RECEIPT_VERSION,
                task_id: TaskId(id),
                model: Digest::of(b"model"),
                prompt_hash: Digest::of(&id),
                output_hash: Digest::of(&id[..8]),
                output_tokens_hash: Digest::of_tokens(&[]),
                sampling: SamplingParams::default(),
                format: cactus_protocol::PromptFormat::Chat,
                finish: cactus_protocol::FinishReason::MaxTokens,
                prompt_tokens: 12,
                output_tokens: 128,
                compute_ms: 2_000,
                orchestrator: orch.public().to_peer_id(),
                router: router.public().to_peer_id(),
                started_at_ms: 1,
                finished_at_ms: 2,
                delegation: None,
                resumed: None,
            };
            let mut r = body.sign(&orch).unwrap();
            r.countersign(&router).unwrap();
            r
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("BENCH_RECEIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let all = receipts(n);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("anchoring: {n} receipts, embedded ledger (redb, durable commit per call)");
    println!(
        "{:>6} {:>7} {:>12} {:>16} {:>15} {:>13} {:>12}",
        "batch",
        "calls",
        "calls/rcpt",
        "arg bytes/rcpt",
        "log bytes/rcpt",
        "proof bytes",
        "us/rcpt"
    );
    // What the embedded ledger logs per call: the CBOR operation.
    let op_bytes = cbor4ii::serde::to_vec(
        Vec::new(),
        &cactus_protocol::contract::Op::AnchorReceipts {
            merkle_root: vec![0; 32],
            count: 1,
            first_task: vec![0; 16],
            last_task: vec![0; 16],
        },
    )
    .unwrap()
    .len();
    let mut baseline_us = 0.0;
    for batch in [1usize, 16, AnchorPolicy::default().batch, 256, 1024] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(ReceiptLog::open(dir.path()).unwrap());
        for r in &all {
            ledger.append(r).unwrap();
        }
        let chain =
            EmbeddedChain::open(dir.path(), Address([1; 32]), &LocalSettings::default()).unwrap();
        let ops_before = chain.len().unwrap();
        let backend: Arc<dyn ChainBackend> = Arc::new(Embedded(Arc::clone(&chain)));
        let started = Instant::now();
        let mut calls = 0u64;
        rt.block_on(async {
            while anchor::anchor_once(&ledger, backend.as_ref(), batch)
                .await
                .unwrap()
                > 0
            {
                calls += 1;
            }
        });
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        assert_eq!(chain.len().unwrap() - ops_before, calls);
        let proof = ledger.proof(&all[0].body.task_id).unwrap().unwrap();
        let proof_bytes = proof.proof.path.len() * 33;
        if batch == 1 {
            baseline_us = us;
        }
        if batch == AnchorPolicy::default().batch {
            println!(
                "SUMMARY|receipts anchored per ledger transaction (default batch {batch})|{:.1}|1|{:.0}×|-",
                n as f64 / calls as f64,
                n as f64 / calls as f64
            );
        }
        println!(
            "{batch:>6} {calls:>7} {:>12.4} {:>16.2} {:>15.1} {proof_bytes:>13} {us:>12.1}{}",
            calls as f64 / n as f64,
            (calls as usize * ANCHOR_ARG_BYTES) as f64 / n as f64,
            (calls as usize * op_bytes) as f64 / n as f64,
            if batch == 1 {
                "   (baseline: one call per task)".to_owned()
            } else {
                format!(
                    "   {:.0}x fewer calls, {:.1}x faster",
                    n as f64 / calls as f64,
                    baseline_us / us
                )
            },
        );
    }
}
