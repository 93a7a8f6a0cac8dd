#!/usr/bin/env bash
# The router's OpenAI-compatible API as OpenAI's own Python client sees it:
# installs the official `openai` package from PyPI into a throwaway venv,
# starts the README's local cluster (a router and two orchestrators serving
# the demo model, examples/local_cluster.rs with --serve) and runs
# scripts/openai_client_test.py against its /v1: chat and legacy completions,
# streamed and not, n=2, logprobs, a json_schema response_format, usage that
# adds up, Cactus's receipt links, and the error statuses at the HTTP level.
#
#   bash scripts/openai-test.sh
#
# Installs python3-venv with apt-get when venvs cannot be made (as root, or
# through sudo without a password). Builds the example in release (as CI
# does); OPENAI_TEST_PROFILE=dev uses the dev profile instead. Uses
# CACTUS_TEST_MODEL, or fetches the demo model. Prints a PASS or FAIL line per
# check and "openai-test: passed" on success; on failure, the tail of the
# cluster's log, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

START_TIMEOUT=300   # seconds for the cluster to load the model and answer its first task
PIP_TIMEOUT=600     # seconds for pip to install the client
RUN_TIMEOUT=900     # seconds for every check together
STOP_TIMEOUT=60     # seconds for the cluster to shut down after Ctrl-C

fail() {
  echo "openai-test: FAILED: $*" >&2
  if [ -n "${WORK:-}" ] && [ -s "$WORK/cluster.log" ]; then
    echo "--- cluster log (tail) ---" >&2
    tail -n 40 "$WORK/cluster.log" >&2 || true
  fi
  exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/openai-test.XXXXXX")"
CLUSTER=""
cleanup() {
  if [ -n "$CLUSTER" ] && kill -0 "$CLUSTER" 2>/dev/null; then
    # The example shuts its nodes down in order on Ctrl-C.
    kill -INT "$CLUSTER" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$CLUSTER" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
    kill -KILL "$CLUSTER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ------------------------------------------------------------ the client ---
if ! python3 -m venv "$WORK/venv" >/dev/null 2>&1; then
  echo "openai-test: installing python3-venv"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    fail "python3 cannot make a venv and python3-venv cannot be installed without root"
  fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$WORK/venv"
  python3 -m venv "$WORK/venv" || fail "python3 -m venv still fails after installing python3-venv"
fi
timeout "$PIP_TIMEOUT" "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check openai \
  || fail "pip could not install openai from PyPI"
echo "openai-test: openai $("$WORK/venv/bin/python" -c 'import openai; print(openai.__version__)')"

# -------------------------------------------------------------- cluster ---
MODEL="${CACTUS_TEST_MODEL:-$(scripts/fetch-model.sh)}"
if [ "${OPENAI_TEST_PROFILE:-release}" = dev ]; then
  cargo build --locked -p cactus-examples --example local_cluster
  BIN="${CARGO_TARGET_DIR:-target}/debug/examples/local_cluster"
else
  cargo build --release --locked -p cactus-examples --example local_cluster
  BIN="${CARGO_TARGET_DIR:-target}/release/examples/local_cluster"
fi

# Polls until "$@" succeeds, failing after $1 seconds or if the cluster died.
wait_for() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    kill -0 "$CLUSTER" 2>/dev/null || fail "the cluster exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what after ${timeout}s"
    sleep 0.5
  done
}

"$BIN" "$MODEL" "Name a colour." --serve >"$WORK/cluster.log" 2>&1 &
CLUSTER=$!
# The example prints this once its first task is answered and it serves.
wait_for "$START_TIMEOUT" "serving cluster" grep -q "serving until Ctrl-C" "$WORK/cluster.log"
API="$(sed -n 's|^OpenAI API *\(http://[^ ]*\)/v1$|\1|p' "$WORK/cluster.log" | head -n 1)"
[ -n "$API" ] || fail "the cluster printed no API address"
echo "openai-test: cluster serving at $API"

# --------------------------------------------------------------- checks ---
timeout "$RUN_TIMEOUT" "$WORK/venv/bin/python" scripts/openai_client_test.py "$API" \
  || fail "some checks failed (FAIL lines above)"
echo "openai-test: passed"
