//! What the relay refuses and limits (issue 9, findings 2, 3, 4 and 6), against the real
//! binary on loopback: host services in the relay range, EVEN-PORT reservation loops,
//! reflection through unauthenticated answers, and REST usernames no mint of ours made.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use test_support::{CallboxProcess, TurnClient, metric};
use turn_proto::stun::{Class, Message, MessageBuilder, attr, method};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\n{extra}\n"
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn client(s: &CallboxProcess, user: &str) -> TurnClient {
    let (u, p) = mint(&Secret::new(s.secret()), user, now(), 600);
    TurnClient::new(s.udp_v4(), &u, &p, "callbox")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A UDP echo bound on a free port of the relay range, counting what it receives.
fn echo_in_relay_range() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = (25_000..30_000)
        .find_map(|p| UdpSocket::bind(("0.0.0.0", p)).ok())
        .expect("a free port in the relay range");
    let port = sock.local_addr().unwrap().port();
    let got = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut b) {
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send_to(&b[..n], from);
        }
    });
    (SocketAddr::from(([127, 0, 0, 1], port)), got)
}

fn send_indication(c: &TurnClient, peer: SocketAddr, data: &[u8]) {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::SEND, Class::Indication, &[5; 12]);
    b.add_xor_address(attr::XOR_PEER_ADDRESS, &peer)
        .add(attr::DATA, data);
    b.finish();
    c.sock.send_to(&buf, c.server).unwrap();
}

#[test]
fn a_host_service_in_the_relay_range_receives_nothing() {
    let s = CallboxProcess::start(BIN, &config(""));
    let (echo, got) = echo_in_relay_range();
    let mut a = client(&s, "alice");
    let mut b = client(&s, "bob");
    let a_relay = a
        .allocate()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("a relay address");
    let b_relay = b
        .allocate()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .expect("a relay address");
    // The service is not an allocation: 403 for a permission and a channel.
    assert_eq!(a.create_permission(&[echo]).code, Some(403));
    assert_eq!(a.channel_bind(0x4001, echo).code, Some(403));
    // Bob's allocation is: relay-to-relay works, both ways.
    assert_eq!(a.channel_bind(0x4002, b_relay).code, None);
    assert_eq!(b.create_permission(&[a_relay]).code, None);
    a.send_channel_data(0x4002, b"to bob");
    let data = b.recv().expect("bob gets alice's data");
    assert!(data.windows(6).any(|w| w == b"to bob"), "{data:?}");
    // With the permission for the relay's address in place, a Send indication to the
    // service's port is still refused.
    send_indication(&a, echo, b"to the host");
    a.send_channel_data(0x4002, b"to bob again");
    assert!(b.recv().is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        got.load(Ordering::Relaxed),
        0,
        "the host service received relayed data"
    );
    let (_, m) = s.http_get("/metrics");
    assert!(
        metric(&m, "callbox_turn_denied_peers_total").unwrap() >= 3.0,
        "{m}"
    );
}

#[test]
fn even_port_reservations_expire_on_a_timer_and_count_against_the_quota() {
    let s = CallboxProcess::start(BIN, &config("user_quota = 5\nreservation_lifetime = 2"));
    let pid = s.pid();
    let baseline = fds(pid);
    let reserve = |b: &mut MessageBuilder<'_>| {
        b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .add(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    };
    // Allocate with the R bit, then delete, in a loop: each round leaves a reservation
    // holding a unit of the quota, so the loop stops at the quota, not at the process's
    // descriptors.
    let mut codes = Vec::new();
    for _ in 0..10 {
        let mut c = client(&s, "looper");
        let r = c.call(method::ALLOCATE, &reserve);
        codes.push(r.code);
        if r.class == Class::Success {
            assert!(
                Message::parse(&r.bytes)
                    .unwrap()
                    .get(attr::RESERVATION_TOKEN)
                    .is_some()
            );
            assert_eq!(c.refresh(0).class, Class::Success);
        }
    }
    assert_eq!(&codes[..4], &[None; 4], "{codes:?}");
    assert!(codes[4..].iter().all(|c| *c == Some(486)), "{codes:?}");
    assert_eq!(fds(pid), baseline + 4, "one socket per reservation");
    // No Allocate comes: the timer closes them and gives the quota back.
    let start = Instant::now();
    while fds(pid) > baseline {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reservations outlived their lifetime"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(start.elapsed() >= Duration::from_millis(500));
    let mut c = client(&s, "looper");
    assert_eq!(c.call(method::ALLOCATE, &reserve).class, Class::Success);
}

#[test]
fn unauthenticated_answers_are_limited_per_source_and_carry_no_software() {
    let s = CallboxProcess::start(
        BIN,
        &config("workers = 1\nunauthenticated_rate = 5\nunauthenticated_burst = 10"),
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut request = Vec::new();
    let b = MessageBuilder::new(&mut request, method::BINDING, Class::Request, &[1; 12]);
    b.finish();
    let start = Instant::now();
    for _ in 0..200 {
        sock.send_to(&request, s.udp_v4()).unwrap();
    }
    let mut answers = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        answers.push(buf[..n].to_vec());
    }
    let allowed = 10 + 5 * (start.elapsed().as_secs() as usize + 1);
    assert!(
        (10..=allowed).contains(&answers.len()),
        "{} answers to 200 requests",
        answers.len()
    );
    let m = Message::parse(&answers[0]).unwrap();
    assert!(m.get(attr::SOFTWARE).is_none(), "SOFTWARE is off by default");
    // The amplification left: a 20-byte Binding request gets this many bytes back.
    assert!(answers[0].len() <= 32, "{} bytes", answers[0].len());
    let metrics =
        s.metrics_when(|m| metric(m, "callbox_turn_unauthenticated_drops_total").is_some_and(|v| v >= 150.0));
    assert!(metric(&metrics, "callbox_turn_unauthenticated_drops_total").unwrap() >= 150.0);

    // And a bare 20-byte Allocate gets a 401 of 92 bytes (docs/turn.md, security model).
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut allocate = Vec::new();
    MessageBuilder::new(&mut allocate, method::ALLOCATE, Class::Request, &[2; 12]).finish();
    assert_eq!(allocate.len(), 20);
    let fresh = CallboxProcess::start(BIN, &config(""));
    other.send_to(&allocate, fresh.udp_v4()).unwrap();
    let n = other.recv(&mut buf).unwrap();
    assert_eq!(n, 92, "401 size");

    let with_software = CallboxProcess::start(BIN, &config("software = true"));
    sock.send_to(&request, with_software.udp_v4()).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    let m = Message::parse(&buf[..n]).unwrap();
    assert!(m.get(attr::SOFTWARE).unwrap().starts_with(b"callbox "));
}

#[test]
fn a_rest_username_expiring_beyond_the_longest_mint_is_refused() {
    let s = CallboxProcess::start(
        BIN,
        &config("[auth]\ncredential_ttl = 600\nmax_credential_ttl = 3600\nclock_skew = 60"),
    );
    let secret = Secret::new(s.secret());
    let (u, p) = mint(&secret, "alice", now(), 3600 + 30);
    assert_eq!(
        TurnClient::new(s.udp_v4(), &u, &p, "callbox").allocate().class,
        Class::Success
    );
    for ttl in [3600 + 120, 10 * 365 * 86_400] {
        let (u, p) = mint(&secret, "alice", now(), ttl);
        assert_eq!(
            TurnClient::new(s.udp_v4(), &u, &p, "callbox").allocate().code,
            Some(401),
            "{ttl}"
        );
    }
    let far = format!("{}:alice", u64::MAX);
    let password = callbox_core::credentials::rest_password(&secret, &far);
    assert_eq!(
        TurnClient::new(s.udp_v4(), &far, &password, "callbox")
            .allocate()
            .code,
        Some(401)
    );
    let m = s.metrics_when(|m| {
        metric(m, "callbox_turn_auth_failures_total{reason=\"expiry_too_far\"}").is_some_and(|v| v >= 3.0)
    });
    assert!(metric(&m, "callbox_turn_auth_failures_total{reason=\"expiry_too_far\"}").unwrap() >= 3.0);
}
