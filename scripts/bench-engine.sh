#!/usr/bin/env bash
# The inference server's benchmarks next to llama.cpp's own tools (see
# node/benches/engine.rs): builds llama-bench and llama-server once (cached
# outside the repository), fetches the demo model, then runs the bench.
#   BENCH_THREADS (2), BENCH_TOKENS (64), BENCH_RUNS (3), BENCH_MODEL
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${BENCH_MODEL:-$(scripts/fetch-model.sh)}"
TOOLS="$(scripts/llama-tools.sh)"
LLAMA_TOOLS="$TOOLS" BENCH_MODEL="$MODEL" exec cargo bench -p cactus-node --bench engine
