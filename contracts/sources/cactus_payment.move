/// Cactus payments on Aptos: orchestrator stake, authorized servers (routers),
/// client deposits, per-task escrow and payment, router fees, delegation
/// split, slashing and receipt anchoring.
///
/// `contracts/SPEC.md` is the specification; the Rust reference model
/// `cactus_protocol::contract` implements the same rules. All funds the module
/// holds (stake, unbonding stake, escrow of pending tasks, client deposits)
/// sit in the primary fungible store of one vault object created at
/// `initialize`.
///
/// Arithmetic on amounts is plain `u64` / `u128` arithmetic: an overflow or
/// underflow aborts the whole transaction with the VM's arithmetic error
/// (the Rust model reports it as code 4017). `pay_in` adds the amount to the
/// vault's balance itself before transferring, so that a deposit the vault
/// could not hold aborts here, in this module.
module cactus::cactus_payment {
    use std::signer;
    use std::vector;
    use aptos_std::table::{Self, Table};
    use aptos_framework::event;
    use aptos_framework::fungible_asset::Metadata;
    use aptos_framework::object::{Self, ExtendRef, Object};
    use aptos_framework::primary_fungible_store;
    use aptos_framework::timestamp;

    // ------------------------------------------------------------------ errors

    /// An admin-only call by someone else.
    const E_NOT_ADMIN: u64 = 1;
    /// `initialize` was called twice.
    const E_ALREADY_INITIALIZED: u64 = 2;
    /// A call before `initialize`.
    const E_NOT_INITIALIZED: u64 = 3;
    /// An amount, `max_payment` or anchor `count` of 0.
    const E_ZERO_AMOUNT: u64 = 4;
    /// A task id not 16 bytes, a hash not 32 bytes, or a PeerId not 1..=64 bytes.
    const E_INVALID_ARGUMENT: u64 = 5;
    /// Register below `min_stake`, or unstake leaving 0 < stake < `min_stake`.
    const E_STAKE_TOO_LOW: u64 = 6;
    /// The orchestrator is already registered.
    const E_ALREADY_REGISTERED: u64 = 7;
    /// The orchestrator (caller or target) is not registered.
    const E_NOT_REGISTERED: u64 = 8;
    /// Unstake more than the active stake.
    const E_INSUFFICIENT_STAKE: u64 = 9;
    /// Withdraw with nothing unbonding.
    const E_NOTHING_UNBONDING: u64 = 10;
    /// Withdraw before `unlock_at`.
    const E_STILL_UNBONDING: u64 = 11;
    /// The server is already authorized.
    const E_SERVER_ALREADY_AUTHORIZED: u64 = 12;
    /// The server to revoke is not authorized.
    const E_SERVER_NOT_FOUND: u64 = 13;
    /// A server-only call by an address that is not an authorized server.
    const E_NOT_AUTHORIZED_SERVER: u64 = 14;
    /// The task id is already used.
    const E_TASK_EXISTS: u64 = 15;
    /// The task id is unknown.
    const E_TASK_NOT_FOUND: u64 = 16;
    /// The task is not pending.
    const E_TASK_NOT_PENDING: u64 = 17;
    /// The task was created by another server.
    const E_WRONG_SERVER: u64 = 18;
    /// The orchestrator's active stake is below `min_stake`.
    const E_ORCHESTRATOR_INELIGIBLE: u64 = 19;
    /// More than 2 delegates, a duplicate, the orchestrator itself, or an unregistered delegate.
    const E_INVALID_DELEGATION: u64 = 20;
    /// A slash ratio of 0 or above `max_slash_bps`.
    const E_INVALID_RATIO: u64 = 21;
    /// The payer's balance is below the amount it must pay in.
    const E_INSUFFICIENT_BALANCE: u64 = 22;
    /// A bps field above 10 000, or `prompt_weight + output_weight == 0`.
    const E_INVALID_CONFIG: u64 = 23;
    /// A slash names evidence an earlier slash already used.
    const E_EVIDENCE_USED: u64 = 24;
    /// `expire_task` on a task whose deadline has not passed.
    const E_TASK_NOT_EXPIRED: u64 = 25;
    /// A client's deposit at a server does not cover what is to be escrowed
    /// or withdrawn.
    const E_INSUFFICIENT_DEPOSIT: u64 = 26;
    /// A server fee above 10 000 bps.
    const E_INVALID_FEE: u64 = 27;
    /// A task priced above the most its client pays per unit.
    const E_PRICE_ABOVE_CAP: u64 = 28;
    /// The PeerId is already bound to another server, or to another client.
    const E_PEER_TAKEN: u64 = 29;

    // --------------------------------------------------------------- constants

    /// 100 % in basis points.
    const BPS: u128 = 10000;
    const TASK_ID_LEN: u64 = 16;
    const HASH_LEN: u64 = 32;
    const MAX_PEER_ID_LEN: u64 = 64;
    const MAX_DELEGATES: u64 = 2;
    const STATUS_PENDING: u8 = 0;
    const STATUS_COMPLETED: u8 = 1;
    const STATUS_FAILED: u8 = 2;
    /// Seconds after its creation when anyone may expire a task still
    /// pending (`expire_task`): a server that died or walked away cannot keep
    /// an escrow locked.
    const TASK_EXPIRY_SECS: u64 = 86400;
    /// The `reason` an expired task fails with.
    const REASON_EXPIRED: u8 = 7;
    /// A client's price cap when it set none.
    const NO_CAP: u64 = 18446744073709551615;
    const VAULT_SEED: vector<u8> = b"cactus_payment_vault";

    // ------------------------------------------------------------------- state

    /// Configuration, the payment asset and the vault, stored under `@cactus`.
    struct Config has key {
        admin: address,
        asset: Object<Metadata>,
        vault: ExtendRef,
        min_stake: u64,
        unbonding_secs: u64,
        max_slash_bps: u64,
        reporter_bps: u64,
        treasury: address,
        prompt_weight: u64,
        output_weight: u64,
        price_per_ms: u64,
        ms_cap_per_unit: u64,
        delegation_fee_bps: u64,
    }

    /// One registered orchestrator.
    struct Orchestrator has store, drop {
        peer_id: vector<u8>,
        stake: u64,
        unbonding: u64,
        unlock_at: u64,
        successes: u64,
        failures: u64,
        compute_ms: u64,
    }

    /// One task; `status` is 0 pending, 1 completed, 2 failed.
    struct Task has store, drop {
        server: address,
        orchestrator: address,
        price_per_unit: u64,
        escrow: u64,
        status: u8,
        payment: u64,
        reason: u8,
    }

    /// One anchored batch of receipts.
    struct Anchor has store, drop {
        server: address,
        root: vector<u8>,
        count: u64,
        first_task: vector<u8>,
        last_task: vector<u8>,
        anchored_at: u64,
    }

    /// Orchestrators, servers, tasks, anchors and the totals held in the vault,
    /// stored under `@cactus`.
    struct Ledger has key {
        orchestrators: Table<address, Orchestrator>,
        servers: Table<address, bool>,
        tasks: Table<vector<u8>, Task>,
        anchors: Table<u64, Anchor>,
        anchor_count: u64,
        /// Sum of stake + unbonding over all orchestrators.
        stake_held: u64,
        /// Sum of escrow over all pending tasks.
        escrow_held: u64,
    }

    /// The hashes of the evidence every slash so far was made on: each
    /// evidence slashes once. Stored under the vault object's address (the
    /// module can sign for it through `Config.vault`) and created by the first
    /// slash, so that a package published before it existed upgrades
    /// compatibly: `Ledger`'s layout stays as it was.
    struct EvidenceLog has key {
        used: Table<vector<u8>, bool>,
    }

    /// When each pending task was created, for its deadline. Stored under the
    /// vault object's address and created by the first task, as
    /// `EvidenceLog` is, so that `Task`'s and `Ledger`'s layouts stay and
    /// the package upgrades compatibly; an entry goes when its task settles.
    struct TaskClock has key {
        created: Table<vector<u8>, u64>,
    }

    /// The key of a client's deposit at one server.
    struct Tab has copy, drop, store {
        client: address,
        server: address,
    }

    /// Who funds a pending client task, the server's fee rate at its
    /// creation, and the fee escrowed beside its payment.
    struct ClientTask has store, drop {
        client: address,
        fee_bps: u64,
        fee_escrow: u64,
    }

    /// Clients' money. A client deposits at a server (`deposit`); only that
    /// server may escrow from that deposit, for the client's tasks
    /// (`create_client_task`), and only up to the client's price cap; what a
    /// task does not spend goes back to the deposit, which the client may
    /// withdraw at any time. Each server sets its fee, a share of each
    /// payment charged to the client on top of it. Stored under the vault
    /// object's address and created on first use, as `EvidenceLog` is.
    struct ClientBook has key {
        /// What each client has left at each server; no zero entries.
        tabs: Table<Tab, u64>,
        /// The most each client pays per work unit (`NO_CAP` when absent).
        caps: Table<address, u64>,
        /// Each server's fee, bps of the payment (0 when absent).
        fees: Table<address, u64>,
        /// Pending tasks a client funds.
        tasks: Table<vector<u8>, ClientTask>,
        /// Sum of all tabs and of the fee escrows of pending client tasks.
        held: u64,
        /// The account each client PeerId pays from (`bind_client_peer`):
        /// what a router charges a task submitted over the mesh.
        peers: Table<vector<u8>, address>,
    }

    /// Which PeerId each authorized server's router runs as, and back: what
    /// an orchestrator reading the chain checks before it serves a peer
    /// (`server_of_peer`). Set by the admin (`set_server_peer`), dropped
    /// with the authorization (`revoke_server`). Stored under the vault
    /// object's address and created on first use, as `EvidenceLog` is.
    struct ServerPeers has key {
        peer_of: Table<address, vector<u8>>,
        server_of: Table<vector<u8>, address>,
    }

    // ------------------------------------------------------------------ events

    #[event]
    /// An orchestrator registered with an initial stake.
    struct OrchestratorRegistered has drop, store {
        orchestrator: address,
        peer_id: vector<u8>,
        amount: u64,
    }

    #[event]
    /// An orchestrator added stake.
    struct StakeAdded has drop, store {
        orchestrator: address,
        amount: u64,
    }

    #[event]
    /// An orchestrator moved stake to unbonding.
    struct UnstakeRequested has drop, store {
        orchestrator: address,
        amount: u64,
        unlock_at: u64,
    }

    #[event]
    /// An orchestrator withdrew its unbonded stake.
    struct Withdrawn has drop, store {
        orchestrator: address,
        amount: u64,
    }

    #[event]
    /// The admin authorized a server.
    struct ServerAuthorized has drop, store {
        server: address,
    }

    #[event]
    /// The admin bound a server to the PeerId its router runs as.
    struct ServerPeerSet has drop, store {
        server: address,
        peer_id: vector<u8>,
    }

    #[event]
    /// The admin revoked a server.
    struct ServerRevoked has drop, store {
        server: address,
    }

    #[event]
    /// A server created a task and escrowed `max_payment`.
    struct TaskCreated has drop, store {
        task_id: vector<u8>,
        server: address,
        orchestrator: address,
        price_per_unit: u64,
        max_payment: u64,
    }

    #[event]
    /// A server completed a task: `payment` was split along the chain, `refund` went back.
    struct TaskCompleted has drop, store {
        task_id: vector<u8>,
        server: address,
        orchestrator: address,
        delegates: vector<address>,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        payment: u64,
        refund: u64,
        receipt_hash: vector<u8>,
    }

    #[event]
    /// A server failed a task; the whole escrow was refunded.
    struct TaskFailed has drop, store {
        task_id: vector<u8>,
        server: address,
        orchestrator: address,
        reason: u8,
        refund: u64,
    }

    #[event]
    /// A client put money on its tab at a server.
    struct Deposited has drop, store {
        client: address,
        server: address,
        amount: u64,
    }

    #[event]
    /// A client took money back from its tab at a server.
    struct DepositWithdrawn has drop, store {
        client: address,
        server: address,
        amount: u64,
    }

    #[event]
    /// A client set the most it pays per work unit.
    struct PriceCapSet has drop, store {
        client: address,
        max_price_per_unit: u64,
    }

    #[event]
    /// A client named the PeerId it submits tasks as.
    struct ClientPeerBound has drop, store {
        client: address,
        peer_id: vector<u8>,
    }

    #[event]
    /// A server set its fee.
    struct ServerFeeSet has drop, store {
        server: address,
        fee_bps: u64,
    }

    #[event]
    /// A server opened a task funded by a client (a `TaskCreated` comes with it).
    struct ClientTaskCreated has drop, store {
        task_id: vector<u8>,
        client: address,
        fee_escrow: u64,
    }

    #[event]
    /// A client-funded task settled: the server took `fee`, `refund` went
    /// back to the client's tab.
    struct ClientTaskSettled has drop, store {
        task_id: vector<u8>,
        client: address,
        server: address,
        fee: u64,
        refund: u64,
    }

    #[event]
    /// A server slashed an orchestrator.
    struct Slashed has drop, store {
        orchestrator: address,
        server: address,
        ratio_bps: u64,
        amount: u64,
        reporter_cut: u64,
        evidence_hash: vector<u8>,
    }

    #[event]
    /// A server anchored a Merkle root of receipts.
    struct ReceiptsAnchored has drop, store {
        index: u64,
        server: address,
        merkle_root: vector<u8>,
        count: u64,
        first_task: vector<u8>,
        last_task: vector<u8>,
        anchored_at: u64,
    }

    // ------------------------------------------------------------------- admin

    /// Initializes the module: stores the config, creates the vault object that
    /// holds every staked and escrowed unit of `asset`. Only `@cactus`, once.
    public entry fun initialize(
        admin: &signer,
        asset: Object<Metadata>,
        min_stake: u64,
        unbonding_secs: u64,
        max_slash_bps: u64,
        reporter_bps: u64,
        treasury: address,
        prompt_weight: u64,
        output_weight: u64,
        price_per_ms: u64,
        ms_cap_per_unit: u64,
        delegation_fee_bps: u64,
    ) {
        let admin_addr = signer::address_of(admin);
        assert!(admin_addr == @cactus, E_NOT_ADMIN);
        assert!(!exists<Config>(@cactus), E_ALREADY_INITIALIZED);
        assert_valid_config(max_slash_bps, reporter_bps, prompt_weight, output_weight, delegation_fee_bps);

        let vault_ref = object::create_named_object(admin, VAULT_SEED);
        // The vault stays owned by `@cactus`; it cannot be transferred away.
        object::disable_ungated_transfer(&object::generate_transfer_ref(&vault_ref));
        move_to(admin, Config {
            admin: admin_addr,
            asset,
            vault: object::generate_extend_ref(&vault_ref),
            min_stake,
            unbonding_secs,
            max_slash_bps,
            reporter_bps,
            treasury,
            prompt_weight,
            output_weight,
            price_per_ms,
            ms_cap_per_unit,
            delegation_fee_bps,
        });
        move_to(admin, Ledger {
            orchestrators: table::new(),
            servers: table::new(),
            tasks: table::new(),
            anchors: table::new(),
            anchor_count: 0,
            stake_held: 0,
            escrow_held: 0,
        });
    }

    /// Replaces the ten config fields (the asset and the vault stay). Admin only.
    public entry fun set_config(
        admin: &signer,
        min_stake: u64,
        unbonding_secs: u64,
        max_slash_bps: u64,
        reporter_bps: u64,
        treasury: address,
        prompt_weight: u64,
        output_weight: u64,
        price_per_ms: u64,
        ms_cap_per_unit: u64,
        delegation_fee_bps: u64,
    ) acquires Config {
        assert_initialized();
        let config = borrow_global_mut<Config>(@cactus);
        assert!(signer::address_of(admin) == config.admin, E_NOT_ADMIN);
        assert_valid_config(max_slash_bps, reporter_bps, prompt_weight, output_weight, delegation_fee_bps);
        config.min_stake = min_stake;
        config.unbonding_secs = unbonding_secs;
        config.max_slash_bps = max_slash_bps;
        config.reporter_bps = reporter_bps;
        config.treasury = treasury;
        config.prompt_weight = prompt_weight;
        config.output_weight = output_weight;
        config.price_per_ms = price_per_ms;
        config.ms_cap_per_unit = ms_cap_per_unit;
        config.delegation_fee_bps = delegation_fee_bps;
    }

    // ------------------------------------------------------------ orchestrators

    /// Registers the caller as an orchestrator with `peer_id` and an initial
    /// stake of `amount` (at least `min_stake`), moved into the vault.
    public entry fun register_orchestrator(
        account: &signer,
        peer_id: vector<u8>,
        amount: u64,
    ) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let addr = signer::address_of(account);
        assert!(amount > 0, E_ZERO_AMOUNT);
        let peer_len = vector::length(&peer_id);
        assert!(peer_len >= 1 && peer_len <= MAX_PEER_ID_LEN, E_INVALID_ARGUMENT);
        assert!(!table::contains(&ledger.orchestrators, addr), E_ALREADY_REGISTERED);
        assert!(amount >= config.min_stake, E_STAKE_TOO_LOW);
        pay_in(config, account, amount);

        table::add(&mut ledger.orchestrators, addr, Orchestrator {
            peer_id,
            stake: amount,
            unbonding: 0,
            unlock_at: 0,
            successes: 0,
            failures: 0,
            compute_ms: 0,
        });
        ledger.stake_held = ledger.stake_held + amount;
        event::emit(OrchestratorRegistered { orchestrator: addr, peer_id, amount });
    }

    /// Adds `amount` to the caller's active stake.
    public entry fun add_stake(account: &signer, amount: u64) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let addr = signer::address_of(account);
        assert!(amount > 0, E_ZERO_AMOUNT);
        assert!(table::contains(&ledger.orchestrators, addr), E_NOT_REGISTERED);
        pay_in(config, account, amount);

        let orch = table::borrow_mut(&mut ledger.orchestrators, addr);
        orch.stake = orch.stake + amount;
        ledger.stake_held = ledger.stake_held + amount;
        event::emit(StakeAdded { orchestrator: addr, amount });
    }

    /// Moves `amount` of the caller's stake to unbonding; all unbonding stake
    /// unlocks `unbonding_secs` from now. The remaining stake must be 0 or at
    /// least `min_stake`.
    public entry fun request_unstake(account: &signer, amount: u64) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let addr = signer::address_of(account);
        assert!(amount > 0, E_ZERO_AMOUNT);
        assert!(table::contains(&ledger.orchestrators, addr), E_NOT_REGISTERED);
        let orch = table::borrow_mut(&mut ledger.orchestrators, addr);
        assert!(amount <= orch.stake, E_INSUFFICIENT_STAKE);
        let left = orch.stake - amount;
        assert!(left == 0 || left >= config.min_stake, E_STAKE_TOO_LOW);

        let unlock_at = timestamp::now_seconds() + config.unbonding_secs;
        orch.stake = left;
        orch.unbonding = orch.unbonding + amount;
        orch.unlock_at = unlock_at;
        event::emit(UnstakeRequested { orchestrator: addr, amount, unlock_at });
    }

    /// Pays the caller's unbonded stake out of the vault once `unlock_at` is reached.
    public entry fun withdraw(account: &signer) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let addr = signer::address_of(account);
        assert!(table::contains(&ledger.orchestrators, addr), E_NOT_REGISTERED);
        let orch = table::borrow_mut(&mut ledger.orchestrators, addr);
        let amount = orch.unbonding;
        assert!(amount > 0, E_NOTHING_UNBONDING);
        assert!(timestamp::now_seconds() >= orch.unlock_at, E_STILL_UNBONDING);

        orch.unbonding = 0;
        ledger.stake_held = ledger.stake_held - amount;
        pay_out(config, addr, amount);
        event::emit(Withdrawn { orchestrator: addr, amount });
    }

    // ------------------------------------------------------------------ servers

    /// Authorizes `server` to create, complete and fail tasks, slash and anchor. Admin only.
    public entry fun authorize_server(admin: &signer, server: address) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        assert!(signer::address_of(admin) == config.admin, E_NOT_ADMIN);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        assert!(!table::contains(&ledger.servers, server), E_SERVER_ALREADY_AUTHORIZED);
        table::add(&mut ledger.servers, server, true);
        event::emit(ServerAuthorized { server });
    }

    /// Revokes an authorized server, and its PeerId binding. Admin only.
    public entry fun revoke_server(admin: &signer, server: address) acquires Config, Ledger, ServerPeers {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        assert!(signer::address_of(admin) == config.admin, E_NOT_ADMIN);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        assert!(table::contains(&ledger.servers, server), E_SERVER_NOT_FOUND);
        table::remove(&mut ledger.servers, server);
        let peers_addr = vault_address(config);
        if (exists<ServerPeers>(peers_addr)) {
            unbind_server(borrow_global_mut<ServerPeers>(peers_addr), server);
        };
        event::emit(ServerRevoked { server });
    }

    /// Binds the authorized `server` to `peer_id`, the PeerId its router
    /// runs as: orchestrators serve that PeerId as this server. A server has
    /// one PeerId (a new one replaces the old) and a PeerId one server.
    /// Admin only.
    public entry fun set_server_peer(
        admin: &signer,
        server: address,
        peer_id: vector<u8>,
    ) acquires Config, Ledger, ServerPeers {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        assert!(signer::address_of(admin) == config.admin, E_NOT_ADMIN);
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(table::contains(&ledger.servers, server), E_SERVER_NOT_FOUND);
        let peer_len = vector::length(&peer_id);
        assert!(peer_len >= 1 && peer_len <= MAX_PEER_ID_LEN, E_INVALID_ARGUMENT);
        let peers_addr = vault_address(config);
        if (!exists<ServerPeers>(peers_addr)) {
            let vault = object::generate_signer_for_extending(&config.vault);
            move_to(&vault, ServerPeers { peer_of: table::new(), server_of: table::new() });
        };
        let peers = borrow_global_mut<ServerPeers>(peers_addr);
        if (table::contains(&peers.server_of, peer_id)) {
            assert!(*table::borrow(&peers.server_of, peer_id) == server, E_PEER_TAKEN);
        };
        unbind_server(peers, server);
        table::add(&mut peers.peer_of, server, copy peer_id);
        table::add(&mut peers.server_of, copy peer_id, server);
        event::emit(ServerPeerSet { server, peer_id });
    }

    // ------------------------------------------------------------------ clients

    /// The caller, a client, puts `amount` on its tab at `server`, an
    /// authorized server: money that server may escrow for the client's
    /// tasks, and that the client may take back (`withdraw_deposit`).
    public entry fun deposit(
        client: &signer,
        server: address,
        amount: u64,
    ) acquires Config, Ledger, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(amount > 0, E_ZERO_AMOUNT);
        assert!(table::contains(&ledger.servers, server), E_SERVER_NOT_FOUND);
        pay_in(config, client, amount);
        ensure_book(config);
        let book = borrow_global_mut<ClientBook>(vault_address(config));
        let client_addr = signer::address_of(client);
        let tab = Tab { client: client_addr, server };
        let on_tab = tab_of(book, tab);
        set_tab(book, tab, on_tab + amount);
        book.held = book.held + amount;
        event::emit(Deposited { client: client_addr, server, amount });
    }

    /// The caller, a client, takes `amount` back from its tab at `server`.
    /// What pending tasks escrowed is not on the tab: it comes back when
    /// they settle or expire.
    public entry fun withdraw_deposit(
        client: &signer,
        server: address,
        amount: u64,
    ) acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        assert!(amount > 0, E_ZERO_AMOUNT);
        let book_addr = vault_address(config);
        assert!(exists<ClientBook>(book_addr), E_INSUFFICIENT_DEPOSIT);
        let book = borrow_global_mut<ClientBook>(book_addr);
        let client_addr = signer::address_of(client);
        let tab = Tab { client: client_addr, server };
        let on_tab = tab_of(book, tab);
        assert!(on_tab >= amount, E_INSUFFICIENT_DEPOSIT);

        set_tab(book, tab, on_tab - amount);
        book.held = book.held - amount;
        pay_out(config, client_addr, amount);
        event::emit(DepositWithdrawn { client: client_addr, server, amount });
    }

    /// The caller, a client, sets the most it pays per work unit: no server
    /// may open a task for it at a higher price.
    public entry fun set_max_price(client: &signer, max_price_per_unit: u64) acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        ensure_book(config);
        let book = borrow_global_mut<ClientBook>(vault_address(config));
        let client_addr = signer::address_of(client);
        table::upsert(&mut book.caps, client_addr, max_price_per_unit);
        event::emit(PriceCapSet { client: client_addr, max_price_per_unit });
    }

    /// The caller, a client, names `peer_id` as the PeerId it submits tasks
    /// as over the mesh: routers charge that PeerId's tasks to the caller's
    /// deposits. First come: a PeerId bound to another client stays theirs,
    /// so nobody can redirect a client's tasks to an empty account (and
    /// binding another's PeerId would only pay for that peer's tasks).
    public entry fun bind_client_peer(client: &signer, peer_id: vector<u8>) acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let peer_len = vector::length(&peer_id);
        assert!(peer_len >= 1 && peer_len <= MAX_PEER_ID_LEN, E_INVALID_ARGUMENT);
        ensure_book(config);
        let book = borrow_global_mut<ClientBook>(vault_address(config));
        let client_addr = signer::address_of(client);
        if (table::contains(&book.peers, peer_id)) {
            assert!(*table::borrow(&book.peers, peer_id) == client_addr, E_PEER_TAKEN);
        };
        table::upsert(&mut book.peers, copy peer_id, client_addr);
        event::emit(ClientPeerBound { client: client_addr, peer_id });
    }

    /// An authorized server sets its fee: `fee_bps` of each payment of the
    /// tasks it opens from now on, charged to the client on top.
    public entry fun set_server_fee(server: &signer, fee_bps: u64) acquires Config, Ledger, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(fee_bps <= (BPS as u64), E_INVALID_FEE);
        ensure_book(config);
        let book = borrow_global_mut<ClientBook>(vault_address(config));
        table::upsert(&mut book.fees, server_addr, fee_bps);
        event::emit(ServerFeeSet { server: server_addr, fee_bps });
    }

    // -------------------------------------------------------------------- tasks

    /// An authorized server opens a task for `orchestrator`, escrowing
    /// `max_payment` from its own balance into the vault. (Routers open
    /// their clients' tasks with `create_client_task`.)
    public entry fun create_task(
        server: &signer,
        task_id: vector<u8>,
        orchestrator: address,
        price_per_unit: u64,
        max_payment: u64,
    ) acquires Config, Ledger, TaskClock {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert_can_open(config, ledger, server_addr, &task_id, orchestrator, max_payment);
        pay_in(config, server, max_payment);
        open_task(config, ledger, server_addr, task_id, orchestrator, price_per_unit, max_payment);
    }

    /// An authorized server opens a task for `orchestrator` that `client`
    /// pays for: `max_payment`, plus the server's fee on it, move from the
    /// client's deposit at this server to escrow. The price must be within
    /// the client's cap.
    public entry fun create_client_task(
        server: &signer,
        client: address,
        task_id: vector<u8>,
        orchestrator: address,
        price_per_unit: u64,
        max_payment: u64,
    ) acquires Config, Ledger, TaskClock, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert_can_open(config, ledger, server_addr, &task_id, orchestrator, max_payment);
        let book_addr = vault_address(config);
        assert!(exists<ClientBook>(book_addr), E_INSUFFICIENT_DEPOSIT);
        let book = borrow_global_mut<ClientBook>(book_addr);
        assert!(price_per_unit <= cap_of(book, client), E_PRICE_ABOVE_CAP);
        let fee_bps = fee_of(book, server_addr);
        let fee_escrow = bps_of(max_payment, fee_bps);
        let total = max_payment + fee_escrow;
        let tab = Tab { client, server: server_addr };
        let on_tab = tab_of(book, tab);
        assert!(on_tab >= total, E_INSUFFICIENT_DEPOSIT);

        set_tab(book, tab, on_tab - total);
        // The payment's part moves to the ledger's escrow; the fee's part
        // stays in the book, held for this task.
        book.held = book.held - max_payment;
        table::add(&mut book.tasks, copy task_id, ClientTask { client, fee_bps, fee_escrow });
        event::emit(ClientTaskCreated { task_id: copy task_id, client, fee_escrow });
        open_task(config, ledger, server_addr, task_id, orchestrator, price_per_unit, max_payment);
    }

    /// Anyone may expire a task still pending `TASK_EXPIRY_SECS` after its
    /// creation: the whole escrow goes back to whoever paid it (the client's
    /// deposit, or the server), the
    /// task fails with `REASON_EXPIRED`, and nobody's counters change (the
    /// orchestrator may not be the one at fault). A task created before the
    /// clock existed counts as created at time 0.
    public entry fun expire_task(
        _anyone: &signer,
        task_id: vector<u8>,
    ) acquires Config, Ledger, TaskClock, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        assert!(vector::length(&task_id) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(table::contains(&ledger.tasks, task_id), E_TASK_NOT_FOUND);
        let task = table::borrow_mut(&mut ledger.tasks, task_id);
        assert!(task.status == STATUS_PENDING, E_TASK_NOT_PENDING);
        let created = created_at(config, &task_id);
        assert!(timestamp::now_seconds() >= created + TASK_EXPIRY_SECS, E_TASK_NOT_EXPIRED);

        let server_addr = task.server;
        let orchestrator = task.orchestrator;
        let refund = task.escrow;
        task.status = STATUS_FAILED;
        task.reason = REASON_EXPIRED;
        ledger.escrow_held = ledger.escrow_held - refund;
        settle_payer(config, &task_id, server_addr, refund, 0);
        forget_clock(config, &task_id);
        event::emit(TaskFailed { task_id, server: server_addr, orchestrator, reason: REASON_EXPIRED, refund });
    }

    /// The task's server completes it: the payment (see `quote_payment`) is
    /// split along `[orchestrator] ++ delegates`, the rest of the escrow is
    /// refunded to whoever paid it (see `settle_payer`). Payments go to the
    /// orchestrators' accounts, not to their stake: staking more is their
    /// own decision (`add_stake`), and earnings are not locked behind
    /// unbonding.
    public entry fun complete_task(
        server: &signer,
        task_id: vector<u8>,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        delegates: vector<address>,
        receipt_hash: vector<u8>,
    ) acquires Config, Ledger, TaskClock, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(vector::length(&task_id) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(vector::length(&receipt_hash) == HASH_LEN, E_INVALID_ARGUMENT);
        assert!(table::contains(&ledger.tasks, task_id), E_TASK_NOT_FOUND);
        let task = table::borrow(&ledger.tasks, task_id);
        assert!(task.server == server_addr, E_WRONG_SERVER);
        assert!(task.status == STATUS_PENDING, E_TASK_NOT_PENDING);
        let orchestrator = task.orchestrator;
        let escrow = task.escrow;
        let price_per_unit = task.price_per_unit;
        assert_valid_delegates(ledger, orchestrator, &delegates);

        let orch = table::borrow(&ledger.orchestrators, orchestrator);
        let payment = compute_payment(
            config, orch.successes, orch.failures, price_per_unit,
            prompt_tokens, output_tokens, compute_ms, escrow,
        );

        // Split: every member but the last takes `delegation_fee_bps` of what
        // remains; the last member (the executor) takes the rest.
        let chain = vector[orchestrator];
        vector::append(&mut chain, copy delegates);
        let last = vector::length(&chain) - 1;
        let remaining = payment;
        let i = 0;
        while (i < last) {
            let cut = bps_of(remaining, config.delegation_fee_bps);
            pay_out(config, *vector::borrow(&chain, i), cut);
            remaining = remaining - cut;
            i = i + 1;
        };
        let executor = *vector::borrow(&chain, last);
        pay_out(config, executor, remaining);
        let refund = escrow - payment;
        settle_payer(config, &task_id, server_addr, refund, payment);

        let task = table::borrow_mut(&mut ledger.tasks, task_id);
        task.status = STATUS_COMPLETED;
        task.payment = payment;
        let orch = table::borrow_mut(&mut ledger.orchestrators, orchestrator);
        orch.successes = orch.successes + 1;
        let exec = table::borrow_mut(&mut ledger.orchestrators, executor);
        exec.compute_ms = exec.compute_ms + compute_ms;
        ledger.escrow_held = ledger.escrow_held - escrow;
        forget_clock(config, &task_id);

        event::emit(TaskCompleted {
            task_id,
            server: server_addr,
            orchestrator,
            delegates,
            prompt_tokens,
            output_tokens,
            compute_ms,
            payment,
            refund,
            receipt_hash,
        });
    }

    /// The task's server fails it: the whole escrow is refunded to whoever
    /// paid it and the orchestrator's failure count grows.
    public entry fun fail_task(
        server: &signer,
        task_id: vector<u8>,
        reason: u8,
    ) acquires Config, Ledger, TaskClock, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(vector::length(&task_id) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(table::contains(&ledger.tasks, task_id), E_TASK_NOT_FOUND);
        let task = table::borrow_mut(&mut ledger.tasks, task_id);
        assert!(task.server == server_addr, E_WRONG_SERVER);
        assert!(task.status == STATUS_PENDING, E_TASK_NOT_PENDING);

        let orchestrator = task.orchestrator;
        let refund = task.escrow;
        task.status = STATUS_FAILED;
        task.reason = reason;
        let orch = table::borrow_mut(&mut ledger.orchestrators, orchestrator);
        orch.failures = orch.failures + 1;
        ledger.escrow_held = ledger.escrow_held - refund;
        settle_payer(config, &task_id, server_addr, refund, 0);
        forget_clock(config, &task_id);
        event::emit(TaskFailed { task_id, server: server_addr, orchestrator, reason, refund });
    }

    // ---------------------------------------------------- slashing and anchors

    /// An authorized server slashes `ratio_bps` of an orchestrator's stake +
    /// unbonding (stake first): `reporter_bps` of it to the server, the rest to
    /// the treasury. Each `evidence_hash` slashes once.
    public entry fun slash(
        server: &signer,
        orchestrator: address,
        ratio_bps: u64,
        evidence_hash: vector<u8>,
    ) acquires Config, Ledger, EvidenceLog {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(vector::length(&evidence_hash) == HASH_LEN, E_INVALID_ARGUMENT);
        let log_addr = vault_address(config);
        if (!exists<EvidenceLog>(log_addr)) {
            let vault = object::generate_signer_for_extending(&config.vault);
            move_to(&vault, EvidenceLog { used: table::new() });
        };
        let log = borrow_global_mut<EvidenceLog>(log_addr);
        assert!(!table::contains(&log.used, evidence_hash), E_EVIDENCE_USED);
        assert!(table::contains(&ledger.orchestrators, orchestrator), E_NOT_REGISTERED);
        assert!(ratio_bps > 0 && ratio_bps <= config.max_slash_bps, E_INVALID_RATIO);

        let orch = table::borrow_mut(&mut ledger.orchestrators, orchestrator);
        let held = (orch.stake as u128) + (orch.unbonding as u128);
        let amount = ((held * (ratio_bps as u128) / BPS) as u64);
        let from_stake = if (amount <= orch.stake) { amount } else { orch.stake };
        orch.stake = orch.stake - from_stake;
        orch.unbonding = orch.unbonding - (amount - from_stake);
        ledger.stake_held = ledger.stake_held - amount;

        let reporter_cut = bps_of(amount, config.reporter_bps);
        pay_out(config, server_addr, reporter_cut);
        pay_out(config, config.treasury, amount - reporter_cut);
        table::add(&mut log.used, copy evidence_hash, true);
        event::emit(Slashed { orchestrator, server: server_addr, ratio_bps, amount, reporter_cut, evidence_hash });
    }

    /// An authorized server appends a Merkle root over `count` receipts,
    /// from task `first_task` to task `last_task`, stamped with the current time.
    public entry fun anchor_receipts(
        server: &signer,
        merkle_root: vector<u8>,
        count: u64,
        first_task: vector<u8>,
        last_task: vector<u8>,
    ) acquires Ledger {
        assert_initialized();
        let ledger = borrow_global_mut<Ledger>(@cactus);
        let server_addr = signer::address_of(server);
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(vector::length(&merkle_root) == HASH_LEN, E_INVALID_ARGUMENT);
        assert!(vector::length(&first_task) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(vector::length(&last_task) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(count > 0, E_ZERO_AMOUNT);

        let index = ledger.anchor_count;
        let anchored_at = timestamp::now_seconds();
        table::add(&mut ledger.anchors, index, Anchor {
            server: server_addr,
            root: merkle_root,
            count,
            first_task,
            last_task,
            anchored_at,
        });
        ledger.anchor_count = index + 1;
        event::emit(ReceiptsAnchored {
            index, server: server_addr, merkle_root, count, first_task, last_task, anchored_at,
        });
    }

    // -------------------------------------------------------------------- views

    #[view]
    /// `(min_stake, unbonding_secs, max_slash_bps, reporter_bps, treasury,
    /// prompt_weight, output_weight, price_per_ms, ms_cap_per_unit, delegation_fee_bps)`.
    public fun get_config(): (u64, u64, u64, u64, address, u64, u64, u64, u64, u64) acquires Config {
        assert_initialized();
        let c = borrow_global<Config>(@cactus);
        (
            c.min_stake, c.unbonding_secs, c.max_slash_bps, c.reporter_bps, c.treasury,
            c.prompt_weight, c.output_weight, c.price_per_ms, c.ms_cap_per_unit, c.delegation_fee_bps
        )
    }

    #[view]
    /// `(peer_id, stake, unbonding, unlock_at, successes, failures, compute_ms)`;
    /// aborts with `E_NOT_REGISTERED` for an unknown address.
    public fun get_orchestrator(addr: address): (vector<u8>, u64, u64, u64, u64, u64, u64) acquires Ledger {
        assert_initialized();
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(table::contains(&ledger.orchestrators, addr), E_NOT_REGISTERED);
        let o = table::borrow(&ledger.orchestrators, addr);
        (o.peer_id, o.stake, o.unbonding, o.unlock_at, o.successes, o.failures, o.compute_ms)
    }

    #[view]
    /// The authorized server whose router runs as `peer_id`; aborts with
    /// `E_SERVER_NOT_FOUND` when no server is bound to it.
    public fun server_of_peer(peer_id: vector<u8>): address acquires Config, ServerPeers {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let peers_addr = vault_address(config);
        assert!(exists<ServerPeers>(peers_addr), E_SERVER_NOT_FOUND);
        let peers = borrow_global<ServerPeers>(peers_addr);
        assert!(table::contains(&peers.server_of, peer_id), E_SERVER_NOT_FOUND);
        *table::borrow(&peers.server_of, peer_id)
    }

    #[view]
    /// `addr`'s balance of the payment asset, outside the vault.
    public fun balance_of(addr: address): u64 acquires Config {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        primary_fungible_store::balance(addr, config.asset)
    }

    #[view]
    /// Whether `addr` is an authorized server.
    public fun is_server(addr: address): bool acquires Ledger {
        assert_initialized();
        table::contains(&borrow_global<Ledger>(@cactus).servers, addr)
    }

    #[view]
    /// `(server, orchestrator, price_per_unit, escrow, status, payment)`;
    /// aborts with `E_TASK_NOT_FOUND` for an unknown task id.
    public fun get_task(task_id: vector<u8>): (address, address, u64, u64, u8, u64) acquires Ledger {
        assert_initialized();
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(table::contains(&ledger.tasks, task_id), E_TASK_NOT_FOUND);
        let t = table::borrow(&ledger.tasks, task_id);
        (t.server, t.orchestrator, t.price_per_unit, t.escrow, t.status, t.payment)
    }

    #[view]
    /// The payment `complete_task` would make now for a task of `orchestrator`
    /// with this price and escrow `max_payment`; aborts with `E_NOT_REGISTERED`
    /// for an unknown orchestrator.
    public fun quote_payment(
        orchestrator: address,
        price_per_unit: u64,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        max_payment: u64,
    ): u64 acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(table::contains(&ledger.orchestrators, orchestrator), E_NOT_REGISTERED);
        let o = table::borrow(&ledger.orchestrators, orchestrator);
        compute_payment(
            config, o.successes, o.failures, price_per_unit,
            prompt_tokens, output_tokens, compute_ms, max_payment,
        )
    }

    #[view]
    /// `(deposit, max_price_per_unit)`: what `client` has on its tab at
    /// `server`, and the most it pays per work unit (u64's maximum when it
    /// set no cap).
    public fun get_client(client: address, server: address): (u64, u64) acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let book_addr = vault_address(config);
        if (!exists<ClientBook>(book_addr)) { return (0, NO_CAP) };
        let book = borrow_global<ClientBook>(book_addr);
        (tab_of(book, Tab { client, server }), cap_of(book, client))
    }

    #[view]
    /// `(bound, client)`: whether a client bound `peer_id`, and which.
    public fun client_of_peer(peer_id: vector<u8>): (bool, address) acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let book_addr = vault_address(config);
        if (!exists<ClientBook>(book_addr)) { return (false, @0x0) };
        let book = borrow_global<ClientBook>(book_addr);
        if (!table::contains(&book.peers, peer_id)) { return (false, @0x0) };
        (true, *table::borrow(&book.peers, peer_id))
    }

    #[view]
    /// `server`'s fee, bps of each payment.
    public fun get_server_fee(server: address): u64 acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let book_addr = vault_address(config);
        if (!exists<ClientBook>(book_addr)) { return 0 };
        fee_of(borrow_global<ClientBook>(book_addr), server)
    }

    #[view]
    /// All clients' deposits, plus the fees escrowed for pending client tasks.
    public fun deposits_held(): u64 acquires Config, ClientBook {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let book_addr = vault_address(config);
        if (!exists<ClientBook>(book_addr)) { return 0 };
        borrow_global<ClientBook>(book_addr).held
    }

    #[view]
    /// `(stake_held, escrow_held, vault_balance)`; stake_held includes unbonding.
    /// The module keeps `stake_held + escrow_held + deposits_held() == vault_balance`.
    public fun totals(): (u64, u64, u64) acquires Config, Ledger {
        assert_initialized();
        let config = borrow_global<Config>(@cactus);
        let ledger = borrow_global<Ledger>(@cactus);
        let vault_balance = primary_fungible_store::balance(vault_address(config), config.asset);
        (ledger.stake_held, ledger.escrow_held, vault_balance)
    }

    #[view]
    /// The number of anchors appended so far.
    public fun anchor_count(): u64 acquires Ledger {
        assert_initialized();
        borrow_global<Ledger>(@cactus).anchor_count
    }

    #[view]
    /// `(server, root, count, first_task, last_task, anchored_at)` of anchor
    /// `index`; aborts with `E_INVALID_ARGUMENT` when `index >= anchor_count()`.
    public fun get_anchor(index: u64): (address, vector<u8>, u64, vector<u8>, vector<u8>, u64) acquires Ledger {
        assert_initialized();
        let ledger = borrow_global<Ledger>(@cactus);
        assert!(index < ledger.anchor_count, E_INVALID_ARGUMENT);
        let a = table::borrow(&ledger.anchors, index);
        (a.server, a.root, a.count, a.first_task, a.last_task, a.anchored_at)
    }

    // ----------------------------------------------------------------- helpers

    fun assert_initialized() {
        assert!(exists<Config>(@cactus), E_NOT_INITIALIZED);
    }

    fun assert_valid_config(
        max_slash_bps: u64,
        reporter_bps: u64,
        prompt_weight: u64,
        output_weight: u64,
        delegation_fee_bps: u64,
    ) {
        let full = (BPS as u64);
        assert!(
            max_slash_bps <= full && reporter_bps <= full && delegation_fee_bps <= full,
            E_INVALID_CONFIG
        );
        assert!(prompt_weight > 0 || output_weight > 0, E_INVALID_CONFIG);
    }

    /// At most 2 delegates, no duplicates, not the orchestrator, all registered.
    fun assert_valid_delegates(ledger: &Ledger, orchestrator: address, delegates: &vector<address>) {
        let n = vector::length(delegates);
        assert!(n <= MAX_DELEGATES, E_INVALID_DELEGATION);
        let i = 0;
        while (i < n) {
            let d = *vector::borrow(delegates, i);
            assert!(d != orchestrator, E_INVALID_DELEGATION);
            assert!(table::contains(&ledger.orchestrators, d), E_INVALID_DELEGATION);
            let j = i + 1;
            while (j < n) {
                assert!(*vector::borrow(delegates, j) != d, E_INVALID_DELEGATION);
                j = j + 1;
            };
            i = i + 1;
        };
    }

    /// The checks every task opening makes, in this order.
    fun assert_can_open(
        config: &Config,
        ledger: &Ledger,
        server_addr: address,
        task_id: &vector<u8>,
        orchestrator: address,
        max_payment: u64,
    ) {
        assert!(table::contains(&ledger.servers, server_addr), E_NOT_AUTHORIZED_SERVER);
        assert!(vector::length(task_id) == TASK_ID_LEN, E_INVALID_ARGUMENT);
        assert!(max_payment > 0, E_ZERO_AMOUNT);
        assert!(!table::contains(&ledger.tasks, *task_id), E_TASK_EXISTS);
        assert!(table::contains(&ledger.orchestrators, orchestrator), E_NOT_REGISTERED);
        let orch = table::borrow(&ledger.orchestrators, orchestrator);
        assert!(orch.stake >= config.min_stake, E_ORCHESTRATOR_INELIGIBLE);
    }

    /// Records a task whose `max_payment` is already in the vault, and when
    /// it was created.
    fun open_task(
        config: &Config,
        ledger: &mut Ledger,
        server_addr: address,
        task_id: vector<u8>,
        orchestrator: address,
        price_per_unit: u64,
        max_payment: u64,
    ) acquires TaskClock {
        table::add(&mut ledger.tasks, copy task_id, Task {
            server: server_addr,
            orchestrator,
            price_per_unit,
            escrow: max_payment,
            status: STATUS_PENDING,
            payment: 0,
            reason: 0,
        });
        ledger.escrow_held = ledger.escrow_held + max_payment;
        let clock_addr = vault_address(config);
        if (!exists<TaskClock>(clock_addr)) {
            let vault = object::generate_signer_for_extending(&config.vault);
            move_to(&vault, TaskClock { created: table::new() });
        };
        let clock = borrow_global_mut<TaskClock>(clock_addr);
        table::add(&mut clock.created, copy task_id, timestamp::now_seconds());
        event::emit(TaskCreated { task_id, server: server_addr, orchestrator, price_per_unit, max_payment });
    }

    /// Gives back what a settled task did not spend. For a client's task:
    /// the server takes its fee on `payment` from the fee escrow, and the
    /// rest of that escrow plus `refund` go back to the client's tab. For a
    /// server's own task: `refund` goes back to the server.
    fun settle_payer(
        config: &Config,
        task_id: &vector<u8>,
        server: address,
        refund: u64,
        payment: u64,
    ) acquires ClientBook {
        let book_addr = vault_address(config);
        if (exists<ClientBook>(book_addr)) {
            let book = borrow_global_mut<ClientBook>(book_addr);
            if (table::contains(&book.tasks, *task_id)) {
                let ClientTask { client, fee_bps, fee_escrow } = table::remove(&mut book.tasks, *task_id);
                let fee = bps_of(payment, fee_bps);
                let back = refund + (fee_escrow - fee);
                let tab = Tab { client, server };
                let on_tab = tab_of(book, tab);
                set_tab(book, tab, on_tab + back);
                book.held = book.held + refund - fee;
                pay_out(config, server, fee);
                event::emit(ClientTaskSettled { task_id: *task_id, client, server, fee, refund: back });
                return
            };
        };
        pay_out(config, server, refund);
    }

    /// Drops `server`'s PeerId binding, if it has one.
    fun unbind_server(peers: &mut ServerPeers, server: address) {
        if (table::contains(&peers.peer_of, server)) {
            let old = table::remove(&mut peers.peer_of, server);
            table::remove(&mut peers.server_of, old);
        };
    }

    /// Creates the client book under the vault's address if it is missing.
    fun ensure_book(config: &Config) {
        if (!exists<ClientBook>(vault_address(config))) {
            let vault = object::generate_signer_for_extending(&config.vault);
            move_to(&vault, ClientBook {
                tabs: table::new(),
                caps: table::new(),
                fees: table::new(),
                tasks: table::new(),
                held: 0,
                peers: table::new(),
            });
        };
    }

    fun tab_of(book: &ClientBook, tab: Tab): u64 {
        if (table::contains(&book.tabs, tab)) { *table::borrow(&book.tabs, tab) } else { 0 }
    }

    /// Sets a tab, dropping it at 0.
    fun set_tab(book: &mut ClientBook, tab: Tab, amount: u64) {
        if (amount == 0) {
            if (table::contains(&book.tabs, tab)) { table::remove(&mut book.tabs, tab); };
        } else {
            table::upsert(&mut book.tabs, tab, amount);
        }
    }

    fun cap_of(book: &ClientBook, client: address): u64 {
        if (table::contains(&book.caps, client)) { *table::borrow(&book.caps, client) } else { NO_CAP }
    }

    fun fee_of(book: &ClientBook, server: address): u64 {
        if (table::contains(&book.fees, server)) { *table::borrow(&book.fees, server) } else { 0 }
    }

    /// `min(escrow, (base + time_credit) * rep_bps / 10000)`, see SPEC.md.
    fun compute_payment(
        config: &Config,
        successes: u64,
        failures: u64,
        price_per_unit: u64,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        escrow: u64,
    ): u64 {
        let units = (prompt_tokens as u128) * (config.prompt_weight as u128)
            + (output_tokens as u128) * (config.output_weight as u128);
        let base = units * (price_per_unit as u128);
        let ms_cap = units * (config.ms_cap_per_unit as u128);
        let credited_ms = if ((compute_ms as u128) < ms_cap) { (compute_ms as u128) } else { ms_cap };
        let time_credit = credited_ms * (config.price_per_ms as u128);
        let s = (successes as u128);
        let f = (failures as u128);
        let rep_bps = 5000 + 5000 * (s + 1) / (s + f + 1);
        let gross = (base + time_credit) * rep_bps / BPS;
        if (gross < (escrow as u128)) { (gross as u64) } else { escrow }
    }

    /// `amount * bps / 10000`, computed in u128.
    fun bps_of(amount: u64, bps: u64): u64 {
        (((amount as u128) * (bps as u128) / BPS) as u64)
    }

    fun vault_address(config: &Config): address {
        object::address_from_extend_ref(&config.vault)
    }

    /// When a task was created (0 if before the clock existed).
    fun created_at(config: &Config, task_id: &vector<u8>): u64 acquires TaskClock {
        let clock_addr = vault_address(config);
        if (!exists<TaskClock>(clock_addr)) { return 0 };
        let clock = borrow_global<TaskClock>(clock_addr);
        if (!table::contains(&clock.created, *task_id)) { return 0 };
        *table::borrow(&clock.created, *task_id)
    }

    /// Drops a settled task's creation time.
    fun forget_clock(config: &Config, task_id: &vector<u8>) acquires TaskClock {
        let clock_addr = vault_address(config);
        if (!exists<TaskClock>(clock_addr)) { return };
        let clock = borrow_global_mut<TaskClock>(clock_addr);
        if (table::contains(&clock.created, *task_id)) {
            table::remove(&mut clock.created, *task_id);
        };
    }

    /// Moves `amount` from `payer`'s primary store into the vault, after
    /// checking the balance covers it and the vault can hold it.
    fun pay_in(config: &Config, payer: &signer, amount: u64) {
        let balance = primary_fungible_store::balance(signer::address_of(payer), config.asset);
        assert!(balance >= amount, E_INSUFFICIENT_BALANCE);
        let vault = vault_address(config);
        // The vault's balance after the deposit: past u64::MAX this sum aborts
        // with an arithmetic error here, before the framework's store would.
        let _vault_after = primary_fungible_store::balance(vault, config.asset) + amount;
        primary_fungible_store::transfer(payer, config.asset, vault, amount);
    }

    /// Pays `amount` out of the vault to `to`'s primary store (nothing if 0).
    fun pay_out(config: &Config, to: address, amount: u64) {
        if (amount > 0) {
            let vault = object::generate_signer_for_extending(&config.vault);
            primary_fungible_store::transfer(&vault, config.asset, to, amount);
        }
    }
}
