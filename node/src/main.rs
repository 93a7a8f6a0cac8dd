//! `cactus-node`: run a Cactus node, print its id, submit a task, or read a
//! router's receipts and status. The work is all in the library (the command
//! line in `cli`, what is reported in `report`); this parses and prints.

use anyhow::{Context, Result, bail};
use cactus_node::chain::embedded::EmbeddedChain;
use cactus_node::cli::commands::{
    AccountAction, AccountArgs, AptosArgs, Cli, Command, DoctorArgs, InferArgs, KeysAction,
    KeysArgs, LogArgs, ReceiptCmd, RouterArgs, SourceArgs, StatusArgs,
};
use cactus_node::cli::{self, NodeArgs};
use cactus_node::client;
use cactus_node::protocol::merkle::ReceiptBundle;
use cactus_node::protocol::messages::{Query, QueryAnswer};
use cactus_node::protocol::{PromptFormat, SamplingParams, TaskId, TaskSpec};
use cactus_node::receipt_log::{RECEIPT_LOG_FILE, ReceiptLog};
use cactus_node::report::output::{
    AccountJson, BundleJson, FraudJson, InferJson, ReceiptJson, StatusJson,
};
use cactus_node::report::{self, audit, diagnose, status};
use clap::{CommandFactory, Parser};
use std::io::Write;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest receipt file `receipt verify` reads.
const MAX_RECEIPT_FILE: u64 = 1 << 20;

fn main() {
    // A --config file becomes flags before clap parses, below the environment
    // and the command line in precedence.
    let args =
        match cli::config::effective_args(&Cli::command(), std::env::args_os().collect(), |k| {
            std::env::var_os(k)
        }) {
            Ok(a) => a,
            Err(e) => fail(e.into()),
        };
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail(anyhow::Error::new(e).context("cannot start the async runtime")),
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
            let key = cactus_node::identity::load_or_create(&data.resolve())?;
            writeln!(std::io::stdout().lock(), "{}", key.public().to_peer_id())?;
            Ok(())
        }
        Some(Command::Infer(args)) => infer(args).await,
        Some(Command::Receipts(args)) => receipts(args),
        Some(Command::Fraud(args)) => fraud(args),
        Some(Command::Status(args)) => status(args).await,
        Some(Command::Receipt(cmd)) => receipt(cmd).await,
        Some(Command::Doctor(args)) => doctor(args).await,
        Some(Command::Account(args)) => account(args).await,
        Some(Command::Keys(args)) => keys(args),
    }
}

fn keys(args: KeysArgs) -> Result<()> {
    use cactus_node::api::keys;
    let dir = args.data.resolve();
    let mut out = std::io::stdout().lock();
    match args.action {
        KeysAction::Create { account, name } => {
            let account = match cli::parse_address(&account) {
                Ok(a) => a,
                Err(_) => {
                    let peer: libp2p::PeerId = account
                        .parse()
                        .context("--account is 0x and 64 hex digits, or a PeerId")?;
                    cactus_node::chain::default_account(&peer)
                }
            };
            let (key, record) = keys::create(&dir, account, &name)?;
            writeln!(out, "{key}")?;
            writeln!(
                std::io::stderr(),
                "key {} for account {} (shown once; the router keeps only its hash)",
                record.id(),
                record.account
            )?;
        }
        KeysAction::List => {
            for k in keys::list(&dir)? {
                writeln!(out, "{} {} {}", k.id(), k.account, k.name)?;
            }
        }
        KeysAction::Revoke { which } => match keys::revoke(&dir, &which)? {
            0 => bail!("no key has the id or name {which:?}"),
            n => writeln!(out, "revoked {n} key(s)")?,
        },
    }
    Ok(())
}

async fn account(args: AccountArgs) -> Result<()> {
    use cactus_node::protocol::messages::Transaction;
    cli::init_tracing("warn");
    let key = cactus_node::identity::load_or_create(&args.data.resolve())?;
    if args.aptos.aptos_url.is_some() {
        return account_on_aptos(&args, &key.public().to_peer_id()).await;
    }
    if args.reach.is_empty() {
        bail!("name the ledger router: --router <its /p2p address> (or --bootstrap)");
    }
    let timeout = Duration::from_secs(args.timeout.max(1));
    let (boot, router) = (&args.reach.bootstrap, args.reach.router.clone());
    let call = |tx| client::account(key.clone(), boot, router.clone(), timeout, tx);
    use cactus_node::protocol::contract::Op;
    let server = |at: Option<cactus_node::protocol::contract::Address>, ledger| {
        at.unwrap_or_else(|| cactus_node::chain::default_account(&ledger))
    };
    let op: Option<Box<dyn FnOnce(libp2p::PeerId) -> Op>> = match args.action.clone() {
        AccountAction::Expire { task_id } => {
            let mut id = [0u8; 16];
            hex::decode_to_slice(task_id.trim(), &mut id)
                .context("the task id is 32 hex characters")?;
            Some(Box::new(move |_| Op::ExpireTask {
                task_id: id.to_vec(),
            }))
        }
        AccountAction::Deposit { amount, at } => Some(Box::new(move |ledger| Op::Deposit {
            server: server(at, ledger),
            amount,
        })),
        AccountAction::WithdrawDeposit { amount, at } => {
            Some(Box::new(move |ledger| Op::WithdrawDeposit {
                server: server(at, ledger),
                amount,
            }))
        }
        AccountAction::Cap { max_price_per_unit } => {
            Some(Box::new(move |_| Op::SetMaxPrice { max_price_per_unit }))
        }
        AccountAction::BindPeer => {
            let peer_id = key.public().to_peer_id().to_bytes();
            Some(Box::new(move |_| Op::BindClientPeer { peer_id }))
        }
        _ => None,
    };
    if let Some(op) = op {
        client::apply_op(key.clone(), boot, router.clone(), timeout, op)
            .await?
            .map_err(|abort| anyhow::anyhow!("the ledger refused it: {abort}"))?;
        if let AccountAction::Expire { task_id } = &args.action {
            writeln!(
                std::io::stdout().lock(),
                "task {task_id} expired: its escrow is refunded"
            )?;
            return Ok(());
        }
    }
    let tx = match args.action.clone() {
        AccountAction::Expire { .. }
        | AccountAction::Deposit { .. }
        | AccountAction::WithdrawDeposit { .. }
        | AccountAction::Cap { .. }
        | AccountAction::BindPeer => None,
        AccountAction::Balance => None,
        AccountAction::Faucet => Some(Transaction::Faucet),
        AccountAction::Stake { amount } => {
            let now = call(None).await?;
            Some(match now.orchestrator {
                Some(_) => Transaction::AddStake { amount },
                None => Transaction::Register { stake: amount },
            })
        }
        AccountAction::Unstake { amount } => Some(Transaction::Unstake { amount }),
        AccountAction::Withdraw => Some(Transaction::Withdraw),
    };
    let view = AccountJson::from(&call(tx).await?);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&view)?)?;
    } else {
        writeln!(out, "{view}")?;
    }
    Ok(())
}

/// `cactus-node account` on the Aptos contract: the same actions, as the
/// contract's entry functions signed with the node's Aptos key.
async fn account_on_aptos(args: &AccountArgs, peer: &libp2p::PeerId) -> Result<()> {
    let chain = aptos_chain(&args.aptos)?;
    let me = chain.account();
    if matches!(args.action, AccountAction::Faucet) {
        bail!("the Aptos contract has no faucet: fund {me} with the payment asset's own tools");
    }
    let registered = chain.orchestrator(me).await?.is_some();
    let server = match &args.action {
        AccountAction::Deposit { at, .. } | AccountAction::WithdrawDeposit { at, .. } => *at,
        _ => None,
    };
    if let Some(op) = args
        .action
        .op(peer, registered, None)
        .map_err(anyhow::Error::msg)?
    {
        chain.submit(op).await?;
    }
    let orchestrator = chain.orchestrator(me).await?;
    let (deposit, cap) = match server {
        Some(s) => chain.client(me, s).await?,
        None => (0, cactus_node::protocol::contract::NO_CAP),
    };
    let view = serde_json::json!({
        "account": me.to_hex(),
        "balance": chain.balance(me).await?,
        "registered": orchestrator.is_some(),
        "stake": orchestrator.as_ref().map_or(0, |o| o.stake),
        "unbonding": orchestrator.as_ref().map_or(0, |o| o.unbonding),
        "unlock_at": orchestrator.as_ref().map_or(0, |o| o.unlock_at),
        "deposit": deposit,
        "max_price_per_unit": (cap != cactus_node::protocol::contract::NO_CAP).then_some(cap),
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{view}")?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
    }
    Ok(())
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

async fn doctor(args: DoctorArgs) -> Result<()> {
    cli::init_tracing("warn");
    let wait = Duration::from_secs(args.wait);
    let d = diagnose::diagnose(
        args.mesh.network_config(),
        &args.mesh.bootstrap,
        args.peer,
        wait,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&d)?)?;
    } else {
        writeln!(out, "{d}")?;
    }
    Ok(())
}

/// Asks a running router (`--bootstrap` / `--router`) one question.
async fn ask(source: &SourceArgs, q: Query) -> Result<QueryAnswer> {
    let timeout = Duration::from_secs(source.timeout.max(1));
    Ok(report::ask_router(
        &source.reach.bootstrap,
        source.reach.router.clone(),
        timeout,
        q,
    )
    .await?)
}

async fn status(args: StatusArgs) -> Result<()> {
    cli::init_tracing("warn");
    let s = match &args.source.data_dir {
        Some(dir) => status::offline_status(dir).await?,
        None => match ask(&args.source, Query::Status).await? {
            QueryAnswer::Status(s) => *s,
            _ => bail!("unexpected answer from the router"),
        },
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&StatusJson::from(&s))?)?;
    } else {
        writeln!(out, "{}", status::StatusText(&s))?;
    }
    Ok(())
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
                    let log = ReceiptLog::open(dir)?;
                    match log.get(&id)? {
                        Some(receipt) => Some(ReceiptBundle {
                            receipt,
                            anchor: log.proof(&id)?,
                        }),
                        None => None,
                    }
                }
                None => match ask(&source, Query::Receipt(id)).await? {
                    QueryAnswer::Receipt(b) => b.map(|b| *b),
                    _ => bail!("unexpected answer from the router"),
                },
            };
            let Some(bundle) = bundle else {
                bail!("no receipt for task {id}")
            };
            let text = serde_json::to_string_pretty(&BundleJson::from(&bundle))?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => writeln!(std::io::stdout().lock(), "{text}")?,
            }
            Ok(())
        }
        ReceiptCmd::Verify {
            file,
            source,
            ledger,
            aptos,
            json,
        } => {
            let text = report::read_small_file(&file, MAX_RECEIPT_FILE)?;
            if aptos.aptos_url.is_some() {
                let chain = aptos_chain(&aptos)?;
                let checks = audit::audit(&text, |i| chain.anchor(i)).await;
                return print_checks(&checks, json);
            }
            // The anchor comes from the ledger itself when one is named.
            let source = match ledger {
                Some(l) => SourceArgs {
                    reach: RouterArgs {
                        bootstrap: Vec::new(),
                        router: Some(l),
                    },
                    data_dir: None,
                    timeout: source.timeout,
                },
                None => source,
            };
            let checks = audit::audit(&text, |i| anchor_at(&source, i)).await;
            print_checks(&checks, json)
        }
    }
}

/// Prints a receipt's checks; an error when one failed.
fn print_checks(checks: &[audit::Check], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(checks)?)?;
    } else {
        for c in checks {
            writeln!(out, "{c}")?;
        }
    }
    if checks.iter().any(|c| !c.passed) {
        bail!("receipt verification failed");
    }
    Ok(())
}

/// The Aptos contract the flags name.
#[cfg(feature = "aptos")]
fn aptos_chain(a: &AptosArgs) -> Result<std::sync::Arc<dyn cactus_node::chain::ChainBackend>> {
    use cactus_node::chain::aptos::{AptosChain, AptosConfig};
    Ok(AptosChain::connect(AptosConfig {
        url: a.aptos_url.clone().context("--aptos-url")?,
        key_file: a.aptos_key_file.clone().context("--aptos-key-file")?,
        contract: a.contract_address.context("--contract-address")?,
    })?)
}

#[cfg(not(feature = "aptos"))]
fn aptos_chain(_: &AptosArgs) -> Result<std::sync::Arc<dyn cactus_node::chain::ChainBackend>> {
    bail!(
        "this binary was built without the `aptos` feature: cargo build --profile dist --features aptos"
    )
}

/// The batch anchored at `index`, from the chain in `--data-dir` or the
/// router asked over the mesh.
async fn anchor_at(
    source: &SourceArgs,
    index: u64,
) -> Result<Option<cactus_node::protocol::contract::Anchor>> {
    if let Some(dir) = &source.data_dir {
        let state = EmbeddedChain::open_existing(dir)?.state();
        return Ok(usize::try_from(index)
            .ok()
            .and_then(|i| state.anchors.get(i).cloned()));
    }
    if source.reach.is_empty() {
        bail!("no chain to check against: give --bootstrap, --router or --data-dir");
    }
    match ask(source, Query::Anchor(index)).await? {
        QueryAnswer::Anchor(x) => Ok(x),
        _ => bail!("unexpected answer from the router"),
    }
}

/// The grammar `infer`'s flags ask for: a GBNF file, a JSON schema file
/// converted, or any JSON object.
fn infer_grammar(args: &InferArgs) -> Result<Option<String>> {
    use cactus_node::inference::grammar;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    if let Some(path) = &args.grammar_file {
        return Ok(Some(read(path)?));
    }
    if let Some(path) = &args.json_schema {
        let schema: serde_json::Value = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        return Ok(Some(grammar::json_schema(&schema)?));
    }
    Ok(args.json_object.then(grammar::json_object))
}

async fn infer(args: InferArgs) -> Result<()> {
    cli::init_tracing("warn");
    if args.reach.is_empty() {
        bail!("give --bootstrap <multiaddr> (or --router <multiaddr>)");
    }
    let grammar = infer_grammar(&args)?;
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
            top_k: args.top_k,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            presence_penalty: args.presence_penalty,
            frequency_penalty: args.frequency_penalty,
            stop: args.stop,
            logit_bias: args.logit_bias,
            n_probs: 0,
            grammar,
        },
        max_price_per_unit: args.max_price,
        request_id: None,
    };
    spec.validate().context("invalid request")?;
    let key = cactus_node::identity::load_or_create(&args.data.resolve())?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    // Tokens are printed as they arrive; with --json, the whole answer comes
    // at the end, from a result the router checked before any of it was
    // shown.
    let json = args.json;
    let mut print = |chunk: &cactus_protocol::TokenChunk| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(chunk.text.as_bytes());
        let _ = out.flush();
    };
    let live: Option<&mut (dyn FnMut(&cactus_protocol::TokenChunk) + Send)> =
        if json { None } else { Some(&mut print) };
    let (boot, router) = (args.reach.bootstrap, args.reach.router);
    let result = client::submit(key, boot, router, spec, timeout, live).await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            if !json {
                let _ = writeln!(std::io::stdout());
            }
            return Err(e.into());
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&InferJson::from(&result))?)?;
    } else {
        writeln!(out)?;
        let b = &result.receipt.body;
        let resumed = result
            .resumed
            .as_ref()
            .map(|r| {
                format!(
                    " (resumed after {} tokens from a failed orchestrator)",
                    r.tokens.len()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "served by {} via router {}: {} prompt + {} output tokens in {} ms{resumed}; receipt verified",
            b.orchestrator,
            b.router,
            b.prompt_tokens,
            b.output_tokens,
            b.compute_ms
        );
    }
    Ok(())
}

/// The receipt log of a stopped router, which must exist.
fn open_log(args: &LogArgs) -> Result<ReceiptLog> {
    let dir = args.data.resolve();
    if !dir.join(RECEIPT_LOG_FILE).exists() {
        bail!("no receipt log in {} (check --data-dir)", dir.display());
    }
    Ok(ReceiptLog::open(&dir)?)
}

fn fraud(args: LogArgs) -> Result<()> {
    let log = open_log(&args)?;
    let mut out = std::io::stdout().lock();
    for e in log.frauds(args.limit)? {
        let j = FraudJson::from(&e);
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&j)?)?;
            continue;
        }
        let gaps: Vec<String> = j
            .reports
            .iter()
            .map(|r| format!("{}:{:.2}", r.verifier, r.max_gap))
            .collect();
        writeln!(
            out,
            "{} accused={} tolerance={} max_gaps=[{}] evidence={} verified={}",
            e.body.receipt.body.task_id,
            j.accused,
            j.tolerance,
            gaps.join(","),
            j.evidence_hash,
            j.verified
        )?;
    }
    Ok(())
}

fn receipts(args: LogArgs) -> Result<()> {
    let log = open_log(&args)?;
    let mut out = std::io::stdout().lock();
    for r in &log.list(0, args.limit)? {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&ReceiptJson::from(r))?)?;
            continue;
        }
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
    Ok(())
}
