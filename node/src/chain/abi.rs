//! The interface of the `cactus_payment` Move module as the Aptos backend
//! uses it: every entry function and view function it calls, with the Move
//! parameter types exactly as `contracts/sources/cactus_payment.move` spells
//! them, and the mapping from a ledger [`Op`] (or a [`View`]) to a call with
//! ordered argument values.
//!
//! This module has no Aptos SDK dependency, so the mapping is compiled and
//! tested in every build; `tests/it/move_pin.rs` checks the table against the
//! Move source, so a change of the contract's signatures fails a test rather
//! than a transaction.

use cactus_protocol::TaskId;
use cactus_protocol::contract::{Abort, Address, Config, Op};

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
/// `create_task(server, task_id, orchestrator, price_per_unit, max_payment)`.
pub const CREATE_TASK: Function = entry(
    "create_task",
    &["&signer", "vector<u8>", "address", "u64", "u64"],
);
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
    CREATE_TASK,
    COMPLETE_TASK,
    FAIL_TASK,
    SLASH,
    ANCHOR_RECEIPTS,
    GET_CONFIG,
    GET_ORCHESTRATOR,
    IS_SERVER,
    GET_TASK,
    QUOTE_PAYMENT,
    TOTALS,
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
    /// The function.
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
    #[error("{0} has no entry function in cactus_payment (local ledgers only)")]
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
        View::AnchorCount => (&ANCHOR_COUNT, vec![]),
        View::Anchor(index) => (&GET_ANCHOR, vec![V::U64(*index)]),
    };
    Call { function, args }
}

/// Every abort code of the module, in code order.
pub const ABORTS: [Abort; 23] = [
    Abort::NotAdmin,
    Abort::AlreadyInitialized,
    Abort::NotInitialized,
    Abort::ZeroAmount,
    Abort::InvalidArgument,
    Abort::StakeTooLow,
    Abort::AlreadyRegistered,
    Abort::NotRegistered,
    Abort::InsufficientStake,
    Abort::NothingUnbonding,
    Abort::StillUnbonding,
    Abort::ServerAlreadyAuthorized,
    Abort::ServerNotFound,
    Abort::NotAuthorizedServer,
    Abort::TaskExists,
    Abort::TaskNotFound,
    Abort::TaskNotPending,
    Abort::WrongServer,
    Abort::OrchestratorIneligible,
    Abort::InvalidDelegation,
    Abort::InvalidRatio,
    Abort::InsufficientBalance,
    Abort::InvalidConfig,
];

/// The [`Abort`] with Move abort code `code` (`E_*`), if there is one.
pub fn abort_from_code(code: u64) -> Option<Abort> {
    ABORTS.iter().copied().find(|a| a.code() == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

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

    /// One of every operation that exists on chain.
    fn every_chain_op() -> Vec<Op> {
        vec![
            Op::Initialize(config()),
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

    #[test]
    fn every_chain_op_maps_to_a_well_typed_entry_call() {
        let asset = Some(Address([0xaa; 32]));
        let mut called = BTreeSet::new();
        for op in every_chain_op() {
            let call = entry_call(&op, asset).unwrap();
            assert_eq!(call.function.kind, Kind::Entry, "{op:?}");
            assert!(
                call.is_well_typed(),
                "{op:?} -> {call:?} does not fit {:?}",
                call.function.params
            );
            assert_eq!(function(call.name()), Some(call.function));
            called.insert(call.name());
        }
        let entries: BTreeSet<_> = FUNCTIONS
            .iter()
            .filter(|f| f.kind == Kind::Entry)
            .map(|f| f.name)
            .collect();
        assert_eq!(
            called, entries,
            "every entry function is reached by exactly one op kind"
        );
    }

    #[test]
    fn arguments_keep_the_parameter_order() {
        use MoveValue as V;
        let call = entry_call(&Op::Initialize(config()), Some(Address([0xaa; 32]))).unwrap();
        assert_eq!(call.name(), "initialize");
        assert_eq!(
            call.args,
            vec![
                V::Object(Address([0xaa; 32])),
                V::U64(1_000),
                V::U64(60),
                V::U64(5_000),
                V::U64(1_000),
                V::Address(Address([0xee; 32])),
                V::U64(1),
                V::U64(4),
                V::U64(2),
                V::U64(3),
                V::U64(1_000),
            ]
        );
        assert_eq!(
            entry_call(&Op::SetConfig(config()), None).unwrap().args,
            call.args[1..]
        );

        let op = Op::CompleteTask {
            task_id: vec![3; 16],
            prompt_tokens: 10,
            output_tokens: 11,
            compute_ms: 12,
            delegates: vec![Address([5; 32])],
            receipt_hash: vec![9; 32],
        };
        let call = entry_call(&op, None).unwrap();
        assert_eq!(call.name(), "complete_task");
        assert_eq!(
            call.args,
            vec![
                V::Bytes(vec![3; 16]),
                V::U64(10),
                V::U64(11),
                V::U64(12),
                V::AddressVec(vec![Address([5; 32])]),
                V::Bytes(vec![9; 32]),
            ]
        );

        let call = entry_call(
            &Op::FailTask {
                task_id: vec![1; 16],
                reason: 7,
            },
            None,
        )
        .unwrap();
        assert_eq!(
            (call.name(), call.args),
            ("fail_task", vec![V::Bytes(vec![1; 16]), V::U8(7)])
        );

        let op = Op::Slash {
            orchestrator: Address([4; 32]),
            ratio_bps: 500,
            evidence_hash: vec![8; 32],
        };
        let call = entry_call(&op, None).unwrap();
        assert_eq!(
            (call.name(), call.args),
            (
                "slash",
                vec![
                    V::Address(Address([4; 32])),
                    V::U64(500),
                    V::Bytes(vec![8; 32])
                ]
            )
        );

        let call = entry_call(&Op::Withdraw, None).unwrap();
        assert_eq!((call.name(), call.args), ("withdraw", vec![]));
    }

    #[test]
    fn mint_and_assetless_initialize_have_no_call() {
        assert_eq!(
            entry_call(
                &Op::Mint {
                    to: Address([1; 32]),
                    amount: 1
                },
                None
            ),
            Err(AbiError::NotOnChain("Mint"))
        );
        assert_eq!(
            entry_call(&Op::Initialize(config()), None),
            Err(AbiError::MissingAsset)
        );
    }

    #[test]
    fn every_view_maps_to_a_well_typed_view_call() {
        let views = [
            View::Config,
            View::Orchestrator(Address([1; 32])),
            View::IsServer(Address([1; 32])),
            View::Task(TaskId([2; 16])),
            View::QuotePayment {
                orchestrator: Address([1; 32]),
                price_per_unit: 1,
                prompt_tokens: 2,
                output_tokens: 3,
                compute_ms: 4,
                max_payment: 5,
            },
            View::Totals,
            View::AnchorCount,
            View::Anchor(3),
        ];
        let mut called = BTreeSet::new();
        for view in &views {
            let call = view_call(view);
            assert_eq!(call.function.kind, Kind::View);
            assert!(call.is_well_typed(), "{view:?} -> {call:?}");
            called.insert(call.name());
        }
        let table: BTreeSet<_> = FUNCTIONS
            .iter()
            .filter(|f| f.kind == Kind::View)
            .map(|f| f.name)
            .collect();
        assert_eq!(called, table);
        assert_eq!(
            view_call(&View::Task(TaskId([2; 16]))).args,
            vec![MoveValue::Bytes(vec![2; 16])]
        );
    }

    #[test]
    fn table_is_consistent() {
        let names: BTreeSet<_> = FUNCTIONS.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), FUNCTIONS.len(), "duplicate names");
        for f in FUNCTIONS {
            match f.kind {
                Kind::Entry => {
                    assert_eq!(f.params.first(), Some(&"&signer"), "{}", f.name);
                    assert_eq!(f.returns, None, "{}", f.name);
                    assert_eq!(f.arg_types().len() + 1, f.params.len());
                }
                Kind::View => {
                    assert!(!f.params.contains(&"&signer"), "{}", f.name);
                    assert!(f.returns.is_some(), "{}", f.name);
                    assert_eq!(f.arg_types(), f.params);
                }
            }
        }
    }

    #[test]
    fn abort_codes_round_trip() {
        for code in 1..=23 {
            assert_eq!(abort_from_code(code).map(Abort::code), Some(code));
        }
        assert_eq!(abort_from_code(0), None);
        assert_eq!(abort_from_code(24), None);
        assert_eq!(
            abort_from_code(0x1_0001),
            None,
            "std::error categories are not ours"
        );
    }
}
