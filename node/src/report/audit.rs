//! The audit of a receipt file (`cactus-node receipt verify`): each check
//! with whether it passed and why, so that a failure says which one.

use super::output::BundleJson;
use cactus_protocol::contract::Anchor;
use cactus_protocol::merkle::{AnchorProof, ReceiptBundle};
use serde::Serialize;
use std::fmt;
use std::future::Future;

/// One check of a receipt file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    /// What was found: the signer, the root, or why the check failed.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            passed,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            if self.passed { "ok  " } else { "FAIL" },
            self.name
        )?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

pub const DECODES: &str = "receipt file decodes";
pub const ORCHESTRATOR_SIG: &str = "orchestrator signature";
pub const ROUTER_SIG: &str = "router countersignature";
pub const ANCHOR_PROOF: &str = "anchor proof";
pub const MERKLE: &str = "Merkle proof leads to the batch root";
pub const ANCHORED: &str = "root is anchored on the chain";

/// Checks what a bundle proves by itself: both signatures and, when it has
/// an anchor proof, that the proof leads from the receipt to the root.
pub fn check_bundle(bundle: &ReceiptBundle) -> Vec<Check> {
    let r = &bundle.receipt;
    let sig = |res: Result<(), cactus_protocol::ReceiptError>, signer: libp2p::PeerId| match res {
        Ok(()) => (true, signer.to_string()),
        Err(e) => (false, e.to_string()),
    };
    let (ok, detail) = sig(r.verify_orchestrator(), r.body.orchestrator);
    let mut checks = vec![Check::new(ORCHESTRATOR_SIG, ok, detail)];
    let (ok, detail) = sig(r.verify(), r.body.router);
    checks.push(Check::new(ROUTER_SIG, ok, detail));
    match &bundle.anchor {
        None => checks.push(Check::new(
            ANCHOR_PROOF,
            false,
            "the receipt is not anchored yet (fetch it again later)",
        )),
        Some(a) => checks.push(match r.hash() {
            Ok(hash) => Check::new(
                MERKLE,
                a.proof.verify(&hash, &a.root),
                format!("root {}", a.root),
            ),
            Err(e) => Check::new(MERKLE, false, format!("the receipt does not hash: {e}")),
        }),
    }
    checks
}

/// Checks that the root of `proof` is the one anchored on the chain at its
/// index, given what the chain holds there (or why it could not be read).
pub fn check_anchored<E: fmt::Display>(
    proof: &AnchorProof,
    on_chain: Result<Option<Anchor>, E>,
) -> Check {
    let i = proof.anchor_index;
    match on_chain {
        Ok(Some(x)) if x.root == proof.root => Check::new(
            ANCHORED,
            true,
            format!("batch {i} of {} receipts by {}", x.count, x.server),
        ),
        Ok(Some(x)) => Check::new(
            ANCHORED,
            false,
            format!("batch {i} has root {}, not {}", x.root, proof.root),
        ),
        Ok(None) => Check::new(ANCHORED, false, format!("the chain has no batch {i}")),
        Err(e) => Check::new(ANCHORED, false, e.to_string()),
    }
}

/// Audits a receipt file's text: it decodes, both signatures hold, the
/// Merkle proof leads to its root, and `anchor_at(index)` (the chain, read
/// however the caller can) holds that root. Stops after a failed decode.
pub async fn audit<F, Fut, E>(text: &str, anchor_at: F) -> Vec<Check>
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = Result<Option<Anchor>, E>>,
    E: fmt::Display,
{
    let bundle = match BundleJson::parse(text) {
        Ok(b) => b,
        Err(e) => {
            let detail = error_chain(&e);
            return vec![Check::new(DECODES, false, detail)];
        }
    };
    let mut checks = vec![Check::new(DECODES, true, "")];
    checks.extend(check_bundle(&bundle));
    if let Some(a) = &bundle.anchor {
        checks.push(check_anchored(a, anchor_at(a.anchor_index).await));
    }
    checks
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{countersigned, receipt_body};
    use cactus_protocol::contract::Address;
    use cactus_protocol::merkle::{self, AnchorProof};
    use cactus_protocol::receipt::ReceiptBody;
    use cactus_protocol::{Digest, PromptFormat, Receipt, TaskId};
    use libp2p::identity::Keypair;

    fn receipt(orch: &Keypair, router: &Keypair, id: u8) -> Receipt {
        let body = ReceiptBody {
            model: Digest([2; 32]),
            prompt_hash: Digest::of(b"prompt"),
            output_hash: Digest::of(b"output"),
            format: PromptFormat::Chat,
            prompt_tokens: 3,
            ..receipt_body(orch, router, TaskId([id; 16]))
        };
        countersigned(body, orch, router)
    }

    fn anchored(receipts: &[Receipt], i: usize) -> (ReceiptBundle, Anchor) {
        let hashes: Vec<Digest> = receipts.iter().map(|r| r.hash().unwrap()).collect();
        let (root, proofs) = merkle::build(&hashes).unwrap();
        let bundle = ReceiptBundle {
            receipt: receipts[i].clone(),
            anchor: Some(AnchorProof {
                anchor_index: 0,
                root,
                proof: proofs[i].clone(),
            }),
        };
        let anchor = Anchor {
            server: Address([1; 32]),
            root,
            count: receipts.len() as u64,
            first_task: TaskId([0; 16]),
            last_task: TaskId([0; 16]),
            anchored_at: 0,
        };
        (bundle, anchor)
    }

    fn text(b: &ReceiptBundle) -> String {
        serde_json::to_string(&BundleJson::from(b)).unwrap()
    }

    #[tokio::test]
    async fn an_anchored_receipt_passes_every_check() {
        let (o, r) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let rs: Vec<Receipt> = (0..3).map(|i| receipt(&o, &r, i)).collect();
        let (bundle, anchor) = anchored(&rs, 1);
        let checks = audit(&text(&bundle), |i| async move {
            assert_eq!(i, 0);
            Ok::<_, String>(Some(anchor))
        })
        .await;
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [DECODES, ORCHESTRATOR_SIG, ROUTER_SIG, MERKLE, ANCHORED]
        );
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
    }

    #[tokio::test]
    async fn each_failure_is_named() {
        let (o, r) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let rs: Vec<Receipt> = (0..2).map(|i| receipt(&o, &r, i)).collect();
        let (mut bundle, mut anchor) = anchored(&rs, 0);
        // Another router's countersignature over the same body.
        bundle.receipt.router_sig = rs[1].router_sig.clone();
        anchor.root = Digest([7; 32]);
        let checks = audit(
            &text(&bundle),
            |_| async move { Ok::<_, String>(Some(anchor)) },
        )
        .await;
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, [ROUTER_SIG, MERKLE, ANCHORED], "{checks:?}");

        let (bundle, _) = anchored(&rs, 0);
        let checks = audit(&text(&bundle), |_| async { Ok::<_, String>(None) }).await;
        assert_eq!(
            checks.last().map(|c| (c.name, c.passed)),
            Some((ANCHORED, false))
        );
        let checks = audit(&text(&bundle), |_| async { Err("no chain to ask") }).await;
        assert_eq!(
            checks.last().map(|c| c.detail.as_str()),
            Some("no chain to ask")
        );
    }

    #[tokio::test]
    async fn an_unanchored_receipt_and_a_bad_file_fail() {
        let (o, r) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let bundle = ReceiptBundle {
            receipt: receipt(&o, &r, 0),
            anchor: None,
        };
        let checks = audit(&text(&bundle), |_| async { Ok::<_, String>(None) }).await;
        assert_eq!(checks.len(), 4);
        assert_eq!(checks[3].name, ANCHOR_PROOF);
        assert!(!checks[3].passed);

        let checks = audit("{\"receipt\": \"zz\"}", |_| async { Ok::<_, String>(None) }).await;
        assert_eq!(checks.len(), 1);
        assert_eq!((checks[0].name, checks[0].passed), (DECODES, false));
        assert!(checks[0].detail.contains("not hex"), "{}", checks[0].detail);
        assert_eq!(
            checks[0].to_string().split(':').next(),
            Some("FAIL receipt file decodes")
        );
    }
}
