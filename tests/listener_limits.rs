//! Descriptor exhaustion without credentials (issue 9, finding 1), against the real
//! binary started with a soft open-files limit of 1024: idle connections, slowloris and
//! a full listener must not take `/healthz`, new WebSockets or TURN Allocates with them.
//! Loopback only; 127.0.0.2 and up are other clients as far as per-address limits go.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use test_support::ws::WsClient;
use test_support::{CallboxProcess, TurnClient, http_get, http_get_from, metric};
use turn_proto::stun::Class;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(signal: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\ntotal_quota = 100\n[signal]\n{signal}\n"
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from the local address `from`, sending nothing.
fn idle_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// (soft, hard) of "Max open files" in /proc/PID/limits.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut f = line.split_whitespace().skip(3);
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// `/healthz` answers 200 to a client at 127.0.0.2 (not the one holding connections).
fn healthy(addr: SocketAddr) -> bool {
    http_get_from(ip("127.0.0.2"), addr, "/healthz").0 == 200
}

fn allocate_from(s: &CallboxProcess, from: &str) -> Class {
    let (u, p) = mint(&Secret::new(s.secret()), "alice", now(), 600);
    let bind: SocketAddr = format!("{from}:0").parse().unwrap();
    let mut c = TurnClient::new_from(bind, s.udp_v4(), &u, &p, "callbox");
    let r = c.allocate();
    let _ = c.refresh(0);
    r.class
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_caps_leave_health_websockets_and_allocates_working() {
    // The test itself holds more than 1024 sockets.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let s = CallboxProcess::start_with_soft_nofile(
        BIN,
        &config("max_connections_per_address = 50\nmax_connections = 300\nheader_timeout_ms = 8000"),
        1024,
    );
    let pid = s.pid();
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the soft open-files limit is raised to the hard one");
    assert_ne!(
        soft, "1024",
        "the hard limit here is above 1024 (else this test shows nothing)"
    );
    let signal = s.signal.unwrap();
    let baseline = fds(pid);

    // 1,100 idle connections from one address: 50 are held, the rest are refused at once.
    let mut idle: Vec<TcpStream> = (0..1100).map(|_| idle_from(ip("127.0.0.1"), signal)).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fds(pid) < baseline + 50 + 80,
        "descriptors held: {} (baseline {baseline})",
        fds(pid)
    );
    // Everything still answers for another client.
    assert!(healthy(signal));
    assert!(healthy(s.admin.unwrap()));
    assert!(healthy(s.http.unwrap()));
    let ws = WsClient::connect_from(ip("127.0.0.2"), signal, "room=still-up", &[])
        .await
        .expect("a WebSocket from another address");
    assert_eq!(allocate_from(&s, "127.0.0.2"), Class::Success);
    // The listener's total cap: six more addresses fill it (300 in all, the WebSocket and
    // the first 50 included); past it signal answers 503 and is closed, while the relay,
    // admin and the turn role's health still work.
    for a in 3..9 {
        let from = ip(&format!("127.0.0.{a}"));
        idle.extend((0..50).map(|_| idle_from(from, signal)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = http_get_from(ip("127.0.0.30"), signal, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server-busy"), "{body}");
    assert!(healthy(s.admin.unwrap()));
    assert!(healthy(s.http.unwrap()));
    assert_eq!(allocate_from(&s, "127.0.0.20"), Class::Success);
    // The header timeout closes the idle ones; the WebSocket stays.
    let start = Instant::now();
    while !healthy(signal) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "idle connections were never cut"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every one of them is closed by the server within the timeout (8 s) of its accept.
    for c in idle.iter_mut() {
        assert!(
            closed(c, Duration::from_secs(9)),
            "an idle connection outlived the header timeout"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(15));
    let (_, m) = http_get_from(ip("127.0.0.2"), signal, "/metrics");
    assert!(
        metric(
            &m,
            "callbox_http_connections_refused_total{listener=\"signal\",cap=\"per_address\"}"
        )
        .unwrap()
            >= 1000.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "callbox_http_connections_refused_total{listener=\"signal\",cap=\"total\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&m, "callbox_http_header_timeouts_total{listener=\"signal\"}").unwrap() >= 250.0);
    assert_eq!(
        metric(&m, "callbox_http_connections{listener=\"signal\"}"),
        Some(2.0),
        "{m}"
    );
    drop(ws);
}

#[test]
fn slowloris_is_cut_at_the_header_timeout() {
    let s = CallboxProcess::start(BIN, &config("header_timeout_ms = 1500"));
    let signal = s.signal.unwrap();
    let mut slow: Vec<TcpStream> = (0..20).map(|_| idle_from(ip("127.0.0.1"), signal)).collect();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let start = Instant::now();
    let mut cut = vec![None; slow.len()];
    // One header byte every 250 ms from each: never a whole head.
    for byte in request.iter().copied() {
        for (n, c) in slow.iter_mut().enumerate() {
            if cut[n].is_none() && (c.write_all(&[byte]).is_err() || closed(c, Duration::from_millis(5))) {
                cut[n] = Some(start.elapsed());
            }
        }
        if cut.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for t in &cut {
        let t = t.expect("every slow connection is cut");
        assert!(
            t >= Duration::from_millis(1400) && t < Duration::from_secs(4),
            "cut after {t:?}"
        );
    }
    let (_, m) = http_get(signal, "/metrics");
    assert!(
        metric(&m, "callbox_http_header_timeouts_total{listener=\"signal\"}").unwrap() >= 20.0,
        "{m}"
    );
}

/// Whether the server closed `c` (reading what it sent first), waiting up to `wait`.
fn closed(c: &mut TcpStream, wait: Duration) -> bool {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 512];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}
