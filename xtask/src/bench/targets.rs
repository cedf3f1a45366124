//! What is benchmarked: callbox's turn role, coturn, and the bare forwarder in its two modes;
//! how each is started (ports, options, readiness) and stopped, and what each one says about
//! itself (coturn's options for the report, callbox's own relayed count from /metrics).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::options::Opts;
use crate::turnc;

pub const SECRET: &str = "bench-secret-not-for-production";
/// Relay port ranges, apart so both servers can hold 10,000 allocations at once, and
/// below the ephemeral range (32768-60999) the generator's sockets come from.
pub const CALLBOX_RELAY_PORTS: (u16, u16) = (9000, 21999);
pub const COTURN_RELAY_PORTS: (u16, u16) = (22000, 32767);
pub const CALLBOX_PORT: u16 = 5478;
pub const CALLBOX_HTTP_PORT: u16 = 5479;
pub const COTURN_PORT: u16 = 5490;
pub const FORWARDER_PORT: u16 = 5500;
pub const FORWARDER_SHARED_PORT: u16 = 5501;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Callbox,
    Coturn,
    /// The bare forwarder with one socket per client toward the peer (TURN-shaped).
    Forwarder,
    /// The bare forwarder with one shared socket toward the peer (the floor).
    ForwarderShared,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Callbox => "callbox",
            Target::Coturn => "coturn",
            Target::Forwarder => "forwarder",
            Target::ForwarderShared => "forwarder-shared",
        }
    }
    pub fn is_turn(self) -> bool {
        matches!(self, Target::Callbox | Target::Coturn)
    }
}

/// A server under test; terminated (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    pub target: Target,
    pub child: Child,
    pub addr: SocketAddrV4,
    pub log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn check_port_free(port: u16) -> Result<(), String> {
    UdpSocket::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| format!("UDP port 127.0.0.1:{port} is not free ({e}); is an earlier run still going?"))
}

pub fn spawn(o: &Opts, target: Target, dir: &Path, peer: SocketAddrV4) -> Result<Server, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log = dir.join("server.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let (mut cmd, port) = match target {
        Target::Callbox => {
            check_port_free(CALLBOX_PORT)?;
            let mut c = Command::new(&o.callbox);
            // Only the turn role: the signal role (on by default) would listen on 0.0.0.0:8080.
            c.arg("serve")
                .arg("--roles")
                .arg("turn")
                .arg("--state-dir")
                .arg(dir.join("state"));
            for s in [
                format!("turn.listen=[\"127.0.0.1:{CALLBOX_PORT}\"]"),
                "turn.relay_ip=127.0.0.1".into(),
                "turn.allow_peers=[\"127.0.0.1\"]".into(),
                format!("turn.http_listen=127.0.0.1:{CALLBOX_HTTP_PORT}"),
                format!("auth.secrets=[\"{SECRET}\"]"),
                "turn.user_quota=100000".into(),
                "turn.total_quota=100000".into(),
                format!("turn.workers={}", o.workers),
                format!("turn.relay_port_min={}", CALLBOX_RELAY_PORTS.0),
                format!("turn.relay_port_max={}", CALLBOX_RELAY_PORTS.1),
            ] {
                c.arg("--set").arg(s);
            }
            (c, CALLBOX_PORT)
        }
        Target::Coturn => {
            check_port_free(COTURN_PORT)?;
            let mut c = Command::new(&o.turnserver);
            c.args(coturn_args(o.workers))
                .arg(format!("--static-auth-secret={SECRET}"))
                .arg(format!("--listening-port={COTURN_PORT}"))
                .arg(format!("--userdb={}", dir.join("turndb").display()))
                .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()));
            (c, COTURN_PORT)
        }
        Target::Forwarder | Target::ForwarderShared => {
            let (port, mode) = if target == Target::Forwarder {
                (FORWARDER_PORT, "per-client")
            } else {
                (FORWARDER_SHARED_PORT, "shared")
            };
            check_port_free(port)?;
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.arg("udp-forwarder")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--peer")
                .arg(peer.to_string())
                .arg("--workers")
                .arg(o.workers.to_string())
                .arg("--mode")
                .arg(mode);
            (c, port)
        }
    };
    // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // The server dies with the benchmark, even if the benchmark is killed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", target.name()))?;
    let mut server = Server {
        target,
        child,
        addr: SocketAddrV4::new([127, 0, 0, 1].into(), port),
        log,
    };
    let t = Instant::now();
    loop {
        if !server.alive() {
            return Err(format!(
                "{} exited at start:\n{}",
                target.name(),
                server.log_tail()
            ));
        }
        if t.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "{} not ready after 15 s:\n{}",
                target.name(),
                server.log_tail()
            ));
        }
        let ready = match target {
            Target::Callbox => {
                std::fs::read_to_string(&server.log).is_ok_and(|s| s.contains("callbox ready"))
            }
            Target::Forwarder | Target::ForwarderShared => {
                std::fs::read_to_string(&server.log).is_ok_and(|s| s.contains("udp-forwarder ready"))
            }
            Target::Coturn => binding_probe(server.addr),
        };
        if ready {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// coturn's options besides secret, port and files; listed in the report.
pub fn coturn_args(workers: usize) -> Vec<String> {
    [
        "-n",
        "--no-cli",
        "--log-file=stdout",
        "--simple-log",
        "--use-auth-secret",
        "--realm=callbox",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        "--allow-loopback-peers",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-tcp-relay",
        "--user-quota=0",
        "--total-quota=0",
        "--max-bps=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--relay-threads={workers}"),
        format!("--min-port={}", COTURN_RELAY_PORTS.0),
        format!("--max-port={}", COTURN_RELAY_PORTS.1),
    ])
    .collect()
}

pub fn binding_probe(server: SocketAddrV4) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut req = Vec::new();
    let tid = turnc::next_tid();
    turn_proto::stun::MessageBuilder::new(
        &mut req,
        turn_proto::stun::method::BINDING,
        turn_proto::stun::Class::Request,
        &tid,
    )
    .finish();
    if s.send_to(&req, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    s.recv(&mut buf).is_ok()
}

/// callbox's own count of relayed packets (both directions), from /metrics.
pub fn callbox_relayed() -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", CALLBOX_HTTP_PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("callbox_turn_relayed_packets_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}
