//! `turn.external_ip = "auto"` against fake EC2 and Compute Engine metadata servers and a
//! real STUN server, all on loopback: IMDSv2's token first (the fake refuses metadata
//! without it with 401), a server that never answers (the next source is asked after the
//! timeout), garbage answers and servers that are not Google's (ignored), STUN as the last
//! resort, and nothing found (callbox starts anyway and says so).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use test_support::CallboxProcess;

const BIN: &str = env!("CARGO_BIN_EXE_callbox");

/// What a fake metadata server does with one request: an answer (status, extra headers,
/// body), or `None` to hold the connection without answering.
type Handler = fn(method: &str, path: &str, headers: &[String]) -> Option<(u16, &'static str, String)>;

/// A metadata server on loopback for the length of the test (bounded: it stops accepting
/// after 60 s).
fn fake_metadata(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut held = Vec::new();
        while Instant::now() < deadline {
            let Ok((s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            if let Some(s) = serve_one(s, handler) {
                held.push(s);
            }
        }
    });
    addr
}

/// Answers one request; returns the stream when the handler holds it unanswered.
fn serve_one(mut s: TcpStream, handler: Handler) -> Option<TcpStream> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        headers.push(h.trim().to_ascii_lowercase());
    }
    let Some((status, extra, body)) = handler(&method, &path, &headers) else {
        return Some(s);
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    None
}

fn config(ec2: SocketAddr, gce: SocketAddr, stun: &[String]) -> String {
    let stun: Vec<String> = stun.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\nrelay_ip = \"127.0.0.1\"\n\
         external_ip = \"auto\"\nmetadata_ec2_url = \"http://{ec2}\"\nmetadata_gce_url = \"http://{gce}\"\n\
         external_ip_stun = [{}]\nexternal_ip_timeout_ms = 500\n",
        stun.join(", ")
    )
}

/// EC2 with IMDSv2: metadata only with the token the PUT handed out.
fn ec2(method: &str, path: &str, headers: &[String]) -> Option<(u16, &'static str, String)> {
    let has_token = headers.iter().any(|h| h == "x-aws-ec2-metadata-token: t0ken");
    Some(match (method, path) {
        ("PUT", "/latest/api/token")
            if headers
                .iter()
                .any(|h| h.starts_with("x-aws-ec2-metadata-token-ttl-seconds:")) =>
        {
            (200, "", "t0ken".into())
        }
        (_, _) if !has_token => (401, "", String::new()),
        ("GET", "/latest/meta-data/public-ipv4") => (200, "", "203.0.113.10".into()),
        ("GET", "/latest/meta-data/local-ipv4") => (200, "", "127.0.0.1".into()),
        _ => (404, "", String::new()),
    })
}

fn gce(_: &str, path: &str, headers: &[String]) -> Option<(u16, &'static str, String)> {
    if !headers.iter().any(|h| h == "metadata-flavor: google") {
        return Some((403, "", String::new()));
    }
    let flavor = "metadata-flavor: Google\r\n";
    Some(match path {
        "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip" => {
            (200, flavor, "198.51.100.20".into())
        }
        "/computeMetadata/v1/instance/network-interfaces/0/ip" => (200, flavor, "127.0.0.1".into()),
        _ => (404, flavor, String::new()),
    })
}

fn hangs(_: &str, _: &str, _: &[String]) -> Option<(u16, &'static str, String)> {
    None
}

fn garbage(_: &str, _: &str, _: &[String]) -> Option<(u16, &'static str, String)> {
    Some((200, "", "<html>not an address</html>".into()))
}

/// Answers like Google's paths but without its header: not a metadata server.
fn not_google(_: &str, _: &str, _: &[String]) -> Option<(u16, &'static str, String)> {
    Some((200, "", "198.51.100.99".into()))
}

fn relay_in_ready_line(server: &CallboxProcess) -> String {
    let out = server.output();
    let line = out
        .lines()
        .find(|l| l.contains("callbox ready"))
        .unwrap_or("")
        .to_string();
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("relay="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn ec2_metadata_is_asked_with_its_token() {
    let server = CallboxProcess::start(BIN, &config(fake_metadata(ec2), fake_metadata(gce), &[]));
    assert_eq!(
        relay_in_ready_line(&server),
        "203.0.113.10",
        "{}",
        server.output()
    );
    let out = server.output();
    assert!(
        out.contains("external address found") && out.contains("ec2-metadata"),
        "{out}"
    );
}

#[test]
fn compute_engine_is_asked_when_ec2_does_not_answer_in_time() {
    let started = Instant::now();
    let server = CallboxProcess::start(BIN, &config(fake_metadata(hangs), fake_metadata(gce), &[]));
    assert_eq!(
        relay_in_ready_line(&server),
        "198.51.100.20",
        "{}",
        server.output()
    );
    assert!(server.output().contains("gce-metadata"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the hanging server cost its timeout only"
    );
}

#[test]
fn garbage_and_impostors_are_ignored_and_stun_answers_last() {
    // A real STUN server on loopback: another callbox.
    let stun_server = CallboxProcess::start(
        BIN,
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let stun = stun_server.udp_v4().to_string();
    let server = CallboxProcess::start(
        BIN,
        &config(
            fake_metadata(garbage),
            fake_metadata(not_google),
            &["127.0.0.1:9".into(), stun],
        ),
    );
    let out = server.output();
    assert!(
        out.contains("external address found") && out.contains("stun"),
        "{out}"
    );
    assert!(!out.contains("198.51.100.99"), "not Google's: {out}");
    assert_eq!(relay_in_ready_line(&server), "127.0.0.1");
}

#[test]
fn nothing_found_is_said_and_callbox_serves_anyway() {
    let server = CallboxProcess::start(BIN, &config(fake_metadata(hangs), fake_metadata(garbage), &[]));
    assert_eq!(relay_in_ready_line(&server), "127.0.0.1");
    assert!(server.output().contains("no metadata service or STUN server"));
    assert_eq!(server.http_get("/healthz").0, 200);
}
