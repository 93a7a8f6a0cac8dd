use super::*;
use cactus_protocol::Digest;

fn advert(peer: PeerId, seq: u64, free: u32, models: &[&str]) -> CapabilityAdvert {
    CapabilityAdvert {
        peer,
        protocol_version: PROTOCOL_VERSION,
        node_version: "t".into(),
        models: models
            .iter()
            .map(|n| ModelId {
                name: (*n).into(),
                sha256: Digest::of(n.as_bytes()),
            })
            .collect(),
        free_slots: free,
        total_slots: 4,
        queued: 0,
        price_per_token: 1,
        account: cactus_protocol::contract::Address([1; 32]),
        stake: 1_000,
        addrs: Vec::new(),
        seq,
        issued_at_ms: 0,
        cache: Vec::new(),
    }
}

#[test]
fn newest_advert_wins_and_stale_entries_go() {
    let t0 = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(30));
    let p = PeerId::random();
    assert_eq!(t.upsert(advert(p, 5, 1, &["a"]), t0), Upsert::Joined);
    assert_eq!(t.upsert(advert(p, 4, 3, &["a"]), t0), Upsert::Ignored);
    assert_eq!(t.upsert(advert(p, 6, 2, &["a"]), t0), Upsert::Updated);
    assert_eq!(t.snapshot()[0].free_slots, 2);
    let mut foreign = advert(PeerId::random(), 1, 1, &["a"]);
    foreign.protocol_version += 1;
    assert_eq!(t.upsert(foreign, t0), Upsert::Ignored);
    assert!(t.prune(t0 + Duration::from_secs(10)).is_empty());
    assert_eq!(t.prune(t0 + Duration::from_secs(31)), vec![p]);
    assert!(t.is_empty());
}

#[test]
fn picks_admitted_servers_of_the_model_by_score_and_resolves_models() {
    let now = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(30));
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    t.upsert(advert(a, 1, 1, &["m"]), now);
    t.upsert(advert(b, 1, 1, &["m", "n"]), now);
    t.upsert(advert(c, 1, 3, &["n"]), now);
    for p in [a, b, c] {
        assert!(t.set_eligible(&p, true));
    }
    t.record_rtt(&a, Duration::from_millis(400));
    t.record_rtt(&b, Duration::from_millis(2));
    t.record_outcome(&a, Err(FailureKind::Timeout), 1);
    // A record computed ahead changes nothing until it is recorded, and is
    // then what was recorded.
    let ahead = t.after_outcome(&b, Ok(Some(10)), 1).unwrap();
    assert_eq!(t.after_outcome(&b, Ok(Some(10)), 1), Some(ahead.clone()));
    let rep = t.record_outcome(&b, Ok(Some(10)), 1).unwrap();
    assert_eq!(rep, ahead);
    assert_eq!((rep.success_count(), rep.ms_per_token), (1, Some(10)));
    let m = t.resolve_model(Some("m")).unwrap();
    assert_eq!(t.resolve_model(Some(&m.sha256.to_hex())), Some(m.clone()));
    assert_eq!(t.resolve_model(Some("zzz")), None);
    let seed = Digest([9; 32]);
    let task = |i: u64| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        cactus_protocol::TaskId(id)
    };
    // Only a and b serve "m"; the faster, more reliable b wins most draws,
    // and the same task always gets the same pick.
    let mut wins = HashMap::new();
    for i in 0..500 {
        let p = t.pick(&m.sha256, &HashSet::new(), &seed, &task(i)).unwrap();
        assert_eq!(Some(p), t.pick(&m.sha256, &HashSet::new(), &seed, &task(i)));
        *wins.entry(p).or_insert(0) += 1;
    }
    assert!(!wins.contains_key(&c));
    assert!(wins[&b] > 5 * wins[&a], "{wins:?}");
    assert_eq!(
        t.pick(&m.sha256, &HashSet::from([a, b]), &seed, &task(0)),
        None
    );
    assert!(t.resolve_model(None).is_some());
    // An orchestrator the chain refused is never picked.
    t.set_eligible(&a, false);
    assert_eq!(
        t.pick(&m.sha256, &HashSet::from([b]), &seed, &task(0)),
        None
    );
    assert_eq!(t.eligible_len(), 2);
}

#[test]
fn an_orchestrator_asking_over_the_price_cap_is_never_picked() {
    let now = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(30)).with_max_price(10);
    let (cheap, dear) = (PeerId::random(), PeerId::random());
    t.upsert(advert(cheap, 1, 4, &["m"]), now);
    t.upsert(advert(dear, 1, 4, &["m"]), now);
    for p in [cheap, dear] {
        t.set_eligible(&p, true);
    }
    let model = Digest::of(b"m");
    let none = HashSet::new();
    let seed = Digest([9; 32]);
    let task = cactus_protocol::TaskId([1; 16]);
    // Admitted at a fair price, it raises it in a later advert.
    let mut raised = advert(dear, 2, 4, &["m"]);
    raised.price_per_token = 11;
    raised.cache = vec![cactus_protocol::CachedPrefix {
        model,
        hash: Digest::of(b"k"),
        bytes: 1,
        tokens: 1,
    }];
    assert_eq!(t.upsert(raised, now), Upsert::Updated);
    for i in 0..200u8 {
        let task = cactus_protocol::TaskId([i; 16]);
        assert_eq!(t.pick(&model, &none, &seed, &task), Some(cheap));
    }
    assert_eq!(t.pick_cached(&model, &none, b"k"), None);
    assert_eq!(t.pick(&model, &HashSet::from([cheap]), &seed, &task), None);
}

#[test]
fn the_longest_cached_prefix_with_a_free_slot_is_picked() {
    let now = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(30));
    let model = Digest::of(b"m");
    let key = b"user\0hi\0assistant\0hello\0user\0more\0".to_vec();
    let held = |n: usize, tokens| cactus_protocol::CachedPrefix {
        model,
        bytes: n as u32,
        hash: Digest::of(&key[..n]),
        tokens,
    };
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut short = advert(a, 1, 1, &["m"]);
    short.cache = vec![held(8, 5)];
    let mut long = advert(b, 1, 1, &["m"]);
    long.cache = vec![held(26, 12)];
    let mut full = advert(c, 1, 0, &["m"]);
    full.cache = vec![held(key.len(), 20)];
    for ad in [short, long, full] {
        let p = ad.peer;
        t.upsert(ad, now);
        t.set_eligible(&p, true);
    }
    // c holds the most but has no free slot; b holds more than a.
    assert_eq!(t.pick_cached(&model, &HashSet::new(), &key), Some((b, 12)));
    assert_eq!(
        t.pick_cached(&model, &HashSet::from([b]), &key),
        Some((a, 5))
    );
    // Another conversation matches nobody.
    assert_eq!(
        t.pick_cached(&model, &HashSet::new(), b"user\0other\0"),
        None
    );
}

#[test]
fn a_changed_stake_is_checked_again_no_more_often_than_the_gap() {
    let t0 = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(30));
    let p = PeerId::random();
    assert_eq!(t.upsert(advert(p, 1, 1, &["a"]), t0), Upsert::Joined);
    let mut flipped = advert(p, 2, 1, &["a"]);
    flipped.stake += 1;
    assert_eq!(
        t.upsert(flipped.clone(), t0 + Duration::from_secs(1)),
        Upsert::Ignored
    );
    let later = t0 + READMIT_MIN_GAP;
    assert_eq!(t.upsert(flipped, later), Upsert::Joined);
}

#[test]
fn an_orchestrator_the_chain_could_not_judge_is_asked_about_again() {
    let t0 = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(3600));
    let p = PeerId::random();
    assert_eq!(t.upsert(advert(p, 1, 1, &["a"]), t0), Upsert::Joined);
    // The check failed: no verdict. Soon after, an advert is only news.
    let soon = t0 + Duration::from_secs(1);
    assert_eq!(t.upsert(advert(p, 2, 1, &["a"]), soon), Upsert::Updated);
    // Later, it is judged again.
    let later = t0 + READMIT_MIN_GAP;
    assert_eq!(t.upsert(advert(p, 3, 1, &["a"]), later), Upsert::Joined);
    // A check that never started (the admission queue was full) is asked
    // about on the next advert, not a gap later.
    let q = PeerId::random();
    assert_eq!(t.upsert(advert(q, 1, 1, &["a"]), later), Upsert::Joined);
    t.ask_again(&q);
    let next = later + Duration::from_secs(1);
    assert_eq!(t.upsert(advert(q, 2, 1, &["a"]), next), Upsert::Joined);
    // A verdict given, refused or not, stands.
    t.set_eligible(&p, false);
    let much_later = later + READMIT_MIN_GAP * 3;
    assert_eq!(
        t.upsert(advert(p, 4, 1, &["a"]), much_later),
        Upsert::Updated
    );
}

#[test]
fn a_refusal_is_asked_about_again_after_a_while_an_admission_and_a_ban_are_not() {
    let t0 = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(3600));
    let (refused, admitted, banned) = (PeerId::random(), PeerId::random(), PeerId::random());
    for p in [refused, admitted, banned] {
        assert_eq!(t.upsert(advert(p, 1, 1, &["a"]), t0), Upsert::Joined);
    }
    t.set_eligible(&refused, false);
    t.set_eligible(&admitted, true);
    t.set_eligible(&banned, false);
    t.ban(&banned);
    let before = t0 + REJUDGE_REFUSED - Duration::from_secs(1);
    let after = t0 + REJUDGE_REFUSED;
    assert_eq!(
        t.upsert(advert(refused, 2, 1, &["a"]), before),
        Upsert::Updated
    );
    // Registered since, say: the chain is asked again, and meanwhile it
    // gets no task.
    assert_eq!(
        t.upsert(advert(refused, 3, 1, &["a"]), after),
        Upsert::Joined
    );
    assert_eq!(t.get(&refused).unwrap().eligible, None);
    assert_eq!(
        t.upsert(advert(admitted, 2, 1, &["a"]), after),
        Upsert::Updated
    );
    assert_eq!(
        t.upsert(advert(banned, 2, 1, &["a"]), after),
        Upsert::Updated
    );
    // Asked again, it is not asked again at once.
    t.set_eligible(&refused, false);
    let soon = after + Duration::from_secs(1);
    assert_eq!(
        t.upsert(advert(refused, 4, 1, &["a"]), soon),
        Upsert::Updated
    );
}

#[test]
fn strangers_never_push_an_admitted_orchestrator_out() {
    let t0 = Instant::now();
    let mut t = OrchestratorTable::new(Duration::from_secs(3600));
    let admitted = PeerId::random();
    t.upsert(advert(admitted, 1, 1, &["a"]), t0);
    t.set_eligible(&admitted, true);
    let first_stranger = PeerId::random();
    t.upsert(advert(first_stranger, 1, 1, &["a"]), t0);
    for i in 2..MAX_ORCHESTRATORS {
        let at = t0 + Duration::from_millis(i as u64);
        assert_eq!(
            t.upsert(advert(PeerId::random(), 1, 1, &["a"]), at),
            Upsert::Joined
        );
    }
    assert_eq!(t.len(), MAX_ORCHESTRATORS);
    // Full: a newcomer takes the place of the stalest stranger.
    let at = t0 + Duration::from_secs(10);
    assert_eq!(
        t.upsert(advert(PeerId::random(), 1, 1, &["a"]), at),
        Upsert::Joined
    );
    let peers: Vec<PeerId> = t.snapshot().iter().map(|o| o.peer).collect();
    assert!(peers.contains(&admitted));
    assert!(!peers.contains(&first_stranger));
    // With only admitted orchestrators left, a newcomer is not taken in.
    let mut full = OrchestratorTable::new(Duration::from_secs(3600));
    for _ in 0..MAX_ORCHESTRATORS {
        let p = PeerId::random();
        full.upsert(advert(p, 1, 1, &["a"]), t0);
        full.set_eligible(&p, true);
    }
    assert_eq!(
        full.upsert(advert(PeerId::random(), 1, 1, &["a"]), at),
        Upsert::Ignored
    );
}
