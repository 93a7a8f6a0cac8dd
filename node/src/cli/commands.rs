//! The `cactus-node` command line: a node's flags, or a subcommand.
//!
//! Flags that are settings of a node have an environment variable (and so a
//! `--config` key); flags that only make sense for one invocation (the
//! prompt, the sampling of one task, `--json`, `--output`, `--limit`, what to
//! ask and how long to wait) have none, so that a node's config file cannot
//! change what a one-off command asks or prints.

use super::args::{DataDirArgs, MeshArgs, NodeArgs};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use std::path::PathBuf;

/// A node of Cactus, the decentralized AI inference network.
///
/// Without a subcommand, runs a node (an orchestrator unless --role says
/// otherwise) until Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "cactus-node", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// A config file of `CACTUS_*=value` lines (the environment variables of
    /// the flags, e.g. CACTUS_CHAIN=aptos); the environment and flags win. A
    /// key that is no flag's variable is an error.
    #[arg(long, global = true, env = "CACTUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a node (the default).
    Run(NodeArgs),
    /// Prints this node's PeerId, creating its identity if missing.
    Id(DataDirArgs),
    /// Joins the mesh, submits one prompt to a router and prints the answer.
    Infer(InferArgs),
    /// Lists the receipts in a router's receipt log (stop the router first).
    #[command(alias = "ledger")]
    Receipts(LogArgs),
    /// Lists the fraud evidence a router signed (stop the router first): the
    /// accused, the task, each verifier's findings, the hash a slash
    /// recorded, and whether every signature and finding checks out.
    Fraud(LogArgs),
    /// Shows a router's status: its account on the chain, stake and counters
    /// per orchestrator, pending payments (escrow), receipts and anchors.
    Status(StatusArgs),
    /// Exports or verifies receipts with their anchor proofs.
    #[command(subcommand)]
    Receipt(ReceiptCmd),
    /// Shows or changes this node's account on the cluster's ledger (a
    /// router's embedded chain): balance and stake, staking, unstaking,
    /// withdrawing, and, on a ledger started with --dev-faucet, free funds.
    Account(AccountArgs),
    /// Makes, lists and revokes a router's API keys (run on the router's
    /// machine, with its --data-dir): `Authorization: Bearer <key>` charges
    /// an HTTP request to the client account the key names.
    Keys(KeysArgs),
    /// Checks this machine's reachability: listen and observed addresses,
    /// the AutoNAT verdict, relay reservations, a hole punch to a given peer,
    /// and what to do about it, in plain words.
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
pub struct AccountArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: AccountAction,
    /// The node whose account it is (its identity's data dir).
    #[command(flatten)]
    pub data: DataDirArgs,
    /// How to reach the ledger router (`--router` names it).
    #[command(flatten)]
    pub reach: RouterArgs,
    /// Act on the Aptos contract instead, signing with this node's Aptos key.
    #[command(flatten)]
    pub aptos: AptosArgs,
    /// Seconds to wait for the mesh and the answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print the account as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The Aptos contract to act on, for commands that can (`account`): all
/// three, or none for the embedded ledger.
#[derive(Debug, Clone, clap::Args)]
pub struct AptosArgs {
    /// Aptos fullnode REST URL: act on the cactus_payment contract there.
    #[arg(long, env = "CACTUS_APTOS_URL", value_name = "URL", requires_all = ["aptos_key_file", "contract_address"])]
    pub aptos_url: Option<String>,
    /// File holding the account's Aptos ed25519 private key in hex.
    #[arg(long, env = "CACTUS_APTOS_KEY_FILE", value_name = "FILE")]
    pub aptos_key_file: Option<PathBuf>,
    /// Address the cactus_payment module is published at.
    #[arg(long, env = "CACTUS_CONTRACT_ADDRESS", value_name = "ADDRESS", value_parser = super::args::parse_address)]
    pub contract_address: Option<cactus_protocol::contract::Address>,
}

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
    /// The router's data dir, where its keys are kept (hashed).
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// What `cactus-node keys` does.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Makes a key and prints it, this once; requests with it are charged
    /// to ACCOUNT's deposit at this router.
    Create {
        /// The client's account: 0x and 64 hex digits, or the client's
        /// PeerId (its account on an embedded ledger).
        #[arg(long, value_name = "ACCOUNT|PEER_ID")]
        account: String,
        /// A label to find the key by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Lists the keys: id, account, name.
    List,
    /// Revokes the keys with this id (from `list`) or name.
    Revoke {
        /// The key's id or name.
        which: String,
    },
}

/// An account given as 0x and 64 hex digits, or as a PeerId (its account on
/// an embedded ledger).
pub fn parse_account(s: &str) -> Result<cactus_protocol::contract::Address, String> {
    if let Ok(a) = super::args::parse_address(s) {
        return Ok(a);
    }
    s.parse::<libp2p::PeerId>()
        .map(|p| crate::chain::default_account(&p))
        .map_err(|_| format!("expected an account (0x and 64 hex digits) or a PeerId, got {s:?}"))
}

impl AccountAction {
    /// The contract operation this action is, for an account whose PeerId
    /// is `peer`, registered as an orchestrator or not; `server` is the
    /// router a deposit is at when `--at` names none. `None`: a read, or
    /// the faucet (no operation of the contract).
    pub fn op(
        &self,
        peer: &libp2p::PeerId,
        registered: bool,
        server: Option<cactus_protocol::contract::Address>,
    ) -> Result<Option<cactus_protocol::contract::Op>, String> {
        use cactus_protocol::contract::Op;
        let at = |at: &Option<cactus_protocol::contract::Address>| {
            at.or(server)
                .ok_or_else(|| "name the router with --at <its account>".to_owned())
        };
        Ok(Some(match self {
            Self::Balance | Self::Faucet => return Ok(None),
            Self::Stake { amount } if registered => Op::AddStake { amount: *amount },
            Self::Stake { amount } => Op::RegisterOrchestrator {
                peer_id: peer.to_bytes(),
                amount: *amount,
            },
            Self::Unstake { amount } => Op::RequestUnstake { amount: *amount },
            Self::Withdraw => Op::Withdraw,
            Self::Expire { task_id } => {
                let mut id = [0u8; 16];
                hex::decode_to_slice(task_id.trim(), &mut id)
                    .map_err(|_| "the task id is 32 hex characters".to_owned())?;
                Op::ExpireTask {
                    task_id: id.to_vec(),
                }
            }
            Self::Deposit { amount, at: a } => Op::Deposit {
                server: at(a)?,
                amount: *amount,
            },
            Self::WithdrawDeposit { amount, at: a } => Op::WithdrawDeposit {
                server: at(a)?,
                amount: *amount,
            },
            Self::BindPeer => Op::BindClientPeer {
                peer_id: peer.to_bytes(),
            },
            Self::Cap { max_price_per_unit } => Op::SetMaxPrice {
                max_price_per_unit: *max_price_per_unit,
            },
        }))
    }
}

/// What `cactus-node account` does.
#[derive(Debug, Clone, Subcommand)]
pub enum AccountAction {
    /// Shows the balance, and the stake if registered as an orchestrator.
    Balance,
    /// Development ledgers only: tops the balance up from the faucet.
    Faucet,
    /// Stakes `AMOUNT` from the balance (registering as an orchestrator the
    /// first time).
    Stake {
        /// Amount, in the chain's smallest unit.
        amount: u64,
    },
    /// Starts unbonding `AMOUNT` of the stake.
    Unstake {
        /// Amount, in the chain's smallest unit.
        amount: u64,
    },
    /// Withdraws unbonded stake once its unbonding period has passed.
    Withdraw,
    /// Deposits `AMOUNT` from the balance at a router, as a client: that
    /// router escrows this account's tasks from it.
    Deposit {
        /// Amount, in the chain's smallest unit.
        amount: u64,
        /// The router: its PeerId, or its account (0x...; needed on
        /// Aptos) [default: the ledger's own router].
        #[arg(long, value_name = "PEER_ID|ACCOUNT", value_parser = parse_account)]
        at: Option<cactus_protocol::contract::Address>,
    },
    /// Takes `AMOUNT` of a deposit back to the balance.
    WithdrawDeposit {
        /// Amount, in the chain's smallest unit.
        amount: u64,
        /// The router: its PeerId, or its account (0x...; needed on
        /// Aptos) [default: the ledger's own router].
        #[arg(long, value_name = "PEER_ID|ACCOUNT", value_parser = parse_account)]
        at: Option<cactus_protocol::contract::Address>,
    },
    /// Names this node's PeerId as the one whose tasks over the mesh this
    /// account pays for (on Aptos, where a PeerId names no account, a
    /// client does this once before `infer`).
    BindPeer,
    /// Sets the most this account pays per work unit as a client: no
    /// router may open a task for it at a higher price.
    Cap {
        /// Price per work unit, in the chain's smallest unit.
        max_price_per_unit: u64,
    },
    /// Expires a task still pending a day after its creation (anyone may):
    /// its escrow goes back to whoever paid it.
    Expire {
        /// The task id (32 hex characters).
        task_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Also try to connect to this peer (e.g. another node's /p2p-circuit
    /// address) and report whether hole punching made the connection direct.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Option<Multiaddr>,
    /// Seconds to observe at most.
    #[arg(long, default_value_t = 20)]
    pub wait: u64,
    /// Print the findings as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How a one-off command reaches a router: join the mesh and find one on
/// the DHT, or dial the one given.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// A peer to join through, to find a router on the DHT (repeatable).
    #[arg(
        long = "bootstrap",
        env = "CACTUS_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<Multiaddr>,
    /// Use this router instead of looking one up on the DHT.
    #[arg(long, value_name = "MULTIADDR")]
    pub router: Option<Multiaddr>,
}

impl RouterArgs {
    /// Whether neither a bootstrap peer nor a router is given.
    pub fn is_empty(&self) -> bool {
        self.bootstrap.is_empty() && self.router.is_none()
    }
}

/// Where to read a router's state: over the mesh from a running router, or
/// from the data dir of a stopped one.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub reach: RouterArgs,
    /// Read the files of a stopped router in this data dir instead (its
    /// receipt log and embedded chain). No environment variable: it selects
    /// where to read, so it is given explicitly.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["bootstrap", "router"])]
    pub data_dir: Option<PathBuf>,
    /// Seconds to wait for the router.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReceiptCmd {
    /// Writes a task's receipt and anchor proof as JSON.
    Get {
        /// The task id (hex).
        task_id: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Checks a receipt file: both signatures, the Merkle proof, and that its
    /// root is the one anchored on the chain. Says which check failed.
    Verify {
        /// A file written by `cactus-node receipt get`.
        file: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        /// Read the anchor from this node's ledger (the router keeping the
        /// cluster's chain) rather than take the router's word for it.
        #[arg(long, value_name = "MULTIADDR", conflicts_with = "data_dir")]
        ledger: Option<Multiaddr>,
        /// Read the anchor from the Aptos contract itself.
        #[command(flatten)]
        aptos: AptosArgs,
        /// Print the checks as one JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub reach: RouterArgs,
    /// The client's identity: its account's deposit at the router pays for
    /// the task (`cactus-node account deposit`).
    #[command(flatten)]
    pub data: DataDirArgs,
    /// The most to pay per work unit: no orchestrator asking more is
    /// picked [default: the cap set on the ledger, if any].
    #[arg(long, value_name = "UNITS")]
    pub max_price: Option<u64>,
    /// What to ask (through the model's chat template unless --raw).
    #[arg(long)]
    pub prompt: String,
    /// Model name or sha256 [default: whatever the router can serve].
    #[arg(long)]
    pub model: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy and deterministic.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repeat penalty over the last 64 tokens (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Presence penalty, -2..2.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty, -2..2.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Stop before this string (repeat for several, up to 4).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Bias a token's logit: TOKEN_ID=BIAS, BIAS in -100..100 (repeatable).
    #[arg(long = "logit-bias", value_name = "ID=BIAS", value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// A llama.cpp GBNF grammar file the answer must follow (root rule `root`).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar_file: Option<PathBuf>,
    /// A JSON schema file the answer must follow (converted to a grammar).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<PathBuf>,
    /// The answer must be a JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// Send the prompt as it is instead of through the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print one JSON object: text, orchestrator, router and receipt.
    #[arg(long)]
    pub json: bool,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TOKEN_ID=BIAS, got {s:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("token id {id:?}: {e}"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|e| format!("bias {bias:?}: {e}"))?;
    Ok((id, bias))
}

/// A stopped router's receipt log, read from its data dir.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Print JSON lines, one entry each.
    #[arg(long)]
    pub json: bool,
    /// Most entries to print.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::contract::{Address, Op};

    #[test]
    fn account_actions_are_the_contracts_operations() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let router = Address([5; 32]);
        let op = |action: AccountAction, registered| action.op(&peer, registered, Some(router));
        assert_eq!(op(AccountAction::Balance, false), Ok(None));
        assert_eq!(op(AccountAction::Faucet, false), Ok(None));
        assert_eq!(
            op(AccountAction::Stake { amount: 9 }, false),
            Ok(Some(Op::RegisterOrchestrator {
                peer_id: peer.to_bytes(),
                amount: 9
            }))
        );
        assert_eq!(
            op(AccountAction::Stake { amount: 9 }, true),
            Ok(Some(Op::AddStake { amount: 9 }))
        );
        let elsewhere = Address([6; 32]);
        assert_eq!(
            op(
                AccountAction::Deposit {
                    amount: 3,
                    at: Some(elsewhere)
                },
                false
            ),
            Ok(Some(Op::Deposit {
                server: elsewhere,
                amount: 3
            }))
        );
        assert_eq!(
            op(
                AccountAction::WithdrawDeposit {
                    amount: 2,
                    at: None
                },
                false
            ),
            Ok(Some(Op::WithdrawDeposit {
                server: router,
                amount: 2
            }))
        );
        assert!(
            AccountAction::Deposit {
                amount: 3,
                at: None
            }
            .op(&peer, false, None)
            .is_err(),
            "on Aptos the router must be named"
        );
        assert!(
            op(
                AccountAction::Expire {
                    task_id: "xyz".into()
                },
                false
            )
            .is_err()
        );
        assert_eq!(
            parse_account(&peer.to_string()),
            Ok(crate::chain::default_account(&peer))
        );
        assert_eq!(parse_account(&router.to_hex()), Ok(router));
    }
}
