use super::*;
use cactus_protocol::contract::Abort;
use std::collections::BTreeSet;

/// A contract configuration with a distinct value in every field; the
/// Aptos backend's tests use it too.
pub(crate) fn config() -> Config {
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

/// One of every operation that exists on chain; the Aptos backend's tests
/// use it too.
pub(crate) fn every_chain_op() -> Vec<Op> {
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
        Op::ExpireTask {
            task_id: vec![2; 16],
        },
        Op::CreateClientTask {
            client: Address([9; 32]),
            task_id: vec![4; 16],
            orchestrator: Address([4; 32]),
            price_per_unit: 2,
            max_payment: 30,
        },
        Op::Deposit {
            server: Address([5; 32]),
            amount: 40,
        },
        Op::WithdrawDeposit {
            server: Address([5; 32]),
            amount: 4,
        },
        Op::SetMaxPrice {
            max_price_per_unit: 3,
        },
        Op::SetServerFee { fee_bps: 100 },
        Op::BindClientPeer {
            peer_id: vec![2; 38],
        },
        Op::SetServerPeer {
            server: Address([5; 32]),
            peer_id: vec![1; 38],
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
        View::BalanceOf(Address([1; 32])),
        View::ServerOfPeer(vec![1; 38]),
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
        View::Client {
            client: Address([1; 32]),
            server: Address([2; 32]),
        },
        View::ServerFee(Address([2; 32])),
        View::DepositsHeld,
        View::ClientOfPeer(vec![2; 38]),
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
    for code in 1..=29 {
        assert_eq!(abort_from_code(code).map(Abort::code), Some(code));
    }
    assert_eq!(abort_from_code(29), Some(Abort::PeerTaken));
    assert_eq!(abort_from_code(0), None);
    assert_eq!(abort_from_code(30), None);
    assert_eq!(
        abort_from_code(Abort::ArithmeticError.code()),
        None,
        "the VM's arithmetic error is no abort code of the module"
    );
    assert_eq!(
        abort_from_code(0x1_0001),
        None,
        "std::error categories are not ours"
    );
}
