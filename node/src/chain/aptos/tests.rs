use super::encode::*;
use super::key::*;
use super::views::*;
use super::*;
use crate::chain::abi::tests::{config, every_chain_op};
use serde_json::json;

const CONTRACT: Address = Address([0xca; 32]);

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
    for op in &every_chain_op() {
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
    let prefixed = load_key(&write_key(dir.path(), &format!("  0x{hex_key}  \n"), 0o400)).unwrap();
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
    let used = "Move abort in 0xcafe::cactus_payment: E_EVIDENCE_USED(0x18): A slash names evidence an earlier slash already used";
    assert_eq!(abort_in_module(used, &short), Some(Abort::EvidenceUsed));
    // Embedded in a longer message (a view's 400 error).
    let wrapped = format!("Invalid input: {status}");
    assert_eq!(
        abort_in_module(&wrapped, &short),
        Some(Abort::NotRegistered)
    );
    // Not ours: another module, another address, an unknown code, other failures.
    let other_module = "Move abort in 0x1::fungible_asset: EINSUFFICIENT_BALANCE(0x10004): balance";
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
fn view_results_parse_into_contract_types() {
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
    assert!(matches!(&e, ChainError::Aptos(a) if matches!(**a, AptosError::BadView { .. })));
    assert!(e.to_string().contains("totals"));
}

/// A fake fullnode on loopback: enough of the REST API for a view, a
/// missing orchestrator and a transaction that aborts in the module.
mod fake_node {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The transaction that aborts (anything but `add_stake`).
    pub const TX_HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
    /// The transaction that succeeds (an `add_stake`).
    pub const OK_HASH: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

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

    fn answer(head: &str, body: &[u8], contract: &Address, peer: &[u8]) -> (&'static str, Value) {
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
                "server_of_peer" if args[0] == json!(format!("0x{}", hex::encode(peer))) => {
                    ("200 OK", json!([format!("0x{}", "0d".repeat(32))]))
                }
                "server_of_peer" => abort("E_SERVER_NOT_FOUND", 13),
                "get_client" => ("200 OK", json!(["123", "9"])),
                "get_server_fee" => ("200 OK", json!(["100"])),
                "balance_of" => ("200 OK", json!(["4242"])),
                "client_of_peer" if args[0] == json!(format!("0x{}", hex::encode(peer))) => {
                    ("200 OK", json!([true, format!("0x{}", "0e".repeat(32))]))
                }
                "client_of_peer" => ("200 OK", json!([false, "0x0"])),
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

    // The server a PeerId is bound to, if any; a client's deposit and cap;
    // a server's fee.
    assert_eq!(
        chain.server_of_peer(peer).await.unwrap(),
        Some(Address([0x0d; 32]))
    );
    assert_eq!(chain.server_of_peer(stranger).await.unwrap(), None);
    assert_eq!(chain.client(registered, CONTRACT).await.unwrap(), (123, 9));
    assert_eq!(chain.server_fee(CONTRACT).await.unwrap(), 100);
    assert_eq!(chain.balance(registered).await.unwrap(), 4242);
    assert_eq!(
        chain.client_of_peer(peer).await.unwrap(),
        Some(Address([0x0e; 32]))
    );
    assert_eq!(chain.client_of_peer(stranger).await.unwrap(), None);

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
    let payload = aptos_sdk::aptos_bcs::to_bytes(&TransactionPayload::from(payload(&op))).unwrap();
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
    assert!(matches!(&err, ChainError::Aptos(a) if matches!(**a, AptosError::NoCall(_))));
    assert!(err.to_string().contains("Mint"));
    let err = chain.submit(Op::Initialize(config)).await.unwrap_err();
    assert!(matches!(&err, ChainError::Aptos(a) if matches!(**a, AptosError::NoCall(_))));
    assert!(err.to_string().contains("asset"));
}
