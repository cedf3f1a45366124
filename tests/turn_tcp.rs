//! The relay over TCP (RFC 8656 section 12), end to end: coturn's `turnutils_uclient -t`
//! relays through the real binary, and bad streams are closed without touching others.
//! Loopback only; run inside a namespace that has only `lo` (see scripts/test.sh).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::{CallboxProcess, coturn_tool, metric, run_with_timeout};
use turn_proto::stun::{Class, Message, MessageBuilder, attr, method};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

fn config(extra: &str) -> String {
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n{extra}\n"
    )
}

fn uclient_tcp(server: SocketAddr, secret: &str, peer_port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args(["-t", "-p", &server.port().to_string(), "-W", secret])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
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
            .and_then(|r| {
                r.trim_start_matches('=')
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (num("tot_send_msgs"), num("tot_recv_msgs"))
}

fn binding_request() -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, &[9; 12]);
    b.add_fingerprint();
    b.finish();
    buf
}

/// Reads until `n` bytes arrived or the stream ends.
fn read_exact_or_eof(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut out[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    out.truncate(got);
    out
}

/// True when the server closed `s` within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn tcp_metric(server: &CallboxProcess, name: &str) -> f64 {
    let (_, body) = server.http_get("/metrics");
    metric(&body, name).unwrap_or_else(|| panic!("{name} in {body}"))
}

#[test]
fn uclient_relays_through_us_over_tcp_without_loss() {
    let server = CallboxProcess::start(BIN, &config(""));
    let (port, _peer) = test_support::turnutils_peer();
    // ChannelData (padded on the stream) and Send/Data indications (-s).
    for mode in [&[][..], &["-s"][..]] {
        let mut args = vec!["-c", "-m", "4", "-n", "200", "-l", "171", "-z", "5"];
        args.extend_from_slice(mode);
        let (code, out) = uclient_tcp(server.udp_v4(), &server.secret(), port, &args);
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(test_support::uclient_lost_packets(&out), Some(0), "{out}");
        assert_eq!(sent_and_received(&out), (800, 800), "{out}");
    }
    assert!(tcp_metric(&server, "callbox_turn_tcp_accepted_total{transport=\"tcp\"}") >= 8.0);
    // uclient's connections are gone, and their allocations with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_metric(&server, "callbox_turn_allocations") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tcp_metric(&server, "callbox_turn_allocations"), 0.0);
    assert_eq!(
        tcp_metric(&server, "callbox_turn_tcp_connections{transport=\"tcp\"}"),
        0.0
    );
}

#[test]
fn stun_binding_over_tcp_in_odd_pieces() {
    let server = CallboxProcess::start(BIN, &config(""));
    let mut s = TcpStream::connect(server.udp_v4()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = binding_request();
    // Two requests back to back, split in the middle of the first header.
    let mut both = req.clone();
    both.extend_from_slice(&req);
    s.write_all(&both[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&both[7..]).unwrap();
    for _ in 0..2 {
        let head = read_exact_or_eof(&mut s, 20);
        assert_eq!(head.len(), 20);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut resp = head;
        resp.extend(read_exact_or_eof(&mut s, len));
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success);
        let mapped = m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap();
        assert_eq!(mapped, s.local_addr().unwrap(), "the TCP client's own address");
    }
}

#[test]
fn bad_streams_are_closed_and_counted_and_others_keep_going() {
    let server = CallboxProcess::start(BIN, &config("tcp_idle_timeout_ms = 300\n"));
    let addr = server.udp_v4();
    // ChannelData for a channel never bound: dropped, the connection stays and answers.
    let mut good = TcpStream::connect(addr).unwrap();
    good.write_all(&[0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]).unwrap();
    good.write_all(&binding_request()).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        read_exact_or_eof(&mut good, 20).len(),
        20,
        "the stream still gets answers"
    );
    // A 64 KiB garbage preamble: closed at its first byte.
    let mut garbage = TcpStream::connect(addr).unwrap();
    let _ = garbage.write_all(&[0x9E; 64 * 1024]);
    assert!(
        closed_within(&mut garbage, Duration::from_secs(3)),
        "garbage closed"
    );
    // A STUN header whose length is not a multiple of 4: the stream cannot be followed.
    let mut bad_length = TcpStream::connect(addr).unwrap();
    let mut header = binding_request()[..20].to_vec();
    header[3] = 2;
    bad_length.write_all(&header).unwrap();
    assert!(
        closed_within(&mut bad_length, Duration::from_secs(3)),
        "bad length closed"
    );
    // A stream that stops mid-frame, and one that never sends: closed after the timeout.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(&binding_request()[..9]).unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)),
        "stalled closed"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)),
        "silent closed"
    );
    // Other sessions were never held up: a new stream is answered at once.
    let mut fresh = TcpStream::connect(addr).unwrap();
    fresh.write_all(&binding_request()).unwrap();
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_exact_or_eof(&mut fresh, 20).len(), 20);
    let (_, body) = server.http_get("/metrics");
    let closed = |reason: &str| {
        metric(
            &body,
            &format!("callbox_turn_tcp_closed_total{{transport=\"tcp\",reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(closed("bad_input"), 2.0, "{body}");
    assert!(closed("idle") >= 2.0, "{body}");
}

#[test]
fn connections_per_address_are_capped() {
    let server = CallboxProcess::start(BIN, &config("tcp_max_connections_per_address = 3\n"));
    let addr = server.udp_v4();
    // Each held connection is answered before the next is opened: SO_REUSEPORT hands
    // connections to different workers, which accept in their own time, so without this
    // a loaded machine may accept the fourth before one of the three.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&binding_request()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(read_exact_or_eof(&mut s, 20).len(), 20, "a held one is answered");
            s
        })
        .collect();
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)),
        "the fourth is closed"
    );
    drop(held);
    // The slots come back when the connections go.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&binding_request()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        if read_exact_or_eof(&mut s, 20).len() == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "a slot came back");
    }
    assert!(
        tcp_metric(
            &server,
            "callbox_turn_tcp_closed_total{transport=\"tcp\",reason=\"cap\"}"
        ) >= 1.0
    );
}

#[test]
fn tcp_can_be_turned_off() {
    let server = CallboxProcess::start(BIN, &config("tcp = false\n"));
    assert!(TcpStream::connect(server.udp_v4()).is_err(), "no TCP listener");
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(&body, "callbox_turn_tcp_connections{transport=\"tcp\"}"),
        Some(0.0)
    );
}
