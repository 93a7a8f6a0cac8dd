//! Bad input over a real mesh (loopback, stub engine): what the unit tests
//! of the decoders and the gossip validator check one message at a time,
//! here against running nodes, with the typed error each message gets and
//! what it costs its sender.
//!
//! Already covered elsewhere, and not repeated here: undecodable and
//! oversize bytes, forged subjects, expired and future task adverts, one
//! verdict at a time (`network/gossip.rs`); oversize request-response
//! frames (`network/codec.rs`); truncated, corrupted and wrong-kind frames
//! (`protocol/src/wire.rs`, `protocol/src/proptests.rs`); invalid bids (over
//! the price cap) and task adverts (over the window cap) costing their
//! sender score, and unauthorised work requests
//! (`mesh::invalid_task_adverts_and_bids_cost_the_sender_gossipsub_score`,
//! `mesh::only_routers_the_ledger_authorizes_get_work`); invalid task
//! requests getting `InvalidRequest` and wrong roles `WrongRole`
//! (`mesh::invalid_requests_and_wrong_roles_get_typed_errors`).
//!
//! Here: gossip spam from many keys, one kind of bad advert per spammer
//! (oversize, truncated, malformed, replayed, inconsistent), sinks every
//! spammer's score at the router while an honest orchestrator's adverts
//! still reach it and its tasks still run; and task adverts with a bad
//! signature or replayed by a peer that did not sign them cost their
//! publisher score, while a stale one (expired on the way) is dropped
//! without blaming anyone; and task requests the node cannot read (cut
//! short, over the cap, malformed) cost their sender score each time.

use cactus_node::client;
use cactus_node::fuzzing::{GossipOutcome, GossipTopic, gossip_validate};
use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::StubEngine;
use cactus_node::network::{self, Network, NetworkConfig};
use cactus_node::time::now_ms;
use cactus_node::{Node, NodeConfig, Role};
use cactus_protocol::contract::Address;
use cactus_protocol::market::TaskAdvertBody;
use cactus_protocol::wire::FRAME_VERSION;
use cactus_protocol::{
    CapabilityAdvert, DecodeError, Digest, MarketError, PromptFormat, SamplingParams, TaskAdvert,
    TaskId, TaskSpec, Wire,
};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound on every wait; each finishes in a few seconds when things work.
const LIMIT: Duration = Duration::from_secs(60);
/// How often a condition is checked again while waiting on it.
const POLL: Duration = Duration::from_millis(100);
/// Spammer identities in the spam test.
const SPAMMERS: usize = 20;

fn loopback() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]
}

fn config(role: Role, dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network: NetworkConfig {
            listen: loopback(),
            bootstrap,
            ..NetworkConfig::default()
        },
        ..NodeConfig::default()
    }
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

/// Polls `cond` until it holds; panics with `what` after [`LIMIT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(LIMIT, async {
        while !cond().await {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// The score `of` has at `at` (0 when `at` does not know it yet).
async fn score(at: &Network, of: PeerId) -> f64 {
    at.peer_score(of).await.unwrap().unwrap_or(0.0)
}

/// A bare mesh peer (no role logic) connected to `addr`, its events
/// drained so that it never holds its loop up.
async fn bare_peer(key: Keypair, addr: &Multiaddr, shutdown: &CancellationToken) -> Network {
    let config = NetworkConfig {
        listen: loopback(),
        ..NetworkConfig::default()
    };
    let (net, mut events, _) = network::spawn(key, config, shutdown.clone()).unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    within(net.dial(addr.clone())).await.unwrap();
    net
}

/// CRC-32 (IEEE), as frames carry it; bitwise, the tests need little of it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A frame of kind `kind` around `body`, with a valid checksum.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![FRAME_VERSION, kind];
    out.extend_from_slice(body);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn capability(peer: PeerId, seq: u64) -> CapabilityAdvert {
    CapabilityAdvert {
        peer,
        protocol_version: cactus_protocol::PROTOCOL_VERSION,
        node_version: "0.1.0".into(),
        models: Vec::new(),
        free_slots: 1,
        total_slots: 1,
        queued: 0,
        price_per_token: 1,
        account: Address([9; 32]),
        stake: 1_000_000,
        addrs: Vec::new(),
        seq,
        issued_at_ms: now_ms(),
        cache: Vec::new(),
    }
}

/// The kinds of bad capability advert the spammers publish.
#[derive(Debug, Clone, Copy)]
enum Spam {
    /// A frame one byte or more over the advert's cap.
    Oversize,
    /// A valid advert cut short.
    Truncated,
    /// A checksummed frame of the right kind whose body is no advert.
    Malformed,
    /// The honest orchestrator's advert, published by someone else.
    Replayed,
    /// The spammer's own advert, with more free slots than slots.
    Inconsistent,
}

const KINDS: [Spam; 5] = [
    Spam::Oversize,
    Spam::Truncated,
    Spam::Malformed,
    Spam::Replayed,
    Spam::Inconsistent,
];

/// The `n`th message of `kind` from `me`; every one differs, since gossip
/// is content-addressed and a repeat would be dropped unjudged.
fn spam(kind: Spam, me: PeerId, honest: PeerId, n: u64) -> Vec<u8> {
    match kind {
        Spam::Oversize => {
            let mut b = capability(me, n).encode().unwrap();
            b.resize(CapabilityAdvert::MAX_BYTES + 1 + (n % 512) as usize, 0xAA);
            b
        }
        Spam::Truncated => {
            let b = capability(me, n).encode().unwrap();
            b[..b.len() - 1 - (n % 4) as usize].to_vec()
        }
        Spam::Malformed => {
            let mut body = vec![0xA1, 0x61, b'n'];
            body.push(0x1B);
            body.extend_from_slice(&n.to_be_bytes());
            frame(CapabilityAdvert::KIND as u8, &body)
        }
        Spam::Replayed => capability(honest, n).encode().unwrap(),
        Spam::Inconsistent => {
            let mut a = capability(me, n);
            a.free_slots = a.total_slots + 1;
            a.encode().unwrap()
        }
    }
}

/// Checks the typed error each kind of spam decodes or validates to, and
/// the validator's verdict on it.
fn assert_typed_error(kind: Spam, bytes: &[u8], me: PeerId) {
    let decoded = CapabilityAdvert::decode(bytes);
    match kind {
        Spam::Oversize => assert!(
            matches!(decoded, Err(DecodeError::TooLarge { .. })),
            "{decoded:?}"
        ),
        Spam::Truncated => assert!(matches!(decoded, Err(DecodeError::Checksum)), "{decoded:?}"),
        Spam::Malformed => assert!(
            matches!(decoded, Err(DecodeError::Malformed(_))),
            "{decoded:?}"
        ),
        Spam::Replayed => assert!(decoded.unwrap().validate().is_ok()),
        Spam::Inconsistent => assert!(decoded.unwrap().validate().is_err()),
    }
    let verdict = gossip_validate(GossipTopic::Capability, bytes, Some(me), now_ms());
    assert!(matches!(verdict, GossipOutcome::Reject(_)), "{verdict:?}");
}

/// Twenty identities flood the capability topic with bad adverts, four of
/// each kind. Every spammer's score at the router falls below zero; an
/// honest orchestrator that joins during the flood is still heard (its
/// adverts reach the router's table, its replayed copies do not change
/// it) and runs a client's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_spam_from_many_keys_sinks_the_spammers_and_spares_honest_adverts() {
    let dir = tempfile::tempdir().unwrap();
    let router = Node::start(
        config(Role::Router, dir.path(), vec![]),
        Keypair::generate_ed25519(),
        None,
    )
    .await
    .unwrap();
    let router_addr = router.listen_addrs().await.unwrap()[0].clone();
    let honest_key = Keypair::generate_ed25519();
    let honest = honest_key.public().to_peer_id();

    let shutdown = CancellationToken::new();
    let mut spammers = Vec::new();
    for i in 0..SPAMMERS {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let kind = KINDS[i % KINDS.len()];
        assert_typed_error(kind, &spam(kind, me, honest, 0), me);
        let net = bare_peer(key, &router_addr, &shutdown).await;
        let stop = shutdown.clone();
        let flood = tokio::spawn(async move {
            for n in 1u64.. {
                if stop.is_cancelled() {
                    break;
                }
                let _ = net.publish_advert(spam(kind, me, honest, n)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        spammers.push((me, kind, flood));
    }

    let rn = router.network();
    for &(peer, kind, _) in &spammers {
        wait_until(
            &format!("the router scores the {kind:?} spammer down"),
            move || async move { score(rn, peer).await < 0.0 },
        )
        .await;
    }

    // The flood goes on while an honest orchestrator joins.
    let engine =
        Arc::new(ThreadPool::new(Arc::new(StubEngine::new("stub")), 1, 4)) as Arc<dyn Engine>;
    let orchestrator = Node::start(
        config(Role::Orchestrator, dir.path(), vec![router_addr.clone()]),
        honest_key,
        Some(engine),
    )
    .await
    .unwrap();
    within(router.wait_for_orchestrators(1)).await.unwrap();

    let client = Node::start(
        config(Role::Client, dir.path(), vec![]),
        Keypair::generate_ed25519(),
        None,
    )
    .await
    .unwrap();
    within(client.network().dial(router_addr.clone()))
        .await
        .unwrap();
    within(client::fund_from_faucet(
        client.network(),
        router.peer_id(),
        router.peer_id(),
        500_000,
    ))
    .await
    .unwrap();
    let spec = TaskSpec {
        model: None,
        prompt: "hello through the flood".into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        max_price_per_unit: None,
        request_id: None,
    };
    let result = within(client::submit_to(client.network(), router.peer_id(), spec))
        .await
        .unwrap();
    assert_eq!(result.receipt.body.orchestrator, honest);
    result.receipt.verify().unwrap();

    for (peer, kind, flood) in &spammers {
        assert!(!flood.is_finished(), "the {kind:?} flood stopped early");
        let s = score(router.network(), *peer).await;
        assert!(s < 0.0, "{kind:?} spammer's score {s}");
    }
    let s = score(router.network(), honest).await;
    assert!(s >= 0.0, "the honest orchestrator's score {s}");

    shutdown.cancel();
    for (_, _, flood) in spammers {
        within(flood).await.unwrap();
    }
    client.shutdown().await;
    orchestrator.shutdown().await;
    router.shutdown().await;
}

fn task_advert(router: &Keypair, id: u8, issued_at_ms: u64) -> TaskAdvert {
    TaskAdvertBody {
        advert_id: TaskId([id; 16]),
        router: router.public().to_peer_id(),
        model: Digest::of(b"no such model"),
        prompt_bytes: 5,
        max_tokens: 8,
        max_price_per_unit: 10,
        issued_at_ms,
        deadline_ms: issued_at_ms + 30_000,
    }
    .sign(router)
    .unwrap()
}

/// Publishes `next(n)` for n = 0, 1, ... on the task topic until `done`
/// holds; panics with `what` after [`LIMIT`].
async fn publish_until<F, Fut>(
    what: &str,
    from: &Network,
    mut next: impl FnMut(u8) -> Vec<u8>,
    mut done: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(LIMIT, async {
        let mut n = 0u8;
        loop {
            let _ = from.publish_task_advert(next(n)).await;
            if done().await {
                return;
            }
            n = n.wrapping_add(1);
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// Task adverts with a forged signature, or signed by a router and
/// republished by another peer, cost the peer that published them score
/// at an orchestrator; one that expired on the way is dropped without
/// blame: its publisher, whose fresh adverts are accepted, keeps a
/// positive score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_and_replayed_task_adverts_cost_score_and_stale_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Arc::new(ThreadPool::new(Arc::new(StubEngine::new("stub")), 1, 4)) as Arc<dyn Engine>;
    let orchestrator = Node::start(
        config(Role::Orchestrator, dir.path(), vec![]),
        Keypair::generate_ed25519(),
        Some(engine),
    )
    .await
    .unwrap();
    let addr = orchestrator.listen_addrs().await.unwrap()[0].clone();
    let shutdown = CancellationToken::new();
    let (forger_key, replayer_key, stale_key) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let (forger, replayer, stale) = (
        forger_key.public().to_peer_id(),
        replayer_key.public().to_peer_id(),
        stale_key.public().to_peer_id(),
    );
    let forger_net = bare_peer(forger_key.clone(), &addr, &shutdown).await;
    let replayer_net = bare_peer(replayer_key, &addr, &shutdown).await;
    let stale_net = bare_peer(stale_key.clone(), &addr, &shutdown).await;
    let o = orchestrator.network();

    // A bad signature: typed as such, rejected, and the forger scored down.
    let forged = |n: u8| {
        let mut a = task_advert(&forger_key, n, now_ms());
        let i = usize::from(n) % a.sig.len();
        a.sig[i] ^= 0x01;
        a
    };
    let sample = forged(0);
    assert_eq!(sample.verify(now_ms()), Err(MarketError::BadSignature));
    let verdict = gossip_validate(
        GossipTopic::Task,
        &sample.encode().unwrap(),
        Some(forger),
        now_ms(),
    );
    assert_eq!(verdict, GossipOutcome::Reject("task advert invalid"));
    publish_until(
        "the forger's score falls",
        &forger_net,
        |n| forged(n).encode().unwrap(),
        move || async move { score(o, forger).await < 0.0 },
    )
    .await;

    // A replay: adverts the stale peer signed, published by another.
    let replayed = |n: u8| task_advert(&stale_key, 100 + n, now_ms()).encode().unwrap();
    let verdict = gossip_validate(GossipTopic::Task, &replayed(0), Some(replayer), now_ms());
    assert_eq!(
        verdict,
        GossipOutcome::Reject("task advert not signed by its router")
    );
    publish_until(
        "the replayer's score falls",
        &replayer_net,
        replayed,
        move || async move { score(o, replayer).await < 0.0 },
    )
    .await;

    // Stale: signed by its router, but expired before it arrived. Ignored,
    // typed as expired; published until the orchestrator's mesh takes
    // them, then a few more.
    let old = now_ms() - 120_000;
    let expired = |n: u8| {
        task_advert(&stale_key, n, old + u64::from(n))
            .encode()
            .unwrap()
    };
    let sample = TaskAdvert::decode(&expired(0)).unwrap();
    assert_eq!(sample.verify(now_ms()), Err(MarketError::Expired));
    let verdict = gossip_validate(GossipTopic::Task, &expired(0), Some(stale), now_ms());
    assert!(matches!(verdict, GossipOutcome::Ignore(_)), "{verdict:?}");
    let mut n = 0u8;
    within(async {
        loop {
            n += 1;
            if stale_net.publish_task_advert(expired(n)).await.is_ok() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    for _ in 0..5 {
        n += 1;
        within(stale_net.publish_task_advert(expired(n)))
            .await
            .unwrap();
    }
    // Then fresh adverts, until one is accepted and credited: the stale
    // ones before them cost nothing (one rejection would cost 10).
    publish_until(
        "the stale peer's fresh adverts are credited",
        &stale_net,
        |n| {
            task_advert(&stale_key, 200u8.wrapping_add(n), now_ms())
                .encode()
                .unwrap()
        },
        move || async move { score(o, stale).await > 0.0 },
    )
    .await;

    assert!(score(o, forger).await < 0.0);
    assert!(score(o, replayer).await < 0.0);
    shutdown.cancel();
    orchestrator.shutdown().await;
}

/// Raw bytes on the task protocol: what a peer whose codec is broken, or
/// hostile, sends.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("this peer only asks"))
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(std::io::Error::other("this peer only asks"))
    }
}

/// A bare libp2p swarm (TCP + Noise + Yamux) speaking only `behaviour`,
/// for a peer that writes what it likes.
fn attacker_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(LIMIT))
        .build()
}

/// A bare mesh node that answers every readable task request, as a role
/// would (`Cancelled(false)`), its address once it listens, and what stops it.
async fn answering_node() -> (Network, Multiaddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let config = NetworkConfig {
        listen: loopback(),
        ..NetworkConfig::default()
    };
    let (node, mut events, _) =
        network::spawn(Keypair::generate_ed25519(), config, shutdown.clone()).unwrap();
    let answering = node.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let network::NetworkEvent::InboundTask { channel, .. } = e {
                let _ = answering
                    .respond(channel, cactus_protocol::TaskResponse::Cancelled(false))
                    .await;
            }
        }
    });
    let addr = within(async {
        loop {
            if let Some(a) = node.listen_addrs().await.unwrap().into_iter().next() {
                break a;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    (node, addr, shutdown)
}

/// A task request the node's codec cannot read (cut short, over the cap,
/// or not a frame at all) costs its sender score each time, and the node
/// keeps answering a well-formed request from another peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_task_requests_cost_their_sender_score() {
    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    let (node, addr, shutdown) = answering_node().await;

    let mut attacker = attacker_swarm(request_response::Behaviour::<RawCodec>::new(
        [(
            libp2p::StreamProtocol::new(cactus_protocol::TASK_PROTOCOL),
            ProtocolSupport::Outbound,
        )],
        request_response::Config::default(),
    ));
    let attacker_id = *attacker.local_peer_id();
    attacker.dial(addr.clone()).unwrap();

    let hello = || {
        cactus_protocol::TaskRequest::Submit(TaskSpec {
            model: None,
            prompt: "hello".into(),
            format: PromptFormat::Raw,
            sampling: SamplingParams::default(),
            max_price_per_unit: None,
            request_id: None,
        })
    };
    let valid = hello().encode().unwrap();
    let truncated = valid[..valid.len() / 2].to_vec();
    let oversize = vec![0u8; cactus_protocol::TaskRequest::MAX_BYTES + 1];
    let mut malformed = valid.clone();
    let last = malformed.len() - 1;
    malformed[last] ^= 0xff;
    let mut before = score(&node, attacker_id).await;
    for (what, bytes) in [
        ("truncated", truncated),
        ("oversize", oversize),
        ("malformed", malformed),
    ] {
        attacker
            .behaviour_mut()
            .send_request(&node.local_peer_id(), bytes);
        // The node closes the stream without an answer.
        within(async {
            loop {
                if let libp2p::swarm::SwarmEvent::Behaviour(
                    request_response::Event::OutboundFailure { .. }
                    | request_response::Event::Message { .. },
                ) = attacker.select_next_some().await
                {
                    break;
                }
            }
        })
        .await;
        // The attacker's swarm must keep running while the node judges it.
        let judged = async {
            loop {
                let now = score(&node, attacker_id).await;
                if now < before {
                    break now;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        let drive = async {
            loop {
                attacker.select_next_some().await;
            }
        };
        let now = within(async {
            tokio::select! {
                s = judged => s,
                () = drive => unreachable!(),
            }
        })
        .await;
        println!("{what} request: the sender's score went from {before} to {now}");
        before = now;
    }

    // A peer sending well-formed requests is still answered.
    let honest = bare_peer(Keypair::generate_ed25519(), &addr, &shutdown).await;
    let answer = within(honest.send_task(node.local_peer_id(), hello()))
        .await
        .unwrap();
    assert_eq!(answer, cactus_protocol::TaskResponse::Cancelled(false));
    assert!(score(&node, honest.local_peer_id()).await >= 0.0);
    shutdown.cancel();
}

/// The same for token streams: a request frame over its cap, one cut
/// short (the opener closes its side mid-frame) and one that does not
/// decode each cost their sender score; the node stays up for others.
#[tokio::test]
async fn unreadable_token_stream_requests_cost_their_sender_score() {
    use futures::{AsyncWriteExt, StreamExt};
    let (node, addr, shutdown) = answering_node().await;

    let mut attacker = attacker_swarm(network::StreamBehaviour::new(libp2p::StreamProtocol::new(
        cactus_protocol::STREAM_PROTOCOL,
    )));
    let attacker_id = *attacker.local_peer_id();
    let control = attacker.behaviour().control();
    attacker.dial(addr.clone()).unwrap();
    tokio::spawn(async move {
        loop {
            attacker.select_next_some().await;
        }
    });

    let valid = cactus_protocol::TaskRequest::Submit(TaskSpec {
        model: None,
        prompt: "hello".into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        max_price_per_unit: None,
        request_id: None,
    })
    .encode()
    .unwrap();
    let frame = |len: usize, body: &[u8]| {
        let mut f = (len as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let mut malformed = valid.clone();
    let last = malformed.len() - 1;
    malformed[last] ^= 0xff;
    let mut before = score(&node, attacker_id).await;
    for (what, bytes) in [
        (
            "oversize",
            frame(cactus_protocol::TaskRequest::MAX_BYTES + 1, &[]),
        ),
        ("truncated", frame(valid.len(), &valid[..valid.len() / 2])),
        ("malformed", frame(malformed.len(), &malformed)),
    ] {
        let mut stream = within(control.open(node.local_peer_id())).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stream.close().await.unwrap();
        let now = within(async {
            loop {
                let now = score(&node, attacker_id).await;
                if now < before {
                    break now;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        println!("{what} stream request: the sender's score went from {before} to {now}");
        before = now;
    }

    // A well-formed request on a token stream is still answered.
    let honest = bare_peer(Keypair::generate_ed25519(), &addr, &shutdown).await;
    let mut stream = within(honest.open_stream(
        node.local_peer_id(),
        &cactus_protocol::TaskRequest::Submit(TaskSpec {
            model: None,
            prompt: "hello".into(),
            format: PromptFormat::Raw,
            sampling: SamplingParams::default(),
            max_price_per_unit: None,
            request_id: None,
        }),
    ))
    .await
    .unwrap();
    let end = within(stream.next()).await.unwrap();
    assert_eq!(
        end,
        Some(cactus_protocol::StreamFrame::End(
            cactus_protocol::TaskResponse::Cancelled(false)
        ))
    );
    assert!(score(&node, honest.local_peer_id()).await >= 0.0);
    shutdown.cancel();
}
