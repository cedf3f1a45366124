//! The live call that must keep going while a scenario runs: one relayed session by
//! coturn's `turnutils_uclient` through callbox to coturn's `turnutils_peer` echo (a packet
//! every 20 ms), and one signaling pair exchanging a message and its echo every 50 ms (20
//! a second from each side, well inside the default per-connection rate of 500 per 10 s).

use std::net::SocketAddr;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::ws::WsClient;
use test_support::{Background, coturn_tool, run_with_timeout};

/// What the relayed session reported.
#[derive(Debug, Clone, Default)]
pub struct Relayed {
    pub sent: u64,
    pub lost: Option<u64>,
    /// uclient's average and largest round trip (it measures in whole milliseconds).
    pub rtt_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub exit: Option<i32>,
    pub output: String,
}

/// What the signaling pair saw.
#[derive(Debug, Clone, Default)]
pub struct Signaled {
    pub sent: u64,
    pub echoed: u64,
    /// Messages that arrived out of order or with an unexpected payload.
    pub misordered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub error: Option<String>,
}

/// The running pair of live sessions.
pub struct Live {
    relayed: JoinHandle<Relayed>,
    signaled: JoinHandle<Signaled>,
    _peer: Background,
}

/// Milliseconds between the relayed session's packets (uclient's `-z 20`).
const INTERVAL_MS: u64 = 20;
/// Milliseconds between the signaling pair's round trips.
const SIGNAL_INTERVAL_MS: u64 = 50;

impl Live {
    /// Starts both for `length`: relay through `turn` (credentials from `secret`),
    /// signaling through `signal`.
    pub fn start(turn: SocketAddr, secret: &str, signal: SocketAddr, length: Duration) -> Live {
        let (peer_port, peer) = test_support::turnutils_peer();
        let n = (length.as_millis() as u64 / INTERVAL_MS).max(10);
        let secret = secret.to_string();
        let relayed = std::thread::spawn(move || uclient(turn, &secret, peer_port, n, length));
        let signaled = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(signal_pair(signal, length))
        });
        Live {
            relayed,
            signaled,
            _peer: peer,
        }
    }

    pub fn finish(self) -> (Relayed, Signaled) {
        let r = self.relayed.join().unwrap_or_default();
        let s = self.signaled.join().unwrap_or_else(|_| Signaled {
            error: Some("the signaling pair panicked".into()),
            ..Signaled::default()
        });
        (r, s)
    }
}

fn uclient(turn: SocketAddr, secret: &str, peer_port: u16, n: u64, length: Duration) -> Relayed {
    let mut cmd = Command::new(coturn_tool("turnutils_uclient"));
    cmd.args(["-c", "-m", "1", "-l", "120"])
        .args(["-n", &n.to_string(), "-z", &INTERVAL_MS.to_string()])
        .args(["-p", &turn.port().to_string(), "-W", secret])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .arg(turn.ip().to_string());
    let (exit, output) = run_with_timeout(&mut cmd, length + Duration::from_secs(60));
    let rtt_ms = output.lines().find_map(|l| {
        l.split("Average round trip delay ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let rtt_max_ms = output.lines().find_map(|l| {
        l.split("Average round trip delay ")
            .nth(1)?
            .split("max = ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    Relayed {
        rtt_max_ms,
        sent: n,
        lost: test_support::uclient_lost_packets(&output),
        rtt_ms,
        exit,
        output,
    }
}

async fn signal_pair(addr: SocketAddr, length: Duration) -> Signaled {
    let mut out = Signaled::default();
    let room = format!("room=torture-live-{}", std::process::id());
    let (mut a, mut b) = match (
        WsClient::connect(addr, &room, &[]).await,
        WsClient::connect(addr, &room, &[]).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            out.error = Some(format!("join refused: {:?} {:?}", a.err(), b.err()));
            return out;
        }
    };
    // A hears B join first.
    let _ = a.recv().await;
    let mut rtts = Vec::new();
    let t0 = Instant::now();
    let mut next = t0;
    while t0.elapsed() < length {
        let n = out.sent;
        let sent_at = Instant::now();
        if !a.send(json!({"type": "message", "data": {"n": n}})).await {
            out.error = Some(format!("A's connection dropped at message {n}"));
            break;
        }
        out.sent += 1;
        let Some(m) = b.recv().await else {
            out.error = Some(format!("B got nothing for message {n} within 5 s"));
            break;
        };
        if m["data"]["n"].as_u64() != Some(n) {
            out.misordered += 1;
        }
        if !b.send(json!({"type": "message", "data": {"echo": n}})).await {
            out.error = Some(format!("B's connection dropped at message {n}"));
            break;
        }
        let Some(m) = a.recv().await else {
            out.error = Some(format!("A got no echo of message {n} within 5 s"));
            break;
        };
        if m["data"]["echo"].as_u64() != Some(n) {
            out.misordered += 1;
        }
        out.echoed += 1;
        rtts.push(sent_at.elapsed().as_secs_f64() * 1000.0);
        next += Duration::from_millis(SIGNAL_INTERVAL_MS);
        tokio::time::sleep_until(next.into()).await;
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    out.p50_ms = pct(0.5);
    out.p99_ms = pct(0.99);
    out
}

impl Relayed {
    /// Nothing lost, and uclient ended well.
    pub fn clean(&self) -> bool {
        self.exit == Some(0) && self.lost == Some(0)
    }

    /// The tail of uclient's output, for a failure message.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }
}

impl Signaled {
    pub fn clean(&self) -> bool {
        self.error.is_none() && self.misordered == 0 && self.sent == self.echoed && self.sent > 0
    }
}
