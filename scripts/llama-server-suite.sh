#!/usr/bin/env bash
# llama.cpp's own server test suite (tools/server/tests, pytest), run twice on
# the demo model: against llama-server, then against the router of the
# README's local cluster (examples/local_cluster.rs with --serve), both in
# the suite's external mode (DEBUG_EXTERNAL=1 PORT=<port>: the tests talk to
# 127.0.0.1:<port> instead of starting a server). Prints a Markdown table:
# each test, its result on llama-server and on the router, and the first line
# of the router's failure. COMPATIBILITY.md holds one run's table.
#
#   bash scripts/llama-server-suite.sh [test file under unit/ ...]
#
# Default test file: unit/test_chat_completion.py. The suite and llama-server
# come from the llama.cpp tree that scripts/llama-tools.sh builds (so both are
# the same version); its requirements are installed from PyPI into a
# throwaway venv. The suite's OpenAI endpoints are sent to their /v1 paths on
# both servers (scripts/llama_suite.py says why). Many tests expect the
# suite's own tiny model or llama-server flags: they fail on both, and the
# table records it. Not part of scripts/test.sh: it takes a while and most
# of its verdicts are about the model, not the API.
#   SUITE_OUT  also write the table to this file
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

START_TIMEOUT=300   # seconds for a server to load the model
PIP_TIMEOUT=900     # seconds for pip to install the suite's requirements
RUN_TIMEOUT=1800    # seconds for one pass of the suite
STOP_TIMEOUT=60     # seconds for a server to shut down

FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=(unit/test_chat_completion.py)

fail() {
  echo "llama-server-suite: FAILED: $*" >&2
  for log in server.log cluster.log; do
    if [ -n "${WORK:-}" ] && [ -s "$WORK/$log" ]; then
      echo "--- $log (tail) ---" >&2
      tail -n 30 "$WORK/$log" >&2 || true
    fi
  done
  exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-suite.XXXXXX")"
SERVER=""
# Stops the server started last: SIGINT, then SIGKILL after STOP_TIMEOUT.
stop_server() {
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
    kill -INT "$SERVER" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$SERVER" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  SERVER=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# Polls until "$@" succeeds, failing after $1 seconds or if the server died.
wait_for() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    kill -0 "$SERVER" 2>/dev/null || fail "the server exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what after ${timeout}s"
    sleep 0.5
  done
}

# ------------------------------------------------- suite, server, model ---
BIN="$(scripts/llama-tools.sh)"
TESTS="$(cd "$BIN/../../vendor/llama.cpp/tools/server/tests" && pwd)" \
  || fail "no llama.cpp server tests next to $BIN"
MODEL="${CACTUS_TEST_MODEL:-$(scripts/fetch-model.sh)}"
python3 -m venv "$WORK/venv" || fail "python3 cannot make a venv (apt-get install python3-venv)"
timeout "$PIP_TIMEOUT" "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check \
  -r "$TESTS/requirements.txt" || fail "pip could not install $TESTS/requirements.txt"
cargo build --release --locked -p cactus-examples --example local_cluster
CLUSTER_BIN="${CARGO_TARGET_DIR:-target}/release/examples/local_cluster"

# Runs the suite against 127.0.0.1:$1, writing a JUnit report to $2.
run_suite() {
  local port="$1" report="$2"
  (
    cd "$TESTS"
    DEBUG_EXTERNAL=1 PORT="$port" PYTHONPATH="$TESTS:$ROOT/scripts" \
      timeout "$RUN_TIMEOUT" "$WORK/venv/bin/python" -m pytest -p llama_suite -p no:cacheprovider \
      -q -rN --junitxml="$report" "${FILES[@]}" >"$report.log" 2>&1
  ) || true
  [ -s "$report" ] || fail "pytest wrote no report ($(tail -n 5 "$report.log"))"
  tail -n 1 "$report.log"
}

# ---------------------------------------------------------- llama-server ---
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The flags of the suite's default preset (tinyllama2 in utils.py): a
# 512-token context over 2 slots, batches of 32, 64 tokens by default.
"$BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$PORT" --ctx-size 512 --parallel 2 \
  --batch-size 32 --n-predict 64 --seed 42 --temp 0.8 >"$WORK/server.log" 2>&1 &
SERVER=$!
wait_for "$START_TIMEOUT" "healthy llama-server" curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"
echo "llama-server-suite: llama-server on port $PORT: $(run_suite "$PORT" "$WORK/llama.xml")"
stop_server

# ---------------------------------------------------------------- router ---
"$CLUSTER_BIN" "$MODEL" "Name a colour." --serve >"$WORK/cluster.log" 2>&1 &
SERVER=$!
wait_for "$START_TIMEOUT" "serving cluster" grep -q "serving until Ctrl-C" "$WORK/cluster.log"
PORT="$(sed -n 's|^OpenAI API *http://127\.0\.0\.1:\([0-9]*\)/v1$|\1|p' "$WORK/cluster.log" | head -n 1)"
[ -n "$PORT" ] || fail "the cluster printed no API address on 127.0.0.1"
# The router charges the example's funded client, by the key it printed.
CACTUS_API_KEY="$(sed -n 's|^API key *\(sk-cactus-[0-9a-f]*\)$|\1|p' "$WORK/cluster.log" | head -n 1)"
[ -n "$CACTUS_API_KEY" ] || fail "the cluster printed no API key"
export CACTUS_API_KEY
echo "llama-server-suite: router on port $PORT: $(run_suite "$PORT" "$WORK/router.xml")"
stop_server

# ----------------------------------------------------------------- table ---
echo
echo "llama-server $("$BIN/llama-server" --version 2>&1 | head -n 1), tests: ${FILES[*]}, model: $(basename "$MODEL")"
python3 scripts/llama_suite.py table "$WORK/llama.xml" "$WORK/router.xml" | tee "${SUITE_OUT:-/dev/null}"
