//! SSRF through the relay, exhaustively (PROTOCOL.md section 3, docs/security.md): every
//! denied spelling of a peer address (IPv4 ranges, IPv6 ranges, IPv4-mapped,
//! IPv4-compatible, 6to4, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, Teredo, the server's
//! own addresses on every port class) is refused through CreatePermission and ChannelBind
//! (403) and relays nothing through a Send indication, for clients over UDP, TCP and TLS.
//! Allowed controls next to each class prove the refusals come from the policy.
//! Loopback only; run inside a namespace that has only `lo` (see scripts/test.sh).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;
use test_support::tls::TestCa;
use test_support::{CallboxProcess, TurnClient, metric};
use turn_proto::stun::{Class, MessageBuilder, attr, method};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
const NAME: &str = "turn.test";

/// Denied by the default policy, reached from an IPv4 allocation.
const DENIED_V4: &[&str] = &[
    "0.0.0.1:9",
    "10.1.2.3:9",
    "100.64.0.1:9",
    "127.0.0.1:9",
    "127.255.255.254:9",
    "169.254.169.254:80",
    "172.16.0.1:9",
    "172.31.255.255:9",
    "192.0.0.1:9",
    "192.168.1.1:9",
    "198.18.0.1:9",
    "224.0.0.1:9",
    "239.255.255.250:1900",
    "240.0.0.1:9",
    "255.255.255.255:9",
    // Port 0 is never a peer, whatever the address.
    "198.51.100.1:0",
];

/// Denied by the default policy, reached from an IPv6 allocation.
const DENIED_V6: &[&str] = &[
    "[::1]:9",
    "[::]:9",
    // IPv4-mapped and IPv4-compatible spellings of denied IPv4 addresses.
    "[::ffff:10.0.0.1]:9",
    "[::ffff:127.0.0.1]:9",
    "[::ffff:169.254.169.254]:80",
    "[::10.0.0.1]:9",
    "[::127.0.0.1]:9",
    "[::169.254.169.254]:80",
    // 6to4 of denied IPv4 addresses.
    "[2002:a00:1::1]:9",
    "[2002:7f00:1::]:9",
    "[2002:a9fe:a9fe::1]:80",
    // NAT64, the well-known and the local-use prefixes (even of a public IPv4 address).
    "[64:ff9b::a9fe:a9fe]:80",
    "[64:ff9b::c633:6401]:9",
    "[64:ff9b:1::a9fe:a9fe]:80",
    // Teredo.
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:9",
    // Unique local, link-local, site-local, multicast.
    "[fc00::1]:9",
    "[fd12:3456::1]:9",
    "[fe80::1]:9",
    "[fec0::1]:9",
    "[ff02::1]:9",
];

/// Public addresses, allowed by the default policy (the controls).
const ALLOWED: &[&str] = &["198.51.100.1:9", "[2001:db8::1]:9", "[2002:c633:6401::1]:9"];

fn server(ca: &TestCa, dir: &std::path::Path, extra: &str) -> CallboxProcess {
    let (cert, key) = ca.write_server_files(dir, &[NAME]);
    CallboxProcess::start(
        BIN,
        &format!(
            "[turn]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\n\
             relay_ip = \"127.0.0.1\"\nrelay_ipv6 = \"::1\"\nrelay_port_min = 21000\nrelay_port_max = 21999\n{extra}\n\
             [tls]\nlisten = []\nhttp_listen = []\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

fn client(s: &CallboxProcess, ca: &TestCa, t: Transport, user: &str) -> TurnClient {
    let (u, p) = mint(&Secret::new(s.secret()), user, unix_now(), 600);
    match t {
        Transport::Udp => TurnClient::new(s.udp_v4(), &u, &p, "callbox"),
        Transport::Tcp => TurnClient::tcp(s.udp_v4(), &u, &p, "callbox"),
        Transport::Tls => {
            let tls = test_support::tls::connect(s.turn_tls[0], NAME, ca.client_config(&[])).expect("TLS");
            TurnClient::over(Box::new(tls), s.turn_tls[0], &u, &p, "callbox")
        }
    }
}

fn send_indication(c: &TurnClient, peer: SocketAddr) {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::SEND, Class::Indication, &[5; 12]);
    b.add_xor_address(attr::XOR_PEER_ADDRESS, &peer)
        .add(attr::DATA, b"ssrf");
    b.add_fingerprint();
    b.finish();
    c.send_raw(&buf);
}

fn to_peer(s: &CallboxProcess) -> f64 {
    metric(
        &s.http_get("/metrics").1,
        "callbox_turn_relayed_packets_total{direction=\"to_peer\"}",
    )
    .unwrap_or(0.0)
}

/// A peer and the codes its CreatePermission and ChannelBind got (`None`: success).
type Answer = (SocketAddr, Option<u16>, Option<u16>);

/// Each peer through CreatePermission, ChannelBind and Send on one allocation per family:
/// the codes answered (`None` for success), and the packets relayed by the Sends.
fn probe(s: &CallboxProcess, ca: &TestCa, t: Transport, peers: &[SocketAddr]) -> (Vec<Answer>, f64) {
    let mut v4 = client(s, ca, t, "ssrf4");
    assert_eq!(v4.allocate().code, None, "{t:?}: IPv4 allocation");
    let mut v6 = client(s, ca, t, "ssrf6");
    assert_eq!(v6.allocate_v6().code, None, "{t:?}: IPv6 allocation");
    let mut out = Vec::new();
    let relayed0 = to_peer(s);
    for (channel, &peer) in (0x4000..).zip(peers) {
        let c = if peer.is_ipv4() { &mut v4 } else { &mut v6 };
        let perm = c.create_permission(&[peer]).code;
        let bind = c.channel_bind(channel, peer).code;
        send_indication(c, peer);
        out.push((peer, perm, bind));
    }
    // A Binding round trip on each: every Send before it has been handled.
    for c in [&mut v4, &mut v6] {
        assert!(
            c.request(method::BINDING, &|_| {}, false).is_some(),
            "{t:?}: Binding"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    (out, to_peer(s) - relayed0)
}

fn parse(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn every_denied_form_is_refused_over_udp_tcp_and_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let s = server(&ca, dir.path(), "");
    let denied: Vec<SocketAddr> = parse(DENIED_V4).into_iter().chain(parse(DENIED_V6)).collect();
    for t in TRANSPORTS {
        let (answers, relayed) = probe(&s, &ca, t, &denied);
        for (peer, perm, bind) in answers {
            assert_eq!(
                (perm, bind),
                (Some(403), Some(403)),
                "{t:?}: {peer} was not refused"
            );
        }
        assert_eq!(relayed, 0.0, "{t:?}: a Send to a denied peer was relayed");
        // The controls: public addresses get their permission and channel, and the Sends
        // to them are relayed (this namespace has no route, so the kernel drops them).
        let (answers, relayed) = probe(&s, &ca, t, &parse(ALLOWED));
        for (peer, perm, bind) in answers {
            assert_eq!(
                (perm, bind),
                (None, None),
                "{t:?}: the control {peer} was refused"
            );
        }
        assert_eq!(
            relayed,
            ALLOWED.len() as f64,
            "{t:?}: the controls' Sends were not relayed"
        );
    }
}

#[test]
fn the_servers_own_addresses_are_refused_on_every_port_class_even_when_allowed() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    // Loopback opened by `allow_peers`, as an operator testing on one machine would: the
    // server's own listeners stay refused all the same.
    let s = server(&ca, dir.path(), "allow_peers = [\"127.0.0.0/8\", \"::1/128\"]\n");
    let udp = s.udp_v4().port();
    let own_ports = [
        ("turn udp and tcp", udp),
        ("turn tls", s.turn_tls[0].port()),
        ("metrics", s.http.unwrap().port()),
        ("signal", s.signal.unwrap().port()),
        ("admin", s.admin.unwrap().port()),
        // A relay port no allocation holds.
        ("relay range", 21999),
    ];
    let mut own = Vec::new();
    for (_, port) in own_ports {
        for ip in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "::1",
        ] {
            own.push(SocketAddr::new(ip.parse().unwrap(), port));
        }
    }
    // The controls: a plain service on loopback (allowed here), and the relay address of
    // another live allocation (two peers relayed by the same server).
    let service = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (u, p) = mint(&Secret::new(s.secret()), "other", unix_now(), 600);
    let mut other = TurnClient::new(s.udp_v4(), &u, &p, "callbox");
    let relayed_other = other
        .allocate()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("a relayed address");
    let controls = [service.local_addr().unwrap(), relayed_other];
    for t in TRANSPORTS {
        let (answers, relayed) = probe(&s, &ca, t, &own);
        for ((peer, perm, bind), (class, _)) in answers
            .iter()
            .zip(own_ports.iter().flat_map(|c| std::iter::repeat_n(c, 5)))
        {
            assert_eq!(
                (*perm, *bind),
                (Some(403), Some(403)),
                "{t:?}: own {class} address {peer} was not refused"
            );
        }
        assert_eq!(relayed, 0.0, "{t:?}: a Send to the server itself was relayed");
        let (answers, relayed) = probe(&s, &ca, t, &controls);
        for (peer, perm, bind) in answers {
            assert_eq!(
                (perm, bind),
                (None, None),
                "{t:?}: the control {peer} was refused"
            );
        }
        assert_eq!(relayed, 2.0, "{t:?}: the controls' Sends were not relayed");
    }
}
