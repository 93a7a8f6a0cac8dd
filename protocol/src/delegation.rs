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
/// this many delegates after it. Equal to the chain's
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
            .map_err(|e| DelegationError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(out)
    }

    /// Signs the link as its parent, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<Delegation, DelegationError> {
        if key.public().to_peer_id() != self.parent {
            return Err(DelegationError::WrongSigner);
        }
        let sig = key
            .sign(&self.signing_bytes()?)
            .map_err(|e| DelegationError::Sign(crate::wire::SourceError::new(e)))?;
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
        .map_err(|e| DelegationError::Encode(crate::wire::SourceError::new(e)))?;
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
        /// The most links a chain may have.
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
    Encode(#[source] crate::wire::SourceError),
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(#[source] crate::wire::SourceError),
}

#[cfg(test)]
mod tests;
