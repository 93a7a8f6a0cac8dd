#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-bench, llama-server) for side-by-side
# benchmarks and prints the directory that holds them. The source is the
# llama.cpp tree vendored in PyPI's llama-cpp-python source distribution, the
# build is cached outside the repository (never committed) and reused.
#   LLAMA_TOOLS_DIR  where to cache it (default: ~/.cache/cactus/llama-tools)
#   LLAMA_TOOLS_JOBS parallel compile jobs (default: nproc)
set -euo pipefail
VERSION=0.3.36
ROOT="${LLAMA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cactus/llama-tools}"
OUT="$ROOT/llama-cpp-python-$VERSION"
# Native SIMD, as Cactus's own llama.cpp is built, but no AMX: GCC's
# -march=native turns AMX on where the CPU lists it, and on a VM that lists it
# without granting it llama-server dies of SIGILL in its first batched matmul.
# Explicit -mno-* flags win over -march=native whatever their order. The
# flags name the build directory, so changing them rebuilds.
FLAGS=""
case "$(uname -m)" in
  x86_64) FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
BUILD="$OUT/build-$(printf '%s' "$FLAGS" | cksum | cut -d' ' -f1)"
BIN="$BUILD/bin"
if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-server" ]; then
  echo "$BIN"
  exit 0
fi
bash "$(dirname "$0")/setup.sh"
PIP="${PIP:-}"
if [ -z "$PIP" ]; then
  if command -v pip3 >/dev/null 2>&1; then PIP=pip3
  elif command -v pip >/dev/null 2>&1; then PIP=pip
  else PIP="python3 -m pip"; fi
fi
mkdir -p "$ROOT"
if [ ! -d "$OUT/vendor/llama.cpp" ]; then
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  echo "fetching llama-cpp-python $VERSION's source from PyPI" >&2
  # Reading the sdist's metadata needs its build backend; without build
  # isolation pip does not build cmake and ninja from source first.
  python3 -c 'import scikit_build_core' 2>/dev/null || $PIP install --quiet scikit-build-core >&2
  $PIP download --quiet --no-deps --no-binary :all: --no-build-isolation \
    -d "$TMP" "llama-cpp-python==$VERSION" >&2
  tar -xzf "$TMP"/llama_cpp_python-*.tar.gz -C "$TMP"
  mv "$TMP"/llama_cpp_python-"$VERSION" "$OUT"
fi
cd "$OUT/vendor/llama.cpp"
echo "building llama-bench and llama-server (10-20 minutes on 2 cores)" >&2
cmake -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" >&2
cmake --build "$BUILD" -j"${LLAMA_TOOLS_JOBS:-$(nproc)}" --target llama-bench llama-server >&2
echo "$BIN"
