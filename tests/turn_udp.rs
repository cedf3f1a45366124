//! The relay over UDP, end to end: the real `callbox` binary against coturn's own client
//! tools (`turnutils_stunclient`, `turnutils_uclient`, `turnutils_peer`) and our test client.
//! Loopback only; run inside a namespace that has only `lo` (see scripts/test.sh).

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use test_support::{CallboxProcess, TurnClient, coturn_tool, free_udp_port_pair, metric, run_with_timeout};
use turn_proto::stun::{Class, attr};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\n{extra}\n"
    )
}

const ALLOW_LOOPBACK: &str = "allow_peers = [\"127.0.0.1/32\"]\n";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn uclient(server: SocketAddr, secret: &str, peer_port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args([
        "-c",
        "-p",
        &server.port().to_string(),
        "-W",
        secret,
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port.to_string(),
    ])
    .args(extra)
    .arg(server.ip().to_string());
    run_with_timeout(&mut cmd, Duration::from_secs(90))
}

fn sent_and_received(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="))
        .unwrap_or("");
    let num = |k: &str| {
        line.split(k)
            .nth(1)
            .and_then(|s| {
                s.trim_start_matches('=')
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    (num("tot_send_msgs"), num("tot_recv_msgs"))
}

#[test]
fn stunclient_gets_a_binding() {
    let server = CallboxProcess::start(BIN, &config(""));
    let addr = server.udp_v4();
    let mut cmd = Command::new(coturn_tool("turnutils_stunclient"));
    cmd.args(["-p", &addr.port().to_string(), "127.0.0.1"]);
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
    let (status, body) = server.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metric(&body, "callbox_stun_binding_requests_total").unwrap() >= 1.0,
        "{body}"
    );
}

#[test]
fn uclient_relays_through_us_without_loss() {
    let server = CallboxProcess::start(BIN, &config(ALLOW_LOOPBACK));
    let (port, _peer) = test_support::turnutils_peer();
    // ChannelData with RTCP pairs (uclient's default: EVEN-PORT reservations), ChannelData
    // without pairs (-c), and Send/Data indications (-s).
    for mode in [&[][..], &["-c"][..], &["-c", "-s"][..]] {
        let mut args = vec!["-m", "4", "-n", "200", "-l", "200", "-z", "5"];
        args.extend_from_slice(mode);
        let (code, out) = uclient(server.udp_v4(), &server.secret(), port, &args);
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(test_support::uclient_lost_packets(&out), Some(0), "{out}");
        let (sent, received) = sent_and_received(&out);
        assert_eq!((sent, received), (800, 800), "{out}");
    }
    let (_, body) = server.http_get("/metrics");
    assert!(
        metric(&body, "callbox_turn_relayed_packets_total{direction=\"to_peer\"}").unwrap() >= 1600.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "callbox_turn_relayed_packets_total{direction=\"to_client\"}"
        )
        .unwrap()
            >= 1600.0,
        "{body}"
    );
    // uclient ends with Refresh lifetime 0: the closed events carry the traffic.
    assert!(
        server.wait_for_output("allocation closed", Duration::from_secs(5)),
        "{}",
        server.output()
    );
    assert!(
        server.output().contains("bytes_to_peer=40000"),
        "{}",
        server.output()
    );
}

#[test]
fn default_policy_refuses_loopback_peer_with_403() {
    let server = CallboxProcess::start(BIN, &config(""));
    let (port, _peer) = test_support::turnutils_peer();
    let (_, out) = uclient(server.udp_v4(), &server.secret(), port, &["-m", "1", "-n", "10"]);
    assert!(out.contains("error 403"), "{out}");
    assert_ne!(
        test_support::uclient_lost_packets(&out),
        Some(0),
        "nothing may be relayed: {out}"
    );
    let (_, body) = server.http_get("/metrics");
    assert!(
        metric(&body, "callbox_turn_denied_peers_total").unwrap() >= 1.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "callbox_turn_relayed_packets_total{direction=\"to_peer\"}"),
        Some(0.0)
    );

    // Our own client: cloud metadata, private ranges and the server itself are refused too.
    let (u, p) = mint(&Secret::new(server.secret()), "alice", now(), 600);
    let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
    assert_eq!(c.allocate().code, None);
    for peer in [
        "169.254.169.254:80",
        "10.0.0.1:9",
        "192.168.0.1:9",
        "[::ffff:127.0.0.1]:9",
        "127.0.0.1:9",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        if peer.is_ipv4() {
            assert_eq!(c.create_permission(&[peer]).code, Some(403), "{peer}");
            assert_eq!(c.channel_bind(0x4000, peer).code, Some(403), "{peer}");
        } else {
            assert_eq!(
                c.create_permission(&[peer]).code,
                Some(443),
                "family mismatch first: {peer}"
            );
        }
    }
}

#[test]
fn expired_forged_and_wrong_credentials_are_refused() {
    let server = CallboxProcess::start(BIN, &config(ALLOW_LOOPBACK));
    let secret = Secret::new(server.secret());
    // Expired REST credential.
    let (u, p) = mint(&secret, "alice", now() - 100, 10);
    let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
    let r = c.allocate();
    assert_eq!((r.class, r.code), (Class::Error, Some(401)));
    // Forged password.
    let (u, _) = mint(&secret, "alice", now(), 600);
    let mut c = TurnClient::new(server.udp_v4(), &u, "Zm9yZ2Vk", "callbox");
    assert_eq!(c.allocate().code, Some(401));
    // Minted with another secret (what coturn's formula with a wrong secret gives).
    let (u, p) = mint(&Secret::new("not-the-secret"), "alice", now(), 600);
    let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
    assert_eq!(c.allocate().code, Some(401));
    // A good one, then another username on the same 5-tuple: 441.
    let (u, p) = mint(&secret, "alice", now(), 600);
    let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
    let r = c.allocate();
    assert_eq!(r.code, None);
    assert!(r.xor_address(attr::XOR_RELAYED_ADDRESS).is_some());
    let (u2, p2) = mint(&secret, "mallory", now(), 600);
    c.username = u2.clone();
    c.key = callbox_core::credentials::long_term_key(&u2, "callbox", &p2);
    assert_eq!(c.refresh(600).code, Some(441));
    // coturn's client with a wrong secret cannot allocate.
    let port = free_udp_port_pair();
    let (code, out) = uclient(server.udp_v4(), "wrong-secret", port, &["-m", "1", "-n", "5"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let body = server.metrics_when(|b| {
        metric(b, "callbox_turn_auth_failures_total{reason=\"expired\"}").unwrap_or(0.0) >= 1.0
    });
    assert!(
        metric(&body, "callbox_turn_auth_failures_total{reason=\"expired\"}").unwrap() >= 1.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "callbox_turn_auth_failures_total{reason=\"bad_integrity\"}"
        )
        .unwrap()
            >= 1.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "callbox_turn_auth_failures_total{reason=\"wrong_credentials\"}"
        )
        .unwrap()
            >= 1.0,
        "{body}"
    );
}

#[test]
fn static_users_and_rotated_secrets() {
    let server = CallboxProcess::start(
        BIN,
        &config(
            "[auth]\nsecrets = [\"new-secret\", \"old-secret\"]\nstatic_users = [{ name = \"bob\", password = \"bobpw\" }]\n",
        ),
    );
    for secret in ["new-secret", "old-secret"] {
        let (u, p) = mint(&Secret::new(secret), "alice", now(), 600);
        assert_eq!(
            TurnClient::new(server.udp_v4(), &u, &p, "callbox")
                .allocate()
                .code,
            None,
            "{secret}"
        );
    }
    assert_eq!(
        TurnClient::new(server.udp_v4(), "bob", "bobpw", "callbox")
            .allocate()
            .code,
        None
    );
    assert_eq!(
        TurnClient::new(server.udp_v4(), "bob", "nope", "callbox")
            .allocate()
            .code,
        Some(401)
    );
}

#[test]
fn quotas_per_user_and_total() {
    let server = CallboxProcess::start(BIN, &config("user_quota = 2\ntotal_quota = 3\n"));
    let secret = Secret::new(server.secret());
    let codes: Vec<Option<u16>> = (0..3)
        .map(|_| {
            let (u, p) = mint(&secret, "alice", now(), 600);
            TurnClient::new(server.udp_v4(), &u, &p, "callbox")
                .allocate()
                .code
        })
        .collect();
    assert_eq!(codes, [None, None, Some(486)]);
    let mut clients = Vec::new();
    let codes: Vec<Option<u16>> = (0..2)
        .map(|i| {
            let (u, p) = mint(&secret, &format!("user{i}"), now(), 600);
            let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
            let code = c.allocate().code;
            clients.push(c);
            code
        })
        .collect();
    assert_eq!(codes, [None, Some(508)]);
    // Freeing one (Refresh lifetime 0) makes room again.
    assert_eq!(clients[0].refresh(0).code, None);
    let (u, p) = mint(&secret, "user9", now(), 600);
    assert_eq!(
        TurnClient::new(server.udp_v4(), &u, &p, "callbox")
            .allocate()
            .code,
        None
    );
    let body = server.metrics_when(|b| {
        metric(b, "callbox_turn_quota_rejections_total{quota=\"user\"}") == Some(1.0)
            && metric(b, "callbox_turn_quota_rejections_total{quota=\"total\"}") == Some(1.0)
    });
    assert_eq!(
        metric(&body, "callbox_turn_quota_rejections_total{quota=\"user\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "callbox_turn_quota_rejections_total{quota=\"total\"}"),
        Some(1.0),
        "{body}"
    );
}

#[test]
fn channel_data_both_ways_and_lifetime_zero() {
    let server = CallboxProcess::start(BIN, &config(ALLOW_LOOPBACK));
    let (u, p) = mint(&Secret::new(server.secret()), "alice", now(), 600);
    let mut c = TurnClient::new(server.udp_v4(), &u, &p, "callbox");
    let r = c.allocate();
    let relay = r.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip().to_string(), "127.0.0.1");
    assert_eq!(r.lifetime(), Some(600));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(c.channel_bind(0x4000, peer_addr).code, None);
    for i in 0..100u32 {
        c.send_channel_data(0x4000, &i.to_be_bytes());
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!((&buf[..n], from), (&i.to_be_bytes()[..], relay));
        peer.send_to(b"pong", relay).unwrap();
        let back = c.recv().expect("client receives");
        assert_eq!(back, [0x40, 0x00, 0, 4, b'p', b'o', b'n', b'g']);
    }
    // A peer on an address without a permission cannot reach the client (permissions are
    // per IP address, so the stranger uses another loopback address).
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(b"spam", relay).unwrap();
    c.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(c.recv().is_none());
    c.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = c.refresh(0);
    assert_eq!((r.code, r.lifetime()), (None, Some(0)));
    assert!(server.wait_for_output("allocation closed", Duration::from_secs(5)));
    let (_, body) = server.http_get("/metrics");
    assert_eq!(metric(&body, "callbox_turn_allocations"), Some(0.0), "{body}");
    // The allocation's history reaches the store in the state directory within a second.
    let db = server.state_dir.path().join("callbox.db");
    let mut rows = Vec::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        let store = callbox_store::Store::open(&db).unwrap();
        rows = store.allocation_history(0, u64::MAX, 10).unwrap();
        if rows.first().is_some_and(|r| r.ended_at.is_some()) {
            break;
        }
    }
    let r = rows.first().expect("a history row");
    assert_eq!(
        (r.username.as_str(), r.relay.clone()),
        (u.as_str(), relay.to_string())
    );
    assert_eq!(r.close_reason.as_deref(), Some("deleted"));
    assert_eq!((r.packets_to_peer, r.bytes_to_peer), (100, 400));
    assert_eq!((r.packets_to_client, r.bytes_to_client), (100, 400));
}

#[test]
fn ipv6_relay_on_loopback() {
    let server = CallboxProcess::start(
        BIN,
        "[turn]\nlisten = [\"[::1]:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_ipv6 = \"::1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"::1/128\"]\n",
    );
    let addr = *server.udp.iter().find(|a| a.is_ipv6()).expect("IPv6 listener");
    let (u, p) = mint(&Secret::new(server.secret()), "alice", now(), 600);
    let mut c = TurnClient::new(addr, &u, &p, "callbox");
    let r = c.allocate_v6();
    assert_eq!(r.code, None);
    let relay = r.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip().to_string(), "::1");
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(c.channel_bind(0x4001, peer.local_addr().unwrap()).code, None);
    c.send_channel_data(0x4001, b"six");
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"six"[..], relay));
    // IPv4 peers on an IPv6 relay: 443.
    assert_eq!(
        c.create_permission(&["127.0.0.1:9".parse().unwrap()]).code,
        Some(443)
    );
}

#[test]
fn unauthenticated_flood_leaves_memory_flat() {
    // The per-source answer limit is off here: every forged request must reach the
    // authentication code, which is what must not grow (the limit has its own test).
    let server = CallboxProcess::start(BIN, &config("unauthenticated_rate = 0"));
    let addr = server.udp_v4();
    let socks: Vec<UdpSocket> = (0..64).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let (u, _) = mint(&Secret::new("x"), "flood", now(), 600);
    let key = callbox_core::credentials::long_term_key(&u, "callbox", "forged");
    let send_round = |round: u32| {
        for (i, s) in socks.iter().enumerate() {
            // Allocate without credentials, with forged ones, a bogus nonce, junk and ChannelData.
            let mut buf = Vec::new();
            let mut b = turn_proto::stun::MessageBuilder::new(
                &mut buf,
                turn_proto::stun::method::ALLOCATE,
                Class::Request,
                &[(round % 251) as u8, i as u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            );
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                .add(attr::USERNAME, u.as_bytes())
                .add(attr::REALM, b"callbox")
                .add(attr::NONCE, format!("{round:036}").as_bytes())
                .add_integrity(&key);
            b.finish();
            let _ = s.send_to(&buf, addr);
            let _ = s.send_to(&[0x40, 0, 0, 4, 1, 2, 3, 4], addr);
            let _ = s.send_to(&[0xff; 40], addr);
        }
    };
    for r in 0..200 {
        send_round(r);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = server.rss_kib();
    for r in 200..1200 {
        send_round(r);
        if r % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = server.rss_kib();
    let (_, body) = server.http_get("/metrics");
    assert_eq!(metric(&body, "callbox_turn_allocations"), Some(0.0));
    assert!(
        metric(&body, "callbox_turn_auth_failures_total{reason=\"stale_nonce\"}").unwrap() > 1000.0,
        "{body}"
    );
    // 64,000 forged Allocates and 128,000 junk datagrams later: no growth beyond noise.
    assert!(after < before + 2048, "RSS grew from {before} KiB to {after} KiB");
}

#[test]
fn external_ip_is_advertised() {
    let server = CallboxProcess::start(BIN, &config("external_ip = \"203.0.113.10/127.0.0.1\"\n"));
    let (u, p) = mint(&Secret::new(server.secret()), "alice", now(), 600);
    let r = TurnClient::new(server.udp_v4(), &u, &p, "callbox").allocate();
    let relay = r.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.ip().to_string(), "203.0.113.10");
}

#[test]
fn health_endpoints_and_graceful_stop() {
    let server = CallboxProcess::start(BIN, &config(""));
    assert_eq!(server.http_get("/healthz").0, 200);
    assert_eq!(server.http_get("/readyz").0, 200);
    let (status, body) = server.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE callbox_turn_allocations gauge"), "{body}");
    let output = server.output();
    assert_eq!(server.terminate(), Some(0), "{output}");
}
