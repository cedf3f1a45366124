#!/usr/bin/env bash
# The .deb installed and booted for real: a minimal Debian 12 (debootstrap, cached in
# $CALLBOX_ROOTFS_CACHE, default /var/cache/callbox-test/bookworm, built once and reused)
# copied afresh, booted with systemd-nspawn on a private network (only its own loopback),
# and checked from inside:
#   install: the unit becomes active through READY=1, user, modes; /healthz; a STUN
#   Binding on 3478; `callbox credentials` minted and accepted by the relay
#   (turnutils_uclient); structured journal fields; `systemctl reload` with a live
#   allocation; an upgrade to a rebuilt package keeps an edited config and the database;
#   remove keeps the state; purge removes state, config and the user.
# Needs root, debootstrap and systemd-container; fails (never skips) without them.
#
#   scripts/install-test.sh [DEB]     # default: the newest target/debian/callbox_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "install test failed: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is missing: $2"; }
[ "$(id -u)" -eq 0 ] || fail "needs root (systemd-nspawn)"
need debootstrap "apt-get install debootstrap"
need systemd-nspawn "apt-get install systemd-container"
need nsenter "apt-get install util-linux"
need python3 "apt-get install python3 (a WebSocket client in the container's network namespace)"

deb=${1:-$(ls -t target/debian/callbox_*.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || fail "no .deb: run scripts/package.sh first"

# The root file system: debootstrap once (Debian's mirror, as apt uses), then reuse.
cache=${CALLBOX_ROOTFS_CACHE:-/var/cache/callbox-test/bookworm}
if [ ! -x "$cache/usr/bin/turnutils_uclient" ]; then
  echo "== debootstrap into $cache (once)"
  rm -rf "$cache.tmp"
  mkdir -p "$(dirname "$cache")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,iproute2,curl,coturn \
    bookworm "$cache.tmp" http://deb.debian.org/debian >"$(dirname "$cache")/debootstrap.log" 2>&1 \
    || fail "debootstrap failed: $(tail -5 "$(dirname "$cache")/debootstrap.log")"
  # Only coturn's client tools are wanted; its server would take port 3478.
  systemctl --root="$cache.tmp" mask coturn.service >/dev/null 2>&1
  mv "$cache.tmp" "$cache"
fi

work=$(mktemp -d /tmp/callbox-install.XXXXXX)
root=$work/root
nspawn_pid=
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cp -a "$cache" "$root"
cp "$deb" "$root/root/callbox.deb"
# The upgrade: the package rebuilt as the next Debian revision (or CALLBOX_UPGRADE_DEB).
version=$(dpkg-deb -f "$deb" Version)
next="${version%-*}-$(( ${version##*-} + 1 ))"
upgrade=${CALLBOX_UPGRADE_DEB:-}
if [ -z "$upgrade" ]; then
  upgrade=$work/callbox-upgrade.deb
  cargo deb -p callbox --no-build --strip --quiet --deb-version "$next" --output "$upgrade" >/dev/null \
    || fail "could not rebuild the package as $next"
fi
next=$(dpkg-deb -f "$upgrade" Version)
cp "$upgrade" "$root/root/callbox-upgrade.deb"

echo "== boot the container"
# --keep-unit and --register=no: no systemd or machined needed on the host.
systemd-nspawn --quiet --register=no --keep-unit --private-network \
  --machine="callbox-test-$$" -D "$root" --boot >"$work/console.log" 2>&1 &
nspawn_pid=$!
init=
for _ in $(seq 100); do
  init=$(pgrep -P "$nspawn_pid" -x systemd || true)
  [ -n "$init" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || fail "the container did not boot: $(tail -20 "$work/console.log")"
  sleep 0.1
done
[ -n "$init" ] || fail "no init in the container: $(tail -20 "$work/console.log")"
ctr() { nsenter -t "$init" -m -u -i -n -p -- "$@"; }
# systemd in the container takes a moment to open its socket after exec: until then
# systemctl prints nothing (and fails), so ask again.
state=
for _ in $(seq 120); do
  state=$(ctr timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
  [ -n "$state" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || fail "the container stopped: $(tail -20 "$work/console.log")"
  sleep 0.5
done
case "$state" in running|degraded) ;; *) fail "the container's system is '$state'";; esac

wait_active() {
  for _ in $(seq 100); do
    [ "$(ctr systemctl is-active callbox 2>/dev/null)" = active ] && return 0
    sleep 0.2
  done
  fail "callbox.service is not active: $(ctr systemctl status callbox --no-pager 2>&1 | tail -20)"
}
check() { # DESCRIPTION COMMAND... (run in this shell: `ctr` and the variables are there)
  local what=$1; shift
  "$@" >"$work/out" 2>&1 || fail "$what: $(tail -20 "$work/out")"
  echo "ok: $what"
}
holds() { eval "$1"; } # a compound condition for `check`

echo "== install"
check "dpkg -i" ctr dpkg -i /root/callbox.deb
wait_active
check "the unit reports its status through sd_notify" holds 'ctr systemctl show -p StatusText callbox | grep -q "serving signal,turn,admin"'
check "system user callbox" ctr getent passwd callbox
check "/etc/callbox/callbox.toml root:callbox 0640" holds '[ "$(ctr stat -c "%U:%G %a" /etc/callbox/callbox.toml)" = "root:callbox 640" ]'
check "/var/lib/callbox callbox:callbox 0750" holds '[ "$(ctr stat -c "%U:%G %a" /var/lib/callbox)" = "callbox:callbox 750" ]'
check "/healthz" ctr curl -fsS http://127.0.0.1:8080/healthz
check "STUN Binding on 3478" holds 'ctr turnutils_stunclient 127.0.0.1 | grep -q "UDP reflexive addr"'

echo "== relay with minted credentials"
# Loopback peers are refused by default (the secure policy); the test's peer is one.
ctr sed -i 's|^allow_peers = \[\]|allow_peers = ["127.0.0.1/32"]|' /etc/callbox/callbox.toml
check "the edit" ctr grep -q '^allow_peers = \["127.0.0.1/32"\]' /etc/callbox/callbox.toml
ctr systemctl restart callbox
wait_active
ctr sh -c 'turnutils_peer -L 127.0.0.1 -p 3480 >/dev/null 2>&1 &'
creds=$(ctr callbox credentials --config /etc/callbox/callbox.toml --state-dir /var/lib/callbox --user probe)
user=$(printf '%s' "$creds" | sed -n 's/^ *"username": "\(.*\)",*$/\1/p' | head -1)
pass=$(printf '%s' "$creds" | sed -n 's/^ *"password": "\(.*\)",*$/\1/p' | head -1)
[ -n "$user" ] && [ -n "$pass" ] || fail "callbox credentials printed no username/password: $creds"
uclient() { ctr timeout 60 turnutils_uclient -u "$user" -w "$pass" -e 127.0.0.1 -r 3480 -c "$@" 127.0.0.1; }
check "turnutils_uclient relays with the minted credentials" holds 'uclient -n 50 -m 1 -z 5 | grep -q "Total lost packets 0"'
check "the allocation's journal fields (F_TRANSPORT, F_USERNAME)" holds 'ctr journalctl -u callbox --no-pager -o cat F_TRANSPORT=udp "F_USERNAME=$user" | grep -q "allocation created"'

# A signaling peer joins (the host's python3 in the container's network namespace: the
# minimal image has no WebSocket client): its room and peer id are journal fields.
peer=$(nsenter -t "$init" -n python3 - <<'PY'
import base64, json, os, socket
s = socket.create_connection(("127.0.0.1", 8080), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /v1/signal?room=journal-check HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: callbox.v1\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, rest = buf.split(b"\r\n\r\n", 1)
assert head.startswith(b"HTTP/1.1 101"), head
def need(n):
    global rest
    while len(rest) < n:
        rest += s.recv(65536)
    out, rest = rest[:n], rest[n:]
    return out
b0, b1 = need(2)
n = b1 & 0x7F
if n == 126:
    n = int.from_bytes(need(2), "big")
elif n == 127:
    n = int.from_bytes(need(8), "big")
welcome = json.loads(need(n))
print(welcome["peer_id"])
s.sendall(bytes([0x88, 0x82]) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))
PY
) || fail "no signaling session in the container"
check "a signaling peer's journal fields (F_ROOM, F_PEER)" holds 'ctr journalctl -u callbox --no-pager -o cat F_ROOM=journal-check "F_PEER=$peer" | grep -q "peer connected"'

echo "== reload with a live allocation"
ctr sh -c "timeout 60 turnutils_uclient -u '$user' -w '$pass' -e 127.0.0.1 -r 3480 -c -n 300 -m 1 -z 10 127.0.0.1 >/tmp/live.out 2>&1 &"
sleep 1.5
check "systemctl reload" ctr systemctl reload callbox
# uclient prints its totals when it is done (the image has no pgrep to watch it with).
for _ in $(seq 150); do ctr grep -q 'Total lost packets' /tmp/live.out 2>/dev/null && break; sleep 0.2; done
check "the allocation relayed through the reload without loss" ctr grep -q 'Total lost packets 0' /tmp/live.out
check "still active after the reload" ctr systemctl is-active callbox

echo "== upgrade keeps the edited config and the database"
printf 'kept-across-upgrade\n' >"$root/root/pw"
admin=(callbox admin --state-dir /var/lib/callbox --config /etc/callbox/callbox.toml)
check "a user in the database" ctr "${admin[@]}" users add keeper --password-file /root/pw
check "dpkg -i the rebuilt package ($next)" ctr sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /root/callbox-upgrade.deb'
check "$next is installed" holds '[ "$(ctr dpkg-query -W -f "\${Version}" callbox)" = "$next" ]'
wait_active
check "the edited config is kept" ctr grep -q '^allow_peers = \["127.0.0.1/32"\]' /etc/callbox/callbox.toml
check "the database is kept" holds 'ctr "${admin[@]}" users list --json | grep -q keeper'

echo "== remove keeps the state; purge removes it"
check "dpkg -r" ctr dpkg -r callbox
check "state kept after remove" ctr test -f /var/lib/callbox/callbox.db
check "user kept after remove" ctr getent passwd callbox
check "dpkg -P" ctr dpkg -P callbox
check "state gone after purge" holds '! ctr test -e /var/lib/callbox'
check "config gone after purge" holds '! ctr test -e /etc/callbox'
check "user gone after purge" holds '! ctr getent passwd callbox'
echo "install test passed: $deb"
