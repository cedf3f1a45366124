#!/usr/bin/env bash
# The whole test suite: style, lints, docs, then every test inside a fresh network
# namespace that has only loopback (so WebRTC stacks and coturn's tools see no other
# address and no test traffic can leave the machine), the browser tests, and a bounded
# fuzz run of every parser.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }
}
need turnutils_uclient "apt-get install coturn (its client tools are used by the tests)"
need unshare "apt-get install util-linux"
need prlimit "apt-get install util-linux (tests start callbox under a soft open-files limit)"
need ip "apt-get install iproute2"
need nft "apt-get install nftables (tests/browser/netbed.test.mjs builds NAT routers with it)"
need openssl "apt-get install openssl (the browser test bed makes its test CA with it)"
need systemd-analyze "apt-get install systemd (tests/systemd_units.rs verifies and rates the units)"
need lintian "apt-get install lintian (scripts/package-test.sh checks the .deb with it)"
need debootstrap "apt-get install debootstrap (scripts/install-test.sh builds a Debian 12 root with it)"
need systemd-nspawn "apt-get install systemd-container (scripts/install-test.sh boots the package in it)"
need certutil "apt-get install libnss3-tools (the browser test bed's Chromium trusts the test CA through NSS)"
need node "Node.js runs the browser tests"
need redis-server "apt-get install redis-server (tests/cluster.rs runs the cluster on it)"
need turnserver "apt-get install coturn (cargo xtask torture send-fail runs coturn's server beside callbox)"
need mkfs.ext4 "apt-get install e2fsprogs (cargo xtask torture store puts the state directory on an ext4 loop device)"
need nsenter "apt-get install util-linux (cargo xtask torture store works inside the server's mount namespace)"
need findmnt "apt-get install util-linux (cargo xtask torture store finds the loop device with it)"
need pebble "apt-get install pebble (tests/acme.rs orders certificates from it)"
need pebble-challtestsrv "apt-get install pebble (tests/acme.rs resolves names through it)"
need python3 "Python runs schemathesis (scripts/install-schemathesis.sh)"
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || { echo "error: libfaketime is missing: apt-get install libfaketime (cargo xtask torture clock steps the wall clock with it)" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "error: /usr/bin/chromium is missing: apt-get install chromium" >&2; exit 1; }

# Runs a command in a new network namespace with only `lo` up (root, or user namespaces).
isolated() {
  local flags=-n
  [ "$(id -u)" -eq 0 ] || flags=-rn
  unshare $flags -- bash -c 'ip link set lo up && exec "$@"' isolated "$@"
}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== build"
cargo build --quiet -p callbox
cargo test --workspace --no-run --quiet
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; })

echo "== cargo tests (loopback-only network namespace)"
isolated cargo test --workspace --offline -- --test-threads 2

echo "== Debian package (cargo-deb, file list, maintainer scripts, lintian)"
scripts/package-test.sh

echo "== the package installed and booted in a Debian 12 container (debootstrap, systemd-nspawn)"
scripts/install-test.sh

echo "== torture: floods and faults against the release binary, short variants (docs/security.md)"
cargo build --release --quiet -p xtask
isolated target/release/xtask torture --short --bin target/release/callbox

echo "== admin API fuzzed against its OpenAPI document (schemathesis, loopback-only namespace)"
isolated scripts/schemathesis.sh "${CALLBOX_SCHEMATHESIS_SECONDS:-90}"

echo "== browser tests (headless Chromium, loopback-only network namespace)"
(cd tests/browser && isolated node --test --test-concurrency=1 --test-timeout=600000)

if [ "${CALLBOX_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz smoke (bounded)"
  scripts/fuzz.sh "${CALLBOX_FUZZ_SECONDS:-10}"
fi
