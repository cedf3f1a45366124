#!/usr/bin/env bash
# Signaling through two instances sharing rooms on Redis against one instance, same
# generator, same run, on loopback: one instance with its own rooms (no Redis), one
# instance on Redis, and two instances on Redis with the two peers of every pair on
# different instances (every message crosses). Writes bench-results/signal-cluster-<date>.md.
#
#   scripts/bench-signal-cluster.sh [CONNECTIONS] [SECONDS] [RATES...]
#       defaults: 2000 10, rates 10000 0 (messages/s offered; 0 = closed loop)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-2000}
secs=${2:-10}
shift 2 2>/dev/null || shift $#
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(10000 0)
command -v redis-server >/dev/null || { echo "error: redis-server is missing: apt-get install redis-server" >&2; exit 1; }
cargo build --release -q -p callbox -p callbox-loadgen
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

redis_port=16379
config() { # listen address, redis url or ""
  cat <<TOML
[signal]
listen = "$1"
max_connections_per_address = 100000
rate_per_connection = 1000000
rate_per_address = 1000000000
rate_per_room = 1000000
http_rate_per_address = 1000000
TOML
  [ -z "$2" ] || echo "redis_url = \"$2\""
}

start_redis() {
  if (exec 3<>/dev/tcp/127.0.0.1/$redis_port) 2>/dev/null; then
    echo "error: 127.0.0.1:$redis_port is in use (a stray redis-server?)" >&2; exit 1
  fi
  redis-server --bind 127.0.0.1 --port $redis_port --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$redis_port) 2>/dev/null && return; sleep 0.1; done
  echo "redis-server did not start" >&2; exit 1
}

start_callbox() { # name, listen, redis url
  mkdir -p "$work/$1"
  config "$2" "$3" > "$work/$1/signal.toml"
  "$bin/callbox" serve --roles signal --config "$work/$1/signal.toml" --state-dir "$work/$1" > "$work/$1/log" 2>&1 &
  echo $!
}

stop() { # pids (started in command substitutions: not this shell's children to wait for)
  kill "$@" 2>/dev/null || true
  for p in "$@"; do
    while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
  done
}

wait_ready() { # host:port
  for _ in $(seq 100); do
    curl -fsS "http://$1/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$1 not ready" >&2; exit 1
}

out=bench-results/signal-cluster-$(date -u +%F).md
mkdir -p bench-results
{
  echo "# Signaling across instances, $(date -u +%F)"
  echo
  echo "Command: \`scripts/bench-signal-cluster.sh $conns $secs ${rates[*]}\`. Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r), $(redis-server --version | cut -d' ' -f3), commit $(git rev-parse --short HEAD)."
  echo
  echo "Load: signal-load (crates/loadgen), $conns connections in rooms of two, rounds of offer -> answer -> 20 candidates each way; latency from a timestamp in each message to its arrival. \"server µs/msg\" sums every callbox process; Redis's CPU is apart. Everything (servers, Redis, generator) shares the machine's cores."
  echo
  echo "| layout | offered msgs/s | relayed msgs/s | p50 ms | p99 ms | server cores | server µs/msg | Redis cores | Redis µs/msg |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$out"

row() {
  local name=$1 line=$2
  local kv
  kv=$(echo "$line" | sed 's/^RESULT //')
  # shellcheck disable=SC2086
  local $kv
  echo "| $name | $offered | $msgs_per_s | $p50_ms | $p99_ms | $server_cores | $us_per_msg | $redis_cores | $redis_us_per_msg |" >> "$out"
}

for rate in "${rates[@]}"; do
  pid=$(start_callbox one 127.0.0.1:18080 "")
  wait_ready 127.0.0.1:18080
  line=$("$bin/signal-load" --addr 127.0.0.1:18080 --conns "$conns" --seconds "$secs" --rate "$rate" --pid "$pid" | tee /dev/stderr | grep '^RESULT')
  row "one instance, own rooms" "$line"
  stop "$pid"

  start_redis
  pid=$(start_callbox shared1 127.0.0.1:18080 "redis://127.0.0.1:$redis_port")
  wait_ready 127.0.0.1:18080
  line=$("$bin/signal-load" --addr 127.0.0.1:18080 --conns "$conns" --seconds "$secs" --rate "$rate" --pid "$pid" --redis-pid "$redis_pid" | tee /dev/stderr | grep '^RESULT')
  row "one instance on Redis" "$line"
  stop "$pid" "$redis_pid"

  start_redis
  pa=$(start_callbox shared2a 127.0.0.2:18080 "redis://127.0.0.1:$redis_port")
  pb=$(start_callbox shared2b 127.0.0.3:18080 "redis://127.0.0.1:$redis_port")
  wait_ready 127.0.0.2:18080
  wait_ready 127.0.0.3:18080
  line=$("$bin/signal-load" --addr 127.0.0.2:18080 --addr2 127.0.0.3:18080 --conns "$conns" --seconds "$secs" --rate "$rate" --pid "$pa" --pid "$pb" --redis-pid "$redis_pid" | tee /dev/stderr | grep '^RESULT')
  row "two instances on Redis (every message crosses)" "$line"
  stop "$pa" "$pb" "$redis_pid"
done
echo "wrote $out"
