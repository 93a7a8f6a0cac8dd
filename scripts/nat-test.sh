#!/usr/bin/env bash
# Cactus behind a real NAT: builds a small internet in network namespaces (a
# public segment, a bootstrap/relay, a router, a client, and two home networks
# each behind its own masquerading NAT), checks the NAT behaves like a home
# router, then runs Cactus nodes in it and checks tasks reach orchestrators
# that sit behind those NATs. See scripts/README-nat.md for the topology.
#
#   sudo bash scripts/nat-test.sh     # as root; binaries built beforehand
#
# Needs: ${CARGO_TARGET_DIR:-target}/release/{cactus-node,cactus-bootstrap}
# (this script never builds) and CACTUS_TEST_MODEL (a GGUF file). Installs
# iproute2 / iptables from apt when missing. Every address used lives inside
# namespaces this script creates (198.51.100.0/24 is a documentation range).
# Prints "nat-test: 1 passed, 0 failed" on success; on failure prints
# "nat-test: 0 passed, 1 failed", the tail of each node log, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------- settings ---
# A per-run tag prefixes every namespace, so concurrent runs never clash. All
# interfaces are created directly inside these namespaces (none in the host's
# namespace), so their short fixed names cannot clash either.
TAG="cx$$"
BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
NODE_BIN="$BIN_DIR/cactus-node"
BOOT_BIN="$BIN_DIR/cactus-bootstrap"
JOIN_TIMEOUT=120        # seconds for both orchestrators to join the router
INFER_TIMEOUT=150       # seconds for one `cactus-node infer`
MIN_INFERS=4            # tasks always sent
MAX_INFERS=8            # tasks sent at most, until both orchestrators served
PROMPT="The capital of France is"
# The checks below read info-level log lines; NAT_TEST_RUST_LOG can add more.
# NAT_TEST_KEEP=1 keeps the logs and data dirs after a successful run too.
export RUST_LOG="${NAT_TEST_RUST_LOG:-info}"

BOOT_IP=198.51.100.10
RTR_IP=198.51.100.20
CLI_IP=198.51.100.30
NATA_WAN=198.51.100.101
NATB_WAN=198.51.100.102

# ------------------------------------------------------------------- state ---
NAMESPACES=()           # created namespaces, deleted by cleanup
declare -A NODE_PID=()  # node name -> pid (the pid of `ip netns exec`, which
                        # execs the node, so it is the node's own pid)
HELPER_PIDS=()          # short-lived helpers (self-check listeners, infer)
WORK=""
PASSED=0

say() { echo "nat-test: $*"; }
die() { echo "nat-test: FAIL: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$TAG-$ns" "$@"; }

# ----------------------------------------------------------------- cleanup ---
# Runs on every exit (success, failure, INT, TERM): report, stop every process
# we started, then delete every namespace (which deletes their veths and the
# bridge with them).
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if ((rc != 0 || PASSED != 1)) && [[ -n $WORK && -d $WORK ]]; then
    local f
    for f in "$WORK"/*.log; do
      [[ -e $f ]] || continue
      echo "----- $(basename "$f") (last 40 lines) -----"
      tail -n 40 "$f"
    done
  fi
  # Ask nicely first (nodes shut down on SIGTERM), then insist.
  local pid name ns deadline
  for name in "${!NODE_PID[@]}"; do kill -TERM "${NODE_PID[$name]}" 2>/dev/null; done
  for pid in "${HELPER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  deadline=$((SECONDS + 5))
  for name in "${!NODE_PID[@]}"; do
    pid=${NODE_PID[$name]}
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  # Anything else still inside our namespaces (e.g. a child of a helper) was
  # started by this run too: `ip netns pids` names exactly those processes.
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  wait 2>/dev/null
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if ((rc == 0 && PASSED == 1)); then
    if [[ -n ${NAT_TEST_KEEP:-} ]]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
    say "1 passed, 0 failed"
    exit 0
  fi
  [[ -n $WORK ]] && echo "nat-test: logs kept in $WORK" >&2
  say "0 passed, 1 failed"
  exit 1
}
trap cleanup EXIT
trap 'echo "nat-test: interrupted" >&2; exit 130' INT
trap 'echo "nat-test: terminated" >&2; exit 143' TERM

# ----------------------------------------------------------- preconditions ---
[[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces)"
[[ -x $NODE_BIN && -x $BOOT_BIN ]] ||
  die "missing $NODE_BIN or $BOOT_BIN: build them first (cargo build --release); this script does not build"
[[ -n ${CACTUS_TEST_MODEL:-} ]] || die "CACTUS_TEST_MODEL is not set (path to a GGUF model)"
[[ -f ${CACTUS_TEST_MODEL%%:*} ]] || die "CACTUS_TEST_MODEL=$CACTUS_TEST_MODEL: no such file"

# Tools: ip/ss (iproute2), iptables, python3 (self-check listeners and JSON).
# apt-get update only when the install fails for want of fresh lists.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
    die "could not install ${missing[*]}"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cactus-nat.XXXXXX")
start=$SECONDS

# ---------------------------------------------------------------- topology ---
mkns() {
  ip netns add "$TAG-$1"
  NAMESPACES+=("$TAG-$1")
  ip -n "$TAG-$1" link set lo up   # nodes also talk to themselves on 127.0.0.1
}

# A host on the public segment: veth "eth0" in the host, its peer (named after
# the host) enslaved to the bridge in the "pub" namespace.
public_leg() { # ns ifname-in-ns address/24
  ip -n "$TAG-$1" link add "$2" type veth peer name "$1" netns "$TAG-pub"
  ip -n "$TAG-$1" addr add "$3/24" dev "$2"
  ip -n "$TAG-$1" link set "$2" up
  ip -n "$TAG-pub" link set "$1" master br0 up
}

# A home network: NAT namespace (WAN leg on the bridge, LAN leg to the home
# host) masquerading outbound and dropping whatever was not asked for, like a
# consumer router; the home host has a default route to it and nothing else.
home() { # nat-ns lan-ns wan-address lan-prefix (e.g. 192.168.1)
  local nat=$1 lan=$2 wan=$3 net=$4
  mkns "$nat"
  mkns "$lan"
  public_leg "$nat" wan "$wan"
  ip -n "$TAG-$nat" link add lan type veth peer name eth0 netns "$TAG-$lan"
  ip -n "$TAG-$nat" addr add "$net.1/24" dev lan
  ip -n "$TAG-$nat" link set lan up
  ip -n "$TAG-$lan" addr add "$net.2/24" dev eth0
  ip -n "$TAG-$lan" link set eth0 up
  ip -n "$TAG-$lan" route add default via "$net.1"
  # /proc/sys/net is per namespace: this turns forwarding on in $nat only.
  nsx "$nat" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  nsx "$nat" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
  nsx "$nat" iptables -A FORWARD -i wan -m state --state RELATED,ESTABLISHED -j ACCEPT
  nsx "$nat" iptables -A FORWARD -i wan -j DROP
}

say "building the topology (namespaces $TAG-*)"
mkns pub
ip -n "$TAG-pub" link add br0 type bridge
ip -n "$TAG-pub" link set br0 up
for h in boot:$BOOT_IP rtr:$RTR_IP cli:$CLI_IP; do
  mkns "${h%%:*}"
  public_leg "${h%%:*}" eth0 "${h#*:}"
done
home natA lanA "$NATA_WAN" 192.168.1
home natB lanB "$NATB_WAN" 192.168.2

# -------------------------------------------------------- NAT self-checks ---
# Plain TCP, no Cactus: prove the NAT is a NAT before blaming Cactus for
# anything. A python listener accepts one connection and prints the peer's
# address; bash's /dev/tcp is the client.
LISTENER='
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(float(sys.argv[3]))
try:
    c, peer = s.accept()
    print(peer[0], flush=True)
except socket.timeout:
    pass
'
listen_once() { # ns bind-address port seconds outfile
  nsx "$1" python3 -c "$LISTENER" "$2" "$3" "$4" >"$5" 2>&1 &
  HELPER_PIDS+=("$!")
  local pid=$! deadline=$((SECONDS + 10))
  # Wait (bounded) until the socket is listening, so a refused connection
  # means the network refused it, not that we were early.
  until [[ -n $(nsx "$1" ss -Hltn "sport = :$3") ]]; do
    kill -0 "$pid" 2>/dev/null || die "self-check listener in $1 exited: $(cat "$5")"
    ((SECONDS < deadline)) || die "self-check listener in $1 did not start"
    sleep 0.1
  done
}
connects() { # ns host port: does a TCP connect succeed within 3 seconds?
  # shellcheck disable=SC2016 # $0/$1 are expanded by the inner bash
  timeout 3 ip netns exec "$TAG-$1" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" 2>/dev/null
}

say "self-checking the NAT"
# 1. lanA reaches boot, and boot sees it as natA's WAN address.
listen_once boot "$BOOT_IP" 7001 10 "$WORK/check-seen.out"
connects lanA "$BOOT_IP" 7001 || die "self-check: lanA cannot reach boot ($BOOT_IP:7001)"
wait "${HELPER_PIDS[-1]}" || true
seen=$(<"$WORK/check-seen.out")
[[ $seen == "$NATA_WAN" ]] ||
  die "self-check: boot saw lanA's connection from '$seen', expected natA's WAN $NATA_WAN (no masquerade?)"
say "  ok: lanA reaches boot, seen as $seen"

# 2. Nothing on the public side can connect in: neither to the NAT's WAN
#    address (no port forward) nor, given a route, to the LAN address itself
#    (the firewall drops unsolicited inbound, it is not just missing routes).
listen_once lanA 0.0.0.0 7002 12 "$WORK/check-inbound.out"
! connects boot "$NATA_WAN" 7002 || die "self-check: boot connected to lanA through natA's WAN address"
ip -n "$TAG-boot" route add 192.168.1.0/24 via "$NATA_WAN"
inbound=0
connects boot 192.168.1.2 7002 && inbound=1
ip -n "$TAG-boot" route del 192.168.1.0/24 via "$NATA_WAN"
((inbound == 0)) || die "self-check: boot connected into lanA (192.168.1.2) through natA"
[[ ! -s $WORK/check-inbound.out ]] || die "self-check: lanA accepted an inbound connection from $(<"$WORK/check-inbound.out")"
say "  ok: boot cannot connect into lanA"

# 3. The two home networks cannot reach each other directly.
listen_once lanB 0.0.0.0 7003 8 "$WORK/check-lan.out"
! connects lanA 192.168.2.2 7003 || die "self-check: lanA reached lanB's LAN address directly"
! connects lanA "$NATB_WAN" 7003 || die "self-check: lanA reached lanB through natB's WAN address"
say "  ok: lanA cannot reach lanB"

# Reap the listeners (each exits by its own timeout; no need to wait them out).
for pid in "${HELPER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait "${HELPER_PIDS[@]}" 2>/dev/null || true
HELPER_PIDS=()

# ------------------------------------------------------------------- nodes ---
start_node() { # name ns command...
  local name=$1 ns=$2; shift 2
  nsx "$ns" "$@" >"$WORK/$name.log" 2>&1 &
  NODE_PID[$name]=$!
}
# Fails fast when a node died instead of waiting out a deadline.
check_alive() {
  local name
  for name in "${!NODE_PID[@]}"; do
    kill -0 "${NODE_PID[$name]}" 2>/dev/null || die "node '$name' exited early (log: $WORK/$name.log)"
  done
}
# Polls a condition with short sleeps until an overall deadline; returns 1
# when the deadline passes.
wait_until() { # seconds command...
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    check_alive
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}
# Counts the lines of a log that hold every given string (one awk, no pipe, so
# no SIGPIPE surprises under pipefail).
count_lines() { # file string...
  local file=$1; shift
  awk -v pats="$(printf '%s\n' "$@")" '
    BEGIN { n = split(pats, p, "\n") }
    { ok = 1; for (i = 1; i <= n; i++) if (!index($0, p[i])) { ok = 0; break }; if (ok) c++ }
    END { print c + 0 }' "$file"
}

ORCH_A=$("$NODE_BIN" id --data-dir "$WORK/orchA")
ORCH_B=$("$NODE_BIN" id --data-dir "$WORK/orchB")
# The orchestrators follow the router's ledger: they serve the routers its
# embedded chain authorizes (they join through the bootstrap node, so they
# name it with --ledger).
RTR_ID=$("$NODE_BIN" id --data-dir "$WORK/rtr")
say "orchestrators: A=$ORCH_A (behind natA), B=$ORCH_B (behind natB)"

start_node boot boot "$BOOT_BIN" --listen "/ip4/$BOOT_IP/tcp/4001" \
  --listen "/ip4/$BOOT_IP/udp/4001/quic-v1" --data-dir "$WORK/boot"
boot_pattern="listening address=/ip4/$BOOT_IP/tcp/4001/p2p/"
boot_listening() { [[ $(count_lines "$WORK/boot.log" "$boot_pattern") -gt 0 ]]; }
wait_until 30 boot_listening || die "the bootstrap node logged no '$boot_pattern...' line in 30 s"
BOOT_ADDR=$(grep -m1 -o "${boot_pattern//./\\.}[[:alnum:]]*" "$WORK/boot.log")
BOOT_ADDR=${BOOT_ADDR#listening address=}
say "bootstrap: $BOOT_ADDR"

start_node rtr rtr "$NODE_BIN" --role router --dev-faucet --listen "/ip4/$RTR_IP/tcp/4002" \
  --bootstrap "$BOOT_ADDR" --data-dir "$WORK/rtr"
# --target-peers 1: an orchestrator keeps only its bootstrap connection and
# does not dial the router itself, as a home node with many peers might not.
# The router then reaches it the only way a node behind a NAT can be reached:
# through its relay reservation; DCUtR may then upgrade that to a direct path.
for o in A B; do
  start_node "orch$o" "lan$o" "$NODE_BIN" --listen /ip4/0.0.0.0/tcp/0 \
    --listen /ip4/0.0.0.0/udp/0/quic-v1 --bootstrap "$BOOT_ADDR" --target-peers 1 \
    --ledger "$RTR_ID" --model "$CACTUS_TEST_MODEL" --threads 1 --slots 1 --data-dir "$WORK/orch$o"
done

# Both orchestrators must have joined the router (each by its own PeerId, so
# one orchestrator joining twice does not count as two).
both_joined() {
  [[ $(count_lines "$WORK/rtr.log" "orchestrator joined" "orchestrator=$ORCH_A") -gt 0 &&
    $(count_lines "$WORK/rtr.log" "orchestrator joined" "orchestrator=$ORCH_B") -gt 0 ]]
}
wait_until "$JOIN_TIMEOUT" both_joined ||
  die "after ${JOIN_TIMEOUT} s the router saw A join $(count_lines "$WORK/rtr.log" "orchestrator joined" "orchestrator=$ORCH_A") time(s), B $(count_lines "$WORK/rtr.log" "orchestrator joined" "orchestrator=$ORCH_B") time(s); both must join"
say "both orchestrators joined the router after $((SECONDS - start)) s"

# ------------------------------------------------------------------- tasks ---
PARSE='
import json, sys
v = json.load(open(sys.argv[1]))
if not isinstance(v.get("text"), str) or not v["text"].strip():
    sys.exit("empty text")
print(v["orchestrator"])
'
# The router's pick is deterministic (most free slots, then lowest round trip,
# then PeerId), so one-at-a-time tasks on idle orchestrators all land on the
# same one. Tasks are therefore sent in pairs at once to orchestrators with one
# slot each (--slots 1): while one orchestrator's only slot is busy, the
# router hands the other task to the other one.
# Clients pay from a deposit at the router: two client identities (one per
# task of a pair) each fund theirs from the router's dev faucet, as a user
# would with `account faucet` and `account deposit`.
RTR_ADDR="/ip4/$RTR_IP/tcp/4002/p2p/$RTR_ID"
for c in 1 2; do
  for step in faucet "deposit 500000"; do
    # shellcheck disable=SC2086 # $step is a subcommand and its argument
    ip netns exec "$TAG-cli" "$NODE_BIN" account --router "$RTR_ADDR" --data-dir "$WORK/cli$c" \
      $step >>"$WORK/cli-account.log" 2>&1 ||
      die "client $c: account $step failed: $(tail -n 5 "$WORK/cli-account.log")"
  done
done
launch_infer() { # n
  timeout "$INFER_TIMEOUT" ip netns exec "$TAG-cli" "$NODE_BIN" infer --bootstrap "$BOOT_ADDR" \
    --data-dir "$WORK/cli$((($1 - 1) % 2 + 1))" --prompt "$PROMPT" --max-tokens 16 --json --timeout $((INFER_TIMEOUT - 10)) \
    >"$WORK/infer-$1.json" 2>"$WORK/infer-$1.log" &
  HELPER_PIDS+=("$!")
}
served_a=0 served_b=0 sent=0
while ((sent < MAX_INFERS)) && ((sent < MIN_INFERS || served_a == 0 || served_b == 0)); do
  HELPER_PIDS=()
  launch_infer $((sent + 1))
  launch_infer $((sent + 2))
  # Background + wait (not a foreground command), so INT/TERM reach our trap
  # at once; timeout bounds each task either way.
  for i in 0 1; do
    n=$((sent + 1 + i))
    rc=0
    wait "${HELPER_PIDS[$i]}" || rc=$?
    ((rc == 0)) || die "infer #$n exited $rc: $(tail -n 5 "$WORK/infer-$n.log")"
    orch=$(python3 -c "$PARSE" "$WORK/infer-$n.json") ||
      die "infer #$n printed no usable JSON: $(head -c 500 "$WORK/infer-$n.json")"
    case $orch in
      "$ORCH_A") served_a=$((served_a + 1)); who=A ;;
      "$ORCH_B") served_b=$((served_b + 1)); who=B ;;
      *) die "infer #$n was served by an unknown orchestrator $orch" ;;
    esac
    say "infer #$n: served by orchestrator $who: $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["text"]))' "$WORK/infer-$n.json")"
  done
  HELPER_PIDS=()
  sent=$((sent + 2))
done
((served_a > 0)) || die "orchestrator A ($ORCH_A, behind natA) never served a task in $sent tries"
((served_b > 0)) || die "orchestrator B ($ORCH_B, behind natB) never served a task in $sent tries"
say "tasks served: A=$served_a, B=$served_b"

# ------------------------------------------------- report (never a failure) ---
# Whether DCUtR turned relayed connections into direct ones, across all nodes.
read -r punched failed < <(awk '/hole punch succeeded/ { s++ } /hole punch failed/ { f++ }
  END { print s + 0, f + 0 }' "$WORK"/boot.log "$WORK"/rtr.log "$WORK"/orchA.log "$WORK"/orchB.log)
say "dcutr direct upgrades: $punched succeeded, $failed failed"
# How the router reached each orchestrator for the tasks it finished. The
# field may be printed quoted (connection="direct") or not.
for o in A B; do
  id_var="ORCH_$o"
  d=$(awk -v id="orchestrator=${!id_var}" 'index($0, "task done") && index($0, id) && /connection="?direct/' "$WORK/rtr.log" | wc -l)
  r=$(awk -v id="orchestrator=${!id_var}" 'index($0, "task done") && index($0, id) && /connection="?relayed/' "$WORK/rtr.log" | wc -l)
  say "orchestrator $o: router served $d task(s) over connection=direct, $r over connection=relayed"
done
# `cactus-node doctor` from behind natA: it must see that it is behind a NAT
# and reachable through the relay, and it tries a hole punch to orchestrator B
# (behind natB) through B's relay address: NAT to NAT, the hard case.
nsx lanA timeout 90 "$NODE_BIN" doctor --bootstrap "$BOOT_ADDR" --listen /ip4/0.0.0.0/tcp/0 \
  --peer "$BOOT_ADDR/p2p-circuit/p2p/$ORCH_B" --wait 30 >"$WORK/doctor.out" 2>"$WORK/doctor.log" ||
  die "cactus-node doctor failed: $(tail -n 5 "$WORK/doctor.log")"
grep -q "relay reservation: via" "$WORK/doctor.out" ||
  die "doctor behind natA holds no relay reservation: $(cat "$WORK/doctor.out")"
grep -q "behind a NAT or firewall and is reachable through a relay" "$WORK/doctor.out" ||
  die "doctor behind natA did not diagnose the NAT: $(cat "$WORK/doctor.out")"
say "doctor behind natA: behind a NAT, reachable through the relay"
say "doctor: $(grep -E '^(hole punch|connection) to' "$WORK/doctor.out" || echo 'no connection to orchestrator B')"
say "run took $((SECONDS - start)) s"
PASSED=1
