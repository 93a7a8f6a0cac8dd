use super::*;
use crate::receipt::RECEIPT_VERSION;

fn receipt(orch: &Keypair, router: &PeerId) -> Receipt {
    ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([1; 16]),
        model: Digest::of(b"m"),
        prompt_hash: Digest::of(b"p"),
        output_hash: Digest::of(b"o"),
        output_tokens_hash: Digest::of_tokens(&[5, 6, 7]),
        sampling: SamplingParams::default(),
        format: PromptFormat::Chat,
        finish: FinishReason::MaxTokens,
        prompt_tokens: 4,
        output_tokens: 3,
        compute_ms: 9,
        orchestrator: orch.public().to_peer_id(),
        router: *router,
        started_at_ms: 1,
        finished_at_ms: 2,
        delegation: None,
        resumed: None,
    }
    .sign(orch)
    .unwrap()
}

fn findings(max_gap: f32) -> ReplayFindings {
    ReplayFindings {
        prompt_tokens: 4,
        positions: 3,
        mismatches: u32::from(max_gap > 0.0),
        max_gap,
        worst: vec![PositionGap {
            position: 1,
            token: 6,
            expected: 8,
            gap: max_gap,
        }],
        text_matches: true,
        stop_gap: None,
        compute_ms: 3,
    }
}

fn report(v: &Keypair, router: &PeerId, r: &Receipt, gap: f32) -> ReplayReport {
    ReplayReportBody {
        task_id: r.body.task_id,
        receipt: r.body.digest().unwrap(),
        verifier: v.public().to_peer_id(),
        router: *router,
        findings: findings(gap),
    }
    .sign(v)
    .unwrap()
}

#[test]
fn judge_applies_the_tolerance_and_every_other_check() {
    let orch = Keypair::generate_ed25519();
    let r = receipt(&orch, &Keypair::generate_ed25519().public().to_peer_id()).body;
    assert_eq!(findings(0.0).judge(&r, 1.0), Ok(()));
    assert_eq!(findings(0.6).judge(&r, 1.0), Ok(()));
    assert!(matches!(
        findings(1.2).judge(&r, 1.0),
        Err(FraudReason::OffModel { position: 1, .. })
    ));
    assert!(findings(f32::NAN).judge(&r, 1.0).is_err());
    let mut f = findings(0.0);
    f.text_matches = false;
    assert_eq!(f.judge(&r, 1.0), Err(FraudReason::TextMismatch));
    let mut f = findings(0.0);
    f.prompt_tokens = 5;
    assert!(matches!(
        f.judge(&r, 1.0),
        Err(FraudReason::PromptTokens { .. })
    ));
    let mut f = findings(0.0);
    f.positions = 2;
    assert!(matches!(
        f.judge(&r, 1.0),
        Err(FraudReason::Incomplete { .. })
    ));
    let mut f = findings(0.0);
    f.stop_gap = Some(3.0);
    assert!(matches!(f.judge(&r, 1.0), Err(FraudReason::Stop { .. })));
}

#[test]
fn evidence_verifies_and_every_forgery_is_caught() {
    let (orch, router, v1, v2) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let rp = router.public().to_peer_id();
    let r = receipt(&orch, &rp);
    let body = FraudEvidenceBody {
        receipt: r.clone(),
        reports: vec![report(&v1, &rp, &r, 4.0), report(&v2, &rp, &r, 3.5)],
        tolerance: 1.0,
        router: rp,
        issued_at_ms: 10,
    };
    let ev = body.clone().sign(&router).unwrap();
    ev.verify().unwrap();
    assert_eq!(ev.accused(), orch.public().to_peer_id());
    assert_eq!(
        FraudEvidence::from_cbor(&ev.to_cbor().unwrap()).unwrap(),
        ev
    );
    let h = ev.hash().unwrap();

    // The router's signature covers everything.
    let mut t = ev.clone();
    t.body.tolerance = 5.0;
    assert_eq!(t.verify(), Err(EvidenceError::Signature("router")));
    assert_ne!(t.hash().unwrap(), h);
    // Only the named router signs.
    assert!(body.clone().sign(&v1).is_err());
    // One report, or a tolerance under the floor, is no evidence.
    let mut b = body.clone();
    b.reports.pop();
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::Reports);
    let mut b = body.clone();
    b.tolerance = 0.1;
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::Tolerance(0.1));
    let mut b = body.clone();
    b.tolerance = f32::NAN;
    assert!(matches!(b.sign(&router), Err(EvidenceError::Tolerance(_))));
    // Reports made for another router.
    let other_router = Keypair::generate_ed25519().public().to_peer_id();
    let mut b = body.clone();
    b.reports[0] = report(&v1, &other_router, &r, 4.0);
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::WrongRouter);
    // A report that shows no fraud is no evidence.
    let mut b = body.clone();
    b.reports[1] = report(&v2, &rp, &r, 0.3);
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::NotFraud(1.0));
    // A report about another receipt.
    let other = receipt(&Keypair::generate_ed25519(), &rp);
    let mut b = body.clone();
    b.reports[0] = report(&v1, &rp, &other, 4.0);
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::WrongReceipt);
    // Two reports by one verifier, or by the accused.
    let mut b = body.clone();
    b.reports[1] = report(&v1, &rp, &r, 4.0);
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::Reports);
    let mut b = body.clone();
    b.reports[1] = report(&orch, &rp, &r, 4.0);
    assert_eq!(b.sign(&router).unwrap_err(), EvidenceError::Reports);
    // A forged verifier signature.
    let mut b = body.clone();
    b.reports[0].sig[3] ^= 1;
    assert_eq!(
        b.sign(&router).unwrap_err(),
        EvidenceError::Signature("verifier")
    );
    // A tampered receipt.
    let mut b = body;
    b.receipt.body.output_tokens = 2;
    assert!(matches!(
        b.sign(&router).unwrap_err(),
        EvidenceError::Receipt(_)
    ));
}
