//! Mirrors `contracts/tests/cactus_payment_tests.move`, scenario by scenario
//! (same names). Every test also checks the vault invariant.

use super::*;

const T0: u64 = 1_000;

fn addr(n: u8) -> Address {
    Address([n; 32])
}
fn admin() -> Address {
    addr(0xca)
}
fn server() -> Address {
    addr(0x5e)
}
fn other_server() -> Address {
    addr(0x5f)
}
fn orch(n: u8) -> Address {
    addr(n)
}
fn treasury() -> Address {
    addr(0xee)
}

fn config() -> Config {
    Config {
        min_stake: 1_000,
        unbonding_secs: 100,
        max_slash_bps: 5_000,
        reporter_bps: 1_000,
        treasury: treasury(),
        prompt_weight: 1,
        output_weight: 4,
        price_per_ms: 1,
        ms_cap_per_unit: 10,
        delegation_fee_bps: 1_000,
    }
}

fn id(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// Checks the vault invariant after the op.
fn ok(s: &mut State, who: Address, op: Op) {
    s.apply(who, &op, T0).unwrap();
    invariant(s);
}

fn err(s: &mut State, who: Address, op: Op) -> Abort {
    let before = s.clone();
    let e = s.apply(who, &op, T0).unwrap_err();
    assert_eq!(*s, before, "a failed op must change nothing");
    e
}

fn invariant(s: &State) {
    let (stake, escrow, vault) = s.totals();
    assert_eq!(stake + escrow + s.deposits_held(), vault);
    let tabs: u64 = s.clients.tabs.values().sum();
    let fees: u64 = s.clients.tasks.values().map(|t| t.fee_escrow).sum();
    assert_eq!(tabs + fees, s.deposits_held());
}

/// Initialized; two servers funded (one authorized); orchestrators 1..=3
/// funded with 10 000 and registered with 2 000.
fn setup() -> State {
    let mut s = State::new(admin());
    ok(&mut s, admin(), Op::Initialize(config()));
    ok(&mut s, admin(), Op::AuthorizeServer { server: server() });
    for who in [server(), other_server()] {
        ok(
            &mut s,
            admin(),
            Op::Mint {
                to: who,
                amount: 100_000,
            },
        );
    }
    for n in 1..=3 {
        ok(
            &mut s,
            admin(),
            Op::Mint {
                to: orch(n),
                amount: 10_000,
            },
        );
        ok(
            &mut s,
            orch(n),
            Op::RegisterOrchestrator {
                peer_id: vec![n; 38],
                amount: 2_000,
            },
        );
    }
    s
}

fn create(task: u8, o: Address, price: u64, max: u64) -> Op {
    Op::CreateTask {
        task_id: id(task),
        orchestrator: o,
        price_per_unit: price,
        max_payment: max,
    }
}

fn complete(task: u8, prompt: u64, output: u64, ms: u64, delegates: Vec<Address>) -> Op {
    Op::CompleteTask {
        task_id: id(task),
        prompt_tokens: prompt,
        output_tokens: output,
        compute_ms: ms,
        delegates,
        receipt_hash: vec![7; 32],
    }
}

#[test]
fn test_initialize_sets_config() {
    let s = setup();
    assert_eq!(s.config, Some(config()));
}

#[test]
fn test_initialize_twice_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, admin(), Op::Initialize(config())),
        Abort::AlreadyInitialized
    );
}

#[test]
fn test_initialize_not_admin_fails() {
    let mut s = State::new(admin());
    assert_eq!(
        err(&mut s, orch(1), Op::Initialize(config())),
        Abort::NotAdmin
    );
}

#[test]
fn test_not_initialized_fails() {
    let mut s = State::new(admin());
    assert_eq!(
        err(&mut s, orch(1), Op::AddStake { amount: 1 }),
        Abort::NotInitialized
    );
}

#[test]
fn test_set_config_not_admin_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), Op::SetConfig(config())),
        Abort::NotAdmin
    );
}

#[test]
fn test_set_config_invalid_fails() {
    let mut s = setup();
    let bad = Config {
        reporter_bps: 10_001,
        ..config()
    };
    assert_eq!(
        err(&mut s, admin(), Op::SetConfig(bad)),
        Abort::InvalidConfig
    );
    let bad = Config {
        prompt_weight: 0,
        output_weight: 0,
        ..config()
    };
    assert_eq!(
        err(&mut s, admin(), Op::SetConfig(bad)),
        Abort::InvalidConfig
    );
    let good = Config {
        min_stake: 5,
        ..config()
    };
    ok(&mut s, admin(), Op::SetConfig(good.clone()));
    assert_eq!(s.config, Some(good));
}

#[test]
fn test_register_orchestrator() {
    let s = setup();
    let o = &s.orchestrators[&orch(1)];
    assert_eq!(
        (o.stake, o.unbonding, o.successes, o.failures),
        (2_000, 0, 0, 0)
    );
    assert_eq!(o.peer_id, vec![1; 38]);
    assert_eq!(s.balance(&orch(1)), 8_000);
    assert_eq!(s.totals(), (6_000, 0, 6_000));
}

#[test]
fn test_register_zero_fails() {
    let mut s = setup();
    let op = Op::RegisterOrchestrator {
        peer_id: vec![9; 38],
        amount: 0,
    };
    assert_eq!(err(&mut s, orch(9), op), Abort::ZeroAmount);
}

#[test]
fn test_register_below_min_stake_fails() {
    let mut s = setup();
    ok(
        &mut s,
        admin(),
        Op::Mint {
            to: orch(9),
            amount: 10_000,
        },
    );
    let op = Op::RegisterOrchestrator {
        peer_id: vec![9; 38],
        amount: 999,
    };
    assert_eq!(err(&mut s, orch(9), op), Abort::StakeTooLow);
}

#[test]
fn test_register_twice_fails() {
    let mut s = setup();
    let op = Op::RegisterOrchestrator {
        peer_id: vec![1; 38],
        amount: 1_000,
    };
    assert_eq!(err(&mut s, orch(1), op), Abort::AlreadyRegistered);
}

#[test]
fn test_register_bad_peer_id_fails() {
    let mut s = setup();
    for peer_id in [vec![], vec![1; 65]] {
        let op = Op::RegisterOrchestrator {
            peer_id,
            amount: 1_000,
        };
        assert_eq!(err(&mut s, orch(9), op), Abort::InvalidArgument);
    }
}

#[test]
fn test_register_insufficient_balance_fails() {
    let mut s = setup();
    let op = Op::RegisterOrchestrator {
        peer_id: vec![9; 38],
        amount: 1_000,
    };
    assert_eq!(err(&mut s, orch(9), op), Abort::InsufficientBalance);
}

#[test]
fn test_add_stake() {
    let mut s = setup();
    ok(&mut s, orch(1), Op::AddStake { amount: 500 });
    assert_eq!(s.orchestrators[&orch(1)].stake, 2_500);
    assert_eq!(s.balance(&orch(1)), 7_500);
}

#[test]
fn test_add_stake_unregistered_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, orch(9), Op::AddStake { amount: 5 }),
        Abort::NotRegistered
    );
}

#[test]
fn test_request_unstake_and_withdraw() {
    let mut s = setup();
    ok(&mut s, orch(1), Op::RequestUnstake { amount: 1_000 });
    let o = &s.orchestrators[&orch(1)];
    assert_eq!(
        (o.stake, o.unbonding, o.unlock_at),
        (1_000, 1_000, T0 + 100)
    );
    s.apply(orch(1), &Op::Withdraw, T0 + 100).unwrap();
    invariant(&s);
    assert_eq!(s.orchestrators[&orch(1)].unbonding, 0);
    assert_eq!(s.balance(&orch(1)), 9_000);
    // Leaving entirely is allowed.
    ok(&mut s, orch(1), Op::RequestUnstake { amount: 1_000 });
    assert_eq!(s.orchestrators[&orch(1)].stake, 0);
    assert!(!s.is_eligible(&orch(1)));
}

#[test]
fn test_unstake_more_than_stake_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, orch(1), Op::RequestUnstake { amount: 2_001 }),
        Abort::InsufficientStake
    );
}

#[test]
fn test_unstake_leaving_dust_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, orch(1), Op::RequestUnstake { amount: 1_500 }),
        Abort::StakeTooLow
    );
}

#[test]
fn test_withdraw_before_unlock_fails() {
    let mut s = setup();
    ok(&mut s, orch(1), Op::RequestUnstake { amount: 1_000 });
    let before = s.clone();
    assert_eq!(
        s.apply(orch(1), &Op::Withdraw, T0 + 99),
        Err(Abort::StillUnbonding)
    );
    assert_eq!(s, before);
}

#[test]
fn test_withdraw_nothing_fails() {
    let mut s = setup();
    assert_eq!(err(&mut s, orch(1), Op::Withdraw), Abort::NothingUnbonding);
    assert_eq!(err(&mut s, orch(9), Op::Withdraw), Abort::NotRegistered);
}

#[test]
fn test_authorize_and_revoke_server() {
    let mut s = setup();
    assert!(s.is_server(&server()));
    ok(
        &mut s,
        admin(),
        Op::AuthorizeServer {
            server: other_server(),
        },
    );
    assert!(s.is_server(&other_server()));
    ok(
        &mut s,
        admin(),
        Op::RevokeServer {
            server: other_server(),
        },
    );
    assert!(!s.is_server(&other_server()));
}

#[test]
fn test_authorize_not_admin_fails() {
    let mut s = setup();
    assert_eq!(
        err(
            &mut s,
            server(),
            Op::AuthorizeServer {
                server: other_server()
            }
        ),
        Abort::NotAdmin
    );
    assert_eq!(
        err(&mut s, server(), Op::RevokeServer { server: server() }),
        Abort::NotAdmin
    );
}

#[test]
fn test_authorize_twice_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, admin(), Op::AuthorizeServer { server: server() }),
        Abort::ServerAlreadyAuthorized
    );
}

#[test]
fn test_revoke_unknown_fails() {
    let mut s = setup();
    assert_eq!(
        err(
            &mut s,
            admin(),
            Op::RevokeServer {
                server: other_server()
            }
        ),
        Abort::ServerNotFound
    );
}

#[test]
fn test_revoked_server_cannot_create() {
    let mut s = setup();
    ok(&mut s, admin(), Op::RevokeServer { server: server() });
    assert_eq!(
        err(&mut s, server(), create(1, orch(1), 1, 100)),
        Abort::NotAuthorizedServer
    );
}

#[test]
fn test_create_task_escrows() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    assert_eq!(s.balance(&server()), 95_000);
    let t = &s.tasks[&[1; 16]];
    assert_eq!(
        (t.escrow, t.status, t.orchestrator),
        (5_000, TaskStatus::Pending, orch(1))
    );
    assert_eq!(s.totals(), (6_000, 5_000, 11_000));
}

#[test]
fn test_create_task_unauthorized_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, other_server(), create(1, orch(1), 1, 100)),
        Abort::NotAuthorizedServer
    );
}

#[test]
fn test_create_task_duplicate_fails() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 1, 100));
    assert_eq!(
        err(&mut s, server(), create(1, orch(2), 1, 100)),
        Abort::TaskExists
    );
}

#[test]
fn test_create_task_bad_id_fails() {
    let mut s = setup();
    let op = Op::CreateTask {
        task_id: vec![1; 15],
        orchestrator: orch(1),
        price_per_unit: 1,
        max_payment: 100,
    };
    assert_eq!(err(&mut s, server(), op), Abort::InvalidArgument);
}

#[test]
fn test_create_task_zero_payment_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), create(1, orch(1), 1, 0)),
        Abort::ZeroAmount
    );
}

#[test]
fn test_create_task_unregistered_orchestrator_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), create(1, orch(9), 1, 100)),
        Abort::NotRegistered
    );
}

#[test]
fn test_create_task_ineligible_orchestrator_fails() {
    let mut s = setup();
    ok(
        &mut s,
        admin(),
        Op::SetConfig(Config {
            min_stake: 3_000,
            ..config()
        }),
    );
    assert_eq!(
        err(&mut s, server(), create(1, orch(1), 1, 100)),
        Abort::OrchestratorIneligible
    );
}

#[test]
fn test_create_task_insufficient_balance_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), create(1, orch(1), 1, 100_001)),
        Abort::InsufficientBalance
    );
}

#[test]
fn test_complete_task_pays_and_refunds() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    // units = 10*1 + 20*4 = 90; base = 180; time = min(500, 900) * 1 = 500;
    // rep = 5000 + 5000*1/1 = 10000 bps; payment = 680.
    assert_eq!(s.quote_payment(&orch(1), 2, 10, 20, 500, 5_000), Ok(680));
    ok(&mut s, server(), complete(1, 10, 20, 500, vec![]));
    let t = &s.tasks[&[1; 16]];
    assert_eq!((t.status, t.payment), (TaskStatus::Completed, 680));
    assert_eq!(s.balance(&orch(1)), 8_000 + 680);
    assert_eq!(s.balance(&server()), 100_000 - 680);
    let o = &s.orchestrators[&orch(1)];
    assert_eq!((o.successes, o.failures, o.compute_ms), (1, 0, 500));
    assert_eq!(s.totals(), (6_000, 0, 6_000));
}

#[test]
fn test_payment_capped_by_escrow() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 100, 300));
    ok(&mut s, server(), complete(1, 10, 20, 500, vec![]));
    assert_eq!(s.tasks[&[1; 16]].payment, 300);
    assert_eq!(s.balance(&server()), 100_000 - 300);
}

#[test]
fn test_reputation_scales_payment() {
    let mut s = setup();
    // One failure, no success: rep = 5000 + 5000 * 1 / 2 = 7500 bps.
    ok(&mut s, server(), create(1, orch(1), 1, 5_000));
    ok(
        &mut s,
        server(),
        Op::FailTask {
            task_id: id(1),
            reason: 3,
        },
    );
    assert_eq!(
        s.quote_payment(&orch(1), 2, 10, 20, 500, 5_000),
        Ok(680 * 3 / 4)
    );
    ok(&mut s, server(), create(2, orch(1), 2, 5_000));
    ok(&mut s, server(), complete(2, 10, 20, 500, vec![]));
    assert_eq!(s.tasks[&[2; 16]].payment, 510);
    // Compute time is credited only up to ms_cap_per_unit per unit.
    assert_eq!(
        s.quote_payment(&orch(2), 0, 1, 0, 1_000_000, u64::MAX),
        Ok(10)
    );
}

#[test]
fn test_complete_task_delegated_splits() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    ok(
        &mut s,
        server(),
        complete(1, 10, 20, 500, vec![orch(2), orch(3)]),
    );
    // 680: orch1 keeps 68, orch2 keeps 61 of 612, orch3 executes for 551.
    assert_eq!(s.balance(&orch(1)), 8_000 + 68);
    assert_eq!(s.balance(&orch(2)), 8_000 + 61);
    assert_eq!(s.balance(&orch(3)), 8_000 + 551);
    // The responsible orchestrator is credited with the success, the executor with the time.
    assert_eq!(s.orchestrators[&orch(1)].successes, 1);
    assert_eq!(s.orchestrators[&orch(1)].compute_ms, 0);
    assert_eq!(s.orchestrators[&orch(3)].compute_ms, 500);
}

#[test]
fn test_complete_task_bad_delegation_fails() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    for delegates in [
        vec![orch(2), orch(3), orch(2)],
        vec![orch(2), orch(2)],
        vec![orch(1)],
        vec![orch(9)],
    ] {
        assert_eq!(
            err(&mut s, server(), complete(1, 1, 1, 1, delegates)),
            Abort::InvalidDelegation
        );
    }
}

#[test]
fn test_complete_task_wrong_server_fails() {
    let mut s = setup();
    ok(
        &mut s,
        admin(),
        Op::AuthorizeServer {
            server: other_server(),
        },
    );
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    assert_eq!(
        err(&mut s, other_server(), complete(1, 1, 1, 1, vec![])),
        Abort::WrongServer
    );
    assert_eq!(
        err(
            &mut s,
            other_server(),
            Op::FailTask {
                task_id: id(1),
                reason: 0
            }
        ),
        Abort::WrongServer
    );
}

#[test]
fn test_complete_task_twice_fails() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    ok(&mut s, server(), complete(1, 1, 1, 1, vec![]));
    assert_eq!(
        err(&mut s, server(), complete(1, 1, 1, 1, vec![])),
        Abort::TaskNotPending
    );
}

#[test]
fn test_complete_unknown_task_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), complete(1, 1, 1, 1, vec![])),
        Abort::TaskNotFound
    );
}

#[test]
fn test_complete_task_bad_receipt_hash_fails() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    let op = Op::CompleteTask {
        task_id: id(1),
        prompt_tokens: 1,
        output_tokens: 1,
        compute_ms: 1,
        delegates: vec![],
        receipt_hash: vec![7; 31],
    };
    assert_eq!(err(&mut s, server(), op), Abort::InvalidArgument);
}

#[test]
fn test_fail_task_refunds() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    ok(
        &mut s,
        server(),
        Op::FailTask {
            task_id: id(1),
            reason: 2,
        },
    );
    let t = &s.tasks[&[1; 16]];
    assert_eq!((t.status, t.reason, t.payment), (TaskStatus::Failed, 2, 0));
    assert_eq!(s.balance(&server()), 100_000);
    assert_eq!(s.orchestrators[&orch(1)].failures, 1);
}

#[test]
fn test_expire_task_refunds_its_server_after_the_deadline() {
    let mut s = setup();
    s.apply(server(), &create(1, orch(1), 2, 5_000), 1_000)
        .unwrap();
    let record = s.orchestrators[&orch(1)].clone();
    // Anyone may: here the orchestrator itself.
    let expire = Op::ExpireTask { task_id: id(1) };
    s.apply(orch(1), &expire, 1_000 + TASK_EXPIRY_SECS).unwrap();
    invariant(&s);
    let t = &s.tasks[&[1; 16]];
    assert_eq!(
        (t.status, t.reason, t.payment),
        (TaskStatus::Failed, reason::EXPIRED, 0)
    );
    assert_eq!(s.balance(&server()), 100_000);
    assert_eq!(
        s.orchestrators[&orch(1)],
        record,
        "nobody's counters change"
    );
    assert!(s.task_created.is_empty());
}

#[test]
fn test_expire_task_before_the_deadline_aborts() {
    let mut s = setup();
    s.apply(server(), &create(1, orch(1), 2, 5_000), 1_000)
        .unwrap();
    let before = s.clone();
    let expire = Op::ExpireTask { task_id: id(1) };
    assert_eq!(
        s.apply(orch(1), &expire, 1_000 + TASK_EXPIRY_SECS - 1),
        Err(Abort::TaskNotExpired)
    );
    assert_eq!(s, before);
}

#[test]
fn test_fail_task_not_pending_fails() {
    let mut s = setup();
    ok(&mut s, server(), create(1, orch(1), 2, 5_000));
    ok(
        &mut s,
        server(),
        Op::FailTask {
            task_id: id(1),
            reason: 2,
        },
    );
    assert_eq!(
        err(
            &mut s,
            server(),
            Op::FailTask {
                task_id: id(1),
                reason: 2
            }
        ),
        Abort::TaskNotPending
    );
    assert_eq!(
        err(
            &mut s,
            server(),
            Op::FailTask {
                task_id: id(2),
                reason: 2
            }
        ),
        Abort::TaskNotFound
    );
}

#[test]
fn test_slash_to_treasury_and_reporter() {
    let mut s = setup();
    let op = Op::Slash {
        orchestrator: orch(1),
        ratio_bps: 2_500,
        evidence_hash: vec![1; 32],
    };
    ok(&mut s, server(), op);
    // 25% of 2 000 = 500: 50 to the reporting server, 450 to treasury.
    assert_eq!(s.orchestrators[&orch(1)].stake, 1_500);
    assert_eq!(s.balance(&server()), 100_000 + 50);
    assert_eq!(s.balance(&treasury()), 450);
}

#[test]
fn test_slash_takes_unbonding_after_stake() {
    let mut s = setup();
    ok(&mut s, orch(1), Op::RequestUnstake { amount: 2_000 });
    let op = Op::Slash {
        orchestrator: orch(1),
        ratio_bps: 5_000,
        evidence_hash: vec![1; 32],
    };
    ok(&mut s, server(), op);
    let o = &s.orchestrators[&orch(1)];
    assert_eq!((o.stake, o.unbonding), (0, 1_000));
}

#[test]
fn test_slash_ratio_too_high_fails() {
    let mut s = setup();
    for ratio_bps in [0, 5_001] {
        let op = Op::Slash {
            orchestrator: orch(1),
            ratio_bps,
            evidence_hash: vec![1; 32],
        };
        assert_eq!(err(&mut s, server(), op), Abort::InvalidRatio);
    }
}

#[test]
fn test_slash_unauthorized_fails() {
    let mut s = setup();
    let op = Op::Slash {
        orchestrator: orch(1),
        ratio_bps: 100,
        evidence_hash: vec![1; 32],
    };
    assert_eq!(err(&mut s, orch(2), op), Abort::NotAuthorizedServer);
}

#[test]
fn test_slash_with_used_evidence_aborts() {
    let mut s = setup();
    let slash = |o: Address, evidence: u8| Op::Slash {
        orchestrator: o,
        ratio_bps: 1_000,
        evidence_hash: vec![evidence; 32],
    };
    ok(&mut s, server(), slash(orch(1), 7));
    // 10 % of 2 000, then 10 % of 1 800 on other evidence.
    assert_eq!(s.orchestrators[&orch(1)].stake, 1_800);
    ok(&mut s, server(), slash(orch(1), 8));
    assert_eq!(s.orchestrators[&orch(1)].stake, 1_620);
    // The same evidence again slashes nothing: from the same server, against
    // another orchestrator, or from another server.
    assert_eq!(
        err(&mut s, server(), slash(orch(1), 7)),
        Abort::EvidenceUsed
    );
    assert_eq!(
        err(&mut s, server(), slash(orch(2), 8)),
        Abort::EvidenceUsed
    );
    ok(
        &mut s,
        admin(),
        Op::AuthorizeServer {
            server: other_server(),
        },
    );
    assert_eq!(
        err(&mut s, other_server(), slash(orch(1), 7)),
        Abort::EvidenceUsed
    );
    // A slash that fails uses up nothing.
    let zero = Op::Slash {
        orchestrator: orch(2),
        ratio_bps: 0,
        evidence_hash: vec![9; 32],
    };
    assert_eq!(err(&mut s, server(), zero), Abort::InvalidRatio);
    ok(&mut s, server(), slash(orch(2), 9));
    assert_eq!(s.orchestrators[&orch(2)].stake, 1_800);
    assert_eq!(s.used_evidence.len(), 3);
}

fn anchor(root_len: usize) -> Op {
    Op::AnchorReceipts {
        merkle_root: vec![3; root_len],
        count: 4,
        first_task: id(1),
        last_task: id(4),
    }
}

#[test]
fn test_anchor_receipts() {
    let mut s = setup();
    ok(&mut s, server(), anchor(32));
    assert_eq!(s.anchors.len(), 1);
    let a = &s.anchors[0];
    assert_eq!(
        (a.server, a.root.0, a.count, a.anchored_at),
        (server(), [3; 32], 4, T0)
    );
    let zero = Op::AnchorReceipts {
        merkle_root: vec![3; 32],
        count: 0,
        first_task: id(1),
        last_task: id(1),
    };
    assert_eq!(err(&mut s, server(), zero), Abort::ZeroAmount);
}

#[test]
fn test_anchor_receipts_bad_root_fails() {
    let mut s = setup();
    assert_eq!(err(&mut s, server(), anchor(31)), Abort::InvalidArgument);
}

#[test]
fn test_anchor_unauthorized_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, other_server(), anchor(32)),
        Abort::NotAuthorizedServer
    );
}

#[test]
fn test_invariant_escrow_plus_stake_equals_balance() {
    let mut s = setup();
    let ops = [
        (server(), create(1, orch(1), 3, 4_000)),
        (server(), create(2, orch(2), 1, 900)),
        (orch(3), Op::AddStake { amount: 700 }),
        (server(), complete(1, 40, 80, 2_000, vec![orch(3)])),
        (orch(2), Op::RequestUnstake { amount: 1_000 }),
        (
            server(),
            Op::Slash {
                orchestrator: orch(2),
                ratio_bps: 5_000,
                evidence_hash: vec![2; 32],
            },
        ),
        (
            server(),
            Op::FailTask {
                task_id: id(2),
                reason: 1,
            },
        ),
        (server(), create(3, orch(3), 1, 50)),
        (server(), Op::SetServerFee { fee_bps: 1_234 }),
        (
            client(),
            Op::Deposit {
                server: server(),
                amount: 7_777,
            },
        ),
        (server(), client_create(4, 5, 999)),
        (server(), client_create(5, 3, 1_001)),
        (server(), complete(4, 9, 21, 77, vec![])),
        (
            server(),
            Op::FailTask {
                task_id: id(5),
                reason: 1,
            },
        ),
        (
            client(),
            Op::WithdrawDeposit {
                server: server(),
                amount: 1_000,
            },
        ),
    ];
    fund(&mut s, client(), 100_000);
    for (who, op) in ops {
        ok(&mut s, who, op);
    }
    // And across the board: nothing was created or destroyed but by Mint.
    let outside: u64 = s.balances.values().sum();
    assert_eq!(outside + s.vault, 3 * 100_000 + 3 * 10_000);
}

#[test]
fn test_stake_that_would_overflow_the_vault_aborts() {
    let mut s = State::new(admin());
    ok(&mut s, admin(), Op::Initialize(config()));
    let (whale, whale2) = (addr(0x61), addr(0x62));
    for to in [whale, whale2] {
        ok(
            &mut s,
            admin(),
            Op::Mint {
                to,
                amount: u64::MAX,
            },
        );
    }
    let min = config().min_stake;
    let register = |amount| Op::RegisterOrchestrator {
        peer_id: vec![0x61; 38],
        amount,
    };
    ok(&mut s, whale, register(u64::MAX - min));
    assert_eq!(s.totals(), (u64::MAX - min, 0, u64::MAX - min));
    // One unit more than the vault can hold.
    assert_eq!(
        err(&mut s, whale2, register(min + 1)),
        Abort::ArithmeticError
    );
    // Exactly what it can hold; then nothing more goes in.
    ok(&mut s, whale2, register(min));
    assert_eq!(s.vault, u64::MAX);
    assert_eq!(
        err(&mut s, whale2, Op::AddStake { amount: 1 }),
        Abort::ArithmeticError
    );
}

/// Model-only: the other overflows Move aborts on (some in the framework's
/// fungible-asset store rather than in the module, so the Move tests cannot
/// name their location) abort here too, and change nothing.
#[test]
fn arithmetic_overflows_abort_and_change_nothing() {
    let mut s = setup();
    let full = |to| Op::Mint {
        to,
        amount: u64::MAX,
    };
    // The faucet cannot push a balance past u64::MAX.
    assert_eq!(err(&mut s, admin(), full(orch(1))), Abort::ArithmeticError);
    // Nor can a payout: the treasury's balance is full, so a slash is refused
    // whole (stake, reporter's cut and the evidence stay as they were).
    ok(&mut s, admin(), full(treasury()));
    let slash = Op::Slash {
        orchestrator: orch(1),
        ratio_bps: 1_000,
        evidence_hash: vec![1; 32],
    };
    assert_eq!(err(&mut s, server(), slash), Abort::ArithmeticError);
    // u128 products of the payment formula.
    ok(&mut s, server(), create(1, orch(1), u64::MAX, 1_000));
    let huge = complete(1, u64::MAX, u64::MAX, 0, vec![]);
    assert_eq!(err(&mut s, server(), huge), Abort::ArithmeticError);
    assert_eq!(
        s.quote_payment(&orch(1), u64::MAX, u64::MAX, u64::MAX, 0, 1_000),
        Err(Abort::ArithmeticError)
    );
    // The executor's compute_ms counter.
    ok(&mut s, server(), complete(1, 1, 1, u64::MAX, vec![]));
    assert_eq!(s.orchestrators[&orch(1)].compute_ms, u64::MAX);
    ok(&mut s, server(), create(2, orch(1), 1, 1_000));
    assert_eq!(
        err(&mut s, server(), complete(2, 1, 1, 1, vec![])),
        Abort::ArithmeticError
    );
    // now + unbonding_secs.
    let forever = Config {
        unbonding_secs: u64::MAX,
        ..config()
    };
    ok(&mut s, admin(), Op::SetConfig(forever));
    assert_eq!(
        err(&mut s, orch(2), Op::RequestUnstake { amount: 1_000 }),
        Abort::ArithmeticError
    );
}

#[test]
fn abort_codes_match_the_spec_numbers() {
    let all = [
        (Abort::TaskNotExpired, 25),
        (Abort::InsufficientDeposit, 26),
        (Abort::InvalidFee, 27),
        (Abort::PriceAboveCap, 28),
        (Abort::PeerTaken, 29),
        (Abort::NotAdmin, 1),
        (Abort::AlreadyInitialized, 2),
        (Abort::NotInitialized, 3),
        (Abort::ZeroAmount, 4),
        (Abort::InvalidArgument, 5),
        (Abort::StakeTooLow, 6),
        (Abort::AlreadyRegistered, 7),
        (Abort::NotRegistered, 8),
        (Abort::InsufficientStake, 9),
        (Abort::NothingUnbonding, 10),
        (Abort::StillUnbonding, 11),
        (Abort::ServerAlreadyAuthorized, 12),
        (Abort::ServerNotFound, 13),
        (Abort::NotAuthorizedServer, 14),
        (Abort::TaskExists, 15),
        (Abort::TaskNotFound, 16),
        (Abort::TaskNotPending, 17),
        (Abort::WrongServer, 18),
        (Abort::OrchestratorIneligible, 19),
        (Abort::InvalidDelegation, 20),
        (Abort::InvalidRatio, 21),
        (Abort::InsufficientBalance, 22),
        (Abort::InvalidConfig, 23),
        (Abort::EvidenceUsed, 24),
        (Abort::ArithmeticError, 4017),
    ];
    for (a, n) in all {
        assert_eq!(a.code(), n);
    }
}

// ------------------------------------------------------------------ clients

fn client() -> Address {
    addr(0xc1)
}

fn fund(s: &mut State, who: Address, amount: u64) {
    ok(s, admin(), Op::Mint { to: who, amount });
}

/// Task `task` of `server()` for orchestrator 1, paid by `client()`.
fn client_create(task: u8, price: u64, max: u64) -> Op {
    Op::CreateClientTask {
        client: client(),
        task_id: id(task),
        orchestrator: orch(1),
        price_per_unit: price,
        max_payment: max,
    }
}

fn deposit(amount: u64) -> Op {
    Op::Deposit {
        server: server(),
        amount,
    }
}

/// `setup`, the server's fee at 10 %, the client's deposit of 10 000 there.
fn client_ready() -> State {
    let mut s = setup();
    fund(&mut s, client(), 100_000);
    ok(&mut s, server(), Op::SetServerFee { fee_bps: 1_000 });
    ok(&mut s, client(), deposit(10_000));
    s
}

fn client_view(s: &State) -> (u64, u64) {
    (s.clients.tab(client(), server()), s.clients.cap(&client()))
}

#[test]
fn test_deposit_and_withdraw_deposit() {
    let mut s = setup();
    fund(&mut s, client(), 100_000);
    ok(&mut s, client(), deposit(5_000));
    assert_eq!(client_view(&s), (5_000, NO_CAP));
    assert_eq!(s.deposits_held(), 5_000);
    assert_eq!(s.balance(&client()), 95_000);
    let withdraw = |amount| Op::WithdrawDeposit {
        server: server(),
        amount,
    };
    ok(&mut s, client(), withdraw(2_000));
    assert_eq!(client_view(&s), (3_000, NO_CAP));
    ok(&mut s, client(), withdraw(3_000));
    assert_eq!(client_view(&s), (0, NO_CAP));
    assert!(s.clients.tabs.is_empty(), "an empty tab is dropped");
    assert_eq!(s.balance(&client()), 100_000);
}

#[test]
fn test_deposit_at_unknown_server_fails() {
    let mut s = setup();
    fund(&mut s, client(), 100_000);
    let op = Op::Deposit {
        server: other_server(),
        amount: 5_000,
    };
    assert_eq!(err(&mut s, client(), op), Abort::ServerNotFound);
}

#[test]
fn test_withdraw_deposit_above_tab_fails() {
    let mut s = setup();
    fund(&mut s, client(), 100_000);
    ok(&mut s, client(), deposit(100));
    let op = Op::WithdrawDeposit {
        server: server(),
        amount: 101,
    };
    assert_eq!(err(&mut s, client(), op), Abort::InsufficientDeposit);
}

#[test]
fn test_client_task_pays_orchestrator_and_fee_and_refunds_client() {
    let mut s = client_ready();
    assert_eq!(s.clients.fee(&server()), 1_000);
    ok(&mut s, server(), client_create(1, 2, 5_000));
    // 5 000 for the payment and 500 for the fee left the tab.
    assert_eq!(client_view(&s), (4_500, NO_CAP));
    assert_eq!(s.totals(), (6_000, 5_000, 6_000 + 5_000 + 5_000));
    // Payment 680 (as in test_complete_task_pays_and_refunds), fee 68.
    ok(&mut s, server(), complete(1, 10, 20, 500, vec![]));
    let t = &s.tasks[&[1; 16]];
    assert_eq!((t.status, t.payment), (TaskStatus::Completed, 680));
    assert_eq!(client_view(&s), (10_000 - 680 - 68, NO_CAP));
    assert_eq!(s.balance(&orch(1)), 8_000 + 680);
    assert_eq!(s.balance(&server()), 100_000 + 68);
    assert_eq!(s.balance(&client()), 90_000);
    assert_eq!(s.deposits_held(), 9_252);
    assert!(s.clients.tasks.is_empty());
}

#[test]
fn test_client_task_beyond_the_deposit_fails() {
    let mut s = client_ready();
    // 10 000 plus its 10 % fee is more than the tab holds.
    assert_eq!(
        err(&mut s, server(), client_create(1, 2, 10_000)),
        Abort::InsufficientDeposit
    );
}

#[test]
fn test_client_task_from_another_servers_deposit_fails() {
    let mut s = client_ready();
    ok(
        &mut s,
        admin(),
        Op::AuthorizeServer {
            server: other_server(),
        },
    );
    assert_eq!(
        err(&mut s, other_server(), client_create(1, 2, 100)),
        Abort::InsufficientDeposit
    );
}

#[test]
fn test_client_task_above_price_cap_fails() {
    let mut s = client_ready();
    ok(
        &mut s,
        client(),
        Op::SetMaxPrice {
            max_price_per_unit: 9,
        },
    );
    assert_eq!(client_view(&s), (10_000, 9));
    assert_eq!(
        err(&mut s, server(), client_create(1, 10, 100)),
        Abort::PriceAboveCap
    );
}

#[test]
fn test_failed_client_task_refunds_the_client() {
    let mut s = client_ready();
    ok(&mut s, server(), client_create(1, 2, 5_000));
    let fail = Op::FailTask {
        task_id: id(1),
        reason: 3,
    };
    ok(&mut s, server(), fail);
    assert_eq!(client_view(&s), (10_000, NO_CAP));
    assert_eq!(s.balance(&server()), 100_000);
    assert_eq!(s.orchestrators[&orch(1)].failures, 1);
    assert_eq!(s.totals(), (6_000, 0, 6_000 + 10_000));
}

#[test]
fn test_expired_client_task_refunds_the_client() {
    let mut s = client_ready();
    s.apply(server(), &client_create(1, 2, 5_000), 1_000)
        .unwrap();
    let expire = Op::ExpireTask { task_id: id(1) };
    s.apply(client(), &expire, 1_000 + TASK_EXPIRY_SECS)
        .unwrap();
    invariant(&s);
    assert_eq!(client_view(&s), (10_000, NO_CAP));
    assert_eq!(s.balance(&server()), 100_000);
    assert_eq!(s.totals(), (6_000, 0, 6_000 + 10_000));
}

#[test]
fn test_bind_client_peer() {
    let mut s = setup();
    assert_eq!(s.client_of_peer(b"12D3KooWClient"), None);
    let bind = |who: Address| {
        (
            who,
            Op::BindClientPeer {
                peer_id: b"12D3KooWClient".to_vec(),
            },
        )
    };
    let (who, op) = bind(client());
    ok(&mut s, who, op);
    assert_eq!(s.client_of_peer(b"12D3KooWClient"), Some(client()));
    // Binding it again is harmless.
    let (who, op) = bind(client());
    ok(&mut s, who, op);
    assert_eq!(s.client_of_peer(b"12D3KooWClient"), Some(client()));
}

#[test]
fn test_bind_client_peer_of_another_client_fails() {
    let mut s = setup();
    let op = || Op::BindClientPeer {
        peer_id: b"12D3KooWClient".to_vec(),
    };
    ok(&mut s, client(), op());
    assert_eq!(err(&mut s, other_server(), op()), Abort::PeerTaken);
}

#[test]
fn test_bind_client_peer_bad_peer_id_fails() {
    let mut s = setup();
    let op = Op::BindClientPeer { peer_id: vec![] };
    assert_eq!(err(&mut s, client(), op), Abort::InvalidArgument);
}

#[test]
fn test_server_fee_above_bps_fails() {
    let mut s = setup();
    let op = Op::SetServerFee { fee_bps: 10_001 };
    assert_eq!(err(&mut s, server(), op), Abort::InvalidFee);
}

#[test]
fn test_server_fee_unauthorized_fails() {
    let mut s = setup();
    let op = Op::SetServerFee { fee_bps: 100 };
    assert_eq!(err(&mut s, other_server(), op), Abort::NotAuthorizedServer);
}

// ------------------------------------------------------------ server peers

fn bind(server: Address, peer: &[u8]) -> Op {
    Op::SetServerPeer {
        server,
        peer_id: peer.to_vec(),
    }
}

#[test]
fn test_set_server_peer_binds_a_server() {
    let mut s = setup();
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterA"));
    assert_eq!(s.server_of_peer(b"12D3KooWRouterA"), Some(server()));
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterB"));
    assert_eq!(s.server_of_peer(b"12D3KooWRouterB"), Some(server()));
}

#[test]
fn test_server_peer_replaced_is_unbound() {
    let mut s = setup();
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterA"));
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterB"));
    assert_eq!(s.server_of_peer(b"12D3KooWRouterA"), None);
}

#[test]
fn test_revoked_server_peer_is_unbound() {
    let mut s = setup();
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterA"));
    ok(&mut s, admin(), Op::RevokeServer { server: server() });
    assert_eq!(s.server_of_peer(b"12D3KooWRouterA"), None);
}

#[test]
fn test_set_server_peer_not_admin_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, server(), bind(server(), b"12D3KooWRouterA")),
        Abort::NotAdmin
    );
}

#[test]
fn test_set_server_peer_unknown_server_fails() {
    let mut s = setup();
    assert_eq!(
        err(&mut s, admin(), bind(other_server(), b"12D3KooWRouterA")),
        Abort::ServerNotFound
    );
}

#[test]
fn test_set_server_peer_taken_fails() {
    let mut s = setup();
    ok(
        &mut s,
        admin(),
        Op::AuthorizeServer {
            server: other_server(),
        },
    );
    ok(&mut s, admin(), bind(server(), b"12D3KooWRouterA"));
    assert_eq!(
        err(&mut s, admin(), bind(other_server(), b"12D3KooWRouterA")),
        Abort::PeerTaken
    );
}
