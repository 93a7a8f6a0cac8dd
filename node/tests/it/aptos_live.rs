//! The Aptos backend against a live node with `cactus_payment` deployed and
//! initialized (cargo feature `aptos`). Runs only when all of these are set,
//! and otherwise says it is skipped:
//!
//! - `CACTUS_APTOS_URL`: the fullnode REST URL (`http://127.0.0.1:8080/v1`
//!   for `aptos node run-localnet`);
//! - `CACTUS_APTOS_KEY_FILE`: the signer's ed25519 private key in hex (mode 0600);
//! - `CACTUS_APTOS_CONTRACT`: the address the module is published at.
//!
//! It reads the config, totals and the signer's server status. If the signer
//! is an authorized server it anchors a random batch and reads it back;
//! otherwise it checks that anchoring aborts with `E_NOT_AUTHORIZED_SERVER`.
//! Either way it sends one transaction, which costs the account some gas.

use cactus_node::chain::ChainBackend;
use cactus_node::chain::aptos::{AptosChain, AptosConfig};
use cactus_node::chain::{ChainError, abi};
use cactus_protocol::contract::{Abort, Address, Op};
use std::path::PathBuf;

const VARS: [&str; 3] = [
    "CACTUS_APTOS_URL",
    "CACTUS_APTOS_KEY_FILE",
    "CACTUS_APTOS_CONTRACT",
];

/// The settings from the environment, or why the test is skipped.
fn settings() -> Result<AptosConfig, String> {
    let missing: Vec<&str> = VARS
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!("{} not set", missing.join(", ")));
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let contract = var("CACTUS_APTOS_CONTRACT");
    Ok(AptosConfig {
        url: var("CACTUS_APTOS_URL"),
        key_file: PathBuf::from(var("CACTUS_APTOS_KEY_FILE")),
        contract: parse_address(&contract).unwrap_or_else(|| {
            panic!(
                "CACTUS_APTOS_CONTRACT={contract:?} is not an address (0x + up to 64 hex digits)"
            )
        }),
    })
}

fn parse_address(text: &str) -> Option<Address> {
    let digits = text.trim().strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(format!("{digits:0>64}"), &mut out).ok()?;
    Some(Address(out))
}

#[tokio::test]
async fn live_node_views_and_anchor() {
    let config = match settings() {
        Ok(c) => c,
        Err(why) => {
            println!(
                "aptos_live: skipped: {why} (set {} to run it)",
                VARS.join(", ")
            );
            return;
        }
    };
    let contract = config.contract;
    let chain = AptosChain::connect(config).expect("connecting to the Aptos node");
    let account = chain.account();
    println!("aptos_live: account {account}, contract {contract}");

    let ledger_config = chain
        .config()
        .await
        .expect("get_config")
        .expect("cactus_payment is published but not initialized at CACTUS_APTOS_CONTRACT");
    assert!(ledger_config.prompt_weight + ledger_config.output_weight > 0);
    assert!(ledger_config.max_slash_bps <= 10_000 && ledger_config.reporter_bps <= 10_000);
    let (stake_held, escrow_held, vault) = chain.totals().await.expect("totals");
    assert_eq!(stake_held + escrow_held, vault, "the module's invariant");
    let unknown = Address(rand::random());
    assert_eq!(
        chain.orchestrator(unknown).await.expect("get_orchestrator"),
        None
    );
    assert!(!chain.is_server(unknown).await.expect("is_server"));
    assert_eq!(
        chain
            .anchor(u64::MAX)
            .await
            .expect("get_anchor past the end"),
        None
    );

    let root: [u8; 32] = rand::random();
    let first: [u8; 16] = rand::random();
    let last: [u8; 16] = rand::random();
    let anchor = Op::AnchorReceipts {
        merkle_root: root.to_vec(),
        count: 3,
        first_task: first.to_vec(),
        last_task: last.to_vec(),
    };
    assert_eq!(
        abi::entry_call(&anchor, None).unwrap().name(),
        "anchor_receipts"
    );

    if !chain.is_server(account).await.expect("is_server") {
        println!(
            "aptos_live: {account} is not an authorized server: checking that anchoring is refused"
        );
        let err = chain
            .submit(anchor)
            .await
            .expect_err("anchoring by a non-server");
        assert_eq!(err, ChainError::Abort(Abort::NotAuthorizedServer));
        return;
    }

    let before = chain.anchor_count().await.expect("anchor_count");
    chain.submit(anchor).await.expect("anchor_receipts");
    let after = chain.anchor_count().await.expect("anchor_count");
    assert!(
        after > before,
        "anchor_count did not grow: {before} -> {after}"
    );
    // Other servers may anchor concurrently: look for ours among the new ones.
    let mut found = None;
    for index in before..after {
        let a = chain
            .anchor(index)
            .await
            .expect("get_anchor")
            .expect("an anchor below anchor_count");
        if a.root.0 == root {
            found = Some(a);
        }
    }
    let a = found.expect("the anchored root among the new anchors");
    assert_eq!(a.server, account);
    assert_eq!((a.count, a.first_task.0, a.last_task.0), (3, first, last));
    assert!(a.anchored_at > 0);
    println!(
        "aptos_live: anchored batch {} at {}",
        hex::encode(root),
        a.anchored_at
    );
}
