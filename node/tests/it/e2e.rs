//! Three `cactus-node` processes on loopback and `cactus-node infer` on the
//! real demo model.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cactus-node");
/// Bound on each wait for a log line.
const LIMIT: Duration = Duration::from_secs(120);

/// A node process; killed when dropped. Its stderr lines arrive on `lines`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_bin(BIN, args)
    }

    fn spawn_bin(bin: &str, args: &[&str]) -> Self {
        Self::spawn_logging(bin, args, "info")
    }

    /// [`spawn_bin`](Self::spawn_bin) with `RUST_LOG` set to `filter`.
    fn spawn_logging(bin: &str, args: &[&str], filter: &str) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cactus-node");
        let stderr = child.stderr.take().unwrap();
        // Bounded: lines nobody waits for are dropped, but the pipe is always
        // drained so that the node never blocks on its own logging.
        let (tx, lines) = mpsc::sync_channel(4096);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Err(mpsc::TrySendError::Disconnected(_)) = tx.try_send(line) {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until the node listens; returns its address with `/p2p/<id>`.
    fn listen_addr(&mut self) -> String {
        let line = self.wait_for("listening");
        line.split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// Whether a line containing `needle` has been logged so far (reads
    /// what is there without waiting).
    fn seen(&mut self, needle: &str) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.iter().any(|l| l.contains(needle))
    }

    /// Waits until the last advert this router logged from orchestrator
    /// `peer` says it has a free slot (the router logs adverts at debug:
    /// see [`spawn_logging`](Self::spawn_logging)).
    fn wait_advertised_free(&mut self, peer: &str) {
        let from = format!("orchestrator={peer}");
        loop {
            self.seen("");
            let last = self
                .log
                .iter()
                .rev()
                .find(|l| l.contains("advert received") && l.contains(&from));
            if last.is_some_and(|l| !l.ends_with("free_slots=0")) {
                return;
            }
            self.wait_for(&from);
        }
    }

    /// Sends signal `name` (`STOP`, `CONT`, ...) to the node.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap();
        assert!(code.success(), "node exited with {code}");
    }
}

impl Proc {
    /// SIGKILL: no chance to flush or clean up.
    fn kill9(mut self) {
        self.kill9_in_place();
    }

    /// [`kill9`](Self::kill9), keeping the log; again once dead, nothing.
    fn kill9_in_place(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn id(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["id", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// What a test client deposits at its router.
const DEPOSIT: u64 = 500_000;

/// Makes the client identity in `dir` and gives it a deposit at `router` (a
/// /p2p address of a router keeping a dev ledger), from the faucet, as a
/// user would: `account faucet`, then `account deposit`. Returns `dir`.
fn funded_client(router: &str, dir: &Path) -> PathBuf {
    let deposit = DEPOSIT.to_string();
    for action in [&["faucet"][..], &["deposit", &deposit]] {
        let mut args = vec!["account", "--router", router, "--data-dir", path(dir)];
        args.extend_from_slice(action);
        let out = run(&args);
        assert!(
            out.status.success(),
            "account {action:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.to_path_buf()
}

fn infer_json(bootstrap: &str, client: &Path, prompt: &str) -> serde_json::Value {
    let out = run(&[
        "infer",
        "--data-dir",
        path(client),
        "--bootstrap",
        bootstrap,
        "--prompt",
        prompt,
        "--max-tokens",
        "32",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "infer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An orchestrator on the real model with one thread, in `dir`, joining
/// through `bootstrap`; `extra` flags after those.
fn model_orchestrator(dir: &Path, bootstrap: &str, extra: &[&str]) -> Proc {
    let model = format!("{}:{}", super::model_path().display(), super::DEMO_SHA256);
    let mut args = vec![
        "--data-dir",
        path(dir),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        bootstrap,
        "--model",
        &model,
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn three_processes_answer_on_the_real_model_with_a_logged_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["router", "orch1", "orch2"]
        .iter()
        .map(|d| tmp.path().join(d))
        .collect();

    let mut router = Proc::spawn(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&dirs[0]),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--anchor-batch",
        "1",
        // Every result is replayed by the other orchestrator.
        "--spot-check",
        "100",
    ]);
    let addr = router.listen_addr();
    assert!(addr.contains("/p2p/"), "{addr}");

    let orch_ids: Vec<String> = dirs[1..].iter().map(|d| id(d)).collect();
    let orchs: Vec<Proc> = dirs[1..]
        .iter()
        .map(|d| model_orchestrator(d, &addr, &[]))
        .collect();
    router.wait_for("known=2");

    // A client without a deposit is refused before any work is done.
    let stranger = tmp.path().join("stranger");
    let out = run(&[
        "infer",
        "--data-dir",
        path(&stranger),
        "--bootstrap",
        &addr,
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PaymentRequired") && err.contains("no deposit"),
        "{err}"
    );

    let me = funded_client(&addr, &tmp.path().join("client"));
    let prompt = "The capital of France is";
    let a = infer_json(&addr, &me, prompt);
    // The honest result passed its replay on the other process's model.
    let check = router.wait_for("spot check");
    assert!(check.contains("verdict=Ok"), "{check}");
    let b = infer_json(&addr, &me, prompt);
    let text = a["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{a}");
    // Greedy decoding: the same answer, whichever orchestrator served it, at
    // least at first. A prompt prefilled from the cache or in a batch of
    // another shape sums its floats in another order, so once two tokens are
    // nearly tied a long greedy answer may part (as with llama-server's
    // prompt cache); the replay above is what checks a result.
    let (ta, tb) = (a["text"].as_str().unwrap(), b["text"].as_str().unwrap());
    let common = ta
        .bytes()
        .zip(tb.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common >= 16.min(ta.len()), "{ta:?} / {tb:?}");
    for v in [&a, &b] {
        let r = &v["receipt"];
        assert_eq!(r["verified"], true, "{v}");
        assert_eq!(r["model_sha256"], super::DEMO_SHA256);
        assert!(
            orch_ids.contains(&v["orchestrator"].as_str().unwrap().to_owned()),
            "{v}"
        );
        assert_eq!(r["orchestrator"], v["orchestrator"]);
        assert!(r["output_tokens"].as_u64().unwrap() > 0);
    }

    // A model nobody serves: a clear error, not a hang.
    let out = run(&[
        "infer",
        "--data-dir",
        path(&me),
        "--bootstrap",
        &addr,
        "--prompt",
        "hi",
        "--model",
        "no-such-model",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NoSuchModel"), "{err}");

    // Online: the router's status shows the stake, the paid tasks, the
    // anchored receipts, and a receipt exported from it verifies end to end.
    router.wait_for("receipts anchored");
    router.wait_for("receipts anchored");
    let out = run(&["status", "--bootstrap", &addr, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["receipts"], 2, "{status}");
    assert_eq!(status["anchors"], 2, "{status}");
    assert_eq!(status["pending_payments"], 0, "{status}");
    assert_eq!(status["stake_held"], 20_000, "{status}");
    let done: u64 = status["orchestrators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["successes"].as_u64().unwrap())
        .sum();
    assert_eq!(done, 2, "{status}");

    // The client paid for both tasks from its deposit, the router's fee on
    // top; nothing is left in escrow.
    let out = run(&[
        "account",
        "--router",
        &addr,
        "--data-dir",
        path(&me),
        "--json",
        "balance",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let left = client["deposit"].as_u64().unwrap();
    assert!(left < DEPOSIT && left > DEPOSIT / 2, "{client}");
    let bundle = tmp.path().join("receipt.json");
    let task = a["receipt"]["task_id"].as_str().unwrap();
    let out = run(&[
        "receipt",
        "get",
        task,
        "--bootstrap",
        &addr,
        "--output",
        path(&bundle),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["receipt", "verify", path(&bundle), "--bootstrap", &addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The anchor read from the ledger itself (here the router keeps it).
    let out = run(&["receipt", "verify", path(&bundle), "--ledger", &addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // kill -9: nothing the router committed is lost.
    router.kill9();
    let out = run(&["receipts", "--data-dir", path(&dirs[0]), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in [&a, &b] {
        let task = &v["receipt"]["task_id"];
        let entry = entries
            .iter()
            .find(|e| &e["task_id"] == task)
            .expect("receipt in the receipt log");
        assert_eq!(entry["verified"], true);
        assert_eq!(entry["frame_hex"], v["receipt"]["frame_hex"]);
    }
    let out = run(&["status", "--data-dir", path(&dirs[0]), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline["receipts"], status["receipts"]);
    assert_eq!(offline["stake_held"], status["stake_held"]);
    assert_eq!(offline["anchors"], status["anchors"]);
    let out = run(&[
        "receipt",
        "verify",
        path(&bundle),
        "--data-dir",
        path(&dirs[0]),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A tampered receipt file says which check failed.
    let text = std::fs::read_to_string(&bundle).unwrap();
    let root = serde_json::from_str::<serde_json::Value>(&text).unwrap()["anchor"]["root"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = format!(
        "{}{}",
        if root.starts_with('0') { '1' } else { '0' },
        &root[1..]
    );
    std::fs::write(&bundle, text.replace(&root, &flipped)).unwrap();
    let out = run(&[
        "receipt",
        "verify",
        path(&bundle),
        "--data-dir",
        path(&dirs[0]),
    ]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAIL Merkle proof"), "{report}");
    assert!(report.contains("FAIL root is anchored"), "{report}");
    assert!(report.contains("ok   router countersignature"), "{report}");

    // Orchestrators stop cleanly on SIGTERM.
    for o in orchs {
        o.terminate();
    }
}

/// A router and two orchestrators on the real model, each its own process.
struct Pair {
    /// The router's data dir, then the orchestrators'.
    dirs: Vec<PathBuf>,
    router: Proc,
    /// The router's address, `/p2p/<id>` included.
    addr: String,
    /// The orchestrators' PeerIds.
    ids: Vec<String>,
    /// The orchestrators; `None` once killed.
    orchs: Vec<Option<Proc>>,
    /// A client's data dir, with a deposit at the router.
    client: PathBuf,
}

impl Pair {
    /// Starts them under `dir` and waits until the router knows both.
    fn start(dir: &Path) -> Self {
        let dirs: Vec<PathBuf> = ["router", "orch1", "orch2"]
            .iter()
            .map(|d| dir.join(d))
            .collect();
        let mut router = Proc::spawn(&[
            "--role",
            "router",
            "--dev-faucet",
            "--data-dir",
            path(&dirs[0]),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]);
        let addr = router.listen_addr();
        let ids: Vec<String> = dirs[1..].iter().map(|d| id(d)).collect();
        let orchs = dirs[1..]
            .iter()
            .map(|d| Some(model_orchestrator(d, &addr, &[])))
            .collect();
        router.wait_for("known=2");
        let client = funded_client(&addr, &dir.join("client"));
        Self {
            dirs,
            router,
            addr,
            ids,
            orchs,
            client,
        }
    }
}

/// Checks the router at `addr` settled one task, paid to `survivor`, with
/// nothing pending and one failure for the other orchestrator; returns its
/// status.
fn paid_once_to(addr: &str, survivor: &str) -> serde_json::Value {
    let out = run(&["status", "--bootstrap", addr, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending_payments"], 0, "{status}");
    assert_eq!(status["receipts"], 1, "{status}");
    for o in status["orchestrators"].as_array().unwrap() {
        let expected = if o["peer"].as_str() == Some(survivor) {
            (1, 0)
        } else {
            (0, 1)
        };
        assert_eq!(
            (
                o["successes"].as_u64().unwrap(),
                o["failures"].as_u64().unwrap()
            ),
            expected,
            "{status}"
        );
    }
    status
}

#[test]
fn killing_the_serving_orchestrator_fails_over_without_double_payment() {
    let tmp = tempfile::tempdir().unwrap();
    let Pair {
        dirs,
        mut router,
        addr,
        ids,
        mut orchs,
        client: me,
    } = Pair::start(tmp.path());

    // A long generation, so that the orchestrator is still generating when
    // it is killed.
    let client = Command::new(BIN)
        .args([
            "infer",
            "--data-dir",
            path(&me),
            "--bootstrap",
            &addr,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "400",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let handed = router.wait_for("handing task over");
    let victim = ids
        .iter()
        .position(|i| handed.contains(&format!("orchestrator={i}")))
        .expect("a known orchestrator");
    orchs[victim].take().unwrap().kill9();

    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let survivor = &ids[1 - victim];
    assert_eq!(
        answer["orchestrator"].as_str(),
        Some(survivor.as_str()),
        "the other orchestrator delivered"
    );
    assert_eq!(answer["receipt"]["verified"], true);
    assert!(answer["receipt"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(!answer["text"].as_str().unwrap().is_empty());

    // One payment, to the one that delivered; the killed attempt refunded.
    let status = paid_once_to(&addr, survivor);
    for o in status["orchestrators"].as_array().unwrap() {
        // The router's own record: the killed one counts as disconnected.
        let rep = &o["reputation"];
        let expected = if o["peer"].as_str() == Some(survivor.as_str()) {
            (1.0, 0.0)
        } else {
            (0.0, 1.0)
        };
        let got = (
            rep["successes"].as_f64().unwrap(),
            rep["disconnects"].as_f64().unwrap(),
        );
        assert_eq!(got, expected, "{status}");
    }

    // The router's records outlive it: read back from its data dir.
    router.terminate();
    let out = run(&["status", "--data-dir", path(&dirs[0]), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let survivor_successes = offline["orchestrators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["peer"].as_str() == Some(survivor.as_str()))
        .and_then(|o| o["reputation"]["successes"].as_f64());
    assert_eq!(survivor_successes, Some(1.0), "{offline}");
}

#[test]
fn killing_the_orchestrator_mid_stream_resumes_the_stream_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let Pair {
        dirs: _,
        mut router,
        addr,
        ids,
        mut orchs,
        client: me,
    } = Pair::start(tmp.path());

    // Greedy, long, and only the end-of-generation token could stop it
    // early: the orchestrator is mid-stream when its first tokens pass the
    // router, and is killed then. Without --json, `infer` streams: it prints
    // tokens as they come and says who served what on stderr.
    let max_tokens = 300;
    let client = Command::new(BIN)
        .args([
            "infer",
            "--data-dir",
            path(&me),
            "--bootstrap",
            &addr,
            "--prompt",
            "Write a long story about a lighthouse keeper.",
            "--max-tokens",
            &max_tokens.to_string(),
            "--temperature",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = router.wait_for("first tokens streamed");
    let victim = ids
        .iter()
        .position(|i| first.contains(&format!("orchestrator={i}")))
        .expect("a known orchestrator");
    orchs[victim].take().unwrap().kill9();

    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The client checked the stream against the receipt: every streamed
    // token is either one the victim produced (which the survivor's receipt
    // commits to as resumed) or one of the survivor's own, in order, and
    // the streamed text is the resumed text followed by the receipt's.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim().len() > 20, "{text:?}");
    let survivor = &ids[1 - victim];
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("served by "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    assert!(
        summary.starts_with(&format!("served by {survivor} ")),
        "{summary}"
    );
    assert!(summary.ends_with("receipt verified"), "{summary}");
    let number_before = |marker: &str| -> u64 {
        let head = summary.split(marker).next().unwrap();
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let own = number_before(" output tokens");
    let resumed: u64 = summary
        .split("resumed after ")
        .nth(1)
        .unwrap_or_else(|| panic!("not resumed: {summary}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(resumed > 0 && own > 0, "{summary}");
    assert!(resumed + own <= max_tokens, "{summary}");
    let line = router.wait_for("task done; receipt recorded");
    assert!(line.contains(&format!("output_tokens={own}")), "{line}");

    // Paid once, to the survivor, for its own tokens; the victim's attempt
    // refunded and counted against it.
    paid_once_to(&addr, survivor);
}

#[test]
fn a_call_for_bids_places_a_task_when_every_orchestrator_is_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut router = Proc::spawn(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&tmp.path().join("router")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let addr = router.listen_addr();
    let orch_id = id(&tmp.path().join("orch"));
    // One worker slot and a queue: busy by its advert while it generates,
    // yet able to take one more task.
    let orch = model_orchestrator(
        &tmp.path().join("orch"),
        &addr,
        &["--slots", "1", "--queue", "2"],
    );
    router.wait_for("known=1");
    // The first task takes the only slot; for the second, sent once the
    // first is handed over, the router's table has no free slot, so it
    // calls for bids and the orchestrator bids with its queue place.
    let dirs = [1, 2].map(|n| funded_client(&addr, &tmp.path().join(format!("client{n}"))));
    let client = |me: &Path, prompt: &str| {
        Command::new(BIN)
            .args([
                "infer",
                "--data-dir",
                path(me),
                "--bootstrap",
                &addr,
                "--prompt",
                prompt,
                "--max-tokens",
                "256",
                "--json",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = client(&dirs[0], "Once upon a time");
    router.wait_for("handing task over");
    let clients = [first, client(&dirs[1], "The history of the bicycle")];
    let award = router.wait_for("task awarded to the best bid");
    assert!(award.contains(&format!("winner={orch_id}")), "{award}");
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "infer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["orchestrator"], orch_id.as_str(), "{v}");
        assert_eq!(v["receipt"]["verified"], true, "{v}");
    }
    orch.terminate();
    router.terminate();
}

#[test]
fn a_process_serving_a_substituted_model_is_caught_and_slashed() {
    let model = super::model_path();
    let tmp = tempfile::tempdir().unwrap();
    // The cheat: the demo model re-quantized to Q2_K by llama.cpp's own
    // quantizer, served under the demo model's hash, at a price that makes
    // the scheduler favour it.
    let substitute = tmp.path().join("substitute-q2_k.gguf");
    cactus_node::inference::llama::quantize_q2k(&model, &substitute, 2).unwrap();
    let mut router = Proc::spawn(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&tmp.path().join("router")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--spot-check",
        "100",
    ]);
    let addr = router.listen_addr();
    let honest: Vec<Proc> = ["h1", "h2"]
        .iter()
        .map(|d| model_orchestrator(&tmp.path().join(d), &addr, &["--price-per-token", "10"]))
        .collect();
    let cheater_dir = tmp.path().join("cheater");
    let cheater_id = id(&cheater_dir);
    let cheater = Proc::spawn_bin(
        env!("CARGO_BIN_EXE_cactus-test-substitute"),
        &[
            path(&substitute),
            path(&model),
            path(&cheater_dir),
            &addr,
            "1",
        ],
    );
    router.wait_for("known=3");
    // Every result is replayed by two other processes; the cheater's results
    // that stray from the model are refused and retried on honest ones.
    let prompts = [
        "The three primary colours are",
        "List five animals that live in the desert:",
        "The capital of France is",
        "Photosynthesis is the process by which",
    ];
    let me = funded_client(&addr, &tmp.path().join("client"));
    for prompt in prompts.iter().cycle().take(12) {
        let out = run(&[
            "infer",
            "--data-dir",
            path(&me),
            "--bootstrap",
            &addr,
            "--prompt",
            prompt,
            "--max-tokens",
            "64",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "infer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["receipt"]["verified"], true, "{v}");
        if router.seen("slashed for fraud") {
            break;
        }
    }
    assert!(
        router.seen("slashed for fraud"),
        "the cheater was never caught; router log:\n{}",
        router.log.join("\n")
    );
    let slashed = router
        .log
        .iter()
        .find(|l| l.contains("slashed for fraud"))
        .unwrap()
        .clone();
    assert!(slashed.contains(&cheater_id), "{slashed}");
    // The chain shows it: 10 % of its stake gone, the honest ones intact.
    let out = run(&["status", "--bootstrap", &addr, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for o in status["orchestrators"].as_array().unwrap() {
        let expected = if o["peer"] == cheater_id.as_str() {
            9_000
        } else {
            10_000
        };
        assert_eq!(o["stake"], expected, "{status}");
    }
    drop(cheater);
    for h in honest {
        h.terminate();
    }
    router.terminate();
    // The signed evidence is in the stopped router's files, and checks out.
    let out = run(&[
        "fraud",
        "--data-dir",
        path(&tmp.path().join("router")),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for e in &lines {
        assert_eq!(e["accused"], cheater_id.as_str(), "{e}");
        assert_eq!(e["verified"], "ok", "{e}");
        assert!(e["reports"].as_array().unwrap().len() >= 2, "{e}");
    }
    assert!(
        slashed.contains(lines[0]["evidence_hash"].as_str().unwrap()),
        "{slashed}"
    );
}

/// Two routers hand one orchestrator a task each before either hears that
/// it is full: the orchestrator runs one and delegates the other. The race
/// is made certain, not hoped for: the orchestrator is stopped (SIGSTOP)
/// while both routers pick it by its last advert, which says it is free,
/// and resumed once both have handed their tasks over. Heavy (two
/// orchestrators on the real model), so it is run on its own (see
/// `scripts/test.sh`: `cargo test ... -- --ignored two_routers`).
#[test]
#[ignore = "heavy: two orchestrators on the real model; run alone, as scripts/test.sh does"]
fn two_routers_racing_for_one_orchestrator_make_it_delegate_and_pay_along_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    // The orchestrators follow the first router's ledger, which authorizes
    // the second router too.
    let r2_id = id(&tmp.path().join("r2"));
    // The routers log the adverts they receive.
    let router = |args: &[&str]| {
        Proc::spawn_logging(BIN, args, "info,cactus_node::roles::router::handler=debug")
    };
    let mut r1 = router(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&tmp.path().join("r1")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--authorize-server",
        &r2_id,
    ]);
    let addr1 = r1.listen_addr();
    // The second router settles on the first one's ledger.
    let r1_id = addr1.rsplit('/').next().unwrap().to_owned();
    let mut r2 = router(&[
        "--role",
        "router",
        "--data-dir",
        path(&tmp.path().join("r2")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &addr1,
        "--ledger",
        &r1_id,
    ]);
    let addr2 = r2.listen_addr();
    // A: cheap, so both routers prefer it, with one slot and no queue. B:
    // dearer, with room.
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_id, b_id) = (id(&a_dir), id(&b_dir));
    let orch = |dir: &Path, price: &str, queue: &str| {
        model_orchestrator(
            dir,
            &addr1,
            &["--price-per-token", price, "--slots", "1", "--queue", queue],
        )
    };
    let mut a = orch(&a_dir, "1", "0");
    let b = orch(&b_dir, "100", "2");
    r1.wait_for("known=2");
    r2.wait_for("known=2");
    // Both routers hand A a task, each before A's advert says it is full: A
    // takes one and delegates the other to B, which it knows from its
    // adverts. (One router never sends a task to an orchestrator it knows is
    // full: the race between two routers is the point.) A is stopped while
    // both pick it, so that its last advert, saying it is free, is what both
    // go by; their requests wait in its sockets until it is resumed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let client = rt.block_on(async {
        let node = cactus_node::Node::start(
            cactus_node::NodeConfig {
                role: cactus_node::Role::Client,
                data_dir: client_dir.path().to_path_buf(),
                ..cactus_node::NodeConfig::default()
            },
            libp2p::identity::Keypair::generate_ed25519(),
            None,
        )
        .await
        .unwrap();
        for a in [&addr1, &addr2] {
            node.network().dial(a.parse().unwrap()).await.unwrap();
        }
        node
    });
    let peer_of = |a: &str| -> libp2p::PeerId { a.rsplit('/').next().unwrap().parse().unwrap() };
    let (p1, p2) = (peer_of(&addr1), peer_of(&addr2));
    // It pays from a deposit at each router, on the first router's ledger.
    rt.block_on(async {
        for server in [p1, p2] {
            cactus_node::client::fund_from_faucet(client.network(), p1, server, DEPOSIT)
                .await
                .unwrap();
        }
    });
    let spec = || cactus_protocol::TaskSpec {
        model: None,
        prompt: "Write a short story about a cactus.".into(),
        format: cactus_protocol::PromptFormat::Chat,
        sampling: cactus_protocol::SamplingParams {
            max_tokens: 96,
            ..Default::default()
        },
        max_price_per_unit: None,
        request_id: None,
    };
    let mut delegated = None;
    // Each router picks A by a seeded draw that explores others now and
    // then: a round where either picked B is tried again.
    for _ in 0..5 {
        // Both routers know A and B free (the last round's work is over and
        // their adverts say so); A hears B's adverts as they do.
        for r in [&mut r1, &mut r2] {
            for id in [&a_id, &b_id] {
                r.wait_advertised_free(id);
            }
        }
        a.signal("STOP");
        let submit = |p| {
            let n = client.network().clone();
            let task = spec();
            rt.spawn(async move { cactus_node::client::submit_to(&n, p, task).await })
        };
        let to_a = |line: String| line.contains(&format!("orchestrator={a_id}"));
        let second = submit(p2);
        let second_to_a = to_a(r2.wait_for("handing task over"));
        let first = submit(p1);
        let first_to_a = to_a(r1.wait_for("handing task over"));
        a.signal("CONT");
        for r in [first, second] {
            rt.block_on(r).unwrap().unwrap().receipt.verify().unwrap();
        }
        for (i, r) in [&mut r1, &mut r2].into_iter().enumerate() {
            if r.seen("delegated result") {
                delegated = r
                    .log
                    .iter()
                    .find(|l| l.contains("delegated result"))
                    .map(|l| (i, l.clone()));
            }
        }
        if delegated.is_some() || (first_to_a && second_to_a) {
            break;
        }
    }
    if delegated.is_none() {
        for (name, r) in [("router 1", &mut r1), ("router 2", &mut r2), ("A", &mut a)] {
            r.seen("");
            eprintln!("--- {name}:\n{}", r.log.join("\n"));
        }
    }
    let (which, line) = delegated.expect("the routers never raced for A");
    // The router checked A's signed link to B and B's receipt committing to
    // it, countersigned, and settled on its chain along the chain (A
    // answers for it; B ran it).
    assert!(line.contains(&format!("orchestrator={a_id}")), "{line}");
    assert!(line.contains(&format!("executor={b_id}")), "{line}");
    let task = line
        .split("task_id=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let router = if which == 0 { &mut r1 } else { &mut r2 };
    let settled = loop {
        if let Some(l) = router
            .log
            .iter()
            .find(|l| l.contains("receipt recorded") && l.contains(&task))
        {
            break l.clone();
        }
        router.wait_for("receipt recorded");
    };
    assert!(settled.contains("paid=true"), "{settled}");
    a.wait_for("delegating task");
    // The second router first: its answer to a status query comes after
    // its payments, which it makes on the first router's ledger.
    for addr in [&addr2, &addr1] {
        let out = run(&["status", "--bootstrap", addr, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["pending_payments"], 0, "{status}");
    }
    rt.block_on(client.shutdown());
    drop(b);
    a.terminate();
    r2.terminate();
    r1.terminate();
}

/// A router that the cluster's ledger has not authorized gets no work: it
/// sees the orchestrator on the ledger it follows, but the ledger refuses
/// to escrow its tasks (and the orchestrator would refuse them too, which
/// `mesh::only_routers_the_ledger_authorizes_get_work` shows), while the
/// ledger's own router is served.
#[test]
fn a_router_the_ledger_has_not_authorized_gets_no_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Proc::spawn(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&tmp.path().join("ledger")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let addr = ledger.listen_addr();
    let ledger_id = addr.rsplit('/').next().unwrap().to_owned();
    let mut other = Proc::spawn(&[
        "--role",
        "router",
        "--data-dir",
        path(&tmp.path().join("other")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &addr,
        "--ledger",
        &ledger_id,
    ]);
    let other_addr = other.listen_addr();
    let mut orch = model_orchestrator(&tmp.path().join("orch"), &addr, &[]);
    orch.wait_for("registered on the ledger");
    ledger.wait_for("known=1");
    other.wait_for("known=1");
    let me = funded_client(&addr, &tmp.path().join("client"));
    let infer = |router: &str| {
        run(&[
            "infer",
            "--data-dir",
            path(&me),
            "--router",
            router,
            "--prompt",
            "Say hello.",
            "--max-tokens",
            "8",
        ])
    };
    let out = infer(&other_addr);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized"), "{err}");
    assert!(err.contains("not an authorized server"), "{err}");
    let out = infer(&addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cactus-node account` acts on the node's own account on the ledger: a
/// dev faucet funds it, stake moves from the balance into the vault and
/// back out through unbonding, a withdrawal before the unbonding period
/// ends is refused with the contract's reason, and a ledger without a dev
/// faucet gives nothing away.
#[test]
fn account_commands_move_money_on_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Proc::spawn(&[
        "--role",
        "router",
        "--dev-faucet",
        "--data-dir",
        path(&tmp.path().join("dev")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let addr = dev.listen_addr();
    let me = tmp.path().join("me");
    let account = |ledger: &str, action: &[&str]| -> Output {
        let mut args = vec![
            "account",
            "--router",
            ledger,
            "--data-dir",
            path(&me),
            "--json",
        ];
        args.extend_from_slice(action);
        run(&args)
    };
    let json = |out: Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = json(account(&addr, &["balance"]));
    assert_eq!(
        (v["balance"].as_u64(), v["registered"].as_bool()),
        (Some(0), Some(false))
    );
    let v = json(account(&addr, &["faucet"]));
    let funds = v["balance"].as_u64().unwrap();
    assert!(funds >= 5_000, "{v}");
    let v = json(account(&addr, &["stake", "5000"]));
    assert_eq!(v["registered"], true);
    assert_eq!(v["stake"].as_u64(), Some(5_000));
    assert_eq!(v["balance"].as_u64(), Some(funds - 5_000));
    let v = json(account(&addr, &["stake", "1000"]));
    assert_eq!(v["stake"].as_u64(), Some(6_000));
    let v = json(account(&addr, &["unstake", "2000"]));
    assert_eq!(
        (v["stake"].as_u64(), v["unbonding"].as_u64()),
        (Some(4_000), Some(2_000))
    );
    let out = account(&addr, &["withdraw"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E_STILL_UNBONDING"), "{err}");
    // Anyone may ask to expire a task; the contract decides.
    let out = account(&addr, &["expire", "00112233445566778899aabbccddeeff"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E_TASK_NOT_FOUND"), "{err}");

    // A ledger without --dev-faucet gives nothing away.
    let mut plain = Proc::spawn(&[
        "--role",
        "router",
        "--data-dir",
        path(&tmp.path().join("plain")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let plain_addr = plain.listen_addr();
    let out = account(&plain_addr, &["faucet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no faucet"), "{err}");
    let out = account(&plain_addr, &["stake", "5000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E_INSUFFICIENT_BALANCE"), "{err}");
    drop(dev);
    drop(plain);
}

/// A router keeping a dev ledger in `tmp/router`, with one orchestrator on
/// the real model, and a funded client: for the tests that kill the router.
struct LoneRouter {
    dir: PathBuf,
    args: Vec<String>,
    router: Proc,
    addr: String,
    _orch: Proc,
    orch_id: String,
    client: PathBuf,
}

impl LoneRouter {
    fn start(tmp: &Path) -> Self {
        let dir = tmp.join("router");
        let args: Vec<String> = ["--role", "router", "--dev-faucet", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                path(&dir).to_owned(),
                "--listen".into(),
                "/ip4/127.0.0.1/tcp/0".into(),
            ])
            .collect();
        let mut router = Self::spawn(&args);
        let addr = router.listen_addr();
        let orch_dir = tmp.join("orch");
        let orch = model_orchestrator(&orch_dir, &addr, &[]);
        router.wait_for("known=1");
        let client = funded_client(&addr, &tmp.join("client"));
        Self {
            dir,
            args,
            router,
            addr,
            _orch: orch,
            orch_id: id(&orch_dir),
            client,
        }
    }

    fn spawn(args: &[String]) -> Proc {
        Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Kills the router with SIGKILL (no shutdown path runs), starts it
    /// again on the same data dir, waits for it to reconcile what the last
    /// run left pending and stops it; returns its reconcile log line and its
    /// status from its files.
    fn kill_restart_reconcile(&mut self) -> (String, serde_json::Value) {
        self.router.kill9_in_place();
        let mut router = Self::spawn(&self.args);
        let line = router.wait_for("tasks left pending by the last run reconciled");
        router.terminate();
        (line, self.offline_status())
    }

    /// The router's status from its files (the router stopped).
    fn offline_status(&self) -> serde_json::Value {
        let out = run(&["status", "--data-dir", path(&self.dir), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The orchestrator's successes and failures in `status`.
    fn record(&self, status: &serde_json::Value) -> (Option<u64>, Option<u64>) {
        let o = status["orchestrators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["peer"] == self.orch_id.as_str())
            .unwrap_or_else(|| panic!("{status}"));
        (o["successes"].as_u64(), o["failures"].as_u64())
    }
}

/// A router killed with SIGKILL mid-task leaves the task's escrow pending on
/// its chain; started again on the same data dir, it reconciles before
/// taking any task: nothing stays escrowed, and the attempt counts as the
/// orchestrator's failure, not as a payment.
#[test]
fn a_router_killed_mid_task_leaves_no_pending_escrow_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lone = LoneRouter::start(tmp.path());
    let mut client = Command::new(BIN)
        .args([
            "infer",
            "--data-dir",
            path(&lone.client),
            "--router",
            &lone.addr,
            "--prompt",
            "Write a long story about a cactus in the desert.",
            "--max-tokens",
            "400",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lone.router.wait_for("handing task over");
    let (line, status) = lone.kill_restart_reconcile();
    let _ = client.wait();
    assert!(line.contains("refunded=1"), "{line}");
    assert_eq!(status["pending_payments"], 0, "{status}");
    assert_eq!(lone.record(&status), (Some(0), Some(1)), "{status}");
}

/// A task's settlement is committed without a disk sync of its own (its
/// receipt, synced before the answer, is the durable record): a router
/// killed right after answering loses the settlement, and on restart pays
/// the task from its receipt, once, as the orchestrator's success.
#[test]
fn a_router_killed_after_answering_pays_the_task_from_its_receipt_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lone = LoneRouter::start(tmp.path());
    let answer = infer_json(&lone.addr, &lone.client, "Name a cactus.");
    let task = answer["receipt"]["task_id"].as_str().unwrap().to_owned();
    let paid = lone.router.wait_for("receipt recorded");
    assert!(paid.contains(&task) && paid.contains("paid=true"), "{paid}");
    // Killed before any later synced commit of its chain (the next escrow,
    // or an anchor, 30 s on): the settlement is lost with the process.
    lone.router.kill9_in_place();
    let lost = lone.offline_status();
    assert!(lost["pending_payments"].as_u64() > Some(0), "{lost}");
    assert_eq!(lone.record(&lost), (Some(0), Some(0)), "{lost}");
    let (line, status) = lone.kill_restart_reconcile();
    assert!(
        line.contains("settled=1") && line.contains("refunded=0"),
        "{line}"
    );
    assert_eq!(status["pending_payments"], 0, "{status}");
    assert_eq!(lone.record(&status), (Some(1), Some(0)), "{status}");
}
