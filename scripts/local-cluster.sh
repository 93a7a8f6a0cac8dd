# Sourced by the scripts that test the local cluster from outside
# (status-page-test.sh, openai-test.sh): install an apt package, build and
# start examples/local_cluster.rs with --serve, wait for its API, stop it.
# The caller defines `fail MESSAGE`, WORK (a scratch dir), START_TIMEOUT and
# STOP_TIMEOUT (seconds).

CLUSTER=""

# Installs Debian package $1 as root, or through sudo without a password.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || fail "$1 is missing and cannot be installed without root (apt-get install $1)"
    sudo=(sudo -n)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$1" >/dev/null
}

# Stops the cluster: Ctrl-C (the example shuts its nodes down in order),
# then SIGKILL after STOP_TIMEOUT.
cluster_stop() {
  if [ -n "$CLUSTER" ] && kill -0 "$CLUSTER" 2>/dev/null; then
    kill -INT "$CLUSTER" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$CLUSTER" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
    kill -KILL "$CLUSTER" 2>/dev/null || true
  fi
}

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

# Builds the example with profile $1 (release or dev), starts it on the demo
# model (CACTUS_TEST_MODEL, or fetched), waits until it serves, and sets API
# to its HTTP address (without /v1) and API_KEY to the key the example made
# for its funded client. Its log is $WORK/cluster.log.
cluster_start() {
  local model bin
  model="${CACTUS_TEST_MODEL:-$(scripts/fetch-model.sh)}"
  if [ "$1" = dev ]; then
    cargo build --locked -p cactus-examples --example local_cluster
    bin="${CARGO_TARGET_DIR:-target}/debug/examples/local_cluster"
  else
    cargo build --release --locked -p cactus-examples --example local_cluster
    bin="${CARGO_TARGET_DIR:-target}/release/examples/local_cluster"
  fi
  "$bin" "$model" "Name a colour." --serve >"$WORK/cluster.log" 2>&1 &
  CLUSTER=$!
  # The example prints this once its first task is answered and it serves.
  wait_for "$START_TIMEOUT" "serving cluster" grep -q "serving until Ctrl-C" "$WORK/cluster.log"
  API="$(sed -n 's|^OpenAI API *\(http://[^ ]*\)/v1$|\1|p' "$WORK/cluster.log" | head -n 1)"
  [ -n "$API" ] || fail "the cluster printed no API address"
  API_KEY="$(sed -n 's|^API key *\(sk-cactus-[0-9a-f]*\)$|\1|p' "$WORK/cluster.log" | head -n 1)"
  [ -n "$API_KEY" ] || fail "the cluster printed no API key"
}
