//! TLS end to end against the real binary, with certificates from a CA the test makes:
//! TURN over TLS (coturn's `turnutils_uclient -S`), HTTPS and WSS, the one TLS port carrying
//! the call page, a WebSocket session and TURN at once (routed by ALPN and by first bytes),
//! certificate reload under live sessions, and clients that misbehave during the handshake.
//! Loopback only; run inside a namespace that has only `lo` (see scripts/test.sh).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use test_support::tls::{TestCa, connect, connect_async, https_get, leaf_der, presented_leaf};
use test_support::{CallboxProcess, coturn_tool, metric, run_with_timeout};
use turn_proto::stun::{Class, Message, MessageBuilder, method};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
/// The name the test certificates are for (SNI and `turns:` URLs).
const NAME: &str = "callbox.test";

fn config(dir: &Path, ca: &TestCa, extra: &str) -> String {
    let (cert, key) = ca.write_server_files(dir, &[NAME]);
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\n\
         relay_ip = \"127.0.0.1\"\nrelay_port_min = 20000\nrelay_port_max = 30000\nallow_peers = [\"127.0.0.1/32\"]\n\
         [signal]\ntls_listen = \"127.0.0.1:0\"\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = [\"127.0.0.1:0\"]\nreload_interval_ms = 200\n{extra}\n",
        cert.display(),
        key.display()
    )
}

fn start(ca: &TestCa, extra: &str) -> (CallboxProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = CallboxProcess::start(BIN, &config(dir.path(), ca, extra));
    (server, dir)
}

/// Four clients, 200 messages each, 5 ms apart.
const LOAD: &[&str] = &["-m", "4", "-n", "200", "-l", "171", "-z", "5"];

/// coturn's client over TLS (`-t -S`, ChannelData) against `server` with `load`: (exit
/// code, output).
fn uclient_tls(
    server: SocketAddr,
    secret: &str,
    peer_port: u16,
    ca: &Path,
    load: &[&str],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args(["-t", "-S", "-E", &ca.display().to_string()])
        .args(["-p", &server.port().to_string(), "-W", secret])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string(), "-c"])
        .args(load)
        .arg(server.ip().to_string());
    run_with_timeout(&mut cmd, Duration::from_secs(90))
}

fn binding_request(tid: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, &[tid; 12]);
    b.add_fingerprint();
    b.finish();
    buf
}

/// Sends a Binding request over `s` and reads the success response.
fn binding_over(s: &mut impl ReadWrite, tid: u8) {
    s.write_all(&binding_request(tid)).unwrap();
    let mut head = [0u8; 20];
    s.read_exact(&mut head).unwrap();
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let whole = [&head[..], &body].concat();
    let m = Message::parse(&whole).expect("a STUN response");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), [tid; 12]);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn metrics(server: &CallboxProcess) -> String {
    server.http_get("/metrics").1
}

fn secret_and_ca(server: &CallboxProcess, ca: &TestCa) -> (String, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(ca.cert_pem().as_bytes()).unwrap();
    (server.secret(), file)
}

#[test]
fn uclient_relays_through_us_over_tls_without_loss() {
    let ca = TestCa::new();
    let (server, _dir) = start(&ca, "");
    let (port, _peer) = test_support::turnutils_peer();
    let (secret, ca_file) = secret_and_ca(&server, &ca);
    let (code, out) = uclient_tls(server.turn_tls[0], &secret, port, ca_file.path(), LOAD);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(test_support::uclient_lost_packets(&out), Some(0), "{out}");
    // STUN over TLS with ALPN stun.turn (RFC 7443) and a certificate check by name.
    let mut tls = connect(server.turn_tls[0], NAME, ca.client_config(&[b"stun.turn"])).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    binding_over(&mut tls, 1);
    let body = metrics(&server);
    assert!(
        metric(&body, "callbox_turn_tcp_accepted_total{transport=\"tls\"}").unwrap() >= 5.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "callbox_tls_handshakes_total{listener=\"turn_tls\",result=\"ok\"}"
        )
        .unwrap()
            >= 5.0
    );
    assert!(
        metric(
            &body,
            "callbox_turn_transport_allocations_created_total{transport=\"tls\"}"
        )
        .unwrap()
            >= 4.0,
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "callbox_turn_transport_allocations_created_total{transport=\"udp\"}"
        ),
        Some(0.0)
    );
    // The connections are gone, and their allocations with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let live_tls = |s: &CallboxProcess| {
        metric(
            &metrics(s),
            "callbox_turn_transport_allocations{transport=\"tls\"}",
        )
    };
    while live_tls(&server) != Some(0.0) {
        assert!(Instant::now() < deadline, "{}", metrics(&server));
        std::thread::sleep(Duration::from_millis(100));
    }
    // History says how the clients came (written in batches: wait for it).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = server.admin("GET", "/admin/v1/history/allocations", None).json();
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() && items.iter().all(|i| i["transport"] == "tls") {
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tls_port_serves_the_page_a_websocket_and_turn() {
    let ca = TestCa::new();
    let (server, _dir) = start(&ca, "");
    let port = server.tls[0];
    // The call page over HTTPS: ALPN http/1.1, then without ALPN (routed by its first bytes).
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let tls = connect(port, NAME, ca.client_config(alpn)).unwrap();
        let (status, body) = https_get(tls, NAME, "/");
        assert_eq!(status, 200);
        assert!(body.contains("<title>callbox</title>"), "{body}");
    }
    // The ICE list names the TLS listeners by the certificate's name, after UDP and TCP.
    let tls = connect(port, NAME, ca.client_config(&[])).unwrap();
    let (status, body) = https_get(tls, NAME, "/v1/ice-servers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let uris: Vec<String> = serde_json::from_value(v["uris"].clone()).unwrap();
    let udp = server.udp_v4().port();
    assert_eq!(
        uris,
        [
            format!("turn:127.0.0.1:{udp}?transport=udp"),
            format!("turn:127.0.0.1:{udp}?transport=tcp"),
            format!("turns:{NAME}:{}?transport=tcp", server.turn_tls[0].port()),
            format!("turns:{NAME}:{}?transport=tcp", port.port()),
        ]
    );
    // A signaling session over WSS on the same port.
    let stream = connect_async(port, NAME, ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    let url = format!("wss://{NAME}:{}/v1/signal?room=tls-room", port.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let welcome = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"ping"}"#,
    ))
    .await
    .unwrap();
    let pong = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(pong.contains("\"pong\""), "{pong}");
    // TURN on the same port: STUN by ALPN, STUN by first bytes (SNI, no ALPN, as Chrome).
    let mut by_alpn = connect(port, NAME, ca.client_config(&[b"stun.turn"])).unwrap();
    binding_over(&mut by_alpn, 2);
    binding_over(&mut by_alpn, 3);
    let mut by_sniff = connect(port, NAME, ca.client_config(&[])).unwrap();
    binding_over(&mut by_sniff, 4);
    // And an allocation that relays, by coturn's client.
    let (peer_port, _peer) = test_support::turnutils_peer();
    let (secret, ca_file) = secret_and_ca(&server, &ca);
    let (code, out) =
        tokio::task::spawn_blocking(move || uclient_tls(port, &secret, peer_port, ca_file.path(), LOAD))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(test_support::uclient_lost_packets(&out), Some(0), "{out}");
    drop(ws);
    let body = metrics(&server);
    let routed = |to: &str, by: &str| {
        metric(
            &body,
            &format!("callbox_tls_routed_total{{listener=\"tls\",to=\"{to}\",by=\"{by}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(routed("http", "alpn") >= 2.0, "{body}");
    assert!(routed("http", "sniff") >= 2.0, "{body}");
    // Ours by ALPN, coturn's too (it offers `stun.turn` and `http/1.1`: stun.turn wins).
    assert!(routed("turn", "alpn") >= 2.0, "{body}");
    assert_eq!(routed("turn", "sniff"), 1.0, "{body}");
}

#[test]
fn https_and_wss_on_the_signal_tls_listener() {
    let ca = TestCa::new();
    let (server, _dir) = start(&ca, "");
    let addr = server.signal_tls.expect("signal_tls in the ready line");
    let tls = connect(addr, NAME, ca.client_config(&[b"h2", b"http/1.1"])).unwrap();
    // HTTP/2 is offered and taken by clients that ask for it.
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);
    let tls = connect(addr, NAME, ca.client_config(&[b"http/1.1"])).unwrap();
    assert_eq!(https_get(tls, NAME, "/healthz").0, 200);
    // STUN is not served here: that listener is HTTP only.
    let mut tls = connect(addr, NAME, ca.client_config(&[])).unwrap();
    tls.write_all(&binding_request(5)).unwrap();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 4"), "{:?}", &buf[..n]);
}

#[test]
fn a_new_certificate_is_taken_without_a_restart_and_a_broken_one_is_not() {
    let ca = TestCa::new();
    let (server, dir) = start(&ca, "");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let old = leaf_der(&std::fs::read_to_string(&cert_path).unwrap());
    let mut live = connect(server.turn_tls[0], NAME, ca.client_config(&[])).unwrap();
    assert_eq!(presented_leaf(&live), old);
    binding_over(&mut live, 1);
    let mut live_one_port = connect(server.tls[0], NAME, ca.client_config(&[])).unwrap();
    binding_over(&mut live_one_port, 1);
    // And an allocation relaying through the reload: 400 messages 10 ms apart (4 s).
    let (peer_port, _peer) = test_support::turnutils_peer();
    let (secret, ca_file) = secret_and_ca(&server, &ca);
    let relay_addr = server.turn_tls[0];
    let relaying = std::thread::spawn(move || {
        let load = ["-m", "1", "-n", "400", "-l", "171", "-z", "10"];
        uclient_tls(relay_addr, &secret, peer_port, ca_file.path(), &load)
    });
    std::thread::sleep(Duration::from_millis(1000));

    // A renewal: new files in place; the timer notices.
    let (cert, key) = ca.issue(&[NAME]);
    let new = leaf_der(&cert);
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = connect(server.turn_tls[0], NAME, ca.client_config(&[])).unwrap();
        if presented_leaf(&fresh) == new {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fresh = connect(server.tls[0], NAME, ca.client_config(&[])).unwrap();
    assert_eq!(presented_leaf(&fresh), new, "every TLS listener presents it");
    // The sessions begun before it go on.
    binding_over(&mut live, 2);
    binding_over(&mut live_one_port, 2);
    let (code, out) = relaying.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(test_support::uclient_lost_packets(&out), Some(0), "{out}");

    // A broken file is refused (logged, counted) and the certificate in force stays, also
    // after SIGHUP asks for a reload.
    std::fs::write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let errors = |s: &CallboxProcess| {
        metric(
            &metrics(s),
            "callbox_tls_certificate_reloads_total{result=\"error\"}",
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while errors(&server) < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while errors(&server) < 2.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fresh = connect(server.turn_tls[0], NAME, ca.client_config(&[])).unwrap();
    assert_eq!(presented_leaf(&fresh), new);
    binding_over(&mut live, 3);
    assert!(server.output().contains("TLS certificate not reloaded"));
}

#[test]
fn slow_or_silent_clients_after_the_handshake_are_cut_at_the_header_timeout() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &ca, "").replace("[signal]\n", "[signal]\nheader_timeout_ms = 500\n");
    let server = CallboxProcess::start(BIN, &text);
    let started = Instant::now();
    // Silent after the handshake on the one port: no first bytes to route by.
    let mut silent = connect(server.tls[0], NAME, ca.client_config(&[])).unwrap();
    // A request head sent slowly (slowloris), routed to HTTP by its first byte.
    let mut slow = connect(server.tls[0], NAME, ca.client_config(&[])).unwrap();
    slow.write_all(b"G").unwrap();
    // The same on the HTTPS listener, by ALPN.
    let mut slow_https = connect(server.signal_tls.unwrap(), NAME, ca.client_config(&[b"http/1.1"])).unwrap();
    slow_https.write_all(b"GET / HT").unwrap();
    let mut buf = [0u8; 256];
    for s in [&mut silent, &mut slow, &mut slow_https] {
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || buf.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "cut at the header timeout, not before: {waited:?}"
    );
    // Others are served meanwhile.
    let tls = connect(server.tls[0], NAME, ca.client_config(&[])).unwrap();
    assert_eq!(https_get(tls, NAME, "/healthz").0, 200);
}

#[test]
fn handshakes_that_never_finish_are_cut_and_bounded() {
    let ca = TestCa::new();
    let (server, _dir) = start(&ca, "handshake_timeout_ms = 500\nmax_handshakes = 4\n");
    let addr = server.turn_tls[0];
    // Silent connections hold handshake slots until the timeout, no longer.
    let mut silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    // Past the bound, a new connection is closed at once, on every TLS listener.
    let mut extra = TcpStream::connect(server.tls[0]).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "closed at once");
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "closed at the timeout"
        );
    }
    // Garbage instead of a ClientHello: closed, counted, others unharmed.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(&[0x47; 64 * 1024]).unwrap_or(());
    junk.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink);
    let mut ok = connect(addr, NAME, ca.client_config(&[])).unwrap();
    binding_over(&mut ok, 9);
    let body = metrics(&server);
    let handshakes = |listener: &str, result: &str| {
        metric(
            &body,
            &format!("callbox_tls_handshakes_total{{listener=\"{listener}\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(handshakes("turn_tls", "timeout") >= 4.0, "{body}");
    assert!(handshakes("tls", "refused") >= 1.0, "{body}");
    assert!(handshakes("turn_tls", "failed") >= 1.0, "{body}");
}

#[test]
fn sighup_without_a_certificate_is_logged_not_fatal() {
    let server = CallboxProcess::start(
        BIN,
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n",
    );
    assert!(
        server.turn_tls.is_empty() && server.tls.is_empty(),
        "no TLS without a certificate"
    );
    server.signal("HUP");
    assert!(server.wait_for_output("configuration reloaded: nothing changed", Duration::from_secs(5)));
    assert_eq!(server.http_get("/healthz").0, 200, "still running");
}
