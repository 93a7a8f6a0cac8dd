//! Nodes in one process on loopback, with the stub engine.

use cactus_node::chain::default_account;
use cactus_node::chain::embedded::LocalSettings;
use cactus_node::client::{self, ClientError};
use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::{StallsOnce, StubEngine};
use cactus_node::network::NetworkConfig;
use cactus_node::node::ChainChoice;
use cactus_node::receipt_log::ReceiptLog;
use cactus_node::roles::router::Verification;
use cactus_node::time::now_ms;
use cactus_node::{Node, NodeConfig, Role};
use cactus_protocol::contract::TaskStatus;
use cactus_protocol::messages::{Query, QueryAnswer};
use cactus_protocol::{PromptFormat, SamplingParams, StreamFrame, TaskErrorKind, TaskSpec};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bound on every wait in these tests; they finish in well under a second
/// each when things work.
const LIMIT: Duration = Duration::from_secs(30);

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

async fn start(
    role: Role,
    dir: &std::path::Path,
    bootstrap: Vec<Multiaddr>,
    engine: Option<Arc<StubEngine>>,
) -> Node {
    start_with(config(role, dir, bootstrap), engine).await
}

/// Queue places of a stub orchestrator unless a test says otherwise.
const QUEUE: usize = 4;

async fn start_with(config: NodeConfig, engine: Option<Arc<StubEngine>>) -> Node {
    start_queued(config, engine, QUEUE).await
}

/// A node whose stub engine runs one task at a time with `queue` waiting.
async fn start_queued(config: NodeConfig, engine: Option<Arc<StubEngine>>, queue: usize) -> Node {
    let engine = engine.map(|e| Arc::new(ThreadPool::new(e, 1, queue)) as Arc<dyn Engine>);
    Node::start(config, Keypair::generate_ed25519(), engine)
        .await
        .unwrap()
}

async fn first_addr(node: &Node) -> Multiaddr {
    node.listen_addrs().await.unwrap()[0].clone()
}

/// What a test client deposits at its router, from the dev faucet.
const DEPOSIT: u64 = 500_000;

/// A router with identity `key` and its data in `dir` (start it again the
/// same way to restart it), and its address.
async fn start_router(dir: &std::path::Path, key: Keypair) -> (Node, Multiaddr) {
    let router = Node::start(config(Role::Router, dir, vec![]), key, None)
        .await
        .unwrap();
    let addr = first_addr(&router).await;
    (router, addr)
}

/// Funds `client` (connected to `router`, which keeps the ledger) from the
/// dev faucet and deposits [`DEPOSIT`] at the router, which its tasks are
/// escrowed from.
async fn fund(client: &Node, router: &Node) {
    let (ledger, server) = (router.peer_id(), router.peer_id());
    within(client::fund_from_faucet(
        client.network(),
        ledger,
        server,
        DEPOSIT,
    ))
    .await
    .unwrap();
}

/// A client identity with a deposit at `router`, made through a node of
/// its own that then leaves.
async fn funded_key(router: &Node, dir: &std::path::Path) -> Keypair {
    let key = Keypair::generate_ed25519();
    let node = Node::start(config(Role::Client, dir, vec![]), key.clone(), None)
        .await
        .unwrap();
    within(node.network().dial(first_addr(router).await))
        .await
        .unwrap();
    fund(&node, router).await;
    node.shutdown().await;
    key
}

fn spec(model: Option<&str>, prompt: &str) -> TaskSpec {
    TaskSpec {
        model: model.map(str::to_owned),
        prompt: prompt.into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        max_price_per_unit: None,
        request_id: None,
    }
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

/// A router with `n` stub orchestrators joined to it, and a client connected
/// to the router.
struct Cluster {
    _dir: tempfile::TempDir,
    router: Node,
    router_addr: Multiaddr,
    orchestrators: Vec<Node>,
    client: Node,
}

impl Cluster {
    async fn new(engines: Vec<Arc<StubEngine>>) -> Self {
        Self::with_queue(engines, QUEUE).await
    }

    /// Orchestrators whose pools queue at most `queue` tasks.
    async fn with_queue(engines: Vec<Arc<StubEngine>>, queue: usize) -> Self {
        Self::custom(engines, queue, |c| c).await
    }

    /// With the router's settings changed by `router_config`.
    async fn custom(
        engines: Vec<Arc<StubEngine>>,
        queue: usize,
        router_config: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> Self {
        Self::build(engines, queue, router_config, false).await
    }

    /// Whose client may also assign tasks to orchestrators itself: the
    /// router's ledger authorizes it as a server.
    async fn with_client_as_server(engines: Vec<Arc<StubEngine>>, queue: usize) -> Self {
        Self::build(engines, queue, |c| c, true).await
    }

    async fn build(
        engines: Vec<Arc<StubEngine>>,
        queue: usize,
        router_config: impl FnOnce(NodeConfig) -> NodeConfig,
        client_is_server: bool,
    ) -> Self {
        let engines = engines
            .into_iter()
            .map(|e| Arc::new(ThreadPool::new(e, 1, queue)) as Arc<dyn Engine>)
            .collect();
        Self::with_engines(engines, router_config, client_is_server).await
    }

    /// Orchestrators running `engines` as they are.
    async fn with_engines(
        engines: Vec<Arc<dyn Engine>>,
        router_config: impl FnOnce(NodeConfig) -> NodeConfig,
        client_is_server: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client_key = Keypair::generate_ed25519();
        let mut router_config = router_config(config(Role::Router, dir.path(), vec![]));
        if client_is_server {
            let client = client_key.public().to_peer_id();
            router_config.chain = ChainChoice::Embedded(LocalSettings {
                servers: vec![default_account(&client)],
                ..LocalSettings::dev()
            });
        }
        let router = start_with(router_config, None).await;
        let router_addr = first_addr(&router).await;
        let mut orchestrators = Vec::new();
        for e in engines {
            let config = config(Role::Orchestrator, dir.path(), vec![router_addr.clone()]);
            orchestrators.push(
                Node::start(config, Keypair::generate_ed25519(), Some(e))
                    .await
                    .unwrap(),
            );
        }
        within(router.wait_for_orchestrators(orchestrators.len()))
            .await
            .unwrap();
        let client = Node::start(config(Role::Client, dir.path(), vec![]), client_key, None)
            .await
            .unwrap();
        within(client.network().dial(router_addr.clone()))
            .await
            .unwrap();
        fund(&client, &router).await;
        Self {
            _dir: dir,
            router,
            router_addr,
            orchestrators,
            client,
        }
    }

    async fn submit(&self, spec: TaskSpec) -> Result<cactus_protocol::TaskResult, ClientError> {
        within(client::submit_to(
            self.client.network(),
            self.router.peer_id(),
            spec,
        ))
        .await
    }

    async fn stop(self) {
        self.client.shutdown().await;
        for o in self.orchestrators {
            o.shutdown().await;
        }
        self.router.shutdown().await;
    }
}

#[tokio::test]
async fn advert_reaches_router() {
    let engine = Arc::new(StubEngine::new("stub-a"));
    let c = Cluster::new(vec![engine.clone()]).await;
    let known = c.router.orchestrators();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].peer, c.orchestrators[0].peer_id());
    assert_eq!(known[0].models, vec![engine.model()]);
    assert_eq!(known[0].total_slots, 1);
    c.stop().await;
}

#[tokio::test]
async fn stub_task_round_trips_with_verified_receipt_in_the_receipt_log() {
    let c = Cluster::new(vec![
        Arc::new(StubEngine::new("stub-a")),
        Arc::new(StubEngine::new("stub-a")),
    ])
    .await;
    let result = c.submit(spec(Some("stub-a"), "hello mesh")).await.unwrap();
    assert_eq!(result.text, "hsem olleh");
    result.receipt.verify().unwrap();
    let served_by = result.receipt.body.orchestrator;
    assert!(c.orchestrators.iter().any(|o| o.peer_id() == served_by));
    assert_eq!(result.receipt.body.router, c.router.peer_id());
    let recorded = c.router.receipt(result.receipt.body.task_id).await.unwrap();
    assert_eq!(recorded, Some(result.receipt));
    c.stop().await;
}

#[tokio::test]
async fn task_for_unserved_model_fails_fast() {
    let c = Cluster::new(vec![Arc::new(StubEngine::new("stub-a"))]).await;
    match c.submit(spec(Some("no-such-model"), "hi")).await {
        Err(ClientError::Task(e)) => assert_eq!(e.kind, TaskErrorKind::NoSuchModel),
        other => panic!("expected NoSuchModel, got {other:?}"),
    }
    c.stop().await;
}

#[tokio::test]
async fn invalid_requests_and_wrong_roles_get_typed_errors() {
    let c = Cluster::new(vec![Arc::new(StubEngine::new("stub-a"))]).await;
    let mut bad = spec(None, "hi");
    bad.sampling.max_tokens = 0;
    match c.submit(bad).await {
        Err(ClientError::Task(e)) => assert_eq!(e.kind, TaskErrorKind::InvalidRequest),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    // An orchestrator does not take client submissions.
    let orch = c.orchestrators[0].peer_id();
    within(
        c.client
            .network()
            .dial(c.orchestrators[0].listen_addrs().await.unwrap()[0].clone()),
    )
    .await
    .unwrap();
    match within(client::submit_to(
        c.client.network(),
        orch,
        spec(None, "hi"),
    ))
    .await
    {
        Err(ClientError::Task(e)) => assert_eq!(e.kind, TaskErrorKind::WrongRole),
        other => panic!("expected WrongRole, got {other:?}"),
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_orchestrator_is_skipped_for_a_free_one() {
    let gated = Arc::new(StubEngine::new("stub-a").gated());
    let free = Arc::new(StubEngine::new("stub-a"));
    // One slot, no queue: one task held at the gate fills the orchestrator.
    let c = Cluster::with_queue(vec![gated.clone()], 0).await;
    let held = {
        let network = c.client.network().clone();
        let router = c.router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "held")).await })
    };
    let g = gated.clone();
    within(tokio::task::spawn_blocking(move || g.wait_started(1)))
        .await
        .unwrap();
    // With only the gated node, the next task is refused as busy.
    let refused = c.submit(spec(None, "second")).await;
    assert!(
        matches!(&refused, Err(ClientError::Task(e)) if e.kind == TaskErrorKind::Busy),
        "{refused:?}"
    );
    // A second orchestrator joins: the router now goes around the busy one.
    let dir = tempfile::tempdir().unwrap();
    let second = start(
        Role::Orchestrator,
        dir.path(),
        vec![c.router_addr.clone()],
        Some(free),
    )
    .await;
    within(c.router.wait_for_orchestrators(2)).await.unwrap();
    let served = c.submit(spec(None, "third")).await.unwrap();
    assert_eq!(served.receipt.body.orchestrator, second.peer_id());
    gated.open_gate();
    assert_eq!(within(held).await.unwrap().unwrap().text, "dleh");
    // The busy node was never handed the refused task: with no free slot in
    // its table the router called for bids, which a node without a queue
    // place does not answer. So no failed attempt is on its record, and no
    // escrow is left behind.
    let chain = c.router.chain().unwrap();
    let gated_account = default_account(&c.orchestrators[0].peer_id());
    let record = chain.orchestrator(gated_account).await.unwrap().unwrap();
    assert_eq!((record.successes, record.failures), (1, 0));
    assert_eq!(chain.totals().await.unwrap().1, 0, "no escrow left behind");
    assert_eq!(c.router.market().unwrap().awarded(), 0);
    second.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_gives_up_on_a_task_stops_it_on_its_orchestrator() {
    let gated = Arc::new(StubEngine::new("stub-a").gated());
    // One slot, no queue, one attempt of one second.
    let c = Cluster::custom(vec![gated.clone()], 0, |cfg| NodeConfig {
        task_timeout: Duration::from_secs(1),
        max_attempts: 1,
        ..cfg
    })
    .await;
    let failed = c.submit(spec(None, "held")).await;
    assert!(failed.is_err(), "{failed:?}");
    // The task held at the gate is stopped, not left to run to its end.
    let g = gated.clone();
    within(tokio::task::spawn_blocking(move || g.wait_cancelled(1)))
        .await
        .unwrap();
    // Its slot takes the next task.
    gated.open_gate();
    let served = c.submit(spec(None, "next")).await.unwrap();
    assert_eq!(served.text, "txen");
    c.stop().await;
}

#[tokio::test]
async fn an_orchestrator_that_stalls_mid_stream_is_resumed_on_another() {
    // Two orchestrators; whichever takes the task first streams 3 tokens
    // and then hangs without closing anything.
    let armed = Arc::new(AtomicBool::new(true));
    let engines: Vec<Arc<StallsOnce>> = (0..2)
        .map(|_| {
            let stub = Arc::new(StubEngine::new("stub-a"));
            let pool = Arc::new(ThreadPool::new(stub.clone(), 1, QUEUE));
            Arc::new(StallsOnce::new(stub, pool, Arc::clone(&armed), 3))
        })
        .collect();
    let c = Cluster::with_engines(
        engines
            .iter()
            .map(|e| Arc::clone(e) as Arc<dyn Engine>)
            .collect(),
        |c| NodeConfig {
            stall_timeout: Duration::from_millis(300),
            ..c
        },
        false,
    )
    .await;
    let chain = Arc::clone(c.router.chain().unwrap());
    let balances = |chain: Arc<dyn cactus_node::chain::ChainBackend>, peers: Vec<PeerId>| async move {
        let mut out = Vec::new();
        for p in peers {
            out.push(chain.balance(default_account(&p)).await.unwrap());
        }
        out
    };
    let peers: Vec<_> = c.orchestrators.iter().map(Node::peer_id).collect();
    let before = balances(Arc::clone(&chain), peers.clone()).await;

    let mut streamed = String::new();
    let mut chunks = Vec::new();
    let result = within(client::submit_streaming(
        c.client.network(),
        c.router.peer_id(),
        spec(Some("stub-a"), "a stalled stream"),
        |chunk| {
            streamed.push_str(&chunk.text);
            chunks.push(chunk.tokens.clone());
        },
    ))
    .await
    .unwrap();

    // One uninterrupted answer: the stalled node's 3 tokens, then the rest
    // from the other; nothing repeated, nothing missing (the client checked
    // the stream against the receipt too).
    assert!(!armed.load(Ordering::Acquire), "no orchestrator stalled");
    assert_eq!(result.full_text(), "maerts dellats a");
    assert_eq!(streamed, "maerts dellats a");
    let resumed = result.resumed.as_ref().expect("the task resumed");
    assert_eq!(resumed.shown, "mae");
    assert_eq!(resumed.tokens.len(), 3);
    assert_eq!(result.tokens.len(), 13);
    assert_eq!(chunks.concat().len(), 16);

    // The receipt is the second orchestrator's, for its own 13 tokens; the
    // stalled one signed nothing, was paid nothing, and its sequence was
    // stopped when the router gave up on it.
    let body = &result.receipt.body;
    assert_eq!(body.output_tokens, 13);
    let stalled = within(async {
        loop {
            if let Some(i) = engines.iter().position(|e| e.released() == 1) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let served = 1 - stalled;
    assert_eq!(body.orchestrator, peers[served]);
    let task = chain.task(body.task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    let after = balances(Arc::clone(&chain), peers.clone()).await;
    assert_eq!(
        after[stalled], before[stalled],
        "the stalled orchestrator is not paid"
    );
    assert_eq!(after[served], before[served] + task.payment);
    c.stop().await;
}

#[tokio::test]
async fn orchestrators_rejoin_a_router_that_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    // The router comes back with the same identity, port and data dir, as
    // a restarted process does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let router_config = || {
        let mut c = config(Role::Router, &dir.path().join("router"), vec![]);
        c.network.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
        c
    };
    let router = Node::start(router_config(), key.clone(), None)
        .await
        .unwrap();
    let addr = first_addr(&router).await;
    let mut orchestrator = config(Role::Orchestrator, &dir.path().join("o"), vec![addr]);
    orchestrator.network.bootstrap_redial = Duration::from_millis(200);
    orchestrator.advert_interval = Duration::from_millis(500);
    let orchestrator = start_with(orchestrator, Some(Arc::new(StubEngine::new("stub-a")))).await;
    within(router.wait_for_orchestrators(1)).await.unwrap();

    router.shutdown().await;
    let router = Node::start(router_config(), key, None).await.unwrap();
    // Without a redial the orchestrator would stay cut off: it is not
    // restarted, and the new router process knows nobody.
    within(router.wait_for_orchestrators(1)).await.unwrap();
    assert_eq!(router.orchestrators()[0].peer, orchestrator.peer_id());
    orchestrator.shutdown().await;
    router.shutdown().await;
}

#[tokio::test]
async fn client_finds_router_on_the_dht_through_a_bootstrap_node() {
    let dir = tempfile::tempdir().unwrap();
    let boot = start(Role::Bootstrap, dir.path(), vec![], None).await;
    let boot_addr = first_addr(&boot).await;
    let router = start(
        Role::Router,
        &dir.path().join("r"),
        vec![boot_addr.clone()],
        None,
    )
    .await;
    // It follows the router's ledger, which it does not bootstrap through.
    let orch = start_with(
        NodeConfig {
            ledger: Some(router.peer_id()),
            ..config(Role::Orchestrator, dir.path(), vec![boot_addr.clone()])
        },
        Some(Arc::new(StubEngine::new("stub-b"))),
    )
    .await;
    // The orchestrator only knows the bootstrap node: its advert reaches the
    // router through gossip and DHT discovery.
    within(router.wait_for_orchestrators(1)).await.unwrap();
    // The router announces itself on the DHT when it has peers; ask until the
    // record is there (each lookup is a real DHT query, not a sleep).
    let key = funded_key(&router, dir.path()).await;
    let result = within(async {
        loop {
            match client::submit(
                key.clone(),
                vec![boot_addr.clone()],
                None,
                spec(None, "abc"),
                LIMIT,
                None,
            )
            .await
            {
                Err(ClientError::NoRouter) => continue,
                other => break other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(result.text, "cba");
    assert_eq!(result.receipt.body.router, router.peer_id());
    assert_eq!(result.receipt.body.orchestrator, orch.peer_id());
    orch.shutdown().await;
    router.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test]
async fn orchestrator_below_minimum_stake_gets_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let router = start(Role::Router, dir.path(), vec![], None).await;
    let router_addr = first_addr(&router).await;
    let low = NodeConfig {
        stake: 10,
        ..config(Role::Orchestrator, dir.path(), vec![router_addr.clone()])
    };
    let orch = start_with(low, Some(Arc::new(StubEngine::new("stub-a")))).await;
    within(router.wait_for_verdicts(1)).await.unwrap();
    let known = router.orchestrators();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].eligible, Some(false));
    let client_node = start(Role::Client, dir.path(), vec![], None).await;
    within(client_node.network().dial(router_addr))
        .await
        .unwrap();
    match within(client::submit_to(
        client_node.network(),
        router.peer_id(),
        spec(Some("stub-a"), "hi"),
    ))
    .await
    {
        Err(ClientError::Task(e)) => assert_eq!(e.kind, TaskErrorKind::NoSuchModel),
        other => panic!("expected NoSuchModel, got {other:?}"),
    }
    client_node.shutdown().await;
    orch.shutdown().await;
    router.shutdown().await;
}

#[tokio::test]
async fn tasks_are_escrowed_paid_and_anchored() {
    let c = Cluster::new(vec![Arc::new(StubEngine::new("stub-a"))]).await;
    let result = c.submit(spec(None, "pay me")).await.unwrap();
    let body = &result.receipt.body;
    let chain = c.router.chain().unwrap();
    let account = default_account(&c.orchestrators[0].peer_id());

    // Paid by the contract's formula: (prompt + 4 x output tokens) x price 1,
    // full reputation, no time credit on the default embedded chain.
    let task = chain.task(body.task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(
        task.payment,
        u64::from(body.prompt_tokens + 4 * body.output_tokens)
    );
    let record = chain.orchestrator(account).await.unwrap().unwrap();
    assert_eq!(
        (record.stake, record.successes, record.failures),
        (10_000, 1, 0)
    );
    // The vault holds the stake and what is left of the client's deposit.
    let client = default_account(&c.client.peer_id());
    let (left, _) = chain.client(client, chain.account()).await.unwrap();
    assert_eq!(chain.totals().await.unwrap(), (10_000, 0, 10_000 + left));

    // Anchored by its Merkle root; the proof leads to the anchored root.
    assert_eq!(c.router.anchor_now(64).await.unwrap(), 1);
    let proof = c.router.receipt_proof(body.task_id).await.unwrap().unwrap();
    assert!(
        proof
            .proof
            .verify(&result.receipt.hash().unwrap(), &proof.root)
    );
    let anchor = chain.anchor(proof.anchor_index).await.unwrap().unwrap();
    assert_eq!((anchor.root, anchor.count), (proof.root, 1));

    // The same, asked over the mesh.
    let answer = within(client::query(
        c.client.network(),
        c.router.peer_id(),
        Query::Status,
    ))
    .await;
    let Ok(QueryAnswer::Status(status)) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (status.receipts, status.pending_anchor, status.anchors),
        (1, 0, 1)
    );
    assert_eq!(
        status.orchestrators[0].record.as_ref().unwrap().successes,
        1
    );
    let answer = within(client::query(
        c.client.network(),
        c.router.peer_id(),
        Query::Receipt(body.task_id),
    ))
    .await;
    let Ok(QueryAnswer::Receipt(Some(bundle))) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(bundle.receipt, result.receipt);
    assert_eq!(bundle.anchor, Some(proof));
    c.stop().await;
}

#[tokio::test]
async fn clients_pay_from_their_deposit_and_the_router_earns_its_fee() {
    let c = Cluster::custom(vec![Arc::new(StubEngine::new("stub-a"))], QUEUE, |c| {
        NodeConfig {
            fee_bps: 2_000,
            ..c
        }
    })
    .await;
    let chain = Arc::clone(c.router.chain().unwrap());
    let (me, router) = (default_account(&c.client.peer_id()), chain.account());
    let router_funds = chain.balance(router).await.unwrap();

    // Paid from the deposit: the payment, and the router's 20 % on top.
    let result = c.submit(spec(None, "pay me")).await.unwrap();
    let task = chain
        .task(result.receipt.body.task_id)
        .await
        .unwrap()
        .unwrap();
    let fee = task.payment * 2_000 / 10_000;
    assert!(fee > 0, "{task:?}");
    assert_eq!(
        chain.client(me, router).await.unwrap(),
        (
            DEPOSIT - task.payment - fee,
            cactus_protocol::contract::NO_CAP
        )
    );
    assert_eq!(
        chain.balance(router).await.unwrap(),
        router_funds + fee,
        "the router earns its fee and pays for nothing"
    );

    // Nothing is escrowed, nobody is picked, for a task whose cap is below
    // every orchestrator's price: asked with the task, or set on the ledger.
    let refused = |r: Result<_, ClientError>| match r {
        Err(ClientError::Task(e)) => assert_eq!(e.kind, TaskErrorKind::PaymentRequired, "{e:?}"),
        other => panic!("expected PaymentRequired, got {other:?}"),
    };
    let mut capped = spec(None, "too dear");
    capped.max_price_per_unit = Some(0);
    refused(c.submit(capped).await);
    let cap = cactus_protocol::contract::Op::SetMaxPrice {
        max_price_per_unit: 0,
    };
    within(client::apply(c.client.network(), c.router.peer_id(), cap))
        .await
        .unwrap()
        .unwrap();
    refused(c.submit(spec(None, "still too dear")).await);

    // A client without a deposit is refused before any work is done.
    let stranger = Node::start(
        config(Role::Client, c._dir.path(), vec![]),
        Keypair::generate_ed25519(),
        None,
    )
    .await
    .unwrap();
    within(stranger.network().dial(c.router_addr.clone()))
        .await
        .unwrap();
    refused(
        within(client::submit_to(
            stranger.network(),
            c.router.peer_id(),
            spec(None, "free lunch"),
        ))
        .await,
    );
    let record = chain
        .orchestrator(default_account(&c.orchestrators[0].peer_id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.successes, record.failures), (1, 0), "one task ran");
    assert_eq!(chain.totals().await.unwrap().1, 0, "nothing in escrow");
    assert_eq!(chain.pending_tasks(8).await.unwrap(), Some(vec![]));

    // An account that binds a PeerId pays for that peer's tasks (how a
    // client whose account its PeerId does not name, on Aptos, pays).
    let ops = [
        cactus_protocol::contract::Op::SetMaxPrice {
            max_price_per_unit: u64::MAX,
        },
        cactus_protocol::contract::Op::BindClientPeer {
            peer_id: stranger.peer_id().to_bytes(),
        },
    ];
    for op in ops {
        within(client::apply(c.client.network(), c.router.peer_id(), op))
            .await
            .unwrap()
            .unwrap();
    }
    let (before, _) = chain.client(me, router).await.unwrap();
    within(client::submit_to(
        stranger.network(),
        c.router.peer_id(),
        spec(None, "on my friend"),
    ))
    .await
    .unwrap();
    let (after, _) = chain.client(me, router).await.unwrap();
    assert!(after < before, "the binding account paid");
    stranger.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_without_listen_address_serves_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    // A bootstrap node is a relay; the router joins through it.
    let boot = start(Role::Bootstrap, dir.path(), vec![], None).await;
    let boot_addr = first_addr(&boot).await;
    let router = start(
        Role::Router,
        &dir.path().join("r"),
        vec![boot_addr.clone()],
        None,
    )
    .await;
    // The orchestrator listens on nothing and talks only to the bootstrap
    // node: the only way in is its relay reservation.
    let hidden = NodeConfig {
        network: NetworkConfig {
            listen: vec![],
            bootstrap: vec![boot_addr.clone()],
            target_peers: 1,
            ..NetworkConfig::default()
        },
        ledger: Some(router.peer_id()),
        ..config(Role::Orchestrator, dir.path(), vec![])
    };
    let orch = start_with(hidden, Some(Arc::new(StubEngine::new("stub-r")))).await;
    let mut rx_addrs = within(orch.listen_addrs()).await.unwrap();
    rx_addrs.retain(|a| a.to_string().contains("/p2p-circuit"));
    assert_eq!(rx_addrs.len(), 1, "listens only through the relay");
    within(router.wait_for_orchestrators(1)).await.unwrap();

    let client_node = start(Role::Client, dir.path(), vec![], None).await;
    within(client_node.network().dial(first_addr(&router).await))
        .await
        .unwrap();
    fund(&client_node, &router).await;
    let result = within(client::submit_to(
        client_node.network(),
        router.peer_id(),
        spec(None, "relay me"),
    ))
    .await
    .unwrap();
    assert_eq!(result.text, "em yaler");
    assert_eq!(result.receipt.body.orchestrator, orch.peer_id());
    let d = orch.network().diagnostics().await.unwrap();
    assert_eq!(d.reservations, vec![boot.peer_id()]);
    client_node.shutdown().await;
    orch.shutdown().await;
    router.shutdown().await;
    boot.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheating_orchestrator_is_caught_by_replay_refused_and_slashed() {
    let liar = Arc::new(StubEngine::new("stub").lying());
    let c = Cluster::custom(
        vec![
            Arc::new(StubEngine::new("stub")),
            Arc::new(StubEngine::new("stub")),
            liar,
        ],
        4,
        |c| NodeConfig {
            verification: Verification {
                share_ppm: 1_000_000,
                ..Verification::default()
            },
            ..c
        },
    )
    .await;
    let liar = c.orchestrators[2].peer_id();
    let chain = c.router.chain().unwrap().clone();
    let account = |p| default_account(&p);
    // Every result is replayed: the liar's are refused and the task is
    // retried on an honest orchestrator, so clients only see honest answers.
    let mut caught = Vec::new();
    for i in 0..40 {
        let prompt = format!("task number {i}");
        let result = c.submit(spec(Some("stub"), &prompt)).await.unwrap();
        assert_eq!(result.text, prompt.chars().rev().collect::<String>());
        assert_ne!(result.receipt.body.orchestrator, liar);
        caught = c.router.fraud_evidence(16).await.unwrap();
        if !caught.is_empty() {
            break;
        }
    }
    assert_eq!(caught.len(), 1, "the liar was never picked in 40 tasks");
    let evidence = &caught[0];
    evidence.verify().unwrap();
    assert_eq!(evidence.accused(), liar);
    // Confirmed by both honest orchestrators, then slashed by 10 %.
    assert_eq!(evidence.body.reports.len(), 2);
    let record = chain.orchestrator(account(liar)).await.unwrap().unwrap();
    assert_eq!(record.stake, 9_000);
    assert_eq!(record.successes, 0);
    // Its escrowed attempt was refunded, not paid.
    let task = chain
        .task(evidence.body.receipt.body.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    // It gets no more work; honest stakes are untouched.
    for i in 0..5 {
        let result = c
            .submit(spec(Some("stub"), &format!("after {i}")))
            .await
            .unwrap();
        assert_ne!(result.receipt.body.orchestrator, liar);
    }
    for o in &c.orchestrators[..2] {
        let r = chain
            .orchestrator(account(o.peer_id()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.stake, 10_000);
    }
    assert_eq!(c.router.fraud_evidence(16).await.unwrap().len(), 1);
    // The ban is in the router's store: it outlives the router.
    let Cluster {
        _dir: dir,
        router,
        orchestrators,
        client,
        ..
    } = c;
    client.shutdown().await;
    for o in orchestrators {
        o.shutdown().await;
    }
    router.shutdown().await;
    let log = ReceiptLog::open(dir.path()).unwrap();
    assert!(log.banned_until(&liar, now_ms()).unwrap().is_some());
}

/// A ban stored by an earlier run keeps the orchestrator out after a
/// restart, while others are admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_ban_keeps_an_orchestrator_out_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let banned_key = Keypair::generate_ed25519();
    let banned_peer = banned_key.public().to_peer_id();
    {
        let log = ReceiptLog::open(dir.path()).unwrap();
        log.ban(&banned_peer, now_ms() + 3_600_000, now_ms())
            .unwrap();
    }
    let router = start(Role::Router, dir.path(), vec![], None).await;
    let addr = first_addr(&router).await;
    let banned = Node::start(
        config(
            Role::Orchestrator,
            &dir.path().join("b"),
            vec![addr.clone()],
        ),
        banned_key,
        Some(
            Arc::new(ThreadPool::new(Arc::new(StubEngine::new("stub")), 1, QUEUE))
                as Arc<dyn Engine>,
        ),
    )
    .await
    .unwrap();
    let honest = start(
        Role::Orchestrator,
        &dir.path().join("h"),
        vec![addr],
        Some(Arc::new(StubEngine::new("stub"))),
    )
    .await;
    within(router.wait_for_verdicts(2)).await.unwrap();
    let verdicts: Vec<_> = router
        .orchestrators()
        .iter()
        .map(|o| (o.peer, o.eligible))
        .collect();
    assert!(
        verdicts.contains(&(honest.peer_id(), Some(true))),
        "{verdicts:?}"
    );
    assert!(
        verdicts.contains(&(banned_peer, Some(false))),
        "{verdicts:?}"
    );
    banned.shutdown().await;
    honest.shutdown().await;
    router.shutdown().await;
}

/// A router that stops mid-task leaves the task's escrow pending on the
/// chain; started again (same identity, same data dir) it refunds it, since
/// no receipt was logged, before it takes new work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_mid_task_refunds_the_escrow_it_left_pending() {
    let gated = Arc::new(StubEngine::new("stub").gated());
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let (router, addr) = start_router(dir.path(), key.clone()).await;
    let orch = start_with(
        config(Role::Orchestrator, dir.path(), vec![addr.clone()]),
        Some(gated.clone()),
    )
    .await;
    within(router.wait_for_orchestrators(1)).await.unwrap();
    let client = start(Role::Client, dir.path(), vec![], None).await;
    within(client.network().dial(addr)).await.unwrap();
    fund(&client, &router).await;
    let left = {
        let network = client.network().clone();
        let router = router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "left")).await })
    };
    let g = gated.clone();
    within(tokio::task::spawn_blocking(move || g.wait_started(1)))
        .await
        .unwrap();
    let account = default_account(&orch.peer_id());
    {
        let chain = router.chain().unwrap();
        let (_, escrowed, _) = chain.totals().await.unwrap();
        assert!(escrowed > 0, "the task was escrowed");
    }
    router.shutdown().await;
    assert!(within(left).await.unwrap().is_err());

    let router = Node::start(config(Role::Router, dir.path(), vec![]), key, None)
        .await
        .unwrap();
    let chain = router.chain().unwrap().clone();
    let (_, escrowed, _) = chain.totals().await.unwrap();
    assert_eq!(escrowed, 0, "nothing stays escrowed");
    let record = chain.orchestrator(account).await.unwrap().unwrap();
    assert_eq!((record.successes, record.failures), (0, 1));
    gated.open_gate();
    client.shutdown().await;
    orch.shutdown().await;
    router.shutdown().await;
}

/// A client that lost its answer asks again under the request's name: it
/// gets the same answer, whole or streamed, from the router that kept it
/// with the receipt (after a restart too, before any orchestrator is
/// back), and the task is paid once. The same name with another request is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asked_again_gets_its_kept_answer_paid_once_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let (router, addr) = start_router(dir.path(), key.clone()).await;
    let engine = Arc::new(StubEngine::new("stub"));
    let orch = start(
        Role::Orchestrator,
        dir.path(),
        vec![addr.clone()],
        Some(engine),
    )
    .await;
    within(router.wait_for_orchestrators(1)).await.unwrap();
    let client = start(Role::Client, dir.path(), vec![], None).await;
    within(client.network().dial(addr)).await.unwrap();
    fund(&client, &router).await;
    let account = default_account(&orch.peer_id());
    let mut named = spec(None, "asked twice");
    named.request_id = Some(cactus_protocol::RequestId([9; 16]));
    let ask = |router: PeerId| {
        let (network, named) = (client.network().clone(), named.clone());
        async move { within(client::submit_to(&network, router, named)).await }
    };
    let first = ask(router.peer_id()).await.unwrap();
    let again = ask(router.peer_id()).await.unwrap();
    assert_eq!(again, first, "the kept answer, receipt and all");
    let streamed = within(client::submit_streaming(
        client.network(),
        router.peer_id(),
        named.clone(),
        |_| {},
    ))
    .await
    .unwrap();
    assert_eq!(streamed, first);
    let mut other = named.clone();
    other.prompt = "another request under the same name".into();
    let refused = within(client::submit_to(client.network(), router.peer_id(), other)).await;
    assert!(
        matches!(&refused, Err(ClientError::Task(e)) if e.kind == TaskErrorKind::InvalidRequest),
        "{refused:?}"
    );
    router.payments_made().await;
    let successes = |chain: Arc<dyn cactus_node::chain::ChainBackend>| async move {
        chain
            .orchestrator(account)
            .await
            .unwrap()
            .unwrap()
            .successes
    };
    assert_eq!(successes(router.chain().unwrap().clone()).await, 1);

    // The router restarts: the orchestrator is not back yet, the answer is.
    orch.shutdown().await;
    router.shutdown().await;
    let (router, addr) = start_router(dir.path(), key).await;
    within(client.network().dial(addr)).await.unwrap();
    let after = ask(router.peer_id()).await.unwrap();
    assert_eq!(after, first);
    router.payments_made().await;
    assert_eq!(
        successes(router.chain().unwrap().clone()).await,
        1,
        "paid once"
    );
    client.shutdown().await;
    router.shutdown().await;
}

/// Compute time is self-reported and paid for: a receipt claiming more
/// than passed between hand-off and result is refused, its escrow
/// refunded, and the task answered by an honest orchestrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_claiming_more_compute_than_passed_is_refused() {
    let padder = Arc::new(StubEngine::new("stub").padding_compute(Duration::from_secs(3600)));
    let c = Cluster::new(vec![Arc::new(StubEngine::new("stub")), padder]).await;
    let padder = c.orchestrators[1].peer_id();
    let chain = c.router.chain().unwrap().clone();
    let account = default_account(&padder);
    // Tasks go to both (the draw explores); until the padder has been
    // tried, keep asking.
    for i in 0..40 {
        let prompt = format!("task number {i}");
        let result = c.submit(spec(Some("stub"), &prompt)).await.unwrap();
        assert_ne!(result.receipt.body.orchestrator, padder);
        assert!(result.receipt.body.compute_ms < 3_600_000);
        let record = chain.orchestrator(account).await.unwrap().unwrap();
        if record.failures > 0 {
            // Refused, refunded, never paid.
            assert_eq!(record.successes, 0);
            let (_, escrow, _) = chain.totals().await.unwrap();
            assert_eq!(escrow, 0);
            c.stop().await;
            return;
        }
    }
    panic!("the padding orchestrator was never picked in 40 tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_orchestrator_delegates_along_a_signed_chain_and_answers_for_it() {
    use cactus_protocol::{Assignment, TaskId, TaskRequest, TaskResponse};
    let full = Arc::new(StubEngine::new("stub").gated());
    let free = Arc::new(StubEngine::new("stub"));
    // One slot, no queue each.
    let c = Cluster::with_client_as_server(vec![full.clone(), free], 0).await;
    let (a, b) = (c.orchestrators[0].peer_id(), c.orchestrators[1].peer_id());
    // The client plays a router that assigns two tasks to the first
    // orchestrator directly, so that the second finds it full.
    let a_addr = first_addr(&c.orchestrators[0]).await;
    within(c.client.network().dial(a_addr)).await.unwrap();
    let assign = |n: u8, prompt: &str| Assignment {
        task_id: TaskId([n; 16]),
        model: full.model().sha256,
        prompt: prompt.into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        deadline_ms: u64::MAX,
        resume: None,
    };
    let held = {
        let network = c.client.network().clone();
        let assignment = assign(1, "held");
        tokio::spawn(async move { network.send_task(a, TaskRequest::Execute(assignment)).await })
    };
    let f = full.clone();
    within(tokio::task::spawn_blocking(move || f.wait_started(1)))
        .await
        .unwrap();
    // It knows the second orchestrator from its adverts once its addresses
    // are in; until then it refuses as busy.
    let second = assign(2, "second");
    let router = c.client.peer_id();
    let r = within(async {
        loop {
            let answer = c
                .client
                .network()
                .send_task(a, TaskRequest::Execute(second.clone()))
                .await
                .unwrap();
            match answer {
                TaskResponse::Done(r) => return r,
                TaskResponse::Failed(e) if e.kind == TaskErrorKind::Busy => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    // Run by the free one along a chain signed by the full one, which the
    // executor's receipt commits to: what a router checks before paying.
    assert_eq!(r.text, "dnoces");
    assert_eq!(r.receipt.body.orchestrator, b);
    assert_eq!(r.delegation.len(), 1);
    let link = &r.delegation[0].body;
    assert_eq!((link.parent, link.child, link.depth), (a, b, 1));
    assert_eq!((link.task_id, link.router), (second.task_id, router));
    cactus_protocol::verify::check_result(&second, &router, &a, &r).unwrap();
    // Handed to anyone but the assigned orchestrator, it is not valid.
    assert!(cactus_protocol::verify::check_result(&second, &router, &b, &r).is_err());
    // Asked on a token stream, the delegate's tokens come through as token
    // frames before the answer, not only inside it.
    let third = assign(3, "third");
    let mut stream = within(
        c.client
            .network()
            .open_stream(a, &TaskRequest::Execute(third.clone())),
    )
    .await
    .unwrap();
    let mut streamed = Vec::new();
    let r = within(async {
        loop {
            match stream.next().await.unwrap() {
                Some(StreamFrame::Tokens(chunk)) => streamed.extend(chunk.tokens),
                Some(StreamFrame::End(TaskResponse::Done(r))) => return r,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!((r.text.as_str(), r.receipt.body.orchestrator), ("driht", b));
    assert_eq!(streamed, r.tokens);
    full.open_gate();
    let Ok(Ok(TaskResponse::Done(h))) = within(held).await else {
        panic!("the held task did not finish")
    };
    assert_eq!(h.text, "dleh");
    assert!(h.delegation.is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_slot_is_taken_a_call_for_bids_finds_a_queue_place() {
    // One slot and two queue places: busy by its advert, yet able to queue.
    let gated = Arc::new(StubEngine::new("stub").gated());
    let c = Cluster::with_queue(vec![gated.clone()], 2).await;
    let a = c.orchestrators[0].peer_id();
    let held = {
        let network = c.client.network().clone();
        let router = c.router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "held")).await })
    };
    let g = gated.clone();
    within(tokio::task::spawn_blocking(move || g.wait_started(1)))
        .await
        .unwrap();
    // No free slot in the router's table: it calls for bids, the busy node
    // bids with its queue place and is awarded the task.
    let second = {
        let network = c.client.network().clone();
        let router = c.router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "second")).await })
    };
    let market = c.router.market().unwrap();
    within(async {
        while market.awarded() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gated.open_gate();
    let r = within(second).await.unwrap().unwrap();
    assert_eq!(r.text, "dnoces");
    assert_eq!(r.receipt.body.orchestrator, a);
    assert_eq!(within(held).await.unwrap().unwrap().text, "dleh");
    assert_eq!(market.awarded(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_task_adverts_and_bids_cost_the_sender_gossipsub_score() {
    use cactus_protocol::market::{BidBody, TaskAdvertBody};
    use cactus_protocol::{TaskId, TaskRequest, TaskResponse, Wire};
    let gated = Arc::new(StubEngine::new("stub").gated());
    // One slot, no queue: once held, the orchestrator cannot bid, so the
    // router's call for bids stays open for its whole window.
    let c = Cluster::custom(vec![gated.clone()], 0, |c| NodeConfig {
        bid_window: Duration::from_secs(5),
        ..c
    })
    .await;
    let held = {
        let network = c.client.network().clone();
        let router = c.router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "held")).await })
    };
    let g = gated.clone();
    within(tokio::task::spawn_blocking(move || g.wait_started(1)))
        .await
        .unwrap();
    let refused = {
        let network = c.client.network().clone();
        let router = c.router.peer_id();
        tokio::spawn(async move { client::submit_to(&network, router, spec(None, "second")).await })
    };
    let market = c.router.market().unwrap();
    let call = within(async {
        loop {
            if let Some(call) = market.open_calls().pop() {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A rogue node on the mesh bids above the price cap...
    let dir = tempfile::tempdir().unwrap();
    let rogue_key = Keypair::generate_ed25519();
    let rogue = Node::start(
        config(Role::Client, dir.path(), vec![c.router_addr.clone()]),
        rogue_key.clone(),
        None,
    )
    .await
    .unwrap();
    within(rogue.network().dial(c.router_addr.clone()))
        .await
        .unwrap();
    let bid = |price_per_unit| {
        BidBody {
            advert_id: call.advert_id,
            router: call.router,
            orchestrator: rogue.peer_id(),
            model: call.model,
            price_per_unit,
            free_slots: 1,
            account: cactus_protocol::contract::Address([1; 32]),
            issued_at_ms: call.issued_at_ms,
            expires_at_ms: call.deadline_ms + 1_000,
        }
        .sign(&rogue_key)
        .unwrap()
    };
    let bid_over_cap = bid(call.max_price_per_unit + 1);
    let answer = within(
        rogue
            .network()
            .send_task(c.router.peer_id(), TaskRequest::Bid(Box::new(bid_over_cap))),
    )
    .await
    .unwrap();
    assert!(
        matches!(&answer, TaskResponse::Failed(e) if e.kind == TaskErrorKind::InvalidRequest),
        "{answer:?}"
    );
    let score = within(c.router.network().peer_score(rogue.peer_id()))
        .await
        .unwrap()
        .unwrap();
    assert!(score < 0.0, "score {score}");
    // A valid bid from a key the router never admitted takes no place in
    // the auction: it could never win.
    let fair_bid = bid(call.max_price_per_unit);
    let answer = within(
        rogue
            .network()
            .send_task(c.router.peer_id(), TaskRequest::Bid(Box::new(fair_bid))),
    )
    .await
    .unwrap();
    assert!(
        matches!(&answer, TaskResponse::Failed(e) if e.message.contains("not an orchestrator admitted")),
        "{answer:?}"
    );

    // ...and, connected to the orchestrator too, publishes a call for bids
    // that breaks the rules (a 10-minute window, over the 60 s cap): the
    // orchestrator, which validates it, scores the rogue down. (An advert
    // that merely expired on the way is ignored, not held against anyone.)
    let orchestrator = &c.orchestrators[0];
    let o_addr = first_addr(orchestrator).await;
    within(rogue.network().dial(o_addr)).await.unwrap();
    let before = within(orchestrator.network().peer_score(rogue.peer_id()))
        .await
        .unwrap()
        .unwrap_or(0.0);
    let now = call.issued_at_ms;
    let bad_advert = |n: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        TaskAdvertBody {
            advert_id: TaskId(id),
            router: rogue.peer_id(),
            model: call.model,
            prompt_bytes: 5,
            max_tokens: 8,
            max_price_per_unit: 10,
            issued_at_ms: now,
            deadline_ms: now + 600_000,
        }
        .sign(&rogue_key)
        .unwrap()
        .encode()
        .unwrap()
    };
    // Gossipsub delivers to the publisher's mesh for the topic, which the
    // orchestrator joins within a heartbeat or two: publish until it has
    // judged one.
    within(async {
        for n in 0u32.. {
            let _ = rogue.network().publish_task_advert(bad_advert(n)).await;
            let s = orchestrator
                .network()
                .peer_score(rogue.peer_id())
                .await
                .unwrap()
                .unwrap_or(0.0);
            if s < before - 5.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    gated.open_gate();
    within(held).await.unwrap().unwrap();
    let r = within(refused).await.unwrap();
    assert!(
        matches!(&r, Err(ClientError::Task(e)) if e.kind == TaskErrorKind::Busy),
        "{r:?}"
    );
    rogue.shutdown().await;
    c.stop().await;
}

/// Only the routers its ledger authorizes get work from an orchestrator:
/// a stranger's `Execute`, `Delegate` and `Replay` (by request and on a
/// token stream) are refused as unauthorized and cost it gossipsub score; a
/// router with its own ledger, which the orchestrator's does not authorize,
/// cannot place a task; the authorized router's tasks still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_routers_the_ledger_authorizes_get_work() {
    use cactus_protocol::fraud::ReplayRequest;
    use cactus_protocol::messages::DelegatedTask;
    use cactus_protocol::{Assignment, TaskId, TaskRequest, TaskResponse, delegation};
    let engine = Arc::new(StubEngine::new("stub"));
    let c = Cluster::new(vec![engine.clone()]).await;
    let (orch, router) = (&c.orchestrators[0], c.router.peer_id());
    let o = orch.peer_id();
    let done = c.submit(spec(None, "hello")).await.unwrap();

    let rogue_key = Keypair::generate_ed25519();
    let rogue = Node::start(
        config(Role::Client, c._dir.path(), vec![]),
        rogue_key.clone(),
        None,
    )
    .await
    .unwrap();
    within(rogue.network().dial(first_addr(orch).await))
        .await
        .unwrap();
    let assignment = Assignment {
        task_id: TaskId([7; 16]),
        model: engine.model().sha256,
        prompt: "steal".into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams::default(),
        deadline_ms: u64::MAX,
        resume: None,
    };
    // A well-signed link: the rogue claims the authorized router's task.
    let link =
        delegation::extend(&[], &rogue_key, assignment.task_id, router, o, u64::MAX).unwrap();
    let requests = [
        TaskRequest::Execute(assignment.clone()),
        TaskRequest::Delegate(Box::new(DelegatedTask {
            assignment: assignment.clone(),
            router,
            chain: vec![link],
        })),
        TaskRequest::Replay(Box::new(ReplayRequest {
            receipt: done.receipt.clone(),
            prompt: "hello".into(),
            tokens: done.tokens.clone(),
            text: done.text.clone(),
        })),
    ];
    let unauthorized = |a: &TaskResponse| matches!(a, TaskResponse::Failed(e) if e.kind == TaskErrorKind::Unauthorized);
    for request in requests {
        let answer = within(rogue.network().send_task(o, request)).await.unwrap();
        assert!(unauthorized(&answer), "{answer:?}");
    }
    let mut stream = within(
        rogue
            .network()
            .open_stream(o, &TaskRequest::Execute(assignment.clone())),
    )
    .await
    .unwrap();
    match within(stream.next()).await.unwrap() {
        Some(StreamFrame::End(answer)) => assert!(unauthorized(&answer), "{answer:?}"),
        other => panic!("{other:?}"),
    }
    within(async {
        loop {
            let score = orch.network().peer_score(rogue.peer_id()).await.unwrap();
            if score.unwrap_or(0.0) < 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A second router settling on the same ledger, which does not authorize
    // it: it sees the orchestrator there but can escrow no task (and the
    // orchestrator would refuse it anyway, as above).
    let second = start_with(
        NodeConfig {
            chain: ChainChoice::Remote(router),
            ..config(
                Role::Router,
                &c._dir.path().join("second"),
                vec![c.router_addr.clone()],
            )
        },
        None,
    )
    .await;
    within(second.wait_for_orchestrators(1)).await.unwrap();
    within(c.client.network().dial(first_addr(&second).await))
        .await
        .unwrap();
    let refused = within(client::submit_to(
        c.client.network(),
        second.peer_id(),
        spec(None, "refused"),
    ))
    .await;
    assert!(
        matches!(&refused, Err(ClientError::Task(e)) if e.kind == TaskErrorKind::Unauthorized),
        "{refused:?}"
    );
    // A client looking for a router on the DHT finds both, and picks only
    // the one the ledger authorizes.
    within(async {
        let key = cactus_protocol::ROUTER_PROVIDER_KEY.to_vec();
        while c
            .client
            .network()
            .find_providers(key.clone())
            .await
            .unwrap()
            .len()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for _ in 0..10 {
        let picked = within(client::find_router(c.client.network(), Some(router))).await;
        assert_eq!(picked.unwrap(), router);
    }
    // The authorized router's tasks still run.
    let again = c.submit(spec(None, "again")).await.unwrap();
    assert_eq!(again.text, "niaga");
    second.shutdown().await;
    rogue.shutdown().await;
    c.stop().await;
}

/// One IP address holds at most `max_connections_per_ip` inbound
/// connections, however many PeerIds it uses; when one closes, there is
/// room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_address_holds_at_most_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut router_config = config(Role::Router, dir.path(), vec![]);
    router_config.network.max_connections_per_ip = 2;
    let router = start_with(router_config, None).await;
    let addr = first_addr(&router).await;
    let mut peers = Vec::new();
    for _ in 0..2 {
        let p = start(Role::Client, dir.path(), vec![], None).await;
        within(p.network().dial(addr.clone())).await.unwrap();
        peers.push(p);
    }
    // Both are counted at the router before the third comes.
    within(async {
        while router.network().connected_peers().await.unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let third = start(Role::Client, dir.path(), vec![], None).await;
    let denied = within(third.network().dial(addr.clone())).await;
    assert!(denied.is_err(), "{denied:?}");
    if let Some(p) = peers.pop() {
        p.shutdown().await;
    }
    within(async {
        while third.network().dial(addr.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    third.shutdown().await;
    for p in peers {
        p.shutdown().await;
    }
    router.shutdown().await;
}

/// Stake is moved from a funded account, never minted from what an advert
/// declares: on a ledger without a faucet an orchestrator with no funds is
/// refused whatever it declares, while one whose account was funded stakes
/// from it and is admitted with what it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stake_comes_from_funds_never_from_the_advert() {
    use cactus_protocol::contract::Op;
    let dir = tempfile::tempdir().unwrap();
    let router = start_with(
        NodeConfig {
            chain: ChainChoice::Embedded(LocalSettings::default()),
            ..config(Role::Router, dir.path(), vec![])
        },
        None,
    )
    .await;
    let addr = first_addr(&router).await;
    let chain = router.chain().unwrap().clone();
    let funded_key = Keypair::generate_ed25519();
    let funded = default_account(&funded_key.public().to_peer_id());
    chain
        .submit(Op::Mint {
            to: funded,
            amount: 25_000,
        })
        .await
        .unwrap();
    let (stake_before, _, vault_before) = chain.totals().await.unwrap();
    let engine = || {
        Some(
            Arc::new(ThreadPool::new(Arc::new(StubEngine::new("stub")), 1, QUEUE))
                as Arc<dyn Engine>,
        )
    };
    let pauper = Node::start(
        NodeConfig {
            stake: u64::MAX / 2,
            ..config(
                Role::Orchestrator,
                &dir.path().join("p"),
                vec![addr.clone()],
            )
        },
        Keypair::generate_ed25519(),
        engine(),
    )
    .await
    .unwrap();
    let staker = Node::start(
        config(Role::Orchestrator, &dir.path().join("s"), vec![addr]),
        funded_key,
        engine(),
    )
    .await
    .unwrap();
    within(router.wait_for_verdicts(2)).await.unwrap();
    let verdicts: Vec<_> = router
        .orchestrators()
        .iter()
        .map(|o| (o.peer, o.eligible))
        .collect();
    assert!(
        verdicts.contains(&(pauper.peer_id(), Some(false))),
        "{verdicts:?}"
    );
    assert!(
        verdicts.contains(&(staker.peer_id(), Some(true))),
        "{verdicts:?}"
    );
    let pauper_account = default_account(&pauper.peer_id());
    assert_eq!(chain.orchestrator(pauper_account).await.unwrap(), None);
    let record = chain.orchestrator(funded).await.unwrap().unwrap();
    assert_eq!(record.stake, NodeConfig::default().stake);
    assert_eq!(chain.balance(funded).await.unwrap(), 25_000 - record.stake);
    // The stake moved into the vault; nothing was created.
    let (stake_after, _, vault_after) = chain.totals().await.unwrap();
    assert_eq!(stake_after - stake_before, record.stake);
    assert_eq!(vault_after - vault_before, record.stake);
    pauper.shutdown().await;
    staker.shutdown().await;
    router.shutdown().await;
}

/// A second router of a cluster settles on the first one's ledger over the
/// mesh, as the ledger authorized it: its tasks are escrowed from its own
/// account there and paid to the orchestrator's record there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_settles_on_the_ledger_it_follows() {
    let dir = tempfile::tempdir().unwrap();
    let second_key = Keypair::generate_ed25519();
    let second_account = default_account(&second_key.public().to_peer_id());
    let ledger = start_with(
        NodeConfig {
            chain: ChainChoice::Embedded(LocalSettings {
                servers: vec![second_account],
                ..LocalSettings::dev()
            }),
            ..config(Role::Router, dir.path(), vec![])
        },
        None,
    )
    .await;
    let addr = first_addr(&ledger).await;
    let orch = start(
        Role::Orchestrator,
        &dir.path().join("o"),
        vec![addr.clone()],
        Some(Arc::new(StubEngine::new("stub"))),
    )
    .await;
    within(ledger.wait_for_orchestrators(1)).await.unwrap();
    let second = Node::start(
        NodeConfig {
            chain: ChainChoice::Remote(ledger.peer_id()),
            ..config(Role::Router, &dir.path().join("second"), vec![addr])
        },
        second_key,
        None,
    )
    .await
    .unwrap();
    within(second.wait_for_orchestrators(1)).await.unwrap();
    let chain = ledger.chain().unwrap().clone();
    let funds = chain.balance(second_account).await.unwrap();
    assert!(funds > 0, "funded from the dev faucet");
    let client = start(Role::Client, dir.path(), vec![], None).await;
    within(client.network().dial(first_addr(&second).await))
        .await
        .unwrap();
    // Its deposit is at the second router, on the ledger that router follows.
    within(client.network().dial(first_addr(&ledger).await))
        .await
        .unwrap();
    let deposit = client::fund_from_faucet(
        client.network(),
        ledger.peer_id(),
        second.peer_id(),
        DEPOSIT,
    );
    within(deposit).await.unwrap();
    let done = within(client::submit_to(
        client.network(),
        second.peer_id(),
        spec(None, "settled"),
    ))
    .await
    .unwrap();
    assert_eq!(done.receipt.body.router, second.peer_id());
    // The second router pays just after it answers, on the ledger's chain.
    second.payments_made().await;
    let task = chain
        .task(done.receipt.body.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.server, second_account);
    let record = chain
        .orchestrator(default_account(&orch.peer_id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.successes, 1);
    // The client paid, from its deposit at the second router; the second
    // router paid nothing.
    let client_account = default_account(&client.peer_id());
    let (left, _) = chain.client(client_account, second_account).await.unwrap();
    assert!(left < DEPOSIT, "the client paid");
    assert!(
        chain.balance(second_account).await.unwrap() >= funds,
        "the router paid nothing"
    );
    client.shutdown().await;
    second.shutdown().await;
    orch.shutdown().await;
    ledger.shutdown().await;
}

/// Two verifiers that would lie about an honest result, once no longer
/// staked, cannot get it refused or its orchestrator slashed: only reports
/// from verifiers staked at that moment count, and one report (or none) is
/// no quorum. Their own tasks are refused by the chain, so the honest one
/// serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_unstaked_verifiers_cannot_get_an_honest_orchestrator_slashed() {
    use cactus_protocol::messages::Transaction;
    use cactus_protocol::{TaskRequest, TaskResponse};
    let c = Cluster::custom(
        vec![
            Arc::new(StubEngine::new("stub")),
            Arc::new(StubEngine::new("stub").lying()),
            Arc::new(StubEngine::new("stub").lying()),
        ],
        4,
        |c| NodeConfig {
            verification: Verification {
                share_ppm: 1_000_000,
                ..Verification::default()
            },
            ..c
        },
    )
    .await;
    let honest = c.orchestrators[0].peer_id();
    // The liars take their stake back; the router admitted them before.
    for liar in &c.orchestrators[1..] {
        let unstake = Transaction::Unstake {
            amount: NodeConfig::default().stake,
        };
        let answer = within(
            liar.network()
                .send_task(c.router.peer_id(), TaskRequest::Transact(unstake)),
        )
        .await
        .unwrap();
        assert!(
            matches!(&answer, TaskResponse::Answer(QueryAnswer::Account(a)) if a.orchestrator.as_ref().is_some_and(|o| o.stake == 0)),
            "{answer:?}"
        );
    }
    for i in 0..4 {
        let prompt = format!("honest {i}");
        let result = c.submit(spec(Some("stub"), &prompt)).await.unwrap();
        assert_eq!(result.text, prompt.chars().rev().collect::<String>());
        assert_eq!(result.receipt.body.orchestrator, honest);
    }
    assert!(c.router.fraud_evidence(16).await.unwrap().is_empty());
    let chain = c.router.chain().unwrap().clone();
    let record = chain
        .orchestrator(default_account(&honest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.stake, NodeConfig::default().stake, "not slashed");
    assert_eq!(record.successes, 4);
    c.stop().await;
}

/// A ledger at its budget of tasks turns requests away as `Busy` before
/// running any of them. The orchestrators registering on it and the router
/// settling on it ask again until it has room: an orchestrator that gave up
/// would advertise unregistered, and every router would refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_ledger_is_asked_again_not_given_up_on() {
    const ORCHESTRATORS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    // One request at a time.
    let ledger = start_with(
        NodeConfig {
            max_tasks: 1,
            ..config(Role::Router, &dir.path().join("ledger"), vec![])
        },
        None,
    )
    .await;
    let addr = first_addr(&ledger).await;
    let router = start_with(
        NodeConfig {
            chain: ChainChoice::Remote(ledger.peer_id()),
            ..config(Role::Router, &dir.path().join("router"), vec![addr.clone()])
        },
        None,
    )
    .await;
    // All at once: each registers (three requests to the ledger), and the
    // router asks the ledger about each as its advert arrives.
    let orchestrators = futures::future::join_all((0..ORCHESTRATORS).map(|i| {
        let engine = Some(Arc::new(StubEngine::new("stub-a")));
        let home = dir.path().join(format!("orchestrator-{i}"));
        let bootstrap = vec![addr.clone()];
        async move { start(Role::Orchestrator, &home, bootstrap, engine).await }
    }))
    .await;
    within(ledger.wait_for_orchestrators(ORCHESTRATORS))
        .await
        .unwrap();
    within(router.wait_for_orchestrators(ORCHESTRATORS))
        .await
        .unwrap();
    for o in orchestrators {
        o.shutdown().await;
    }
    router.shutdown().await;
    ledger.shutdown().await;
}
