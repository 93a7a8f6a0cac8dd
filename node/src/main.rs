//! `cactus-node`: run a Cactus node, print its id, submit a task, or read the
//! ledger. The work is all in the library; this only parses and reports.

use anyhow::{Context, Result, bail};
use cactus_node::chain::embedded::EmbeddedChain;
use cactus_node::cli::{self, DataDirArgs, NodeArgs};
use cactus_node::client;
use cactus_node::protocol::merkle::ReceiptBundle;
use cactus_node::protocol::messages::{
    MAX_STATUS_ORCHESTRATORS, OrchestratorStatus, Query, QueryAnswer, RouterStatus,
};
use cactus_node::protocol::{PromptFormat, SamplingParams, TaskId, TaskSpec};
use clap::{Parser, Subcommand};
use libp2p::PeerId;
use std::io::Write;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A node of Cactus, the decentralized AI inference network.
///
/// Without a subcommand, runs a node (an orchestrator unless --role says
/// otherwise) until Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "cactus-node", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
    /// A config file of `CACTUS_*=value` lines (the environment variables of
    /// the flags, e.g. CACTUS_CHAIN=aptos); the environment and flags win.
    #[arg(long, global = true, env = "CACTUS_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The `--config` file named on the command line or in `CACTUS_CONFIG`.
fn config_path() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    std::env::var_os("CACTUS_CONFIG").map(Into::into)
}

/// Reads the config file's `CACTUS_*=value` lines (blank lines and `#`
/// comments skipped).
fn read_config(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("config file {}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        bail!(
            "config file {} is over {MAX_CONFIG_BYTES} bytes",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected CACTUS_NAME=value", path.display(), n + 1);
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if !k.starts_with("CACTUS_") || k == "CACTUS_CONFIG" {
            bail!(
                "{}:{}: {k} is not a Cactus setting (CACTUS_ROLE, CACTUS_CHAIN, ...)",
                path.display(),
                n + 1
            );
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node (the default).
    Run(NodeArgs),
    /// Prints this node's PeerId, creating its identity if missing.
    Id(DataDirArgs),
    /// Joins the mesh, submits one prompt to a router and prints the answer.
    Infer(InferArgs),
    /// Lists the receipts in a router's ledger (stop the router first).
    Ledger(LedgerArgs),
    /// Lists the fraud evidence a router signed (stop the router first): the
    /// accused, the task, each verifier's findings, the hash a slash
    /// recorded, and whether every signature and finding checks out.
    Fraud(LedgerArgs),
    /// Shows a router's ledger: stake and counters per orchestrator, pending
    /// payments (escrow), receipts and anchors.
    Status(StatusArgs),
    /// Exports or verifies receipts with their anchor proofs.
    #[command(subcommand)]
    Receipt(ReceiptCmd),
    /// Checks this machine's reachability: listen and observed addresses,
    /// the AutoNAT verdict, relay reservations, a hole punch to a given peer,
    /// and what to do about it, in plain words.
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    #[command(flatten)]
    mesh: cli::MeshArgs,
    /// Also try to connect to this peer (e.g. another node's /p2p-circuit
    /// address) and report whether hole punching made the connection direct.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Option<libp2p::Multiaddr>,
    /// Seconds to observe at most.
    #[arg(long, default_value_t = 20)]
    wait: u64,
}

/// Where to read a router's ledger: over the mesh from a running router, or
/// from the data dir of a stopped one.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// Join through this peer and ask a router found on the DHT (repeatable).
    #[arg(
        long = "bootstrap",
        env = "CACTUS_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    bootstrap: Vec<libp2p::Multiaddr>,
    /// Ask this router.
    #[arg(long, value_name = "MULTIADDR")]
    router: Option<libp2p::Multiaddr>,
    /// Read the ledger files of a stopped router in this data dir instead.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["bootstrap", "router"])]
    data_dir: Option<std::path::PathBuf>,
    /// Seconds to wait for the router.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ReceiptCmd {
    /// Writes a task's receipt and anchor proof as JSON.
    Get {
        /// The task id (hex).
        task_id: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Checks a receipt file: both signatures, the Merkle proof, and that its
    /// root is the one anchored on the ledger. Says which check failed.
    Verify {
        /// A file written by `cactus-node receipt get`.
        file: std::path::PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
}

#[derive(Debug, clap::Args)]
struct InferArgs {
    /// A peer to join through (repeatable).
    #[arg(
        long = "bootstrap",
        env = "CACTUS_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    bootstrap: Vec<libp2p::Multiaddr>,
    /// Use this router instead of looking one up on the DHT.
    #[arg(long, value_name = "MULTIADDR")]
    router: Option<libp2p::Multiaddr>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Model name or sha256 [default: whatever the router can serve].
    #[arg(long)]
    model: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy and deterministic.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send the prompt as it is instead of through the model's chat template.
    #[arg(long)]
    raw: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print one JSON object: text, orchestrator, router and receipt.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct LedgerArgs {
    #[command(flatten)]
    data: DataDirArgs,
    /// Print JSON lines, one receipt each.
    #[arg(long)]
    json: bool,
    /// Most receipts to print.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

fn main() {
    // Settings precedence: config file, then environment, then flags. The file
    // only fills variables the environment does not set, before clap reads them.
    if let Some(path) = config_path() {
        match read_config(&path) {
            Ok(vars) => {
                for (k, v) in vars {
                    if std::env::var_os(&k).is_none() {
                        // SAFETY: single-threaded here: no runtime, no other
                        // thread has been started yet to read the environment.
                        #[allow(unsafe_code)]
                        unsafe {
                            std::env::set_var(&k, v)
                        };
                    }
                }
            }
            Err(e) => fail(e),
        }
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(dispatch(cli)) {
        fail(e);
    }
}

fn fail(e: anyhow::Error) -> ! {
    let _ = writeln!(std::io::stderr(), "error: {e:#}");
    std::process::exit(1);
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => run_node(cli.node).await,
        Some(Command::Run(args)) => run_node(args).await,
        Some(Command::Id(data)) => {
            let dir = data.resolve();
            let key = cactus_node::identity::load_or_create(&dir)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", key.public().to_peer_id())?;
            Ok(())
        }
        Some(Command::Infer(args)) => infer(args).await,
        Some(Command::Ledger(args)) => ledger(args),
        Some(Command::Fraud(args)) => fraud(args),
        Some(Command::Status(args)) => status(args).await,
        Some(Command::Receipt(cmd)) => receipt(cmd).await,
        Some(Command::Doctor(args)) => doctor(args).await,
    }
}

async fn doctor(args: DoctorArgs) -> Result<()> {
    use cactus_node::network::ConnectionKind;
    cli::init_tracing("warn");
    if args.mesh.bootstrap.is_empty() {
        bail!("give --bootstrap <multiaddr>: the doctor checks reachability with the mesh's help");
    }
    let mut network = args.mesh.network_config();
    network.bootstrap = Vec::new();
    let config = cactus_node::NodeConfig {
        role: cactus_node::Role::Client,
        network,
        ..Default::default()
    };
    let node =
        cactus_node::Node::start(config, libp2p::identity::Keypair::generate_ed25519(), None)
            .await?;
    let mut out = std::io::stdout().lock();
    let mut reached = Vec::new();
    for addr in &args.mesh.bootstrap {
        match tokio::time::timeout(Duration::from_secs(10), node.network().dial(addr.clone())).await
        {
            Ok(Ok(peer)) => {
                writeln!(out, "bootstrap {addr}: reachable")?;
                reached.push(peer);
            }
            Ok(Err(e)) => writeln!(out, "bootstrap {addr}: NOT reachable ({e})")?,
            Err(_) => writeln!(out, "bootstrap {addr}: NOT reachable (no answer in 10 s)")?,
        }
    }
    let peer = match &args.peer {
        Some(addr) => {
            match tokio::time::timeout(Duration::from_secs(15), node.network().dial(addr.clone()))
                .await
            {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => {
                    writeln!(out, "peer {addr}: cannot connect ({e})")?;
                    None
                }
                Err(_) => {
                    writeln!(out, "peer {addr}: no answer in 15 s")?;
                    None
                }
            }
        }
        None => None,
    };
    // Observe until the picture is complete or the time is up: a reservation
    // or a confirmed public address, an AutoNAT probe, and the hole punch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let d = loop {
        tick.tick().await;
        let d = node.network().diagnostics().await?;
        let reachable = !d.confirmed_addrs.is_empty() || !d.reservations.is_empty();
        let probed = !d.autonat.is_empty() || !d.confirmed_addrs.is_empty();
        let punched = match peer {
            None => true,
            Some(p) => {
                d.hole_punches.iter().any(|(q, _)| *q == p)
                    || d.connections
                        .iter()
                        .any(|(q, k)| *q == p && *k == ConnectionKind::Direct)
            }
        };
        if (reachable && probed && punched) || tokio::time::Instant::now() >= deadline {
            break d;
        }
    };
    let list = |v: &[libp2p::Multiaddr]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join("\n    ")
        }
    };
    writeln!(out, "listen addresses:\n    {}", list(&d.listen_addrs))?;
    writeln!(
        out,
        "addresses peers see for this machine:\n    {}",
        list(&d.observed_addrs)
    )?;
    writeln!(
        out,
        "publicly reachable addresses (AutoNAT):\n    {}",
        list(&d.confirmed_addrs)
    )?;
    let (ok, failed) = d.autonat.iter().fold(
        (0, 0),
        |(o, f), (_, _, r)| if *r { (o + 1, f) } else { (o, f + 1) },
    );
    writeln!(out, "AutoNAT probes: {ok} reachable, {failed} unreachable")?;
    if d.reservations.is_empty() {
        writeln!(out, "relay reservations: none")?;
    } else {
        for r in &d.reservations {
            writeln!(out, "relay reservation: via {r}")?;
        }
    }
    if let Some(p) = peer {
        let kind = d.connections.iter().find(|(q, _)| *q == p).map(|(_, k)| *k);
        match d.hole_punches.iter().rev().find(|(q, _)| *q == p) {
            Some((_, Ok(()))) => writeln!(
                out,
                "hole punch to {p}: succeeded, the connection is direct"
            )?,
            Some((_, Err(e))) => writeln!(
                out,
                "hole punch to {p}: failed ({e}); the connection stays relayed"
            )?,
            None => match kind {
                Some(ConnectionKind::Direct) => {
                    writeln!(out, "connection to {p}: direct (no hole punch needed)")?
                }
                Some(ConnectionKind::Relayed) => {
                    writeln!(out, "connection to {p}: relayed; no hole punch result yet")?
                }
                None => writeln!(out, "connection to {p}: none")?,
            },
        }
    }
    writeln!(out)?;
    let advice = if reached.is_empty() {
        "No bootstrap peer answered. Check the --bootstrap address (it must end in /p2p/<peer id>) and that this machine may open outbound TCP/UDP connections.".to_owned()
    } else if !d.confirmed_addrs.is_empty() {
        "This node is publicly reachable: nothing to do. Consider running it with --relay to help nodes behind NATs.".to_owned()
    } else if !d.reservations.is_empty() {
        "This node is behind a NAT or firewall and is reachable through a relay: it works as it is. Direct connections are set up by hole punching where the NATs allow; to be dialled directly everywhere, forward a TCP port to this machine and pass it with --listen /ip4/0.0.0.0/tcp/<port>.".to_owned()
    } else {
        "This node is not publicly reachable and holds no relay reservation, so nobody can dial it. Make sure a bootstrap peer runs a relay (cactus-bootstrap does), or forward a TCP port to this machine.".to_owned()
    };
    writeln!(out, "what to do: {advice}")?;
    drop(out);
    node.shutdown().await;
    Ok(())
}

/// Asks a running router (`--bootstrap` / `--router`) one question.
async fn ask(source: &SourceArgs, q: Query) -> Result<QueryAnswer> {
    if source.bootstrap.is_empty() && source.router.is_none() {
        bail!("give --bootstrap <multiaddr>, --router <multiaddr> or --data-dir <dir>");
    }
    let timeout = Duration::from_secs(source.timeout.max(1));
    let (node, router) = client::connect(&source.bootstrap, source.router.clone(), timeout).await?;
    let answer = tokio::time::timeout(timeout, client::query(node.network(), router, q)).await;
    node.shutdown().await;
    Ok(answer.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??)
}

/// The status of a stopped router's ledger, read from its data dir.
fn offline_status(dir: &std::path::Path) -> Result<RouterStatus> {
    let chain = EmbeddedChain::open_existing(dir)?;
    let state = chain.state();
    let receipts = cactus_node::receipt_log::ReceiptLog::open(dir)?;
    let router_account = state.servers.iter().next().copied().unwrap_or(state.admin);
    let reputations: std::collections::HashMap<PeerId, _> = receipts
        .reputations(MAX_STATUS_ORCHESTRATORS)?
        .into_iter()
        .collect();
    Ok(RouterStatus {
        router_account,
        authorized: state.is_server(&router_account),
        config: state.config.clone(),
        orchestrators: state
            .orchestrators
            .iter()
            .take(MAX_STATUS_ORCHESTRATORS)
            .map(|(a, o)| {
                let peer = PeerId::from_bytes(&o.peer_id).ok();
                OrchestratorStatus {
                    peer,
                    account: *a,
                    record: Some(o.clone()),
                    reputation: peer.and_then(|p| reputations.get(&p).cloned()),
                }
            })
            .collect(),
        totals: state.totals(),
        receipts: receipts.len()?,
        pending_anchor: receipts.pending_len()?,
        anchors: state.anchors.len() as u64,
    })
}

async fn status(args: StatusArgs) -> Result<()> {
    cli::init_tracing("warn");
    let s = match &args.source.data_dir {
        Some(dir) => offline_status(dir)?,
        None => match ask(&args.source, Query::Status).await? {
            QueryAnswer::Status(s) => *s,
            _ => bail!("unexpected answer from the router"),
        },
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&status_json(&s))?)?;
        return Ok(());
    }
    let (stake, escrow, vault) = s.totals;
    writeln!(
        out,
        "router account   {} (authorized server: {})",
        s.router_account, s.authorized
    )?;
    if let Some(c) = &s.config {
        writeln!(
            out,
            "minimum stake    {}   unbonding {} s   price per ms {}   delegation fee {} bps",
            c.min_stake, c.unbonding_secs, c.price_per_ms, c.delegation_fee_bps
        )?;
    }
    writeln!(out, "stake held       {stake}")?;
    writeln!(
        out,
        "pending payments {escrow} (escrow of tasks not yet settled)"
    )?;
    writeln!(out, "vault balance    {vault}")?;
    writeln!(
        out,
        "receipts         {} recorded, {} waiting to be anchored, {} batches anchored",
        s.receipts, s.pending_anchor, s.anchors
    )?;
    writeln!(out, "orchestrators    {}", s.orchestrators.len())?;
    for o in &s.orchestrators {
        let peer = o.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        match &o.record {
            Some(r) => writeln!(
                out,
                "  {peer}  account {}  stake {}  unbonding {}  tasks ok {}  failed {}  compute {} ms",
                o.account, r.stake, r.unbonding, r.successes, r.failures, r.compute_ms
            )?,
            None => writeln!(out, "  {peer}  account {}  not registered", o.account)?,
        }
        if let Some(r) = &o.reputation {
            let n = |x: u64| x as f64 / 1000.0;
            let ms = |x: Option<u64>| x.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "      router's record: ok {:.1}  timeouts {:.1}  bad results {:.1}  refused {:.1}  disconnected {:.1}  per token {}  rtt {}",
                n(r.successes),
                n(r.timeouts),
                n(r.bad_results),
                n(r.refusals),
                n(r.disconnects),
                ms(r.ms_per_token),
                ms(r.rtt_ms)
            )?;
        }
    }
    Ok(())
}

fn status_json(s: &RouterStatus) -> serde_json::Value {
    let (stake, escrow, vault) = s.totals;
    serde_json::json!({
        "router_account": s.router_account.to_hex(),
        "authorized": s.authorized,
        "min_stake": s.config.as_ref().map(|c| c.min_stake),
        "stake_held": stake,
        "pending_payments": escrow,
        "vault_balance": vault,
        "receipts": s.receipts,
        "pending_anchor": s.pending_anchor,
        "anchors": s.anchors,
        "orchestrators": s.orchestrators.iter().map(|o| serde_json::json!({
            "peer": o.peer.map(|p| p.to_string()),
            "account": o.account.to_hex(),
            "stake": o.record.as_ref().map(|r| r.stake),
            "unbonding": o.record.as_ref().map(|r| r.unbonding),
            "successes": o.record.as_ref().map(|r| r.successes),
            "failures": o.record.as_ref().map(|r| r.failures),
            "compute_ms": o.record.as_ref().map(|r| r.compute_ms),
            "reputation": o.reputation.as_ref().map(|r| serde_json::json!({
                "successes": r.successes as f64 / 1000.0,
                "timeouts": r.timeouts as f64 / 1000.0,
                "bad_results": r.bad_results as f64 / 1000.0,
                "refusals": r.refusals as f64 / 1000.0,
                "disconnects": r.disconnects as f64 / 1000.0,
                "ms_per_token": r.ms_per_token,
                "rtt_ms": r.rtt_ms,
            })),
        })).collect::<Vec<_>>(),
    })
}

async fn receipt(cmd: ReceiptCmd) -> Result<()> {
    cli::init_tracing("warn");
    match cmd {
        ReceiptCmd::Get {
            task_id,
            source,
            output,
        } => {
            let mut id = [0u8; 16];
            hex::decode_to_slice(task_id.trim(), &mut id)
                .context("the task id is 32 hex characters")?;
            let id = TaskId(id);
            let bundle = match &source.data_dir {
                Some(dir) => {
                    let l = cactus_node::receipt_log::ReceiptLog::open(dir)?;
                    l.get(&id)?
                        .map(|receipt| {
                            Ok::<_, anyhow::Error>(ReceiptBundle {
                                receipt,
                                anchor: l.proof(&id)?,
                            })
                        })
                        .transpose()?
                }
                None => match ask(&source, Query::Receipt(id)).await? {
                    QueryAnswer::Receipt(b) => b.map(|b| *b),
                    _ => bail!("unexpected answer from the router"),
                },
            };
            let Some(bundle) = bundle else {
                bail!("no receipt for task {id}")
            };
            let text = serde_json::to_string_pretty(&cli::bundle_json(&bundle))?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => writeln!(std::io::stdout().lock(), "{text}")?,
            }
            Ok(())
        }
        ReceiptCmd::Verify { file, source } => {
            const MAX_FILE: u64 = 1 << 20;
            let meta =
                std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
            if meta.len() > MAX_FILE {
                bail!(
                    "{} is over {MAX_FILE} bytes: not a receipt file",
                    file.display()
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut out = std::io::stdout().lock();
            let mut failed = false;
            let mut report = |ok: bool, what: &str, detail: String| -> std::io::Result<()> {
                failed |= !ok;
                writeln!(
                    out,
                    "{} {what}{}",
                    if ok { "ok  " } else { "FAIL" },
                    if detail.is_empty() {
                        detail
                    } else {
                        format!(": {detail}")
                    }
                )
            };
            let parsed = serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| cli::bundle_from_json(&v));
            let bundle = match parsed {
                Ok(b) => {
                    report(true, "receipt file decodes", String::new())?;
                    b
                }
                Err(e) => {
                    report(false, "receipt file decodes", e)?;
                    bail!("receipt verification failed");
                }
            };
            let r = &bundle.receipt;
            let orch = r.verify_orchestrator();
            report(
                orch.is_ok(),
                "orchestrator signature",
                orch.err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| r.body.orchestrator.to_string()),
            )?;
            let full = r.verify();
            report(
                full.is_ok(),
                "router countersignature",
                full.err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| r.body.router.to_string()),
            )?;
            match &bundle.anchor {
                None => report(
                    false,
                    "anchor proof",
                    "the receipt is not anchored yet (fetch it again later)".into(),
                )?,
                Some(a) => {
                    let hash = r.hash().map_err(|e| anyhow::anyhow!("{e}"))?;
                    let in_tree = a.proof.verify(&hash, &a.root);
                    report(
                        in_tree,
                        "Merkle proof leads to the batch root",
                        format!("root {}", a.root),
                    )?;
                    let anchored = match &source.data_dir {
                        Some(dir) => Ok(EmbeddedChain::open_existing(dir)?
                            .state()
                            .anchors
                            .get(a.anchor_index as usize)
                            .cloned()),
                        None if source.bootstrap.is_empty() && source.router.is_none() => Err(
                            "no ledger to check against: give --bootstrap, --router or --data-dir"
                                .to_owned(),
                        ),
                        None => match ask(&source, Query::Anchor(a.anchor_index)).await? {
                            QueryAnswer::Anchor(x) => Ok(x),
                            _ => Err("unexpected answer from the router".to_owned()),
                        },
                    };
                    match anchored {
                        Ok(Some(x)) if x.root == a.root => report(
                            true,
                            "root is anchored on the ledger",
                            format!(
                                "batch {} of {} receipts by {}",
                                a.anchor_index, x.count, x.server
                            ),
                        )?,
                        Ok(Some(x)) => report(
                            false,
                            "root is anchored on the ledger",
                            format!(
                                "batch {} has root {}, not {}",
                                a.anchor_index, x.root, a.root
                            ),
                        )?,
                        Ok(None) => report(
                            false,
                            "root is anchored on the ledger",
                            format!("the ledger has no batch {}", a.anchor_index),
                        )?,
                        Err(e) => report(false, "root is anchored on the ledger", e)?,
                    }
                }
            }
            if failed {
                bail!("receipt verification failed");
            }
            Ok(())
        }
    }
}

async fn run_node(args: NodeArgs) -> Result<()> {
    cli::init_tracing("info");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        cli::shutdown_signal().await;
        trigger.cancel();
    });
    cli::run(args, shutdown).await.map_err(Into::into)
}

async fn infer(args: InferArgs) -> Result<()> {
    cli::init_tracing("warn");
    if args.bootstrap.is_empty() && args.router.is_none() {
        bail!("give --bootstrap <multiaddr> (or --router <multiaddr>)");
    }
    let spec = TaskSpec {
        model: args.model,
        prompt: args.prompt,
        format: if args.raw {
            PromptFormat::Raw
        } else {
            PromptFormat::Chat
        },
        sampling: SamplingParams {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    spec.validate().context("invalid request")?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let result = client::submit(args.bootstrap, args.router, spec, timeout).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "text": result.text,
            "finish": format!("{:?}", result.finish),
            "orchestrator": result.receipt.body.orchestrator.to_string(),
            "router": result.receipt.body.router.to_string(),
            "receipt": cli::receipt_json(&result.receipt),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", result.text)?;
        let b = &result.receipt.body;
        let _ = writeln!(
            std::io::stderr(),
            "served by {} via router {}: {} prompt + {} output tokens in {} ms; receipt verified",
            b.orchestrator,
            b.router,
            b.prompt_tokens,
            b.output_tokens,
            b.compute_ms
        );
    }
    Ok(())
}

fn fraud(args: LedgerArgs) -> Result<()> {
    let dir = args.data.resolve();
    if !dir
        .join(cactus_node::receipt_log::RECEIPT_LOG_FILE)
        .exists()
    {
        bail!("no ledger in {} (check --data-dir)", dir.display());
    }
    let ledger = cactus_node::receipt_log::ReceiptLog::open(&dir)?;
    let mut out = std::io::stdout().lock();
    for e in ledger.frauds(args.limit)? {
        let b = &e.body.receipt.body;
        let verified = e
            .verify()
            .map_or_else(|err| err.to_string(), |()| "ok".into());
        let hash = e.hash().map(|h| h.to_hex()).unwrap_or_default();
        if args.json {
            let reports: Vec<serde_json::Value> = e
                .body
                .reports
                .iter()
                .map(|r| {
                    let f = &r.body.findings;
                    serde_json::json!({
                        "verifier": r.body.verifier.to_string(),
                        "verdict": f.judge(b, e.body.tolerance).err().map(|r| r.to_string()),
                        "max_gap": f.max_gap,
                        "mismatches": f.mismatches,
                        "positions": f.positions,
                        "text_matches": f.text_matches,
                        "worst": f.worst.iter().map(|w| serde_json::json!({
                            "position": w.position, "token": w.token,
                            "expected": w.expected, "gap": w.gap,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let v = serde_json::json!({
                "task_id": b.task_id.to_hex(),
                "accused": b.orchestrator.to_string(),
                "model_sha256": b.model.to_hex(),
                "router": e.body.router.to_string(),
                "tolerance": e.body.tolerance,
                "issued_at_ms": e.body.issued_at_ms,
                "evidence_hash": hash,
                "verified": verified,
                "reports": reports,
            });
            writeln!(out, "{v}")?;
        } else {
            let gaps: Vec<String> = e
                .body
                .reports
                .iter()
                .map(|r| format!("{}:{:.2}", r.body.verifier, r.body.findings.max_gap))
                .collect();
            writeln!(
                out,
                "{} accused={} tolerance={} max_gaps=[{}] evidence={} verified={}",
                b.task_id,
                b.orchestrator,
                e.body.tolerance,
                gaps.join(","),
                hash,
                verified
            )?;
        }
    }
    Ok(())
}

fn ledger(args: LedgerArgs) -> Result<()> {
    let dir = args.data.resolve();
    if !dir
        .join(cactus_node::receipt_log::RECEIPT_LOG_FILE)
        .exists()
    {
        bail!("no ledger in {} (check --data-dir)", dir.display());
    }
    let ledger = cactus_node::receipt_log::ReceiptLog::open(&dir)?;
    let receipts = ledger.list(0, args.limit)?;
    let mut out = std::io::stdout().lock();
    for r in &receipts {
        if args.json {
            writeln!(out, "{}", cli::receipt_json(r))?;
        } else {
            let b = &r.body;
            writeln!(
                out,
                "{} model={} orchestrator={} tokens={}+{} compute_ms={} verified={}",
                b.task_id,
                b.model,
                b.orchestrator,
                b.prompt_tokens,
                b.output_tokens,
                b.compute_ms,
                r.verify().is_ok()
            )?;
        }
    }
    Ok(())
}
