#!/usr/bin/env bash
# Signaling benchmark: callbox's signal role and the bare baseline relay under the same
# load, one after the other, on loopback. Writes bench-results/signal-<date>.md.
#
#   scripts/bench-signal.sh [CONNECTIONS] [SECONDS] [RATES...]
#       defaults: 10000 10, rates 50000 100000 0 (messages/s offered; 0 = closed loop)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-10000}
secs=${2:-10}
shift 2 2>/dev/null || shift $#
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(50000 100000 0)
cargo build --release -q -p callbox -p callbox-loadgen
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# Open files: each side holds one socket per connection.
ulimit -n "$(ulimit -Hn)"

cat > "$work/signal.toml" <<TOML
[signal]
listen = "127.0.0.1:18080"
# The load comes from one address and runs far past the per-address defaults.
max_connections_per_address = 100000
rate_per_connection = 1000000
rate_per_address = 1000000000
rate_per_room = 1000000
http_rate_per_address = 1000000
TOML

out=bench-results/signal-$(date -u +%F).md
mkdir -p bench-results
{
  echo "# Signaling benchmark, $(date -u +%F)"
  echo
  echo "Command: \`scripts/bench-signal.sh $conns $secs\`. Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), commit $(git rev-parse --short HEAD)."
  echo
  echo "Load: $conns WebSocket connections in rooms of two (signal-load, crates/loadgen). Each pair runs rounds of offer -> answer -> 20 candidates each way (42 messages). Offered rate R: each pair starts a round every pairs*42/R seconds (open loop; rounds spread over the period); \"closed-loop\": the next round starts when the last one ends (throughput at saturation; latency then measures queueing, not relay time). Latency from a timestamp in each message to its arrival at the other peer (every 8th message sampled), after a warm-up. Idle memory is measured once all connections are open. Server and generator share the machine's 2 cores."
  echo
  echo "| server | offered msgs/s | conns | idle KiB/conn | relayed msgs/s | p50 ms | p99 ms | p999 ms | server cores | µs CPU/msg | generator cores |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} > "$out"

row() {
  local name=$1 line=$2
  local kv
  kv=$(echo "$line" | sed 's/^RESULT //')
  # shellcheck disable=SC2086
  local $kv
  echo "| $name | $offered | $conns | $rss_per_conn_kib | $msgs_per_s | $p50_ms | $p99_ms | $p999_ms | $server_cores | $us_per_msg | $generator_cores |" >> "$out"
}

for rate in "${rates[@]}"; do
  "$bin/callbox" serve --roles signal --config "$work/signal.toml" --state-dir "$work" > "$work/callbox.log" 2>&1 &
  pid=$!
  sleep 1
  line=$("$bin/signal-load" --addr 127.0.0.1:18080 --conns "$conns" --seconds "$secs" --rate "$rate" --pid "$pid" | tee /dev/stderr | grep '^RESULT')
  row callbox "$line"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  "$bin/signal-load" baseline 127.0.0.1:18081 > "$work/baseline.log" 2>&1 &
  pid=$!
  sleep 1
  line=$("$bin/signal-load" --addr 127.0.0.1:18081 --conns "$conns" --seconds "$secs" --rate "$rate" --pid "$pid" | tee /dev/stderr | grep '^RESULT')
  row baseline "$line"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo "wrote $out"
