#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ (committed; rerun after changing).

scripts/fuzz.sh copies them into fuzz/corpus/<target>/ (git-ignored) before each run.
The turn_server seeds follow the record format documented in
fuzz/fuzz_targets/turn_server.rs.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def h(s):
    return bytes.fromhex("".join(s.split()))


# RFC 5769 test vectors.
RFC5769 = {
    "rfc5769_request": """000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74
        002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70c
        bfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf""",
    "rfc5769_ipv4_response": """0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96""",
    "rfc5769_ipv6_response": """010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
        002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed41
        80280004c8fb0b4c""",
    "rfc5769_long_term_request": """000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b9
        00000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f7267
        0000080014f67024656dd64a3e02b8e0712e85c9a28ca89666""",
}

for name, vec in RFC5769.items():
    put("stun_message", name, h(vec))
# A Data indication (XOR-PEER-ADDRESS 198.51.100.2:5000, DATA "hello") and a bare header.
put("stun_message", "data_indication",
    h("0017001c2112a442 030303030303030303030303 00120008 0001 329a e721c040 00130005 68656c6c6f000000"))
put("stun_message", "binding_header_only", h("000100002112a442 000102030405060708090a0b"))

put("channel_data", "basic", h("4000000568656c6c6f000000"))
put("channel_data", "empty", h("7ffe0000"))
put("channel_data", "unpadded", h("40010003616263"))

put("rest_username", "rest", "1700000000:alice")
put("rest_username", "stamp_only", "12")
put("rest_username", "colon_in_user", "12:a:b@example.com")
put("rest_username", "static", "bob")

put("cidr", "v4", "10.0.0.0/8")
put("cidr", "v4_host", "198.51.100.7")
put("cidr", "v6", "2001:db8::/32")
put("cidr", "mapped", "::ffff:10.0.0.0/104")
put("cidr", "external_ip", "203.0.113.4/10.0.0.5")

put("config_toml", "full", """[general]
state_dir = "/var/lib/callbox"
log_level = "callbox_turn=debug,info"
log_format = "json"

[auth]
secrets = ["new-secret", "old-secret"]
credential_ttl = 3600
max_credential_ttl = 86400
static_users = [{ name = "bob", password = "pw" }]

[turn]
realm = "example.com"
listen = ["0.0.0.0:3478", "[::]:3478"]
relay_ip = "10.0.0.5"
relay_ipv6 = "2001:db8::5"
external_ip = "203.0.113.4/10.0.0.5"
public_host = "turn.example.com"
relay_port_min = 49152
relay_port_max = 65535
workers = 2
default_lifetime = 600
max_lifetime = 3600
max_allocation_age = 86400
nonce_lifetime = 600
user_quota = 10
total_quota = 10000
bandwidth_limit = 0
allow_peers = ["10.0.0.0/8"]
deny_peers = ["10.9.0.0/16", "2001:db8:bad::/48"]
http_listen = "127.0.0.1:9478"
""")
put("config_toml", "empty", "")
put("config_toml", "overrides", "turn.user_quota=4\nturn.realm=example.com\nauth.secrets=[\"a\"]\n")
put("config_toml", "array_of_tables", "[[auth.static_users]]\nname = \"alice\"\npassword = \"x\"\n")
put("config_toml", "bad_key", "[turn]\nrealm = \"x\"\nuser_qota = 3\n")

put("admin_body", "user", '{"name":"bob","password":"hunter2"}')
put("admin_body", "user_rest_form", '{"name":"1:x","password":"p"}')
put("admin_body", "api_key", '{"name":"janus@example.com"}')
put("admin_body", "ban", '{"network":"192.0.2.0/24","reason":"abuse","expires_in_seconds":3600}')
put("admin_body", "ban_host_bits", '{"network":"10.0.0.1/8"}')
put("admin_body", "secret", '{"secret":"0123456789abcdef","overlap_seconds":600}')
put("admin_body", "room", '"room-1:a.b_c"')

# turn_server: config byte, then records (ctrl, aux, len u16 BE, body).
ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND = 0x0003, 0x0004, 0x0008, 0x0009
SEND_INDICATION = 0x0016
REQUESTED_TRANSPORT, LIFETIME, CHANNEL_NUMBER = 0x0019, 0x000D, 0x000C
XOR_PEER_ADDRESS, DATA, REQUESTED_ADDRESS_FAMILY, EVEN_PORT = 0x0012, 0x0013, 0x0017, 0x0018
RESERVATION_TOKEN = 0x0022


def rec(ctrl, aux, body):
    return bytes([ctrl, aux]) + struct.pack(">H", len(body)) + body


def attr(t, v):
    return struct.pack(">HB", t, len(v)) + v


def signed(client, ty, tid, flags, *attrs, aux=0, advance=0):
    body = struct.pack(">HBB", ty, tid, flags) + b"".join(attrs)
    return rec(0x10 | client | (advance << 5), aux, body)


def peer(peer_idx, alloc_idx, payload):
    return rec(0x08, 0, bytes([(alloc_idx << 4) | peer_idx]) + payload)


UDP = attr(REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
binding = h(RFC5769["rfc5769_request"])

put("turn_server", "binding", b"\x00" + rec(0x00, 0, binding))
put("turn_server", "allocate_unauthenticated", b"\x00" + rec(0x00, 0, h(
    "000300082112a442 0102030405060708090a0b0c 00190004 11000000")))
put("turn_server", "full_session", b"\x00" + b"".join([
    signed(0, ALLOCATE, 1, 0x01, UDP, attr(LIFETIME, b"\x00\x00\x0e\x10")),
    signed(0, CREATE_PERMISSION, 2, 0x01, attr(XOR_PEER_ADDRESS, b"\x00"), attr(XOR_PEER_ADDRESS, b"\x01")),
    signed(0, CHANNEL_BIND, 3, 0x00, attr(CHANNEL_NUMBER, b"\x40\x00\x00\x00"), attr(XOR_PEER_ADDRESS, b"\x00")),
    rec(0x00, 0, h("4000000568656c6c6f000000")),
    peer(0, 0, b"to the client"),
    peer(1, 0, b"as a data indication"),
    signed(0, SEND_INDICATION, 4, 0x00, attr(XOR_PEER_ADDRESS, b"\x01"), attr(DATA, b"send me")),
    signed(0, REFRESH, 5, 0x00, attr(LIFETIME, b"\x00\x00\x02\x58"), advance=4),
    signed(0, REFRESH, 6, 0x01, attr(LIFETIME, b"\x00\x00\x00\x00")),
]))
put("turn_server", "rest_ipv6_deferred", b"\x00" + b"".join([
    signed(3, ALLOCATE, 7, 0x02, UDP, attr(REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00"),
           attr(EVEN_PORT, b"\x00"), aux=0x02),
    signed(3, ALLOCATE, 7, 0x02, UDP, attr(REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00")),
    signed(3, CREATE_PERMISSION, 8, 0x02, attr(XOR_PEER_ADDRESS, b"\x04")),
    peer(4, 0, b"v6 peer"),
    signed(3, ALLOCATE, 7, 0x02, UDP, aux=0x10),
]))
# EVEN-PORT with the R bit, then a second client takes the reserved port by token (a
# one-byte RESERVATION-TOKEN names the harness's first token), once deferred.
put("turn_server", "reservation", b"\x00" + b"".join([
    signed(0, ALLOCATE, 1, 0x00, UDP, attr(EVEN_PORT, b"\x80")),
    signed(1, ALLOCATE, 2, 0x02, UDP, attr(RESERVATION_TOKEN, b"\x00"), aux=0x02),
    signed(1, ALLOCATE, 2, 0x02, UDP, attr(RESERVATION_TOKEN, b"\x00")),
    signed(2, ALLOCATE, 3, 0x82, UDP, attr(RESERVATION_TOKEN, b"\x00")),
    signed(0, ALLOCATE, 1, 0x00, UDP, attr(EVEN_PORT, b"\x80"), advance=5),
]))
put("turn_server", "quota_and_expiry", b"\x20" + b"".join([
    signed(0, ALLOCATE, 1, 0x02, UDP),
    signed(1, ALLOCATE, 2, 0x02, UDP),
    signed(2, ALLOCATE, 3, 0x82, UDP),
    signed(4, ALLOCATE, 4, 0x00, UDP, aux=0x01),
    signed(0, REFRESH, 5, 0x22, advance=7),
    signed(1, CREATE_PERMISSION, 9, 0x46, attr(XOR_PEER_ADDRESS, b"\x02")),
]))

# JWTs: one signed with the harness's secret (so the accepting path is covered), and broken ones.
import base64, hashlib, hmac, json


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=b"fuzz-secret", alg="HS256"):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


put("jwt", "valid", jwt({"sub": "alice", "rooms": ["r1"], "exp": 4102444800}))
put("jwt", "expired", jwt({"sub": "bob", "exp": 1}))
put("jwt", "alg_none", jwt({"sub": "eve"}, alg="none"))
put("jwt", "claims", '{"sub":"carol","nbf":1795000000,"meta":{"name":"c"}}')
put("jwt", "two_parts", "eyJhbGciOiJIUzI1NiJ9.e30")
# A float claim serde_json reads back one ulp off (the harness compares floats loosely).
put("jwt", "float_claim", '{"iub":"c,arol","n+f":1793333000002038629943,"meta":{"name":"c`"}}')

put("signal_message", "offer", '{"type":"offer","sdp":"v=0\\r\\n","to":"p1"}')
put("signal_message", "candidate", '{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}')
put("signal_message", "message", '{"type":"message","data":{"x":[1,2]},"from":"spoof","seq":9}')
put("signal_message", "ping", '{"type":"ping"}')
put("signal_message", "bad_type", '{"type":7}')

put("ice_form", "form", b"\x01username=a+b%40c&ttl=60&service=turn")
put("ice_form", "json", b'\x00{"username":"alice","ttl":"600"}')
put("ice_form", "bad_escape", b"\x02key=%zz&%ff=%e2%82")

# TCP/TLS streams: [max-frame pick][8 read sizes] then the stream: a Binding request, padded
# ChannelData in RFC 8656's and RFC 5766's ranges, and another request, split oddly.
binding_req = h("000100002112a442" + "0b" * 12)
cd = b"\x40\x01\x00\x05hello\x00\x00\x00" + b"\x7f\xfe\x00\x00"
put("stream_framer", "mixed", b"\x01" + bytes([3, 17, 1, 40, 2, 9, 64, 5]) + binding_req + cd + binding_req)
put("stream_framer", "garbage", b"\x00" + bytes([255] * 8) + b"\x9e" * 256)
put("stream_framer", "too_long", b"\x02" + bytes([4] * 8) + b"\x40\x00\xff\xff" + b"x" * 40)

# tls_input: first bytes on the one TLS port (STUN, HTTP), and PEM files split by the first byte.
put("tls_input", "stun", binding_req)
put("tls_input", "http", b"GET / HTTP/1.1\r\nhost: callbox.test\r\n\r\n")
pem_cert = b"-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"
pem_key = b"-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n"
put("tls_input", "pem", bytes([len(pem_cert)]) + pem_cert + pem_key)

# signal_inbox: an instance's inbox entries in Redis, fields and values separated by NUL.
def inbox(*fields):
    return b"\0".join(f.encode() for f in fields)


put("signal_inbox", "text", inbox("r", "room-1", "p", "p-0123456789abcdef", "e", "1", "t",
                                  '{"seq":1,"type":"peer-joined","peer_id":"p-1","meta":{}}'))
put("signal_inbox", "close", inbox("r", "room-1", "p", "p-0123456789abcdef", "e", "2", "c",
                                   "4000 replaced by a resumed connection"))
put("signal_inbox", "ping", inbox("k", "1796700000000"))
