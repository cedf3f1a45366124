#!/usr/bin/env bash
# The whole test suite: style, lints, docs, then every test inside a fresh network
# namespace that has only loopback, so WebRTC stacks and coturn's tools see no other
# address and no test traffic can leave the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}
need turnutils_uclient "apt-get install coturn (its client tools are used by the tests)"
need unshare "apt-get install util-linux"
need ip "apt-get install iproute2"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== build tests"
cargo test --workspace --no-run --quiet

echo "== tests (loopback-only network namespace)"
# unshare needs root or user namespaces; CI runs as root.
if [ "$(id -u)" -eq 0 ]; then
  unshare -n -- bash -c 'ip link set lo up && exec cargo test --workspace --offline -- --test-threads 2'
else
  unshare -rn -- bash -c 'ip link set lo up && exec cargo test --workspace --offline -- --test-threads 2'
fi

if [ "${CALLBOX_SKIP_FUZZ:-0}" != 1 ] && [ -x scripts/fuzz.sh ]; then
  echo "== fuzz smoke (bounded)"
  scripts/fuzz.sh "${CALLBOX_FUZZ_SECONDS:-15}"
fi
