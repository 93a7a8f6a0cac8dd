//! Property tests for every wire type: round trips, caps, truncation, bit
//! flips, and receipt tamper-evidence.

use crate::contract::{Address, Anchor, Orchestrator};
use crate::merkle::{AnchorProof, ReceiptBundle};
use crate::messages::*;
use crate::receipt::*;
use crate::wire::*;
use crate::{Digest, TaskId};
use libp2p_identity::{Keypair, PeerId};
use proptest::prelude::*;

fn keypair(seed: [u8; 32]) -> Keypair {
    Keypair::ed25519_from_bytes(seed).unwrap()
}

fn arb_keypair() -> impl Strategy<Value = Keypair> {
    any::<[u8; 32]>().prop_map(keypair)
}

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn arb_sampling() -> impl Strategy<Value = SamplingParams> {
    let core = (
        1..=MAX_OUTPUT_TOKENS,
        0.0f32..=2.0,
        0.01f32..=1.0,
        any::<u64>(),
        0u32..100,
        0.0f32..0.99,
    );
    let extra = (
        0.1f32..=2.0,
        -2.0f32..=2.0,
        -2.0f32..=2.0,
        proptest::collection::vec("[a-z\\n.]{1,16}", 0..=MAX_STOP_STRINGS),
        proptest::collection::vec((any::<u32>(), -100.0f32..=100.0), 0..8),
        0u8..=MAX_N_PROBS,
        proptest::option::of("root ::= \"[a-z]{1,12}\""),
    );
    (core, extra).prop_map(
        |(
            (max_tokens, temperature, top_p, seed, top_k, min_p),
            (
                repeat_penalty,
                presence_penalty,
                frequency_penalty,
                stop,
                logit_bias,
                n_probs,
                grammar,
            ),
        )| SamplingParams {
            max_tokens,
            temperature,
            top_p,
            seed,
            top_k,
            min_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            stop,
            logit_bias,
            n_probs,
            grammar,
        },
    )
}

fn arb_format() -> impl Strategy<Value = PromptFormat> {
    prop_oneof![
        Just(PromptFormat::Chat),
        Just(PromptFormat::Raw),
        Just(PromptFormat::Messages)
    ]
}

fn arb_spec() -> impl Strategy<Value = TaskSpec> {
    (
        proptest::option::of("[a-z0-9._-]{1,40}"),
        "\\PC{1,200}",
        arb_format(),
        arb_sampling(),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(model, prompt, format, sampling, request)| TaskSpec {
            model,
            prompt,
            format,
            sampling,
            max_price_per_unit: None,
            request_id: request.map(crate::RequestId),
        })
}

fn arb_assignment() -> impl Strategy<Value = Assignment> {
    (
        any::<[u8; 16]>(),
        arb_digest(),
        "\\PC{1,200}",
        arb_format(),
        arb_sampling(),
        any::<u64>(),
    )
        .prop_map(
            |(id, model, prompt, format, sampling, deadline_ms)| Assignment {
                task_id: TaskId(id),
                model,
                prompt,
                format,
                sampling,
                deadline_ms,
                resume: None,
            },
        )
}

/// A signed one- or two-link delegation chain for `task`.
fn arb_chain(task: TaskId) -> impl Strategy<Value = Vec<crate::delegation::Delegation>> {
    (
        arb_keypair(),
        arb_keypair(),
        arb_keypair(),
        1u64..u64::MAX,
        any::<bool>(),
    )
        .prop_map(move |(a, b, c, deadline, two)| {
            let router = c.public().to_peer_id();
            let first =
                crate::delegation::extend(&[], &a, task, router, b.public().to_peer_id(), deadline)
                    .unwrap();
            let mut chain = vec![first];
            if two {
                let second = crate::delegation::extend(
                    &chain,
                    &b,
                    task,
                    router,
                    c.public().to_peer_id(),
                    deadline,
                )
                .unwrap();
                chain.push(second);
            }
            chain
        })
}

fn arb_query() -> impl Strategy<Value = Query> {
    prop_oneof![
        Just(Query::Status),
        any::<[u8; 16]>().prop_map(|id| Query::Receipt(TaskId(id))),
        any::<u64>().prop_map(Query::Anchor),
        arb_keypair().prop_map(|k| Query::Standing(k.public().to_peer_id())),
        arb_keypair().prop_map(|k| Query::Account(k.public().to_peer_id())),
    ]
}

fn arb_request() -> impl Strategy<Value = TaskRequest> {
    prop_oneof![
        (
            arb_keypair(),
            arb_keypair(),
            any::<[u8; 16]>(),
            arb_digest(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(o, r, id, model, price, free)| {
                let body = crate::market::BidBody {
                    advert_id: TaskId(id),
                    router: r.public().to_peer_id(),
                    orchestrator: o.public().to_peer_id(),
                    model,
                    price_per_unit: price,
                    free_slots: free,
                    account: Address([7; 32]),
                    issued_at_ms: 1,
                    expires_at_ms: 2,
                };
                TaskRequest::Bid(Box::new(body.sign(&o).unwrap()))
            }),
        arb_spec().prop_map(TaskRequest::Submit),
        arb_assignment().prop_map(TaskRequest::Execute),
        arb_query().prop_map(TaskRequest::Query),
        arb_replay().prop_map(|r| TaskRequest::Replay(Box::new(r))),
        (arb_assignment(), arb_keypair()).prop_flat_map(|(assignment, router)| {
            arb_chain(assignment.task_id).prop_map(move |chain| {
                TaskRequest::Delegate(Box::new(DelegatedTask {
                    assignment: assignment.clone(),
                    router: router.public().to_peer_id(),
                    chain,
                }))
            })
        }),
        prop_oneof![
            Just(Transaction::Faucet),
            any::<u64>().prop_map(|stake| Transaction::Register { stake }),
            any::<u64>().prop_map(|amount| Transaction::AddStake { amount }),
            any::<u64>().prop_map(|amount| Transaction::Unstake { amount }),
            Just(Transaction::Withdraw),
        ]
        .prop_map(TaskRequest::Transact),
    ]
}

/// A replay request consistent with its receipt.
fn arb_replay() -> impl Strategy<Value = crate::fraud::ReplayRequest> {
    (
        arb_body(),
        "\\PC{1,200}",
        "\\PC{0,200}",
        proptest::collection::vec(any::<u32>(), 0..64),
    )
        .prop_map(|((mut body, orch, _), prompt, text, tokens)| {
            body.sampling = SamplingParams::default();
            body.prompt_hash = Digest::of(prompt.as_bytes());
            body.output_hash = Digest::of(text.as_bytes());
            body.output_tokens_hash = Digest::of_tokens(&tokens);
            body.output_tokens = tokens.len() as u32;
            crate::fraud::ReplayRequest {
                receipt: body.sign(&orch).unwrap(),
                prompt,
                tokens,
                text,
            }
        })
}

fn arb_address() -> impl Strategy<Value = Address> {
    any::<[u8; 32]>().prop_map(Address)
}

fn arb_answer() -> impl Strategy<Value = QueryAnswer> {
    let anchor = (
        arb_address(),
        arb_digest(),
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<u64>(),
    )
        .prop_map(|(server, root, count, id, at)| Anchor {
            server,
            root,
            count,
            first_task: TaskId(id),
            last_task: TaskId(id),
            anchored_at: at,
        });
    let bundle = (arb_receipt(), 1usize..9).prop_map(|(receipt, n)| {
        let mut leaves: Vec<Digest> = (0..n).map(|i| Digest::of(&[i as u8])).collect();
        leaves[0] = receipt.hash().unwrap();
        let (root, proofs) = crate::merkle::build(&leaves).unwrap();
        ReceiptBundle {
            receipt,
            anchor: Some(AnchorProof {
                anchor_index: n as u64,
                root,
                proof: proofs[0].clone(),
            }),
        }
    });
    let status = (
        arb_address(),
        proptest::collection::vec((arb_address(), any::<u64>()), 0..5),
        any::<u64>(),
    )
        .prop_map(|(router_account, orchs, n)| RouterStatus {
            router_account,
            authorized: n % 2 == 0,
            config: None,
            orchestrators: orchs
                .into_iter()
                .map(|(account, stake)| OrchestratorStatus {
                    peer: None,
                    account,
                    record: Some(Orchestrator {
                        peer_id: vec![1; 38],
                        stake,
                        ..Orchestrator::default()
                    }),
                    reputation: Some(crate::reputation::Reputation {
                        successes: stake % 7_000,
                        ms_per_token: Some(stake % 90),
                        ..Default::default()
                    }),
                })
                .collect(),
            // Any u64 values; the sum is only what the chain would report.
            totals: (n, n / 2, (n / 2).saturating_add(n)),
            receipts: n,
            pending_anchor: n / 3,
            anchors: n / 5,
        });
    prop_oneof![
        anchor.prop_map(|a| QueryAnswer::Anchor(Some(a))),
        Just(QueryAnswer::Anchor(None)),
        bundle.prop_map(|b| QueryAnswer::Receipt(Some(Box::new(b)))),
        status.prop_map(|s| QueryAnswer::Status(Box::new(s))),
        (any::<bool>(), any::<bool>()).prop_map(|(server, orchestrator)| {
            QueryAnswer::Standing(Standing {
                server,
                orchestrator,
            })
        }),
        (any::<[u8; 32]>(), any::<u64>(), any::<Option<(u64, u64)>>()).prop_map(
            |(account, balance, orch)| {
                QueryAnswer::Account(AccountView {
                    account: Address(account),
                    balance,
                    orchestrator: orch.map(|(stake, unbonding)| Orchestrator {
                        peer_id: vec![1; 38],
                        stake,
                        unbonding,
                        unlock_at: 7,
                        successes: 1,
                        failures: 2,
                        compute_ms: 3,
                    }),
                    deposit: balance / 2,
                    max_price_per_unit: 9,
                })
            }
        ),
    ]
}

prop_compose! {
    fn arb_body()(
        id in any::<[u8; 16]>(), model in arb_digest(), prompt_hash in arb_digest(),
        output_hash in arb_digest(), sampling in arb_sampling(), prompt_tokens in any::<u32>(),
        output_tokens in any::<u32>(), compute_ms in any::<u64>(), orch in arb_keypair(),
        router in arb_keypair(), started in any::<u64>(), finished in any::<u64>(),
        tokens in proptest::collection::vec(any::<u32>(), 0..64),
        delegation in proptest::option::of(arb_digest()),
    ) -> (ReceiptBody, Keypair, Keypair) {
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            task_id: TaskId(id),
            model,
            prompt_hash,
            output_hash,
            output_tokens_hash: Digest::of_tokens(&tokens),
            sampling,
            format: PromptFormat::Chat,
            finish: FinishReason::MaxTokens,
            prompt_tokens,
            output_tokens,
            compute_ms,
            orchestrator: orch.public().to_peer_id(),
            router: router.public().to_peer_id(),
            started_at_ms: started,
            finished_at_ms: finished,
            delegation,
            resumed: None,
        };
        (body, orch, router)
    }
}

fn arb_receipt() -> impl Strategy<Value = Receipt> {
    arb_body().prop_map(|(body, orch, router)| {
        let mut r = body.sign(&orch).unwrap();
        r.countersign(&router).unwrap();
        r
    })
}

fn arb_response() -> impl Strategy<Value = TaskResponse> {
    prop_oneof![
        (
            "\\PC{0,300}",
            prop_oneof![
                Just(FinishReason::EndOfGeneration),
                Just(FinishReason::MaxTokens),
                Just(FinishReason::Stop)
            ],
            arb_receipt(),
            proptest::option::of(arb_chain(TaskId([5; 16]))),
        )
            .prop_map(
                |(text, finish, receipt, chain)| TaskResponse::Done(TaskResult {
                    text,
                    tokens: vec![1, 2, 3],
                    finish,
                    receipt,
                    delegation: chain.unwrap_or_default(),
                    resumed: None,
                })
            ),
        ("\\PC{0,100}").prop_map(|m| TaskResponse::Failed(TaskError::new(TaskErrorKind::Busy, m))),
        ("\\PC{0,100}")
            .prop_map(|m| TaskResponse::Failed(TaskError::new(TaskErrorKind::Unauthorized, m))),
        arb_answer().prop_map(TaskResponse::Answer),
        Just(TaskResponse::BidReceived),
    ]
}

fn arb_advert() -> impl Strategy<Value = CapabilityAdvert> {
    (
        arb_keypair(),
        proptest::collection::vec(("[a-z0-9._-]{1,40}", arb_digest()), 0..8),
        0u32..16,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(k, models, slots, price, seq, at)| CapabilityAdvert {
            peer: k.public().to_peer_id(),
            protocol_version: crate::PROTOCOL_VERSION,
            node_version: "0.1.0".into(),
            models: models
                .into_iter()
                .map(|(name, sha256)| ModelId { name, sha256 })
                .collect(),
            free_slots: slots / 2,
            total_slots: slots,
            queued: 0,
            price_per_token: price,
            account: Address([7; 32]),
            stake: price / 3,
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", seq % 65536)],
            seq,
            issued_at_ms: at,
            cache: vec![],
        })
}

/// The checks every wire type must pass, given one value of it.
fn check_frame<T: Wire + PartialEq + std::fmt::Debug>(
    value: &T,
    cut: prop::sample::Index,
    flip: prop::sample::Index,
    bit: u8,
) -> Result<(), TestCaseError> {
    let bytes = value.encode().unwrap();
    prop_assert!(bytes.len() <= T::MAX_BYTES);
    // Round trip.
    prop_assert_eq!(&T::decode(&bytes).unwrap(), value);
    // Any strict prefix is rejected.
    let n = cut.index(bytes.len());
    prop_assert!(T::decode(&bytes[..n]).is_err());
    // Any single bit flip is rejected.
    let mut flipped = bytes.clone();
    flipped[flip.index(bytes.len())] ^= 1 << (bit % 8);
    prop_assert!(T::decode(&flipped).is_err());
    // Over the cap, whatever the content, is rejected before parsing.
    let mut big = bytes;
    big.resize(T::MAX_BYTES + 1, 0);
    let too_large = matches!(T::decode(&big), Err(DecodeError::TooLarge { .. }));
    prop_assert!(too_large);
    Ok(())
}

proptest! {
    #[test]
    fn task_request_frames(v in arb_request(), c: prop::sample::Index, f: prop::sample::Index, b: u8) {
        check_frame(&v, c, f, b)?;
        match &v {
            TaskRequest::Submit(s) => prop_assert!(s.validate().is_ok()),
            TaskRequest::Execute(a) => prop_assert!(a.validate().is_ok()),
            TaskRequest::Query(_) => {}
            TaskRequest::Replay(r) => prop_assert!(r.validate().is_ok()),
            TaskRequest::Delegate(d) => prop_assert!(d.assignment.validate().is_ok()),
            TaskRequest::Bid(_) | TaskRequest::Cancel(_) | TaskRequest::Transact(_) => {}
        }
    }

    #[test]
    fn task_response_frames(v in arb_response(), c: prop::sample::Index, f: prop::sample::Index, b: u8) {
        check_frame(&v, c, f, b)?;
    }

    #[test]
    fn advert_frames(v in arb_advert(), c: prop::sample::Index, f: prop::sample::Index, b: u8) {
        check_frame(&v, c, f, b)?;
        prop_assert!(v.validate().is_ok());
    }

    #[test]
    fn receipt_frames(v in arb_receipt(), c: prop::sample::Index, f: prop::sample::Index, b: u8) {
        check_frame(&v, c, f, b)?;
        prop_assert!(v.verify().is_ok());
    }

    #[test]
    fn receipt_any_field_change_breaks_verification(
        r in arb_receipt(), field in 0usize..17, other in arb_keypair(), n in 1u64..1000,
    ) {
        let mut t = r.clone();
        let b = &mut t.body;
        match field {
            0 => b.version = b.version.wrapping_add(1),
            1 => b.task_id.0[0] ^= 1,
            2 => b.model.0[31] ^= 0x80,
            3 => b.prompt_hash.0[5] ^= 4,
            4 => b.output_hash.0[17] ^= 2,
            5 => b.sampling.seed = b.sampling.seed.wrapping_add(n),
            6 => b.prompt_tokens = b.prompt_tokens.wrapping_add(n as u32),
            7 => b.output_tokens = b.output_tokens.wrapping_sub(n as u32),
            8 => b.compute_ms = b.compute_ms.wrapping_add(n),
            9 => b.orchestrator = other.public().to_peer_id(),
            10 => b.router = other.public().to_peer_id(),
            11 => b.started_at_ms = b.started_at_ms.wrapping_add(n),
            12 => b.output_tokens_hash.0[9] ^= 1,
            14 => b.format = match b.format { PromptFormat::Chat => PromptFormat::Raw, PromptFormat::Raw | PromptFormat::Messages => PromptFormat::Chat },
            15 => b.finish = match b.finish { FinishReason::MaxTokens => FinishReason::EndOfGeneration, FinishReason::EndOfGeneration | FinishReason::Stop => FinishReason::MaxTokens },
            13 => b.delegation = match b.delegation { Some(_) => None, None => Some(Digest::of(&n.to_le_bytes())) },
            _ => b.finished_at_ms = b.finished_at_ms.wrapping_sub(n),
        }
        prop_assert!(t.verify().is_err());
        // The signatures themselves are tamper-evident too.
        let mut s = r.clone();
        s.orchestrator_sig[(n as usize) % 64] ^= 1;
        prop_assert!(s.verify().is_err());
        let mut s = r;
        if let Some(sig) = s.router_sig.as_mut() { sig[(n as usize) % 64] ^= 1; }
        prop_assert!(s.verify().is_err());
    }
}

#[test]
fn oversized_messages_are_refused_when_encoding() {
    let spec = TaskSpec {
        model: None,
        prompt: "x".repeat(TaskRequest::MAX_BYTES),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        max_price_per_unit: None,
        request_id: None,
    };
    assert!(matches!(
        TaskRequest::Submit(spec.clone()).encode(),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(matches!(
        spec.validate(),
        Err(InvalidMessage::PromptTooLarge(_))
    ));
}

#[test]
fn one_type_is_not_decoded_as_another() {
    let req = TaskRequest::Submit(TaskSpec {
        model: None,
        prompt: "hi".into(),
        format: PromptFormat::Chat,
        sampling: SamplingParams::default(),
        max_price_per_unit: None,
        request_id: None,
    });
    let bytes = req.encode().unwrap();
    assert!(matches!(
        TaskResponse::decode(&bytes),
        Err(DecodeError::WrongKind { .. })
    ));
}

#[test]
fn unsigned_or_hashed_peer_ids_do_not_verify() {
    let orch = keypair([1; 32]);
    let router = keypair([2; 32]);
    let body = ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([7; 16]),
        model: Digest::of(b"m"),
        prompt_hash: Digest::of(b"p"),
        output_hash: Digest::of(b"o"),
        output_tokens_hash: Digest::of_tokens(&[]),
        sampling: SamplingParams::default(),
        format: PromptFormat::Chat,
        finish: FinishReason::MaxTokens,
        prompt_tokens: 3,
        output_tokens: 4,
        compute_ms: 5,
        orchestrator: orch.public().to_peer_id(),
        router: router.public().to_peer_id(),
        started_at_ms: 1,
        finished_at_ms: 2,
        delegation: None,
        resumed: None,
    };
    // Only the named orchestrator can sign, only the named router countersign.
    assert_eq!(
        body.clone().sign(&router).unwrap_err(),
        ReceiptError::WrongSigner
    );
    let mut r = body.sign(&orch).unwrap();
    assert_eq!(r.verify(), Err(ReceiptError::MissingRouterSignature));
    assert_eq!(r.countersign(&orch), Err(ReceiptError::WrongSigner));
    r.countersign(&router).unwrap();
    r.verify().unwrap();
    // A random (hash-style) PeerId carries no key.
    let mut hashed = vec![0x12, 32];
    hashed.extend_from_slice(&[9; 32]);
    r.body.router = PeerId::from_bytes(&hashed).unwrap();
    assert!(public_key_of(&r.body.router).is_none());
}
