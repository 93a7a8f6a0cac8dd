//! Delegation records: an orchestrator handing a task on to another.
//!
//! An orchestrator that is full, or lacks the model, may delegate a task it was
//! assigned to another orchestrator by signing a [`Delegation`]. The child may
//! delegate again, up to [`MAX_DELEGATION_DEPTH`] links in all. The executor
//! (the last child) runs the task; its receipt commits to the chain by
//! [`chain_hash`], and the router checks the chain with [`verify_chain`]. The
//! orchestrator the router assigned stays responsible for the task whatever
//! the chain says: delegation moves work, not liability.
//!
//! Each link is signed by its parent with its libp2p ed25519 identity over a
//! domain tag followed by the canonical CBOR of the body, as receipts are.
//! Links name the task and the router, so a link cannot be replayed onto
//! another task; they carry their depth and the deadlines only shrink, so a
//! chain cannot be lengthened past the limit or outlive its parent's promise.

use crate::ids::{Digest, TaskId};
use crate::receipt::{MAX_SIGNATURE_BYTES, public_key_of};
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

const LINK_DOMAIN: &[u8] = b"cactus/delegation/v1\0";
const CHAIN_DOMAIN: &[u8] = b"cactus/delegation/v1/chain\0";

/// Most links in a delegation chain: the assigned orchestrator and at most
/// this many delegates after it. Equal to the ledger's
/// [`MAX_DELEGATES`](crate::contract::MAX_DELEGATES), so that every delegate in
/// a valid chain can be paid.
pub const MAX_DELEGATION_DEPTH: usize = 2;
const _: () = assert!(MAX_DELEGATION_DEPTH == crate::contract::MAX_DELEGATES);

/// Largest canonical CBOR encoding of a chain callers should accept; a chain
/// of [`MAX_DELEGATION_DEPTH`] ed25519 links takes well under half of it.
pub const MAX_CHAIN_BYTES: usize = 2048;

/// One hand-over of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationBody {
    /// The task handed over.
    pub task_id: TaskId,
    /// The router that assigned the task.
    pub router: PeerId,
    /// The orchestrator handing the task over, which signs the link.
    pub parent: PeerId,
    /// The orchestrator taking it.
    pub child: PeerId,
    /// Unix time by which the child must have finished, milliseconds; no later
    /// than the previous link's.
    pub deadline_ms: u64,
    /// Position of the link in its chain: 1 for the first.
    pub depth: u8,
}

impl DelegationBody {
    fn signing_bytes(&self) -> Result<Vec<u8>, DelegationError> {
        let mut out = LINK_DOMAIN.to_vec();
        cbor4ii::serde::to_writer(&mut out, self)
            .map_err(|e| DelegationError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Signs the link as its parent, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<Delegation, DelegationError> {
        if key.public().to_peer_id() != self.parent {
            return Err(DelegationError::WrongSigner);
        }
        let sig = key
            .sign(&self.signing_bytes()?)
            .map_err(|e| DelegationError::Sign(e.to_string()))?;
        Ok(Delegation { body: self, sig })
    }
}

/// A delegation link, signed by its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The hand-over.
    pub body: DelegationBody,
    /// The parent's signature over the body.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Delegation {
    /// Checks the parent's signature over the body.
    pub fn verify_signature(&self) -> Result<(), DelegationError> {
        let key = public_key_of(&self.body.parent).ok_or(DelegationError::NoPublicKey)?;
        if self.sig.len() > MAX_SIGNATURE_BYTES
            || !key.verify(&self.body.signing_bytes()?, &self.sig)
        {
            return Err(DelegationError::BadSignature);
        }
        Ok(())
    }
}

/// SHA-256 over a domain tag and the canonical CBOR of the whole chain: what
/// an executor's receipt commits to.
pub fn chain_hash(chain: &[Delegation]) -> Result<Digest, DelegationError> {
    let mut out = CHAIN_DOMAIN.to_vec();
    cbor4ii::serde::to_writer(&mut out, &chain)
        .map_err(|e| DelegationError::Encode(e.to_string()))?;
    Ok(Digest::of(&out))
}

/// Checks a chain handing `task_id`, assigned by `router` to `assigned`, on
/// to `executor`, who finished at `finished_at_ms`.
///
/// An empty chain is valid only when `assigned` ran the task itself.
/// Otherwise the chain has at most `max_depth` links (and never more than
/// [`MAX_DELEGATION_DEPTH`]); it starts at `assigned`, each child is the next
/// link's parent, and it ends at `executor`; the depths count 1, 2, ...; every
/// link names `task_id` and `router` and is signed by its parent; no peer
/// appears twice among `assigned` and the children; deadlines never grow
/// along the chain, and the executor finished by the last one.
///
/// The cheap structural checks run before any signature is verified.
pub fn verify_chain(
    chain: &[Delegation],
    task_id: &TaskId,
    router: &PeerId,
    assigned: &PeerId,
    executor: &PeerId,
    max_depth: usize,
    finished_at_ms: u64,
) -> Result<(), DelegationError> {
    let Some(last) = chain.last() else {
        return if assigned == executor {
            Ok(())
        } else {
            Err(DelegationError::NotExecutor)
        };
    };
    let max = max_depth.min(MAX_DELEGATION_DEPTH);
    if chain.len() > max {
        return Err(DelegationError::TooDeep {
            len: chain.len(),
            max,
        });
    }
    let mut seen: Vec<&PeerId> = vec![assigned];
    let mut expected_parent = assigned;
    let mut deadline = u64::MAX;
    for (i, link) in chain.iter().enumerate() {
        let b = &link.body;
        if b.task_id != *task_id {
            return Err(DelegationError::Mismatch("task_id"));
        }
        if b.router != *router {
            return Err(DelegationError::Mismatch("router"));
        }
        if b.parent != *expected_parent {
            return Err(if i == 0 {
                DelegationError::NotAssigned
            } else {
                DelegationError::Broken { link: i }
            });
        }
        if usize::from(b.depth) != i + 1 {
            return Err(DelegationError::Depth {
                link: i,
                found: b.depth,
            });
        }
        if seen.contains(&&b.child) {
            return Err(DelegationError::Cycle(b.child));
        }
        if b.deadline_ms > deadline {
            return Err(DelegationError::Deadline { link: i });
        }
        seen.push(&b.child);
        expected_parent = &b.child;
        deadline = b.deadline_ms;
    }
    if last.body.child != *executor {
        return Err(DelegationError::NotExecutor);
    }
    if finished_at_ms > last.body.deadline_ms {
        return Err(DelegationError::Late {
            finished_at_ms,
            deadline_ms: last.body.deadline_ms,
        });
    }
    for (i, link) in chain.iter().enumerate() {
        link.verify_signature().map_err(|e| match e {
            DelegationError::BadSignature => DelegationError::BadLinkSignature { link: i },
            other => other,
        })?;
    }
    Ok(())
}

/// Signs a new link handing the task on from the end of `chain` (or, for an
/// empty chain, from `key`'s peer as the assigned orchestrator) to `child`.
///
/// Refuses when `key` is not the chain's last child, when the chain would be
/// deeper than [`MAX_DELEGATION_DEPTH`], when `child` already appears in the
/// chain (or is the signer), when `task_id` or `router` differ from the
/// chain's, or when `deadline_ms` is later than the previous link's. The
/// existing links' signatures are not checked here; [`verify_chain`] does.
pub fn extend(
    chain: &[Delegation],
    key: &Keypair,
    task_id: TaskId,
    router: PeerId,
    child: PeerId,
    deadline_ms: u64,
) -> Result<Delegation, DelegationError> {
    let parent = key.public().to_peer_id();
    if let Some(last) = chain.last() {
        if last.body.child != parent {
            return Err(DelegationError::NotChainEnd);
        }
        if last.body.task_id != task_id {
            return Err(DelegationError::Mismatch("task_id"));
        }
        if last.body.router != router {
            return Err(DelegationError::Mismatch("router"));
        }
        if deadline_ms > last.body.deadline_ms {
            return Err(DelegationError::Deadline { link: chain.len() });
        }
    }
    let len = chain.len() + 1;
    if len > MAX_DELEGATION_DEPTH {
        return Err(DelegationError::TooDeep {
            len,
            max: MAX_DELEGATION_DEPTH,
        });
    }
    let in_chain = child == parent
        || chain
            .iter()
            .any(|l| l.body.parent == child || l.body.child == child);
    if in_chain {
        return Err(DelegationError::Cycle(child));
    }
    let depth = u8::try_from(len).map_err(|_| DelegationError::TooDeep {
        len,
        max: MAX_DELEGATION_DEPTH,
    })?;
    DelegationBody {
        task_id,
        router,
        parent,
        child,
        deadline_ms,
        depth,
    }
    .sign(key)
}

/// Why a delegation link or chain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// A parent's PeerId does not carry its public key.
    #[error("a parent's PeerId does not embed a public key (only ed25519 identities are accepted)")]
    NoPublicKey,
    /// A link's signature does not match its body.
    #[error("the delegation signature does not verify")]
    BadSignature,
    /// The signature of link `link` (0-based) of a chain does not verify.
    #[error("the signature of delegation link {link} does not verify")]
    BadLinkSignature {
        /// Index of the link.
        link: usize,
    },
    /// Signing with a key that is not the link's parent.
    #[error("the signing key is not the link's parent")]
    WrongSigner,
    /// More links than allowed.
    #[error("a delegation chain of {len} links is over the {max}-link limit")]
    TooDeep {
        /// Links in the chain (with the new one, for `extend`).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first link's parent is not the orchestrator the router assigned.
    #[error("the delegation chain does not start at the assigned orchestrator")]
    NotAssigned,
    /// A link's parent is not the previous link's child.
    #[error("delegation link {link} does not continue from the previous link's child")]
    Broken {
        /// Index of the link.
        link: usize,
    },
    /// The chain does not end at the peer that signed the receipt.
    #[error("the delegation chain does not end at the executor")]
    NotExecutor,
    /// A link's depth field is not its position.
    #[error("delegation link {link} claims depth {found}")]
    Depth {
        /// Index of the link.
        link: usize,
        /// The depth it claims.
        found: u8,
    },
    /// A link names another task or router.
    #[error("a delegation link's {0} does not match the task's")]
    Mismatch(&'static str),
    /// A peer would appear twice in the chain.
    #[error("peer {0} appears twice in the delegation chain")]
    Cycle(PeerId),
    /// A link's deadline is later than the previous link's.
    #[error("delegation link {link} has a later deadline than its parent's")]
    Deadline {
        /// Index of the link.
        link: usize,
    },
    /// The executor finished after the last link's deadline.
    #[error("finished at {finished_at_ms} ms, after the delegation deadline {deadline_ms} ms")]
    Late {
        /// When the receipt says the task finished.
        finished_at_ms: u64,
        /// The last link's deadline.
        deadline_ms: u64,
    },
    /// The signer of a new link is not the chain's last child.
    #[error("only the last child of a delegation chain may extend it")]
    NotChainEnd,
    /// A body or chain could not be encoded.
    #[error("encoding the delegation failed: {0}")]
    Encode(String),
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

#[cfg(test)]
mod tests {
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
}
