#!/usr/bin/env bash
# Load test: a router (with its API) and two orchestrators as separate
# cactus-node processes on the real demo model, a client funded from the dev
# faucet with an API key, then LOAD_REQUESTS (500) concurrent requests, half
# streamed (scripts/load_test.py). Each must be served or refused with 429 /
# 503 and Retry-After, no process may die, peak RSS is printed, and the
# cluster must serve an ordinary request afterwards.
#
#   scripts/load-test.sh                      # 500 requests, 16 tokens each
#   LOAD_REQUESTS=100 scripts/load-test.sh    # the short version CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${LOAD_REQUESTS:-500}"
TOKENS="${LOAD_TOKENS:-16}"
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
MODEL="${CACTUS_TEST_MODEL:-$(scripts/fetch-model.sh)}"
cargo build --release --locked -p cactus-node --bin cactus-node
BIN="${CARGO_TARGET_DIR:-target}/release/cactus-node"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "load-test: $*" >&2
  tail -n 20 "$WORK"/*.log >&2 || true
  exit 1
}
# Waits up to $1 seconds for a line matching $3 in log $2; prints it.
wait_line() {
  local deadline=$((SECONDS + $1))
  until grep -m1 -- "$3" "$2" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no '$3' in $2 after $1 s"
    sleep 0.2
  done
}

export RUST_LOG=info
"$BIN" --role router --dev-faucet --data-dir "$WORK/router" \
  --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >"$WORK/router.log" 2>&1 &
PIDS+=($!)
ROUTER_PID=$!
ADDR="$(wait_line 60 "$WORK/router.log" "listening" | sed -n 's/.*address=\([^ ]*\).*/\1/p')"
API="$(wait_line 60 "$WORK/router.log" "API listening" | sed -n 's|.*url=\(http://[^ ]*\)/v1.*|\1|p')"
[ -n "$ADDR" ] && [ -n "$API" ] || fail "the router printed no address"
ORCH_PIDS=()
for i in 1 2; do
  "$BIN" --data-dir "$WORK/orch$i" --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$ADDR" \
    --model "$MODEL:$SHA256" --threads 1 --slots 4 >"$WORK/orch$i.log" 2>&1 &
  PIDS+=($!)
  ORCH_PIDS+=($!)
done
wait_line 180 "$WORK/router.log" "known=2" >/dev/null

# A client as a user makes one: identity, faucet, deposit, API key.
CLIENT="$WORK/client"
for action in "faucet" "deposit 500000"; do
  # shellcheck disable=SC2086
  "$BIN" account --router "$ADDR" --data-dir "$CLIENT" $action >/dev/null \
    || fail "account $action failed"
done
ACCOUNT="$("$BIN" id --data-dir "$CLIENT")"
KEY="$("$BIN" keys --data-dir "$WORK/router" create --account "$ACCOUNT" --name load | grep -o 'sk-cactus-[0-9a-f]*' | head -n1)"
[ -n "$KEY" ] || fail "no API key"

python3 scripts/load_test.py --api "$API" --key "$KEY" --requests "$REQUESTS" --tokens "$TOKENS" \
  --pid "router=$ROUTER_PID" --pid "orchestrator-1=${ORCH_PIDS[0]}" --pid "orchestrator-2=${ORCH_PIDS[1]}" \
  || fail "the load test failed"
echo "load-test: passed"
