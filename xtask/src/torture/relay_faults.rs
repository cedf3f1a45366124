//! Faults of the relay's own sends and ports: a send the kernel refuses (EPERM from an
//! nftables drop, ENETUNREACH with no route) drops that packet, counts it and keeps the
//! allocation (coturn, run through the same probe, is reported beside it); an exhausted
//! relay port range answers 508 to new allocations, leaves the
//! live ones alone, and recovers when a port frees.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;
use test_support::{CallboxProcess, TurnClient};

use super::{Ctx, Figures, appliance_config, wait_until};
use test_support::metric_sum as sum;

/// A UDP peer on 127.0.0.1 that counts what it receives.
pub(super) struct Peer {
    sock: UdpSocket,
}

impl Peer {
    pub(super) fn new() -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        // A whole burst waits in the buffer until it is counted.
        crate::sys::set_buffers(&sock, 8 << 20);
        Peer { sock }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Datagrams received until 300 ms pass without one.
    pub(super) fn count(&self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while self.sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

fn send_drops(server: &CallboxProcess) -> f64 {
    sum(&server.http_get("/metrics").1, "callbox_turn_send_drops_total")
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft (nftables): {e}"))?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let st = child.wait().map_err(|e| e.to_string())?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("nft -f failed on: {script}"))
}

/// What one TURN server did around sends the kernel refused.
struct SendFail {
    before: usize,
    during: usize,
    after: usize,
    /// The allocation's Refresh afterwards (`None`: success, it is still there).
    refresh: Option<u16>,
    /// callbox's `callbox_turn_send_drops_total` grew by these (EPERM, ENETUNREACH).
    drops: Option<(f64, f64)>,
}

/// One allocation with a channel to a UDP peer on 127.0.0.1 and one to an unreachable
/// address: `burst` packets through the first, then the same while an nftables rule drops
/// what the relay sends to the peer (EPERM) and through the second (ENETUNREACH), then the
/// rule is gone and `burst` again. `drops` reads the server's drop counter, if it has one.
fn send_fail_probe(
    turn: SocketAddr,
    secret: &str,
    burst: usize,
    drops: Option<&dyn Fn() -> f64>,
) -> Result<SendFail, String> {
    let peer = Peer::new();
    // TEST-NET-2 (RFC 5737): public as far as the policy goes, and this namespace has no
    // route to it, so the kernel answers ENETUNREACH.
    let unreachable: SocketAddr = "198.51.100.7:9".parse().unwrap();
    let (u, p) = mint(&Secret::new(secret), "sendfail", unix_now(), 600);
    let mut c = TurnClient::new(turn, &u, &p, "callbox");
    let setup = [
        ("Allocate", c.allocate().code),
        (
            "CreatePermission",
            c.create_permission(&[peer.addr(), unreachable]).code,
        ),
        ("ChannelBind", c.channel_bind(0x4000, peer.addr()).code),
        ("ChannelBind", c.channel_bind(0x4001, unreachable).code),
    ];
    if let Some((what, code)) = setup.iter().find(|(_, code)| code.is_some()) {
        return Err(format!("{what} answered {code:?}"));
    }
    let send = |ch: u16| {
        for i in 0..burst {
            c.send_channel_data(ch, format!("packet {i}").as_bytes());
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    send(0x4000);
    let before = peer.count();
    let drops0 = drops.map(|d| d());
    let port = peer.addr().port();
    nft(&format!(
        "table inet torture {{\n chain out {{\n  type filter hook output priority 0;\n  udp dport {port} drop\n }}\n}}\n"
    ))?;
    send(0x4000);
    let during = peer.count();
    let eperm = drops
        .zip(drops0)
        .map(|(d, d0)| wait_for(d, d0 + burst as f64) - d0);
    send(0x4001);
    let unreach = drops
        .zip(drops0)
        .zip(eperm)
        .map(|((d, d0), e)| wait_for(d, d0 + e + burst as f64) - d0 - e);
    nft("delete table inet torture")?;
    send(0x4000);
    let after = peer.count();
    let refresh = c.refresh(600).code;
    Ok(SendFail {
        before,
        during,
        after,
        refresh,
        drops: eperm.zip(unreach),
    })
}

/// callbox drops and counts a refused send and keeps the allocation; the same probe
/// against coturn (Debian's `turnserver`) is reported beside it.
pub fn send_fail(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let burst = ctx.pick(100, 1000);
    let server = CallboxProcess::start(&ctx.bin, &appliance_config((25000, 25099), ""));
    let drops = || send_drops(&server);
    match send_fail_probe(server.udp_v4(), &server.secret(), burst, Some(&drops)) {
        Ok(r) => {
            let (eperm, unreach) = r.drops.unwrap_or_default();
            f.put("relayed_before", r.before);
            f.put("relayed_while_refused", r.during);
            f.put("drops_eperm", eperm);
            f.put("drops_enetunreach", unreach);
            f.put("relayed_after", r.after);
            f.put("refresh_after", r.refresh.map_or("ok".into(), |c| c.to_string()));
            f.check(r.before == burst && r.after == burst, || {
                format!(
                    "relayed {} before and {} after of {burst} each",
                    r.before, r.after
                )
            });
            f.check(r.during == 0, || {
                format!("{} packets passed the drop rule", r.during)
            });
            f.check(eperm >= burst as f64 && unreach >= burst as f64, || {
                format!(
                    "send_drops grew by {eperm} (EPERM) and {unreach} (ENETUNREACH), {burst} each expected"
                )
            });
            f.check(r.refresh.is_none(), || {
                format!("the allocation is gone: Refresh answered {:?}", r.refresh)
            });
        }
        Err(e) => f.check(false, || format!("callbox: {e}")),
    }
    drop(server);
    match coturn() {
        Ok((_coturn, _dir, addr)) => match send_fail_probe(addr, COTURN_SECRET, burst, None) {
            Ok(r) => {
                f.put("coturn_relayed_before", r.before);
                f.put("coturn_relayed_after", r.after);
                f.put(
                    "coturn_refresh_after",
                    r.refresh.map_or("ok".into(), |c| c.to_string()),
                );
            }
            Err(e) => f.put("coturn", format!("failed:{}", e.replace(' ', "_"))),
        },
        Err(e) => f.check(false, || e),
    }
    f
}

const COTURN_SECRET: &str = "torture-coturn-secret";

/// Debian's coturn on 127.0.0.1, the benchmark's flags plus its REST secret.
/// Returns the process (killed when dropped), its directory and its address.
fn coturn() -> Result<(test_support::Background, tempfile::TempDir, SocketAddr), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = 23490;
    let mut cmd = Command::new("/usr/bin/turnserver");
    cmd.args(crate::bench::targets::coturn_args(1))
        .arg(format!("--static-auth-secret={COTURN_SECRET}"))
        .arg(format!("--listening-port={port}"))
        .arg(format!("--userdb={}", dir.path().join("turndb").display()))
        .arg(format!(
            "--pidfile={}",
            dir.path().join("turnserver.pid").display()
        ));
    let child = test_support::Background::spawn(&mut cmd);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let SocketAddr::V4(v4) = addr else { unreachable!() };
    if !wait_until(Duration::from_secs(10), || {
        crate::bench::targets::binding_probe(v4)
    }) {
        return Err("coturn's turnserver did not answer a Binding within 10 s".into());
    }
    Ok((child, dir, addr))
}

fn wait_for(read: &dyn Fn() -> f64, at_least: f64) -> f64 {
    let mut v = 0.0;
    wait_until(Duration::from_secs(3), || {
        v = read();
        v >= at_least
    });
    v
}

pub fn ports_exhausted(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    const PORTS: u16 = 8;
    let server = CallboxProcess::start(
        &ctx.bin,
        &appliance_config((25200, 25200 + PORTS - 1), "user_quota = 100\n"),
    );
    let peer = Peer::new();
    let mut live = Vec::new();
    for i in 0..PORTS {
        let mut c = server.turn_client(&format!("u{i}"));
        let code = c.allocate().code;
        f.check(code.is_none(), || {
            format!("allocation {i} of {PORTS} failed with {code:?}")
        });
        c.create_permission(&[peer.addr()]);
        c.channel_bind(0x4000, peer.addr());
        live.push(c);
    }
    let mut extra = server.turn_client("extra");
    let full = extra.allocate().code;
    for c in &live {
        c.send_channel_data(0x4000, b"still here");
    }
    let relayed = peer.count();
    // One frees its port: a new allocation fits again.
    let freed = live[0].refresh(0).code;
    let mut retry = server.turn_client("retry");
    let again = retry.allocate().code;
    f.put("ports", PORTS);
    f.put("answer_when_full", full.map_or("none".into(), |c| c.to_string()));
    f.put("live_relayed", format!("{relayed}/{PORTS}"));
    f.put("after_free", again.map_or("ok".into(), |c| c.to_string()));
    f.check(full == Some(508), || {
        format!("the allocation past the range got {full:?}, not 508")
    });
    f.check(relayed == PORTS as usize, || {
        format!("only {relayed} of {PORTS} live allocations relayed")
    });
    f.check(freed.is_none() && again.is_none(), || {
        format!("freeing a port did not make room: refresh {freed:?}, allocate {again:?}")
    });
    f
}
