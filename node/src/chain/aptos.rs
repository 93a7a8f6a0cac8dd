//! The Aptos chain backend: the `cactus_payment` module deployed at a
//! contract address, driven through a fullnode's REST API.
//!
//! - Operations are entry-function transactions
//!   `<contract>::cactus_payment::<fn>` whose arguments are BCS-encoded from
//!   the [`abi`] mapping, signed with this node's ed25519 account key, submitted
//!   and waited for. A Move abort raised by `cactus_payment` comes back as
//!   [`ChainError::Abort`] with the same [`Abort`] the embedded chain would
//!   give; any other failure is [`ChainError::Aptos`], the [`AptosError`] as
//!   its source.
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

mod encode;
mod error;
mod key;
#[cfg(test)]
mod tests;
mod views;

pub use encode::{abort_in_module, bcs_arg, entry_function};
pub use error::AptosError;
pub use key::load_key;

use encode::{function_id, is_sequence_error, json_arg, parse_address, rest_url};
use error::node_err;
use views::{Parsed, parse_anchor, parse_config, parse_orchestrator, parse_task};

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
        tracing::info!(%account, contract = %config.contract, url, "Aptos chain backend");
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

    async fn get_client(&self, client: Address, server: Address) -> Result<(u64, u64), AptosError> {
        let call = abi::view_call(&View::Client { client, server });
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok((0, cactus_protocol::contract::NO_CAP));
        };
        let p = Parsed::new(&call, &values, 2)?;
        Ok((p.u64(0)?, p.u64(1)?))
    }

    /// The server bound to `peer` (`server_of_peer` aborts 13 when none is).
    async fn get_server_of_peer(&self, peer: PeerId) -> Result<Option<Address>, AptosError> {
        let call = abi::view_call(&View::ServerOfPeer(peer.to_bytes()));
        let absent = [Abort::ServerNotFound, Abort::NotInitialized];
        let Some(values) = self.view_opt(&call, &absent).await? else {
            return Ok(None);
        };
        Parsed::new(&call, &values, 1)?.address(0).map(Some)
    }

    async fn get_client_of_peer(&self, peer: PeerId) -> Result<Option<Address>, AptosError> {
        let call = abi::view_call(&View::ClientOfPeer(peer.to_bytes()));
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(None);
        };
        let p = Parsed::new(&call, &values, 2)?;
        Ok(p.bool(0)?.then_some(p.address(1)?))
    }

    async fn get_balance(&self, who: Address) -> Result<u64, AptosError> {
        let call = abi::view_call(&View::BalanceOf(who));
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(0);
        };
        Parsed::new(&call, &values, 1)?.u64(0)
    }

    async fn get_server_fee(&self, server: Address) -> Result<u64, AptosError> {
        let call = abi::view_call(&View::ServerFee(server));
        let Some(values) = self.view_opt(&call, &[Abort::NotInitialized]).await? else {
            return Ok(0);
        };
        Parsed::new(&call, &values, 1)?.u64(0)
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
        Ok(orchestrator.admits(&peer, config.min_stake))
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

    fn client(
        &self,
        client: Address,
        server: Address,
    ) -> BoxFuture<'_, Result<(u64, u64), ChainError>> {
        async move { Ok(self.get_client(client, server).await?) }.boxed()
    }

    fn server_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        async move { Ok(self.get_server_of_peer(peer).await?) }.boxed()
    }

    fn client_of_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<Address>, ChainError>> {
        async move { Ok(self.get_client_of_peer(peer).await?) }.boxed()
    }

    fn balance(&self, who: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move { Ok(self.get_balance(who).await?) }.boxed()
    }

    fn server_fee(&self, server: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move { Ok(self.get_server_fee(server).await?) }.boxed()
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
