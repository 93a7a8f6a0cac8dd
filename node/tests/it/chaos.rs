//! Chaos: a seeded run of a few hundred tasks on stub orchestrators and a
//! few dozen on the real model while orchestrators and the router are
//! killed with SIGKILL and restarted, connections are cut and packets are
//! delayed and dropped. Every task must end with exactly one checked answer
//! or one clear error, none may be lost, none paid twice, no escrow may be
//! left pending, and the ledger, the receipt log and the reputation records
//! must survive. The counts are printed.
//!
//! Run as root, the test makes its own network namespace and runs itself
//! inside it, where it may shape the loopback interface (`tc netem`, or
//! `tbf` shaping and random loss when the kernel has no netem) and cut
//! connections (`ss -K`); without root it runs the process faults only and
//! says so. `scripts/chaos-test.sh` runs it; `CHAOS_SEED`, `CHAOS_TASKS`
//! and `CHAOS_REAL_TASKS` set the run.
//!
//! The schedule of faults is a function of the seed alone: each step draws
//! the same values whatever happened before, so a seed names one sequence
//! of faults (the processes' timing around it still varies).

use cactus_node::chain::ChainBackend;
use cactus_node::chain::embedded::{Embedded, EmbeddedChain};
use cactus_node::client::{self, ClientError};
use cactus_node::network::Network;
use cactus_node::receipt_log::ReceiptLog;
use cactus_protocol::contract::TaskStatus;
use cactus_protocol::{PromptFormat, SamplingParams, TaskId, TaskResult, TaskSpec};
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cactus-node");
const STUB_BIN: &str = env!("CARGO_BIN_EXE_cactus-test-stub");
/// The stub orchestrators' model (see `tests/support/stub_orchestrator.rs`).
const STUB_MODEL: &str = "chaos-stub";
/// Set in the child run inside the namespace the test made.
const IN_NETNS: &str = "CHAOS_IN_NETNS";
/// No answer nor error within this long: the task is lost.
const LOST_AFTER: Duration = Duration::from_secs(240);
/// How long the cluster may take to serve again once the faults stop.
const RECOVERY: Duration = Duration::from_secs(180);
const STUB_ORCHESTRATORS: usize = 3;
const REAL_ORCHESTRATORS: usize = 2;
/// Slots (and queue) per orchestrator.
const SLOTS: usize = 2;
/// Stub generation pace.
const STUB_MS_PER_TOKEN: u64 = 20;
/// How long a client waits after an error before its next task.
const ERROR_PAUSE: Duration = Duration::from_millis(300);
/// At most this many orchestrators are down at once.
const MAX_DOWN: usize = 2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command for its effect; returns whether it succeeded.
fn sh(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        sh("ip", &["netns", "del", &self.0]);
    }
}

#[test]
#[ignore = "minutes long and wants root: run by scripts/chaos-test.sh"]
fn chaos() {
    let name = format!("cactus-chaos-{}", std::process::id());
    if std::env::var_os(IN_NETNS).is_none() && is_root() && sh("ip", &["netns", "add", &name]) {
        // Run this very test again inside a namespace of its own, where
        // shaping loopback and cutting connections touch nothing else.
        let ns = Netns(name);
        assert!(sh("ip", &["-n", &ns.0, "link", "set", "lo", "up"]));
        // A real link's MTU, so that shaping sees packets of a real size.
        assert!(sh("ip", &["-n", &ns.0, "link", "set", "lo", "mtu", "1500"]));
        let me = std::env::current_exe().unwrap();
        let status = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(me)
            .args(["--ignored", "--exact", "chaos::chaos", "--nocapture"])
            .env(IN_NETNS, &ns.0)
            .status()
            .unwrap();
        assert!(status.success(), "the chaos run in {} failed", ns.0);
        return;
    }
    let net = std::env::var_os(IN_NETNS).is_some();
    if !net {
        println!(
            "chaos: no network namespace of our own (not root, or no `ip netns`): process faults only (no shaping, no cuts)"
        );
    }
    run(Settings {
        seed: env_or("CHAOS_SEED", 1),
        stub_tasks: env_or("CHAOS_TASKS", 300) as usize,
        real_tasks: env_or("CHAOS_REAL_TASKS", 24) as usize,
        net,
    });
}

struct Settings {
    seed: u64,
    stub_tasks: usize,
    real_tasks: usize,
    /// In a namespace of our own: shape loopback and cut connections.
    net: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Router,
    Stub,
    Real,
}

/// One node process of the cluster, restartable on its data dir and port.
struct Node {
    kind: Kind,
    name: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Node {
    fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.port)
    }

    fn start(&mut self, bootstrap: &str) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let listen = self.addr();
        let dir = self.dir.to_str().unwrap();
        let mut cmd = match self.kind {
            Kind::Router => {
                let mut c = Command::new(BIN);
                c.args(["--role", "router", "--dev-faucet", "--data-dir", dir])
                    .args(["--listen", &listen, "--stall-timeout", "5"])
                    .args(["--task-timeout", "60"]);
                c
            }
            Kind::Stub => {
                let mut c = Command::new(STUB_BIN);
                c.args([dir, &listen, bootstrap])
                    .arg(STUB_MS_PER_TOKEN.to_string())
                    .arg(SLOTS.to_string());
                c
            }
            Kind::Real => {
                let model = format!("{}:{}", super::model_path().display(), super::DEMO_SHA256);
                let mut c = Command::new(BIN);
                c.args([
                    "--data-dir",
                    dir,
                    "--listen",
                    &listen,
                    "--bootstrap",
                    bootstrap,
                ])
                .args(["--model", &model, "--threads", "1"])
                .args([
                    "--slots",
                    &SLOTS.to_string(),
                    "--queue",
                    &SLOTS.to_string(),
                ]);
                c
            }
        };
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    /// Whether the process ended without being told to: a crash. It is
    /// then taken as down.
    fn crashed(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status must be a clean one.
    fn terminate(&mut self) {
        let mut c = self.child.take().expect("running");
        assert!(sh("kill", &["-TERM", &c.id().to_string()]));
        let status = c.wait().unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port free now on loopback (the nodes keep theirs across restarts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `log` until a line contains `needle`.
fn wait_log(log: &Path, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {} after {limit:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How packets are shaped while a `Shape` fault lasts.
#[derive(Debug, Clone, Copy)]
enum Shaping {
    /// `tc netem`: delay with jitter, and loss.
    Netem,
    /// No netem in this kernel: `tbf` shaping (queueing delay) and random
    /// loss from iptables.
    TbfAndLoss,
}

/// The iptables rule dropping 2 % of packets at random.
const LOSS_RULE: [&str; 9] = [
    "INPUT",
    "-m",
    "statistic",
    "--mode",
    "random",
    "--probability",
    "0.02",
    "-j",
    "DROP",
];

impl Shaping {
    fn detect() -> Self {
        let netem = sh(
            "tc",
            &[
                "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        );
        sh("tc", &["qdisc", "del", "dev", "lo", "root"]);
        if netem { Self::Netem } else { Self::TbfAndLoss }
    }

    fn on(self) {
        match self {
            Self::Netem => assert!(sh(
                "tc",
                &[
                    "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "40ms", "30ms",
                    "loss", "2%",
                ],
            )),
            Self::TbfAndLoss => {
                assert!(sh(
                    "tc",
                    &[
                        "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", "2mbit", "burst",
                        "16kb", "latency", "400ms",
                    ],
                ));
                let mut args = vec!["-I"];
                args.extend_from_slice(&LOSS_RULE);
                assert!(sh("iptables", &args));
            }
        }
    }

    fn off(self) {
        sh("tc", &["qdisc", "del", "dev", "lo", "root"]);
        if let Self::TbfAndLoss = self {
            let mut args = vec!["-D"];
            args.extend_from_slice(&LOSS_RULE);
            sh("iptables", &args);
        }
    }
}

/// Cuts every TCP connection to or from `port` (both ends see a reset).
fn cut(port: u16) {
    let p = format!(":{port}");
    assert!(sh(
        "ss",
        &["-K", "(", "sport", "=", &p, "or", "dport", "=", &p, ")"]
    ));
}

/// One step of the fault schedule: every field is drawn at every step, so
/// the sequence depends on the seed alone.
#[derive(Debug, Clone, Copy)]
struct Step {
    gap: Duration,
    roll: u32,
    target: usize,
    down_for: Duration,
}

impl Step {
    fn draw(rng: &mut StdRng) -> Self {
        Self {
            gap: Duration::from_millis(rng.gen_range(700..2200)),
            roll: rng.gen_range(0..100),
            target: rng.gen_range(0..STUB_ORCHESTRATORS + REAL_ORCHESTRATORS),
            down_for: Duration::from_millis(rng.gen_range(300..3000)),
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    orchestrator_kills: u32,
    router_kills: u32,
    cuts: u32,
    shaped: u32,
    steps: u32,
    /// Processes that ended on their own: none may.
    crashes: Vec<String>,
}

/// What the fault thread did, and the nodes back, all running.
struct ChaosDone {
    faults: Faults,
    router: Node,
    orchestrators: Vec<Node>,
}

/// Runs faults until `stop` says so; then restarts what is down and lifts
/// the shaping.
fn chaos_loop(
    seed: u64,
    net: Option<Shaping>,
    max_router_kills: u32,
    mut router: Node,
    mut orchestrators: Vec<Node>,
    bootstrap: &str,
    stop: &mpsc::Receiver<()>,
) -> ChaosDone {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Faults::default();
    let mut down: HashMap<usize, Instant> = HashMap::new();
    let mut shaped = false;
    loop {
        let step = Step::draw(&mut rng);
        let stopping = !matches!(
            stop.recv_timeout(step.gap),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if let Some(s) = net.filter(|_| shaped) {
            s.off();
            shaped = false;
        }
        for (i, o) in orchestrators.iter_mut().enumerate() {
            if let Some(status) = o.crashed() {
                faults.crashes.push(format!("{} ({status})", o.name));
                down.insert(i, Instant::now());
            }
        }
        if let Some(status) = router.crashed() {
            faults.crashes.push(format!("router ({status})"));
        }
        let now = Instant::now();
        down.retain(|&i, back_at| {
            if *back_at <= now || stopping {
                orchestrators[i].start(bootstrap);
                false
            } else {
                true
            }
        });
        if router.child.is_none() {
            router.start("");
        }
        if stopping {
            break;
        }
        faults.steps += 1;
        let t = step.target;
        match step.roll {
            0..40 if !down.contains_key(&t) && down.len() < MAX_DOWN => {
                orchestrators[t].kill9();
                down.insert(t, now + step.down_for);
                faults.orchestrator_kills += 1;
                println!(
                    "chaos: step {} kill -9 {}",
                    faults.steps, orchestrators[t].name
                );
            }
            40..50 if faults.router_kills < max_router_kills => {
                router.kill9();
                faults.router_kills += 1;
                println!("chaos: step {} kill -9 router", faults.steps);
                // Down until the next step.
            }
            50..70 if net.is_some() => {
                let port = if t == 0 {
                    router.port
                } else {
                    orchestrators[t].port
                };
                cut(port);
                faults.cuts += 1;
                println!(
                    "chaos: step {} cut connections on port {port}",
                    faults.steps
                );
            }
            70..90 => {
                if let Some(s) = net {
                    s.on();
                    shaped = true;
                    faults.shaped += 1;
                    println!(
                        "chaos: step {} packets delayed and dropped ({s:?})",
                        faults.steps
                    );
                }
            }
            _ => {}
        }
    }
    ChaosDone {
        faults,
        router,
        orchestrators,
    }
}

/// How one task ended, as its client saw it.
#[derive(Debug)]
enum Outcome {
    Answered {
        task: TaskId,
        orchestrator: PeerId,
        receipt: cactus_protocol::Digest,
        resumed: bool,
    },
    Error(String),
    Lost,
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Task(t) => format!("router: {:?}", t.kind),
        ClientError::Network(_) => "network".into(),
        other => other.to_string(),
    }
}

/// Connects to the router, retrying while it is down.
async fn connect(network: &Network, router: PeerId, addr: &Multiaddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if network
            .connected_peers()
            .await
            .is_ok_and(|p| p.contains(&router))
            || network.dial(addr.clone()).await.is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn stub_spec(seed: u64, i: usize) -> TaskSpec {
    TaskSpec {
        model: Some(STUB_MODEL.into()),
        prompt: format!("chaos seed {seed} task {i:04}"),
        format: PromptFormat::Raw,
        sampling: SamplingParams {
            max_tokens: 64,
            ..Default::default()
        },
        max_price_per_unit: None,
        request_id: None,
    }
}

fn real_spec(i: usize) -> TaskSpec {
    TaskSpec {
        model: Some(super::DEMO_SHA256.into()),
        prompt: format!("Name a desert plant, then count to {}.", i % 7 + 2),
        format: PromptFormat::Chat,
        sampling: SamplingParams {
            max_tokens: 24,
            ..Default::default()
        },
        max_price_per_unit: None,
        request_id: None,
    }
}

/// Submits one task (streamed every other time) and checks the answer: the
/// client checks the receipt; for the stub, the text too.
async fn one_task(
    network: Network,
    router: PeerId,
    addr: Multiaddr,
    spec: TaskSpec,
    streamed: bool,
) -> Outcome {
    if !connect(&network, router, &addr).await {
        return Outcome::Error("router unreachable for 60 s".into());
    }
    let expected = (spec.model.as_deref() == Some(STUB_MODEL))
        .then(|| spec.prompt.chars().rev().collect::<String>());
    // As `cactus-node infer` does: the request is named, and an answer
    // lost on the way (a cut, the router killed after its receipt) is
    // asked for again.
    let submit = async {
        let mut shown = |_: &cactus_protocol::TokenChunk| {};
        let on_tokens: Option<&mut (dyn FnMut(&cactus_protocol::TokenChunk) + Send)> =
            if streamed { Some(&mut shown) } else { None };
        client::submit_named(&network, router, spec, on_tokens, client::ASK_AGAIN_FOR).await
    };
    match tokio::time::timeout(LOST_AFTER, submit).await {
        Err(_) => Outcome::Lost,
        Ok(Err(e)) => {
            // A user pauses before the next request after an error; so
            // that one fault does not fail the whole queue in a burst.
            tokio::time::sleep(ERROR_PAUSE).await;
            Outcome::Error(error_kind(&e))
        }
        Ok(Ok(r)) => answered(&r, expected.as_deref()),
    }
}

fn answered(r: &TaskResult, expected: Option<&str>) -> Outcome {
    if let Some(want) = expected {
        assert_eq!(
            r.full_text(),
            want,
            "a wrong answer passed the client's checks"
        );
    }
    Outcome::Answered {
        task: r.receipt.body.task_id,
        orchestrator: r.receipt.body.orchestrator,
        receipt: r.receipt.hash().unwrap(),
        resumed: r.resumed.is_some(),
    }
}

fn run(s: Settings) {
    // CHAOS_KEEP=dir keeps the nodes' data dirs and logs there.
    let kept = std::env::var_os("CHAOS_KEEP").map(PathBuf::from);
    let mut tmp = match &kept {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            tempfile::Builder::new()
                .prefix("chaos-")
                .tempdir_in(dir)
                .unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    // Kept even when the run fails.
    tmp.disable_cleanup(kept.is_some());
    if kept.is_some() {
        println!(
            "chaos: nodes' data dirs and logs in {}",
            tmp.path().display()
        );
    }
    let shaping = s.net.then(Shaping::detect);
    println!(
        "chaos: seed {}, {} stub tasks, {} real-model tasks, network faults: {}",
        s.seed,
        s.stub_tasks,
        s.real_tasks,
        shaping.map_or("none (not in a namespace of our own)".into(), |x| format!(
            "cuts and {x:?}"
        ))
    );
    let node = |kind, name: &str| Node {
        kind,
        name: name.into(),
        dir: tmp.path().join(name),
        port: free_port(),
        child: None,
        starts: 0,
    };
    let mut router = node(Kind::Router, "router");
    let router_id: PeerId = {
        let out = Command::new(BIN)
            .args(["id", "--data-dir"])
            .arg(&router.dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let bootstrap = format!("{}/p2p/{router_id}", router.addr());
    router.start("");
    let mut orchestrators: Vec<Node> = (0..STUB_ORCHESTRATORS)
        .map(|i| node(Kind::Stub, &format!("stub{i}")))
        .chain((0..REAL_ORCHESTRATORS).map(|i| node(Kind::Real, &format!("real{i}"))))
        .collect();
    for o in &mut orchestrators {
        o.start(&bootstrap);
    }
    let router_log = router.dir.with_extension("log");
    wait_log(
        &router_log,
        &format!("known={}", orchestrators.len()),
        Duration::from_secs(180),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client_dir = tmp.path().join("client");
    let client = rt.block_on(async {
        let node = cactus_node::Node::start(
            cactus_node::NodeConfig {
                role: cactus_node::Role::Client,
                data_dir: client_dir.clone(),
                ..cactus_node::NodeConfig::default()
            },
            libp2p::identity::Keypair::generate_ed25519(),
            None,
        )
        .await
        .unwrap();
        node.network()
            .dial(bootstrap.parse().unwrap())
            .await
            .unwrap();
        node
    });
    let deposit = cactus_node::chain::embedded::FAUCET_AMOUNT;
    rt.block_on(client::fund_from_faucet(
        client.network(),
        router_id,
        router_id,
        deposit,
    ))
    .unwrap();

    // Faults on one thread, tasks on the runtime.
    let (stop_tx, stop_rx) = mpsc::sync_channel(1);
    let max_router_kills = (s.stub_tasks / 100).max(1) as u32;
    let chaos = {
        let bootstrap = bootstrap.clone();
        let seed = s.seed;
        std::thread::spawn(move || {
            chaos_loop(
                seed,
                shaping,
                max_router_kills,
                router,
                orchestrators,
                &bootstrap,
                &stop_rx,
            )
        })
    };
    let addr: Multiaddr = bootstrap.parse().unwrap();
    let started = Instant::now();
    let outcomes: Vec<(Kind, Outcome)> = rt.block_on(async {
        let stub_slots = Arc::new(tokio::sync::Semaphore::new(STUB_ORCHESTRATORS * SLOTS));
        let real_slots = Arc::new(tokio::sync::Semaphore::new(REAL_ORCHESTRATORS * SLOTS));
        let mut tasks = tokio::task::JoinSet::new();
        // The real-model tasks spread over the stub tasks.
        let every = (s.stub_tasks / s.real_tasks.max(1)).max(1);
        let mut real_sent = 0;
        for i in 0..s.stub_tasks.max(s.real_tasks) {
            if i < s.stub_tasks {
                let permit = Arc::clone(&stub_slots).acquire_owned().await.unwrap();
                let (n, a) = (client.network().clone(), addr.clone());
                let spec = stub_spec(s.seed, i);
                tasks.spawn(async move {
                    let o = one_task(n, router_id, a, spec, i % 2 == 1).await;
                    drop(permit);
                    (Kind::Stub, o)
                });
            }
            if real_sent < s.real_tasks && (i % every == 0 || i >= s.stub_tasks) {
                let permit = Arc::clone(&real_slots).acquire_owned().await.unwrap();
                let (n, a) = (client.network().clone(), addr.clone());
                let spec = real_spec(real_sent);
                let streamed = real_sent % 2 == 1;
                real_sent += 1;
                tasks.spawn(async move {
                    let o = one_task(n, router_id, a, spec, streamed).await;
                    drop(permit);
                    (Kind::Real, o)
                });
            }
        }
        tasks.join_all().await
    });
    let workload = started.elapsed();
    stop_tx.send(()).unwrap();
    let ChaosDone {
        mut faults,
        mut router,
        mut orchestrators,
    } = chaos.join().unwrap();

    // With the faults over, the cluster serves again: one task of each kind.
    let mut after = Vec::new();
    for (i, spec) in [stub_spec(s.seed, usize::MAX), real_spec(99)]
        .into_iter()
        .enumerate()
    {
        let deadline = Instant::now() + RECOVERY;
        loop {
            let o = rt.block_on(one_task(
                client.network().clone(),
                router_id,
                addr.clone(),
                spec.clone(),
                i == 0,
            ));
            match o {
                Outcome::Answered { .. } => {
                    after.push((if i == 0 { Kind::Stub } else { Kind::Real }, o));
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "the cluster did not serve again within {RECOVERY:?}: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let client_account = cactus_node::chain::default_account(&client.peer_id());
    rt.block_on(client.shutdown());
    // The router stops cleanly; the orchestrators need not.
    router.terminate();
    for o in &mut orchestrators {
        if let Some(status) = o.crashed() {
            faults.crashes.push(format!("{} ({status})", o.name));
        }
        o.kill9();
    }

    // Counts.
    let mut answered = 0;
    let mut resumed = 0;
    let mut lost = 0;
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut answers: Vec<(TaskId, PeerId, cactus_protocol::Digest)> = Vec::new();
    for (kind, o) in outcomes.iter().chain(&after) {
        let k = if *kind == Kind::Real {
            "real model"
        } else {
            "stub"
        };
        let e = by_kind.entry(k).or_default();
        match o {
            Outcome::Answered {
                task,
                orchestrator,
                receipt,
                resumed: r,
            } => {
                answered += 1;
                e.0 += 1;
                resumed += u32::from(*r);
                answers.push((*task, *orchestrator, *receipt));
            }
            Outcome::Error(why) => {
                e.1 += 1;
                *errors.entry(why.clone()).or_default() += 1;
            }
            Outcome::Lost => lost += 1,
        }
    }
    let ids: HashSet<TaskId> = answers.iter().map(|a| a.0).collect();
    assert_eq!(ids.len(), answers.len(), "two answers share a task id");

    // The router's ledger and receipt log, as the kills left them.
    let router_dir = &router.dir;
    let chain = Embedded(EmbeddedChain::open_existing(router_dir).expect("the ledger reopens"));
    let state = chain.0.state();
    let (stake, escrow, vault) = state.totals();
    assert_eq!(
        stake + escrow + state.deposits_held(),
        vault,
        "the vault holds exactly stake, escrow and deposits"
    );
    let pending: Vec<_> = state
        .tasks
        .iter()
        .filter(|(_, t)| t.status == TaskStatus::Pending)
        .collect();
    assert!(pending.is_empty(), "escrow left pending: {pending:?}");
    assert_eq!(escrow, 0, "escrow left held");
    assert!(state.clients.tasks.is_empty(), "client tasks left open");
    let router_account = cactus_node::chain::default_account(&router_id);
    let fee_bps = state.clients.fee(&router_account);
    let mut paid_for_answers = 0u64;
    for (task, _, _) in &answers {
        let t = rt
            .block_on(chain.task(*task))
            .unwrap()
            .unwrap_or_else(|| panic!("answered task {task} is not on the ledger"));
        assert_eq!(
            t.status,
            TaskStatus::Completed,
            "answered task {task} not paid"
        );
        assert!(t.payment > 0 && t.payment <= t.escrow, "{task}: {t:?}");
        paid_for_answers += t.payment + t.payment * fee_bps / 10_000;
    }
    let completed: u64 = state.orchestrators.values().map(|o| o.successes).sum();
    let refunded: u64 = state.orchestrators.values().map(|o| o.failures).sum();
    let charged = deposit - state.clients.tab(client_account, router_account);
    // A task can be paid and its answer lost with the router: killed after
    // settling, before the answer left. Never more of those than answers
    // lost to the network, and the client is charged for nothing else.
    let unanswered_paid = completed
        .checked_sub(answers.len() as u64)
        .unwrap_or_else(|| {
            panic!(
                "{} answers but only {completed} tasks completed on the ledger",
                answers.len()
            )
        });
    let network_errors = u64::from(errors.get("network").copied().unwrap_or(0));
    assert!(
        unanswered_paid <= network_errors,
        "{unanswered_paid} tasks paid without an answer, {network_errors} lost to the network"
    );
    if unanswered_paid == 0 {
        assert_eq!(
            charged, paid_for_answers,
            "the client paid for exactly its answers"
        );
    } else {
        assert!(charged >= paid_for_answers);
    }

    // Every answer's receipt is in the receipt log; every orchestrator that
    // answered keeps a reputation record there.
    let receipts = ReceiptLog::open(router_dir).expect("the receipt log reopens");
    for (task, orchestrator, hash) in &answers {
        let r = receipts
            .get(task)
            .unwrap()
            .unwrap_or_else(|| panic!("no receipt logged for answered task {task}"));
        assert_eq!(r.hash().unwrap(), *hash, "{task}");
        let rep = receipts.reputation(orchestrator).unwrap();
        assert!(
            rep.is_some_and(|r| r.successes > 0),
            "no reputation kept for {orchestrator}"
        );
    }

    println!("chaos: seed {} done in {workload:.1?} of tasks", s.seed);
    println!(
        "chaos: faults: {} steps, {} orchestrator kills, {} router kills, {} connection cuts, {} shaped spells; {} crashes",
        faults.steps,
        faults.orchestrator_kills,
        faults.router_kills,
        faults.cuts,
        faults.shaped,
        faults.crashes.len()
    );
    println!(
        "chaos: starts: router {}, orchestrators {}",
        router.starts,
        orchestrators
            .iter()
            .map(|o| format!("{} {}", o.name, o.starts))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (k, (a, e)) in &by_kind {
        println!("chaos: {k}: {a} answered, {e} clear errors");
    }
    println!(
        "chaos: {} tasks: {answered} answered ({resumed} resumed on another orchestrator), {} clear errors, {lost} lost",
        outcomes.len() + after.len(),
        errors.values().sum::<u32>()
    );
    for (why, n) in &errors {
        println!("chaos:   error {why}: {n}");
    }
    println!(
        "chaos: ledger: {completed} tasks paid, {refunded} refunded, 0 pending; client charged {charged} for {} answers ({unanswered_paid} paid tasks whose answer was lost with the router)",
        answers.len()
    );
    println!(
        "chaos: receipt log: {} receipts, all {} answers in it",
        receipts.len().unwrap(),
        answers.len()
    );
    assert_eq!(lost, 0, "tasks lost");
    assert!(
        faults.crashes.is_empty(),
        "processes crashed: {:?}",
        faults.crashes
    );
}
