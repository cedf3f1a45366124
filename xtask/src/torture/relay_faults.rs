//! Faults of the relay's own sends and ports: a send the kernel refuses (EPERM from an
//! nftables drop, ENETUNREACH with no route) drops that packet, counts it and keeps the
//! allocation; an exhausted relay port range answers 508 to new allocations, leaves the
//! live ones alone, and recovers when a port frees.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;
use test_support::{CallboxProcess, TurnClient};

use super::flood::sum;
use super::{Ctx, Figures, appliance_config, wait_until};

/// A UDP peer on 127.0.0.1 that counts what it receives.
struct Peer {
    sock: UdpSocket,
}

impl Peer {
    fn new() -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        Peer { sock }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Datagrams received until 300 ms pass without one.
    fn count(&self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while self.sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

fn client(server: &CallboxProcess, user: &str) -> TurnClient {
    let (u, p) = mint(&Secret::new(server.secret()), user, unix_now(), 600);
    TurnClient::new(server.udp_v4(), &u, &p, "callbox")
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

pub fn send_fail(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let server = CallboxProcess::start(&ctx.bin, &appliance_config((25000, 25099), ""));
    let peer = Peer::new();
    // TEST-NET-2 (RFC 5737): public as far as the policy goes, and this namespace has no
    // route to it, so the kernel answers ENETUNREACH.
    let unreachable: SocketAddr = "198.51.100.7:9".parse().unwrap();
    let mut c = client(&server, "sendfail");
    f.check(c.allocate().code.is_none(), || "Allocate failed".into());
    f.check(
        c.create_permission(&[peer.addr(), unreachable]).code.is_none(),
        || "CreatePermission failed".into(),
    );
    f.check(c.channel_bind(0x4000, peer.addr()).code.is_none(), || {
        "ChannelBind failed".into()
    });
    f.check(c.channel_bind(0x4001, unreachable).code.is_none(), || {
        "ChannelBind failed".into()
    });
    let burst = ctx.pick(100, 1000);
    let send = |c: &TurnClient, ch: u16| {
        for i in 0..burst {
            c.send_channel_data(ch, format!("packet {i}").as_bytes());
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    send(&c, 0x4000);
    let before = peer.count();
    let drops0 = send_drops(&server);

    // EPERM: an nftables rule drops what the relay sends to the peer's port.
    let port = peer.addr().port();
    let rule = format!(
        "table inet torture {{\n chain out {{\n  type filter hook output priority 0;\n  udp dport {port} drop\n }}\n}}\n"
    );
    if let Err(e) = nft(&rule) {
        f.check(false, || e);
        return f;
    }
    send(&c, 0x4000);
    let during = peer.count();
    let drops_eperm = wait_drops(&server, drops0 + burst as f64) - drops0;
    // ENETUNREACH: no route.
    send(&c, 0x4001);
    let drops_unreach = wait_drops(&server, drops0 + 2.0 * burst as f64) - drops0 - drops_eperm;
    let _ = nft("delete table inet torture");

    // The same allocation and channel relay again.
    send(&c, 0x4000);
    let after = peer.count();
    let refresh = c.refresh(600).code;
    f.put("relayed_before", before);
    f.put("relayed_while_refused", during);
    f.put("drops_eperm", drops_eperm);
    f.put("drops_enetunreach", drops_unreach);
    f.put("relayed_after", after);
    f.check(before == burst && after == burst, || {
        format!("relayed {before} before and {after} after of {burst} each")
    });
    f.check(during == 0, || format!("{during} packets passed the drop rule"));
    f.check(drops_eperm >= burst as f64 && drops_unreach >= burst as f64, || {
        format!("send_drops grew by {drops_eperm} (EPERM) and {drops_unreach} (ENETUNREACH), {burst} each expected")
    });
    f.check(refresh.is_none(), || {
        format!("the allocation is gone: Refresh answered {refresh:?}")
    });
    f
}

fn wait_drops(server: &CallboxProcess, at_least: f64) -> f64 {
    let mut v = 0.0;
    wait_until(Duration::from_secs(3), || {
        v = send_drops(server);
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
        let mut c = client(&server, &format!("u{i}"));
        let code = c.allocate().code;
        f.check(code.is_none(), || {
            format!("allocation {i} of {PORTS} failed with {code:?}")
        });
        c.create_permission(&[peer.addr()]);
        c.channel_bind(0x4000, peer.addr());
        live.push(c);
    }
    let mut extra = client(&server, "extra");
    let full = extra.allocate().code;
    for c in &live {
        c.send_channel_data(0x4000, b"still here");
    }
    let relayed = peer.count();
    // One frees its port: a new allocation fits again.
    let freed = live[0].refresh(0).code;
    let mut retry = client(&server, "retry");
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
