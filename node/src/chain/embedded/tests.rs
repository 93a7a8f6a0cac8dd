//! Tests of the embedded chain: durability, snapshots, compaction, stake
//! from funded accounts.

use super::*;
use crate::chain::ChainBackend;
use cactus_protocol::TaskId;
use cactus_protocol::contract::{Anchor, Orchestrator};
use cactus_protocol::messages::Transaction;

#[test]
fn operations_survive_reopen_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let router = Address([1; 32]);
    let settings = LocalSettings::default();
    let expected = {
        let c = EmbeddedChain::open(dir.path(), router, &settings).unwrap();
        let orch = Address([2; 32]);
        c.apply(
            router,
            Op::Mint {
                to: orch,
                amount: 5_000,
            },
        )
        .unwrap();
        c.apply(
            orch,
            Op::RegisterOrchestrator {
                peer_id: vec![9; 38],
                amount: 2_000,
            },
        )
        .unwrap();
        // A client's deposit, a fee and a cap: the client book is in the
        // snapshots too.
        let client = Address([3; 32]);
        let client_ops = [
            (
                router,
                Op::Mint {
                    to: client,
                    amount: 5_000,
                },
            ),
            (
                client,
                Op::Deposit {
                    server: router,
                    amount: 4_000,
                },
            ),
            (router, Op::SetServerFee { fee_bps: 500 }),
            (
                client,
                Op::SetMaxPrice {
                    max_price_per_unit: 7,
                },
            ),
        ];
        for (who, op) in client_ops {
            c.apply(who, op).unwrap();
        }
        // Enough operations to cross a snapshot, half of them client tasks.
        for i in 0..SNAPSHOT_EVERY + 3 {
            let mut id = vec![0; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            let create = if i % 2 == 0 {
                Op::CreateTask {
                    task_id: id.clone(),
                    orchestrator: orch,
                    price_per_unit: 1,
                    max_payment: 10,
                }
            } else {
                Op::CreateClientTask {
                    client,
                    task_id: id.clone(),
                    orchestrator: orch,
                    price_per_unit: 1,
                    max_payment: 10,
                }
            };
            c.apply(router, create).unwrap();
        }
        assert!(!c.state().clients.tasks.is_empty());
        // A refused operation is not logged and changes nothing.
        let before = c.state();
        let err = c.apply(orch, Op::Withdraw).unwrap_err();
        assert!(matches!(err, ChainError::Abort(Abort::NothingUnbonding)));
        assert_eq!(c.state(), before);
        c.state()
    };
    let c = EmbeddedChain::open(dir.path(), router, &settings).unwrap();
    assert_eq!(c.state(), expected);
    drop(c);
    let c = EmbeddedChain::open_existing(dir.path()).unwrap();
    assert_eq!(c.state(), expected);
    assert_eq!(c.len().unwrap(), 3 + 2 + 4 + SNAPSHOT_EVERY + 3);
    let (stake, escrow, vault) = c.state().totals();
    assert_eq!(stake + escrow + c.state().deposits_held(), vault);
}

/// A snapshot written before `State::used_evidence` existed still loads,
/// with no evidence used.
#[test]
fn snapshots_from_before_the_evidence_log_load() {
    /// `State` as it was serialized before the evidence log.
    #[derive(Serialize)]
    struct OldState<'a> {
        admin: Address,
        config: &'a Option<Config>,
        balances: &'a std::collections::BTreeMap<Address, u64>,
        vault: u64,
        orchestrators: &'a std::collections::BTreeMap<Address, Orchestrator>,
        servers: &'a std::collections::BTreeSet<Address>,
        tasks: &'a std::collections::BTreeMap<[u8; 16], Task>,
        anchors: &'a [Anchor],
    }
    let mut state = State::new(Address([1; 32]));
    let settings = LocalSettings::default();
    state
        .apply(state.admin, &Op::Initialize(settings.config), 5)
        .unwrap();
    let old = OldState {
        admin: state.admin,
        config: &state.config,
        balances: &state.balances,
        vault: state.vault,
        orchestrators: &state.orchestrators,
        servers: &state.servers,
        tasks: &state.tasks,
        anchors: &state.anchors,
    };
    let back: State = decode(&encode(&old).unwrap(), Path::new(CHAIN_FILE)).unwrap();
    assert!(back.used_evidence.is_empty());
    assert_eq!(back, state);
}

/// Stake comes from the orchestrator's own balance: a declared stake is
/// never minted, a faucet exists only on a dev ledger, tops up to its
/// amount and no further, and each peer acts on its own account only.
#[tokio::test]
async fn stake_is_moved_from_a_funded_account_never_minted() {
    let dir = tempfile::tempdir().unwrap();
    let router = Address([1; 32]);
    let plain =
        Embedded(EmbeddedChain::open(dir.path(), router, &LocalSettings::default()).unwrap());
    let key = libp2p::identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let account = super::super::default_account(&peer);
    assert!(
        !plain.admit(peer, account, u64::MAX).await.unwrap(),
        "declared, not held"
    );
    assert!(matches!(
        plain.transact(peer, Transaction::Faucet).await,
        Err(ChainError::Unsupported(_))
    ));
    assert_eq!(
        plain
            .transact(peer, Transaction::Register { stake: 5_000 })
            .await,
        Err(ChainError::Abort(Abort::InsufficientBalance))
    );
    drop(plain);

    let dir = tempfile::tempdir().unwrap();
    let dev = Embedded(EmbeddedChain::open(dir.path(), router, &LocalSettings::dev()).unwrap());
    let (_, _, vault) = dev.totals().await.unwrap();
    dev.transact(peer, Transaction::Faucet).await.unwrap();
    dev.transact(peer, Transaction::Faucet).await.unwrap();
    assert_eq!(
        dev.balance(account).await.unwrap(),
        FAUCET_AMOUNT,
        "tops up, once"
    );
    assert!(
        !dev.admit(peer, account, 5_000).await.unwrap(),
        "funded, not staked"
    );
    dev.transact(peer, Transaction::Register { stake: 5_000 })
        .await
        .unwrap();
    assert!(dev.admit(peer, account, 5_000).await.unwrap());
    assert_eq!(dev.balance(account).await.unwrap(), FAUCET_AMOUNT - 5_000);
    assert_eq!(dev.totals().await.unwrap(), (5_000, 0, vault + 5_000));
    // The stake on record is what counts, whatever is declared.
    assert!(dev.admit(peer, account, u64::MAX).await.unwrap());
    assert_eq!(
        dev.orchestrator(account).await.unwrap().unwrap().stake,
        5_000
    );
    // Another PeerId claiming the account is refused.
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    assert!(!dev.admit(stranger, account, 5_000).await.unwrap());
    // Nobody registers under another's PeerId through a raw operation.
    let claim = Op::RegisterOrchestrator {
        peer_id: peer.to_bytes(),
        amount: 1_000,
    };
    dev.transact(stranger, Transaction::Faucet).await.unwrap();
    assert!(matches!(
        dev.transact(stranger, Transaction::Apply(claim)).await,
        Err(ChainError::Unsupported(_))
    ));
    // Staking more than the balance aborts where Move would.
    assert_eq!(
        dev.transact(peer, Transaction::AddStake { amount: u64::MAX })
            .await,
        Err(ChainError::Abort(Abort::InsufficientBalance))
    );
    dev.transact(peer, Transaction::Unstake { amount: 1_000 })
        .await
        .unwrap();
    assert_eq!(
        dev.orchestrator(account).await.unwrap().unwrap().stake,
        4_000
    );
    assert!(dev.is_server(router).await.unwrap());
}

/// Settled tasks leave the state, and so every snapshot, for a table of
/// their own: a ledger holding a million of them reopens with a state
/// of its pending tasks only, finds each settled one, and never lets
/// one's id be used again.
#[tokio::test]
async fn a_million_settled_tasks_stay_out_of_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (router, orch) = (Address([1; 32]), Address([2; 32]));
    let c = EmbeddedChain::open(dir.path(), router, &LocalSettings::default()).unwrap();
    c.apply(
        router,
        Op::Mint {
            to: orch,
            amount: 5_000,
        },
    )
    .unwrap();
    let register = Op::RegisterOrchestrator {
        peer_id: vec![9; 38],
        amount: 2_000,
    };
    c.apply(orch, register).unwrap();
    let create = |id: [u8; 16]| Op::CreateTask {
        task_id: id.to_vec(),
        orchestrator: orch,
        price_per_unit: 1,
        max_payment: 10,
    };
    c.apply(router, create([0xff; 16])).unwrap();
    c.apply(router, create([0xfe; 16])).unwrap();
    let fail = Op::FailTask {
        task_id: vec![0xff; 16],
        reason: 1,
    };
    c.apply(router, fail).unwrap();
    // Settled through the contract: out of the state at once.
    assert_eq!(c.state().tasks.len(), 1, "only the pending one");
    let settled = c.settled(&[0xff; 16]).unwrap().unwrap();
    assert_eq!(settled.status, TaskStatus::Failed);
    // A million more settled tasks, as that table holds them (written
    // directly: applying two million operations would only be slower).
    {
        let inner = c.inner.lock().unwrap();
        let tx = inner.db.begin_write().unwrap();
        {
            let mut table = tx.open_table(SETTLED).unwrap();
            let bytes = encode(&settled).unwrap();
            for i in 0..1_000_000u64 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&i.to_le_bytes());
                table.insert(&id, bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let expected = c.state();
    drop(c);
    let c = Embedded(EmbeddedChain::open(dir.path(), router, &LocalSettings::default()).unwrap());
    assert_eq!(c.0.state(), expected);
    assert!(
        encode(&c.0.state()).unwrap().len() < 64 * 1024,
        "the snapshot stays small"
    );
    let mut last = [0u8; 16];
    last[..8].copy_from_slice(&999_999u64.to_le_bytes());
    assert_eq!(c.task(TaskId(last)).await.unwrap(), Some(settled.clone()));
    assert_eq!(
        c.submit(create(last)).await,
        Err(ChainError::Abort(Abort::TaskExists)),
        "a settled id stays taken"
    );
    let pending = c.task(TaskId([0xfe; 16])).await.unwrap().unwrap();
    assert_eq!(pending.status, TaskStatus::Pending);
    let (stake, escrow, vault) = c.totals().await.unwrap();
    assert_eq!(stake + escrow, vault);
}

/// A chain in `dir` whose router (the first address) serves a registered
/// orchestrator (the second) and a client (the third) with a deposit.
fn funded_chain(dir: &Path) -> (Arc<EmbeddedChain>, [Address; 3]) {
    let (router, orch, client) = (Address([1; 32]), Address([2; 32]), Address([3; 32]));
    let c = EmbeddedChain::open(dir, router, &LocalSettings::default()).unwrap();
    let setup = [
        (
            router,
            Op::Mint {
                to: orch,
                amount: 5_000,
            },
        ),
        (
            router,
            Op::Mint {
                to: client,
                amount: 1_000_000,
            },
        ),
        (
            orch,
            Op::RegisterOrchestrator {
                peer_id: vec![9; 38],
                amount: 2_000,
            },
        ),
        (
            client,
            Op::Deposit {
                server: router,
                amount: 1_000_000,
            },
        ),
    ];
    for (who, op) in setup {
        c.apply(who, op).unwrap();
    }
    (c, [router, orch, client])
}

/// A router reads back what it just settled from memory, the last
/// `RECENTLY_SETTLED` tasks only, and what it reads there is what the
/// settled table holds, before and after a reopen.
#[tokio::test]
async fn just_settled_tasks_are_read_from_memory_as_the_table_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let (c, [router, orch, client]) = funded_chain(dir.path());
    let id = |i: usize| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        id
    };
    let n = RECENTLY_SETTLED + 10;
    for i in 0..n {
        let create = Op::CreateClientTask {
            client,
            task_id: id(i).to_vec(),
            orchestrator: orch,
            price_per_unit: 1,
            max_payment: 100,
        };
        c.apply(router, create).unwrap();
        let fail = Op::FailTask {
            task_id: id(i).to_vec(),
            reason: 1,
        };
        c.apply(router, fail).unwrap();
    }
    assert_eq!(c.task_in_memory(&id(0)), None, "the oldest left memory");
    let last = c
        .task_in_memory(&id(n - 1))
        .expect("the newest is in memory");
    assert_eq!(c.settled(&id(n - 1)).unwrap(), Some(last.clone()));
    assert_eq!(last.status, TaskStatus::Failed);
    let expected = c.state();
    drop(c);
    let c = Embedded(EmbeddedChain::open(dir.path(), router, &LocalSettings::default()).unwrap());
    assert_eq!(c.0.state(), expected);
    assert_eq!(c.task(TaskId(id(n - 1))).await.unwrap(), Some(last));
    assert_eq!(
        c.task(TaskId(id(0))).await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
    let (stake, escrow, vault) = c.totals().await.unwrap();
    assert_eq!(escrow, 0, "every escrow went back");
    assert_eq!(stake + escrow + c.0.state().deposits_held(), vault);
}

/// A settlement paying the assigned orchestrator alone is committed without
/// a sync of its own: visible at once, and durable once the chain is closed.
#[tokio::test]
async fn a_settlement_committed_unsynced_is_seen_at_once_and_kept_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let (c, [router, orch, client]) = funded_chain(dir.path());
    let id = [7u8; 16];
    let create = Op::CreateClientTask {
        client,
        task_id: id.to_vec(),
        orchestrator: orch,
        price_per_unit: 1,
        max_payment: 100,
    };
    c.apply(router, create).unwrap();
    let complete = Op::CompleteTask {
        task_id: id.to_vec(),
        prompt_tokens: 3,
        output_tokens: 4,
        compute_ms: 10,
        delegates: vec![],
        receipt_hash: vec![1; 32],
    };
    let chain = Embedded(c);
    chain.submit_settlement(complete).await.unwrap();
    let done = chain.task(TaskId(id)).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let expected = chain.0.state();
    drop(chain);
    let c = Embedded(EmbeddedChain::open(dir.path(), router, &LocalSettings::default()).unwrap());
    assert_eq!(c.0.state(), expected);
    assert_eq!(c.task(TaskId(id)).await.unwrap(), Some(done));
}

/// An escrow is told accepted before its commit, committed without a
/// sync and made durable by `sync`; a read after it sees the task pending,
/// and one the deposit does not cover is refused with its abort.
#[tokio::test]
async fn an_escrow_is_accepted_then_durable_and_refused_with_its_abort() {
    let dir = tempfile::tempdir().unwrap();
    let (c, [_, orch, client]) = funded_chain(dir.path());
    let chain = Embedded(c);
    let create = |id: u8, max_payment| Op::CreateClientTask {
        client,
        task_id: vec![id; 16],
        orchestrator: orch,
        price_per_unit: 1,
        max_payment,
    };
    chain.submit_escrow(create(5, 100)).await.unwrap();
    let pending = chain.task(TaskId([5; 16])).await.unwrap().unwrap();
    assert!(chain.0.inner.lock().unwrap().unsynced);
    assert_eq!(pending.status, TaskStatus::Pending);
    chain.sync().await.unwrap();
    assert!(!chain.0.inner.lock().unwrap().unsynced);
    assert_eq!(
        chain.submit_escrow(create(6, 10_000_000)).await,
        Err(ChainError::Abort(Abort::InsufficientDeposit))
    );
    assert_eq!(chain.task(TaskId([6; 16])).await.unwrap(), None);
    chain.sync().await.unwrap();
}
