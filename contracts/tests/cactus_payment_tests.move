#[test_only]
/// The scenarios of `contracts/SPEC.md`, with the same names as the tests of the
/// Rust reference model `cactus_protocol::contract`.
module cactus::cactus_payment_tests {
    use std::option;
    use std::string;
    use std::vector;
    use aptos_framework::account;
    use aptos_framework::event;
    use aptos_framework::fungible_asset::{Self, Metadata, MintRef};
    use aptos_framework::object::{Self, Object};
    use aptos_framework::primary_fungible_store;
    use aptos_framework::timestamp;
    use cactus::cactus_payment;

    // Config used by every test unless it says otherwise.
    const MIN_STAKE: u64 = 1000;
    const UNBONDING_SECS: u64 = 100;
    const MAX_SLASH_BPS: u64 = 5000;
    const REPORTER_BPS: u64 = 1000;
    const PROMPT_WEIGHT: u64 = 1;
    const OUTPUT_WEIGHT: u64 = 2;
    const PRICE_PER_MS: u64 = 1;
    const MS_CAP_PER_UNIT: u64 = 10;
    const DELEGATION_FEE_BPS: u64 = 1000;

    /// What each funded account starts with.
    const FUNDS: u64 = 100000;
    const MAX_U64: u64 = 18446744073709551615;

    const TREASURY: address = @0x7ea5;
    const ISSUER: address = @0xfa;
    const ORCH: address = @0x100;
    const ORCH2: address = @0x200;
    const ORCH3: address = @0x300;
    const SERVER: address = @0x400;
    const SERVER2: address = @0x500;
    const WHALE: address = @0x600;
    const WHALE2: address = @0x700;
    const CLIENT: address = @0x800;

    // ------------------------------------------------------------------ helpers

    fun signer_of(addr: address): signer {
        account::create_signer_for_test(addr)
    }

    /// Starts the clock at 0, creates a test fungible asset and funds the
    /// orchestrators and servers with `FUNDS` each.
    fun start(fx: &signer): Object<Metadata> {
        let (asset, _mint_ref) = start_minting(fx);
        asset
    }

    /// `start`, keeping the asset's mint ref to fund more accounts with.
    fun start_minting(fx: &signer): (Object<Metadata>, MintRef) {
        timestamp::set_time_has_started_for_testing(fx);
        let issuer = signer_of(ISSUER);
        let ctor = object::create_named_object(&issuer, b"CACTUS_TEST_ASSET");
        primary_fungible_store::create_primary_store_enabled_fungible_asset(
            &ctor,
            option::none(),
            string::utf8(b"Cactus Test"),
            string::utf8(b"CTT"),
            0,
            string::utf8(b""),
            string::utf8(b""),
        );
        let mint_ref = fungible_asset::generate_mint_ref(&ctor);
        let funded = vector[ORCH, ORCH2, ORCH3, SERVER, SERVER2, CLIENT];
        let i = 0;
        while (i < vector::length(&funded)) {
            primary_fungible_store::mint(&mint_ref, *vector::borrow(&funded, i), FUNDS);
            i = i + 1;
        };
        (object::object_from_constructor_ref<Metadata>(&ctor), mint_ref)
    }

    fun init_default(admin: &signer, asset: Object<Metadata>) {
        cactus_payment::initialize(
            admin, asset, MIN_STAKE, UNBONDING_SECS, MAX_SLASH_BPS, REPORTER_BPS, TREASURY,
            PROMPT_WEIGHT, OUTPUT_WEIGHT, PRICE_PER_MS, MS_CAP_PER_UNIT, DELEGATION_FEE_BPS,
        );
    }

    /// `start` and `initialize` with the default config.
    fun setup(fx: &signer, admin: &signer): Object<Metadata> {
        let asset = start(fx);
        init_default(admin, asset);
        asset
    }

    /// `setup`, ORCH registered with 2000, SERVER authorized.
    fun ready(fx: &signer, admin: &signer): Object<Metadata> {
        let asset = setup(fx, admin);
        register(ORCH, 2000);
        cactus_payment::authorize_server(admin, SERVER);
        asset
    }

    fun peer(): vector<u8> {
        b"12D3KooWCactusTestPeer"
    }

    fun register(addr: address, amount: u64) {
        cactus_payment::register_orchestrator(&signer_of(addr), peer(), amount);
    }

    /// 16 bytes: fifteen zeros, then `n`.
    fun task_id(n: u8): vector<u8> {
        filled(15, 0, n)
    }

    /// 32 bytes: thirty-one copies of `n`, then `n`.
    fun hash(n: u8): vector<u8> {
        filled(31, n, n)
    }

    fun filled(len: u64, fill: u8, last: u8): vector<u8> {
        let out = vector[];
        let i = 0;
        while (i < len) {
            vector::push_back(&mut out, fill);
            i = i + 1;
        };
        vector::push_back(&mut out, last);
        out
    }

    /// Task 1 of SERVER for ORCH at price 10 with escrow `max_payment`.
    fun create(max_payment: u64) {
        cactus_payment::create_task(&signer_of(SERVER), task_id(1), ORCH, 10, max_payment);
    }

    /// 10 prompt + 20 output tokens = 50 units; base 500; 300 ms credited: 800 at full reputation.
    fun complete(id: vector<u8>, delegates: vector<address>) {
        cactus_payment::complete_task(&signer_of(SERVER), id, 10, 20, 300, delegates, hash(9));
    }

    fun balance(asset: Object<Metadata>, addr: address): u64 {
        primary_fungible_store::balance(addr, asset)
    }

    fun assert_orchestrator(
        addr: address,
        stake: u64,
        unbonding: u64,
        unlock_at: u64,
        successes: u64,
        failures: u64,
        compute_ms: u64,
    ) {
        let (peer_id, s, u, t, ok, failed, ms) = cactus_payment::get_orchestrator(addr);
        assert!(peer_id == peer(), 100);
        assert!(s == stake, 101);
        assert!(u == unbonding, 102);
        assert!(t == unlock_at, 103);
        assert!(ok == successes, 104);
        assert!(failed == failures, 105);
        assert!(ms == compute_ms, 106);
    }

    /// Checks the held totals and that they add up to the vault's balance.
    fun assert_totals(stake_held: u64, escrow_held: u64) {
        let (s, e, vault) = cactus_payment::totals();
        assert!(s == stake_held, 110);
        assert!(e == escrow_held, 111);
        assert!(s + e + cactus_payment::deposits_held() == vault, 112);
    }

    fun assert_invariant() {
        let (s, e, vault) = cactus_payment::totals();
        assert!(s + e + cactus_payment::deposits_held() == vault, 120);
    }

    /// `ready`, SERVER's fee at 10 %, CLIENT's deposit of 10000 at SERVER.
    fun client_ready(fx: &signer, admin: &signer): Object<Metadata> {
        let asset = ready(fx, admin);
        cactus_payment::set_server_fee(&signer_of(SERVER), 1000);
        cactus_payment::deposit(&signer_of(CLIENT), SERVER, 10000);
        asset
    }

    /// Task 1 of SERVER for ORCH at price 10, paid by CLIENT, escrow `max_payment` (+ the fee's).
    fun create_for_client(max_payment: u64) {
        cactus_payment::create_client_task(&signer_of(SERVER), CLIENT, task_id(1), ORCH, 10, max_payment);
    }

    fun assert_client(tab: u64, cap: u64) {
        let (t, c) = cactus_payment::get_client(CLIENT, SERVER);
        assert!(t == tab, 130);
        assert!(c == cap, 131);
    }

    // -------------------------------------------------------------- initialize

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_initialize_sets_config(fx: &signer, admin: &signer) {
        setup(fx, admin);
        let (min_stake, unbonding, max_slash, reporter, treasury, pw, ow, ppms, cap, fee) =
            cactus_payment::get_config();
        assert!(min_stake == MIN_STAKE && unbonding == UNBONDING_SECS, 1);
        assert!(max_slash == MAX_SLASH_BPS && reporter == REPORTER_BPS && treasury == TREASURY, 2);
        assert!(pw == PROMPT_WEIGHT && ow == OUTPUT_WEIGHT, 3);
        assert!(ppms == PRICE_PER_MS && cap == MS_CAP_PER_UNIT && fee == DELEGATION_FEE_BPS, 4);
        assert_totals(0, 0);
        assert!(cactus_payment::anchor_count() == 0, 5);
        assert!(!cactus_payment::is_server(SERVER), 6);

        // set_config replaces all ten fields.
        cactus_payment::set_config(admin, 5, 6, 7, 8, @0x99, 9, 0, 10, 11, 12);
        let (min_stake, unbonding, max_slash, reporter, treasury, pw, ow, ppms, cap, fee) =
            cactus_payment::get_config();
        assert!(min_stake == 5 && unbonding == 6 && max_slash == 7 && reporter == 8, 7);
        assert!(treasury == @0x99 && pw == 9 && ow == 0, 8);
        assert!(ppms == 10 && cap == 11 && fee == 12, 9);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 2, location = cactus::cactus_payment)]
    fun test_initialize_twice_fails(fx: &signer, admin: &signer) {
        let asset = setup(fx, admin);
        init_default(admin, asset);
    }

    #[test(fx = @aptos_framework)]
    #[expected_failure(abort_code = 1, location = cactus::cactus_payment)]
    fun test_initialize_not_admin_fails(fx: &signer) {
        let asset = start(fx);
        init_default(&signer_of(ORCH), asset);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 1, location = cactus::cactus_payment)]
    fun test_set_config_not_admin_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::set_config(&signer_of(ORCH), 1, 1, 1, 1, TREASURY, 1, 1, 1, 1, 1);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 23, location = cactus::cactus_payment)]
    fun test_set_config_invalid_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        // reporter_bps above 10 000
        cactus_payment::set_config(admin, 1, 1, 1, 10001, TREASURY, 1, 1, 1, 1, 1);
    }

    // ------------------------------------------------------------ registration

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_register_orchestrator(fx: &signer, admin: &signer) {
        let asset = setup(fx, admin);
        register(ORCH, 2000);
        assert_orchestrator(ORCH, 2000, 0, 0, 0, 0, 0);
        assert!(balance(asset, ORCH) == FUNDS - 2000, 1);
        assert_totals(2000, 0);
        assert!(vector::length(&event::emitted_events<cactus_payment::OrchestratorRegistered>()) == 1, 2);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 4, location = cactus::cactus_payment)]
    fun test_register_zero_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 6, location = cactus::cactus_payment)]
    fun test_register_below_min_stake_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, MIN_STAKE - 1);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 7, location = cactus::cactus_payment)]
    fun test_register_twice_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 2000);
        register(ORCH, 2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 5, location = cactus::cactus_payment)]
    fun test_register_bad_peer_id_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::register_orchestrator(&signer_of(ORCH), vector[], 2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 22, location = cactus::cactus_payment)]
    fun test_register_insufficient_balance_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, FUNDS + 1);
    }

    // ------------------------------------------------------------------- stake

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_add_stake(fx: &signer, admin: &signer) {
        let asset = setup(fx, admin);
        register(ORCH, 2000);
        cactus_payment::add_stake(&signer_of(ORCH), 500);
        assert_orchestrator(ORCH, 2500, 0, 0, 0, 0, 0);
        assert!(balance(asset, ORCH) == FUNDS - 2500, 1);
        assert_totals(2500, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 8, location = cactus::cactus_payment)]
    fun test_add_stake_unregistered_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::add_stake(&signer_of(ORCH), 500);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_request_unstake_and_withdraw(fx: &signer, admin: &signer) {
        let asset = setup(fx, admin);
        let orch = signer_of(ORCH);
        register(ORCH, 3000);

        timestamp::update_global_time_for_test_secs(10);
        cactus_payment::request_unstake(&orch, 1000);
        assert_orchestrator(ORCH, 2000, 1000, 10 + UNBONDING_SECS, 0, 0, 0);

        // A new request restarts the clock for everything unbonding.
        timestamp::update_global_time_for_test_secs(50);
        cactus_payment::request_unstake(&orch, 500);
        assert_orchestrator(ORCH, 1500, 1500, 50 + UNBONDING_SECS, 0, 0, 0);
        assert_totals(3000, 0);

        timestamp::update_global_time_for_test_secs(50 + UNBONDING_SECS);
        cactus_payment::withdraw(&orch);
        assert_orchestrator(ORCH, 1500, 0, 50 + UNBONDING_SECS, 0, 0, 0);
        assert!(balance(asset, ORCH) == FUNDS - 1500, 1);
        assert_totals(1500, 0);

        // Unstaking everything (leaving 0) is allowed.
        cactus_payment::request_unstake(&orch, 1500);
        timestamp::update_global_time_for_test_secs(1000);
        cactus_payment::withdraw(&orch);
        assert_orchestrator(ORCH, 0, 0, 50 + UNBONDING_SECS + UNBONDING_SECS, 0, 0, 0);
        assert!(balance(asset, ORCH) == FUNDS, 2);
        assert_totals(0, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 9, location = cactus::cactus_payment)]
    fun test_unstake_more_than_stake_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 2000);
        cactus_payment::request_unstake(&signer_of(ORCH), 2001);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 6, location = cactus::cactus_payment)]
    fun test_unstake_leaving_dust_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 2000);
        // would leave 500: more than 0, less than min_stake
        cactus_payment::request_unstake(&signer_of(ORCH), 1500);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 11, location = cactus::cactus_payment)]
    fun test_withdraw_before_unlock_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 2000);
        cactus_payment::request_unstake(&signer_of(ORCH), 1000);
        timestamp::update_global_time_for_test_secs(UNBONDING_SECS - 1);
        cactus_payment::withdraw(&signer_of(ORCH));
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 10, location = cactus::cactus_payment)]
    fun test_withdraw_nothing_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        register(ORCH, 2000);
        cactus_payment::withdraw(&signer_of(ORCH));
    }

    // ----------------------------------------------------------------- servers

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_authorize_and_revoke_server(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::authorize_server(admin, SERVER);
        assert!(cactus_payment::is_server(SERVER), 1);
        assert!(!cactus_payment::is_server(SERVER2), 2);
        cactus_payment::revoke_server(admin, SERVER);
        assert!(!cactus_payment::is_server(SERVER), 3);
        cactus_payment::authorize_server(admin, SERVER);
        assert!(cactus_payment::is_server(SERVER), 4);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 1, location = cactus::cactus_payment)]
    fun test_authorize_not_admin_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::authorize_server(&signer_of(SERVER), SERVER);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 12, location = cactus::cactus_payment)]
    fun test_authorize_twice_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::authorize_server(admin, SERVER);
        cactus_payment::authorize_server(admin, SERVER);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 13, location = cactus::cactus_payment)]
    fun test_revoke_unknown_fails(fx: &signer, admin: &signer) {
        setup(fx, admin);
        cactus_payment::revoke_server(admin, SERVER);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 14, location = cactus::cactus_payment)]
    fun test_revoked_server_cannot_create(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::revoke_server(admin, SERVER);
        create(2000);
    }

    // ------------------------------------------------------------- create_task

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_create_task_escrows(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        create(2000);
        let (server, orchestrator, price, escrow, status, payment) = cactus_payment::get_task(task_id(1));
        assert!(server == SERVER && orchestrator == ORCH, 1);
        assert!(price == 10 && escrow == 2000 && status == 0 && payment == 0, 2);
        assert!(balance(asset, SERVER) == FUNDS - 2000, 3);
        assert_totals(2000, 2000);
        assert!(vector::length(&event::emitted_events<cactus_payment::TaskCreated>()) == 1, 4);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 14, location = cactus::cactus_payment)]
    fun test_create_task_unauthorized_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::create_task(&signer_of(SERVER2), task_id(1), ORCH, 10, 2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 15, location = cactus::cactus_payment)]
    fun test_create_task_duplicate_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(2000);
        create(2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 5, location = cactus::cactus_payment)]
    fun test_create_task_bad_id_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        // 15 bytes
        cactus_payment::create_task(&signer_of(SERVER), filled(14, 0, 1), ORCH, 10, 2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 4, location = cactus::cactus_payment)]
    fun test_create_task_zero_payment_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 8, location = cactus::cactus_payment)]
    fun test_create_task_unregistered_orchestrator_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::create_task(&signer_of(SERVER), task_id(1), ORCH2, 10, 2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 19, location = cactus::cactus_payment)]
    fun test_create_task_ineligible_orchestrator_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        // All of ORCH's stake goes to unbonding: still registered, active stake 0.
        cactus_payment::request_unstake(&signer_of(ORCH), 2000);
        create(2000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 22, location = cactus::cactus_payment)]
    fun test_create_task_insufficient_balance_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(FUNDS + 1);
    }

    // ----------------------------------------------------------- complete_task

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_complete_task_pays_and_refunds(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        create(2000);
        assert!(cactus_payment::quote_payment(ORCH, 10, 10, 20, 300, 2000) == 800, 1);
        complete(task_id(1), vector[]);

        let (_, _, _, escrow, status, payment) = cactus_payment::get_task(task_id(1));
        assert!(escrow == 2000 && status == 1 && payment == 800, 2);
        assert!(balance(asset, ORCH) == FUNDS - 2000 + 800, 3);
        assert!(balance(asset, SERVER) == FUNDS - 800, 4);
        assert_orchestrator(ORCH, 2000, 0, 0, 1, 0, 300);
        assert_totals(2000, 0);
        assert!(vector::length(&event::emitted_events<cactus_payment::TaskCompleted>()) == 1, 5);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_payment_capped_by_escrow(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        create(500);
        complete(task_id(1), vector[]);
        let (_, _, _, _, _, payment) = cactus_payment::get_task(task_id(1));
        assert!(payment == 500, 1);
        assert!(balance(asset, ORCH) == FUNDS - 2000 + 500, 2);
        assert!(balance(asset, SERVER) == FUNDS - 500, 3);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_reputation_scales_payment(fx: &signer, admin: &signer) {
        ready(fx, admin);
        let server = signer_of(SERVER);
        cactus_payment::create_task(&server, task_id(1), ORCH, 10, 2000);
        cactus_payment::create_task(&server, task_id(2), ORCH, 10, 2000);
        cactus_payment::create_task(&server, task_id(3), ORCH, 10, 2000);
        cactus_payment::fail_task(&server, task_id(1), 1);

        // 0 successes, 1 failure: rep_bps = 5000 + 5000 * 1 / 2 = 7500.
        assert!(cactus_payment::quote_payment(ORCH, 10, 10, 20, 300, 2000) == 600, 1);
        complete(task_id(2), vector[]);
        let (_, _, _, _, _, payment) = cactus_payment::get_task(task_id(2));
        assert!(payment == 600, 2);

        // 1 success, 1 failure: rep_bps = 5000 + 5000 * 2 / 3 = 8333; 800 * 8333 / 10000 = 666.
        assert!(cactus_payment::quote_payment(ORCH, 10, 10, 20, 300, 2000) == 666, 3);
        complete(task_id(3), vector[]);
        let (_, _, _, _, _, payment) = cactus_payment::get_task(task_id(3));
        assert!(payment == 666, 4);
        assert_orchestrator(ORCH, 2000, 0, 0, 2, 1, 600);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_complete_task_delegated_splits(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        register(ORCH2, 2000);
        register(ORCH3, 2000);
        create(2000);
        complete(task_id(1), vector[ORCH2, ORCH3]);

        // 800: ORCH keeps 10 % (80), ORCH2 10 % of the remaining 720 (72), ORCH3 the rest (648).
        assert!(balance(asset, ORCH) == FUNDS - 2000 + 80, 1);
        assert!(balance(asset, ORCH2) == FUNDS - 2000 + 72, 2);
        assert!(balance(asset, ORCH3) == FUNDS - 2000 + 648, 3);
        assert!(balance(asset, SERVER) == FUNDS - 800, 4);
        // The responsible orchestrator counts the success; the executor the compute time.
        assert_orchestrator(ORCH, 2000, 0, 0, 1, 0, 0);
        assert_orchestrator(ORCH2, 2000, 0, 0, 0, 0, 0);
        assert_orchestrator(ORCH3, 2000, 0, 0, 0, 0, 300);
        assert_totals(6000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 20, location = cactus::cactus_payment)]
    fun test_complete_task_bad_delegation_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(2000);
        // the orchestrator cannot delegate to itself
        complete(task_id(1), vector[ORCH]);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 18, location = cactus::cactus_payment)]
    fun test_complete_task_wrong_server_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::authorize_server(admin, SERVER2);
        create(2000);
        cactus_payment::complete_task(&signer_of(SERVER2), task_id(1), 10, 20, 300, vector[], hash(9));
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 17, location = cactus::cactus_payment)]
    fun test_complete_task_twice_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(2000);
        complete(task_id(1), vector[]);
        complete(task_id(1), vector[]);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 16, location = cactus::cactus_payment)]
    fun test_complete_unknown_task_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        complete(task_id(1), vector[]);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 5, location = cactus::cactus_payment)]
    fun test_complete_task_bad_receipt_hash_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(2000);
        // 31 bytes
        cactus_payment::complete_task(&signer_of(SERVER), task_id(1), 10, 20, 300, vector[], filled(30, 9, 9));
    }

    // --------------------------------------------------------------- fail_task

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_fail_task_refunds(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        create(2000);
        cactus_payment::fail_task(&signer_of(SERVER), task_id(1), 3);
        let (_, _, _, _, status, payment) = cactus_payment::get_task(task_id(1));
        assert!(status == 2 && payment == 0, 1);
        assert!(balance(asset, SERVER) == FUNDS, 2);
        assert_orchestrator(ORCH, 2000, 0, 0, 0, 1, 0);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 17, location = cactus::cactus_payment)]
    fun test_fail_task_not_pending_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        create(2000);
        cactus_payment::fail_task(&signer_of(SERVER), task_id(1), 3);
        cactus_payment::fail_task(&signer_of(SERVER), task_id(1), 3);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_expire_task_refunds_its_server_after_the_deadline(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        timestamp::update_global_time_for_test_secs(1000);
        create(2000);
        timestamp::update_global_time_for_test_secs(1000 + 86400);
        // Anyone may: here the orchestrator itself.
        cactus_payment::expire_task(&signer_of(ORCH), task_id(1));
        let (_, _, _, _, status, payment) = cactus_payment::get_task(task_id(1));
        assert!(status == 2 && payment == 0, 1);
        assert!(balance(asset, SERVER) == FUNDS, 2);
        // Nobody's counters change.
        assert_orchestrator(ORCH, 2000, 0, 0, 0, 0, 0);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 25, location = cactus::cactus_payment)]
    fun test_expire_task_before_the_deadline_aborts(fx: &signer, admin: &signer) {
        ready(fx, admin);
        timestamp::update_global_time_for_test_secs(1000);
        create(2000);
        timestamp::update_global_time_for_test_secs(1000 + 86400 - 1);
        cactus_payment::expire_task(&signer_of(ORCH), task_id(1));
    }

    // ------------------------------------------------------------ server peers

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_set_server_peer_binds_a_server(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterA");
        assert!(cactus_payment::server_of_peer(b"12D3KooWRouterA") == SERVER, 1);
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterB");
        assert!(cactus_payment::server_of_peer(b"12D3KooWRouterB") == SERVER, 2);
        assert!(vector::length(&event::emitted_events<cactus_payment::ServerPeerSet>()) == 2, 3);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 13, location = cactus::cactus_payment)]
    fun test_server_peer_replaced_is_unbound(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterA");
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterB");
        cactus_payment::server_of_peer(b"12D3KooWRouterA");
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 13, location = cactus::cactus_payment)]
    fun test_revoked_server_peer_is_unbound(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterA");
        cactus_payment::revoke_server(admin, SERVER);
        cactus_payment::server_of_peer(b"12D3KooWRouterA");
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 1, location = cactus::cactus_payment)]
    fun test_set_server_peer_not_admin_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_peer(&signer_of(SERVER), SERVER, b"12D3KooWRouterA");
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 13, location = cactus::cactus_payment)]
    fun test_set_server_peer_unknown_server_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_peer(admin, SERVER2, b"12D3KooWRouterA");
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 29, location = cactus::cactus_payment)]
    fun test_set_server_peer_taken_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::authorize_server(admin, SERVER2);
        cactus_payment::set_server_peer(admin, SERVER, b"12D3KooWRouterA");
        cactus_payment::set_server_peer(admin, SERVER2, b"12D3KooWRouterA");
    }

    // ----------------------------------------------------------------- clients

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_deposit_and_withdraw_deposit(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        let client = signer_of(CLIENT);
        cactus_payment::deposit(&client, SERVER, 5000);
        assert_client(5000, MAX_U64);
        assert!(cactus_payment::deposits_held() == 5000, 1);
        assert!(balance(asset, CLIENT) == FUNDS - 5000, 2);
        assert!(cactus_payment::balance_of(CLIENT) == FUNDS - 5000, 5);
        cactus_payment::withdraw_deposit(&client, SERVER, 2000);
        assert_client(3000, MAX_U64);
        cactus_payment::withdraw_deposit(&client, SERVER, 3000);
        assert_client(0, MAX_U64);
        assert!(balance(asset, CLIENT) == FUNDS, 3);
        assert_totals(2000, 0);
        assert!(vector::length(&event::emitted_events<cactus_payment::Deposited>()) == 1, 4);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 13, location = cactus::cactus_payment)]
    fun test_deposit_at_unknown_server_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::deposit(&signer_of(CLIENT), SERVER2, 5000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 26, location = cactus::cactus_payment)]
    fun test_withdraw_deposit_above_tab_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::deposit(&signer_of(CLIENT), SERVER, 100);
        cactus_payment::withdraw_deposit(&signer_of(CLIENT), SERVER, 101);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_client_task_pays_orchestrator_and_fee_and_refunds_client(fx: &signer, admin: &signer) {
        let asset = client_ready(fx, admin);
        assert!(cactus_payment::get_server_fee(SERVER) == 1000, 1);
        create_for_client(2000);
        // 2000 for the payment and 200 for the fee left the tab.
        assert_client(7800, MAX_U64);
        assert_totals(2000, 2000);
        complete(task_id(1), vector[]);
        // Payment 800, fee 80: the rest comes back to the tab.
        let (_, _, _, _, status, payment) = cactus_payment::get_task(task_id(1));
        assert!(status == 1 && payment == 800, 2);
        assert_client(10000 - 800 - 80, MAX_U64);
        assert!(balance(asset, ORCH) == FUNDS - 2000 + 800, 3);
        assert!(balance(asset, SERVER) == FUNDS + 80, 4);
        assert!(balance(asset, CLIENT) == FUNDS - 10000, 5);
        assert_totals(2000, 0);
        assert!(cactus_payment::deposits_held() == 9120, 6);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 26, location = cactus::cactus_payment)]
    fun test_client_task_beyond_the_deposit_fails(fx: &signer, admin: &signer) {
        client_ready(fx, admin);
        // 10000 + its 10 % fee is more than the tab holds.
        create_for_client(10000);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 26, location = cactus::cactus_payment)]
    fun test_client_task_from_another_servers_deposit_fails(fx: &signer, admin: &signer) {
        client_ready(fx, admin);
        cactus_payment::authorize_server(admin, SERVER2);
        cactus_payment::create_client_task(&signer_of(SERVER2), CLIENT, task_id(1), ORCH, 10, 100);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 28, location = cactus::cactus_payment)]
    fun test_client_task_above_price_cap_fails(fx: &signer, admin: &signer) {
        client_ready(fx, admin);
        cactus_payment::set_max_price(&signer_of(CLIENT), 9);
        assert_client(10000, 9);
        create_for_client(100);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_failed_client_task_refunds_the_client(fx: &signer, admin: &signer) {
        let asset = client_ready(fx, admin);
        create_for_client(2000);
        cactus_payment::fail_task(&signer_of(SERVER), task_id(1), 3);
        assert_client(10000, MAX_U64);
        assert!(balance(asset, SERVER) == FUNDS, 1);
        assert_orchestrator(ORCH, 2000, 0, 0, 0, 1, 0);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_expired_client_task_refunds_the_client(fx: &signer, admin: &signer) {
        let asset = client_ready(fx, admin);
        timestamp::update_global_time_for_test_secs(1000);
        create_for_client(2000);
        timestamp::update_global_time_for_test_secs(1000 + 86400);
        cactus_payment::expire_task(&signer_of(CLIENT), task_id(1));
        assert_client(10000, MAX_U64);
        assert!(balance(asset, SERVER) == FUNDS, 1);
        assert_totals(2000, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_bind_client_peer(fx: &signer, admin: &signer) {
        ready(fx, admin);
        let (bound, _) = cactus_payment::client_of_peer(b"12D3KooWClient");
        assert!(!bound, 1);
        cactus_payment::bind_client_peer(&signer_of(CLIENT), b"12D3KooWClient");
        let (bound, client) = cactus_payment::client_of_peer(b"12D3KooWClient");
        assert!(bound && client == CLIENT, 2);
        // Binding it again is harmless.
        cactus_payment::bind_client_peer(&signer_of(CLIENT), b"12D3KooWClient");
        let (_, client) = cactus_payment::client_of_peer(b"12D3KooWClient");
        assert!(client == CLIENT, 3);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 29, location = cactus::cactus_payment)]
    fun test_bind_client_peer_of_another_client_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::bind_client_peer(&signer_of(CLIENT), b"12D3KooWClient");
        cactus_payment::bind_client_peer(&signer_of(SERVER2), b"12D3KooWClient");
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 5, location = cactus::cactus_payment)]
    fun test_bind_client_peer_bad_peer_id_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::bind_client_peer(&signer_of(CLIENT), vector[]);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 27, location = cactus::cactus_payment)]
    fun test_server_fee_above_bps_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_fee(&signer_of(SERVER), 10001);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 14, location = cactus::cactus_payment)]
    fun test_server_fee_unauthorized_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::set_server_fee(&signer_of(SERVER2), 100);
    }

    // ------------------------------------------------------------------- slash

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_slash_to_treasury_and_reporter(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        cactus_payment::slash(&signer_of(SERVER), ORCH, 5000, hash(7));
        // 2000 * 50 % = 1000: 10 % (100) to the reporting server, 900 to the treasury.
        assert_orchestrator(ORCH, 1000, 0, 0, 0, 0, 0);
        assert!(balance(asset, SERVER) == FUNDS + 100, 1);
        assert!(balance(asset, TREASURY) == 900, 2);
        assert_totals(1000, 0);
        assert!(vector::length(&event::emitted_events<cactus_payment::Slashed>()) == 1, 3);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_slash_takes_unbonding_after_stake(fx: &signer, admin: &signer) {
        let asset = setup(fx, admin);
        cactus_payment::authorize_server(admin, SERVER);
        register(ORCH, 3000);
        cactus_payment::request_unstake(&signer_of(ORCH), 2000);
        cactus_payment::slash(&signer_of(SERVER), ORCH, 5000, hash(7));
        // (1000 + 2000) * 50 % = 1500: all 1000 of stake, then 500 of unbonding.
        assert_orchestrator(ORCH, 0, 1500, UNBONDING_SECS, 0, 0, 0);
        assert!(balance(asset, SERVER) == FUNDS + 150, 1);
        assert!(balance(asset, TREASURY) == 1350, 2);
        assert_totals(1500, 0);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 21, location = cactus::cactus_payment)]
    fun test_slash_ratio_too_high_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::slash(&signer_of(SERVER), ORCH, MAX_SLASH_BPS + 1, hash(7));
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 14, location = cactus::cactus_payment)]
    fun test_slash_unauthorized_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::slash(&signer_of(SERVER2), ORCH, 1000, hash(7));
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 24, location = cactus::cactus_payment)]
    fun test_slash_with_used_evidence_aborts(fx: &signer, admin: &signer) {
        let asset = ready(fx, admin);
        let server = signer_of(SERVER);
        cactus_payment::slash(&server, ORCH, 1000, hash(7));
        // 10 % of 2000, then 10 % of 1800 on other evidence.
        assert_orchestrator(ORCH, 1800, 0, 0, 0, 0, 0);
        cactus_payment::slash(&server, ORCH, 1000, hash(8));
        assert_orchestrator(ORCH, 1620, 0, 0, 0, 0, 0);
        assert!(balance(asset, SERVER) == FUNDS + 20 + 18, 1);
        assert_totals(1620, 0);
        // The same evidence again slashes nothing.
        cactus_payment::slash(&server, ORCH, 1000, hash(7));
    }

    // ----------------------------------------------------------------- anchors

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_anchor_receipts(fx: &signer, admin: &signer) {
        ready(fx, admin);
        let server = signer_of(SERVER);
        timestamp::update_global_time_for_test_secs(1234);
        cactus_payment::anchor_receipts(&server, hash(7), 10, task_id(1), task_id(10));
        assert!(cactus_payment::anchor_count() == 1, 1);
        let (who, root, count, first, last, at) = cactus_payment::get_anchor(0);
        assert!(who == SERVER && root == hash(7) && count == 10, 2);
        assert!(first == task_id(1) && last == task_id(10) && at == 1234, 3);

        timestamp::update_global_time_for_test_secs(2000);
        cactus_payment::anchor_receipts(&server, hash(8), 5, task_id(11), task_id(15));
        assert!(cactus_payment::anchor_count() == 2, 4);
        let (_, root, count, _, _, at) = cactus_payment::get_anchor(1);
        assert!(root == hash(8) && count == 5 && at == 2000, 5);
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 5, location = cactus::cactus_payment)]
    fun test_anchor_receipts_bad_root_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        // 16 bytes instead of 32
        cactus_payment::anchor_receipts(&signer_of(SERVER), task_id(7), 10, task_id(1), task_id(10));
    }

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(abort_code = 14, location = cactus::cactus_payment)]
    fun test_anchor_unauthorized_fails(fx: &signer, admin: &signer) {
        ready(fx, admin);
        cactus_payment::anchor_receipts(&signer_of(SERVER2), hash(7), 10, task_id(1), task_id(10));
    }

    // --------------------------------------------------------------- invariant

    #[test(fx = @aptos_framework, admin = @cactus)]
    fun test_invariant_escrow_plus_stake_equals_balance(fx: &signer, admin: &signer) {
        setup(fx, admin);
        let orch = signer_of(ORCH);
        let server = signer_of(SERVER);
        assert_invariant();
        register(ORCH, 3000);
        assert_invariant();
        register(ORCH2, 1000);
        assert_invariant();
        cactus_payment::add_stake(&orch, 777);
        assert_invariant();
        cactus_payment::authorize_server(admin, SERVER);
        assert_invariant();
        cactus_payment::create_task(&server, task_id(1), ORCH, 7, 1000);
        assert_invariant();
        cactus_payment::create_task(&server, task_id(2), ORCH, 3, 333);
        assert_invariant();
        cactus_payment::create_task(&server, task_id(3), ORCH2, 11, 5000);
        assert_invariant();
        cactus_payment::complete_task(&server, task_id(1), 13, 17, 999, vector[ORCH2], hash(1));
        assert_invariant();
        cactus_payment::fail_task(&server, task_id(2), 4);
        assert_invariant();
        cactus_payment::request_unstake(&orch, 1777);
        assert_invariant();
        cactus_payment::slash(&server, ORCH, 3333, hash(2));
        assert_invariant();
        cactus_payment::complete_task(&server, task_id(3), 1, 1, 1, vector[], hash(3));
        assert_invariant();
        timestamp::update_global_time_for_test_secs(UNBONDING_SECS);
        cactus_payment::withdraw(&orch);
        assert_invariant();
        cactus_payment::anchor_receipts(&server, hash(4), 3, task_id(1), task_id(3));
        assert_invariant();
        let client = signer_of(CLIENT);
        cactus_payment::set_server_fee(&server, 1234);
        cactus_payment::deposit(&client, SERVER, 7777);
        assert_invariant();
        cactus_payment::create_client_task(&server, CLIENT, task_id(4), ORCH2, 5, 999);
        assert_invariant();
        cactus_payment::create_client_task(&server, CLIENT, task_id(5), ORCH2, 3, 1001);
        assert_invariant();
        cactus_payment::complete_task(&server, task_id(4), 9, 21, 77, vector[], hash(5));
        assert_invariant();
        cactus_payment::fail_task(&server, task_id(5), 1);
        assert_invariant();
        cactus_payment::withdraw_deposit(&client, SERVER, 1000);
        assert_invariant();
        let (stake_held, escrow_held, _) = cactus_payment::totals();
        assert!(escrow_held == 0 && stake_held > 0, 1);
    }

    // -------------------------------------------------------------- arithmetic

    #[test(fx = @aptos_framework, admin = @cactus)]
    #[expected_failure(arithmetic_error, location = cactus::cactus_payment)]
    fun test_stake_that_would_overflow_the_vault_aborts(fx: &signer, admin: &signer) {
        let (asset, mint_ref) = start_minting(fx);
        init_default(admin, asset);
        primary_fungible_store::mint(&mint_ref, WHALE, MAX_U64);
        primary_fungible_store::mint(&mint_ref, WHALE2, MAX_U64);
        register(WHALE, MAX_U64 - MIN_STAKE);
        assert_totals(MAX_U64 - MIN_STAKE, 0);
        // One unit more than the vault can hold: the sum in `pay_in` aborts.
        register(WHALE2, MIN_STAKE + 1);
    }

    // --------------------------------------------------------- not initialized

    #[test]
    #[expected_failure(abort_code = 3, location = cactus::cactus_payment)]
    fun test_not_initialized_fails() {
        register(ORCH, 2000);
    }
}
