//! The interface of the `cactus_payment` Move module as the Aptos backend
//! uses it: every entry function and view function it calls, with the Move
//! parameter types exactly as `contracts/sources/cactus_payment.move` spells
//! them, and the mapping from a contract [`Op`] (or a [`View`]) to a call with
//! ordered argument values.
//!
//! This module has no Aptos SDK dependency, so the mapping is compiled and
//! tested in every build; `tests/it/move_pin.rs` checks the table against the
//! Move source, so a change of the contract's signatures fails a test rather
//! than a transaction.

use cactus_protocol::TaskId;
use cactus_protocol::contract::{Address, Config, Op};

/// The module's name under the contract address.
pub const MODULE: &str = "cactus_payment";

/// Whether a function is an entry function (a transaction) or a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `public entry fun`: called by a signed transaction.
    Entry,
    /// `#[view] public fun`: called through the REST view endpoint.
    View,
}

impl Kind {
    /// `"entry"` or `"view"`, as `scripts/move_ast.py signatures` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::View => "view",
        }
    }
}

/// One function of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// The function's name.
    pub name: &'static str,
    /// Entry or view.
    pub kind: Kind,
    /// Parameter types in order, as the Move source spells them (whitespace
    /// normalized); entry functions start with `&signer`.
    pub params: &'static [&'static str],
    /// A view's return type text (a tuple is `(t1, t2, ..)`); `None` for entry
    /// functions.
    pub returns: Option<&'static str>,
}

impl Function {
    /// The parameters the caller passes: all but an entry function's leading
    /// `&signer`, which the transaction's sender provides.
    pub fn arg_types(&self) -> &'static [&'static str] {
        match self.params.split_first() {
            Some((&"&signer", rest)) if self.kind == Kind::Entry => rest,
            _ => self.params,
        }
    }
}

const fn entry(name: &'static str, params: &'static [&'static str]) -> Function {
    Function {
        name,
        kind: Kind::Entry,
        params,
        returns: None,
    }
}

const fn view(
    name: &'static str,
    params: &'static [&'static str],
    returns: &'static str,
) -> Function {
    Function {
        name,
        kind: Kind::View,
        params,
        returns: Some(returns),
    }
}

/// `initialize(admin, asset, <ten config fields>)`.
pub const INITIALIZE: Function = entry(
    "initialize",
    &[
        "&signer",
        "Object<Metadata>",
        "u64",
        "u64",
        "u64",
        "u64",
        "address",
        "u64",
        "u64",
        "u64",
        "u64",
        "u64",
    ],
);
/// `set_config(admin, <ten config fields>)`.
pub const SET_CONFIG: Function = entry(
    "set_config",
    &[
        "&signer", "u64", "u64", "u64", "u64", "address", "u64", "u64", "u64", "u64", "u64",
    ],
);
/// `register_orchestrator(account, peer_id, amount)`.
pub const REGISTER_ORCHESTRATOR: Function =
    entry("register_orchestrator", &["&signer", "vector<u8>", "u64"]);
/// `add_stake(account, amount)`.
pub const ADD_STAKE: Function = entry("add_stake", &["&signer", "u64"]);
/// `request_unstake(account, amount)`.
pub const REQUEST_UNSTAKE: Function = entry("request_unstake", &["&signer", "u64"]);
/// `withdraw(account)`.
pub const WITHDRAW: Function = entry("withdraw", &["&signer"]);
/// `authorize_server(admin, server)`.
pub const AUTHORIZE_SERVER: Function = entry("authorize_server", &["&signer", "address"]);
/// `revoke_server(admin, server)`.
pub const REVOKE_SERVER: Function = entry("revoke_server", &["&signer", "address"]);
/// `set_server_peer(admin, server, peer_id)`.
pub const SET_SERVER_PEER: Function =
    entry("set_server_peer", &["&signer", "address", "vector<u8>"]);
/// `create_task(server, task_id, orchestrator, price_per_unit, max_payment)`.
pub const CREATE_TASK: Function = entry(
    "create_task",
    &["&signer", "vector<u8>", "address", "u64", "u64"],
);
/// `create_client_task(server, client, task_id, orchestrator, price_per_unit, max_payment)`.
pub const CREATE_CLIENT_TASK: Function = entry(
    "create_client_task",
    &["&signer", "address", "vector<u8>", "address", "u64", "u64"],
);
/// `deposit(client, server, amount)`.
pub const DEPOSIT: Function = entry("deposit", &["&signer", "address", "u64"]);
/// `withdraw_deposit(client, server, amount)`.
pub const WITHDRAW_DEPOSIT: Function = entry("withdraw_deposit", &["&signer", "address", "u64"]);
/// `bind_client_peer(client, peer_id)`.
pub const BIND_CLIENT_PEER: Function = entry("bind_client_peer", &["&signer", "vector<u8>"]);
/// `set_max_price(client, max_price_per_unit)`.
pub const SET_MAX_PRICE: Function = entry("set_max_price", &["&signer", "u64"]);
/// `set_server_fee(server, fee_bps)`.
pub const SET_SERVER_FEE: Function = entry("set_server_fee", &["&signer", "u64"]);
/// `complete_task(server, task_id, prompt_tokens, output_tokens, compute_ms, delegates, receipt_hash)`.
pub const COMPLETE_TASK: Function = entry(
    "complete_task",
    &[
        "&signer",
        "vector<u8>",
        "u64",
        "u64",
        "u64",
        "vector<address>",
        "vector<u8>",
    ],
);
/// `fail_task(server, task_id, reason)`.
pub const FAIL_TASK: Function = entry("fail_task", &["&signer", "vector<u8>", "u8"]);
/// `expire_task(anyone, task_id)`.
pub const EXPIRE_TASK: Function = entry("expire_task", &["&signer", "vector<u8>"]);
/// `slash(server, orchestrator, ratio_bps, evidence_hash)`.
pub const SLASH: Function = entry("slash", &["&signer", "address", "u64", "vector<u8>"]);
/// `anchor_receipts(server, merkle_root, count, first_task, last_task)`.
pub const ANCHOR_RECEIPTS: Function = entry(
    "anchor_receipts",
    &["&signer", "vector<u8>", "u64", "vector<u8>", "vector<u8>"],
);

/// `get_config()`.
pub const GET_CONFIG: Function = view(
    "get_config",
    &[],
    "(u64, u64, u64, u64, address, u64, u64, u64, u64, u64)",
);
/// `get_orchestrator(addr)`; aborts `E_NOT_REGISTERED` when unknown.
pub const GET_ORCHESTRATOR: Function = view(
    "get_orchestrator",
    &["address"],
    "(vector<u8>, u64, u64, u64, u64, u64, u64)",
);
/// `server_of_peer(peer_id)`; aborts `E_SERVER_NOT_FOUND` when none is bound.
pub const SERVER_OF_PEER: Function = view("server_of_peer", &["vector<u8>"], "address");
/// `balance_of(addr)`: the payment asset outside the vault.
pub const BALANCE_OF: Function = view("balance_of", &["address"], "u64");
/// `is_server(addr)`.
pub const IS_SERVER: Function = view("is_server", &["address"], "bool");
/// `get_task(task_id)`; aborts `E_TASK_NOT_FOUND` when unknown.
pub const GET_TASK: Function = view(
    "get_task",
    &["vector<u8>"],
    "(address, address, u64, u64, u8, u64)",
);
/// `quote_payment(orchestrator, price_per_unit, prompt_tokens, output_tokens, compute_ms, max_payment)`.
pub const QUOTE_PAYMENT: Function = view(
    "quote_payment",
    &["address", "u64", "u64", "u64", "u64", "u64"],
    "u64",
);
/// `totals()`: `(stake_held, escrow_held, vault_balance)`.
pub const TOTALS: Function = view("totals", &[], "(u64, u64, u64)");
/// `get_client(client, server)`: `(deposit, max_price_per_unit)`.
pub const GET_CLIENT: Function = view("get_client", &["address", "address"], "(u64, u64)");
/// `client_of_peer(peer_id)`: `(bound, client)`.
pub const CLIENT_OF_PEER: Function = view("client_of_peer", &["vector<u8>"], "(bool, address)");
/// `get_server_fee(server)`.
pub const GET_SERVER_FEE: Function = view("get_server_fee", &["address"], "u64");
/// `deposits_held()`.
pub const DEPOSITS_HELD: Function = view("deposits_held", &[], "u64");
/// `anchor_count()`.
pub const ANCHOR_COUNT: Function = view("anchor_count", &[], "u64");
/// `get_anchor(index)`; aborts `E_INVALID_ARGUMENT` when `index >= anchor_count()`.
pub const GET_ANCHOR: Function = view(
    "get_anchor",
    &["u64"],
    "(address, vector<u8>, u64, vector<u8>, vector<u8>, u64)",
);

/// Every function the Aptos backend calls.
pub const FUNCTIONS: &[Function] = &[
    INITIALIZE,
    SET_CONFIG,
    REGISTER_ORCHESTRATOR,
    ADD_STAKE,
    REQUEST_UNSTAKE,
    WITHDRAW,
    AUTHORIZE_SERVER,
    REVOKE_SERVER,
    SET_SERVER_PEER,
    CREATE_TASK,
    CREATE_CLIENT_TASK,
    DEPOSIT,
    WITHDRAW_DEPOSIT,
    SET_MAX_PRICE,
    BIND_CLIENT_PEER,
    SET_SERVER_FEE,
    COMPLETE_TASK,
    FAIL_TASK,
    EXPIRE_TASK,
    SLASH,
    ANCHOR_RECEIPTS,
    GET_CONFIG,
    GET_ORCHESTRATOR,
    IS_SERVER,
    BALANCE_OF,
    SERVER_OF_PEER,
    GET_TASK,
    QUOTE_PAYMENT,
    TOTALS,
    GET_CLIENT,
    CLIENT_OF_PEER,
    GET_SERVER_FEE,
    DEPOSITS_HELD,
    ANCHOR_COUNT,
    GET_ANCHOR,
];

/// The function called `name`, if the backend calls one.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// One argument value, typed as the Move parameter it is passed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveValue {
    /// `u8`.
    U8(u8),
    /// `u64`.
    U64(u64),
    /// `address`.
    Address(Address),
    /// `vector<u8>`.
    Bytes(Vec<u8>),
    /// `vector<address>`.
    AddressVec(Vec<Address>),
    /// `Object<T>`: the object's address.
    Object(Address),
}

impl MoveValue {
    /// Whether this value can be passed to a parameter of Move type `ty`.
    pub fn fits(&self, ty: &str) -> bool {
        match self {
            Self::U8(_) => ty == "u8",
            Self::U64(_) => ty == "u64",
            Self::Address(_) => ty == "address",
            Self::Bytes(_) => ty == "vector<u8>",
            Self::AddressVec(_) => ty == "vector<address>",
            Self::Object(_) => ty.starts_with("Object<") && ty.ends_with('>'),
        }
    }
}

/// A call of one function with its arguments in parameter order (without
/// the `&signer` of entry functions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The Move function called, with its signature.
    pub function: &'static Function,
    /// The arguments.
    pub args: Vec<MoveValue>,
}

impl Call {
    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.function.name
    }

    /// Whether the arguments match the function's parameter types in number
    /// and type.
    pub fn is_well_typed(&self) -> bool {
        let types = self.function.arg_types();
        types.len() == self.args.len() && self.args.iter().zip(types).all(|(v, t)| v.fits(t))
    }
}

/// Why an operation has no call on chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbiError {
    /// `Op::Mint` (a local faucet) and operations this build does not know
    /// have no entry function.
    #[error("{0} has no entry function in cactus_payment (embedded chains only)")]
    NotOnChain(&'static str),
    /// `initialize` on chain names the payment asset, which `Op::Initialize`
    /// does not carry.
    #[error("initialize on chain needs the payment asset's metadata object address")]
    MissingAsset,
}

fn config_args(c: &Config) -> [MoveValue; 10] {
    [
        MoveValue::U64(c.min_stake),
        MoveValue::U64(c.unbonding_secs),
        MoveValue::U64(c.max_slash_bps),
        MoveValue::U64(c.reporter_bps),
        MoveValue::Address(c.treasury),
        MoveValue::U64(c.prompt_weight),
        MoveValue::U64(c.output_weight),
        MoveValue::U64(c.price_per_ms),
        MoveValue::U64(c.ms_cap_per_unit),
        MoveValue::U64(c.delegation_fee_bps),
    ]
}

/// The entry-function call that performs `op`. `asset` is the fungible
/// asset's metadata object, needed by `Op::Initialize` only.
pub fn entry_call(op: &Op, asset: Option<Address>) -> Result<Call, AbiError> {
    use MoveValue as V;
    let call = |function: &'static Function, args: Vec<MoveValue>| Ok(Call { function, args });
    match op {
        Op::Initialize(config) => {
            let asset = asset.ok_or(AbiError::MissingAsset)?;
            let mut args = vec![V::Object(asset)];
            args.extend(config_args(config));
            call(&INITIALIZE, args)
        }
        Op::SetConfig(config) => call(&SET_CONFIG, config_args(config).into()),
        Op::RegisterOrchestrator { peer_id, amount } => call(
            &REGISTER_ORCHESTRATOR,
            vec![V::Bytes(peer_id.clone()), V::U64(*amount)],
        ),
        Op::AddStake { amount } => call(&ADD_STAKE, vec![V::U64(*amount)]),
        Op::RequestUnstake { amount } => call(&REQUEST_UNSTAKE, vec![V::U64(*amount)]),
        Op::Withdraw => call(&WITHDRAW, vec![]),
        Op::AuthorizeServer { server } => call(&AUTHORIZE_SERVER, vec![V::Address(*server)]),
        Op::RevokeServer { server } => call(&REVOKE_SERVER, vec![V::Address(*server)]),
        Op::SetServerPeer { server, peer_id } => call(
            &SET_SERVER_PEER,
            vec![V::Address(*server), V::Bytes(peer_id.clone())],
        ),
        Op::CreateTask {
            task_id,
            orchestrator,
            price_per_unit,
            max_payment,
        } => call(
            &CREATE_TASK,
            vec![
                V::Bytes(task_id.clone()),
                V::Address(*orchestrator),
                V::U64(*price_per_unit),
                V::U64(*max_payment),
            ],
        ),
        Op::CreateClientTask {
            client,
            task_id,
            orchestrator,
            price_per_unit,
            max_payment,
        } => call(
            &CREATE_CLIENT_TASK,
            vec![
                V::Address(*client),
                V::Bytes(task_id.clone()),
                V::Address(*orchestrator),
                V::U64(*price_per_unit),
                V::U64(*max_payment),
            ],
        ),
        Op::Deposit { server, amount } => {
            call(&DEPOSIT, vec![V::Address(*server), V::U64(*amount)])
        }
        Op::WithdrawDeposit { server, amount } => call(
            &WITHDRAW_DEPOSIT,
            vec![V::Address(*server), V::U64(*amount)],
        ),
        Op::SetMaxPrice { max_price_per_unit } => {
            call(&SET_MAX_PRICE, vec![V::U64(*max_price_per_unit)])
        }
        Op::SetServerFee { fee_bps } => call(&SET_SERVER_FEE, vec![V::U64(*fee_bps)]),
        Op::BindClientPeer { peer_id } => call(&BIND_CLIENT_PEER, vec![V::Bytes(peer_id.clone())]),
        Op::CompleteTask {
            task_id,
            prompt_tokens,
            output_tokens,
            compute_ms,
            delegates,
            receipt_hash,
        } => call(
            &COMPLETE_TASK,
            vec![
                V::Bytes(task_id.clone()),
                V::U64(*prompt_tokens),
                V::U64(*output_tokens),
                V::U64(*compute_ms),
                V::AddressVec(delegates.clone()),
                V::Bytes(receipt_hash.clone()),
            ],
        ),
        Op::FailTask { task_id, reason } => {
            call(&FAIL_TASK, vec![V::Bytes(task_id.clone()), V::U8(*reason)])
        }
        Op::ExpireTask { task_id } => call(&EXPIRE_TASK, vec![V::Bytes(task_id.clone())]),
        Op::Slash {
            orchestrator,
            ratio_bps,
            evidence_hash,
        } => call(
            &SLASH,
            vec![
                V::Address(*orchestrator),
                V::U64(*ratio_bps),
                V::Bytes(evidence_hash.clone()),
            ],
        ),
        Op::AnchorReceipts {
            merkle_root,
            count,
            first_task,
            last_task,
        } => call(
            &ANCHOR_RECEIPTS,
            vec![
                V::Bytes(merkle_root.clone()),
                V::U64(*count),
                V::Bytes(first_task.clone()),
                V::Bytes(last_task.clone()),
            ],
        ),
        Op::Mint { .. } => Err(AbiError::NotOnChain("Mint")),
        // `Op` is non-exhaustive: an operation added later has no call here
        // until this table learns it.
        _ => Err(AbiError::NotOnChain("this operation")),
    }
}

/// A view the backend reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum View {
    /// `get_config()`.
    Config,
    /// `get_orchestrator(addr)`.
    Orchestrator(Address),
    /// `is_server(addr)`.
    IsServer(Address),
    /// `balance_of(addr)`.
    BalanceOf(Address),
    /// `server_of_peer(peer_id)`.
    ServerOfPeer(Vec<u8>),
    /// `get_task(task_id)`.
    Task(TaskId),
    /// `quote_payment(..)`.
    QuotePayment {
        /// The responsible orchestrator.
        orchestrator: Address,
        /// Price per work unit.
        price_per_unit: u64,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Compute milliseconds.
        compute_ms: u64,
        /// The escrow the payment is capped by.
        max_payment: u64,
    },
    /// `totals()`.
    Totals,
    /// `get_client(client, server)`.
    Client {
        /// The client.
        client: Address,
        /// The server its deposit is at.
        server: Address,
    },
    /// `get_server_fee(server)`.
    ServerFee(Address),
    /// `client_of_peer(peer_id)`.
    ClientOfPeer(Vec<u8>),
    /// `deposits_held()`.
    DepositsHeld,
    /// `anchor_count()`.
    AnchorCount,
    /// `get_anchor(index)`.
    Anchor(u64),
}

/// The view-function call that reads `view`.
pub fn view_call(view: &View) -> Call {
    use MoveValue as V;
    let (function, args) = match view {
        View::Config => (&GET_CONFIG, vec![]),
        View::Orchestrator(who) => (&GET_ORCHESTRATOR, vec![V::Address(*who)]),
        View::IsServer(who) => (&IS_SERVER, vec![V::Address(*who)]),
        View::BalanceOf(who) => (&BALANCE_OF, vec![V::Address(*who)]),
        View::ServerOfPeer(peer) => (&SERVER_OF_PEER, vec![V::Bytes(peer.clone())]),
        View::Task(id) => (&GET_TASK, vec![V::Bytes(id.0.to_vec())]),
        View::QuotePayment {
            orchestrator,
            price_per_unit,
            prompt_tokens,
            output_tokens,
            compute_ms,
            max_payment,
        } => (
            &QUOTE_PAYMENT,
            vec![
                V::Address(*orchestrator),
                V::U64(*price_per_unit),
                V::U64(*prompt_tokens),
                V::U64(*output_tokens),
                V::U64(*compute_ms),
                V::U64(*max_payment),
            ],
        ),
        View::Totals => (&TOTALS, vec![]),
        View::Client { client, server } => {
            (&GET_CLIENT, vec![V::Address(*client), V::Address(*server)])
        }
        View::ServerFee(server) => (&GET_SERVER_FEE, vec![V::Address(*server)]),
        View::ClientOfPeer(peer) => (&CLIENT_OF_PEER, vec![V::Bytes(peer.clone())]),
        View::DepositsHeld => (&DEPOSITS_HELD, vec![]),
        View::AnchorCount => (&ANCHOR_COUNT, vec![]),
        View::Anchor(index) => (&GET_ANCHOR, vec![V::U64(*index)]),
    };
    Call { function, args }
}

mod aborts;
pub use aborts::{ABORTS, abort_from_code};

#[cfg(test)]
pub(crate) mod tests;
