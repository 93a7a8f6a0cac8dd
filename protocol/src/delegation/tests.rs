use super::*;
use proptest::prelude::*;

const TASK: TaskId = TaskId([3; 16]);
const DEADLINE: u64 = 1_700_000_060_000;

fn key(n: u8) -> Keypair {
    Keypair::ed25519_from_bytes([n; 32]).unwrap()
}

fn peer(n: u8) -> PeerId {
    key(n).public().to_peer_id()
}

fn router() -> PeerId {
    peer(100)
}

/// A chain through the peers `path[0] -> path[1] -> ...`, built with
/// `extend`, deadlines shrinking by one second a link.
fn chain(path: &[u8]) -> Vec<Delegation> {
    let mut out: Vec<Delegation> = Vec::new();
    for (i, w) in path.windows(2).enumerate() {
        let link = extend(
            &out,
            &key(w[0]),
            TASK,
            router(),
            peer(w[1]),
            DEADLINE - 1000 * i as u64,
        )
        .unwrap();
        out.push(link);
    }
    out
}

/// A link signed directly, bypassing `extend`'s checks.
fn link(parent: u8, child: u8, depth: u8, deadline_ms: u64) -> Delegation {
    DelegationBody {
        task_id: TASK,
        router: router(),
        parent: peer(parent),
        child: peer(child),
        deadline_ms,
        depth,
    }
    .sign(&key(parent))
    .unwrap()
}

fn check(
    c: &[Delegation],
    assigned: u8,
    executor: u8,
    finished: u64,
) -> Result<(), DelegationError> {
    verify_chain(
        c,
        &TASK,
        &router(),
        &peer(assigned),
        &peer(executor),
        MAX_DELEGATION_DEPTH,
        finished,
    )
}

#[test]
fn valid_chains_verify() {
    assert_eq!(check(&[], 1, 1, DEADLINE), Ok(()));
    assert_eq!(
        check(&[], 1, 2, DEADLINE),
        Err(DelegationError::NotExecutor)
    );
    let one = chain(&[1, 2]);
    assert_eq!(one[0].body.depth, 1);
    assert_eq!(check(&one, 1, 2, DEADLINE), Ok(()));
    let two = chain(&[1, 2, 3]);
    assert_eq!(two[1].body.depth, 2);
    assert_eq!(check(&two, 1, 3, DEADLINE - 1000), Ok(()));
    assert_eq!(
        check(&two, 1, 2, DEADLINE - 1000),
        Err(DelegationError::NotExecutor)
    );
    assert_eq!(
        check(&two, 2, 3, DEADLINE - 1000),
        Err(DelegationError::NotAssigned)
    );
    // The caller's max_depth is honoured.
    assert_eq!(
        verify_chain(&two, &TASK, &router(), &peer(1), &peer(3), 1, 0),
        Err(DelegationError::TooDeep { len: 2, max: 1 })
    );
    assert!(two.iter().all(|l| l.verify_signature().is_ok()));
}

#[test]
fn depth_three_is_too_deep() {
    let mut c = chain(&[1, 2, 3]);
    c.push(link(3, 4, 3, DEADLINE - 2000));
    assert_eq!(
        check(&c, 1, 4, 0),
        Err(DelegationError::TooDeep { len: 3, max: 2 })
    );
    // Even when the caller allows more.
    assert_eq!(
        verify_chain(&c, &TASK, &router(), &peer(1), &peer(4), 10, 0),
        Err(DelegationError::TooDeep { len: 3, max: 2 })
    );
}

#[test]
fn cycles_are_refused() {
    let c = vec![link(1, 2, 1, DEADLINE), link(2, 1, 2, DEADLINE)];
    assert_eq!(check(&c, 1, 1, 0), Err(DelegationError::Cycle(peer(1))));
    let self_loop = vec![link(1, 1, 1, DEADLINE)];
    assert_eq!(
        check(&self_loop, 1, 1, 0),
        Err(DelegationError::Cycle(peer(1)))
    );
}

#[test]
fn broken_links_and_bad_depths_are_refused() {
    let c = vec![link(1, 2, 1, DEADLINE), link(3, 4, 2, DEADLINE)];
    assert_eq!(check(&c, 1, 4, 0), Err(DelegationError::Broken { link: 1 }));
    let c = vec![link(1, 2, 2, DEADLINE)];
    assert_eq!(
        check(&c, 1, 2, 0),
        Err(DelegationError::Depth { link: 0, found: 2 })
    );
    let c = vec![link(1, 2, 1, DEADLINE), link(2, 3, 1, DEADLINE)];
    assert_eq!(
        check(&c, 1, 3, 0),
        Err(DelegationError::Depth { link: 1, found: 1 })
    );
}

#[test]
fn forged_signatures_are_refused() {
    // Link 1 names peer 2 as parent but is signed by peer 9.
    let mut c = chain(&[1, 2]);
    let body = DelegationBody {
        task_id: TASK,
        router: router(),
        parent: peer(2),
        child: peer(3),
        deadline_ms: DEADLINE,
        depth: 2,
    };
    assert_eq!(
        body.clone().sign(&key(9)),
        Err(DelegationError::WrongSigner)
    );
    let sig = key(9).sign(&body.signing_bytes().unwrap()).unwrap();
    let forged = Delegation { body, sig };
    assert_eq!(
        forged.verify_signature(),
        Err(DelegationError::BadSignature)
    );
    c.push(forged);
    assert_eq!(
        check(&c, 1, 3, 0),
        Err(DelegationError::BadLinkSignature { link: 1 })
    );

    // A body changed after signing.
    let mut c = chain(&[1, 2, 3]);
    c[0].body.deadline_ms += 1;
    assert_eq!(
        check(&c, 1, 3, 0),
        Err(DelegationError::BadLinkSignature { link: 0 })
    );
    let mut c = chain(&[1, 2]);
    c[0].sig = vec![0; MAX_SIGNATURE_BYTES + 1];
    assert_eq!(
        check(&c, 1, 2, 0),
        Err(DelegationError::BadLinkSignature { link: 0 })
    );

    // A parent without an inline key.
    let mut hashed = vec![0x12, 32];
    hashed.extend_from_slice(&[9; 32]);
    let mut l = link(1, 2, 1, DEADLINE);
    l.body.parent = PeerId::from_bytes(&hashed).unwrap();
    assert_eq!(l.verify_signature(), Err(DelegationError::NoPublicKey));
}

#[test]
fn wrong_task_or_router_is_refused() {
    let c = chain(&[1, 2, 3]);
    assert_eq!(
        verify_chain(&c, &TaskId([4; 16]), &router(), &peer(1), &peer(3), 2, 0),
        Err(DelegationError::Mismatch("task_id"))
    );
    assert_eq!(
        verify_chain(&c, &TASK, &peer(101), &peer(1), &peer(3), 2, 0),
        Err(DelegationError::Mismatch("router"))
    );
    // One link for another task, validly signed.
    let other = DelegationBody {
        task_id: TaskId([4; 16]),
        ..c[1].body.clone()
    }
    .sign(&key(2))
    .unwrap();
    let mixed = vec![c[0].clone(), other];
    assert_eq!(
        check(&mixed, 1, 3, 0),
        Err(DelegationError::Mismatch("task_id"))
    );
    let other = DelegationBody {
        router: peer(101),
        ..c[1].body.clone()
    }
    .sign(&key(2))
    .unwrap();
    let mixed = vec![c[0].clone(), other];
    assert_eq!(
        check(&mixed, 1, 3, 0),
        Err(DelegationError::Mismatch("router"))
    );
}

#[test]
fn deadlines_shrink_and_bind_the_executor() {
    let c = vec![link(1, 2, 1, DEADLINE), link(2, 3, 2, DEADLINE + 1)];
    assert_eq!(
        check(&c, 1, 3, 0),
        Err(DelegationError::Deadline { link: 1 })
    );
    let c = vec![link(1, 2, 1, DEADLINE), link(2, 3, 2, DEADLINE)];
    assert_eq!(check(&c, 1, 3, DEADLINE), Ok(()));
    assert_eq!(
        check(&c, 1, 3, DEADLINE + 1),
        Err(DelegationError::Late {
            finished_at_ms: DEADLINE + 1,
            deadline_ms: DEADLINE
        })
    );
}

#[test]
fn extend_enforces_the_rules() {
    let two = chain(&[1, 2, 3]);
    // Depth 3.
    assert_eq!(
        extend(&two, &key(3), TASK, router(), peer(4), DEADLINE - 2000),
        Err(DelegationError::TooDeep { len: 3, max: 2 })
    );
    let one = chain(&[1, 2]);
    // Not the chain's end.
    assert_eq!(
        extend(&one, &key(1), TASK, router(), peer(3), DEADLINE),
        Err(DelegationError::NotChainEnd)
    );
    // Back to a peer already in the chain, or to oneself.
    assert_eq!(
        extend(&one, &key(2), TASK, router(), peer(1), DEADLINE),
        Err(DelegationError::Cycle(peer(1)))
    );
    assert_eq!(
        extend(&one, &key(2), TASK, router(), peer(2), DEADLINE),
        Err(DelegationError::Cycle(peer(2)))
    );
    assert_eq!(
        extend(&[], &key(1), TASK, router(), peer(1), DEADLINE),
        Err(DelegationError::Cycle(peer(1)))
    );
    // A later deadline, another task or router.
    assert_eq!(
        extend(&one, &key(2), TASK, router(), peer(3), DEADLINE + 1),
        Err(DelegationError::Deadline { link: 1 })
    );
    assert_eq!(
        extend(&one, &key(2), TaskId([4; 16]), router(), peer(3), DEADLINE),
        Err(DelegationError::Mismatch("task_id"))
    );
    assert_eq!(
        extend(&one, &key(2), TASK, peer(101), peer(3), DEADLINE),
        Err(DelegationError::Mismatch("router"))
    );
    // And the happy path gives the next depth.
    let l = extend(&one, &key(2), TASK, router(), peer(3), DEADLINE).unwrap();
    assert_eq!(l.body.depth, 2);
    assert_eq!(l.body.parent, peer(2));
}

#[test]
fn chain_hash_commits_to_every_link() {
    let c = chain(&[1, 2, 3]);
    let h = chain_hash(&c).unwrap();
    assert_eq!(chain_hash(&c).unwrap(), h);
    assert_ne!(chain_hash(&[]).unwrap(), h);
    assert_ne!(chain_hash(&c[..1]).unwrap(), h);
    let tampers: Vec<fn(&mut Delegation)> = vec![
        |l| l.body.task_id.0[0] ^= 1,
        |l| l.body.router = peer(101),
        |l| l.body.parent = peer(50),
        |l| l.body.child = peer(51),
        |l| l.body.deadline_ms -= 1,
        |l| l.body.depth += 1,
        |l| l.sig[0] ^= 1,
    ];
    for (t, tamper) in tampers.iter().enumerate() {
        for i in 0..c.len() {
            let mut changed = c.clone();
            tamper(&mut changed[i]);
            assert_ne!(chain_hash(&changed).unwrap(), h, "tamper {t} on link {i}");
        }
    }
    let mut swapped = c.clone();
    swapped.swap(0, 1);
    assert_ne!(chain_hash(&swapped).unwrap(), h);
}

#[test]
fn longest_chain_fits_the_cap() {
    let c = chain(&[1, 2, 3]);
    let mut bytes = Vec::new();
    cbor4ii::serde::to_writer(&mut bytes, &c).unwrap();
    assert!(bytes.len() * 2 <= MAX_CHAIN_BYTES, "{} bytes", bytes.len());
    let back: Vec<Delegation> = cbor4ii::serde::from_slice(&bytes).unwrap();
    assert_eq!(back, c);
}

/// A link as generated: `None` fields take the value `extend` would use.
#[derive(Debug, Clone)]
struct RawLink {
    parent: Option<u8>,
    child: u8,
    depth: Option<u8>,
    deadline_ms: u64,
    task: Option<u8>,
}

fn arb_link() -> impl Strategy<Value = RawLink> {
    (
        prop::option::weighted(0.2, 0..5u8),
        0..5u8,
        prop::option::weighted(0.1, 0..4u8),
        DEADLINE - 3..=DEADLINE,
        prop::option::weighted(0.05, 0..2u8),
    )
        .prop_map(|(parent, child, depth, deadline_ms, task)| RawLink {
            parent,
            child,
            depth,
            deadline_ms,
            task,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A chain verifies exactly when replaying it link by link through
    /// `extend` reproduces it: the two enforce the same rules.
    #[test]
    fn chains_verify_iff_extend_builds_them(
        start in 0..5u8,
        raw in prop::collection::vec(arb_link(), 0..=3),
    ) {
        let mut chain: Vec<Delegation> = Vec::new();
        let mut end = start;
        for (i, r) in raw.iter().enumerate() {
            let parent = r.parent.unwrap_or(end);
            let body = DelegationBody {
                task_id: r.task.map_or(TASK, |t| TaskId([t + 10; 16])),
                router: router(),
                parent: peer(parent),
                child: peer(r.child),
                deadline_ms: r.deadline_ms,
                depth: r.depth.unwrap_or(i as u8 + 1),
            };
            chain.push(body.sign(&key(parent)).unwrap());
            end = r.child;
        }
        // On time: lateness is verify_chain's alone to judge.
        let finished = chain.last().map_or(0, |l| l.body.deadline_ms);
        let verdict = check(&chain, start, end, finished);

        let mut rebuilt: Vec<Delegation> = Vec::new();
        let mut ok = true;
        let mut signer = start;
        for (l, r) in chain.iter().zip(&raw) {
            match extend(&rebuilt, &key(signer), TASK, router(), l.body.child, l.body.deadline_ms) {
                Ok(new) if new == *l => rebuilt.push(new),
                _ => {
                    ok = false;
                    break;
                }
            }
            signer = r.child;
        }
        prop_assert_eq!(verdict.is_ok(), ok, "verdict {:?}", verdict);
    }
}
