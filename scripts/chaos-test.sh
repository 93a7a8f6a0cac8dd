#!/usr/bin/env bash
# Chaos test: a seeded run of CHAOS_TASKS (300) tasks on three stub
# orchestrators and CHAOS_REAL_TASKS (24) on two real-model ones, as
# separate processes, while orchestrators and the router are killed with
# SIGKILL and restarted, connections are cut (ss -K) and packets delayed and
# dropped (tc netem, or tbf shaping and iptables random loss where the
# kernel has no netem), in a network namespace the test makes for itself.
# Every task must end with exactly one checked answer or one clear error;
# none lost, none paid twice, no escrow left pending; the ledger, receipt
# log and reputation records must reopen and agree. Prints the counts.
#
#   scripts/chaos-test.sh                  # seed 1, as CI runs it
#   CHAOS_SEEDS="1 2 3 4 5" scripts/chaos-test.sh
#   CHAOS_KEEP=/tmp/chaos scripts/chaos-test.sh   # keep the nodes' logs
#
# Needs root for the namespace; without it only the process faults run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CACTUS_TEST_MODEL="${CACTUS_TEST_MODEL:-$(scripts/fetch-model.sh)}"
# Tools for the network faults (ip, ss, tc: iproute2; iptables), from apt
# when missing; apt-get update only when the install fails for want of lists.
if [ "$(id -u)" -eq 0 ]; then
  missing=()
  command -v ip >/dev/null && command -v ss >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
  command -v iptables >/dev/null || missing+=(iptables)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "chaos-test: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null ||
      { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
      { echo "chaos-test: could not install ${missing[*]}" >&2; exit 1; }
  fi
fi
for seed in ${CHAOS_SEEDS:-1}; do
  echo "== chaos, seed $seed"
  CHAOS_SEED="$seed" cargo test --release --locked -p cactus-node --test it -- \
    --ignored --exact chaos::chaos --nocapture
done
