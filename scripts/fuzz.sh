#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS_PER_TARGET seconds each
# (default 600) and fails on the first crash.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs nightly Rust and cargo-fuzz (installed here when missing). Without
# nightly it says so and falls back to the stable replay of the corpora
# (fuzz/tests/corpus.rs), which runs the same target bodies on the committed
# corpora and on seeded mutations of them.
#
# The committed corpora (fuzz/corpus/<target>/) are read, never written:
# what libFuzzer finds goes to $FUZZ_TARGET_DIR/corpus/<target>/. Crashes go
# to fuzz/artifacts/<target>/ (ignored by git). Set FUZZ_MERGE=1 to
# minimise new finds into the committed corpora after the run.
#
# Sanitizer: none by default (`-s none`): the workspace denies unsafe code,
# and an address-sanitised build of the whole node (libp2p, axum, redb) is
# several times slower to build and run. FUZZ_SANITIZER=address overrides.
set -euo pipefail

secs="${1:-600}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wire_decode stream_frames gossip_validate http_request config_file)
fi
target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/fuzz}"
sanitizer="${FUZZ_SANITIZER:-none}"

stable_replay() {
    echo "fuzz: $1; replaying the corpora on stable instead (no coverage-guided fuzzing)"
    local iters=$((secs * 200))
    CACTUS_FUZZ_ITERS="$iters" CARGO_TARGET_DIR="$target_dir" \
        cargo test --manifest-path fuzz/Cargo.toml --release --no-default-features \
        --test corpus
    echo "fuzz: stable replay of ${targets[*]}: $iters mutated inputs per target, 0 crashes"
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        stable_replay "nightly Rust is not available"
        exit 0
    fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked; then
        stable_replay "cargo-fuzz could not be installed"
        exit 0
    fi
fi

failed=0
for t in "${targets[@]}"; do
    work="$target_dir/corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    log="$target_dir/$t.log"
    echo "fuzz: $t for ${secs}s (sanitizer: $sanitizer)"
    if cargo +nightly fuzz run -s "$sanitizer" --target-dir "$target_dir" "$t" \
        "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)"
        per_sec="$(grep -Eo 'exec/s: [0-9]+' "$log" | tail -1 || true)"
        cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)"
        echo "fuzz: $t: ${runs:-runs unknown}s, ${per_sec:-exec/s unknown}, ${cov:-cov unknown}, 0 crashes"
    else
        echo "fuzz: $t FAILED (see $log and fuzz/artifacts/$t/):"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 || tail -30 "$log"
        failed=1
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        cargo +nightly fuzz run -s "$sanitizer" --target-dir "$target_dir" "$t" \
            "fuzz/corpus/$t" "$work" -- -merge=1 >/dev/null 2>&1 || true
    fi
done
exit "$failed"
