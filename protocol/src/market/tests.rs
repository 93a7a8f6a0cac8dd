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
