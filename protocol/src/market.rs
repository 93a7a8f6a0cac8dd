//! The task market: adverts for tasks no known orchestrator can take, and the
//! bids that answer them.
//!
//! When a router has no orchestrator in its live table that can take a task,
//! it publishes a [`TaskAdvert`] on the gossipsub topic
//! [`crate::TASK_TOPIC`]. Orchestrators that can serve the model answer with a
//! [`Bid`], sent to the router by request-response; the router awards the task
//! to the best bid ([`best_bid`]) before the advert's deadline.
//!
//! Both messages are signed with the sender's libp2p ed25519 identity over a
//! domain tag followed by the canonical CBOR of the body, as receipts are, so
//! an advert or a bid can be checked by anyone who holds it and never replayed
//! as another kind of message. Times are Unix milliseconds; a clock ahead of
//! the verifier's by up to [`MAX_CLOCK_SKEW_MS`] is tolerated.

use crate::contract::Address;
use crate::ids::{ModelHash, TaskId};
use crate::params::{MAX_OUTPUT_TOKENS, MAX_PROMPT_BYTES};
use crate::receipt::{MAX_SIGNATURE_BYTES, public_key_of};
use crate::wire::{Kind, Wire};
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;

const ADVERT_DOMAIN: &[u8] = b"cactus/market/v1/advert\0";
const BID_DOMAIN: &[u8] = b"cactus/market/v1/bid\0";

/// Longest an advert may stay open: `deadline_ms - issued_at_ms` is at most
/// this. Adverts are for tasks waiting now, not for standing orders.
pub const MAX_ADVERT_TTL_MS: u64 = 60_000;
/// How far in the future an `issued_at_ms` may be, to tolerate clocks that
/// run ahead of the verifier's.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;

/// What a router asks the market for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAdvertBody {
    /// Id of the advert, chosen at random by the router; the task keeps it
    /// once awarded.
    pub advert_id: TaskId,
    /// The router that publishes the advert and signs it.
    pub router: PeerId,
    /// The exact model the task needs.
    pub model: ModelHash,
    /// Size of the prompt in bytes, at most
    /// [`MAX_PROMPT_BYTES`](crate::params::MAX_PROMPT_BYTES).
    pub prompt_bytes: u32,
    /// Most tokens the task may generate, in
    /// `1..=`[`MAX_OUTPUT_TOKENS`](crate::params::MAX_OUTPUT_TOKENS).
    pub max_tokens: u32,
    /// The highest price per unit the router accepts.
    pub max_price_per_unit: u64,
    /// Unix time the advert was issued, milliseconds.
    pub issued_at_ms: u64,
    /// Unix time after which bids are no longer taken, milliseconds; at most
    /// [`MAX_ADVERT_TTL_MS`] after `issued_at_ms`.
    pub deadline_ms: u64,
}

impl TaskAdvertBody {
    /// Signs the advert as its router, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<TaskAdvert, MarketError> {
        if key.public().to_peer_id() != self.router {
            return Err(MarketError::WrongSigner);
        }
        let sig = key
            .sign(&signing_bytes(ADVERT_DOMAIN, &self)?)
            .map_err(|e| MarketError::Sign(e.to_string()))?;
        Ok(TaskAdvert { body: self, sig })
    }
}

/// A task advert, signed by its router. Published on [`crate::TASK_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAdvert {
    /// What is asked.
    pub body: TaskAdvertBody,
    /// The router's signature over the body.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl TaskAdvert {
    /// Checks the advert's limits, times and signature at time `now_ms`.
    pub fn verify(&self, now_ms: u64) -> Result<(), MarketError> {
        let b = &self.body;
        if b.max_tokens == 0 || b.max_tokens > MAX_OUTPUT_TOKENS {
            return Err(MarketError::Limits("max_tokens"));
        }
        if u64::from(b.prompt_bytes) > MAX_PROMPT_BYTES as u64 {
            return Err(MarketError::Limits("prompt_bytes"));
        }
        if b.deadline_ms <= b.issued_at_ms || b.deadline_ms - b.issued_at_ms > MAX_ADVERT_TTL_MS {
            return Err(MarketError::BadDeadline);
        }
        check_issued(b.issued_at_ms, now_ms)?;
        if b.deadline_ms <= now_ms {
            return Err(MarketError::Expired);
        }
        // The signature comes last: it is the only expensive check.
        check_signature(ADVERT_DOMAIN, b, &b.router, &self.sig)
    }

    /// The advert's id (the task id it will keep once awarded).
    pub fn id(&self) -> TaskId {
        self.body.advert_id
    }
}

impl Wire for TaskAdvert {
    const KIND: Kind = Kind::TaskAdvert;
    const MAX_BYTES: usize = 1024;
}

/// What an orchestrator offers for an advertised task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidBody {
    /// The advert answered.
    pub advert_id: TaskId,
    /// The advert's router.
    pub router: PeerId,
    /// The orchestrator that bids and signs.
    pub orchestrator: PeerId,
    /// The advert's model.
    pub model: ModelHash,
    /// The price asked per unit, at most the advert's `max_price_per_unit`.
    pub price_per_unit: u64,
    /// Slots the orchestrator has free now.
    pub free_slots: u32,
    /// The ledger account that is to be paid.
    pub account: Address,
    /// Unix time the bid was issued, milliseconds.
    pub issued_at_ms: u64,
    /// Unix time after which the bid no longer holds, milliseconds.
    pub expires_at_ms: u64,
}

impl BidBody {
    /// Signs the bid as its orchestrator, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<Bid, MarketError> {
        if key.public().to_peer_id() != self.orchestrator {
            return Err(MarketError::WrongSigner);
        }
        let sig = key
            .sign(&signing_bytes(BID_DOMAIN, &self)?)
            .map_err(|e| MarketError::Sign(e.to_string()))?;
        Ok(Bid { body: self, sig })
    }
}

/// A bid, signed by its orchestrator. Sent to the router by request-response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// What is offered.
    pub body: BidBody,
    /// The orchestrator's signature over the body.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Bid {
    /// Checks the bid against the advert it answers, the peer it came from
    /// and the time `now_ms`. The advert itself is checked by
    /// [`TaskAdvert::verify`].
    pub fn verify(
        &self,
        advert: &TaskAdvertBody,
        sender: &PeerId,
        now_ms: u64,
    ) -> Result<(), MarketError> {
        let b = &self.body;
        if b.orchestrator != *sender {
            return Err(MarketError::NotSender);
        }
        if b.advert_id != advert.advert_id {
            return Err(MarketError::Mismatch("advert_id"));
        }
        if b.router != advert.router {
            return Err(MarketError::Mismatch("router"));
        }
        if b.model != advert.model {
            return Err(MarketError::Mismatch("model"));
        }
        if b.price_per_unit > advert.max_price_per_unit {
            return Err(MarketError::PriceTooHigh {
                price: b.price_per_unit,
                max: advert.max_price_per_unit,
            });
        }
        check_issued(b.issued_at_ms, now_ms)?;
        if b.expires_at_ms <= now_ms || now_ms > advert.deadline_ms {
            return Err(MarketError::Expired);
        }
        check_signature(BID_DOMAIN, b, &b.orchestrator, &self.sig)
    }
}

impl Wire for Bid {
    const KIND: Kind = Kind::Bid;
    const MAX_BYTES: usize = 1024;
}

/// The bid with the highest `score`; ties go to the lower price, then to the
/// lower orchestrator PeerId bytes, then to the lower signature bytes, so the
/// choice does not depend on the order the bids arrived in. `None` when
/// `bids` is empty. Bids are assumed verified.
pub fn best_bid(bids: &[Bid], score: impl Fn(&Bid) -> u64) -> Option<&Bid> {
    bids.iter()
        .map(|bid| {
            let key = (
                score(bid),
                Reverse(bid.body.price_per_unit),
                Reverse(bid.body.orchestrator.to_bytes()),
            );
            (key, bid)
        })
        .max_by(|(ka, a), (kb, b)| {
            ka.cmp(kb)
                .then_with(|| Reverse(&a.sig).cmp(&Reverse(&b.sig)))
        })
        .map(|(_, bid)| bid)
}

fn check_issued(issued_at_ms: u64, now_ms: u64) -> Result<(), MarketError> {
    if issued_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(MarketError::Future {
            issued_at_ms,
            now_ms,
        });
    }
    Ok(())
}

fn signing_bytes<T: Serialize>(domain: &[u8], body: &T) -> Result<Vec<u8>, MarketError> {
    let mut out = domain.to_vec();
    cbor4ii::serde::to_writer(&mut out, body).map_err(|e| MarketError::Encode(e.to_string()))?;
    Ok(out)
}

fn check_signature<T: Serialize>(
    domain: &[u8],
    body: &T,
    signer: &PeerId,
    sig: &[u8],
) -> Result<(), MarketError> {
    let key = public_key_of(signer).ok_or(MarketError::NoPublicKey)?;
    if sig.len() > MAX_SIGNATURE_BYTES || !key.verify(&signing_bytes(domain, body)?, sig) {
        return Err(MarketError::BadSignature);
    }
    Ok(())
}

/// Why an advert or a bid is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// The signer's PeerId does not carry its public key.
    #[error(
        "the signer's PeerId does not embed a public key (only ed25519 identities are accepted)"
    )]
    NoPublicKey,
    /// The signature does not match the body.
    #[error("the signature does not verify")]
    BadSignature,
    /// Signing with a key that is not the peer named in the body.
    #[error("the signing key is not the peer named in the body")]
    WrongSigner,
    /// The advert's deadline or the bid's expiry has passed.
    #[error("the advert or bid has expired")]
    Expired,
    /// Issued further in the future than [`MAX_CLOCK_SKEW_MS`] allows.
    #[error("issued at {issued_at_ms} ms, over {MAX_CLOCK_SKEW_MS} ms after now ({now_ms} ms)")]
    Future {
        /// The claimed issue time.
        issued_at_ms: u64,
        /// The verifier's time.
        now_ms: u64,
    },
    /// The advert's deadline is not after its issue time, or is more than
    /// [`MAX_ADVERT_TTL_MS`] after it.
    #[error("the advert's deadline is not within {MAX_ADVERT_TTL_MS} ms after its issue time")]
    BadDeadline,
    /// A bid field differs from the advert's.
    #[error("the bid's {0} does not match the advert's")]
    Mismatch(&'static str),
    /// The bid's orchestrator is not the peer that sent it.
    #[error("the bid was sent by a peer other than its orchestrator")]
    NotSender,
    /// The bid asks more than the advert's `max_price_per_unit`.
    #[error("price per unit {price} is over the advert's maximum {max}")]
    PriceTooHigh {
        /// The price asked.
        price: u64,
        /// The advert's maximum.
        max: u64,
    },
    /// A field is out of its limits.
    #[error("the advert's {0} is out of its limits")]
    Limits(&'static str),
    /// The body could not be encoded.
    #[error("encoding the body failed: {0}")]
    Encode(String),
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;
    use crate::wire::{DecodeError, EncodeError};
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    fn key(n: u8) -> Keypair {
        Keypair::ed25519_from_bytes([n; 32]).unwrap()
    }

    fn peer(n: u8) -> PeerId {
        key(n).public().to_peer_id()
    }

    fn advert_body() -> TaskAdvertBody {
        TaskAdvertBody {
            advert_id: TaskId([7; 16]),
            router: peer(1),
            model: Digest::of(b"model"),
            prompt_bytes: 1000,
            max_tokens: 256,
            max_price_per_unit: 100,
            issued_at_ms: NOW,
            deadline_ms: NOW + 10_000,
        }
    }

    fn advert() -> TaskAdvert {
        advert_body().sign(&key(1)).unwrap()
    }

    fn bid_body(orch: u8) -> BidBody {
        let a = advert_body();
        BidBody {
            advert_id: a.advert_id,
            router: a.router,
            orchestrator: peer(orch),
            model: a.model,
            price_per_unit: 50,
            free_slots: 2,
            account: Address::of_peer(&peer(orch)),
            issued_at_ms: NOW + 100,
            expires_at_ms: NOW + 5_000,
        }
    }

    fn bid(orch: u8) -> Bid {
        bid_body(orch).sign(&key(orch)).unwrap()
    }

    #[test]
    fn valid_advert_and_bid_verify() {
        let a = advert();
        assert_eq!(a.verify(NOW), Ok(()));
        assert_eq!(a.verify(NOW + 9_999), Ok(()));
        assert_eq!(a.id(), TaskId([7; 16]));
        let b = bid(2);
        assert_eq!(b.verify(&a.body, &peer(2), NOW + 200), Ok(()));
    }

    #[test]
    fn signing_with_another_key_is_refused() {
        assert_eq!(advert_body().sign(&key(2)), Err(MarketError::WrongSigner));
        assert_eq!(bid_body(2).sign(&key(3)), Err(MarketError::WrongSigner));
    }

    #[test]
    fn every_advert_field_is_signed() {
        let tampers: Vec<fn(&mut TaskAdvertBody)> = vec![
            |b| b.advert_id.0[0] ^= 1,
            |b| b.router = peer(9),
            |b| b.model.0[0] ^= 1,
            |b| b.prompt_bytes += 1,
            |b| b.max_tokens += 1,
            |b| b.max_price_per_unit += 1,
            |b| b.issued_at_ms += 1,
            |b| b.deadline_ms += 1,
        ];
        for (i, tamper) in tampers.into_iter().enumerate() {
            let mut a = advert();
            tamper(&mut a.body);
            assert_eq!(
                a.verify(NOW + 1),
                Err(MarketError::BadSignature),
                "field {i}"
            );
        }
        let mut a = advert();
        a.sig[0] ^= 1;
        assert_eq!(a.verify(NOW), Err(MarketError::BadSignature));
        a.sig = vec![0; MAX_SIGNATURE_BYTES + 1];
        assert_eq!(a.verify(NOW), Err(MarketError::BadSignature));
    }

    #[test]
    fn every_bid_field_is_signed() {
        let a = advert_body();
        let tampers: Vec<fn(&mut BidBody)> = vec![
            |b| b.price_per_unit += 1,
            |b| b.free_slots += 1,
            |b| b.account.0[0] ^= 1,
            |b| b.issued_at_ms += 1,
            |b| b.expires_at_ms += 1,
        ];
        for (i, tamper) in tampers.into_iter().enumerate() {
            let mut b = bid(2);
            tamper(&mut b.body);
            assert_eq!(
                b.verify(&a, &peer(2), NOW + 200),
                Err(MarketError::BadSignature),
                "field {i}"
            );
        }
        // Fields that must match the advert: re-pointing the advert at the
        // tampered value shows the signature still covers them.
        let mut b = bid(2);
        let mut a2 = a.clone();
        b.body.advert_id.0[0] ^= 1;
        a2.advert_id = b.body.advert_id;
        assert_eq!(
            b.verify(&a2, &peer(2), NOW + 200),
            Err(MarketError::BadSignature)
        );
        let mut b = bid(2);
        let mut a2 = a.clone();
        b.body.model.0[0] ^= 1;
        a2.model = b.body.model;
        assert_eq!(
            b.verify(&a2, &peer(2), NOW + 200),
            Err(MarketError::BadSignature)
        );
        let mut b = bid(2);
        let mut a2 = a.clone();
        b.body.router = peer(9);
        a2.router = peer(9);
        assert_eq!(
            b.verify(&a2, &peer(2), NOW + 200),
            Err(MarketError::BadSignature)
        );
        // Swapping the orchestrator (and the sender) to another peer fails the
        // signature too.
        let mut b = bid(2);
        b.body.orchestrator = peer(3);
        assert_eq!(
            b.verify(&a, &peer(3), NOW + 200),
            Err(MarketError::BadSignature)
        );
    }

    #[test]
    fn advert_times_and_limits_are_checked() {
        let a = advert();
        // Expired: the deadline is now or past.
        assert_eq!(a.verify(NOW + 10_000), Err(MarketError::Expired));
        assert_eq!(a.verify(NOW + 60_000), Err(MarketError::Expired));
        // Issued too far in the future.
        assert!(matches!(
            a.verify(NOW - MAX_CLOCK_SKEW_MS - 1),
            Err(MarketError::Future { .. })
        ));
        assert_eq!(a.verify(NOW - MAX_CLOCK_SKEW_MS), Ok(()));

        let sign = |f: fn(&mut TaskAdvertBody)| {
            let mut b = advert_body();
            f(&mut b);
            b.sign(&key(1)).unwrap()
        };
        let too_long = sign(|b| b.deadline_ms = b.issued_at_ms + MAX_ADVERT_TTL_MS + 1);
        assert_eq!(too_long.verify(NOW), Err(MarketError::BadDeadline));
        let longest = sign(|b| b.deadline_ms = b.issued_at_ms + MAX_ADVERT_TTL_MS);
        assert_eq!(longest.verify(NOW), Ok(()));
        let backwards = sign(|b| b.deadline_ms = b.issued_at_ms);
        assert_eq!(backwards.verify(NOW - 1), Err(MarketError::BadDeadline));
        let no_tokens = sign(|b| b.max_tokens = 0);
        assert_eq!(
            no_tokens.verify(NOW),
            Err(MarketError::Limits("max_tokens"))
        );
        let many_tokens = sign(|b| b.max_tokens = MAX_OUTPUT_TOKENS + 1);
        assert_eq!(
            many_tokens.verify(NOW),
            Err(MarketError::Limits("max_tokens"))
        );
        let big_prompt = sign(|b| b.prompt_bytes = MAX_PROMPT_BYTES as u32 + 1);
        assert_eq!(
            big_prompt.verify(NOW),
            Err(MarketError::Limits("prompt_bytes"))
        );
        let biggest = sign(|b| {
            b.prompt_bytes = MAX_PROMPT_BYTES as u32;
            b.max_tokens = MAX_OUTPUT_TOKENS;
        });
        assert_eq!(biggest.verify(NOW), Ok(()));
    }

    #[test]
    fn advert_from_peer_without_inline_key_is_refused() {
        // A hash-style PeerId (sha256 multihash) does not carry its key.
        let mut hashed = vec![0x12, 32];
        hashed.extend_from_slice(&[9; 32]);
        let mut a = advert();
        a.body.router = PeerId::from_bytes(&hashed).unwrap();
        assert_eq!(a.verify(NOW), Err(MarketError::NoPublicKey));
    }

    #[test]
    fn bids_are_checked_against_advert_sender_and_time() {
        let a = advert_body();
        let b = bid(2);
        let at = NOW + 200;
        assert_eq!(b.verify(&a, &peer(3), at), Err(MarketError::NotSender));

        let mut other = a.clone();
        other.advert_id = TaskId([8; 16]);
        assert_eq!(
            b.verify(&other, &peer(2), at),
            Err(MarketError::Mismatch("advert_id"))
        );
        let mut other = a.clone();
        other.router = peer(4);
        assert_eq!(
            b.verify(&other, &peer(2), at),
            Err(MarketError::Mismatch("router"))
        );
        let mut other = a.clone();
        other.model = Digest::of(b"other model");
        assert_eq!(
            b.verify(&other, &peer(2), at),
            Err(MarketError::Mismatch("model"))
        );

        let mut cheap = a.clone();
        cheap.max_price_per_unit = 49;
        assert_eq!(
            b.verify(&cheap, &peer(2), at),
            Err(MarketError::PriceTooHigh { price: 50, max: 49 })
        );
        cheap.max_price_per_unit = 50;
        assert_eq!(b.verify(&cheap, &peer(2), at), Ok(()));

        // The bid's own expiry, then the advert's deadline.
        assert_eq!(
            b.verify(&a, &peer(2), NOW + 5_000),
            Err(MarketError::Expired)
        );
        let mut long = bid_body(2);
        long.expires_at_ms = NOW + 20_000;
        let long = long.sign(&key(2)).unwrap();
        assert_eq!(long.verify(&a, &peer(2), NOW + 10_000), Ok(()));
        assert_eq!(
            long.verify(&a, &peer(2), NOW + 10_001),
            Err(MarketError::Expired)
        );
        // Issued too far ahead of the verifier's clock.
        assert!(matches!(
            b.verify(&a, &peer(2), NOW + 100 - MAX_CLOCK_SKEW_MS - 1),
            Err(MarketError::Future { .. })
        ));
    }

    #[test]
    fn best_bid_picks_by_score_then_price_then_peer() {
        assert!(best_bid(&[], |_| 0).is_none());
        let with = |orch: u8, price: u64, slots: u32| {
            let mut b = bid_body(orch);
            b.price_per_unit = price;
            b.free_slots = slots;
            b.sign(&key(orch)).unwrap()
        };
        // Score by free slots: the most free slots wins regardless of price.
        let bids = vec![with(2, 10, 1), with(3, 90, 5), with(4, 20, 3)];
        let best = best_bid(&bids, |b| u64::from(b.body.free_slots)).unwrap();
        assert_eq!(best.body.orchestrator, peer(3));
        // Equal scores: the cheapest wins.
        let best = best_bid(&bids, |_| 1).unwrap();
        assert_eq!(best.body.orchestrator, peer(2));
        // Equal scores and prices: the lowest PeerId bytes wins, in any order.
        let mut tied = vec![
            with(2, 10, 1),
            with(3, 10, 1),
            with(4, 10, 1),
            with(5, 10, 1),
        ];
        let lowest = tied
            .iter()
            .map(|b| b.body.orchestrator)
            .min_by_key(|p| p.to_bytes())
            .unwrap();
        for _ in 0..tied.len() {
            tied.rotate_left(1);
            assert_eq!(best_bid(&tied, |_| 7).unwrap().body.orchestrator, lowest);
            let mut rev = tied.clone();
            rev.reverse();
            assert_eq!(best_bid(&rev, |_| 7).unwrap().body.orchestrator, lowest);
        }
    }

    #[test]
    fn wire_round_trip_and_cap() {
        let a = advert();
        let bytes = a.encode().unwrap();
        assert!(bytes.len() <= TaskAdvert::MAX_BYTES);
        assert_eq!(TaskAdvert::decode(&bytes).unwrap(), a);
        assert_eq!(TaskAdvert::decode(&bytes).unwrap().verify(NOW), Ok(()));
        assert!(matches!(
            Bid::decode(&bytes),
            Err(DecodeError::WrongKind { .. })
        ));

        let b = bid(2);
        let bytes = b.encode().unwrap();
        assert!(bytes.len() <= Bid::MAX_BYTES);
        assert_eq!(Bid::decode(&bytes).unwrap(), b);

        let mut padded = bytes.clone();
        padded.resize(Bid::MAX_BYTES + 1, 0);
        assert!(matches!(
            Bid::decode(&padded),
            Err(DecodeError::TooLarge { .. })
        ));
        let padded = vec![0; TaskAdvert::MAX_BYTES + 1];
        assert!(matches!(
            TaskAdvert::decode(&padded),
            Err(DecodeError::TooLarge { .. })
        ));

        let mut huge = advert();
        huge.sig = vec![0; TaskAdvert::MAX_BYTES];
        assert!(matches!(huge.encode(), Err(EncodeError::TooLarge { .. })));
        let mut huge = bid(2);
        huge.sig = vec![0; Bid::MAX_BYTES];
        assert!(matches!(huge.encode(), Err(EncodeError::TooLarge { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any advert and bid within their limits round-trip through a frame
        /// under the cap and verify after decoding.
        #[test]
        fn signed_messages_round_trip_and_verify(
            id in any::<[u8; 16]>(),
            model in any::<[u8; 32]>(),
            prompt_bytes in 0..=MAX_PROMPT_BYTES as u32,
            max_tokens in 1..=MAX_OUTPUT_TOKENS,
            max_price in any::<u64>(),
            issued in 0..u64::MAX / 2,
            ttl in 1..=MAX_ADVERT_TTL_MS,
            price in any::<u64>(),
            slots in any::<u32>(),
            account in any::<[u8; 32]>(),
            router_seed in any::<[u8; 32]>(),
            orch_seed in any::<[u8; 32]>(),
        ) {
            let router = Keypair::ed25519_from_bytes(router_seed).unwrap();
            let orch = Keypair::ed25519_from_bytes(orch_seed).unwrap();
            let advert = TaskAdvertBody {
                advert_id: TaskId(id),
                router: router.public().to_peer_id(),
                model: Digest(model),
                prompt_bytes,
                max_tokens,
                max_price_per_unit: max_price,
                issued_at_ms: issued,
                deadline_ms: issued + ttl,
            }
            .sign(&router)
            .unwrap();
            let bytes = advert.encode().unwrap();
            prop_assert!(bytes.len() <= TaskAdvert::MAX_BYTES);
            let decoded = TaskAdvert::decode(&bytes).unwrap();
            prop_assert_eq!(&decoded, &advert);
            prop_assert_eq!(decoded.verify(issued), Ok(()));

            let bid = BidBody {
                advert_id: advert.id(),
                router: advert.body.router,
                orchestrator: orch.public().to_peer_id(),
                model: advert.body.model,
                price_per_unit: price % max_price.saturating_add(1),
                free_slots: slots,
                account: Address(account),
                issued_at_ms: issued,
                expires_at_ms: issued + ttl,
            }
            .sign(&orch)
            .unwrap();
            let bytes = bid.encode().unwrap();
            prop_assert!(bytes.len() <= Bid::MAX_BYTES);
            let decoded = Bid::decode(&bytes).unwrap();
            prop_assert_eq!(&decoded, &bid);
            prop_assert_eq!(
                decoded.verify(&advert.body, &orch.public().to_peer_id(), issued),
                Ok(())
            );
        }
    }
}
