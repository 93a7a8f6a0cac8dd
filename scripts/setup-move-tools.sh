#!/usr/bin/env bash
# Installs what scripts/move_ast.py needs to parse Move without an Aptos CLI:
# py-tree-sitter and Aptos's tree-sitter grammar for Move (PyPI's
# `tree-sitter-move`), into the current python3. Does nothing when both
# already import.
#
# `tree-sitter-move` 0.0.2 ships only a source distribution, and that sdist
# contains a stale macOS `_binding.abi3.so` which would shadow the extension
# built here; so it is downloaded, that file is deleted, and the directory is
# built and installed from source (needs a C compiler).
set -euo pipefail

TREE_SITTER_VERSION="0.25.2"
TREE_SITTER_MOVE_VERSION="0.0.2"
PY="${PYTHON:-python3}"

if "$PY" -c "import tree_sitter, tree_sitter_move; tree_sitter_move.language()" >/dev/null 2>&1; then
  exit 0
fi

if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  echo "setup-move-tools: a C compiler (cc/gcc) is needed to build tree-sitter-move" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/pip.log"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1

pip_quiet() {
  if ! "$PY" -m pip "$@" >"$log" 2>&1; then
    echo "setup-move-tools: pip $* failed:" >&2
    cat "$log" >&2
    exit 1
  fi
}

pip_quiet install -q "tree-sitter==${TREE_SITTER_VERSION}"
pip_quiet download -q --no-deps --no-binary :all: -d "$tmp" \
  "tree-sitter-move==${TREE_SITTER_MOVE_VERSION}"
tar -xzf "$tmp/tree_sitter_move-${TREE_SITTER_MOVE_VERSION}.tar.gz" -C "$tmp"
src="$tmp/tree_sitter_move-${TREE_SITTER_MOVE_VERSION}"
rm -f "$src/bindings/python/tree_sitter_move/_binding.abi3.so"
pip_quiet install -q --no-deps --no-cache-dir "$src"

if ! "$PY" -c "import tree_sitter, tree_sitter_move; tree_sitter_move.language()" >"$log" 2>&1; then
  echo "setup-move-tools: installed, but tree_sitter_move does not import:" >&2
  cat "$log" >&2
  exit 1
fi
