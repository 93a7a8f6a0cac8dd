//! The gossip validator: what to make of a message on a topic we subscribe
//! to. Pure (no swarm, no clock of its own), so that every verdict is tested
//! here; the event loop only reports the verdict to gossipsub and hands
//! accepted events to the role logic.

use super::NetworkEvent;
use cactus_protocol::market::MarketError;
use cactus_protocol::{CAPABILITY_TOPIC, CapabilityAdvert, TASK_TOPIC, TaskAdvert, Wire};
use libp2p::PeerId;
use libp2p::gossipsub::{IdentTopic, MessageAcceptance, TopicHash};

/// What to do with one gossip message.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a verdict lives only until the loop applies it; boxing would cost an allocation per message"
)]
pub(super) enum Verdict {
    /// Valid: forward it and hand the event to the role logic.
    Accept(NetworkEvent),
    /// Invalid: drop it and count it against the peer that forwarded it.
    Reject(&'static str),
    /// Drop it without blaming anyone (e.g. expired on the way).
    Ignore(&'static str),
}

impl Verdict {
    /// What gossipsub is told, and the event for the role logic if any.
    pub(super) fn into_parts(self) -> (MessageAcceptance, Result<NetworkEvent, &'static str>) {
        match self {
            Verdict::Accept(event) => (MessageAcceptance::Accept, Ok(event)),
            Verdict::Reject(why) => (MessageAcceptance::Reject, Err(why)),
            Verdict::Ignore(why) => (MessageAcceptance::Ignore, Err(why)),
        }
    }
}

/// The hashes of the topics this node subscribes to.
#[derive(Debug, Clone)]
pub(super) struct Topics {
    pub(super) capability: IdentTopic,
    pub(super) task: IdentTopic,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            capability: IdentTopic::new(CAPABILITY_TOPIC),
            task: IdentTopic::new(TASK_TOPIC),
        }
    }
}

/// Judges a message on `topic`. `source` is the publisher gossipsub
/// authenticated (messages are signed), `now_ms` the current Unix time.
///
/// Decoding checks the size first ([`Wire::decode`]), so an oversize message
/// is rejected before it is parsed.
pub(super) fn validate(
    topics: &Topics,
    topic: &TopicHash,
    data: &[u8],
    source: Option<PeerId>,
    now_ms: u64,
) -> Verdict {
    if *topic == topics.task.hash() {
        task_advert(data, source, now_ms)
    } else if *topic == topics.capability.hash() {
        capability_advert(data, source)
    } else {
        // Gossipsub only delivers topics we subscribe to; nobody is blamed
        // should that ever change.
        Verdict::Ignore("message on an unknown topic")
    }
}

/// A router's call for bids: signed by the router that published it, within
/// its limits, not expired. Expiry and clock skew are ignored rather than
/// rejected: the peer that forwarded it in time is not at fault.
fn task_advert(data: &[u8], source: Option<PeerId>, now_ms: u64) -> Verdict {
    match TaskAdvert::decode(data) {
        Ok(advert) if Some(advert.body.router) == source => match advert.verify(now_ms) {
            Ok(()) => Verdict::Accept(NetworkEvent::TaskAdvert(advert)),
            Err(MarketError::Expired | MarketError::Future { .. }) => {
                Verdict::Ignore("task advert expired or from the future")
            }
            Err(_) => Verdict::Reject("task advert invalid"),
        },
        Ok(_) => Verdict::Reject("task advert not signed by its router"),
        Err(_) => Verdict::Reject("undecodable task advert"),
    }
}

/// An orchestrator's offer: well-formed and published by the orchestrator it
/// describes (gossipsub signs each message with the publisher's key).
fn capability_advert(data: &[u8], source: Option<PeerId>) -> Verdict {
    match CapabilityAdvert::decode(data) {
        Ok(advert) if advert.validate().is_ok() && Some(advert.peer) == source => {
            Verdict::Accept(NetworkEvent::Advert(advert))
        }
        Ok(_) => Verdict::Reject("advert invalid or not signed by its subject"),
        Err(_) => Verdict::Reject("undecodable advert"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::contract::Address;
    use cactus_protocol::market::TaskAdvertBody;
    use cactus_protocol::{Digest, TaskId};
    use libp2p::identity::Keypair;

    const NOW: u64 = 1_700_000_000_000;

    fn capability(peer: PeerId) -> CapabilityAdvert {
        CapabilityAdvert {
            peer,
            protocol_version: cactus_protocol::PROTOCOL_VERSION,
            node_version: "0.1.0".into(),
            models: Vec::new(),
            free_slots: 1,
            total_slots: 2,
            queued: 0,
            price_per_token: 10,
            account: Address([7; 32]),
            stake: 100,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            seq: 1,
            issued_at_ms: NOW,
            cache: Vec::new(),
        }
    }

    fn task_body(router: PeerId) -> TaskAdvertBody {
        TaskAdvertBody {
            advert_id: TaskId([1; 16]),
            router,
            model: Digest([2; 32]),
            prompt_bytes: 5,
            max_tokens: 8,
            max_price_per_unit: 10,
            issued_at_ms: NOW,
            deadline_ms: NOW + 30_000,
        }
    }

    fn judge(topic: &IdentTopic, data: &[u8], source: PeerId, now: u64) -> Verdict {
        validate(&Topics::default(), &topic.hash(), data, Some(source), now)
    }

    #[test]
    fn accepts_a_capability_advert_from_its_subject() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let data = capability(peer).encode().unwrap();
        let topics = Topics::default();
        match judge(&topics.capability, &data, peer, NOW) {
            Verdict::Accept(NetworkEvent::Advert(a)) => assert_eq!(a.peer, peer),
            v => panic!("expected an accepted advert, got {v:?}"),
        }
    }

    #[test]
    fn rejects_a_capability_advert_for_another_peer() {
        let signer = Keypair::generate_ed25519().public().to_peer_id();
        let subject = Keypair::generate_ed25519().public().to_peer_id();
        let data = capability(subject).encode().unwrap();
        let v = judge(&Topics::default().capability, &data, signer, NOW);
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }

    #[test]
    fn rejects_an_inconsistent_capability_advert() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let mut advert = capability(peer);
        advert.free_slots = advert.total_slots + 1;
        let data = advert.encode().unwrap();
        let v = judge(&Topics::default().capability, &data, peer, NOW);
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }

    #[test]
    fn rejects_undecodable_and_oversize_bytes_on_both_topics() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let topics = Topics::default();
        let garbage = vec![0xAB; 64];
        let oversize = vec![0u8; CapabilityAdvert::MAX_BYTES.max(TaskAdvert::MAX_BYTES) + 1];
        for topic in [&topics.capability, &topics.task] {
            for data in [&garbage, &oversize] {
                let v = judge(topic, data, peer, NOW);
                assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
            }
        }
    }

    #[test]
    fn rejects_a_message_without_an_authenticated_source() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let data = capability(peer).encode().unwrap();
        let topics = Topics::default();
        let v = validate(&topics, &topics.capability.hash(), &data, None, NOW);
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }

    #[test]
    fn accepts_a_task_advert_signed_by_its_router() {
        let key = Keypair::generate_ed25519();
        let router = key.public().to_peer_id();
        let data = task_body(router).sign(&key).unwrap().encode().unwrap();
        match judge(&Topics::default().task, &data, router, NOW + 1) {
            Verdict::Accept(NetworkEvent::TaskAdvert(a)) => assert_eq!(a.body.router, router),
            v => panic!("expected an accepted task advert, got {v:?}"),
        }
    }

    #[test]
    fn ignores_an_expired_or_future_task_advert() {
        let key = Keypair::generate_ed25519();
        let router = key.public().to_peer_id();
        let data = task_body(router).sign(&key).unwrap().encode().unwrap();
        let task = Topics::default().task;
        let expired = judge(&task, &data, router, NOW + 30_000);
        assert!(matches!(expired, Verdict::Ignore(_)), "{expired:?}");
        let early = judge(&task, &data, router, NOW - 10 * 60_000);
        assert!(matches!(early, Verdict::Ignore(_)), "{early:?}");
    }

    #[test]
    fn rejects_an_invalid_task_advert() {
        let key = Keypair::generate_ed25519();
        let router = key.public().to_peer_id();
        let mut body = task_body(router);
        body.max_tokens = 0;
        let data = body.sign(&key).unwrap().encode().unwrap();
        let v = judge(&Topics::default().task, &data, router, NOW);
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }

    #[test]
    fn rejects_a_task_advert_forwarded_as_someone_else() {
        let key = Keypair::generate_ed25519();
        let router = key.public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let data = task_body(router).sign(&key).unwrap().encode().unwrap();
        let v = judge(&Topics::default().task, &data, other, NOW);
        assert!(matches!(v, Verdict::Reject(_)), "{v:?}");
    }

    #[test]
    fn ignores_an_unknown_topic() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let data = capability(peer).encode().unwrap();
        let v = judge(&IdentTopic::new("elsewhere"), &data, peer, NOW);
        assert!(matches!(v, Verdict::Ignore(_)), "{v:?}");
    }

    #[test]
    fn verdicts_map_to_gossipsub_acceptance() {
        let (a, _) = Verdict::Reject("x").into_parts();
        assert!(matches!(a, MessageAcceptance::Reject));
        let (a, _) = Verdict::Ignore("x").into_parts();
        assert!(matches!(a, MessageAcceptance::Ignore));
    }
}
