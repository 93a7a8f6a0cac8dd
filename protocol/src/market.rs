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
            .map_err(|e| MarketError::Sign(crate::wire::SourceError::new(e)))?;
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
    /// The account on the chain that is to be paid.
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
            .map_err(|e| MarketError::Sign(crate::wire::SourceError::new(e)))?;
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
    cbor4ii::serde::to_writer(&mut out, body)
        .map_err(|e| MarketError::Encode(crate::wire::SourceError::new(e)))?;
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
    Encode(#[source] crate::wire::SourceError),
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(#[source] crate::wire::SourceError),
}

#[cfg(test)]
mod tests;
