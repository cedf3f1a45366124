#!/usr/bin/env python3
"""TURN over TCP and TLS: callbox against coturn, same load, one run.

Measures, on 127.0.0.1 only, for callbox (`callbox serve --roles turn`, 2 workers) and
coturn 4.6.1 (`turnserver --use-auth-secret`, 2 relay threads), with the same client load:

1. relay over TCP and over TLS to a UDP echo peer (`turnutils_peer`): server CPU per relayed
   packet, delivered rate, loss. Load from a Python stream generator (16 connections, each
   Allocate + ChannelBind, ChannelData both ways with real stream framing): `paced` (20k
   packets/s offered) and `max` (closed loop, the machine's saturation); and, as a cross-check
   with coturn's own client, `turnutils_uclient -t [-S]` with `-z 1` and `-z 0`. (uclient
   reads one SSL_read() as one message: when a server puts several ChannelData messages in one
   TLS record, as coturn does, uclient miscounts them as lost.)
2. TLS handshakes per second and server CPU per handshake (a Python client, fresh connection
   and full handshake each time), as negotiated and with the client capped at TLS 1.2;
3. RSS per allocation: K connections over TCP, then over TLS, each with an authenticated
   TURN Allocate (STUN encoded here), held open while VmRSS is read.

Writes bench-results/streams-<date>[-quick][-N].md and .json; logs, certificate and state
go to bench-results/tmp/streams-*/ (git-ignored). Python 3 standard library only; needs
/usr/bin/openssl, coturn (turnserver, turnutils_uclient, turnutils_peer) and stdbuf.

    scripts/bench-streams.py                 # about 4.5 min on a quiet 2-core machine
    scripts/bench-streams.py --quick         # about 1.5 min: 1 repetition, short windows
    scripts/bench-streams.py --help

The machine must be otherwise idle (it waits up to --wait-quiet s for that). Everything it
starts dies with it (PR_SET_PDEATHSIG) and is stopped at the end.
"""

import argparse
import base64
import ctypes
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

SECRET = "bench-secret-not-for-production"
REALM = "callbox"
NAME = "callbox.test"
HOST = "127.0.0.1"
# Ports: callbox UDP+TCP, its TURN/TLS listener, its /metrics; coturn UDP+TCP and TLS; the
# echo peer (turnutils_peer binds PEER_PORT and PEER_PORT+1). Relay ranges apart and below
# the kernel's ephemeral range (32768-60999), which the clients' sockets come from.
CALLBOX_PORT, CALLBOX_TLS_PORT, CALLBOX_HTTP_PORT = 6478, 6479, 6480
COTURN_PORT, COTURN_TLS_PORT = 6490, 6491
PEER_PORT = 6500
CALLBOX_RELAY = (10000, 19999)
COTURN_RELAY = (20000, 29999)
WORKERS = 2
PAYLOAD = 200
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ("callbox", "coturn")
# A uclient client starts sending 1 to 6 s after the allocations are made (coturn's
# uclient.c: to_send_timems = now + 1000 + random() % 5000): the window starts after that.
STAGGER_S = 6.2
OTHER_CORES_LIMIT = 0.25

STARTED = []  # every Popen this script started, stopped in cleanup()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- processes and /proc


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGTERM when this script dies, even by SIGKILL.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def spawn(cmd, logfile, **kw):
    out = open(logfile, "wb")
    p = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent, **kw)
    out.close()
    STARTED.append(p)
    return p


def stop(p, grace=3.0):
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def cleanup():
    for p in reversed(STARTED):
        try:
            stop(p)
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


def proc_cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def all_process_ticks():
    """{pid: utime+stime} of every process (kernel threads such as ksoftirqd included)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            t = proc_cpu_ticks(int(d))
            if t is not None:
                out[int(d)] = t
    return out


def window_figures(a, b, sent, recv, server_s, client_s, peer_s, other_s):
    """The figures of one measurement window between samples `a` and `b`: rates, CPU per
    relayed packet, every process's share of the cores, TCP segments and UDP drops."""
    dt = b["t"] - a["t"]
    relayed = sent + recv
    peer_drops = b["peer_drops"] - a["peer_drops"]
    return {
        "window_s": round(dt, 3),
        "sent": sent,
        "received": recv,
        "sent_per_s": sent / dt,
        "delivered_per_s": recv / dt,
        "relayed_per_s": relayed / dt,
        "server_cores": server_s / dt,
        "server_us_per_pkt": 1e6 * server_s / relayed if relayed else None,
        "client_cores": client_s / dt,
        "peer_cores": peer_s / dt,
        "other_cores": other_s / dt,
        "steal_cores": (b["steal"] - a["steal"]) / CLK_TCK / dt,
        "tcp_segments_per_pkt": (b["tcp_segs"] - a["tcp_segs"]) / relayed if relayed else None,
        "udp_drops_at_peer": peer_drops,
        "udp_drops_elsewhere": (b["rcvbuf"] - a["rcvbuf"]) - peer_drops,
    }


def callbox_counters(a, b):
    """callbox's own /metrics counts over the window (a cross-check of the clients')."""
    return {
        "callbox_relayed": b["cb_relayed"] - a["cb_relayed"],
        "callbox_tcp_send_drop_bytes": b["cb_tcp_send_drop_bytes"] - a["cb_tcp_send_drop_bytes"],
        "callbox_send_drops": b["cb_send_drops"] - a["cb_send_drops"],
    }


def other_ticks(a, b, exclude):
    """CPU ticks used between snapshots a and b by every process not in exclude."""
    return sum(t - a.get(pid, 0) for pid, t in b.items() if pid not in exclude and t >= a.get(pid, 0))


def steal_ticks():
    """Ticks the hypervisor gave to others while this VM wanted to run (/proc/stat)."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return int(v[8]) if len(v) > 8 else 0


def machine_ticks():
    """(busy, total) clock ticks of the whole machine; busy includes steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return total - idle, total


def tcp_out_segments():
    """TCP segments sent by the whole machine (/proc/net/snmp OutSegs)."""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")]) if len(lines) >= 2 else 0


def udp_counters():
    """(RcvbufErrors of the whole machine, drops at the peer's socket)."""
    rcvbuf = 0
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    if len(lines) >= 2:
        rcvbuf = int(lines[1][lines[0].index("RcvbufErrors")])
    peer = 0
    want = "0100007F:%04X" % PEER_PORT
    with open("/proc/net/udp") as f:
        for line in f:
            p = line.split()
            if len(p) > 12 and p[1] == want:
                peer = int(p[-1])
    return rcvbuf, peer


def port_free(port):
    """Nothing listens on TCP or UDP 127.0.0.1:port (TIME_WAIT leftovers do not count: the
    servers bind with SO_REUSEADDR, as this probe does for TCP)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def sample_quiet(seconds=1.0):
    b0, t0 = machine_ticks()
    time.sleep(seconds)
    b1, t1 = machine_ticks()
    return (b1 - b0) / CLK_TCK / seconds


def heavy_processes():
    names = ("cargo", "rustc", "cc1", "cc1plus", "ld", "lld", "clang", "gcc", "cargo-fuzz",
             "rust-analyzer", "turnutils_uclient", "turnserver")
    found = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in names:
            found.append(f"{comm}({d})")
    return found


def wait_quiet(limit_s, label):
    """Waits (up to limit_s) until the machine is idle: < 0.25 busy cores twice in a row."""
    deadline = time.monotonic() + limit_s
    calm = 0
    busy = None
    while time.monotonic() < deadline:
        busy = sample_quiet(1.0)
        calm = calm + 1 if busy < OTHER_CORES_LIMIT else 0
        if calm >= 2:
            return busy
        if calm == 0:
            log(f"waiting for quiet ({label}): {busy:.2f} busy cores; {' '.join(heavy_processes())}")
    log(f"WARNING: the machine did not get quiet ({busy:.2f} busy cores); going on")
    return busy


# ---------------------------------------------------------------- servers


class Servers:
    """callbox, coturn and the echo peer; (re)started fresh where a test needs it."""

    def __init__(self, o, run_dir, cert, key):
        self.o, self.dir, self.cert, self.key = o, run_dir, cert, key
        self.proc = {"callbox": None, "coturn": None}
        self.peer = None
        self.starts = {"callbox": 0, "coturn": 0}
        self.callbox_config = os.path.join(run_dir, "callbox.toml")
        with open(self.callbox_config, "w") as f:
            f.write(callbox_toml(cert, key))

    def port(self, server, transport):
        if server == "callbox":
            return CALLBOX_TLS_PORT if transport == "tls" else CALLBOX_PORT
        return COTURN_TLS_PORT if transport == "tls" else COTURN_PORT

    def pid(self, server):
        return self.proc[server].pid

    def start_peer(self):
        self.peer = spawn(
            [self.o.uclient.replace("turnutils_uclient", "turnutils_peer"), "-L", HOST,
             "-p", str(PEER_PORT)],
            os.path.join(self.dir, "peer.log"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.peer.poll() is not None:
                raise SystemExit("turnutils_peer exited at start: see peer.log")
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((HOST, PEER_PORT))
                s.close()
                time.sleep(0.05)
            except OSError:
                s.close()
                return
        raise SystemExit("turnutils_peer does not listen")

    def start(self, server):
        self.stop(server)
        self.starts[server] += 1
        n = self.starts[server]
        logfile = os.path.join(self.dir, f"{server}-{n}.log")
        if server == "callbox":
            state = os.path.join(self.dir, f"callbox-state-{n}")
            cmd = [self.o.callbox_copy, "serve", "--roles", "turn", "--config",
                   self.callbox_config, "--state-dir", state]
            # CALLBOX_SECTION__KEY variables would override the file; journald is not wanted
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("CALLBOX_") and k != "JOURNAL_STREAM"}
            p = spawn(cmd, logfile, env=env)
        else:
            cmd = coturn_cmd(self.o.turnserver, self.cert, self.key, self.dir, n)
            p = spawn(cmd, logfile)
        self.proc[server] = p
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"{server} exited at start:\n{tail(logfile)}")
            if server == "callbox":
                with open(logfile, errors="replace") as f:
                    ready = "callbox ready" in f.read()
            else:
                ready = tcp_binding(COTURN_PORT) and tls_connects(COTURN_TLS_PORT)
            if ready:
                return p
            time.sleep(0.1)
        raise SystemExit(f"{server} not ready after 20 s:\n{tail(logfile)}")

    def stop(self, server):
        p = self.proc.get(server)
        if p is not None:
            stop(p)
            self.proc[server] = None

    def logs(self, server):
        return [os.path.join(self.dir, f"{server}-{n}.log")
                for n in range(1, self.starts[server] + 1)]


def callbox_toml(cert, key):
    return f"""# written by scripts/bench-streams.py
[general]
log_format = "stdout"
[auth]
secrets = ["{SECRET}"]
[turn]
listen = ["{HOST}:{CALLBOX_PORT}"]
tcp = true
tls_listen = ["{HOST}:{CALLBOX_TLS_PORT}"]
http_listen = "{HOST}:{CALLBOX_HTTP_PORT}"
relay_ip = "{HOST}"
relay_port_min = {CALLBOX_RELAY[0]}
relay_port_max = {CALLBOX_RELAY[1]}
allow_peers = ["127.0.0.1/32"]
workers = {WORKERS}
# The whole load comes from 127.0.0.1: no per-user, per-address or unauthenticated caps
# (coturn runs with --user-quota=0 --total-quota=0 and has no per-address cap).
user_quota = 4096
total_quota = 4096
tcp_max_connections = 4096
tcp_max_connections_per_address = 4096
unauthenticated_rate = 0
[tls]
cert_file = "{cert}"
key_file = "{key}"
# the one TLS port (443) and port 80 off: TURN/TLS on turn.tls_listen only
listen = []
http_listen = []
"""


def coturn_args():
    """coturn's options besides secret, certificate and files; listed in the report."""
    return [
        "-n", "--no-cli", "--log-file=stdout", "--simple-log", "--use-auth-secret",
        f"--realm={REALM}", f"--listening-ip={HOST}", f"--relay-ip={HOST}",
        f"--listening-port={COTURN_PORT}", f"--tls-listening-port={COTURN_TLS_PORT}",
        "--allow-loopback-peers", "--no-dtls", "--no-tcp-relay",
        f"--relay-threads={WORKERS}", "--user-quota=0", "--total-quota=0", "--max-bps=0",
        f"--min-port={COTURN_RELAY[0]}", f"--max-port={COTURN_RELAY[1]}",
    ]


def coturn_cmd(turnserver, cert, key, run_dir, n):
    return [turnserver] + coturn_args() + [
        f"--static-auth-secret={SECRET}", f"--cert={cert}", f"--pkey={key}",
        f"--userdb={os.path.join(run_dir, f'turndb-{n}')}",
        f"--pidfile={os.path.join(run_dir, f'turnserver-{n}.pid')}",
    ]


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def callbox_metrics():
    try:
        with urllib.request.urlopen(f"http://{HOST}:{CALLBOX_HTTP_PORT}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


# ---------------------------------------------------------------- STUN by hand

MAGIC = 0x2112A442
ALLOCATE_REQ, ALLOCATE_OK, ALLOCATE_ERR = 0x0003, 0x0103, 0x0113
BINDING_REQ = 0x0001
CHANNEL_BIND_REQ, CHANNEL_BIND_OK = 0x0009, 0x0109
A_CHANNEL, A_XOR_PEER = 0x000C, 0x0012
A_USERNAME, A_MI, A_ERROR, A_REALM, A_NONCE, A_TRANSPORT, A_FP = (
    0x0006, 0x0008, 0x0009, 0x0014, 0x0015, 0x0019, 0x8028)


def stun_attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def stun_message(mtype, tid, attrs, key=None):
    body = b"".join(stun_attr(t, v) for t, v in attrs)
    if key is not None:
        head = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + tid
        body += stun_attr(A_MI, hmac.new(key, head + body, hashlib.sha1).digest())
    head = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + tid
    body += stun_attr(A_FP, struct.pack("!I", (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF))
    return struct.pack("!HHI", mtype, len(body), MAGIC) + tid + body


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_stun(s):
    head = recv_exact(s, 20)
    mtype, length = struct.unpack("!HH", head[:4])
    body = recv_exact(s, length)
    attrs, i = {}, 0
    while i + 4 <= len(body):
        t, ln = struct.unpack("!HH", body[i:i + 4])
        attrs.setdefault(t, body[i + 4:i + 4 + ln])
        i += 4 + ln + (-ln % 4)
    return mtype, head[8:20], attrs


def error_code(attrs):
    v = attrs.get(A_ERROR)
    return v[2] * 100 + v[3] if v and len(v) >= 4 else None


def rest_credentials(realm):
    user = f"{int(time.time()) + 3600}:bench"
    password = base64.b64encode(
        hmac.new(SECRET.encode(), user.encode(), hashlib.sha1).digest())
    key = hashlib.md5(user.encode() + b":" + realm + b":" + password).digest()
    return user.encode(), key


def turn_allocate(s):
    """Allocate (UDP relay) with a TURN REST credential over stream s:
    (None or why not, (user, realm, nonce, key) for later requests)."""
    transport = (A_TRANSPORT, b"\x11\0\0\0")
    tid = os.urandom(12)
    s.sendall(stun_message(ALLOCATE_REQ, tid, [transport]))
    mtype, rtid, attrs = read_stun(s)
    if rtid != tid or mtype != ALLOCATE_ERR or error_code(attrs) != 401:
        return f"first answer {mtype:#06x} {error_code(attrs)}", None
    realm, nonce = attrs.get(A_REALM, b""), attrs.get(A_NONCE, b"")
    user, key = rest_credentials(realm)
    tid = os.urandom(12)
    s.sendall(stun_message(ALLOCATE_REQ, tid, [
        transport, (A_USERNAME, user), (A_REALM, realm), (A_NONCE, nonce)], key=key))
    mtype, rtid, attrs = read_stun(s)
    if rtid != tid:
        return "transaction id mismatch", None
    if mtype != ALLOCATE_OK:
        return f"answer {mtype:#06x} error {error_code(attrs)}", None
    return None, (user, realm, nonce, key)


def turn_channel_bind(s, creds, channel, peer_port):
    """ChannelBind `channel` to 127.0.0.1:peer_port: None or why not."""
    user, realm, nonce, key = creds
    xor_peer = struct.pack("!BBH", 0, 1, peer_port ^ (MAGIC >> 16)) + struct.pack(
        "!I", 0x7F000001 ^ MAGIC)
    tid = os.urandom(12)
    s.sendall(stun_message(CHANNEL_BIND_REQ, tid, [
        (A_CHANNEL, struct.pack("!HH", channel, 0)), (A_XOR_PEER, xor_peer),
        (A_USERNAME, user), (A_REALM, realm), (A_NONCE, nonce)], key=key))
    mtype, rtid, attrs = read_stun(s)
    if rtid != tid or mtype != CHANNEL_BIND_OK:
        return f"ChannelBind answer {mtype:#06x} error {error_code(attrs)}"
    return None


def tcp_binding(port):
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            tid = os.urandom(12)
            s.sendall(stun_message(BINDING_REQ, tid, []))
            mtype, rtid, _ = read_stun(s)
            return rtid == tid and mtype == 0x0101
    except OSError:
        return False


def client_tls_context(max_tls12=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def tls_connects(port):
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            with client_tls_context().wrap_socket(s, server_hostname=NAME):
                return True
    except (OSError, ssl.SSLError):
        return False


# ---------------------------------------------------------------- 1. relay with a stream generator

CHANNEL = 0x4000
FRAME = struct.pack("!HH", CHANNEL, PAYLOAD) + bytes(range(256))[:PAYLOAD]  # 4-byte aligned
TLS_CHUNK = 16384


class StreamConn:
    """One client: a TCP or TLS connection with an allocation and a channel to the peer."""

    def __init__(self, port, transport, ctx):
        s = socket.create_connection((HOST, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transport == "tls":
            s = ctx.wrap_socket(s, server_hostname=NAME)
        why, creds = turn_allocate(s)
        if why is None:
            why = turn_channel_bind(s, creds, CHANNEL, PEER_PORT)
        if why is not None:
            s.close()
            raise ConnectionError(why)
        s.setblocking(False)
        self.s, self.tls = s, transport == "tls"
        self.out = bytearray()
        self.pending = None  # bytes handed to send() that must be offered again as they are
        self.rx = bytearray()
        self.sent = self.recv = self.written_off = self.behind = self.stun = 0
        self.last_rx = time.monotonic()
        self.want_write = False

    def queue(self, frames):
        self.out += FRAME * frames
        self.sent += frames

    def flush(self):
        """Writes what the socket takes; True if bytes remain."""
        while True:
            if self.pending is None:
                if not self.out:
                    return False
                self.pending = bytes(self.out[:TLS_CHUNK])
                del self.out[:len(self.pending)]
            try:
                n = self.s.send(self.pending)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            self.pending = self.pending[n:] or None
            if self.pending is not None:
                return True

    def read(self, now):
        """Reads what there is and counts the complete frames; False when closed."""
        while True:
            try:
                data = self.s.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                return False
            self.rx += data
            if self.tls and self.s.pending() == 0 and len(data) < 16384:
                break
        rx, i, n = self.rx, 0, len(self.rx)
        frames = 0
        while n - i >= 4:
            ch, ln = struct.unpack_from("!HH", rx, i)
            if 0x4000 <= ch <= 0x7FFF:
                size = 4 + ln + (-ln % 4)
                if n - i < size:
                    break
                frames += 1
            elif ch < 0x4000:  # a STUN message (20-byte header)
                size = 20 + ln
                if n - i < size:
                    break
                self.stun += 1
            else:
                raise ConnectionError(f"bad frame header {ch:#06x}: the stream lost its framing")
            i += size
        del rx[:i]
        if frames:
            self.recv += frames
            self.last_rx = now
        return True


def gen_run(o, servers, server, transport, load, window_s):
    """One run of the stream generator against one server: the window's numbers."""
    port = servers.port(server, transport)
    spid, ppid = servers.pid(server), servers.peer.pid
    ctx = client_tls_context() if transport == "tls" else None
    result = {"server": server, "transport": transport, "load": load, "generator": "python"}
    conns = []
    try:
        for _ in range(o.clients):
            conns.append(StreamConn(port, transport, ctx))
    except (OSError, ssl.SSLError, ConnectionError) as e:
        for c in conns:
            c.s.close()
        result["failed"] = f"setup: {type(e).__name__}: {e}"
        return result
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.s, selectors.EVENT_READ, c)
    rate = {"paced": o.paced_rate, "light": o.light_rate}.get(load)
    rate = rate / len(conns) if rate else None
    inflight_max = o.inflight
    t0 = time.monotonic()
    t_a = t0 + o.warmup
    t_b = t_a + window_s
    a = b = None
    broken = None
    try:
        while True:
            now = time.monotonic()
            if a is None and now >= t_a:
                a = sample(spid, None, ppid, server == "callbox")
                a.update(sent=sum(c.sent for c in conns), recv=sum(c.recv for c in conns),
                         gen=time.process_time())
            if now >= t_b:
                b = sample(spid, None, ppid, server == "callbox")
                b.update(sent=sum(c.sent for c in conns), recv=sum(c.recv for c in conns),
                         gen=time.process_time())
                break
            for c in conns:
                if rate is not None:
                    due = int(rate * (now - t0)) - c.sent - c.behind
                    if due > 0:
                        # a generator that falls behind skips the backlog, as a clock would
                        if len(c.out) > 64 * len(FRAME):
                            c.behind += due
                        else:
                            c.queue(due)
                else:
                    if now - c.last_rx > 0.05 and c.sent - c.recv - c.written_off > 0:
                        c.written_off = c.sent - c.recv  # a 50 ms stall: the rest is lost
                        c.last_rx = now
                    room = inflight_max - (c.sent - c.recv - c.written_off)
                    if room >= inflight_max // 4:
                        c.queue(room)
                if c.out or c.pending is not None:
                    more = c.flush()
                    if more != c.want_write:
                        c.want_write = more
                        sel.modify(c.s, selectors.EVENT_READ | (selectors.EVENT_WRITE if more else 0), c)
            for key, ev in sel.select(timeout=0.0005 if rate else 0.002):
                c = key.data
                if ev & selectors.EVENT_READ and not c.read(time.monotonic()):
                    raise ConnectionError("the server closed a connection")
                if ev & selectors.EVENT_WRITE:
                    more = c.flush()
                    if not more:
                        c.want_write = False
                        sel.modify(c.s, selectors.EVENT_READ, c)
        # drain: what is still on its way comes back within a few ms
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            for key, ev in sel.select(timeout=0.05):
                key.data.read(time.monotonic())
    except (OSError, ssl.SSLError, ConnectionError) as e:
        broken = f"{type(e).__name__}: {e}"
    finally:
        for c in conns:
            try:
                c.s.close()
            except OSError:
                pass
    if broken or a is None or b is None:
        result["failed"] = broken or "no window"
        return result
    sent, recv = b["sent"] - a["sent"], b["recv"] - a["recv"]
    server_s = (b["server"] - a["server"]) / CLK_TCK
    peer_s = (b["peer"] - a["peer"]) / CLK_TCK
    gen_s = b["gen"] - a["gen"]
    other_s = other_ticks(a["all"], b["all"], {spid, ppid, os.getpid()}) / CLK_TCK
    total_sent = sum(c.sent for c in conns)
    total_recv = sum(c.recv for c in conns)
    result.update(window_figures(a, b, sent, recv, server_s, gen_s, peer_s, other_s))
    result.update({
        # over the whole run, after the drain (a window edge cuts packets in flight)
        "loss_pct": 100.0 * (1 - total_recv / total_sent) if total_sent else None,
        "generator_behind": sum(c.behind for c in conns),
        "stun_messages": sum(c.stun for c in conns),
    })
    if server == "callbox":
        result.update(callbox_counters(a, b))
    return result


# ---------------------------------------------------------------- 1. relay with uclient

STATS_RE = re.compile(
    r"^(\d+): : start_mclient: msz=(\d+), tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")


def uclient_cmd(o, port, transport, load):
    cmd = ["stdbuf", "-oL", o.uclient, "-t"]
    if transport == "tls":
        cmd.append("-S")
    cmd += ["-c", "-m", str(o.clients), "-n", "10000000", "-l", str(PAYLOAD),
            "-z", {"paced": "1", "unpaced": "0", "light": "20"}[load],
            "-e", HOST, "-r", str(PEER_PORT), "-W", SECRET, "-p", str(port), HOST]
    return cmd


def sample(server_pid, uclient_pid, peer_pid, callbox):
    s = {
        "t": time.monotonic(),
        "server": proc_cpu_ticks(server_pid),
        "uclient": proc_cpu_ticks(uclient_pid),
        "peer": proc_cpu_ticks(peer_pid),
        "all": all_process_ticks(),
        "steal": steal_ticks(),
        "tcp_segs": tcp_out_segments(),
    }
    s["rcvbuf"], s["peer_drops"] = udp_counters()
    if callbox:
        m = callbox_metrics()
        s["cb_relayed"] = metric_sum(m, "callbox_turn_relayed_packets_total")
        s["cb_tcp_send_drop_bytes"] = metric_sum(m, "callbox_turn_tcp_send_drop_bytes_total")
        s["cb_send_drops"] = metric_sum(m, "callbox_turn_send_drops_total")
    return s


def relay_run(o, servers, server, transport, load, window, logfile):
    """One uclient run against one server: the steady window's numbers."""
    port = servers.port(server, transport)
    spid, ppid = servers.pid(server), servers.peer.pid
    out = open(logfile, "wb")
    p = subprocess.Popen(uclient_cmd(o, port, transport, load), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         preexec_fn=_die_with_parent)
    STARTED.append(p)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    buf = b""
    t_connect = None
    points = []  # (sample, sent, received) at each statistics line in the window
    errors = []
    wrong_integrity = tls_retries = 0
    started = time.monotonic()
    deadline = started + 45 + window
    result = {"server": server, "transport": transport, "load": load, "generator": "uclient"}
    last_stats = None
    try:
        while time.monotonic() < deadline and len(points) <= window:
            if last_stats is not None and time.monotonic() - last_stats > 5:
                result["stuck"] = True
                break
            if not sel.select(timeout=0.5):
                if p.poll() is not None:
                    break
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            out.write(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if "Total connect time" in line:
                    t_connect = time.monotonic()
                elif "Wrong integrity" in line:
                    wrong_integrity += 1
                elif "cannot connect" in line or "alert internal error" in line:
                    tls_retries += 1
                elif "ERROR" in line and len(errors) < 5:
                    errors.append(line.strip())
                m = STATS_RE.match(line)
                if not m or t_connect is None:
                    continue
                last_stats = time.monotonic()
                now = time.monotonic()
                if now < t_connect + STAGGER_S:
                    continue
                points.append((sample(spid, p.pid, ppid, server == "callbox"),
                               int(m.group(3)), int(m.group(4))))
                if len(points) > window:
                    break
    finally:
        stop(p, grace=2)
        out.close()
    result["setup_s"] = round((t_connect or time.monotonic()) - started, 2)
    result["errors"] = errors
    # "Wrong integrity in a message received from server": uclient took bytes that are not a
    # whole message (several ChannelData in one TLS record) for a STUN response.
    result["uclient_wrong_integrity_lines"] = wrong_integrity
    # uclient -S picks one of its TLS contexts at random; TLS 1.0/1.1 ones fail and it retries.
    result["uclient_tls_connect_retries"] = tls_retries // 2
    if len(points) < 2:
        why = ("uclient stopped printing statistics for 5 s (stuck)" if result.get("stuck")
               else f"uclient gave {len(points)} statistics lines after the ramp (exit {p.returncode})")
        result["failed"] = f"{why}; see {os.path.basename(logfile)}"
        return result
    (a, s0, r0), (b, s1, r1) = points[0], points[-1]
    sent, recv = s1 - s0, r1 - r0
    server_s = (b["server"] - a["server"]) / CLK_TCK
    uclient_s = (b["uclient"] - a["uclient"]) / CLK_TCK
    peer_s = (b["peer"] - a["peer"]) / CLK_TCK
    other_s = other_ticks(a["all"], b["all"], {spid, ppid, p.pid, os.getpid()}) / CLK_TCK
    result.update(window_figures(a, b, sent, recv, server_s, uclient_s, peer_s, other_s))
    result["loss_pct"] = 100.0 * (1 - recv / sent) if sent else None
    if server == "callbox":
        result.update(callbox_counters(a, b))
    return result


def describe(r):
    if "failed" in r:
        return r["failed"]
    return (f"{r['delivered_per_s'] / 1000:.1f}k/s back, loss {r['loss_pct']:.2f}%, "
            f"{r['server_us_per_pkt']:.2f} µs/pkt, server {r['server_cores']:.2f} cores, "
            f"other {r['other_cores']:.2f}")


def relay_tests(o, servers, run_dir, report, generator):
    """Every (load, transport) for both servers, alternating, `reps` times."""
    loads = o.gen_loads if generator == "python" else o.uclient_loads
    reps = o.reps if generator == "python" else o.uclient_reps
    combos = [(load, tr) for load in loads for tr in ("tcp", "tls")]
    total, n, runs = len(combos) * reps * 2, 0, []
    for rep in range(1, reps + 1):
        for load, transport in combos:
            order = SERVERS if rep % 2 else SERVERS[::-1]
            for server in order:
                n += 1
                for attempt in (1, 2):
                    if generator == "python":
                        r = gen_run(o, servers, server, transport, load, o.gen_window)
                    else:
                        logfile = os.path.join(
                            run_dir, f"uclient-{load}-{transport}-{server}-{rep}-{attempt}.log")
                        r = relay_run(o, servers, server, transport, load, o.window, logfile)
                    r["rep"], r["attempt"] = rep, attempt
                    r["disturbed"] = r.get("other_cores", 0) > OTHER_CORES_LIMIT
                    again = r["disturbed"] and attempt == 1
                    log(f"[{generator} {n}/{total}] {load} {transport} {server} rep {rep}: "
                        + describe(r) + (" (disturbed: again)" if again else ""))
                    time.sleep(0.3)  # the server closes the allocations
                    if not again:
                        break
                    wait_quiet(30, "retry")
                runs.append(r)
    report.setdefault("relay_runs", []).extend(runs)


# ---------------------------------------------------------------- 2. TLS handshakes


def handshake_round(port, pid, seconds, threads, max_tls12):
    ctx = client_tls_context(max_tls12)
    counts, errors, info = [0] * threads, [0] * threads, {}
    end = time.monotonic() + seconds

    def work(i):
        while time.monotonic() < end:
            try:
                with socket.create_connection((HOST, port), timeout=5) as s:
                    with ctx.wrap_socket(s, server_hostname=NAME) as t:
                        if not info:
                            info["version"], info["cipher"] = t.version(), t.cipher()[0]
                counts[i] += 1
            except (OSError, ssl.SSLError):
                errors[i] += 1

    c0, a0, t0 = proc_cpu_ticks(pid), all_process_ticks(), time.monotonic()
    p0 = time.process_time()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.monotonic() - t0
    server_s = (proc_cpu_ticks(pid) - c0) / CLK_TCK
    client_s = time.process_time() - p0
    other_s = other_ticks(a0, all_process_ticks(), {pid, os.getpid()}) / CLK_TCK
    n = sum(counts)
    return {
        "handshakes": n, "failures": sum(errors), "seconds": round(dt, 3),
        "per_s": n / dt, "server_cores": server_s / dt,
        "server_us_per_handshake": 1e6 * server_s / n if n else None,
        "client_cores": client_s / dt,
        "other_cores": other_s / dt, **info,
    }


def handshake_tests(o, servers, report):
    out = []
    for variant, max12 in (("default", False), ("tls1.2", True)):
        for rnd in range(1, o.reps + 1):
            order = SERVERS if rnd % 2 else SERVERS[::-1]
            for server in order:
                r = handshake_round(servers.port(server, "tls"), servers.pid(server),
                                    o.hs_seconds, o.hs_threads, max12)
                r.update(server=server, variant=variant, round=rnd)
                out.append(r)
                log(f"handshakes {variant} {server} round {rnd}: {r['per_s']:.0f}/s, "
                    f"{r['server_us_per_handshake'] or 0:.0f} µs server CPU each, "
                    f"{r['failures']} failures, {r.get('version')} {r.get('cipher')}")
                time.sleep(0.3)
    report["handshakes"] = out


# ---------------------------------------------------------------- 3. RSS per allocation


def rss_test(o, servers, server, transport):
    pid = servers.pid(server)
    port = servers.port(server, transport)
    ctx = client_tls_context() if transport == "tls" else None
    time.sleep(0.5)
    before = vm_rss_kib(pid)
    held, failures, reasons = [], 0, {}
    t0 = time.monotonic()
    for _ in range(o.allocations):
        s = None
        try:
            s = socket.create_connection((HOST, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname=NAME)
            why, _ = turn_allocate(s)
        except (OSError, ssl.SSLError, ConnectionError) as e:
            why = type(e).__name__ + ": " + str(e)
        if why is None:
            held.append(s)
        else:
            failures += 1
            reasons[why] = reasons.get(why, 0) + 1
            if s is not None:
                s.close()
    dt = time.monotonic() - t0
    time.sleep(0.5)
    after = vm_rss_kib(pid)
    n = len(held)
    for s in held:
        s.close()
    time.sleep(0.5)
    return {
        "server": server, "transport": transport, "allocations": n, "failures": failures,
        "failure_reasons": reasons, "seconds": round(dt, 2),
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_allocation": (after - before) / n if n else None,
    }


def rss_tests(o, servers, report):
    out = []
    for transport in ("tcp", "tls"):
        for server in SERVERS:
            servers.start(server)  # fresh process: nothing served before
            r = rss_test(o, servers, server, transport)
            out.append(r)
            log(f"RSS {transport} {server}: {r['rss_before_kib'] / 1024:.1f} → "
                f"{r['rss_after_kib'] / 1024:.1f} MiB with {r['allocations']} allocations = "
                f"{r['kib_per_allocation'] or 0:.1f} KiB each, {r['failures']} failures {r['failure_reasons'] or ''}")
    report["rss"] = out


# ---------------------------------------------------------------- report


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt(x, digits=2):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def kfmt(x):
    return "-" if x is None else f"{x / 1000:.1f}k"


def ratio(a, b):
    return a / b if a is not None and b else None


def ratio_cell(values_a, values_b):
    """median ratio, with (min-max) over the paired repetitions."""
    ma, mb = med(values_a), med(values_b)
    r = ratio(ma, mb)
    pairs = [ratio(a, b) for a, b in zip(values_a, values_b) if a is not None and b]
    if r is None:
        return "-"
    if len(pairs) > 1:
        lo, hi = min(pairs), max(pairs)
        return f"{r:.2f} ({lo:.2f}–{hi:.2f})"
    return f"{r:.2f}"


LOAD_LABELS = {
    ("python", "paced"): "paced",
    ("python", "max"): "max",
    ("python", "light"): "light",
    ("uclient", "paced"): "uclient -z 1",
    ("uclient", "unpaced"): "uclient -z 0",
    ("uclient", "light"): "uclient -z 20",
}
RELAY_KEYS = ("sent_per_s", "delivered_per_s", "loss_pct", "server_cores", "server_us_per_pkt",
              "client_cores", "peer_cores", "other_cores", "udp_drops_at_peer",
              "udp_drops_elsewhere")


def summarize(report):
    """Per-server values over the repetitions (and their medians), kept in the JSON."""
    summary = {"relay": {}, "handshakes": {}, "rss": {}}
    o = report["options"]
    runs = [r for r in report.get("relay_runs", []) if "failed" not in r]
    for gen, loads in (("python", o["gen_loads"]), ("uclient", o["uclient_loads"])):
        for load in loads:
            for tr in ("tcp", "tls"):
                row = {}
                for server in SERVERS:
                    rs = [r for r in runs if (r["generator"], r["load"], r["transport"], r["server"])
                          == (gen, load, tr, server)]
                    row[server] = {k: [r.get(k) for r in rs] for k in RELAY_KEYS}
                    row[server]["median"] = {k: med(row[server][k]) for k in RELAY_KEYS}
                summary["relay"][f"{gen}/{load}/{tr}"] = row
    for variant in ("default", "tls1.2"):
        row = {}
        for server in SERVERS:
            hs = [h for h in report.get("handshakes", []) if (h["variant"], h["server"]) == (variant, server)]
            row[server] = {
                "per_s": [h["per_s"] for h in hs],
                "server_us_per_handshake": [h["server_us_per_handshake"] for h in hs],
                "failures": sum(h["failures"] for h in hs),
                "version": hs[0].get("version") if hs else None,
                "cipher": hs[0].get("cipher") if hs else None,
            }
        summary["handshakes"][variant] = row
    for r in report.get("rss", []):
        summary["rss"].setdefault(r["transport"], {})[r["server"]] = r
    return summary


def load_description(o):
    return {
        "paced": f"Python generator, {o.clients} connections, {o.paced_rate // 1000}k packets/s "
                 "offered in all, paced by the clock",
        "light": f"Python generator, {o.clients} connections, {o.light_rate} packets/s offered "
                 "in all, paced",
        "max": f"Python generator, {o.clients} connections, closed loop with at most "
               f"{o.inflight} packets in flight per connection (the machine's saturation)",
        "uclient -z 1": f"`turnutils_uclient -m {o.clients} -z 1`: 1 packet per ms per client, "
                        f"{o.clients}k packets/s offered",
        "uclient -z 0": f"`turnutils_uclient -m {o.clients} -z 0`: unpaced, up to 50 packets "
                        "per 1 ms tick per client, open loop",
        "uclient -z 20": f"`turnutils_uclient -m {o.clients} -z 20` (its default interval): "
                         f"{o.clients * 50} packets/s offered",
    }


def write_report(o, report, md_path, json_path):
    s = summarize(report)
    report["summary"] = s
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    m = report["machine"]
    L = []
    w = L.append
    w(f"# TURN over TCP and TLS: callbox and coturn, {report['date']}\n")
    w(f"Command: `{report['command']}` (took {report['seconds']:.0f} s). Loopback only (127.0.0.1).\n")
    w("## Machine\n")
    for k in ("nproc", "cpu", "kernel", "memory", "udp_buffers", "clk_tck", "coturn", "openssl",
              "python", "callbox", "callbox_commit", "quiet_before"):
        w(f"- {k}: {m.get(k)}")
    w("")
    w("## Setup\n")
    w(f"- callbox: `callbox serve --roles turn --config callbox.toml --state-dir …`, {WORKERS} "
      f"workers, UDP+TCP on {CALLBOX_PORT}, TURN/TLS on {CALLBOX_TLS_PORT} (`turn.tls_listen`), "
      f"the one TLS port off (`tls.listen = []`), relay ports {CALLBOX_RELAY[0]}-{CALLBOX_RELAY[1]}, "
      "`allow_peers = [\"127.0.0.1/32\"]`, user/total quota and TCP caps (also per address) 4096, "
      "`unauthenticated_rate = 0` (the whole load comes from one address). The file is in the JSON.")
    w(f"- coturn: `turnserver {' '.join(coturn_args())} --static-auth-secret=… --cert=… --pkey=… "
      "--userdb=… --pidfile=…` (relay threads = callbox's workers; UDP on for both).")
    w(f"- Certificate: self-signed EC P-256 for {NAME} (openssl), the same files for both.")
    w(f"- Peer: `turnutils_peer -L 127.0.0.1 -p {PEER_PORT}` (UDP echo). A packet goes client → "
      "relay (stream) → peer (UDP) → relay → client. Relayed = sent + received by the clients. "
      f"Payload {PAYLOAD} bytes (ChannelData).")
    w("- Loads:")
    for k, v in load_description(o).items():
        w(f"  - `{k}`: {v}.")
    w(f"- Python generator: each connection does Allocate (401, then a TURN REST credential) and "
      f"ChannelBind, then sends ChannelData in writes of up to 16 KiB and parses the frames that "
      f"come back. {o.warmup} s warm-up, then a {o.gen_window} s window; loss = 1 − received/sent "
      "over the whole run after a 0.3 s drain.")
    w(f"- uclient: `turnutils_uclient -t [-S] -c -m {o.clients} -n 10000000 -l {PAYLOAD} -z Z -e "
      f"127.0.0.1 -r {PEER_PORT} -W … -p PORT 127.0.0.1` under `stdbuf -oL`. uclient starts each "
      f"client 1-6 s after allocating; the window starts {STAGGER_S} s after its 'Total connect "
      f"time' line and spans {o.window} of its once-a-second statistics lines, where its counters are "
      "read; then it is stopped. Loss = 1 − received/sent in the window.")
    w("- Server CPU = utime+stime of the server process (all threads) from /proc/PID/stat over the "
      "window; µs/pkt = server CPU per relayed packet. 'client cores' = generator (Python or "
      "uclient), 'other cores' = every other process's utime+stime (kernel threads such as "
      "ksoftirqd included); a run "
      "with more than 0.25 is repeated once after waiting for quiet and marked ⚠ if still disturbed. "
      "'steal' = /proc/stat steal time (the hypervisor running someone else), in cores.")
    w("- TCP segments per relayed packet: /proc/net/snmp OutSegs of the whole machine (client, "
      "server, ACKs both ways) over relayed packets: how many small writes the stream carries.")
    w("- UDP drops: 'at peer' = the echo peer's socket (/proc/net/udp), 'relay side' = all other "
      "UDP RcvbufErrors (/proc/net/snmp): the server's relay sockets.")
    w(f"- Servers alternate (callbox first, then coturn first, ...); Python generator "
      f"{o.reps}×, uclient {o.uclient_reps}×. Tables show medians; ratio cells the ratio of the "
      "medians and (min–max) over the paired runs.")
    w("")

    w("## Summary\n")
    w("| measurement | callbox | coturn | callbox / coturn |")
    w("|---|---|---|---|")
    for key, row in s["relay"].items():
        gen, load, tr = key.split("/")
        label = f"{tr.upper()} `{LOAD_LABELS[(gen, load)]}`"
        cb, ct = row["callbox"], row["coturn"]
        w(f"| {label}: server CPU per relayed packet (µs) | "
          f"{fmt(cb['median']['server_us_per_pkt'])} | {fmt(ct['median']['server_us_per_pkt'])} | "
          f"{ratio_cell(cb['server_us_per_pkt'], ct['server_us_per_pkt'])} |")
        w(f"| {label}: delivered (packets/s back at the clients) | "
          f"{kfmt(cb['median']['delivered_per_s'])} | {kfmt(ct['median']['delivered_per_s'])} | "
          f"{ratio_cell(cb['delivered_per_s'], ct['delivered_per_s'])} |")
        w(f"| {label}: loss % | {fmt(cb['median']['loss_pct'])} | {fmt(ct['median']['loss_pct'])} | |")
    for variant, row in s["handshakes"].items():
        cb, ct = row["callbox"], row["coturn"]
        label = "as negotiated" if variant == "default" else "client capped at TLS 1.2"
        w(f"| TLS handshakes/s ({label}: callbox {cb['version']}, coturn {ct['version']}) | "
          f"{fmt(med(cb['per_s']), 0)} | {fmt(med(ct['per_s']), 0)} | "
          f"{ratio_cell(cb['per_s'], ct['per_s'])} |")
        w(f"| server CPU per TLS handshake, µs ({label}) | "
          f"{fmt(med(cb['server_us_per_handshake']), 0)} | {fmt(med(ct['server_us_per_handshake']), 0)} | "
          f"{ratio_cell(cb['server_us_per_handshake'], ct['server_us_per_handshake'])} |")
    for tr, row in s["rss"].items():
        cb, ct = row.get("callbox", {}), row.get("coturn", {})
        w(f"| RSS per {tr.upper()} allocation, KiB ({cb.get('allocations')} / {ct.get('allocations')} held) | "
          f"{fmt(cb.get('kib_per_allocation'), 1)} | {fmt(ct.get('kib_per_allocation'), 1)} | "
          f"{fmt(ratio(cb.get('kib_per_allocation'), ct.get('kib_per_allocation')))} |")
    w("")

    w("## Relay runs\n")
    w("| load | transport | server | rep | window s | sent/s | delivered/s | loss % | server cores | "
      "server µs/pkt | client cores | peer cores | other cores | steal | TCP segments per relayed pkt | UDP drops at peer | UDP drops relay side | callbox /metrics relayed / clients' count |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report.get("relay_runs", []):
        label = LOAD_LABELS[(r["generator"], r["load"])]
        mark = " ⚠" if r.get("disturbed") else ""
        if "failed" in r:
            w(f"| {label} | {r['transport']} | {r['server']} | {r['rep']} | failed: {r['failed']} |||||||||||")
            continue
        cross = "-"
        if "callbox_relayed" in r:
            cross = f"{r['callbox_relayed']:.0f} / {r['sent'] + r['received']}"
        w(f"| {label} | {r['transport']} | {r['server']} | {r['rep']}{mark} | {r['window_s']:.2f} | "
          f"{kfmt(r['sent_per_s'])} | {kfmt(r['delivered_per_s'])} | {fmt(r['loss_pct'])} | "
          f"{fmt(r['server_cores'])} | {fmt(r['server_us_per_pkt'])} | {fmt(r['client_cores'])} | "
          f"{fmt(r['peer_cores'])} | {fmt(r['other_cores'])} | {fmt(r.get('steal_cores'))} | {fmt(r.get('tcp_segments_per_pkt'))} | {r['udp_drops_at_peer']} | "
          f"{r['udp_drops_elsewhere']} | {cross} |")
    notes = []
    for r in report.get("relay_runs", []):
        if r["generator"] != "uclient":
            continue
        bits = []
        if r.get("stuck"):
            bits.append("uclient stopped sending and printing (its read loop never returned)")
        if r.get("uclient_wrong_integrity_lines"):
            bits.append(f"{r['uclient_wrong_integrity_lines']} 'Wrong integrity' lines (misframed "
                        "TLS reads: received data miscounted)")
        if r.get("uclient_tls_connect_retries"):
            bits.append(f"{r['uclient_tls_connect_retries']} TLS connection retries")
        bits += [f"`{e}`" for e in r.get("errors", [])[:2]]
        if bits:
            notes.append(f"{LOAD_LABELS[(r['generator'], r['load'])]} {r['transport']} "
                         f"{r['server']} rep {r['rep']}: " + "; ".join(bits))
    if notes:
        w("\nuclient's output:\n")
        for n_ in notes:
            w(f"- {n_}")
    w("")
    w("## TLS handshakes\n")
    w(f"A Python client ({o.hs_threads} threads, `ssl` module, no verification, SNI {NAME}, no "
      f"ALPN, no session resumption): connect, full handshake, close; {o.hs_seconds} s per round, "
      f"{o.reps} rounds per server and variant, servers alternating. `tls1.2` caps the client at "
      "TLS 1.2 (like for like: coturn 4.6.1 negotiates TLS 1.2 either way).\n")
    w("| variant | server | round | handshakes/s | server cores | server µs/handshake | client cores | other cores | failures | version | cipher |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for h in report.get("handshakes", []):
        w(f"| {h['variant']} | {h['server']} | {h['round']} | {fmt(h['per_s'], 0)} | {fmt(h['server_cores'])} | "
          f"{fmt(h['server_us_per_handshake'], 0)} | {fmt(h['client_cores'])} | {fmt(h['other_cores'])} | "
          f"{h['failures']} | {h.get('version')} | {h.get('cipher')} |")
    w("")
    w("## RSS per allocation\n")
    w(f"Each server freshly started; {o.allocations} connections opened one after another, each "
      "with Allocate → 401 → Allocate (REST credential, MESSAGE-INTEGRITY, FINGERPRINT), all held "
      "open; VmRSS (/proc/PID/status) before and 0.5 s after. Kernel socket memory (one TCP "
      "socket and one UDP relay socket per allocation on both servers) is not in RSS.\n")
    w("| transport | server | allocations | failures | VmRSS before (MiB) | after (MiB) | KiB per allocation | seconds |")
    w("|---|---|---|---|---|---|---|---|")
    for r in report.get("rss", []):
        w(f"| {r['transport']} | {r['server']} | {r['allocations']} | {r['failures']} | "
          f"{r['rss_before_kib'] / 1024:.1f} | {r['rss_after_kib'] / 1024:.1f} | "
          f"{fmt(r['kib_per_allocation'], 1)} | {r['seconds']} |")
    w("")
    w("## Server logs\n")
    for k, v in report.get("server_logs", {}).items():
        w(f"- {k}: {v}")
    w("")
    with open(md_path, "w") as f:
        f.write("\n".join(L))


def log_summary(paths, server):
    """Counts of warning/error lines in a server's logs, with a few examples."""
    warn, err, examples = 0, 0, []
    for p in paths:
        try:
            with open(p, errors="replace") as f:
                for line in f:
                    if server == "callbox":
                        is_err, is_warn = " ERROR " in line, " WARN " in line
                    else:
                        is_err, is_warn = "ERROR" in line, "WARNING" in line
                    err += is_err
                    warn += is_warn
                    if (is_err or is_warn) and len(examples) < 4 and line.strip() not in examples:
                        examples.append(line.strip()[:200])
        except OSError:
            pass
    return f"{err} error and {warn} warning lines" + (
        "; e.g. " + " / ".join(f"`{e}`" for e in examples) if examples else "")


def machine_info(o):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])

    def sysctl(name):
        try:
            with open("/proc/sys/net/core/" + name) as f:
                return f.read().strip()
        except OSError:
            return "?"
    commit = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
    built = os.path.getmtime(o.callbox)
    before = run(["git", "-C", REPO, "log", "-1", "--format=%h", f"--before=@{int(built)}"])
    with open(o.callbox_copy, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "udp_buffers": f"rmem_default/max {sysctl('rmem_default')}/{sysctl('rmem_max')}, "
                       f"wmem_default/max {sysctl('wmem_default')}/{sysctl('wmem_max')}",
        "clk_tck": CLK_TCK,
        "coturn": (run([o.turnserver, "--version"]) or "?").splitlines()[-1] + f" ({o.turnserver})",
        "openssl": run(["openssl", "version"]),
        "python": platform.python_version(),
        "callbox": f"{run([o.callbox_copy, '--version'])} from {o.callbox} "
                   f"(sha256 {digest}…, built {time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(o.callbox)))})",
        "callbox_commit": f"HEAD {commit}" + (" (work tree modified)" if dirty else "")
                          + f"; newest commit older than the binary: {before}",
        "loadavg": open("/proc/loadavg").read().strip(),
    }


def output_paths(out_dir, quick):
    day = datetime.date.today().isoformat()
    base = f"streams-{day}" + ("-quick" if quick else "")
    n = 1
    while True:
        stem = base if n == 1 else f"{base}-{n}"
        md = os.path.join(out_dir, stem + ".md")
        if not os.path.exists(md):
            return md, os.path.join(out_dir, stem + ".json")
        n += 1


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition, short windows, uclient unpaced only, 2 s handshake "
                         "rounds, 200 allocations")
    ap.add_argument("--callbox", default=os.path.join(REPO, "target/release/callbox"),
                    help="the callbox binary (copied into the run directory first; default: %(default)s)")
    ap.add_argument("--turnserver", default="/usr/bin/turnserver")
    ap.add_argument("--uclient", default="/usr/bin/turnutils_uclient",
                    help="turnutils_uclient; turnutils_peer is taken from the same directory")
    ap.add_argument("--reps", type=int,
                    help="repetitions of the Python generator's runs and handshake rounds (default 3, quick 1)")
    ap.add_argument("--uclient-reps", type=int, help="repetitions of the uclient runs (default 1)")
    ap.add_argument("--clients", type=int, default=16,
                    help="client connections for both generators (default %(default)s)")
    ap.add_argument("--gen-loads", default="paced,max",
                    help="Python generator loads: paced, max, light (default %(default)s)")
    ap.add_argument("--light-rate", type=int, default=1000,
                    help="packets/s offered in all by the light load (default %(default)s)")
    ap.add_argument("--paced-rate", type=int, default=20000,
                    help="packets/s offered in all by the paced load (default %(default)s)")
    ap.add_argument("--inflight", type=int, default=64,
                    help="packets in flight per connection in the max load (default %(default)s)")
    ap.add_argument("--gen-window", type=float, help="seconds measured per generator run (default 4, quick 1.5)")
    ap.add_argument("--uclient-loads", help="uclient loads: paced (-z 1), unpaced (-z 0), light "
                                            "(-z 20); default paced,unpaced, quick unpaced; "
                                            "'none' skips uclient")
    ap.add_argument("--window", type=int,
                    help="uclient window in its statistics lines, ~1 s each (default 3, quick 2)")
    ap.add_argument("--allocations", type=int, help="allocations held for RSS (default 500, quick 200)")
    ap.add_argument("--hs-seconds", type=float, help="seconds per handshake round (default 3, quick 2)")
    ap.add_argument("--hs-threads", type=int, default=2, help="handshake client threads (default %(default)s)")
    ap.add_argument("--wait-quiet", type=float, default=120,
                    help="seconds to wait for an idle machine before starting (default %(default)s)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"),
                    help="where the report goes; logs go to OUT/tmp/streams-*/ (default %(default)s)")
    o = ap.parse_args()
    o.reps = o.reps or (1 if o.quick else 3)
    o.uclient_reps = o.uclient_reps or 1
    o.window = o.window or (2 if o.quick else 3)
    o.gen_window = o.gen_window or (1.5 if o.quick else 4.0)
    o.warmup = 0.5
    o.allocations = o.allocations or (200 if o.quick else 500)
    o.hs_seconds = o.hs_seconds or (2.0 if o.quick else 3.0)
    o.gen_loads = [x for x in o.gen_loads.split(",") if x and x != "none"]
    if o.uclient_loads is None:
        o.uclient_loads = "unpaced" if o.quick else "paced,unpaced"
    o.uclient_loads = [x for x in o.uclient_loads.split(",") if x and x != "none"]
    if any(x not in ("paced", "max", "light") for x in o.gen_loads):
        ap.error("--gen-loads: paced, max, light")
    if any(x not in ("paced", "unpaced", "light") for x in o.uclient_loads):
        ap.error("--uclient-loads: paced, unpaced, light, none")

    for tool in (o.callbox, o.turnserver, o.uclient, "/usr/bin/openssl", shutil.which("stdbuf") or "stdbuf",
                 o.uclient.replace("turnutils_uclient", "turnutils_peer")):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} not found (coturn: apt-get install coturn; callbox: cargo build --release)")
    busy_ports = [p for p in (CALLBOX_PORT, CALLBOX_TLS_PORT, CALLBOX_HTTP_PORT, COTURN_PORT,
                              COTURN_TLS_PORT, PEER_PORT, PEER_PORT + 1) if not port_free(p)]
    if busy_ports:
        raise SystemExit(f"ports in use on 127.0.0.1: {busy_ports}; is an earlier run still going?")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * o.allocations + 512:
        raise SystemExit(f"open-files limit {want} is too low for {o.allocations} allocations")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    tmp_root = os.path.join(o.out, "tmp")
    os.makedirs(tmp_root, exist_ok=True)
    run_dir = os.path.join(tmp_root, time.strftime("streams-%Y%m%d-%H%M%S"))
    os.makedirs(run_dir)
    o.callbox_copy = os.path.join(run_dir, "callbox")
    shutil.copy2(o.callbox, o.callbox_copy)  # a rebuild during the run changes nothing
    cert, key = os.path.join(run_dir, "cert.pem"), os.path.join(run_dir, "key.pem")
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"],
                   check=True, capture_output=True)
    log(f"run directory {run_dir}")

    started = time.monotonic()
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "scripts/bench-streams.py " + " ".join(sys.argv[1:]),
        "options": {k: v for k, v in vars(o).items()},
        "started_unix": time.time(),
        "coturn_args": coturn_args(),
    }
    try:
        quiet = wait_quiet(o.wait_quiet, "start")
        report["machine"] = machine_info(o)
        report["machine"]["quiet_before"] = f"{quiet:.2f} busy cores, loadavg {report['machine']['loadavg']}"
        servers = Servers(o, run_dir, cert, key)
        report["callbox_config"] = open(servers.callbox_config).read()
        servers.start_peer()
        log("RSS per allocation")
        rss_tests(o, servers, report)
        for server in SERVERS:
            servers.start(server)
        log("TLS handshakes")
        handshake_tests(o, servers, report)
        log("relay over TCP and TLS: Python stream generator")
        relay_tests(o, servers, run_dir, report, "python")
        log("relay over TCP and TLS: turnutils_uclient")
        relay_tests(o, servers, run_dir, report, "uclient")
        for server in SERVERS:
            servers.stop(server)
        report["server_logs"] = {s: log_summary(servers.logs(s), s) for s in SERVERS}
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        cleanup()
        raise SystemExit(130)
    finally:
        cleanup()
        try:
            os.remove(o.callbox_copy)  # 70 MB; its sha256 is in the report
        except OSError:
            pass
    report["seconds"] = time.monotonic() - started
    md_path, json_path = output_paths(o.out, o.quick)
    write_report(o, report, md_path, json_path)
    log(f"wrote {os.path.relpath(md_path, REPO)} and .json ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
