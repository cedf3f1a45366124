#!/usr/bin/env bash
# Builds a static callbox (musl, static-pie) for distributions whose glibc is older than
# the .deb's floor (see the README): target/static/callbox, stripped, then checks that it
# has no interpreter and serves on loopback.
#
#   scripts/build-static.sh
#
# Needs Rust's x86_64-unknown-linux-musl standard library (`rustup target add`, which
# downloads it from static.rust-lang.org once: not part of the README's two commands) and
# Debian's musl-tools (musl-gcc builds ring's and SQLite's C).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v musl-gcc >/dev/null 2>&1 || fail "musl-gcc is missing: apt-get install musl-tools"
if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "== rustup target add $TARGET (downloads the musl standard library once)"
  rustup target add "$TARGET"
fi
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release -q -p callbox --target "$TARGET"
mkdir -p target/static
strip -o target/static/callbox "target/$TARGET/release/callbox"
bin=target/static/callbox

readelf -l "$bin" | grep -q INTERP && fail "$bin has an ELF interpreter: not static"
readelf -d "$bin" | grep -q NEEDED && fail "$bin needs shared libraries: $(readelf -d "$bin" | grep NEEDED)"
"$bin" --version >/dev/null || fail "$bin does not run"

# Serves on loopback: every role up, /healthz answers.
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
CALLBOX_LOG=info "$bin" serve --state-dir "$work/state" \
  --set 'turn.listen=["127.0.0.1:0"]' --set 'turn.relay_ip="127.0.0.1"' \
  --set 'turn.http_listen="127.0.0.1:0"' --set 'signal.listen="127.0.0.1:0"' \
  --set 'admin.listen="127.0.0.1:0"' >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "callbox ready" "$work/log" && break; sleep 0.1; done
ready=$(grep "callbox ready" "$work/log") || fail "the static build did not become ready: $(cat "$work/log")"
signal=$(sed -n 's/.* signal=\([^ ]*\).*/\1/p' <<<"$ready")
curl -fsS "http://$signal/healthz" >/dev/null || fail "no /healthz from the static build"
echo "static build: $bin ($(du -h "$bin" | cut -f1), $(file -b "$bin" | cut -d, -f1-2))"
