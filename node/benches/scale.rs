//! Scale: in-process meshes of N nodes, next to bare gossipsub swarms of
//! the same size.
//!
//! For each N (`BENCH_SIZES`, default `10,30,100`), two runs, each in a
//! fresh child process of this bench (so that its memory and CPU time are
//! its own), all nodes on loopback TCP in one tokio runtime:
//!
//! - **Cactus**: R = max(2, N/10) routers and N − R stub orchestrators
//!   (`StubEngine` in a 1-slot `ThreadPool`), each `Node::start`ed with the
//!   default settings. Router 0 keeps the embedded (dev) ledger and
//!   authorizes the other routers, which settle on it
//!   (`ChainChoice::Remote`) and bootstrap to it. Each orchestrator
//!   bootstraps to a random router (and to router 0, the ledger it follows
//!   and registers its stake on), so an advert reaches most routers only
//!   through the gossip mesh. Figures:
//!   - *admitted all*: time from the last node started until every router
//!     has admitted every orchestrator (`Node::wait_for_orchestrators`);
//!     past 30 s the shortfall is reported instead (admitted pairs of
//!     router × orchestrator), and the bench fails only if some router has
//!     not even heard of every orchestrator;
//!   - *advert propagation*: after that, a settling pause, for Cactus
//!     until the nodes' first AutoNAT probe round is over (every node makes
//!     it 5 s after it started, all at once here), and until the process
//!     is quiet (`QUIET_SHARE` of a core, both meshes), K
//!     orchestrators (`BENCH_MESSAGES`, default 20) one after another
//!     publish a fresh capability advert through their own node
//!     (`Network::publish_advert`: the advert the role would send, with a
//!     marker price and a newer sequence number); the delay per (advert,
//!     router) is until that router's table holds the marker, polled every
//!     250 µs (the resolution) by looking that orchestrator up
//!     (`Node::orchestrator`: copying whole tables 4000 times a second
//!     took a core of its own at N = 100 and slowed the mesh it measured);
//!     *lost* = pairs not seen within 5 s;
//! - **bare gossipsub**: N plain libp2p swarms (TCP + Noise + Yamux +
//!   gossipsub with its default config, signed messages), node i dialling
//!   min(i, 4) random earlier ones; once every node has a mesh peer (and
//!   the same settling pause), K messages of 256 bytes from random nodes;
//!   the delay per (message, receiver) is taken when the receiver's swarm
//!   yields it.
//!
//! Memory per node: the child's RSS (`VmRSS`) after the measurements less
//! before the first node started, over N. CPU per node: the child's CPU
//! time (`/proc/self/stat`, utime + stime) from the first node's start to
//! the end of the measurements, over N and over that wall time (ms of CPU
//! per node per second). Targets: advert p99 ≤ 2× bare p99, 0 lost, memory
//! per node ≤ 20 MB. Prints tables and `SUMMARY|...` lines for
//! `scripts/bench.sh`; it asserts only that every mesh converges.
//!
//! ```text
//! cargo bench -p cactus-node --bench scale
//! BENCH_SIZES=10,30 cargo bench -p cactus-node --bench scale
//! ```
//!
//! On loopback every node shares 127.0.0.1, so the Cactus nodes run with
//! `NetworkConfig::max_connections_per_ip` raised to
//! `NetworkConfig::max_connections` (256): with the default (32) router 0,
//! which every orchestrator joins, would refuse most of them.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

#[path = "support/mod.rs"]
mod support;
use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::StubEngine;
use cactus_node::network::NetworkConfig;
use cactus_node::node::ChainChoice;
use cactus_node::{Node, NodeConfig, Role};
use cactus_protocol::{CapabilityAdvert, PROTOCOL_VERSION, Wire};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, gossipsub, noise, tcp, yamux};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_or, percentile};
use tokio::sync::{mpsc, oneshot};

/// Set in a child process: `cactus:<N>` or `bare:<N>`.
const CHILD_ENV: &str = "CACTUS_BENCH_SCALE_CHILD";
/// How long a mesh may take to converge before the bench gives up.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);
/// How long the Cactus routers may take to admit every orchestrator; past
/// it the shortfall is reported (and every router must at least know every
/// orchestrator, or the bench fails).
const ADMIT_LIMIT: Duration = Duration::from_secs(30);
/// A message not seen by a receiver within this long is lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
/// Pause between convergence and the first message (gossipsub heartbeats
/// are 1 s in both meshes).
const SETTLE: Duration = Duration::from_millis(1500);
/// After [`SETTLE`] (and, for Cactus, [`FIRST_PROBES`]), a mesh is
/// measured once it is quiet: the process used
/// less than this share of one core over a [`QUIET_WINDOW`] (forming a
/// mesh of 100 nodes keeps a 2-core machine busy for seconds after
/// convergence: subscriptions, DHT bootstrap, adverts to new peers), or
/// after [`QUIET_LIMIT`]. The time it took is printed as its own figure.
const QUIET_SHARE: f64 = 0.5;
/// When every Cactus node's first AutoNAT probe round is over, from the
/// last node's start: libp2p's probe interval (5 s) and a second for the
/// dial-backs. The bare swarms run no AutoNAT.
const FIRST_PROBES: Duration = Duration::from_secs(6);
const QUIET_WINDOW: Duration = Duration::from_millis(500);
const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// Pause between two messages.
const GAP: Duration = Duration::from_millis(20);
/// How often a router's table is looked at for a new advert.
const POLL: Duration = Duration::from_micros(250);
/// Earlier nodes each bare node dials.
const BARE_DIALS: usize = 4;
/// Size of a bare gossipsub message (about an encoded advert's).
const BARE_BYTES: usize = 256;
/// Sequence numbers of the bench's adverts: newer than any the role sends.
const SEQ_BASE: u64 = 1 << 60;

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10,30,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n >= 3)
        .collect();
    assert!(!sizes.is_empty(), "BENCH_SIZES names no size ≥ 3");
    let messages: usize = env_or("BENCH_MESSAGES", 20).max(1);
    println!(
        "scale: one process per mesh, loopback TCP, {messages} messages per mesh, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        let bare = spawn_child("bare", n);
        let ours = spawn_child("cactus", n);
        print_size(&ours, &bare);
        rows.push((ours, bare));
    }
    print_summary(&rows);
}

/// What one child measured.
#[derive(Debug)]
struct Run {
    n: usize,
    /// Routers (Cactus) or 0 (bare).
    routers: usize,
    /// From the first node's start to the last one's.
    start_ms: f64,
    /// From the last node's start until converged (NaN: not within
    /// [`ADMIT_LIMIT`]).
    converge_ms: f64,
    /// (router, orchestrator) pairs admitted when measured, and expected.
    admitted: usize,
    admit_pairs: usize,
    /// Delay per (message, receiver) seen, ms.
    delays: Vec<f64>,
    /// (message, receiver) pairs expected.
    pairs: usize,
    lost: usize,
    rss_before_kb: u64,
    rss_after_kb: u64,
    cpu_ms: f64,
    wall_s: f64,
    /// Connected peers per node, on average.
    conns: f64,
    /// From the end of [`SETTLE`] until the mesh was quiet (ms), the wait
    /// for [`FIRST_PROBES`] included.
    quiet_ms: f64,
}

impl Run {
    fn to_line(&self) -> String {
        let delays: Vec<String> = self.delays.iter().map(|d| format!("{d:.4}")).collect();
        format!(
            "CHILD|{}|{}|{:.3}|{:.3}|{}|{}|{}|{}|{}|{}|{:.1}|{:.4}|{:.2}|{:.0}|{}",
            self.n,
            self.routers,
            self.start_ms,
            self.converge_ms,
            self.admitted,
            self.admit_pairs,
            self.pairs,
            self.lost,
            self.rss_before_kb,
            self.rss_after_kb,
            self.cpu_ms,
            self.wall_s,
            self.conns,
            self.quiet_ms,
            delays.join(",")
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.strip_prefix("CHILD|")?.split('|').collect();
        if f.len() != 15 {
            return None;
        }
        Some(Self {
            n: f[0].parse().ok()?,
            routers: f[1].parse().ok()?,
            start_ms: f[2].parse().ok()?,
            converge_ms: f[3].parse().ok()?,
            admitted: f[4].parse().ok()?,
            admit_pairs: f[5].parse().ok()?,
            pairs: f[6].parse().ok()?,
            lost: f[7].parse().ok()?,
            rss_before_kb: f[8].parse().ok()?,
            rss_after_kb: f[9].parse().ok()?,
            cpu_ms: f[10].parse().ok()?,
            wall_s: f[11].parse().ok()?,
            conns: f[12].parse().ok()?,
            quiet_ms: f[13].parse().ok()?,
            delays: f[14]
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect::<Option<_>>()?,
        })
    }

    /// The convergence time, or how far admission got.
    fn converged(&self) -> String {
        if self.converge_ms.is_finite() {
            format!("{:.0}", self.converge_ms)
        } else {
            format!(
                "not converged: {} of {} (router, orchestrator) pairs admitted after {} s",
                self.admitted,
                self.admit_pairs,
                ADMIT_LIMIT.as_secs()
            )
        }
    }

    fn p(&self, q: f64) -> f64 {
        if self.delays.is_empty() {
            f64::NAN
        } else {
            percentile(&self.delays, q)
        }
    }

    fn mean(&self) -> f64 {
        self.delays.iter().sum::<f64>() / self.delays.len().max(1) as f64
    }

    fn rss_per_node_mb(&self) -> f64 {
        self.rss_after_kb.saturating_sub(self.rss_before_kb) as f64 / 1024.0 / self.n as f64
    }

    fn cpu_per_node(&self) -> f64 {
        self.cpu_ms / self.n as f64 / self.wall_s
    }
}

/// Runs this bench again as `kind:<n>` and reads what it measured.
fn spawn_child(kind: &str, n: usize) -> Run {
    let exe = std::env::current_exe().unwrap();
    let t = Instant::now();
    let out = std::process::Command::new(exe)
        .env(CHILD_ENV, format!("{kind}:{n}"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cannot run the bench as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {kind} mesh of {n} nodes failed ({}):\n{stdout}",
        out.status
    );
    let run = stdout
        .lines()
        .find_map(Run::parse)
        .unwrap_or_else(|| panic!("the {kind} mesh of {n} nodes reported nothing:\n{stdout}"));
    eprintln!("  {kind} N={n}: done in {:.1} s", t.elapsed().as_secs_f64());
    run
}

fn print_size(ours: &Run, bare: &Run) {
    println!(
        "## N = {} ({} routers, {} stub orchestrators)\n",
        ours.n,
        ours.routers,
        ours.n - ours.routers
    );
    println!(
        "| mesh | started in (ms) | converged (ms) | quiet after (ms) | conns / node | pairs | p50 (ms) | mean (ms) | p99 (ms) | max (ms) | lost | RSS / node (MB) | CPU ms / node·s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in [
        (
            "Cactus: routers admitted every orchestrator; advert seen in router tables",
            ours,
        ),
        (
            "bare gossipsub: every node has a mesh peer; message received",
            bare,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {} | {:.0} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.1} |",
            r.start_ms,
            r.converged(),
            r.quiet_ms,
            r.conns,
            r.pairs,
            r.p(0.5),
            r.mean(),
            r.p(0.99),
            r.p(1.0),
            r.lost,
            r.rss_per_node_mb(),
            r.cpu_per_node()
        );
    }
    println!();
}

fn print_summary(rows: &[(Run, Run)]) {
    println!("## Summary\n");
    println!(
        "| N | admitted all (ms) | advert p50 / p99 (ms) | lost | bare gossipsub p50 / p99 (ms) | bare lost | p99 ratio | target | RSS per node MB (ours / bare) | CPU ms per node·s (ours / bare) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (o, b) in rows {
        println!(
            "| {} | {} | {:.2} / {:.2} | {} / {} | {:.2} / {:.2} | {} / {} | {:.2} | ≤ 2.0×, 0 lost, ≤ 20 MB | {:.2} / {:.2} | {:.1} / {:.1} |",
            o.n,
            o.converged(),
            o.p(0.5),
            o.p(0.99),
            o.lost,
            o.pairs,
            b.p(0.5),
            b.p(0.99),
            b.lost,
            b.pairs,
            o.p(0.99) / b.p(0.99),
            o.rss_per_node_mb(),
            b.rss_per_node_mb(),
            o.cpu_per_node(),
            b.cpu_per_node()
        );
    }
    // How each figure grows with N: its ratio between consecutive sizes.
    if rows.len() > 1 {
        println!("\nGrowth between consecutive sizes (figure at the larger N / at the smaller):\n");
        println!(
            "| N | N ratio | admitted all | advert p99 | bare p99 | RSS / node (ours) | CPU / node·s (ours) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for w in rows.windows(2) {
            let ((o0, b0), (o1, b1)) = (&w[0], &w[1]);
            println!(
                "| {} → {} | {:.1}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                o0.n,
                o1.n,
                o1.n as f64 / o0.n as f64,
                o1.converge_ms / o0.converge_ms,
                o1.p(0.99) / o0.p(0.99),
                b1.p(0.99) / b0.p(0.99),
                o1.rss_per_node_mb() / o0.rss_per_node_mb(),
                o1.cpu_per_node() / o0.cpu_per_node()
            );
        }
    }
    println!();
    for (o, b) in rows {
        let n = o.n;
        println!(
            "SUMMARY|advert p50 at N={n} (ms)|{:.2}|{:.2}|{:.2}|-",
            o.p(0.5),
            b.p(0.5),
            o.p(0.5) / b.p(0.5)
        );
        println!(
            "SUMMARY|advert p99 at N={n} (ms)|{:.2}|{:.2}|{:.2}|≤ 2.0",
            o.p(0.99),
            b.p(0.99),
            o.p(0.99) / b.p(0.99)
        );
        println!("SUMMARY|lost adverts at N={n}|{}|{}|-|0", o.lost, b.lost);
        println!(
            "SUMMARY|every router admitted every orchestrator at N={n} (ms)|{}|{:.0}|-|-",
            o.converged(),
            b.converge_ms
        );
        println!(
            "SUMMARY|quiet after forming, before adverts are timed, at N={n} (ms)|{:.0}|{:.0}|-|-",
            o.quiet_ms, b.quiet_ms
        );
        println!(
            "SUMMARY|memory per node at N={n} (MB)|{:.2}|{:.2}|-|≤ 20",
            o.rss_per_node_mb(),
            b.rss_per_node_mb()
        );
        println!(
            "SUMMARY|CPU per node at N={n} (ms per s)|{:.1}|{:.1}|{:.2}|-",
            o.cpu_per_node(),
            b.cpu_per_node(),
            o.cpu_per_node() / b.cpu_per_node()
        );
    }
}

/// In a child: measures one mesh and prints its `CHILD|...` line.
fn child(spec: &str) {
    let (kind, n) = spec.split_once(':').expect("kind:n");
    let n: usize = n.parse().expect("a size");
    let messages: usize = env_or("BENCH_MESSAGES", 20).max(1);
    if std::env::var_os("BENCH_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .try_init();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rss_before_kb = rss_kb();
    let run = match kind {
        "cactus" => cactus(&rt, n, messages, rss_before_kb),
        "bare" => rt.block_on(bare(n, messages, rss_before_kb)),
        other => panic!("unknown mesh kind {other}"),
    };
    println!("{}", run.to_line());
    // The nodes' tasks end with the process; their data dirs are gone.
    std::process::exit(0);
}

/// The Cactus mesh; the advert polling runs on this (non-runtime) thread.
fn cactus(rt: &tokio::runtime::Runtime, n: usize, messages: usize, rss_before_kb: u64) -> Run {
    let r = (n / 10).max(2);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(n as u64);
    let net = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        // Loopback: every peer is 127.0.0.1.
        max_connections_per_ip: NetworkConfig::default().max_connections as usize,
        ..NetworkConfig::default()
    };
    let keys: Vec<Keypair> = (0..r).map(|_| Keypair::generate_ed25519()).collect();
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let (routers, orchestrators, t_last) = rt.block_on(async {
        let mut routers: Vec<Node> = Vec::new();
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let chain = if i == 0 {
                ChainChoice::Embedded(cactus_node::chain::embedded::LocalSettings {
                    servers: keys[1..]
                        .iter()
                        .map(|k| cactus_node::chain::default_account(&k.public().to_peer_id()))
                        .collect(),
                    ..cactus_node::chain::embedded::LocalSettings::dev()
                })
            } else {
                ChainChoice::Remote(routers[0].peer_id())
            };
            let config = NodeConfig {
                role: Role::Router,
                data_dir: dir.path().join(format!("router-{i}")),
                network: NetworkConfig {
                    bootstrap: addrs.first().cloned().into_iter().collect(),
                    ..net.clone()
                },
                chain,
                ..NodeConfig::default()
            };
            let node = Node::start(config, key.clone(), None).await.unwrap();
            addrs.push(node.listen_addrs().await.unwrap()[0].clone());
            routers.push(node);
        }
        let ledger = routers[0].peer_id();
        let mut orchestrators = Vec::new();
        for j in 0..n - r {
            let k = rng.gen_range(0..r);
            let mut bootstrap = vec![addrs[k].clone()];
            if k != 0 {
                bootstrap.push(addrs[0].clone());
            }
            let config = NodeConfig {
                role: Role::Orchestrator,
                data_dir: dir.path().join(format!("orchestrator-{j}")),
                network: NetworkConfig {
                    bootstrap,
                    ..net.clone()
                },
                ledger: Some(ledger),
                ..NodeConfig::default()
            };
            let engine = Arc::new(ThreadPool::new(Arc::new(StubEngine::new("stub")), 1, 4))
                as Arc<dyn Engine>;
            let node = Node::start(config, Keypair::generate_ed25519(), Some(engine))
                .await
                .unwrap();
            orchestrators.push(node);
        }
        (routers, orchestrators, Instant::now())
    });
    let start_ms = ms(t_last - t0);
    let want = orchestrators.len();
    let converged = rt.block_on(async {
        let all = routers.iter().map(|r| r.wait_for_orchestrators(want));
        tokio::time::timeout(ADMIT_LIMIT, futures::future::join_all(all)).await
    });
    let converge_ms = if converged.is_ok() {
        ms(t_last.elapsed())
    } else {
        f64::NAN
    };
    let (mut admitted, mut known) = (0, 0);
    let mut per_router = Vec::new();
    for (i, r) in routers.iter().enumerate() {
        let table = r.orchestrators();
        let ok = table.iter().filter(|o| o.eligible == Some(true)).count();
        per_router.push(format!("router {i}: {ok} admitted, {} known", table.len()));
        admitted += ok;
        known += table.len();
    }
    if converged.is_err() {
        eprintln!(
            "  cactus N={n}: not every orchestrator admitted within {ADMIT_LIMIT:?}: {}",
            per_router.join("; ")
        );
        // Gossip itself must have converged: every router knows every
        // orchestrator.
        assert_eq!(
            known,
            want * r,
            "the Cactus mesh of {n} nodes did not converge within {ADMIT_LIMIT:?}: {want} orchestrators expected at each router; {}",
            per_router.join("; ")
        );
    }
    std::thread::sleep(SETTLE);
    // Every node asks for its first AutoNAT probe (a dial-back, with its
    // handshake) one probe interval after it started; nodes started
    // together do it together, which kept both cores busy for half a
    // second: part of forming the mesh, not of carrying adverts.
    let settled = Instant::now();
    std::thread::sleep((t_last + FIRST_PROBES).saturating_duration_since(settled));
    let quiet_ms = ms(settled.elapsed()) + rt.block_on(quiet());

    // Adverts, one after another, from distinct orchestrators while there
    // are enough.
    let mut order: Vec<usize> = (0..want).collect();
    order.shuffle(&mut rng);
    let mut delays: Vec<f64> = Vec::new();
    let mut lost = 0;
    for i in 0..messages {
        let orch = &orchestrators[order[i % want]];
        let peer = orch.peer_id();
        let known = routers[0]
            .orchestrator(&peer)
            .expect("router 0 knows every orchestrator");
        let marker = 100 + i as u64;
        let advert = CapabilityAdvert {
            peer,
            protocol_version: PROTOCOL_VERSION,
            node_version: env!("CARGO_PKG_VERSION").to_owned(),
            models: known.models,
            free_slots: known.free_slots,
            total_slots: known.total_slots,
            queued: known.queued,
            price_per_token: marker,
            account: known.account,
            stake: known.stake,
            addrs: Vec::new(),
            seq: SEQ_BASE + i as u64,
            issued_at_ms: cactus_node::time::now_ms(),
            cache: Vec::new(),
        }
        .encode()
        .unwrap();
        let sent = Instant::now();
        rt.block_on(orch.network().publish_advert(advert))
            .expect("an advert is published");
        let mut seen = vec![false; r];
        loop {
            for (m, router) in routers.iter().enumerate() {
                if seen[m] {
                    continue;
                }
                let has = router
                    .orchestrator(&peer)
                    .is_some_and(|o| o.price_per_token == marker);
                if has {
                    seen[m] = true;
                    delays.push(ms(sent.elapsed()));
                }
            }
            if seen.iter().all(|&s| s) || sent.elapsed() > LOST_AFTER {
                break;
            }
            std::thread::sleep(POLL);
        }
        lost += seen.iter().filter(|&&s| !s).count();
        std::thread::sleep(GAP);
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
    let rss_after_kb = rss_kb();
    let conns = rt.block_on(async {
        let mut all = 0;
        for node in routers.iter().chain(&orchestrators) {
            all += node.network().connected_peers().await.unwrap().len();
        }
        all as f64 / n as f64
    });
    drop(dir);
    Run {
        n,
        routers: r,
        start_ms,
        converge_ms,
        admitted,
        admit_pairs: want * r,
        delays,
        pairs: messages * r,
        lost,
        rss_before_kb,
        rss_after_kb,
        cpu_ms: cpu,
        wall_s,
        conns,
        quiet_ms,
    }
}

/// What the bench asks of a bare swarm's task.
enum BareCmd {
    Dial(Multiaddr),
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// Gossipsub mesh peers and connected peers.
    Peers(oneshot::Sender<(usize, usize)>),
}

type GossipSwarm = Swarm<gossipsub::Behaviour>;

fn bare_swarm() -> GossipSwarm {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::Config::default(),
            )
            .unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// Starts a bare swarm in a task of its own; returns its address and its
/// command channel. What it receives goes to `received` as (node, message
/// index, when).
async fn bare_node(
    me: usize,
    received: mpsc::Sender<(usize, u32, Instant)>,
) -> (Multiaddr, mpsc::Sender<BareCmd>) {
    let topic = gossipsub::IdentTopic::new("scale");
    let mut swarm = bare_swarm();
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with_p2p(*swarm.local_peer_id()).unwrap();
        }
    };
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let hash = topic.hash();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(BareCmd::Dial(a)) => swarm.dial(a).unwrap(),
                    Some(BareCmd::Publish(data, done)) => {
                        let r = swarm.behaviour_mut().publish(topic.clone(), data);
                        let _ = done.send(r.map(|_| ()).map_err(|e| e.to_string()));
                    }
                    Some(BareCmd::Peers(answer)) => {
                        let mesh = swarm.behaviour().mesh_peers(&hash).count();
                        let _ = answer.send((mesh, swarm.connected_peers().count()));
                    }
                    None => break,
                },
                event = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event {
                        let at = Instant::now();
                        let idx = u32::from_le_bytes(message.data[..4].try_into().unwrap());
                        let _ = received.send((me, idx, at)).await;
                    }
                }
            }
        }
    });
    (addr, tx)
}

async fn bare_peers(node: &mpsc::Sender<BareCmd>) -> (usize, usize) {
    let (tx, rx) = oneshot::channel();
    node.send(BareCmd::Peers(tx)).await.unwrap();
    rx.await.unwrap()
}

async fn bare(n: usize, messages: usize, rss_before_kb: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let (received_tx, mut received) = mpsc::channel(n * messages + 1024);
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let mut nodes: Vec<mpsc::Sender<BareCmd>> = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for i in 0..n {
        let (addr, node) = bare_node(i, received_tx.clone()).await;
        let mut earlier: Vec<usize> = (0..i).collect();
        earlier.shuffle(&mut rng);
        for &e in earlier.iter().take(BARE_DIALS) {
            node.send(BareCmd::Dial(addrs[e].clone())).await.unwrap();
        }
        addrs.push(addr);
        nodes.push(node);
    }
    let t_last = Instant::now();
    let formed = tokio::time::timeout(CONVERGE_LIMIT, async {
        loop {
            let mut all = true;
            for node in &nodes {
                if bare_peers(node).await.0 == 0 {
                    all = false;
                    break;
                }
            }
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        formed.is_ok(),
        "the bare gossipsub mesh of {n} nodes did not form within {CONVERGE_LIMIT:?}"
    );
    let converge_ms = ms(t_last.elapsed());
    tokio::time::sleep(SETTLE).await;
    let quiet_ms = quiet().await;

    let mut delays: Vec<f64> = Vec::new();
    let mut lost = 0;
    for i in 0..messages {
        let from = rng.gen_range(0..n);
        let mut data = vec![0u8; BARE_BYTES];
        data[..4].copy_from_slice(&(i as u32).to_le_bytes());
        rng.fill(&mut data[4..]);
        let (done, published) = oneshot::channel();
        let sent = Instant::now();
        nodes[from]
            .send(BareCmd::Publish(data, done))
            .await
            .unwrap();
        published
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a bare message was not published: {e}"));
        let mut seen = vec![false; n];
        seen[from] = true;
        let deadline = sent + LOST_AFTER;
        while !seen.iter().all(|&s| s) {
            match tokio::time::timeout_at(deadline.into(), received.recv()).await {
                Ok(Some((node, idx, at))) if idx as usize == i && !seen[node] => {
                    seen[node] = true;
                    delays.push(ms(at - sent));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        lost += seen.iter().filter(|&&s| !s).count();
        tokio::time::sleep(GAP).await;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
    let rss_after_kb = rss_kb();
    let mut conns = 0;
    for node in &nodes {
        conns += bare_peers(node).await.1;
    }
    Run {
        n,
        routers: 0,
        start_ms: ms(t_last - t0),
        converge_ms,
        admitted: 0,
        admit_pairs: 0,
        delays,
        pairs: messages * (n - 1),
        lost,
        rss_before_kb,
        rss_after_kb,
        cpu_ms: cpu,
        wall_s,
        conns: conns as f64 / n as f64,
        quiet_ms,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// This process's resident set, kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until this process used less than [`QUIET_SHARE`] of a core over
/// one [`QUIET_WINDOW`], at most [`QUIET_LIMIT`]; returns the wait (ms).
async fn quiet() -> f64 {
    let t = Instant::now();
    let most = QUIET_SHARE * QUIET_WINDOW.as_secs_f64() * 1e3;
    loop {
        let c0 = cpu_ms();
        tokio::time::sleep(QUIET_WINDOW).await;
        if cpu_ms() - c0 < most || t.elapsed() >= QUIET_LIMIT {
            return ms(t.elapsed());
        }
    }
}

/// This process's CPU time (user + system), ms; clock ticks of 10 ms.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 * 10.0
}
