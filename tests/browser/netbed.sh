#!/usr/bin/env bash
# The network test bed of netbed.test.mjs: a "public" bridge, the callbox host, two NAT
# routers and one client behind each, all in network namespaces this script creates (it
# never touches a device of the namespace it runs in), with addresses from 10.77.0.0/16 only.
#
#   netbed.sh up PREFIX           build the namespaces PREFIX-{pub,srv,r1,r2,c1,c2}
#   netbed.sh policy PREFIX MODE  what the routers let out of their LAN:
#                                   open     everything (both clients NATed, UDP works)
#                                   no-udp   no UDP at all (TURN over TCP is the only way)
#                                   tcp443   only TCP to 10.77.0.10 port 443 (scenario b)
#   netbed.sh down PREFIX         end what runs in them and delete them (idempotent)
#   netbed.sh show PREFIX         addresses, routes and rule counters, for a failure report
#
# PREFIX must look like cbx<digits> (the test uses cbx<its pid>).
#
#   10.77.0.0/24  public    PREFIX-pub: bridge br0 (no address)
#                           PREFIX-srv  eth0 10.77.0.10  (callbox)
#                           PREFIX-r1   wan  10.77.0.11  lan 10.77.1.1  (NAT: masquerade)
#                           PREFIX-r2   wan  10.77.0.12  lan 10.77.2.1  (NAT: masquerade)
#   10.77.1.0/24  LAN 1     PREFIX-c1   eth0 10.77.1.10, 10.77.0.0/16 via 10.77.1.1
#   10.77.2.0/24  LAN 2     PREFIX-c2   eth0 10.77.2.10, 10.77.0.0/16 via 10.77.2.1
#
# Nobody has a default route and the routers drop anything to or from outside
# 10.77.0.0/16, so nothing a browser tries can go anywhere but these namespaces.
set -euo pipefail

SERVER_IP=10.77.0.10

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "netbed: $1 is missing: $2" >&2; exit 1; }
}
need ip "apt-get install iproute2"
need nft "apt-get install nftables"

cmd=${1:-}
prefix=${2:-}
[[ $prefix =~ ^cbx[0-9]+$ ]] || { echo "usage: $0 up|down|policy|show cbx<digits> [mode]" >&2; exit 2; }
NAMES=(c1 c2 r1 r2 srv pub)

in_ns() { ip netns exec "$prefix-$1" "${@:2}"; }

sysctl_ns() { # ns key value
  in_ns "$1" sh -c "echo $3 > /proc/sys/${2//.//}"
}

# A veth pair from namespace $1 (device $2) to namespace $3 (device $4).
veth() {
  ip -n "$prefix-$1" link add "$2" type veth peer name "$4" netns "$prefix-$3"
  ip -n "$prefix-$1" link set "$2" up
  ip -n "$prefix-$3" link set "$4" up
}

down() {
  local n ns pids
  for n in "${NAMES[@]}"; do
    ns="$prefix-$n"
    [ -e "/run/netns/$ns" ] || continue
    # Only what this test bed started runs in its namespaces (callbox, chromium).
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
}

router() { # name wan-address lan-subnet-prefix (e.g. 10.77.1)
  local r=$1 wan=$2 lan=$3
  ip -n "$prefix-$r" addr add "$wan/24" dev wan
  ip -n "$prefix-$r" addr add "$lan.1/24" dev lan
  sysctl_ns "$r" net.ipv4.ip_forward 1
  in_ns "$r" nft -f - <<EOF
table inet netbed {
  # What the LAN may send out; replaced by 'netbed.sh policy'.
  chain egress {
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ip saddr != 10.77.0.0/16 counter drop
    ip daddr != 10.77.0.0/16 counter drop
    iifname "lan" oifname "wan" jump egress
    iifname "lan" oifname "wan" counter accept
    # A NAT box: only answers come back in (address- and port-dependent filtering).
    iifname "wan" oifname "lan" ct state established,related counter accept
    counter drop
  }
  # Nothing on the router answers from outside. Dropping a stray packet before conntrack
  # confirms it keeps its tuple free, so the next mapping out keeps its source port
  # (endpoint-independent mapping, as home routers do): hole punching works.
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new counter drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr $lan.0/24 masquerade
  }
}
EOF
}

up() {
  down
  local n
  for n in "${NAMES[@]}"; do
    ip netns add "$prefix-$n"
    ip -n "$prefix-$n" link set lo up
    # IPv4 only: no link-local IPv6 candidates to wait for.
    sysctl_ns "$n" net.ipv6.conf.all.disable_ipv6 1
    sysctl_ns "$n" net.ipv6.conf.default.disable_ipv6 1
  done
  ip -n "$prefix-pub" link add br0 type bridge
  ip -n "$prefix-pub" link set br0 up
  veth pub psrv srv eth0
  veth pub pr1 r1 wan
  veth pub pr2 r2 wan
  for n in psrv pr1 pr2; do ip -n "$prefix-pub" link set "$n" master br0; done
  veth r1 lan c1 eth0
  veth r2 lan c2 eth0

  ip -n "$prefix-srv" addr add "$SERVER_IP/24" dev eth0
  router r1 10.77.0.11 10.77.1
  router r2 10.77.0.12 10.77.2
  ip -n "$prefix-c1" addr add 10.77.1.10/24 dev eth0
  ip -n "$prefix-c1" route add 10.77.0.0/16 via 10.77.1.1
  ip -n "$prefix-c2" addr add 10.77.2.10/24 dev eth0
  ip -n "$prefix-c2" route add 10.77.0.0/16 via 10.77.2.1
}

policy() { # mode
  local rules
  case "$1" in
    open) rules="" ;;
    no-udp) rules="meta l4proto udp counter drop" ;;
    # Scenario (b): a network that lets out only TCP to port 443 (and DNS-less: no UDP).
    tcp443) rules="ip daddr $SERVER_IP tcp dport 443 counter accept
counter drop" ;;
    *) echo "netbed: unknown policy $1 (open, no-udp, tcp443)" >&2; exit 2 ;;
  esac
  local r
  for r in r1 r2; do
    in_ns "$r" nft -f - <<EOF
flush chain inet netbed egress
table inet netbed {
  chain egress {
    $rules
  }
}
EOF
  done
}

show() {
  local n
  for n in "${NAMES[@]}"; do
    [ -e "/run/netns/$prefix-$n" ] || continue
    echo "== $prefix-$n"
    ip -n "$prefix-$n" -brief addr 2>&1 || true
    ip -n "$prefix-$n" route 2>&1 || true
    case $n in r1 | r2) in_ns "$n" nft list table inet netbed 2>&1 || true ;; esac
  done
}

case "$cmd" in
  up) up ;;
  down) down ;;
  policy) policy "${3:?mode: open, no-udp or tcp443}" ;;
  show) show ;;
  *) echo "usage: $0 up|down|policy|show cbx<digits> [mode]" >&2; exit 2 ;;
esac
