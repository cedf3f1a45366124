//! `cargo xtask bench-turn [--quick]`: callbox's relay vs coturn vs a bare UDP forwarder,
//! on the same load from the same generator, loopback only. See BENCHMARKS.md.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use serde_json::{Value, json};

use crate::load::{self, Rate, Rig, StepCounts};
use crate::sys;
use crate::turnc::{self, BindTo, Cred};

const SECRET: &str = "bench-secret-not-for-production";
/// Relay port ranges, apart so both servers can hold 10,000 allocations at once, and
/// below the ephemeral range (32768-60999) the generator's sockets come from.
const CALLBOX_RELAY_PORTS: (u16, u16) = (9000, 21999);
const COTURN_RELAY_PORTS: (u16, u16) = (22000, 32767);
const CALLBOX_PORT: u16 = 5478;
const CALLBOX_HTTP_PORT: u16 = 5479;
const COTURN_PORT: u16 = 5490;
const FORWARDER_PORT: u16 = 5500;
const FORWARDER_SHARED_PORT: u16 = 5501;
const CHANNEL_BASE: u16 = 0x4000;
/// Cores used by other processes above which a step counts as disturbed (and is retried).
const DISTURBED: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Callbox,
    Coturn,
    /// The bare forwarder with one socket per client toward the peer (TURN-shaped).
    Forwarder,
    /// The bare forwarder with one shared socket toward the peer (the floor).
    ForwarderShared,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Callbox => "callbox",
            Target::Coturn => "coturn",
            Target::Forwarder => "forwarder",
            Target::ForwarderShared => "forwarder-shared",
        }
    }
    fn is_turn(self) -> bool {
        matches!(self, Target::Callbox | Target::Coturn)
    }
}

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    targets: Vec<Target>,
    sizes: Vec<usize>,
    rates: Vec<Option<u64>>,
    step: Duration,
    clients: usize,
    workers: usize,
    window: u64,
    binding_secs: f64,
    allocs: Vec<usize>,
    callbox: PathBuf,
    turnserver: PathBuf,
    build: bool,
    wait_quiet: Duration,
    refresh: Duration,
    root: PathBuf,
}

fn usage() -> String {
    "usage: cargo xtask bench-turn [--quick] [--only callbox,coturn,forwarder,forwarder-shared] [--sizes 200,1000]\n\
     \x20      [--rates 20000,50000,max] [--step SECS] [--clients N] [--workers N] [--window N]\n\
     \x20      [--binding-secs SECS] [--allocs 1000,10000] [--callbox PATH] [--turnserver PATH] [--no-build]\n\
     \x20      [--wait-quiet SECS (default 120: wait for other processes to leave the CPUs)]\n\
     \x20      [--refresh SECS (default 60: Refresh + ChannelBind again before a step)]"
        .to_string()
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        targets: vec![
            Target::Callbox,
            Target::Coturn,
            Target::Forwarder,
            Target::ForwarderShared,
        ],
        sizes: vec![200, 1000],
        rates: if quick {
            vec![Some(20_000), Some(100_000), None]
        } else {
            vec![Some(20_000), Some(50_000), Some(100_000), Some(200_000), None]
        },
        step: Duration::from_secs_f64(if quick { 1.2 } else { 5.0 }),
        clients: 16,
        workers: 2,
        window: 1024,
        binding_secs: if quick { 0.5 } else { 3.0 },
        allocs: vec![1000, 10000],
        callbox: root.join("target/release/callbox"),
        turnserver: PathBuf::from("/usr/bin/turnserver"),
        build: true,
        wait_quiet: Duration::from_secs(120),
        refresh: Duration::from_secs(60),
        root,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or(format!("{a} needs a value\n{}", usage()))
        };
        let list = |v: String| -> Vec<String> { v.split(',').map(|s| s.trim().to_string()).collect() };
        let num = |s: &str| s.parse::<f64>().map_err(|e| format!("{a}: {s}: {e}"));
        match a.as_str() {
            "--quick" => {}
            "--no-build" => o.build = false,
            "--refresh" => o.refresh = Duration::from_secs_f64(num(&val()?)?.clamp(0.0, 200.0)),
            "--wait-quiet" => o.wait_quiet = Duration::from_secs_f64(num(&val()?)?.clamp(0.0, 600.0)),
            "--only" => {
                o.targets = list(val()?)
                    .iter()
                    .map(|t| match t.as_str() {
                        "callbox" | "ours" => Ok(Target::Callbox),
                        "coturn" => Ok(Target::Coturn),
                        "forwarder" | "udp" => Ok(Target::Forwarder),
                        "forwarder-shared" | "floor" => Ok(Target::ForwarderShared),
                        other => Err(format!("--only: unknown target {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--sizes" => {
                o.sizes = list(val()?)
                    .iter()
                    .map(|s| num(s).map(|v| v as usize))
                    .collect::<Result<_, _>>()?
            }
            "--rates" => {
                o.rates = list(val()?)
                    .iter()
                    .map(|s| {
                        if s == "max" {
                            Ok(None)
                        } else {
                            num(s).map(|v| Some(v as u64))
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            "--allocs" => {
                o.allocs = list(val()?)
                    .iter()
                    .map(|s| num(s).map(|v| v as usize))
                    .collect::<Result<_, _>>()?
            }
            "--step" => o.step = Duration::from_secs_f64(num(&val()?)?.clamp(0.2, 10.0)),
            "--binding-secs" => o.binding_secs = num(&val()?)?.clamp(0.2, 10.0),
            "--clients" => o.clients = num(&val()?)?.clamp(1.0, 1024.0) as usize,
            "--workers" => o.workers = num(&val()?)?.clamp(1.0, 64.0) as usize,
            "--window" => o.window = num(&val()?)?.clamp(1.0, 100_000.0) as u64,
            "--callbox" => o.callbox = PathBuf::from(val()?),
            "--turnserver" => o.turnserver = PathBuf::from(val()?),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if o.sizes.iter().any(|&s| !(1..=1400).contains(&s)) {
        return Err("--sizes: payloads must be 1-1400 bytes".into());
    }
    if o.allocs.len() > 3 || o.allocs.iter().any(|&n| n > 15_000) {
        return Err("--allocs: at most 3 levels, at most 15000".into());
    }
    o.allocs.sort_unstable();
    Ok(o)
}

/// A server under test; terminated (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct Server {
    target: Target,
    child: Child,
    addr: SocketAddrV4,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
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

fn check_port_free(port: u16) -> Result<(), String> {
    UdpSocket::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| format!("UDP port 127.0.0.1:{port} is not free ({e}); is an earlier run still going?"))
}

fn spawn(o: &Opts, target: Target, dir: &Path, peer: SocketAddrV4) -> Result<Server, String> {
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
fn coturn_args(workers: usize) -> Vec<String> {
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

fn binding_probe(server: SocketAddrV4) -> bool {
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
fn callbox_relayed() -> Option<u64> {
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

fn udp_socket(connect: SocketAddrV4, buf: i32) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    if buf > 0 {
        sys::set_buffers(&s, buf);
    }
    s.connect(connect).map_err(|e| format!("connect: {e}"))?;
    Ok(s)
}

#[derive(Debug, Clone)]
struct Step {
    target: Target,
    size: usize,
    offered: Option<u64>,
    c: StepCounts,
    cpu: Cpu,
    /// Retries because other processes disturbed it; still disturbed if `other_cores` is high.
    retries: u32,
    server_counted: Option<u64>,
}

impl Step {
    fn relayed(&self) -> u64 {
        self.c.peer_rx + self.c.client_rx
    }
    fn pps(&self, n: u64) -> f64 {
        n as f64 / self.c.send_secs
    }
    fn loss_rt(&self) -> f64 {
        if self.c.sent == 0 {
            f64::NAN
        } else {
            100.0 * (1.0 - self.c.client_rx as f64 / self.c.sent as f64)
        }
    }
    fn loss_fwd(&self) -> f64 {
        if self.c.sent == 0 {
            f64::NAN
        } else {
            100.0 * (1.0 - self.c.peer_rx as f64 / self.c.sent as f64)
        }
    }
    /// Server CPU seconds per million relayed packets (= µs per relayed packet).
    fn cpu_per_mpkt(&self) -> f64 {
        if self.relayed() == 0 {
            f64::NAN
        } else {
            self.cpu.server / self.relayed() as f64 * 1e6
        }
    }
    fn rate_label(&self) -> String {
        rate_label(self.offered)
    }
    /// Cores busy with neither the server nor the generator (other processes, kernel threads).
    fn other_cores(&self) -> f64 {
        self.cpu.machine.0 - (self.cpu.server + self.cpu.generator + self.cpu.ksoftirqd) / self.c.total_secs
    }
    fn cores(&self, secs: f64) -> f64 {
        secs / self.c.total_secs
    }
    fn disturbed(&self) -> bool {
        self.other_cores() > DISTURBED
    }
    fn json(&self) -> Value {
        json!({
            "target": self.target.name(), "payload_bytes": self.size, "offered_pps": self.offered,
            "sent": self.c.sent, "at_peer": self.c.peer_rx, "back_at_clients": self.c.client_rx,
            "send_secs": self.c.send_secs, "measured_secs": self.c.total_secs,
            "server_cpu_secs": self.cpu.server, "generator_cpu_secs": self.cpu.generator,
            "ksoftirqd_cpu_secs": self.cpu.ksoftirqd,
            "machine_busy_cores": self.cpu.machine.0, "machine_irq_cores": self.cpu.machine.1,
            "other_cores": self.other_cores(), "retries": self.retries, "server_counted_relayed": self.server_counted,
            "relayed_pps": self.pps(self.relayed()), "round_trip_pps": self.pps(self.c.client_rx),
            "loss_round_trip_pct": self.loss_rt(), "loss_to_peer_pct": self.loss_fwd(),
            "server_cpu_secs_per_million_relayed": self.cpu_per_mpkt(),
        })
    }
}

fn rate_label(r: Option<u64>) -> String {
    match r {
        Some(r) if r % 1000 == 0 => format!("{}k", r / 1000),
        Some(r) => r.to_string(),
        None => "max".into(),
    }
}

#[derive(Debug, Clone, Default)]
struct Control {
    target: &'static str,
    binding: Option<(turnc::BindingResult, f64)>,
    rss_base: Option<u64>,
    /// (total allocations, allocations/s of this level, RSS KiB after, server CPU s, failures)
    allocs: Vec<(usize, f64, Option<u64>, f64, String)>,
}

#[derive(Debug, Default)]
struct Run {
    steps: Vec<Step>,
    control: Vec<Control>,
    notes: Vec<String>,
}

/// CPU seconds used while something ran.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    generator: f64,
    ksoftirqd: f64,
    /// Cores busy machine-wide, and of those in irq/softirq ticks.
    machine: (f64, f64),
}

/// Runs `f`; returns its result and the CPU used meanwhile.
fn measure<T>(pid: u32, f: impl FnOnce() -> T) -> (T, Cpu) {
    let ks = sys::ksoftirqd_pids();
    let (s0, g0, k0, m0) = (
        sys::cpu_seconds(Some(pid)),
        sys::cpu_seconds(None),
        sys::cpu_seconds_sum(&ks),
        sys::machine_jiffies(),
    );
    let r = f();
    let (s1, g1, k1, m1) = (
        sys::cpu_seconds(Some(pid)),
        sys::cpu_seconds(None),
        sys::cpu_seconds_sum(&ks),
        sys::machine_jiffies(),
    );
    let cpu = Cpu {
        server: s1 - s0,
        generator: g1 - g0,
        ksoftirqd: k1 - k0,
        machine: sys::cores_between(m0, m1),
    };
    (r, cpu)
}

/// Cores busy outside this process over `secs`.
fn other_load(secs: f64) -> f64 {
    let (g0, m0) = (sys::cpu_seconds(None), sys::machine_jiffies());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (g1, m1) = (sys::cpu_seconds(None), sys::machine_jiffies());
    sys::cores_between(m0, m1).0 - (g1 - g0) / secs
}

/// Waits up to `max` for the machine to be quiet (< 0.15 cores busy elsewhere); returns
/// the last load seen.
fn wait_quiet(max: Duration) -> f64 {
    let t = Instant::now();
    loop {
        let load = other_load(1.0);
        if load < 0.15 || t.elapsed() >= max {
            return load;
        }
        if t.elapsed() < Duration::from_secs(1) || t.elapsed().as_secs().is_multiple_of(15) {
            eprintln!("   machine busy elsewhere ({load:.2} cores), waiting for quiet...");
        }
    }
}

/// A target under test with its load sockets, between the relay steps.
#[derive(Debug)]
struct Live {
    target: Target,
    server: Server,
    rig: Rig,
    bind: BindTo,
    sessions: Vec<turnc::Session>,
    refreshed: Instant,
}

/// Starts `target`, allocates and binds its clients, and checks a gentle load comes back.
fn start_target(o: &Opts, target: Target, cred: &Cred, tmp: &Path) -> Result<Live, String> {
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sys::set_buffers(&peer, 8 << 20);
    let peer_addr = sys::v4(peer.local_addr().map_err(|e| e.to_string())?);
    let server = spawn(o, target, &tmp.join(target.name()), peer_addr)?;
    eprintln!("== {} (pid {}) on {}", target.name(), server.pid(), server.addr);
    let mut clients = Vec::new();
    for _ in 0..o.clients {
        clients.push(udp_socket(server.addr, 4 << 20)?);
    }
    let channels: Vec<u16> = (0..o.clients).map(|i| CHANNEL_BASE + i as u16).collect();
    let bind = BindTo {
        peer: SocketAddr::V4(peer_addr),
        channel_base: CHANNEL_BASE,
    };
    let mut sessions = Vec::new();
    if target.is_turn() {
        let r = turnc::setup(&clients, cred, Some(bind), 16, Duration::from_secs(10));
        if r.ok != clients.len() {
            return Err(format!(
                "{}: only {}/{} clients allocated and bound (failures, code 0 = timeout: {:?})\n{}",
                target.name(),
                r.ok,
                clients.len(),
                r.failures,
                server.log_tail()
            ));
        }
        sessions = r.sessions;
    }
    let rig = Rig {
        clients,
        channels,
        peer,
    };
    // Sanity: a gentle half second must come back nearly whole, or the rest is meaningless.
    let sanity = load::run_step(&rig, 200, Rate::Paced(2000), Duration::from_millis(500));
    eprintln!(
        "   sanity: sent {} at peer {} back {}",
        sanity.sent, sanity.peer_rx, sanity.client_rx
    );
    if sanity.client_rx * 10 < sanity.sent * 9 {
        return Err(format!(
            "{}: sanity step lost too much (sent {}, at peer {}, back {})\n{}",
            target.name(),
            sanity.sent,
            sanity.peer_rx,
            sanity.client_rx,
            server.log_tail()
        ));
    }
    Ok(Live {
        target,
        server,
        rig,
        bind,
        sessions,
        refreshed: Instant::now(),
    })
}

/// One relay step on `live`, retried (up to twice) when other processes disturbed it.
fn relay_step(
    o: &Opts,
    live: &mut Live,
    cred: &Cred,
    size: usize,
    offered: Option<u64>,
) -> Result<Step, String> {
    let target = live.target;
    if !live.server.alive() {
        return Err(format!(
            "{} died during the relay steps:\n{}",
            target.name(),
            live.server.log_tail()
        ));
    }
    let rate = offered.map_or(Rate::Window(o.window), Rate::Paced);
    let mut retries = 0;
    loop {
        // Permissions last 300 s: refresh well before, as a real client would.
        if target.is_turn() && live.refreshed.elapsed() > o.refresh {
            let r = turnc::refresh(
                &live.rig.clients,
                cred,
                Some(live.bind),
                &live.sessions,
                Duration::from_secs(10),
            );
            if r.ok != live.rig.clients.len() {
                return Err(format!(
                    "{}: refresh failed for {} of {} clients: {:?}\n{}",
                    target.name(),
                    live.rig.clients.len() - r.ok,
                    live.rig.clients.len(),
                    r.failures,
                    live.server.log_tail()
                ));
            }
            live.sessions = r.sessions;
            live.refreshed = Instant::now();
        }
        let before = (target == Target::Callbox).then(callbox_relayed).flatten();
        let (c, cpu) = measure(live.server.pid(), || {
            load::run_step(&live.rig, size, rate, o.step)
        });
        let after = (target == Target::Callbox).then(callbox_relayed).flatten();
        let step = Step {
            target,
            size,
            offered,
            c,
            cpu,
            retries,
            server_counted: before.zip(after).map(|(b, a)| a - b),
        };
        eprintln!(
            "   {:>16} {:>5} B {:>5}: sent {:>7.0}/s relayed {:>7.0}/s back {:>7.0}/s loss {:5.1}% | srv {:.2} cores {:.2} s/Mpkt | gen {:.2} ksoftirqd {:.2} other {:.2} cores{}",
            target.name(),
            size,
            step.rate_label(),
            step.pps(c.sent),
            step.pps(step.relayed()),
            step.pps(c.client_rx),
            step.loss_rt(),
            step.cores(cpu.server),
            step.cpu_per_mpkt(),
            step.cores(cpu.generator),
            step.cores(cpu.ksoftirqd),
            step.other_cores(),
            step.server_counted.map_or(String::new(), |n| format!(
                " | server counted {n} vs {}",
                step.relayed()
            )),
        );
        if !step.disturbed() || retries >= 2 {
            return Ok(step);
        }
        retries += 1;
        eprintln!("   other processes used the CPUs: retrying the step");
        wait_quiet(Duration::from_secs(30));
    }
}

fn control_plane(o: &Opts, server: &mut Server, cred: &Cred) -> Result<Control, String> {
    let mut ctl = Control {
        target: server.target.name(),
        ..Control::default()
    };
    let pid = server.pid();
    let socks: Vec<_> = (0..4)
        .map(|_| udp_socket(server.addr, 1 << 20))
        .collect::<Result<_, _>>()?;
    let (b, cpu) = measure(pid, || {
        turnc::binding_blast(&socks, 32, Duration::from_secs_f64(o.binding_secs))
    });
    eprintln!(
        "   binding: {:.0} answers/s ({} of {} answered in {:.1} s), server {:.2} cores",
        b.answered as f64 / b.elapsed.as_secs_f64(),
        b.answered,
        b.sent,
        b.elapsed.as_secs_f64(),
        cpu.server / b.elapsed.as_secs_f64()
    );
    ctl.binding = Some((b, cpu.server));
    drop(socks);
    std::thread::sleep(Duration::from_millis(300));
    ctl.rss_base = sys::vm_rss_kib(pid);
    let mut held: Vec<UdpSocket> = Vec::new();
    for &level in &o.allocs {
        let add = level.saturating_sub(held.len());
        let socks: Vec<_> = (0..add)
            .map(|_| udp_socket(server.addr, 0))
            .collect::<Result<_, _>>()?;
        let (r, cpu) = measure(pid, || {
            turnc::setup(&socks, cred, None, 64, Duration::from_secs(60))
        });
        let rate = r.ok as f64 / r.elapsed.as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let rss = sys::vm_rss_kib(pid);
        let failures = if r.failures.is_empty() {
            String::new()
        } else {
            format!("{} failed {:?}", add - r.ok, r.failures)
        };
        eprintln!(
            "   allocations to {level}: {:.0}/s, RSS {} KiB, server CPU {:.2} s {}",
            rate,
            rss.unwrap_or(0),
            cpu.server,
            failures
        );
        ctl.allocs.push((level, rate, rss, cpu.server, failures));
        held.extend(socks);
        if !server.alive() {
            return Err(format!(
                "{} died during allocations:\n{}",
                server.target.name(),
                server.log_tail()
            ));
        }
    }
    Ok(ctl)
}

fn cmd_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout })
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn machine(o: &Opts) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let coturn_version = cmd_output(&o.turnserver.display().to_string(), &["--version"]);
    let git = cmd_output(
        "git",
        &[
            "-C",
            &o.root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !cmd_output(
        "git",
        &[
            "-C",
            &o.root.display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
            "Cargo.toml",
            "Cargo.lock",
        ],
    )
    .is_empty();
    vec![
        (
            "nproc",
            std::thread::available_parallelism().map_or("?".into(), |n| n.to_string()),
        ),
        ("CPU", model),
        ("kernel", read_trim("/proc/sys/kernel/osrelease")),
        ("memory", mem),
        (
            "UDP buffers (rmem_default/max, wmem_default/max)",
            format!(
                "{}/{}, {}/{}",
                read_trim("/proc/sys/net/core/rmem_default"),
                read_trim("/proc/sys/net/core/rmem_max"),
                read_trim("/proc/sys/net/core/wmem_default"),
                read_trim("/proc/sys/net/core/wmem_max")
            ),
        ),
        (
            "coturn",
            format!("{} ({})", coturn_version, o.turnserver.display()),
        ),
        ("rustc", cmd_output("rustc", &["-V"])),
        (
            "callbox commit",
            format!(
                "{git}{}",
                if dirty {
                    " (with uncommitted changes under crates/ or Cargo.*)"
                } else {
                    ""
                }
            ),
        ),
    ]
}

/// `YYYY-MM-DD` (UTC) for unix seconds.
fn date(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn f(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "–".into()
    }
}

fn kpps(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}k", v / 1000.0)
    } else {
        "–".into()
    }
}

fn report(o: &Opts, run: &Run, cmdline: &str, started: u64, secs: f64) -> String {
    let mut md = String::new();
    let mut notes_extra: Vec<String> = Vec::new();
    let _ = writeln!(
        md,
        "# TURN relay benchmark, {}{}\n",
        date(started),
        if o.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Command: `{cmdline}` (took {secs:.0} s). Loopback only (127.0.0.1).\n"
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine(o) {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "\n## Setup\n\n- Load: {} client sockets, each Allocate + ChannelBind to one peer socket, send \
         ChannelData; the peer echoes each datagram to the relayed address it came from, so a packet \
         goes client → relay → peer → relay → client. \"Relayed\" = datagrams seen at the peer + back \
         at the clients (each one the server relayed). Loss = 1 − back/sent.\n\
         - All servers run at once (idle when not under load) and each step goes round them in turn, \
         so drift on the machine hits all alike; Binding/allocation/memory tests then run one server \
         at a time.\n\
         - Offered rates are client → relay packets/s, paced every ~100 µs; `max` is unpaced but \
         closed-loop (at most {} packets in flight). Steps last {:.1} s plus a drain of ≤ 1 s.\n\
         - CPU: utime+stime of the server process (all threads) from /proc/PID/stat over the step; \
         \"s/Mpkt\" = server CPU seconds per million relayed packets (= µs per packet). \
         The generator (2 threads: pacer; epoll receiver that also echoes as the peer) runs on the same \
         {} cores and its CPU is shown too. \"ksoftirqd cores\" = the kernel's softirq threads (packet \
         work deferred under load, charged to no process; not in \"server s/Mpkt\"). \"other cores\" = \
         machine-wide busy time (/proc/stat, includes hypervisor steal) minus all of the above: other \
         processes and noise; a step with more than {DISTURBED} is retried (up to twice) after waiting for \
         quiet, and marked ⚠ if still disturbed. Softirq work done inline (loopback delivery) is \
         charged to the process that sent the packet, so each side pays for delivering what it sends.\n\
         - callbox: `callbox serve --roles turn` with turn.workers={}, relay ports {}-{}, quotas 100000.\n\
         - coturn: `turnserver {} --static-auth-secret=… --listening-port={COTURN_PORT} --userdb=… --pidfile=…` \
         (relay threads = callbox's workers; quotas and bandwidth unlimited).\n\
         - forwarder: `cargo xtask udp-forwarder --workers {} --mode per-client`: per worker one \
         SO_REUSEPORT socket on the listen port, recvmmsg/sendmmsg 32 at a time, and one socket per \
         client toward the peer (TURN gives every allocation its own relayed address); channel → \
         client table; no auth, no permissions, no timers. The practical limit of a TURN-shaped relay.\n\
         - forwarder-shared: the same with `--mode shared`: one socket per worker toward the peer for \
         every client, so each received batch leaves in one sendmmsg. No TURN server can do this \
         (the peer would see one address for all clients); it is the floor.\n",
        o.clients,
        o.window,
        o.step.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.workers,
        CALLBOX_RELAY_PORTS.0,
        CALLBOX_RELAY_PORTS.1,
        coturn_args(o.workers).join(" "),
        o.workers,
    );
    let _ = writeln!(md, "## Relay throughput and cost\n");
    let _ = writeln!(
        md,
        "| payload | offered | server | sent/s | relayed/s | back/s | loss % | server cores | server s/Mpkt | generator cores | ksoftirqd cores | other cores |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &size in &o.sizes {
        for &rate in &o.rates {
            for s in run.steps.iter().filter(|s| s.size == size && s.offered == rate) {
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
                    size,
                    s.rate_label(),
                    s.target.name(),
                    kpps(s.pps(s.c.sent)),
                    kpps(s.pps(s.relayed())),
                    kpps(s.pps(s.c.client_rx)),
                    f(s.loss_rt(), 2),
                    f(s.cores(s.cpu.server), 2),
                    f(s.cpu_per_mpkt(), 2),
                    f(s.cores(s.cpu.generator), 2),
                    f(s.cores(s.cpu.ksoftirqd), 2),
                    f(s.other_cores(), 2),
                    if s.disturbed() { " ⚠" } else { "" },
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Ratios\n\nThroughput = packets back at the clients per second (higher is better); \
         CPU = server s/Mpkt (lower is better).\n"
    );
    let _ = writeln!(
        md,
        "| payload | offered | throughput callbox/coturn | throughput callbox/forwarder | CPU callbox/coturn | CPU callbox/forwarder | CPU callbox/forwarder-shared |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let find = |t: Target, size: usize, rate: Option<u64>| {
        run.steps
            .iter()
            .find(|s| s.target == t && s.size == size && s.offered == rate)
    };
    for &size in &o.sizes {
        for &rate in &o.rates {
            let Some(ours) = find(Target::Callbox, size, rate) else {
                continue;
            };
            let ratio = |other: Option<&Step>, cpu: bool| {
                other.map_or("–".into(), |x| {
                    if cpu {
                        f(ours.cpu_per_mpkt() / x.cpu_per_mpkt(), 2)
                    } else {
                        f(ours.c.client_rx as f64 / x.c.client_rx as f64, 2)
                    }
                })
            };
            let (c, w, ws) = (
                find(Target::Coturn, size, rate),
                find(Target::Forwarder, size, rate),
                find(Target::ForwarderShared, size, rate),
            );
            let _ = writeln!(
                md,
                "| {size} B | {} | {} | {} | {} | {} | {} |",
                rate_label(rate),
                ratio(c, false),
                ratio(w, false),
                ratio(c, true),
                ratio(w, true),
                ratio(ws, true)
            );
        }
    }
    let _ = writeln!(md, "\n## STUN Binding, allocations, memory\n");
    let levels: Vec<String> = o.allocs.iter().map(|n| n.to_string()).collect();
    let _ = write!(
        md,
        "| server | Binding answers/s | server cores (Binding) | RSS idle |"
    );
    for l in &levels {
        let _ = write!(md, " allocs/s to {l} | RSS at {l} |");
    }
    let _ = write!(
        md,
        " server µs per allocation | RSS KiB per allocation |\n|---|---|---|---|"
    );
    for _ in &levels {
        let _ = write!(md, "---|---|");
    }
    let _ = writeln!(md, "---|---|");
    for c in &run.control {
        let (bind_rate, bind_cores) = c.binding.map_or((f64::NAN, f64::NAN), |(b, cpu)| {
            let secs = b.elapsed.as_secs_f64();
            (b.answered as f64 / secs, cpu / secs)
        });
        let mib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let _ = write!(
            md,
            "| {} | {} | {} | {} |",
            c.target,
            kpps(bind_rate),
            f(bind_cores, 2),
            mib(c.rss_base)
        );
        for (_, rate, rss, _, fail) in &c.allocs {
            let fail = if fail.is_empty() {
                String::new()
            } else {
                format!(" ({fail})")
            };
            let _ = write!(md, " {}{} | {} |", f(*rate, 0), fail, mib(*rss));
        }
        let per = match (c.rss_base, c.allocs.last()) {
            (Some(b), Some((n, _, Some(r), _, _))) if *n > 0 => f((*r as f64 - b as f64) / *n as f64, 1),
            _ => "–".into(),
        };
        // Server CPU per allocation over all levels (each level's CPU / its new allocations).
        let (mut cpu, mut made, mut prev) = (0.0, 0usize, 0usize);
        for (n, _, _, c, _) in &c.allocs {
            cpu += c;
            made += n - prev;
            prev = *n;
        }
        let us = if made > 0 {
            f(cpu / made as f64 * 1e6, 0)
        } else {
            "–".into()
        };
        let _ = writeln!(md, " {us} | {per} |");
    }
    let _ = writeln!(
        md,
        "\nBinding: 4 sockets, closed loop with ≤ 32 requests outstanding each, {:.1} s. Allocations: \
         fresh client sockets, each Allocate → 401 → Allocate with credentials, ≤ 64 in flight; the \
         allocations are kept, so the second level adds to the first; allocs/s can be bound by the \
         one-thread generator (compare server µs per allocation = server CPU / allocations made). \
         RSS = VmRSS of the server process 0.5 s after each level; kernel socket memory (one relay \
         socket per allocation on both servers) is not in it.",
        o.binding_secs
    );
    for s in &run.steps {
        if let Some(n) = s.server_counted {
            let seen = s.relayed();
            if n > seen + seen / 100 {
                notes_extra.push(format!(
                    "{} B {}: callbox's /metrics counted {n} datagrams relayed, the generator saw {seen}: \
                     {} that the relay sent were dropped at the generator's sockets (generator short of CPU).",
                    s.size,
                    s.rate_label(),
                    n - seen
                ));
            }
        }
    }
    let notes: Vec<&String> = run.notes.iter().chain(notes_extra.iter()).collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {}", n.replace('\n', "\n  "));
        }
    }
    md
}

pub fn main(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let cmdline = format!("cargo xtask bench-turn {}", args.join(" "))
        .trim()
        .to_string();
    let nofile = sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let need = o.allocs.iter().max().copied().unwrap_or(0) + o.clients + 64;
    if (nofile as usize) < need + 32 {
        return Err(format!(
            "RLIMIT_NOFILE hard limit {nofile} is below the {need} descriptors the run needs"
        ));
    }
    if o.build && o.targets.contains(&Target::Callbox) {
        eprintln!("building callbox (release)...");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "callbox"])
            .current_dir(&o.root)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("cargo build --release -p callbox failed".into());
        }
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t0 = Instant::now();
    let (username, password) = mint(&Secret::new(SECRET), "bench", started, 3600);
    let cred = Cred { username, password };
    let tmp = o.root.join("bench-results/tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut run = Run::default();
    let load = wait_quiet(o.wait_quiet);
    if load >= 0.15 {
        run.notes.push(format!(
            "At the start other processes were using {load:.2} cores (waited {:.0} s for quiet).",
            o.wait_quiet.as_secs_f64()
        ));
    }
    // Every target is up at once and the steps go round them, so that whatever drifts on
    // the machine during the run hits all of them alike.
    let mut lives = Vec::new();
    for &t in &o.targets {
        match start_target(&o, t, &cred, &tmp) {
            Ok(l) => lives.push(l),
            Err(e) => {
                eprintln!("!! {e}");
                run.notes.push(format!("{} did not start: {e}", t.name()));
            }
        }
    }
    for &size in &o.sizes {
        for &offered in &o.rates {
            let mut i = 0;
            while i < lives.len() {
                match relay_step(&o, &mut lives[i], &cred, size, offered) {
                    Ok(step) => {
                        run.steps.push(step);
                        i += 1;
                    }
                    Err(e) => {
                        eprintln!("!! {e}");
                        run.notes.push(format!("{} stopped: {e}", lives[i].target.name()));
                        lives.remove(i);
                    }
                }
            }
        }
    }
    // Control plane, one server at a time; the forwarders have none.
    lives.retain(|l| l.target.is_turn());
    for mut live in lives {
        // The relay clients stay open until the server goes: closing their sockets would
        // leave their allocations behind, and a new socket on a reused port would get
        // 437 Allocation Mismatch.
        let name = live.target.name();
        match control_plane(&o, &mut live.server, &cred) {
            Ok(c) => run.control.push(c),
            Err(e) => {
                eprintln!("!! {e}");
                run.notes.push(format!("{name}: {e}"));
            }
        }
        if !live.server.alive() {
            run.notes.push(format!(
                "{name} exited before the end:\n{}",
                live.server.log_tail()
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let md = report(&o, &run, &cmdline, started, secs);
    let dir = o.root.join("bench-results");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // A rerun on the same day gets -2, -3, ...: results are never overwritten.
    let base = format!("turn-{}{}", date(started), if o.quick { "-quick" } else { "" });
    let mut stem = base.clone();
    let mut n = 1;
    while dir.join(format!("{stem}.md")).exists() {
        n += 1;
        stem = format!("{base}-{n}");
    }
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    let js = json!({
        "command": cmdline, "started_unix": started, "seconds": secs,
        "machine": machine(&o).into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect::<serde_json::Map<_, _>>(),
        "options": {"clients": o.clients, "workers": o.workers, "window": o.window, "step_secs": o.step.as_secs_f64(),
                    "coturn_args": coturn_args(o.workers)},
        "steps": run.steps.iter().map(Step::json).collect::<Vec<_>>(),
        "control": run.control.iter().map(|c| json!({
            "target": c.target,
            "binding_answered": c.binding.map(|b| b.0.answered), "binding_sent": c.binding.map(|b| b.0.sent),
            "binding_secs": c.binding.map(|b| b.0.elapsed.as_secs_f64()), "binding_server_cpu_secs": c.binding.map(|b| b.1),
            "rss_idle_kib": c.rss_base,
            "allocation_levels": c.allocs.iter().map(|(n, rate, rss, cpu, fail)| json!({
                "allocations": n, "per_second": rate, "rss_kib": rss, "server_cpu_secs": cpu, "failures": fail})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "notes": run.notes,
    });
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&js).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!(
        "wrote {} and {} in {secs:.0} s",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}
