#!/usr/bin/env bash
# Property-based test of the admin API against its own OpenAPI document: schemathesis
# (from PyPI) generates valid and invalid requests for every operation and checks that
# none gets a 5xx and every answer matches the documented schema and content type.
# Runs the real binary on loopback; call it inside a loopback-only namespace (test.sh does).
# No example database: without one Hypothesis keeps no pareto front, whose shrinker crashed
# with an IndexError on DELETE /admin/v1/users/{name} (a Hypothesis bug, 6.165 and 6.170
# alike), and every run starts from the seed alone.
# Usage: scripts/schemathesis.sh [max-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CALLBOX_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/callbox/schemathesis-venv}"
ST="$VENV/bin/schemathesis"
[ -x "$ST" ] || { echo "error: schemathesis is missing at $ST: run scripts/install-schemathesis.sh" >&2; exit 1; }

BIN=target/debug/callbox
[ -x "$BIN" ] || cargo build --quiet -p callbox
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

CALLBOX_LOG=warn "$BIN" serve --state-dir "$WORK/state" \
  --set 'turn.listen=["127.0.0.1:0"]' --set 'turn.relay_ip="127.0.0.1"' \
  --set 'turn.relay_port_min=20000' --set 'turn.relay_port_max=30000' \
  --set 'signal.listen="127.0.0.1:0"' --set 'admin.listen="127.0.0.1:18081"' \
  --set 'admin.auth_failures_per_minute=1000000' >"$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do [ -s "$WORK/state/admin-token" ] && break; sleep 0.1; done
TOKEN=$(cat "$WORK/state/admin-token")
BASE=http://127.0.0.1:18081
python3 - "$BASE/admin/v1/openapi.json" "$TOKEN" "$WORK/openapi.json" <<'PY'
import sys, time, urllib.request
url, token, out = sys.argv[1:]
for _ in range(50):
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        open(out, "wb").write(urllib.request.urlopen(req, timeout=5).read())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the admin API did not answer")
PY

"$ST" run "$WORK/openapi.json" --url "$BASE" -H "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance \
  --max-examples 25 --max-time "${1:-90}" --seed 1 --no-color --warnings off \
  --generation-database none \
  --report junit --report-dir target/schemathesis
kill -0 "$PID" || { echo "error: callbox died during the run:" >&2; cat "$WORK/log" >&2; exit 1; }
