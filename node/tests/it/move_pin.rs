//! Pins `cactus_node::chain::abi` to the Move source: every function the
//! Aptos backend calls must exist in `contracts/sources/cactus_payment.move`
//! with the same kind (entry or view), the same parameter types in the same
//! order and, for views, the same return type. The source is parsed by
//! `scripts/move_ast.py` (tree-sitter; no Aptos CLI needed).

use cactus_node::chain::abi::{self, Function};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::Command;

const SETUP: &str =
    "run scripts/setup-move-tools.sh (installs tree-sitter and tree-sitter-move for python3)";

#[derive(Debug, Deserialize)]
struct Signature {
    name: String,
    kind: String,
    params: Vec<Param>,
    returns: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Param {
    #[serde(rename = "type")]
    ty: Option<String>,
}

impl Signature {
    fn types(&self) -> Vec<&str> {
        self.params
            .iter()
            .map(|p| p.ty.as_deref().unwrap_or("?"))
            .collect()
    }

    fn show(&self) -> String {
        show(
            &self.kind,
            &self.name,
            &self.types(),
            self.returns.as_deref(),
        )
    }
}

fn show(kind: &str, name: &str, params: &[&str], returns: Option<&str>) -> String {
    let ret = returns.map(|r| format!(": {r}")).unwrap_or_default();
    format!("{kind} {name}({}){ret}", params.join(", "))
}

fn show_abi(f: &Function) -> String {
    show(f.kind.as_str(), f.name, f.params, f.returns)
}

fn move_signatures() -> Vec<Signature> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = root.join("contracts/sources/cactus_payment.move");
    assert!(source.exists(), "{} is missing", source.display());
    let output = Command::new("python3")
        .arg(root.join("scripts/move_ast.py"))
        .arg("signatures")
        .arg(&source)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install python3, then {SETUP}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("setup-move-tools") || stderr.contains("No module named") {
            panic!(
                "scripts/move_ast.py cannot load its Move parser ({}): {SETUP}",
                stderr.trim()
            );
        }
        panic!(
            "scripts/move_ast.py signatures failed ({}): {}",
            output.status,
            stderr.trim()
        );
    }
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "scripts/move_ast.py printed no signature JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn abi_table_matches_the_move_source() {
    let signatures = move_signatures();
    assert!(
        !signatures.is_empty(),
        "no entry or view function found in cactus_payment.move"
    );
    let mut mismatches = Vec::new();
    for f in abi::FUNCTIONS {
        let Some(sig) = signatures.iter().find(|s| s.name == f.name) else {
            mismatches.push(format!(
                "{}: not an entry or #[view] function of cactus_payment.move; abi.rs calls `{}`",
                f.name,
                show_abi(f)
            ));
            continue;
        };
        let same_returns = match f.kind {
            abi::Kind::Entry => true,
            abi::Kind::View => sig.returns.as_deref() == f.returns,
        };
        if sig.kind != f.kind.as_str() || sig.types() != f.params || !same_returns {
            mismatches.push(format!(
                "{}: the Move source has `{}`, abi.rs has `{}`",
                f.name,
                sig.show(),
                show_abi(f)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "node/src/chain/abi.rs disagrees with contracts/sources/cactus_payment.move:\n  {}",
        mismatches.join("\n  ")
    );
}

/// Every `const E_*: u64 = N;` of the Move module is the abort the Rust side
/// knows by that name and number, and the Rust side knows no other.
#[test]
fn abort_codes_match_the_move_source() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let source =
        std::fs::read_to_string(root.join("contracts/sources/cactus_payment.move")).unwrap();
    let mut in_move = Vec::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix("const E_") else {
            continue;
        };
        let (name, value) = rest.split_once(": u64 = ").expect("const E_X: u64 = N;");
        let code: u64 = value.trim_end_matches(';').parse().unwrap();
        in_move.push((format!("E_{name}"), code));
    }
    assert_eq!(
        in_move.len(),
        abi::ABORTS.len(),
        "the Move module has {} abort codes, abi::ABORTS {}",
        in_move.len(),
        abi::ABORTS.len()
    );
    for (name, code) in in_move {
        let rust = abi::abort_from_code(code)
            .unwrap_or_else(|| panic!("{name} = {code} has no Abort on the Rust side"));
        assert!(
            rust.to_string().starts_with(&format!("{name} ({code})")),
            "{name} = {code} in Move, but the Rust abort with that code reads {rust}"
        );
    }
}
