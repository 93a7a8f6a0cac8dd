//! The Aptos ledger backend: the `cactus_payment` module deployed at a
//! contract address, driven through a fullnode's REST API.
//!
//! - Operations are entry-function transactions
//!   `<contract>::cactus_payment::<fn>` whose arguments are BCS-encoded from
//!   the [`abi`] mapping, signed with this node's ed25519 account key, submitted
//!   and waited for. A Move abort raised by `cactus_payment` comes back as
//!   [`ChainError::Abort`] with the same [`Abort`] the embedded ledger would
//!   give; any other failure is [`ChainError::Backend`].
//! - Reads are calls of the module's `#[view]` functions through the REST view
//!   endpoint, whose JSON results are parsed into the `cactus_protocol::contract`
//!   types. A view that aborts because the thing is unknown (`E_NOT_REGISTERED`,
//!   `E_TASK_NOT_FOUND`, ..) reads as `None`.
//!
//! Transactions of one [`AptosChain`] are given consecutive sequence numbers
//! under a lock held only while signing and submitting, so several can be in
//! flight at once; the number is re-read from the node after a failed
//! submission. Another process signing with the same key at the same time
//! makes submissions fail once, after which they are retried with a fresh
//! number.
//!
//! Every response is read with a byte cap ([`MAX_RESPONSE_BYTES`]) and every
//! request has a timeout ([`REQUEST_TIMEOUT`]); nothing here blocks the async
//! runtime except [`AptosChain::connect`], which reads the key file and is
//! meant for start-up.

use super::abi::{self, Call, MoveValue, View};
use super::{ChainBackend, ChainError};
use aptos_sdk::account::Ed25519Account;
use aptos_sdk::config::{AptosConfig as SdkConfig, PoolConfig};
use aptos_sdk::transaction::{
    EntryFunction, TransactionBuilder, TransactionPayload, sign_transaction,
};
use aptos_sdk::types::{AccountAddress, HashValue, Identifier, MoveModuleId};
use aptos_sdk::{Aptos, AptosError as SdkError};
use cactus_protocol::contract::{
    Abort, Address, Anchor, Config, Op, Orchestrator, Task, TaskStatus, Totals,
};
use cactus_protocol::{Digest, TaskId};
use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use serde_json::Value;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Largest key file read: a hex ed25519 private key with a prefix and a
/// newline is under 100 bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 1024;
/// Largest REST response body read. Views and transactions of this module
/// are a few KiB; the SDK aborts a body over the cap while streaming it.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Timeout of one HTTP request to the node.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Gas units a transaction may use at most. The module's heaviest call
/// (`complete_task` with two delegates: four fungible-asset transfers) uses
/// a few thousand.
pub const MAX_GAS_AMOUNT: u64 = 200_000;
/// A transaction not executed this long after signing expires.
pub const TX_EXPIRATION_SECS: u64 = 60;
/// How long to wait for a submitted transaction: past its expiration, so a
/// transaction still unknown by then will never execute.
pub const TX_WAIT: Duration = Duration::from_secs(TX_EXPIRATION_SECS + 30);

/// Where the contract is and who signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptosConfig {
    /// The fullnode's REST URL, e.g. `https://fullnode.testnet.aptoslabs.com/v1`;
    /// a URL with no path gets `/v1`.
    pub url: String,
    /// A file holding this node's ed25519 private key in hex (`0x` prefix
    /// and AIP-80 `ed25519-priv-` prefix optional), readable by its owner only.
    pub key_file: PathBuf,
    /// The address `cactus_payment` is published at.
    pub contract: Address,
}

/// Why the Aptos backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AptosError {
    /// The key file could not be read.
    #[error("{path}: {source} (check the Aptos key file)")]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The key file is open to group or others.
    #[error("{path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is larger than any key.
    #[error("{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not an ed25519 private key in hex")]
    KeyTooLarge {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not hex.
    #[error("{path} is not an ed25519 private key in hex (64 hex digits, optional 0x prefix)")]
    KeyNotHex {
        /// The key file.
        path: PathBuf,
    },
    /// The key has the wrong length.
    #[error("{path} holds {len} bytes of hex; an ed25519 private key is 32 bytes (64 hex digits)")]
    KeyLength {
        /// The key file.
        path: PathBuf,
        /// Bytes found.
        len: usize,
    },
    /// The node URL is unusable.
    #[error("Aptos node URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `Op::Mint`, or `Op::Initialize` through `submit`.
    #[error("{0}")]
    NoCall(#[from] abi::AbiError),
    /// The contract aborted.
    #[error(transparent)]
    Abort(#[from] Abort),
    /// A transaction executed and failed other than by a `cactus_payment` abort.
    #[error("{function}: transaction {hash} failed: {vm_status}")]
    Execution {
        /// The entry function.
        function: &'static str,
        /// The transaction.
        hash: String,
        /// The node's explanation.
        vm_status: String,
    },
    /// A view returned something else than its Move return type.
    #[error("view {function}: unexpected result: {reason}")]
    BadView {
        /// The view function.
        function: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The node or the SDK failed.
    #[error("{during}: {source}")]
    Node {
        /// What was being done.
        during: String,
        /// The SDK's error.
        source: SdkError,
    },
}

impl From<AptosError> for ChainError {
    fn from(e: AptosError) -> Self {
        match e {
            AptosError::Abort(a) => ChainError::Abort(a),
            other => ChainError::Backend(other.to_string()),
        }
    }
}

fn node_err(during: impl Into<String>) -> impl FnOnce(SdkError) -> AptosError {
    let during = during.into();
    move |source| AptosError::Node { during, source }
}

/// A `cactus_payment` module on an Aptos network, and the account that signs.
#[derive(Debug)]
pub struct AptosChain {
    client: Aptos,
    signer: Ed25519Account,
    account: Address,
    contract: Address,
    /// The sequence number of the next transaction, once known. Held while a
    /// transaction is signed and submitted, so numbers are never reused.
    next_seq: Mutex<Option<u64>>,
}

impl AptosChain {
    /// Loads the key, derives the account address (the default
    /// authentication-key address of the ed25519 key; rotated keys are not
    /// supported) and prepares the REST client. Contacts no node. Reads the key
    /// file: call it at start-up, not from a busy async task.
    pub fn connect(config: AptosConfig) -> Result<Arc<Self>, ChainError> {
        let signer = load_key(&config.key_file)?;
        let url = rest_url(&config.url)?;
        let sdk = SdkConfig::custom(&url)
            .map_err(|e| AptosError::Url {
                url: config.url.clone(),
                reason: e.to_string(),
            })?
            .with_timeout(REQUEST_TIMEOUT)
            .with_pool(
                PoolConfig::builder()
                    .max_response_size(MAX_RESPONSE_BYTES)
                    .build(),
            );
        let client = Aptos::new(sdk).map_err(node_err("creating the HTTP client"))?;
        let account = Address(signer.address().to_bytes());
        tracing::info!(%account, contract = %config.contract, url, "Aptos ledger backend");
        Ok(Arc::new(Self {
            client,
            signer,
            account,
            contract: config.contract,
            next_seq: Mutex::new(None),
        }))
    }

    /// The contract address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// Runs `initialize` with `config` and the payment asset `asset` (its
    /// fungible-asset metadata object). The signer must be the contract's
    /// account.
    pub async fn initialize(&self, config: &Config, asset: Address) -> Result<(), ChainError> {
        let call = abi::entry_call(&Op::Initialize(config.clone()), Some(asset))
            .map_err(AptosError::from)?;
        Ok(self.execute(&call).await?)
    }

    /// The payment `complete_task` would make now (the `quote_payment` view).
    pub async fn quote_payment(
        &self,
        orchestrator: Address,
        price_per_unit: u64,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        max_payment: u64,
    ) -> Result<Option<u64>, ChainError> {
        let view = View::QuotePayment {
            orchestrator,
            price_per_unit,
            prompt_tokens,
            output_tokens,
            compute_ms,
            max_payment,
        };
        let call = abi::view_call(&view);
        match self.view(&call).await {
            Ok(values) => Ok(Some(Parsed::new(&call, &values, 1)?.u64(0)?)),
            Err(AptosError::Abort(Abort::NotRegistered | Abort::NotInitialized)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Signs, submits and waits for one entry-function call.
    #[tracing::instrument(skip_all, fields(function = call.name()))]
    async fn execute(&self, call: &Call) -> Result<(), AptosError> {
        let payload = TransactionPayload::from(entry_function(&self.contract, call)?);
        let hash = self.sign_and_submit(payload).await?;
        tracing::debug!(%hash, "transaction submitted");
        match self
            .client
            .fullnode()
            .wait_for_transaction(&hash, Some(TX_WAIT))
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ExecutionFailed { vm_status }) => {
                match abort_in_module(&vm_status, &self.contract) {
                    Some(abort) => Err(AptosError::Abort(abort)),
                    None => Err(AptosError::Execution {
                        function: call.name(),
                        hash: hash.to_string(),
                        vm_status,
                    }),
                }
            }
            Err(e) => {
                // The transaction may have expired unexecuted, leaving its
                // sequence number unused: read it again next time.
                *self.next_seq.lock().await = None;
                Err(node_err(format!(
                    "{}: waiting for transaction {hash}",
                    call.name()
                ))(e))
            }
        }
    }

    async fn sign_and_submit(&self, payload: TransactionPayload) -> Result<HashValue, AptosError> {
        let sender = self.signer.address();
        let mut next = self.next_seq.lock().await;
        let mut retried = false;
        loop {
            let known = *next;
            let (seq, gas, chain_id) = tokio::join!(
                async {
                    match known {
                        Some(seq) => Ok(seq),
                        None => match self.client.get_sequence_number(sender).await {
                            // An account the chain has not seen yet starts at 0.
                            Err(SdkError::Api {
                                status_code: 404, ..
                            }) => Ok(0),
                            other => other,
                        },
                    }
                },
                self.client.fullnode().estimate_gas_price(),
                self.client.ensure_chain_id(),
            );
            let seq = seq.map_err(node_err("reading the account's sequence number"))?;
            let gas = gas
                .map_err(node_err("estimating the gas price"))?
                .data
                .recommended();
            let chain_id = chain_id.map_err(node_err("reading the chain id"))?;
            let raw = TransactionBuilder::new()
                .sender(sender)
                .sequence_number(seq)
                .payload(payload.clone())
                .max_gas_amount(MAX_GAS_AMOUNT)
                .gas_unit_price(gas)
                .chain_id(chain_id)
                .expiration_from_now(TX_EXPIRATION_SECS)
                .build()
                .map_err(node_err("building the transaction"))?;
            let signed = sign_transaction(&raw, &self.signer)
                .map_err(node_err("signing the transaction"))?;
            match self.client.submit_transaction(&signed).await {
                Ok(pending) => {
                    *next = Some(seq.saturating_add(1));
                    return Ok(pending.data.hash);
                }
                Err(e) => {
                    *next = None;
                    // Someone else used the account meanwhile: once more with
                    // the number the node has now.
                    if !retried && is_sequence_error(&e) {
                        retried = true;
                        continue;
                    }
                    return Err(node_err("submitting the transaction")(e));
                }
            }
        }
    }

    /// Calls a view; an abort raised by the module becomes [`AptosError::Abort`].
    async fn view(&self, call: &Call) -> Result<Vec<Value>, AptosError> {
        let function = function_id(&self.contract, call.name());
        let args = call.args.iter().map(json_arg).collect();
        match self.client.view(&function, vec![], args).await {
            Ok(values) => Ok(values),
            Err(e) => {
                if let SdkError::Api { message, .. } = &e
                    && let Some(abort) = abort_in_module(message, &self.contract)
                {
                    return Err(AptosError::Abort(abort));
                }
                Err(node_err(format!("calling view {function}"))(e))
            }
        }
    }

    /// Calls a view whose abort with one of `absent` means "nothing there".
    async fn view_opt(
        &self,
        call: &Call,
        absent: &[Abort],
    ) -> Result<Option<Vec<Value>>, AptosError> {
        match self.view(call).await {
            Ok(values) => Ok(Some(values)),
            Err(AptosError::Abort(a)) if absent.contains(&a) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_config(&self) -> Result<Option<Config>, AptosError> {
        let call = abi::view_call(&View::Config);
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(None);
        };
        parse_config(&call, &values).map(Some)
    }

    async fn get_orchestrator(&self, who: Address) -> Result<Option<Orchestrator>, AptosError> {
        let call = abi::view_call(&View::Orchestrator(who));
        let absent = [Abort::NotRegistered, Abort::NotInitialized];
        let Some(values) = self.view_opt(&call, &absent).await? else {
            return Ok(None);
        };
        parse_orchestrator(&call, &values).map(Some)
    }

    async fn get_is_server(&self, who: Address) -> Result<bool, AptosError> {
        let call = abi::view_call(&View::IsServer(who));
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(false);
        };
        Parsed::new(&call, &values, 1)?.bool(0)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, AptosError> {
        let call = abi::view_call(&View::Task(id));
        let absent = [Abort::TaskNotFound, Abort::NotInitialized];
        let Some(values) = self.view_opt(&call, &absent).await? else {
            return Ok(None);
        };
        parse_task(&call, &values).map(Some)
    }

    async fn get_totals(&self) -> Result<Totals, AptosError> {
        let call = abi::view_call(&View::Totals);
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok((0, 0, 0));
        };
        let p = Parsed::new(&call, &values, 3)?;
        Ok((p.u64(0)?, p.u64(1)?, p.u64(2)?))
    }

    async fn get_anchor_count(&self) -> Result<u64, AptosError> {
        let call = abi::view_call(&View::AnchorCount);
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(0);
        };
        Parsed::new(&call, &values, 1)?.u64(0)
    }

    async fn get_anchor(&self, index: u64) -> Result<Option<Anchor>, AptosError> {
        let call = abi::view_call(&View::Anchor(index));
        // `get_anchor` aborts with E_INVALID_ARGUMENT past the last anchor.
        let absent = [Abort::InvalidArgument, Abort::NotInitialized];
        let Some(values) = self.view_opt(&call, &absent).await? else {
            return Ok(None);
        };
        parse_anchor(&call, &values).map(Some)
    }

    async fn check_admission(&self, peer: PeerId, account: Address) -> Result<bool, AptosError> {
        let (orchestrator, config) =
            tokio::join!(self.get_orchestrator(account), self.get_config());
        let (Some(orchestrator), Some(config)) = (orchestrator?, config?) else {
            return Ok(false);
        };
        Ok(orchestrator.peer_id == peer.to_bytes() && orchestrator.stake >= config.min_stake)
    }
}

impl ChainBackend for AptosChain {
    fn account(&self) -> Address {
        self.account
    }

    fn submit(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        async move {
            let call = abi::entry_call(&op, None).map_err(AptosError::from)?;
            Ok(self.execute(&call).await?)
        }
        .boxed()
    }

    fn config(&self) -> BoxFuture<'_, Result<Option<Config>, ChainError>> {
        async move { Ok(self.get_config().await?) }.boxed()
    }

    fn orchestrator(
        &self,
        who: Address,
    ) -> BoxFuture<'_, Result<Option<Orchestrator>, ChainError>> {
        async move { Ok(self.get_orchestrator(who).await?) }.boxed()
    }

    fn is_server(&self, who: Address) -> BoxFuture<'_, Result<bool, ChainError>> {
        async move { Ok(self.get_is_server(who).await?) }.boxed()
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Task>, ChainError>> {
        async move { Ok(self.get_task(id).await?) }.boxed()
    }

    fn totals(&self) -> BoxFuture<'_, Result<Totals, ChainError>> {
        async move { Ok(self.get_totals().await?) }.boxed()
    }

    fn anchor_count(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move { Ok(self.get_anchor_count().await?) }.boxed()
    }

    fn anchor(&self, index: u64) -> BoxFuture<'_, Result<Option<Anchor>, ChainError>> {
        async move { Ok(self.get_anchor(index).await?) }.boxed()
    }

    /// On chain, admission is read, never granted: the orchestrator must have
    /// registered itself with this PeerId, and its stake must reach
    /// `min_stake`. `declared_stake` is ignored.
    fn admit(
        &self,
        peer: PeerId,
        account: Address,
        _declared_stake: u64,
    ) -> BoxFuture<'_, Result<bool, ChainError>> {
        async move { Ok(self.check_admission(peer, account).await?) }.boxed()
    }
}

// ------------------------------------------------------------------ key file

/// Reads an ed25519 private key in hex from `path`: at most
/// [`MAX_KEY_FILE_BYTES`], surrounding whitespace ignored, an optional `0x`
/// (or AIP-80 `ed25519-priv-0x`) prefix. On unix the file must not be
/// accessible by group or others.
pub fn load_key(path: &Path) -> Result<Ed25519Account, AptosError> {
    let io_err = |source| AptosError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AptosError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(AptosError::KeyTooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let parsed = if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        Err(AptosError::KeyTooLarge {
            path: path.to_path_buf(),
        })
    } else {
        parse_key(&bytes, path)
    };
    // Best effort: do not leave the key's hex in freed memory.
    bytes.fill(0);
    std::hint::black_box(&bytes);
    let mut key = parsed?;
    let account = Ed25519Account::from_private_key_bytes(&key);
    key.fill(0);
    std::hint::black_box(&key);
    account.map_err(node_err(format!("{}: loading the key", path.display())))
}

fn parse_key(bytes: &[u8], path: &Path) -> Result<[u8; 32], AptosError> {
    let not_hex = || AptosError::KeyNotHex {
        path: path.to_path_buf(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| not_hex())?.trim();
    let text = text.strip_prefix("ed25519-priv-").unwrap_or(text);
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_hex());
    }
    if digits.len() != 64 {
        return Err(AptosError::KeyLength {
            path: path.to_path_buf(),
            len: digits.len() / 2,
        });
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(digits, &mut key).map_err(|_| not_hex())?;
    Ok(key)
}

/// `url`, with `/v1` when it has no path.
fn rest_url(url: &str) -> Result<String, AptosError> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(|| AptosError::Url {
        url: url.to_owned(),
        reason: "expected http:// or https://".into(),
    })?;
    if !matches!(scheme, "http" | "https") {
        return Err(AptosError::Url {
            url: url.to_owned(),
            reason: "expected http:// or https://".into(),
        });
    }
    Ok(if rest.trim_end_matches('/').contains('/') {
        url.to_owned()
    } else {
        format!("{}/v1", url.trim_end_matches('/'))
    })
}

// ------------------------------------------------------------------ payloads

/// `0x<64 hex>::cactus_payment::<name>`.
fn function_id(contract: &Address, name: &str) -> String {
    format!("{}::{}::{}", contract.to_hex(), abi::MODULE, name)
}

/// The entry-function payload of `call` on the module at `contract`.
pub fn entry_function(contract: &Address, call: &Call) -> Result<EntryFunction, AptosError> {
    let module = Identifier::new(abi::MODULE).map_err(node_err("module name"))?;
    let module = MoveModuleId::new(AccountAddress::new(contract.0), module);
    let args = call.args.iter().map(bcs_arg).collect();
    Ok(EntryFunction::new(module, call.name(), vec![], args))
}

/// ULEB128, the length prefix of BCS sequences.
fn uleb128(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The BCS encoding of one argument, as the Move VM decodes it for the
/// parameter's type. `Object<T>` is a struct holding one address.
pub fn bcs_arg(value: &MoveValue) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        MoveValue::U8(v) => out.push(*v),
        MoveValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MoveValue::Address(a) | MoveValue::Object(a) => out.extend_from_slice(&a.0),
        MoveValue::Bytes(b) => {
            uleb128(&mut out, b.len());
            out.extend_from_slice(b);
        }
        MoveValue::AddressVec(v) => {
            uleb128(&mut out, v.len());
            for a in v {
                out.extend_from_slice(&a.0);
            }
        }
    }
    out
}

/// One view argument as the REST API's JSON takes it: `u64` as a decimal
/// string, addresses and `vector<u8>` as `0x` hex.
fn json_arg(value: &MoveValue) -> Value {
    match value {
        MoveValue::U8(v) => Value::from(*v),
        MoveValue::U64(v) => Value::String(v.to_string()),
        MoveValue::Address(a) | MoveValue::Object(a) => Value::String(a.to_hex()),
        MoveValue::Bytes(b) => Value::String(format!("0x{}", hex::encode(b))),
        MoveValue::AddressVec(v) => {
            Value::Array(v.iter().map(|a| Value::String(a.to_hex())).collect())
        }
    }
}

fn is_sequence_error(e: &SdkError) -> bool {
    matches!(e, SdkError::Api { message, .. } if message.contains("SEQUENCE_NUMBER"))
}

// ------------------------------------------------------------------ aborts

/// The `cactus_payment` abort a VM status describes, as the REST API writes
/// it: `Move abort in 0xcafe::cactus_payment: E_NAME(0x8): description`, or
/// `Move abort in 0xcafe::cactus_payment: 0x8` without an error map. Aborts in
/// other modules, or in a module of the same name at another address, are
/// not ours: `None`.
pub fn abort_in_module(vm_status: &str, contract: &Address) -> Option<Abort> {
    const PREFIX: &str = "Move abort in ";
    let start = vm_status.find(PREFIX)? + PREFIX.len();
    let (location, rest) = vm_status[start..].split_once(": ")?;
    let (address, module) = location.split_once("::")?;
    if module != abi::MODULE || parse_address(address)? != *contract {
        return None;
    }
    let rest = rest.trim_start();
    // `0x8`, or the code in the parentheses after the reason's name.
    let code = match rest.strip_prefix("0x") {
        Some(code) => code,
        None => {
            let open = rest.find('(')?;
            let close = open + rest[open..].find(')')?;
            rest[open + 1..close].strip_prefix("0x")?
        }
    };
    let digits = &code[..code
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(code.len())];
    abi::abort_from_code(u64::from_str_radix(digits, 16).ok()?)
}

/// `0x` + 1..=64 hex digits, left-padded (the API shortens some addresses).
fn parse_address(text: &str) -> Option<Address> {
    let digits = text.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{digits:0>64}");
    let mut out = [0u8; 32];
    hex::decode_to_slice(padded, &mut out).ok()?;
    Some(Address(out))
}

// ------------------------------------------------------------------ views

/// A view's JSON result, checked for arity, read by position.
struct Parsed<'a> {
    function: &'static str,
    values: &'a [Value],
}

impl<'a> Parsed<'a> {
    fn new(call: &Call, values: &'a [Value], arity: usize) -> Result<Self, AptosError> {
        let p = Self {
            function: call.name(),
            values,
        };
        if values.len() != arity {
            return Err(p.bad(format!("{} values, expected {arity}", values.len())));
        }
        Ok(p)
    }

    fn bad(&self, reason: String) -> AptosError {
        AptosError::BadView {
            function: self.function,
            reason,
        }
    }

    fn at(&self, i: usize) -> Result<&'a Value, AptosError> {
        self.values
            .get(i)
            .ok_or_else(|| self.bad(format!("no value {i}")))
    }

    /// `u64` comes as a decimal string; small integers may come as numbers.
    fn u64(&self, i: usize) -> Result<u64, AptosError> {
        let v = self.at(i)?;
        let n = match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        n.ok_or_else(|| self.bad(format!("value {i} is not a u64: {v}")))
    }

    fn u8(&self, i: usize) -> Result<u8, AptosError> {
        let n = self.u64(i)?;
        u8::try_from(n).map_err(|_| self.bad(format!("value {i} is not a u8: {n}")))
    }

    fn bool(&self, i: usize) -> Result<bool, AptosError> {
        let v = self.at(i)?;
        v.as_bool()
            .ok_or_else(|| self.bad(format!("value {i} is not a bool: {v}")))
    }

    fn address(&self, i: usize) -> Result<Address, AptosError> {
        let v = self.at(i)?;
        v.as_str()
            .and_then(parse_address)
            .ok_or_else(|| self.bad(format!("value {i} is not an address: {v}")))
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, AptosError> {
        let v = self.at(i)?;
        v.as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| self.bad(format!("value {i} is not a vector<u8> in hex: {v}")))
    }

    fn array<const N: usize>(&self, i: usize) -> Result<[u8; N], AptosError> {
        let b = self.bytes(i)?;
        <[u8; N]>::try_from(b.as_slice())
            .map_err(|_| self.bad(format!("value {i} is {} bytes, expected {N}", b.len())))
    }
}

fn parse_config(call: &Call, values: &[Value]) -> Result<Config, AptosError> {
    let p = Parsed::new(call, values, 10)?;
    Ok(Config {
        min_stake: p.u64(0)?,
        unbonding_secs: p.u64(1)?,
        max_slash_bps: p.u64(2)?,
        reporter_bps: p.u64(3)?,
        treasury: p.address(4)?,
        prompt_weight: p.u64(5)?,
        output_weight: p.u64(6)?,
        price_per_ms: p.u64(7)?,
        ms_cap_per_unit: p.u64(8)?,
        delegation_fee_bps: p.u64(9)?,
    })
}

fn parse_orchestrator(call: &Call, values: &[Value]) -> Result<Orchestrator, AptosError> {
    let p = Parsed::new(call, values, 7)?;
    Ok(Orchestrator {
        peer_id: p.bytes(0)?,
        stake: p.u64(1)?,
        unbonding: p.u64(2)?,
        unlock_at: p.u64(3)?,
        successes: p.u64(4)?,
        failures: p.u64(5)?,
        compute_ms: p.u64(6)?,
    })
}

/// `get_task` does not return the failure reason: it reads as 0.
fn parse_task(call: &Call, values: &[Value]) -> Result<Task, AptosError> {
    let p = Parsed::new(call, values, 6)?;
    let status = match p.u8(4)? {
        0 => TaskStatus::Pending,
        1 => TaskStatus::Completed,
        2 => TaskStatus::Failed,
        other => return Err(p.bad(format!("unknown task status {other}"))),
    };
    Ok(Task {
        server: p.address(0)?,
        orchestrator: p.address(1)?,
        price_per_unit: p.u64(2)?,
        escrow: p.u64(3)?,
        status,
        payment: p.u64(5)?,
        reason: 0,
    })
}

fn parse_anchor(call: &Call, values: &[Value]) -> Result<Anchor, AptosError> {
    let p = Parsed::new(call, values, 6)?;
    Ok(Anchor {
        server: p.address(0)?,
        root: Digest(p.array::<32>(1)?),
        count: p.u64(2)?,
        first_task: TaskId(p.array::<16>(3)?),
        last_task: TaskId(p.array::<16>(4)?),
        anchored_at: p.u64(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONTRACT: Address = Address([0xca; 32]);

    fn config() -> Config {
        Config {
            min_stake: 1_000,
            unbonding_secs: 60,
            max_slash_bps: 5_000,
            reporter_bps: 1_000,
            treasury: Address([0xee; 32]),
            prompt_weight: 1,
            output_weight: 4,
            price_per_ms: 2,
            ms_cap_per_unit: 3,
            delegation_fee_bps: 1_000,
        }
    }

    fn every_chain_op() -> Vec<Op> {
        vec![
            Op::SetConfig(config()),
            Op::RegisterOrchestrator {
                peer_id: vec![7; 38],
                amount: 5,
            },
            Op::AddStake { amount: 6 },
            Op::RequestUnstake { amount: 7 },
            Op::Withdraw,
            Op::AuthorizeServer {
                server: Address([1; 32]),
            },
            Op::RevokeServer {
                server: Address([2; 32]),
            },
            Op::CreateTask {
                task_id: vec![3; 16],
                orchestrator: Address([4; 32]),
                price_per_unit: 8,
                max_payment: 9,
            },
            Op::CompleteTask {
                task_id: vec![3; 16],
                prompt_tokens: 10,
                output_tokens: 11,
                compute_ms: 12,
                delegates: vec![Address([5; 32]), Address([6; 32])],
                receipt_hash: vec![9; 32],
            },
            Op::FailTask {
                task_id: vec![3; 16],
                reason: 2,
            },
            Op::Slash {
                orchestrator: Address([4; 32]),
                ratio_bps: 500,
                evidence_hash: vec![8; 32],
            },
            Op::AnchorReceipts {
                merkle_root: vec![1; 32],
                count: 3,
                first_task: vec![2; 16],
                last_task: vec![3; 16],
            },
        ]
    }

    fn payload(op: &Op) -> EntryFunction {
        entry_function(
            &CONTRACT,
            &abi::entry_call(op, Some(Address([0xaa; 32]))).unwrap(),
        )
        .unwrap()
    }

    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    #[test]
    fn every_op_builds_a_payload_for_its_function() {
        let mut ops = every_chain_op();
        ops.push(Op::Initialize(config()));
        for op in &ops {
            let call = abi::entry_call(op, Some(Address([0xaa; 32]))).unwrap();
            let ef = payload(op);
            assert_eq!(
                ef.module.to_string(),
                format!("{}::cactus_payment", AccountAddress::new(CONTRACT.0))
            );
            assert_eq!(ef.function, call.name());
            assert!(ef.type_args.is_empty());
            assert_eq!(ef.args.len(), call.function.arg_types().len(), "{op:?}");
            // Each argument is what the SDK's own BCS encoder makes of the value.
            for (arg, value) in ef.args.iter().zip(&call.args) {
                let sdk = match value {
                    MoveValue::U8(v) => aptos_sdk::aptos_bcs::to_bytes(v),
                    MoveValue::U64(v) => aptos_sdk::aptos_bcs::to_bytes(v),
                    MoveValue::Address(a) | MoveValue::Object(a) => {
                        aptos_sdk::aptos_bcs::to_bytes(&AccountAddress::new(a.0))
                    }
                    MoveValue::Bytes(b) => aptos_sdk::aptos_bcs::to_bytes(b),
                    MoveValue::AddressVec(v) => aptos_sdk::aptos_bcs::to_bytes(
                        &v.iter()
                            .map(|a| AccountAddress::new(a.0))
                            .collect::<Vec<_>>(),
                    ),
                }
                .unwrap();
                assert_eq!(arg, &sdk, "{op:?}: {value:?}");
            }
        }
        assert!(matches!(
            abi::entry_call(
                &Op::Mint {
                    to: CONTRACT,
                    amount: 1
                },
                None
            ),
            Err(abi::AbiError::NotOnChain(_))
        ));
    }

    #[test]
    fn bcs_arguments_match_hand_computed_bytes() {
        let ef = payload(&Op::RegisterOrchestrator {
            peer_id: vec![7; 38],
            amount: 5,
        });
        let mut peer = vec![38];
        peer.extend([7; 38]);
        assert_eq!(ef.args, vec![peer, le(5)]);

        let ef = payload(&Op::CompleteTask {
            task_id: vec![3; 16],
            prompt_tokens: 10,
            output_tokens: 0x0102_0304_0506_0708,
            compute_ms: 12,
            delegates: vec![Address([5; 32]), Address([6; 32])],
            receipt_hash: vec![9; 32],
        });
        let mut task = vec![16];
        task.extend([3; 16]);
        let mut delegates = vec![2];
        delegates.extend([5; 32]);
        delegates.extend([6; 32]);
        let mut hash = vec![32];
        hash.extend([9; 32]);
        assert_eq!(
            ef.args,
            vec![
                task,
                le(10),
                vec![8, 7, 6, 5, 4, 3, 2, 1],
                le(12),
                delegates,
                hash
            ]
        );

        let ef = payload(&Op::FailTask {
            task_id: vec![3; 16],
            reason: 2,
        });
        assert_eq!(ef.args[1], vec![2]);

        let ef = payload(&Op::Initialize(config()));
        assert_eq!(ef.function, "initialize");
        assert_eq!(
            ef.args[0],
            vec![0xaa; 32],
            "Object<Metadata> is its address"
        );
        assert_eq!(ef.args[5], vec![0xee; 32]);
        assert_eq!(ef.args.len(), 11);

        let ef = payload(&Op::Withdraw);
        assert!(ef.args.is_empty());

        // A length prefix over 127 takes two ULEB128 bytes.
        let long = bcs_arg(&MoveValue::Bytes(vec![0; 200]));
        assert_eq!(&long[..2], &[0xc8, 0x01]);
        assert_eq!(long.len(), 202);
    }

    #[test]
    fn whole_payload_bcs_is_an_entry_function() {
        let ef = payload(&Op::AddStake { amount: 6 });
        let bytes = aptos_sdk::aptos_bcs::to_bytes(&TransactionPayload::from(ef)).unwrap();
        let mut expected = vec![2]; // TransactionPayload::EntryFunction
        expected.extend([0xca; 32]);
        expected.push(14);
        expected.extend(b"cactus_payment");
        expected.push(9);
        expected.extend(b"add_stake");
        expected.push(0); // no type arguments
        expected.push(1); // one argument,
        expected.push(8); // of 8 bytes
        expected.extend(le(6));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn view_arguments_are_rest_json() {
        let call = abi::view_call(&View::Task(TaskId([0xab; 16])));
        let args: Vec<Value> = call.args.iter().map(json_arg).collect();
        assert_eq!(args, vec![json!(format!("0x{}", "ab".repeat(16)))]);
        let call = abi::view_call(&View::QuotePayment {
            orchestrator: Address([1; 32]),
            price_per_unit: 2,
            prompt_tokens: 3,
            output_tokens: 4,
            compute_ms: 5,
            max_payment: u64::MAX,
        });
        let args: Vec<Value> = call.args.iter().map(json_arg).collect();
        assert_eq!(args[0], json!(format!("0x{}", "01".repeat(32))));
        assert_eq!(args[1], json!("2"));
        assert_eq!(args[5], json!("18446744073709551615"));
        assert_eq!(json_arg(&MoveValue::U8(7)), json!(7));
        assert_eq!(
            function_id(&CONTRACT, "get_task"),
            format!("0x{}::cactus_payment::get_task", "ca".repeat(32))
        );
    }

    fn write_key(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(format!("key-{mode:o}-{}", text.len()));
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    #[test]
    fn key_files_load_with_or_without_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let hex_key = "9bf49a6a0755f953811fce125f2683d50429c3bb49e074147e0089a52eae155f";
        let plain = load_key(&write_key(dir.path(), &format!("{hex_key}\n"), 0o600)).unwrap();
        let prefixed =
            load_key(&write_key(dir.path(), &format!("  0x{hex_key}  \n"), 0o400)).unwrap();
        let aip80 = load_key(&write_key(
            dir.path(),
            &format!("ed25519-priv-0x{hex_key}"),
            0o600,
        ))
        .unwrap();
        assert_eq!(plain.address(), prefixed.address());
        assert_eq!(plain.address(), aip80.address());
        // The address is the ed25519 key's authentication key: sha3-256(public key || 0x00).
        let expected = Ed25519Account::from_private_key_hex(hex_key)
            .unwrap()
            .address();
        assert_eq!(plain.address(), expected);
    }

    #[test]
    fn bad_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = write_key(dir.path(), "0xabcd", 0o600);
        assert!(matches!(
            load_key(&short),
            Err(AptosError::KeyLength { len: 2, .. })
        ));
        let long = write_key(dir.path(), &"ab".repeat(33), 0o600);
        assert!(matches!(
            load_key(&long),
            Err(AptosError::KeyLength { len: 33, .. })
        ));
        let not_hex = write_key(dir.path(), &"zz".repeat(32), 0o600);
        assert!(matches!(
            load_key(&not_hex),
            Err(AptosError::KeyNotHex { .. })
        ));
        let empty = write_key(dir.path(), "\n", 0o600);
        assert!(matches!(
            load_key(&empty),
            Err(AptosError::KeyNotHex { .. })
        ));
        let huge = write_key(
            dir.path(),
            &"a".repeat(MAX_KEY_FILE_BYTES as usize + 1),
            0o600,
        );
        assert!(matches!(
            load_key(&huge),
            Err(AptosError::KeyTooLarge { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(load_key(&missing), Err(AptosError::KeyIo { .. })));
        #[cfg(unix)]
        {
            let key = "ab".repeat(32);
            for mode in [0o644, 0o640, 0o604, 0o620] {
                let open = write_key(dir.path(), &key, mode);
                let err = load_key(&open).unwrap_err();
                assert!(
                    matches!(err, AptosError::KeyPermissions { mode: m, .. } if m == mode),
                    "{mode:o}: {err}"
                );
                assert!(err.to_string().contains("chmod 600"), "{err}");
            }
        }
    }

    #[test]
    fn urls_get_the_api_path() {
        assert_eq!(
            rest_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            rest_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            rest_url("https://node.example/v1").unwrap(),
            "https://node.example/v1"
        );
        assert!(matches!(
            rest_url("file:///etc/passwd"),
            Err(AptosError::Url { .. })
        ));
        assert!(matches!(
            rest_url("127.0.0.1:8080"),
            Err(AptosError::Url { .. })
        ));
    }

    #[test]
    fn aborts_are_read_from_vm_status() {
        let full = format!("0x{}", "ca".repeat(32));
        let status = format!(
            "Move abort in {full}::cactus_payment: E_NOT_AUTHORIZED_SERVER(0xe): An authorized-server-only call"
        );
        assert_eq!(
            abort_in_module(&status, &CONTRACT),
            Some(Abort::NotAuthorizedServer)
        );
        let bare = format!("Move abort in {full}::cactus_payment: 0x17");
        assert_eq!(
            abort_in_module(&bare, &CONTRACT),
            Some(Abort::InvalidConfig)
        );
        // The API shortens addresses with leading zeros.
        let short = Address({
            let mut a = [0u8; 32];
            a[30] = 0xca;
            a[31] = 0xfe;
            a
        });
        let status = "Move abort in 0xcafe::cactus_payment: E_NOT_REGISTERED(0x8): not a registered orchestrator";
        assert_eq!(abort_in_module(status, &short), Some(Abort::NotRegistered));
        // Embedded in a longer message (a view's 400 error).
        let wrapped = format!("Invalid input: {status}");
        assert_eq!(
            abort_in_module(&wrapped, &short),
            Some(Abort::NotRegistered)
        );
        // Not ours: another module, another address, an unknown code, other failures.
        let other_module =
            "Move abort in 0x1::fungible_asset: EINSUFFICIENT_BALANCE(0x10004): balance";
        assert_eq!(abort_in_module(other_module, &Address([0; 32])), None);
        assert_eq!(abort_in_module(status, &CONTRACT), None);
        let unknown = "Move abort in 0xcafe::cactus_payment: 0x63";
        assert_eq!(abort_in_module(unknown, &short), None);
        assert_eq!(abort_in_module("Out of gas", &short), None);
        assert_eq!(abort_in_module("Move abort: code 0x8", &short), None);
    }

    fn call(view: View) -> Call {
        abi::view_call(&view)
    }

    #[test]
    fn view_results_parse_into_ledger_types() {
        let values = vec![
            json!("1000"),
            json!("60"),
            json!("5000"),
            json!("1000"),
            json!(format!("0x{}", "ee".repeat(32))),
            json!("1"),
            json!("4"),
            json!("2"),
            json!("3"),
            json!("1000"),
        ];
        assert_eq!(
            parse_config(&call(View::Config), &values).unwrap(),
            config()
        );

        let values = vec![
            json!("0x0102"),
            json!("5000"),
            json!("7"),
            json!("99"),
            json!("3"),
            json!("1"),
            json!("42"),
        ];
        let o = parse_orchestrator(&call(View::Orchestrator(CONTRACT)), &values).unwrap();
        assert_eq!(
            o,
            Orchestrator {
                peer_id: vec![1, 2],
                stake: 5000,
                unbonding: 7,
                unlock_at: 99,
                successes: 3,
                failures: 1,
                compute_ms: 42
            }
        );

        let values = vec![
            json!("0x1"),
            json!(format!("0x{}", "04".repeat(32))),
            json!("8"),
            json!("9"),
            json!(2),
            json!("0"),
        ];
        let t = parse_task(&call(View::Task(TaskId([0; 16]))), &values).unwrap();
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(
            t,
            Task {
                server: Address(one),
                orchestrator: Address([4; 32]),
                price_per_unit: 8,
                escrow: 9,
                status: TaskStatus::Failed,
                payment: 0,
                reason: 0
            }
        );

        let values = vec![
            json!(format!("0x{}", "0a".repeat(32))),
            json!(format!("0x{}", "11".repeat(32))),
            json!("3"),
            json!(format!("0x{}", "22".repeat(16))),
            json!(format!("0x{}", "33".repeat(16))),
            json!("1700000000"),
        ];
        let a = parse_anchor(&call(View::Anchor(0)), &values).unwrap();
        assert_eq!(
            a,
            Anchor {
                server: Address([0x0a; 32]),
                root: Digest([0x11; 32]),
                count: 3,
                first_task: TaskId([0x22; 16]),
                last_task: TaskId([0x33; 16]),
                anchored_at: 1_700_000_000
            }
        );
    }

    #[test]
    fn malformed_view_results_are_errors() {
        let c = call(View::Totals);
        assert!(matches!(
            Parsed::new(&c, &[json!("1")], 3),
            Err(AptosError::BadView {
                function: "totals",
                ..
            })
        ));
        let vals = [json!("-1")];
        assert!(Parsed::new(&c, &vals, 1).unwrap().u64(0).is_err());
        let vals = [json!("18446744073709551616")];
        assert!(
            Parsed::new(&c, &vals, 1).unwrap().u64(0).is_err(),
            "over u64"
        );
        let vals = [json!(true)];
        assert!(Parsed::new(&c, &vals, 1).unwrap().u64(0).is_err());
        let vals = [json!("0x1"), json!("1")];
        let p = Parsed::new(&c, &vals, 2).unwrap();
        assert!(p.bool(0).is_err());
        assert!(p.bytes(1).is_err(), "no 0x prefix");
        assert!(p.bytes(0).is_err(), "odd hex");
        let vals = [json!("256")];
        assert!(Parsed::new(&c, &vals, 1).unwrap().u8(0).is_err());
        let too_long = format!("0x{}", "1".repeat(65));
        let vals = [json!(too_long)];
        assert!(Parsed::new(&c, &vals, 1).unwrap().address(0).is_err());

        // A root that is not 32 bytes, a status that does not exist.
        let mut anchor = vec![
            json!("0x1"),
            json!("0x11"),
            json!("3"),
            json!(format!("0x{}", "22".repeat(16))),
            json!(format!("0x{}", "33".repeat(16))),
            json!("1"),
        ];
        assert!(parse_anchor(&call(View::Anchor(0)), &anchor).is_err());
        anchor[1] = json!(format!("0x{}", "11".repeat(32)));
        assert!(parse_anchor(&call(View::Anchor(0)), &anchor).is_ok());
        let task = vec![
            json!("0x1"),
            json!("0x2"),
            json!("8"),
            json!("9"),
            json!(3),
            json!("0"),
        ];
        assert!(parse_task(&call(View::Task(TaskId([0; 16]))), &task).is_err());
    }

    #[test]
    fn errors_map_to_chain_errors() {
        assert_eq!(
            ChainError::from(AptosError::Abort(Abort::WrongServer)),
            ChainError::Abort(Abort::WrongServer)
        );
        let e = ChainError::from(AptosError::BadView {
            function: "totals",
            reason: "x".into(),
        });
        assert!(matches!(e, ChainError::Backend(m) if m.contains("totals")));
    }

    /// A fake fullnode on loopback: enough of the REST API for a view, a
    /// missing orchestrator and a transaction that aborts in the module.
    mod fake_node {
        use super::*;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        /// The transaction that aborts (anything but `add_stake`).
        pub const TX_HASH: &str =
            "0x1111111111111111111111111111111111111111111111111111111111111111";
        /// The transaction that succeeds (an `add_stake`).
        pub const OK_HASH: &str =
            "0x2222222222222222222222222222222222222222222222222222222222222222";

        /// Requests the node saw: (method and path, body).
        pub type Log = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

        pub async fn start(contract: Address, peer: Vec<u8>) -> (String, Log) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v1", listener.local_addr().unwrap());
            let log: Log = Arc::default();
            let seen = Arc::clone(&log);
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = Arc::clone(&seen);
                    let peer = peer.clone();
                    tokio::spawn(async move {
                        while let Some((head, body)) = read_request(&mut sock).await {
                            seen.lock().unwrap().push((head.clone(), body.clone()));
                            let (status, reply) = answer(&head, &body, &contract, &peer);
                            let text = reply.to_string();
                            let resp = format!(
                                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            );
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            (url, log)
        }

        async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < len {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            let request_line = head.lines().next().unwrap_or_default().to_owned();
            Some((request_line, body))
        }

        fn answer(
            head: &str,
            body: &[u8],
            contract: &Address,
            peer: &[u8],
        ) -> (&'static str, Value) {
            let abort = |name: &str, code: u64| {
                let message = format!(
                    "Move abort in 0x{}::cactus_payment: {name}({code:#x}): text",
                    hex::encode(contract.0)
                );
                (
                    "400 Bad Request",
                    json!({"message": message, "error_code": "invalid_input", "vm_error_code": 4016}),
                )
            };
            if head.starts_with("POST /v1/view") {
                let req: Value = serde_json::from_slice(body).unwrap();
                let function = req["function"]
                    .as_str()
                    .unwrap()
                    .rsplit("::")
                    .next()
                    .unwrap()
                    .to_owned();
                let args = req["arguments"].as_array().unwrap().clone();
                return match function.as_str() {
                    "get_config" => (
                        "200 OK",
                        json!([
                            "1000", "60", "5000", "1000", "0x1", "1", "4", "2", "3", "1000"
                        ]),
                    ),
                    "get_orchestrator" if args[0] == json!(format!("0x{}", "0b".repeat(32))) => (
                        "200 OK",
                        json!([
                            format!("0x{}", hex::encode(peer)),
                            "1500",
                            "0",
                            "0",
                            "0",
                            "0",
                            "0"
                        ]),
                    ),
                    "get_orchestrator" => abort("E_NOT_REGISTERED", 8),
                    "is_server" => ("200 OK", json!([true])),
                    "get_anchor" => abort("E_INVALID_ARGUMENT", 5),
                    "anchor_count" => ("200 OK", json!(["0"])),
                    _ => (
                        "404 Not Found",
                        json!({"message": "no such function", "error_code": "function_not_found"}),
                    ),
                };
            }
            if head.starts_with("GET /v1/accounts/") {
                return (
                    "200 OK",
                    json!({"sequence_number": "7", "authentication_key": "0x00"}),
                );
            }
            if head.starts_with("GET /v1/estimate_gas_price") {
                return ("200 OK", json!({"gas_estimate": 100}));
            }
            if head.starts_with("GET /v1 ") || head.starts_with("GET /v1/ ") {
                return (
                    "200 OK",
                    json!({"chain_id": 4, "epoch": "1", "ledger_version": "10", "oldest_ledger_version": "0",
                        "ledger_timestamp": "1", "node_role": "full_node", "oldest_block_height": "0", "block_height": "5"}),
                );
            }
            if head.starts_with("POST /v1/transactions") {
                let ok = body.windows(9).any(|w| w == b"add_stake");
                return (
                    "202 Accepted",
                    json!({"hash": if ok { OK_HASH } else { TX_HASH }, "sender": "0x1", "sequence_number": "7", "max_gas_amount": "200000",
                        "gas_unit_price": "100", "expiration_timestamp_secs": "1"}),
                );
            }
            if head.starts_with(&format!("GET /v1/transactions/by_hash/{OK_HASH}")) {
                return (
                    "200 OK",
                    json!({"version": "12", "hash": OK_HASH, "success": true, "vm_status": "Executed successfully"}),
                );
            }
            if head.starts_with("GET /v1/transactions/by_hash/") {
                let status = format!(
                    "Move abort in 0x{}::cactus_payment: E_NOT_AUTHORIZED_SERVER(0xe): text",
                    hex::encode(contract.0)
                );
                return (
                    "200 OK",
                    json!({"version": "11", "hash": TX_HASH, "success": false, "vm_status": status}),
                );
            }
            ("404 Not Found", json!({"message": "not found"}))
        }
    }

    #[tokio::test]
    async fn talks_to_a_rest_node() {
        let dir = tempfile::tempdir().unwrap();
        let key = write_key(dir.path(), &"42".repeat(32), 0o600);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let (url, log) = fake_node::start(CONTRACT, peer.to_bytes()).await;
        let chain = AptosChain::connect(AptosConfig {
            url,
            key_file: key,
            contract: CONTRACT,
        })
        .unwrap();
        let expected = Ed25519Account::from_private_key_hex(&"42".repeat(32))
            .unwrap()
            .address();
        assert_eq!(chain.account(), Address(expected.to_bytes()));

        let config = chain.config().await.unwrap().unwrap();
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(config.treasury, Address(one));
        assert_eq!(config.min_stake, 1000);
        assert!(chain.is_server(CONTRACT).await.unwrap());
        assert_eq!(chain.anchor_count().await.unwrap(), 0);
        assert_eq!(chain.anchor(0).await.unwrap(), None);

        // Registered with this PeerId and enough stake; unknown accounts and
        // other PeerIds are refused.
        let registered = Address([0x0b; 32]);
        assert_eq!(
            chain.orchestrator(registered).await.unwrap().unwrap().stake,
            1500
        );
        assert_eq!(chain.orchestrator(Address([0x0c; 32])).await.unwrap(), None);
        assert!(chain.admit(peer, registered, 0).await.unwrap());
        assert!(
            !chain
                .admit(peer, Address([0x0c; 32]), 1_000_000)
                .await
                .unwrap()
        );
        let stranger = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert!(!chain.admit(stranger, registered, 1_000_000).await.unwrap());

        // A transaction that the module aborts.
        let op = Op::AnchorReceipts {
            merkle_root: vec![1; 32],
            count: 3,
            first_task: vec![2; 16],
            last_task: vec![3; 16],
        };
        let err = chain.submit(op.clone()).await.unwrap_err();
        assert_eq!(err, ChainError::Abort(Abort::NotAuthorizedServer));
        // What went to the node: a signed transaction from our account with
        // sequence number 7, carrying the anchor_receipts payload.
        let submitted = log
            .lock()
            .unwrap()
            .iter()
            .find(|(head, _)| head.starts_with("POST /v1/transactions"))
            .map(|(_, body)| body.clone())
            .unwrap();
        assert_eq!(&submitted[..32], expected.as_bytes());
        assert_eq!(&submitted[32..40], &7u64.to_le_bytes());
        let payload =
            aptos_sdk::aptos_bcs::to_bytes(&TransactionPayload::from(payload(&op))).unwrap();
        assert_eq!(&submitted[40..40 + payload.len()], payload.as_slice());

        // A transaction that succeeds takes the next sequence number: the
        // aborted one used 7.
        chain.submit(Op::AddStake { amount: 5 }).await.unwrap();
        let seqs: Vec<u64> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(head, _)| head.starts_with("POST /v1/transactions"))
            .map(|(_, body)| u64::from_le_bytes(body[32..40].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![7, 8]);

        // Mint has no entry function; initialize needs the asset.
        let err = chain
            .submit(Op::Mint {
                to: CONTRACT,
                amount: 1,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ChainError::Backend(m) if m.contains("Mint")));
        let err = chain.submit(Op::Initialize(config)).await.unwrap_err();
        assert!(matches!(err, ChainError::Backend(m) if m.contains("asset")));
    }
}
