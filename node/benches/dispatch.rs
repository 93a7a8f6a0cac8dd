//! Dispatch overhead: what the mesh adds to a task that computes nothing.
//!
//! In one process, on loopback, interleaved in rounds so that the machine's
//! noise hits all three alike:
//!
//! - a plain TCP round trip of 64 bytes (`TCP_NODELAY`), the floor;
//! - a bare libp2p request-response round trip (TCP + Noise + Yamux, the
//!   task protocol's own codec, a small request and answer), the anchor: a
//!   task crosses two such hops, client → router and router → orchestrator;
//! - the same request through Cactus's network layer alone: two nodes'
//!   `Network` handles and event loops, their whole libp2p behaviour
//!   (gossipsub, Kademlia, identify, relay, ...), no role: where the time
//!   of a hop goes between libp2p's composed behaviour and our own work;
//! - a 1-token task through Cactus: a client submits to a router, which
//!   escrows on its embedded ledger, hands the task to an orchestrator (the
//!   stub engine, which costs nothing), checks and countersigns the receipt,
//!   settles, logs the receipt durably and answers. Timed at the client;
//!   then the same task named, as `cactus-node infer` sends it, whose answer
//!   the router keeps in the receipt's commit for a client that asks again.
//!
//! Targets: p50 ≤ 1 ms, p99 ≤ 5 ms, and ≤ 1.5× two bare request-response
//! hops. Prints a table and `SUMMARY|...` lines for `scripts/bench.sh`.
//!
//! ```text
//! cargo bench -p cactus-node --bench dispatch
//! BENCH_ROUNDS=2000 cargo bench -p cactus-node --bench dispatch
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/mod.rs"]
mod support;
use cactus_node::client;
use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::StubEngine;
use cactus_node::network::codec::TaskCodec;
use cactus_node::network::{self, Network, NetworkConfig, NetworkEvent};
use cactus_protocol::{
    PromptFormat, RequestId, SamplingParams, TASK_PROTOCOL, TaskId, TaskRequest, TaskResponse,
    TaskSpec,
};
use cluster::Cluster;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_or, percentile};
use tokio_util::sync::CancellationToken;

/// Rounds of each measurement per batch; batches alternate between the
/// three.
const BATCH: usize = 50;

fn main() {
    let rounds: usize = env_or("BENCH_ROUNDS", 500).max(BATCH);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let tcp = TcpEcho::start();
    let mut bare = rt.block_on(BareRequestResponse::start());
    let layer = rt.block_on(NetworkLayer::start());
    let mesh = rt.block_on(Mesh::start());
    // Warm up every path (connections, caches, the ledger's first pages).
    tcp.round_trips(BATCH);
    rt.block_on(bare.round_trips(BATCH));
    rt.block_on(layer.round_trips(BATCH));
    rt.block_on(mesh.tasks(BATCH, false));
    rt.block_on(mesh.tasks(BATCH, true));

    let (mut t, mut b, mut l, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut named = Vec::new();
    for _ in 0..rounds / BATCH {
        t.extend(tcp.round_trips(BATCH));
        b.extend(rt.block_on(bare.round_trips(BATCH)));
        l.extend(rt.block_on(layer.round_trips(BATCH)));
        m.extend(rt.block_on(mesh.tasks(BATCH, false)));
        named.extend(rt.block_on(mesh.tasks(BATCH, true)));
    }
    rt.block_on(mesh.stop());
    layer.stop.cancel();

    let ms = |v: &[f64], q: f64| percentile(v, q) * 1e3;
    println!("{rounds} round trips each, loopback, one process\n");
    println!("| what | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|");
    println!(
        "| plain TCP round trip, 64 B | {:.3} | {:.3} |",
        ms(&t, 0.5),
        ms(&t, 0.99)
    );
    println!(
        "| bare libp2p request-response (TCP + Noise + Yamux) | {:.3} | {:.3} |",
        ms(&b, 0.5),
        ms(&b, 0.99)
    );
    println!(
        "| the same through Cactus's network layer (whole behaviour, event loops) | {:.3} | {:.3} |",
        ms(&l, 0.5),
        ms(&l, 0.99)
    );
    println!(
        "| two bare request-response hops | {:.3} | {:.3} |",
        2.0 * ms(&b, 0.5),
        2.0 * ms(&b, 0.99)
    );
    println!(
        "| 1-token task through router and orchestrator (stub engine) | {:.3} | {:.3} |",
        ms(&m, 0.5),
        ms(&m, 0.99)
    );
    println!(
        "| the same, named (its answer kept for a client that asks again) | {:.3} | {:.3} |",
        ms(&named, 0.5),
        ms(&named, 0.99)
    );
    for (q, name, target) in [
        (0.5, "p50", "≤ 1 ms; ≤ 1.5×"),
        (0.99, "p99", "≤ 5 ms; ≤ 1.5×"),
    ] {
        let (ours, hops) = (ms(&m, q), 2.0 * ms(&b, q));
        println!(
            "SUMMARY|dispatch {name} of a 1-token task vs two bare req-resp hops (ms)|{ours:.3}|{hops:.3}|{:.2}|{target}",
            ours / hops
        );
    }
    println!(
        "SUMMARY|dispatch p50 of a named 1-token task (answer kept) vs unnamed (ms)|{:.3}|{:.3}|{:.2}|-",
        ms(&named, 0.5),
        ms(&m, 0.5),
        ms(&named, 0.5) / ms(&m, 0.5)
    );
    println!(
        "SUMMARY|plain TCP round trip p50, the floor (ms)|{:.3}|-|-|-",
        ms(&t, 0.5)
    );
    println!(
        "SUMMARY|one request-response round trip p50, Cactus network layer vs bare libp2p (ms)|{:.3}|{:.3}|{:.2}|-",
        ms(&l, 0.5),
        ms(&b, 0.5),
        ms(&l, 0.5) / ms(&b, 0.5)
    );
    // What one durable commit costs on this disk: a task makes several
    // (the escrow, the receipt log, the settlement).
    let f = fsyncs(BATCH);
    println!(
        "SUMMARY|one durable write (4 KiB + fdatasync) on the data dir's disk, p50 (ms)|{:.3}|-|-|-",
        ms(&f, 0.5)
    );
}

/// `n` 4 KiB writes, each followed by `fdatasync`; the time of each.
fn fsyncs(n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("sync")).unwrap();
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[0u8; 4096]).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// A thread echoing 64-byte messages back on one TCP connection.
struct TcpEcho {
    client: std::cell::RefCell<TcpStream>,
}

impl TcpEcho {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = [0u8; 64];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    return;
                }
            }
        });
        let client = TcpStream::connect(addr).unwrap();
        client.set_nodelay(true).unwrap();
        Self {
            client: std::cell::RefCell::new(client),
        }
    }

    fn round_trips(&self, n: usize) -> Vec<f64> {
        let mut c = self.client.borrow_mut();
        let mut buf = [7u8; 64];
        (0..n)
            .map(|_| {
                let t = Instant::now();
                c.write_all(&buf).unwrap();
                c.read_exact(&mut buf).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect()
    }
}

type RrSwarm = Swarm<request_response::Behaviour<TaskCodec>>;

fn rr_swarm() -> RrSwarm {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(StreamProtocol::new(TASK_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// Two bare swarms speaking the task protocol's codec: one asks, the
/// other answers at once.
struct BareRequestResponse {
    client: RrSwarm,
    server: libp2p::PeerId,
}

impl BareRequestResponse {
    async fn start() -> Self {
        let mut server = rr_swarm();
        server
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr: Multiaddr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let peer = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                }) = server.select_next_some().await
                {
                    let _ = server
                        .behaviour_mut()
                        .send_response(channel, TaskResponse::Cancelled(false));
                }
            }
        });
        let mut client = rr_swarm();
        client.dial(addr.with(Protocol::P2p(peer))).unwrap();
        Self {
            client,
            server: peer,
        }
    }

    async fn round_trips(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            self.client
                .behaviour_mut()
                .send_request(&self.server, TaskRequest::Cancel(TaskId([1; 16])));
            loop {
                match self.client.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    }) => break,
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        error,
                        ..
                    }) => panic!("bare request failed: {error}"),
                    _ => {}
                }
            }
            out.push(t.elapsed().as_secs_f64());
        }
        out
    }
}

/// Two nodes' network layers (`cactus_node::network::spawn`, no role):
/// one asks, the other's event consumer answers at once.
struct NetworkLayer {
    client: Network,
    server: libp2p::PeerId,
    stop: CancellationToken,
}

impl NetworkLayer {
    async fn start() -> Self {
        let stop = CancellationToken::new();
        let config = || NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..NetworkConfig::default()
        };
        let (server, mut events, _) =
            network::spawn(Keypair::generate_ed25519(), config(), stop.child_token()).unwrap();
        let addr = server.listen_addrs().await.unwrap()[0].clone();
        let answering = server.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let NetworkEvent::InboundTask { channel, .. } = event {
                    let _ = answering
                        .respond(channel, TaskResponse::Cancelled(false))
                        .await;
                }
            }
        });
        let (client, _events, _) =
            network::spawn(Keypair::generate_ed25519(), config(), stop.child_token()).unwrap();
        let peer = client.dial(addr).await.unwrap();
        Self {
            client,
            server: peer,
            stop,
        }
    }

    async fn round_trips(&self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let answer = self
                .client
                .send_task(self.server, TaskRequest::Cancel(TaskId([1; 16])))
                .await
                .unwrap();
            out.push(t.elapsed().as_secs_f64());
            assert!(matches!(answer, TaskResponse::Cancelled(false)));
        }
        out
    }
}

/// A router, a stub orchestrator and a funded client on loopback.
struct Mesh {
    _dir: tempfile::TempDir,
    nodes: Cluster,
}

impl Mesh {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stub = Arc::new(StubEngine::new("stub"));
        let engine = Arc::new(ThreadPool::new(stub, 1, 4)) as Arc<dyn Engine>;
        let nodes = Cluster::start(dir.path(), engine, false).await;
        Self { _dir: dir, nodes }
    }

    /// `n` 1-token tasks one after another; the time of each. `named`:
    /// each under a fresh request id, as `cactus-node infer` sends them, so
    /// the router keeps its answer in the receipt's commit.
    async fn tasks(&self, n: usize, named: bool) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let spec = TaskSpec {
                model: None,
                prompt: "a".into(),
                format: PromptFormat::Raw,
                sampling: SamplingParams {
                    max_tokens: 1,
                    ..SamplingParams::default()
                },
                max_price_per_unit: None,
                request_id: named.then(|| RequestId(rand::random())),
            };
            let t = Instant::now();
            let result = client::submit_to(
                self.nodes.client.network(),
                self.nodes.router.peer_id(),
                spec,
            )
            .await
            .unwrap();
            out.push(t.elapsed().as_secs_f64());
            assert_eq!(result.receipt.body.output_tokens, 1);
        }
        out
    }

    async fn stop(self) {
        self.nodes.stop().await;
    }
}
