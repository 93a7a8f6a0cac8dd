//! `cactus-node`: run a Cactus node, print its id, submit a task, or read the
//! ledger. The work is all in the library; this only parses and reports.

use anyhow::{Context, Result, bail};
use cactus_node::cli::{self, DataDirArgs, NodeArgs};
use cactus_node::protocol::{PromptFormat, SamplingParams, TaskSpec};
use clap::{Parser, Subcommand};
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
}

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
    let result = cactus_node::client::submit(args.bootstrap, args.router, spec, timeout).await?;
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

fn ledger(args: LedgerArgs) -> Result<()> {
    let dir = args.data.resolve();
    if !dir.join(cactus_node::ledger::LEDGER_FILE).exists() {
        bail!("no ledger in {} (check --data-dir)", dir.display());
    }
    let ledger = cactus_node::ledger::Ledger::open(&dir)?;
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
