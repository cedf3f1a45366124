//! The load and the numbers: starting each target's clients, the relay steps (retried when
//! other processes disturb them), the control-plane tests (Binding, allocations, memory), and
//! the CPU accounting around each of them.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::options::Opts;
use super::targets::{self, Server, Target};
use crate::load::{self, Rate, Rig, StepCounts};
use crate::sys;
use crate::turnc::{self, BindTo, Cred};

pub const CHANNEL_BASE: u16 = 0x4000;
/// Cores used by other processes above which a step counts as disturbed (and is retried).
pub const DISTURBED: f64 = 0.25;

pub fn udp_socket(connect: SocketAddrV4, buf: i32) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    if buf > 0 {
        sys::set_buffers(&s, buf);
    }
    s.connect(connect).map_err(|e| format!("connect: {e}"))?;
    Ok(s)
}

#[derive(Debug, Clone)]
pub struct Step {
    pub target: Target,
    pub size: usize,
    pub offered: Option<u64>,
    pub c: StepCounts,
    pub cpu: Cpu,
    /// Retries because other processes disturbed it; still disturbed if `other_cores` is high.
    pub retries: u32,
    pub server_counted: Option<u64>,
}

impl Step {
    pub fn relayed(&self) -> u64 {
        self.c.peer_rx + self.c.client_rx
    }
    pub fn pps(&self, n: u64) -> f64 {
        n as f64 / self.c.send_secs
    }
    pub fn loss_rt(&self) -> f64 {
        if self.c.sent == 0 {
            f64::NAN
        } else {
            100.0 * (1.0 - self.c.client_rx as f64 / self.c.sent as f64)
        }
    }
    pub fn loss_fwd(&self) -> f64 {
        if self.c.sent == 0 {
            f64::NAN
        } else {
            100.0 * (1.0 - self.c.peer_rx as f64 / self.c.sent as f64)
        }
    }
    /// Server CPU seconds per million relayed packets (= µs per relayed packet).
    pub fn cpu_per_mpkt(&self) -> f64 {
        if self.relayed() == 0 {
            f64::NAN
        } else {
            self.cpu.server / self.relayed() as f64 * 1e6
        }
    }
    pub fn rate_label(&self) -> String {
        rate_label(self.offered)
    }
    /// Cores busy with neither the server nor the generator (other processes, kernel threads).
    pub fn other_cores(&self) -> f64 {
        self.cpu.machine.0 - (self.cpu.server + self.cpu.generator + self.cpu.ksoftirqd) / self.c.total_secs
    }
    pub fn cores(&self, secs: f64) -> f64 {
        secs / self.c.total_secs
    }
    pub fn disturbed(&self) -> bool {
        self.other_cores() > DISTURBED
    }
    pub fn json(&self) -> Value {
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

pub fn rate_label(r: Option<u64>) -> String {
    match r {
        Some(r) if r % 1000 == 0 => format!("{}k", r / 1000),
        Some(r) => r.to_string(),
        None => "max".into(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Control {
    pub target: &'static str,
    pub binding: Option<(turnc::BindingResult, f64)>,
    pub rss_base: Option<u64>,
    /// (total allocations, allocations/s of this level, RSS KiB after, server CPU s, failures)
    pub allocs: Vec<(usize, f64, Option<u64>, f64, String)>,
}

#[derive(Debug, Default)]
pub struct Run {
    pub steps: Vec<Step>,
    pub control: Vec<Control>,
    pub notes: Vec<String>,
}

/// CPU seconds used while something ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    pub generator: f64,
    pub ksoftirqd: f64,
    /// Cores busy machine-wide, and of those in irq/softirq ticks.
    pub machine: (f64, f64),
}

/// Runs `f`; returns its result and the CPU used meanwhile.
pub fn measure<T>(pid: u32, f: impl FnOnce() -> T) -> (T, Cpu) {
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
pub fn other_load(secs: f64) -> f64 {
    let (g0, m0) = (sys::cpu_seconds(None), sys::machine_jiffies());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (g1, m1) = (sys::cpu_seconds(None), sys::machine_jiffies());
    sys::cores_between(m0, m1).0 - (g1 - g0) / secs
}

/// Waits up to `max` for the machine to be quiet (< 0.15 cores busy elsewhere); returns
/// the last load seen.
pub fn wait_quiet(max: Duration) -> f64 {
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
pub struct Live {
    pub target: Target,
    pub server: Server,
    pub rig: Rig,
    pub bind: BindTo,
    pub sessions: Vec<turnc::Session>,
    pub refreshed: Instant,
}

/// Starts `target`, allocates and binds its clients, and checks a gentle load comes back.
pub fn start_target(o: &Opts, target: Target, cred: &Cred, tmp: &Path) -> Result<Live, String> {
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sys::set_buffers(&peer, 8 << 20);
    let peer_addr = sys::v4(peer.local_addr().map_err(|e| e.to_string())?);
    let server = targets::spawn(o, target, &tmp.join(target.name()), peer_addr)?;
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
pub fn relay_step(
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
        let before = (target == Target::Callbox)
            .then(targets::callbox_relayed)
            .flatten();
        let (c, cpu) = measure(live.server.pid(), || {
            load::run_step(&live.rig, size, rate, o.step)
        });
        let after = (target == Target::Callbox)
            .then(targets::callbox_relayed)
            .flatten();
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

pub fn control_plane(o: &Opts, server: &mut Server, cred: &Cred) -> Result<Control, String> {
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
