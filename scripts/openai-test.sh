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
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
trap 'cluster_stop; rm -rf "$WORK"' EXIT

# ------------------------------------------------------------ the client ---
if ! python3 -m venv "$WORK/venv" >/dev/null 2>&1; then
  echo "openai-test: installing python3-venv"
  apt_install python3-venv
  rm -rf "$WORK/venv"
  python3 -m venv "$WORK/venv" || fail "python3 -m venv still fails after installing python3-venv"
fi
timeout "$PIP_TIMEOUT" "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check openai \
  || fail "pip could not install openai from PyPI"
echo "openai-test: openai $("$WORK/venv/bin/python" -c 'import openai; print(openai.__version__)')"

# -------------------------------------------------------------- cluster ---
cluster_start "${OPENAI_TEST_PROFILE:-release}"
echo "openai-test: cluster serving at $API"

# --------------------------------------------------------------- checks ---
timeout "$RUN_TIMEOUT" "$WORK/venv/bin/python" scripts/openai_client_test.py "$API" "$API_KEY" \
  || fail "some checks failed (FAIL lines above)"
echo "openai-test: passed"
