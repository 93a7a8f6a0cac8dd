#!/usr/bin/env bash
# The router's status page as a person sees it, in a real browser: starts the
# README's local cluster (a router and two orchestrators serving the demo
# model, examples/local_cluster.rs with --serve), sends two tasks through its
# OpenAI-compatible API with curl, loads http://<api>/ in headless Chromium
# (--dump-dom: the DOM after the page has loaded) and checks what is on it:
# both orchestrators with the model's name, a row per task with a link to its
# receipt (followed, it returns that task's receipt), and the throughput chart
# with a bar above zero. Also checks /metrics counted the tasks.
#
#   bash scripts/status-page-test.sh
#
# Installs Debian's chromium with apt-get when it is missing (as root, or
# through sudo without a password). Builds the example in release (as CI
# does); STATUS_PAGE_PROFILE=dev uses the dev profile instead. Uses
# CACTUS_TEST_MODEL, or fetches the demo model. Prints
# "status-page-test: passed" on success; on failure, what was missing, the
# tail of the cluster's log and the page, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

START_TIMEOUT=300   # seconds for the cluster to load the model and answer its first task
TASK_TIMEOUT=120    # seconds for one task through the API
STOP_TIMEOUT=60     # seconds for the cluster to shut down after Ctrl-C

fail() {
  echo "status-page-test: FAILED: $*" >&2
  if [ -n "${WORK:-}" ]; then
    echo "--- cluster log (tail) ---" >&2
    tail -n 40 "$WORK/cluster.log" >&2 || true
    if [ -s "$WORK/page.html" ]; then
      echo "--- page (head) ---" >&2
      head -c 4000 "$WORK/page.html" >&2 || true
      echo >&2
    fi
  fi
  exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/status-page-test.XXXXXX")"
# shellcheck source=scripts/local-cluster.sh
. scripts/local-cluster.sh
trap 'cluster_stop; rm -rf "$WORK"' EXIT

# ------------------------------------------------------------- chromium ---
if ! command -v chromium >/dev/null 2>&1; then
  echo "status-page-test: installing chromium"
  apt_install chromium
fi

# -------------------------------------------------------------- cluster ---
cluster_start "${STATUS_PAGE_PROFILE:-release}"
echo "status-page-test: cluster serving at $API"

# ---------------------------------------------------------------- tasks ---
TASK_IDS=()
for prompt in "Say hello." "Count to three."; do
  body="$(python3 -c 'import json,sys; print(json.dumps({"messages":[{"role":"user","content":sys.argv[1]}],"max_tokens":16}))' "$prompt")"
  answer="$(curl -sS --fail-with-body --max-time "$TASK_TIMEOUT" "$API/v1/chat/completions" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -d "$body")" \
    || fail "task '$prompt' failed: $answer"
  id="$(printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cactus"][0]["task_id"])')" \
    || fail "no task id in the answer: $answer"
  TASK_IDS+=("$id")
done
MODEL_NAME="$(curl -sS --fail --max-time 10 "$API/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')" \
  || fail "no model in /v1/models"

# ---------------------------------------------------------------- page ---
# Both orchestrators are on the page once the router has admitted them,
# which it had before the cluster served; the DOM is read once.
chromium --headless --no-sandbox --disable-gpu --dump-dom "$API/" >"$WORK/page.html" 2>"$WORK/chromium.log" \
  || fail "chromium could not load $API/ ($(tail -n 3 "$WORK/chromium.log"))"

python3 - "$WORK/page.html" "$MODEL_NAME" "${TASK_IDS[@]}" <<'EOF' || fail "the page is not what a person should see"
import sys
from html.parser import HTMLParser

path, model, ids = sys.argv[1], sys.argv[2], sys.argv[3:]

class Page(HTMLParser):
    """Collects the rows of the two tables, the receipt links and the chart."""
    def __init__(self):
        super().__init__()
        self.rows = {"orchestrator": [], "task": []}
        self.row = None
        self.links = []
        self.svg = False
        self.bars = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") in self.rows:
            self.row = (a["class"], [])
        if tag == "a" and self.row and a.get("href", "").startswith("/v1/receipts/"):
            self.links.append(a["href"])
        if tag == "svg" and a.get("id") == "throughput":
            self.svg = True
        if tag == "rect" and self.svg:
            self.bars.append(float(a.get("height", "0")))
    def handle_endtag(self, tag):
        if tag == "tr" and self.row:
            kind, text = self.row
            self.rows[kind].append(" ".join(text))
            self.row = None
    def handle_data(self, data):
        if self.row and data.strip():
            self.row[1].append(data.strip())

p = Page()
p.feed(open(path, encoding="utf-8").read())
problems = []
if len(p.rows["orchestrator"]) != 2:
    problems.append(f"{len(p.rows['orchestrator'])} orchestrator rows, expected 2")
for row in p.rows["orchestrator"]:
    if model not in row:
        problems.append(f"orchestrator row without the model {model!r}: {row!r}")
for i in ids:
    if f"/v1/receipts/{i}" not in p.links:
        problems.append(f"no row linking to the receipt of task {i}")
if len(p.rows["task"]) < len(ids):
    problems.append(f"{len(p.rows['task'])} task rows, expected at least {len(ids)}")
if not p.svg or not p.bars:
    problems.append("no throughput chart")
elif max(p.bars) <= 0:
    problems.append("the throughput chart has no bar above zero")
for problem in problems:
    print("status-page-test:", problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# A receipt link, followed, gives that task's receipt.
receipt="$(curl -sS --fail --max-time 10 "$API/v1/receipts/${TASK_IDS[0]}")" || fail "the receipt link does not resolve"
printf '%s' "$receipt" | python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(r["task_id"]!=sys.argv[1])' "${TASK_IDS[0]}" \
  || fail "the receipt link gives another task's receipt: $receipt"

# The metrics counted the tasks (the example's own first one too).
metrics="$(curl -sS --fail --max-time 10 "$API/metrics")" || fail "no /metrics"
done_tasks="$(printf '%s\n' "$metrics" | sed -n 's/^cactus_tasks_total{outcome="done"} \([0-9]*\).*/\1/p')"
[ "${done_tasks:-0}" -ge 3 ] || fail "cactus_tasks_total{outcome=\"done\"} is ${done_tasks:-missing}, expected at least 3"

echo "status-page-test: passed"
