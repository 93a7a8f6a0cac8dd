//! Merkle trees over receipt hashes, for anchoring a batch of receipts with
//! one on-chain root.
//!
//! Leaves and inner nodes are hashed with different prefixes (`0x00`, `0x01`)
//! so that an inner node can never pass for a leaf. A node without a sibling
//! is carried up unchanged rather than paired with itself, so no two different
//! leaf lists share a root (the duplicate-last-leaf ambiguity of Bitcoin's tree).

use crate::ids::Digest;
use serde::{Deserialize, Serialize};

/// Most leaves in one tree (one anchored batch).
pub const MAX_LEAVES: usize = 1 << 20;

fn leaf(h: &Digest) -> Digest {
    let mut b = [0u8; 33];
    b[1..].copy_from_slice(&h.0);
    Digest::of(&b)
}

fn node(l: &Digest, r: &Digest) -> Digest {
    let mut b = [0u8; 65];
    b[0] = 1;
    b[1..33].copy_from_slice(&l.0);
    b[33..].copy_from_slice(&r.0);
    Digest::of(&b)
}

/// One step of a proof: the sibling and which side it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The sibling's hash.
    pub sibling: Digest,
    /// Whether the sibling is on the left.
    pub left: bool,
}

/// An inclusion proof: the path from a leaf to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Position of the leaf.
    pub index: u64,
    /// Leaves in the tree.
    pub leaves: u64,
    /// Siblings from the leaf up.
    pub path: Vec<Step>,
}

impl Proof {
    /// The root this proof gives for `item`.
    pub fn root_for(&self, item: &Digest) -> Digest {
        self.path.iter().fold(leaf(item), |acc, s| {
            if s.left {
                node(&s.sibling, &acc)
            } else {
                node(&acc, &s.sibling)
            }
        })
    }

    /// Whether `item` is in the tree with `root`.
    pub fn verify(&self, item: &Digest, root: &Digest) -> bool {
        self.path.len() <= 64 && &self.root_for(item) == root
    }
}

/// The root of `items` and a proof for each, in order. `None` for no items or
/// more than [`MAX_LEAVES`].
pub fn build(items: &[Digest]) -> Option<(Digest, Vec<Proof>)> {
    if items.is_empty() || items.len() > MAX_LEAVES {
        return None;
    }
    let n = items.len() as u64;
    let mut level: Vec<Digest> = items.iter().map(leaf).collect();
    // Where each original leaf currently sits in `level`.
    let mut pos: Vec<usize> = (0..items.len()).collect();
    let mut proofs: Vec<Proof> = (0..n)
        .map(|i| Proof {
            index: i,
            leaves: n,
            path: Vec::new(),
        })
        .collect();
    while level.len() > 1 {
        for (p, proof) in pos.iter_mut().zip(proofs.iter_mut()) {
            let sib = *p ^ 1;
            if sib < level.len() {
                proof.path.push(Step {
                    sibling: level[sib],
                    left: sib < *p,
                });
            }
            *p /= 2;
        }
        level = level
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
    }
    Some((level[0], proofs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_proof_verifies_and_nothing_else_does(n in 1usize..70, pick in any::<prop::sample::Index>()) {
            let items: Vec<Digest> = (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect();
            let (root, proofs) = build(&items).unwrap();
            for (item, proof) in items.iter().zip(&proofs) {
                prop_assert!(proof.verify(item, &root));
            }
            let i = pick.index(n);
            prop_assert!(!proofs[i].verify(&Digest::of(b"stranger"), &root));
            if n > 1 {
                prop_assert!(!proofs[i].verify(&items[(i + 1) % n], &root));
            }
        }
    }

    #[test]
    fn roots_differ_with_content_and_length() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let r3 = build(&[a, b, c]).unwrap().0;
        let r4 = build(&[a, b, c, c]).unwrap().0;
        assert_ne!(r3, r4);
        assert_ne!(build(&[a, b]).unwrap().0, build(&[b, a]).unwrap().0);
        assert_eq!(build(&[a]).unwrap().0, leaf(&a));
        assert!(build(&[]).is_none());
    }
}

/// Where a receipt was anchored and how to check it: the batch's index in the
/// chain's anchor list, the batch root, and the receipt's inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorProof {
    /// Index of the batch in the chain's anchors.
    pub anchor_index: u64,
    /// The batch's Merkle root, as anchored.
    pub root: Digest,
    /// Inclusion proof of the receipt's hash.
    pub proof: Proof,
}

/// A receipt with its anchor proof, as exported for anyone to verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptBundle {
    /// The countersigned receipt.
    pub receipt: crate::Receipt,
    /// Where it is anchored (`None` until its batch is anchored).
    pub anchor: Option<AnchorProof>,
}
