//! The router's OpenAI-compatible HTTP API over loopback, with stub
//! orchestrators: the endpoints, their answers and their errors.

use cactus_node::inference::Engine;
use cactus_node::inference::pool::ThreadPool;
use cactus_node::inference::stub::StubEngine;
use cactus_node::network::NetworkConfig;
use cactus_node::{Node, NodeConfig, Role};
use libp2p::identity::Keypair;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

/// The API key of each running setup's funded client, by API address.
static KEYS: Mutex<Option<HashMap<SocketAddr, String>>> = Mutex::new(None);

fn key_of(api: SocketAddr) -> Option<String> {
    KEYS.lock().unwrap().as_ref()?.get(&api).cloned()
}

/// What each setup's client deposits at the router.
const DEPOSIT: u64 = 1_000_000;

/// A client account with `deposit` (if any) at `router`, from its dev
/// faucet, and an API key charging it: what `cactus-node account` and
/// `cactus-node keys create` make.
pub(super) async fn client_key(
    router: &Node,
    data_dir: &std::path::Path,
    deposit: u64,
) -> (String, cactus_protocol::contract::Address) {
    use cactus_protocol::messages::Transaction;
    let chain = router.chain().unwrap();
    let payer = Keypair::generate_ed25519().public().to_peer_id();
    if deposit > 0 {
        chain.transact(payer, Transaction::Faucet).await.unwrap();
        let op = cactus_protocol::contract::Op::Deposit {
            server: chain.account(),
            amount: deposit,
        };
        chain.transact(payer, Transaction::Apply(op)).await.unwrap();
    }
    let account = cactus_node::chain::default_account(&payer);
    let (key, _) = cactus_node::api::keys::create(data_dir, account, "test").unwrap();
    (key, account)
}

/// A router with its API on and one stub orchestrator, over loopback.
pub(super) struct Setup {
    _dir: tempfile::TempDir,
    pub(super) router: Node,
    pub(super) orchestrator: Node,
    pub(super) api: SocketAddr,
}

async fn setup(engine: Arc<StubEngine>, queue: usize) -> Setup {
    setup_with(engine, queue, |_| {}, |_| {}).await
}

/// [`setup`], with the router's and the orchestrator's configurations
/// changed by `router` and `orchestrator`.
pub(super) async fn setup_with(
    engine: Arc<StubEngine>,
    queue: usize,
    router: impl FnOnce(&mut NodeConfig),
    orchestrator: impl FnOnce(&mut NodeConfig),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let net = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetworkConfig::default()
    };
    let mut config = NodeConfig {
        role: Role::Router,
        data_dir: dir.path().join("router"),
        network: net.clone(),
        api: Some("127.0.0.1:0".parse().unwrap()),
        ..NodeConfig::default()
    };
    router(&mut config);
    let router = Node::start(config, Keypair::generate_ed25519(), None)
        .await
        .unwrap();
    let addr = router.listen_addrs().await.unwrap()[0].clone();
    let mut config = NodeConfig {
        role: Role::Orchestrator,
        data_dir: dir.path().join("orch"),
        network: NetworkConfig {
            bootstrap: vec![addr],
            ..net
        },
        ..NodeConfig::default()
    };
    orchestrator(&mut config);
    let orchestrator = Node::start(
        config,
        Keypair::generate_ed25519(),
        Some(Arc::new(ThreadPool::new(engine, 1, queue)) as Arc<dyn Engine>),
    )
    .await
    .unwrap();
    tokio::time::timeout(LIMIT, router.wait_for_orchestrators(1))
        .await
        .unwrap()
        .unwrap();
    let api = router.api_addr().expect("the API listens");
    let (key, _) = client_key(&router, &dir.path().join("router"), DEPOSIT).await;
    KEYS.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(api, key);
    Setup {
        _dir: dir,
        router,
        orchestrator,
        api,
    }
}

/// One HTTP/1.1 exchange with the setup's API key; returns the status, the
/// raw head and the body.
pub(super) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, String) {
    http_as(addr, key_of(addr).as_deref(), method, path, body).await
}

/// [`http`] with `key` (none: no Authorization header).
pub(super) async fn http_as(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, String) {
    http_with(addr, key, "", method, path, body).await
}

/// [`http_as`] with `extra` header lines (each ending in CRLF).
async fn http_with(
    addr: SocketAddr,
    key: Option<&str>,
    extra: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, String) {
    let exchange = async {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        // A body over the cap may be refused before it is all sent.
        let _ = c.write_all(body).await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let out = tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("timed out");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), dechunk(head, body))
}

/// The body of a chunked answer, joined.
fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

pub(super) async fn post(addr: SocketAddr, path: &str, v: Value) -> (u16, Value) {
    let (status, _, body) = http(addr, "POST", path, v.to_string().as_bytes()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, b"").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_models_completions_chats_and_receipts() {
    let s = setup(Arc::new(StubEngine::new("stub-a")), 4).await;
    let (status, health) = get(s.api, "/health").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    assert_eq!(health["orchestrators"], 1);
    let (status, models) = get(s.api, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "stub-a", "{models}");
    assert_eq!(models["data"][0]["sha256"].as_str().unwrap().len(), 64);

    let (status, c) = post(
        s.api,
        "/v1/completions",
        json!({"model": "stub-a", "prompt": "hello", "max_tokens": 16, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["text"], "olleh");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (
            c["usage"]["prompt_tokens"].as_u64(),
            c["usage"]["completion_tokens"].as_u64()
        ),
        (Some(5), Some(5))
    );
    // The answer links to its receipt, signed by both sides.
    let link = c["cactus"][0]["receipt"].as_str().unwrap();
    let (status, receipt) = get(s.api, link).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["task_id"], c["cactus"][0]["task_id"], "{receipt}");
    assert_eq!(
        receipt["orchestrator"],
        s.orchestrator.peer_id().to_string()
    );

    // A chat: the turns travel to the orchestrator as one prompt (the stub
    // answers it reversed), the answer comes back as the assistant's turn.
    let (status, chat) = post(
        s.api,
        "/v1/chat/completions",
        json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ], "max_completion_tokens": 200, "n": 2, "seed": 3}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"].as_array().unwrap().len(), 2);
    let content = chat["choices"][0]["message"]["content"].as_str().unwrap();
    let turns: String = content.chars().rev().collect();
    let turns: Value = serde_json::from_str(&turns).unwrap();
    assert_eq!(
        turns,
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");

    // Streaming: OpenAI's chunks, usage last when asked, then [DONE].
    let (status, head, body) = http(
        s.api,
        "POST",
        "/v1/completions",
        json!({"prompt": "hello", "stream": true, "stream_options": {"include_usage": true}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "olleh");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    s.orchestrator.shutdown().await;
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_charged_to_the_account_their_key_names() {
    let s = setup(Arc::new(StubEngine::new("stub-a")), 4).await;
    // Keys made before the first request, so that the router reads them at
    // once (it rereads its key file within a second of a change).
    let dir = s._dir.path().join("router");
    let (broke, _) = client_key(&s.router, &dir, 0).await;
    let (paying, account) = client_key(&s.router, &dir, 50_000).await;
    let body = json!({"model": "stub-a", "prompt": "hello", "max_tokens": 4}).to_string();
    let call = |key: Option<String>| {
        let body = body.clone();
        async move {
            let (status, _, text) = http_as(
                s.api,
                key.as_deref(),
                "POST",
                "/v1/completions",
                body.as_bytes(),
            )
            .await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    // No key, or one the router did not make: 401, nothing runs.
    for key in [None, Some("sk-cactus-0000".to_owned())] {
        let (status, e) = call(key).await;
        assert_eq!(status, 401, "{e}");
        assert_eq!(e["error"]["code"], "invalid_api_key", "{e}");
    }
    // A key whose account has no deposit here: 402 before any work.
    let (status, e) = call(Some(broke)).await;
    assert_eq!(status, 402, "{e}");
    assert_eq!(e["error"]["code"], "insufficient_quota", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no deposit"),
        "{e}"
    );
    // A funded key: served, paid from its account's deposit.
    let (status, c) = call(Some(paying)).await;
    assert_eq!(status, 200, "{c}");
    let chain = s.router.chain().unwrap();
    let (left, _) = chain.client(account, chain.account()).await.unwrap();
    assert!(left < 50_000, "{left}");
    // A cap below every orchestrator's price: 402, nothing escrowed.
    let capped =
        json!({"model": "stub-a", "prompt": "hello", "max_tokens": 4, "max_price_per_unit": 0});
    let key = key_of(s.api);
    let (status, _, text) = http_as(
        s.api,
        key.as_deref(),
        "POST",
        "/v1/completions",
        capped.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 402, "{text}");
    assert!(text.contains("most this client pays"), "{text}");
    assert_eq!(chain.totals().await.unwrap().1, 0, "nothing in escrow");
}

/// A client that lost its answer sends the request again under the same
/// `Idempotency-Key`: the same answer, charged once. The same key with
/// another body is a 400; another key is another task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_under_its_idempotency_key_is_answered_and_charged_once() {
    let s = setup(Arc::new(StubEngine::new("stub-a")), 4).await;
    let (key, account) = client_key(&s.router, &s._dir.path().join("router"), 50_000).await;
    let call = |idempotency: String, body: Value| {
        let key = key.clone();
        async move {
            let (status, _, text) = http_with(
                s.api,
                Some(&key),
                &format!("Idempotency-Key: {idempotency}\r\n"),
                "POST",
                "/v1/completions",
                body.to_string().as_bytes(),
            )
            .await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let chain = s.router.chain().unwrap();
    let deposit = || async {
        s.router.payments_made().await;
        chain.client(account, chain.account()).await.unwrap().0
    };
    let body = json!({"model": "stub-a", "prompt": "hello", "max_tokens": 4});
    let (status, first) = call("order-1".into(), body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let charged = deposit().await;
    assert!(charged < 50_000);
    let (status, again) = call("order-1".into(), body.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["cactus"], first["cactus"],
        "the same task, receipt and all"
    );
    assert_eq!(again["choices"], first["choices"]);
    assert_eq!(deposit().await, charged, "charged once");
    let other = json!({"model": "stub-a", "prompt": "another", "max_tokens": 4});
    let (status, e) = call("order-1".into(), other).await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = call("x".repeat(256), body.clone()).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "idempotency-key", "{e}");
    let (status, _) = call("order-2".into(), body).await;
    assert_eq!(status, 200);
    assert!(deposit().await < charged, "another key, another task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let s = setup(Arc::new(StubEngine::new("stub-a")), 4).await;
    let expect = |status: u16, v: &Value, want: u16, param: &str| {
        assert_eq!(status, want, "{v}");
        assert_eq!(v["error"]["param"], json!(param), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    };
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"prompt": "x", "temperature": 5}),
    )
    .await;
    expect(st, &v, 400, "temperature");
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"prompt": "x", "temperature": "hot"}),
    )
    .await;
    expect(st, &v, 400, "temperature");
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 0}),
    )
    .await;
    expect(st, &v, 400, "max_tokens");
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"prompt": "x", "logit_bias": {"a": 1}}),
    )
    .await;
    expect(st, &v, 400, "logit_bias");
    let (st, v) = post(
        s.api,
        "/v1/chat/completions",
        json!({"messages": [{"role": "tool", "content": "x"}]}),
    )
    .await;
    expect(st, &v, 400, "messages[0].role");
    let (st, v) = post(
        s.api,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}}),
    )
    .await;
    expect(st, &v, 400, "response_format");
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"prompt": "x", "logprobs": 50}),
    )
    .await;
    expect(st, &v, 400, "logprobs");
    let (st, v) = post(
        s.api,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}),
    )
    .await;
    expect(st, &v, 400, "top_logprobs");
    let (st, _, body) = http(s.api, "POST", "/v1/completions", b"{not json").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st, 400, "{v}");
    let (st, v) = post(
        s.api,
        "/v1/completions",
        json!({"model": "nobody-serves-this", "prompt": "x"}),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (404, &json!("model_not_found")),
        "{v}"
    );
    let huge = json!({"prompt": "x".repeat(cactus_node::api::MAX_BODY_BYTES)});
    let (st, _, body) = http(
        s.api,
        "POST",
        "/v1/completions",
        huge.to_string().as_bytes(),
    )
    .await;
    assert_eq!(st, 413, "{body}");
    let (st, v) = get(s.api, "/v1/receipts/nothex").await;
    expect(st, &v, 400, "task_id");
    let (st, v) = get(s.api, &format!("/v1/receipts/{}", "00".repeat(16))).await;
    assert_eq!(st, 404, "{v}");
    let (st, _) = get(s.api, "/v2/nothing").await;
    assert_eq!(st, 404);
    s.orchestrator.shutdown().await;
    s.router.shutdown().await;
}

/// Sends a completion that the gated stub holds, and waits until it does.
async fn hold(api: SocketAddr, gated: &Arc<StubEngine>) -> tokio::task::JoinHandle<(u16, Value)> {
    let held =
        tokio::spawn(async move { post(api, "/v1/completions", json!({"prompt": "held"})).await });
    let g = Arc::clone(gated);
    tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || g.wait_started(1)),
    )
    .await
    .unwrap()
    .unwrap();
    held
}

/// Opens the gate: the held completion is answered.
async fn release(gated: &StubEngine, held: tokio::task::JoinHandle<(u16, Value)>) {
    gated.open_gate();
    let (status, v) = tokio::time::timeout(LIMIT, held).await.unwrap().unwrap();
    assert_eq!((status, &v["choices"][0]["text"]), (200, &json!("dleh")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_is_a_503_with_retry_after() {
    let gated = Arc::new(StubEngine::new("stub-a").gated());
    let s = setup(gated.clone(), 0).await;
    let api = s.api;
    let held = hold(api, &gated).await;
    let (status, head, body) = http(
        s.api,
        "POST",
        "/v1/completions",
        json!({"prompt": "second"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    release(&gated, held).await;
    s.orchestrator.shutdown().await;
    s.router.shutdown().await;
}

/// Mangles a valid body: a byte changed, cut short, a value swapped for
/// another type, a field dropped or duplicated.
fn mangle(rng: &mut impl rand::Rng, body: &Value) -> Vec<u8> {
    let odd = [
        json!(null),
        json!(-1),
        json!(1e300),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!(u64::MAX),
        json!([{"role": 7}]),
        json!("\u{0}\u{ffff}"),
    ];
    let mut v = body.clone();
    match rng.gen_range(0..4) {
        0 => {
            if let Some(map) = v.as_object_mut() {
                let keys: Vec<String> = map.keys().cloned().collect();
                let k = &keys[rng.gen_range(0..keys.len())];
                map.insert(k.clone(), odd[rng.gen_range(0..odd.len())].clone());
            }
            v.to_string().into_bytes()
        }
        1 => {
            let mut b = v.to_string().into_bytes();
            let at = rng.gen_range(0..b.len());
            b[at] = rng.r#gen();
            b
        }
        2 => {
            let b = v.to_string().into_bytes();
            b[..rng.gen_range(0..b.len())].to_vec()
        }
        _ => {
            if let Some(map) = v.as_object_mut() {
                let k = [
                    "n",
                    "logprobs",
                    "top_logprobs",
                    "stop",
                    "logit_bias",
                    "response_format",
                    "grammar",
                    "stream_options",
                    "max_tokens",
                    "seed",
                ][rng.gen_range(0..10)];
                map.insert(k.into(), odd[rng.gen_range(0..odd.len())].clone());
            }
            v.to_string().into_bytes()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mangled_request_breaks_the_api() {
    use rand::SeedableRng;
    let s = setup(Arc::new(StubEngine::new("stub-a")), 4).await;
    let valid = [
        (
            "/v1/completions",
            json!({"model": "stub-a", "prompt": "hello", "max_tokens": 8, "logprobs": 2,
                   "stop": ["x"], "seed": 1, "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": true,
                   "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 2,
                   "response_format": {"type": "json_object"}}),
        ),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let (path, body) = &valid[i % valid.len()];
        let bytes = mangle(&mut rng, body);
        // Every answer is an HTTP status with a body: a handler that
        // panicked would drop the connection without one.
        let (status, _, text) = http(s.api, "POST", path, &bytes).await;
        assert!(
            (200..600).contains(&status),
            "{status} for {}",
            String::from_utf8_lossy(&bytes)
        );
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(
                v["error"]["message"].is_string(),
                "{status}: {text} for {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    // Both kinds of outcome were exercised, and the router still serves.
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    let (status, health) = get(s.api, "/health").await;
    assert_eq!(status, 200, "{health}");
    s.orchestrator.shutdown().await;
    s.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_deadline_is_a_504() {
    // One orchestrator that never answers, and a router that gives a task
    // one second.
    let gated = Arc::new(StubEngine::new("stub-a").gated());
    let s = setup_with(
        gated.clone(),
        1,
        |c| {
            c.task_timeout = Duration::from_secs(1);
            c.task_deadline = Duration::from_secs(2);
        },
        |_| {},
    )
    .await;
    let (api, router, orchestrator) = (s.api, s.router, s.orchestrator);
    let (status, v) = post(api, "/v1/completions", json!({"prompt": "late"})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (504, &json!("deadline_exceeded")),
        "{v}"
    );
    // The orchestrator was told to stop: its generation was cancelled.
    let g = gated.clone();
    tokio::time::timeout(
        LIMIT,
        tokio::task::spawn_blocking(move || g.wait_cancelled(1)),
    )
    .await
    .unwrap()
    .unwrap();
    orchestrator.shutdown().await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_cap_are_a_429_with_retry_after() {
    let gated = Arc::new(StubEngine::new("stub-a").gated());
    let s = setup_with(gated.clone(), 1, |c| c.api_max_in_flight = 1, |_| {}).await;
    let (api, router, orchestrator) = (s.api, s.router, s.orchestrator);
    let held = hold(api, &gated).await;
    // The one place is taken: the next request is refused before it is
    // read, with OpenAI's rate-limit error.
    let (status, head, body) = http(
        api,
        "POST",
        "/v1/completions",
        json!({"prompt": "second"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    release(&gated, held).await;
    orchestrator.shutdown().await;
    router.shutdown().await;
}
