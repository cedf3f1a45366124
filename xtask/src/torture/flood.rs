//! Floods while a call runs: unauthenticated Allocates from 10,000 source ports,
//! ChannelData for unbound channels, garbage datagrams, WebSocket connection storms and
//! slowloris from many loopback addresses, TLS handshakes that never finish, and a
//! reflection attempt (spoofed-source Allocates through a raw socket, the answers landing
//! on a victim socket). One live relayed session and one signaling pair must lose nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use test_support::tls::TestCa;
use test_support::{CallboxProcess, metric_sum as sum};
use turn_proto::stun::{Class, MessageBuilder, attr, method};

use super::live::Live;
use super::watch::{self, Watch};
use super::{Ctx, Figures, appliance_config};

/// The attack rates (per second, per attacker), high enough to exceed every limit and
/// low enough that the 2-core machine still runs the server.
const DATAGRAM_RATE: u64 = 20_000;
const STORM_RATE: u64 = 400;

/// The counters every attacker keeps.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.sent.load(Relaxed),
            self.answered.load(Relaxed),
            self.refused.load(Relaxed),
            self.other.load(Relaxed),
        )
    }
}

/// Paces a loop at `per_sec`.
struct Pace {
    t0: Instant,
    per_sec: u64,
    n: u64,
}

impl Pace {
    fn new(per_sec: u64) -> Self {
        Pace {
            t0: Instant::now(),
            per_sec,
            n: 0,
        }
    }

    fn tick(&mut self) {
        self.n += 1;
        let due = Duration::from_secs_f64(self.n as f64 / self.per_sec as f64);
        let now = self.t0.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

pub fn run(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &["turn.test"]);
    let config = appliance_config(
        (24000, 24999),
        &format!(
            "[signal]\nheader_timeout_ms = 2000\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             listen = [\"127.0.0.1:0\"]\nhandshake_timeout_ms = 2000\n",
            cert.display(),
            key.display()
        ),
    );
    let server = CallboxProcess::start(&ctx.bin, &config);
    let pid = server.pid();
    let turn = server.udp_v4();
    let signal = server.signal.expect("signal listener");
    let tls = server.tls[0];
    let length = ctx.pick(Duration::from_secs(8), Duration::from_secs(60));
    // The live call runs before, during and after the floods.
    std::thread::sleep(Duration::from_millis(500));
    let before = watch::read(pid);
    let metrics_before = server.http_get("/metrics").1;
    let live = Live::start(turn, &server.secret(), signal, length + Duration::from_secs(4));
    std::thread::sleep(Duration::from_secs(2));
    let watch = Watch::start(pid, Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<(&str, Arc<Tally>)> = [
        "allocate",
        "unbound",
        "garbage",
        "storm",
        "slowloris",
        "tls",
        "reflect",
    ]
    .iter()
    .map(|n| (*n, Arc::new(Tally::default())))
    .collect();
    let t = |name: &str| Arc::clone(&tallies.iter().find(|(n, _)| *n == name).unwrap().1);
    let mut threads = Vec::new();
    let (s, a) = (Arc::clone(&stop), t("allocate"));
    threads.push(std::thread::spawn(move || allocate_flood(turn, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("unbound"));
    threads.push(std::thread::spawn(move || unbound_channel_data(turn, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("garbage"));
    threads.push(std::thread::spawn(move || garbage(turn, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("storm"));
    threads.push(std::thread::spawn(move || ws_storm(signal, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("slowloris"));
    threads.push(std::thread::spawn(move || slowloris(signal, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("tls"));
    threads.push(std::thread::spawn(move || tls_stall(tls, &s, &a)));
    let (s, a) = (Arc::clone(&stop), t("reflect"));
    let reflected = Arc::new(AtomicU64::new(0));
    let victim_bytes = Arc::clone(&reflected);
    threads.push(std::thread::spawn(move || {
        reflection(turn, &s, &a, &victim_bytes)
    }));
    let t0 = Instant::now();
    std::thread::sleep(length);
    stop.store(true, Relaxed);
    for th in threads {
        let _ = th.join();
    }
    let flood_secs = t0.elapsed().as_secs_f64();
    let during = watch.finish();
    let (relayed, signaled) = live.finish();
    // Header and handshake timeouts (2 s) and lingering closes settle.
    std::thread::sleep(Duration::from_secs(3));
    let after = watch::read(pid);
    let metrics = server.http_get("/metrics").1;
    let delta = |name: &str| sum(&metrics, name) - sum(&metrics_before, name);

    f.put("seconds", format!("{flood_secs:.1}"));
    f.put(
        "rss_kib",
        format!("{}/{}/{}", before.rss_kib, during.peak.rss_kib, after.rss_kib),
    );
    f.put("fds", format!("{}/{}/{}", before.fds, during.peak.fds, after.fds));
    f.put("cpu_cores", format!("{:.2}", during.cores));
    for (name, tally) in &tallies {
        let (sent, answered, refused, other) = tally.get();
        f.put(
            name,
            format!("{sent}sent/{answered}ans/{refused}refused/{other}other"),
        );
    }
    let per_s = |v: f64| format!("{:.0}", v / flood_secs);
    f.put(
        "turn_unauth_limited_per_s",
        per_s(delta("callbox_turn_unauthenticated_drops_total")),
    );
    f.put(
        "turn_dropped_per_s",
        per_s(delta("callbox_turn_dropped_packets_total")),
    );
    f.put(
        "http_refused_per_s",
        per_s(delta("callbox_http_connections_refused_total")),
    );
    f.put("header_timeouts", delta("callbox_http_header_timeouts_total"));
    f.put("signal_rejects", delta("callbox_signal_rejects_total"));
    let (r_sent, _, _, _) = t("reflect").get();
    let victim = reflected.load(Relaxed);
    let amplification = victim as f64 / (r_sent.max(1) * REFLECT_REQUEST_BYTES) as f64;
    f.put("reflect_victim_bytes", victim);
    f.put("reflect_amplification", format!("{amplification:.3}"));
    f.put(
        "live_relay",
        format!(
            "{}sent/{}lost/rtt_avg{}ms/max{}ms",
            relayed.sent,
            relayed.lost.map_or("?".into(), |l| l.to_string()),
            relayed.rtt_ms.map_or("?".into(), |r| format!("{r:.2}")),
            relayed.rtt_max_ms.map_or("?".into(), |r| format!("{r:.0}"))
        ),
    );
    f.put(
        "live_signal",
        format!(
            "{}sent/{}echoed/p50_{:.2}ms/p99_{:.2}ms",
            signaled.sent, signaled.echoed, signaled.p50_ms, signaled.p99_ms
        ),
    );

    f.check(relayed.clean(), || {
        format!(
            "the live relayed session lost packets or failed: {}",
            relayed.tail()
        )
    });
    f.check(signaled.clean(), || {
        format!("the live signaling pair lost or misordered messages: {signaled:?}")
    });
    // Unauthenticated answers are bounded by the per-source limit, which each worker
    // keeps on its own (docs/turn.md): burst 200 then 50/s per source address and worker.
    let workers = sum(&metrics, "callbox_turn_workers").max(1.0);
    let per_source = workers * (200.0 + 50.0 * flood_secs);
    let (a_sent, a_answered, _, _) = t("allocate").get();
    f.put("unauth_answer_bound_per_source", format!("{per_source:.0}"));
    f.check(a_answered as f64 <= 40.0 * per_source, || {
        format!("{a_answered} of {a_sent} unauthenticated Allocates from 40 addresses were answered, above the limit's {:.0}", 40.0 * per_source)
    });
    let (_, victim_answers, _, _) = t("reflect").get();
    f.check(victim_answers as f64 <= per_source, || {
        format!("the reflection victim got {victim_answers} answers, above the limit's {per_source:.0}")
    });
    let (_, unbound_answers, _, _) = t("unbound").get();
    let (_, garbage_answers, _, _) = t("garbage").get();
    f.check(unbound_answers == 0 && garbage_answers == 0, || {
        format!("answers to unbound ChannelData ({unbound_answers}) or garbage ({garbage_answers})")
    });
    f.check(amplification <= 1.0, || {
        format!("the reflection reached the victim with {amplification:.2}x the attacker's bytes")
    });
    let (slow_sent, slow_429, slow_closed, slow_open) = t("slowloris").get();
    f.check(slow_open == 0, || {
        format!("{slow_open} slowloris connections outlived the header timeout ({slow_closed} were closed)")
    });
    // 60 from each of 20 addresses against a cap of 50 per address: 200 refused at once.
    f.check(slow_429 == slow_sent.saturating_sub(1000), || {
        format!(
            "{slow_429} of {slow_sent} slowloris connections got 429; {} expected",
            slow_sent.saturating_sub(1000)
        )
    });
    let (_, _, tls_closed, tls_open) = t("tls").get();
    f.check(tls_open == 0, || {
        format!("{tls_open} stalled TLS handshakes outlived the handshake timeout ({tls_closed} were closed)")
    });
    // Nothing the floods opened stays: descriptors back to where they were (the live
    // sessions ended meanwhile), memory not grown by more than 64 MiB.
    f.check(after.fds <= before.fds + 4, || {
        format!(
            "descriptors {} before, {} after the floods",
            before.fds, after.fds
        )
    });
    f.check(after.rss_kib <= before.rss_kib + 64 * 1024, || {
        format!(
            "RSS {} KiB before, {} KiB after the floods",
            before.rss_kib, after.rss_kib
        )
    });
    f.check(std::fs::metadata(format!("/proc/{pid}")).is_ok(), || {
        "callbox died".into()
    });
    f
}

fn allocate_request(tid: u64) -> Vec<u8> {
    let mut t = [0u8; 12];
    t[4..].copy_from_slice(&tid.to_be_bytes());
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::ALLOCATE, Class::Request, &t);
    b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
    b.add_fingerprint();
    b.finish();
    buf
}

/// Counts what arrived on `socks` without waiting.
fn drain(socks: &[UdpSocket], tally: &Tally) {
    let mut buf = [0u8; 2048];
    for s in socks {
        while s.recv(&mut buf).is_ok() {
            tally.answered.fetch_add(1, Relaxed);
        }
    }
}

/// Unauthenticated Allocates, round robin from 10,000 sockets on 40 loopback addresses.
fn allocate_flood(turn: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut socks = Vec::new();
    for i in 0..10_000u32 {
        let ip = Ipv4Addr::new(127, 0, 1, 1 + (i % 40) as u8);
        let Ok(s) = UdpSocket::bind((ip, 0)) else { break };
        let _ = s.set_nonblocking(true);
        socks.push(s);
    }
    let mut pace = Pace::new(DATAGRAM_RATE);
    let mut i = 0usize;
    while !stop.load(Relaxed) && !socks.is_empty() {
        let s = &socks[i % socks.len()];
        if s.send_to(&allocate_request(i as u64), turn).is_ok() {
            tally.sent.fetch_add(1, Relaxed);
        }
        i += 1;
        if i.is_multiple_of(1000) {
            drain(&socks, tally);
        }
        pace.tick();
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&socks, tally);
}

/// ChannelData for channels nobody bound.
fn unbound_channel_data(turn: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = s.set_nonblocking(true);
    let mut pace = Pace::new(DATAGRAM_RATE);
    let mut n: u16 = 0;
    let mut frame = vec![0u8; 104];
    while !stop.load(Relaxed) {
        let ch = 0x4000 + (n % 0x3fff);
        frame[..2].copy_from_slice(&ch.to_be_bytes());
        frame[2..4].copy_from_slice(&100u16.to_be_bytes());
        if s.send_to(&frame, turn).is_ok() {
            tally.sent.fetch_add(1, Relaxed);
        }
        n = n.wrapping_add(1);
        pace.tick();
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(std::slice::from_ref(&s), tally);
}

/// Random bytes of random lengths, some starting like STUN.
fn garbage(turn: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let socks: Vec<UdpSocket> = (0..16)
        .filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok())
        .collect();
    for s in &socks {
        let _ = s.set_nonblocking(true);
    }
    let mut pace = Pace::new(DATAGRAM_RATE);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = [0u8; 1500];
    let mut i = 0usize;
    while !stop.load(Relaxed) {
        // xorshift: cheap, reproducible noise.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 1400) as usize;
        for (j, b) in buf[..len].iter_mut().enumerate() {
            *b = (x >> ((j % 8) * 8)) as u8 ^ j as u8;
        }
        if x.is_multiple_of(3) && len >= 20 {
            // A STUN-looking header with the magic cookie and a wrong length.
            buf[0] = 0;
            buf[1] = 1;
            buf[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        }
        if socks[i % socks.len()].send_to(&buf[..len], turn).is_ok() {
            tally.sent.fetch_add(1, Relaxed);
        }
        i += 1;
        pace.tick();
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&socks, tally);
}

const UPGRADE_TAIL: &str = "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// WebSocket upgrades from 200 loopback addresses, each closed as soon as it is answered.
fn ws_storm(signal: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut pace = Pace::new(STORM_RATE);
    let mut i: u32 = 0;
    while !stop.load(Relaxed) {
        let source = Ipv4Addr::new(127, 0, 2, 1 + (i % 200) as u8);
        i += 1;
        pace.tick();
        let Ok(mut s) = connect_from(source, signal) else {
            tally.other.fetch_add(1, Relaxed);
            continue;
        };
        tally.sent.fetch_add(1, Relaxed);
        let req = format!("GET /v1/signal?room=storm-{i} HTTP/1.1\r\n{UPGRADE_TAIL}");
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        if s.write_all(req.as_bytes()).is_err() {
            tally.refused.fetch_add(1, Relaxed);
            continue;
        }
        let mut head = [0u8; 12];
        match s.read_exact(&mut head) {
            Ok(()) if &head[9..12] == b"101" => tally.answered.fetch_add(1, Relaxed),
            Ok(()) => tally.refused.fetch_add(1, Relaxed),
            Err(_) => tally.other.fetch_add(1, Relaxed),
        };
    }
}

fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// Connections that send a header byte a second and never finish: 1,200 from 20 addresses,
/// 60 each, past `signal.max_connections_per_address` (50). Counts the connections the
/// server refused with 429 (`answered`), those it closed otherwise, at the header timeout
/// (`refused`), and those still open at the end (`other`).
fn slowloris(signal: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conns: Vec<Option<TcpStream>> = Vec::new();
    // Address by address, so that each address's 51st connection comes right after its
    // first 50 (well within the header timeout).
    for i in 0..1200u32 {
        let source = Ipv4Addr::new(127, 0, 3, 1 + (i / 60) as u8);
        if let Ok(s) = connect_from(source, signal) {
            let _ = s.set_nonblocking(true);
            conns.push(Some(s));
            tally.sent.fetch_add(1, Relaxed);
        }
    }
    // What the server did with a connection: Some(true) answered 429, Some(false) closed
    // (or reset) it, None still open.
    let verdict = |s: &mut TcpStream| -> Option<bool> {
        let mut probe = [0u8; 256];
        match s.read(&mut probe) {
            Ok(n) if n >= 12 && &probe[9..12] == b"429" => Some(true),
            Ok(_) => Some(false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(_) => Some(false),
        }
    };
    let settle = |c: &mut Option<TcpStream>| {
        if let Some(s) = c
            && let Some(answered) = verdict(s)
        {
            let counter = if answered { &tally.answered } else { &tally.refused };
            counter.fetch_add(1, Relaxed);
            *c = None;
        }
    };
    let mut next = Instant::now();
    let mut byte = 0usize;
    let line = b"GET /v1/signal?room=slow HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    while !stop.load(Relaxed) {
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            for c in conns.iter_mut() {
                settle(c);
                if let Some(s) = c
                    && s.write_all(&line[byte % line.len()..][..1]).is_err()
                {
                    tally.refused.fetch_add(1, Relaxed);
                    *c = None;
                }
            }
            byte += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give the header timeout (2 s) its chance for connections opened late.
    std::thread::sleep(Duration::from_millis(2500));
    for c in conns.iter_mut() {
        settle(c);
    }
    let open = conns.iter().filter(|c| c.is_some()).count() as u64;
    tally.other.fetch_add(open, Relaxed);
}

/// TLS connections that send a partial ClientHello (or nothing) and stall, from 20
/// addresses, opened in waves; counted like [`slowloris`].
fn tls_stall(tls: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conns = Vec::new();
    let mut i: u32 = 0;
    let deadline_open = Instant::now() + Duration::from_secs(3);
    while !stop.load(Relaxed) && Instant::now() < deadline_open && i < 600 {
        let source = Ipv4Addr::new(127, 0, 4, 1 + (i % 20) as u8);
        if let Ok(mut s) = connect_from(source, tls) {
            if i.is_multiple_of(2) {
                // A handshake record header announcing 512 bytes, then 10 of them.
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
            }
            let _ = s.set_nonblocking(true);
            conns.push(s);
            tally.sent.fetch_add(1, Relaxed);
        }
        i += 1;
    }
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    for c in conns.iter_mut() {
        let mut probe = [0u8; 256];
        match c.read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tally.other.fetch_add(1, Relaxed),
            _ => tally.refused.fetch_add(1, Relaxed),
        };
    }
}

/// The size of the spoofed request (IPv4 and UDP headers excluded).
const REFLECT_REQUEST_BYTES: u64 = 36;

/// Allocates with a spoofed source (a victim socket on 127.0.0.99), sent through a raw
/// socket: the victim counts the bytes the server sends it.
fn reflection(turn: SocketAddr, stop: &AtomicBool, tally: &Tally, victim_bytes: &AtomicU64) {
    let victim = UdpSocket::bind("127.0.0.99:0").expect("bind the victim");
    let _ = victim.set_read_timeout(Some(Duration::from_millis(50)));
    let victim_addr = match victim.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        _ => return,
    };
    let counted = std::thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            loop {
                match victim.recv(&mut buf) {
                    Ok(k) => {
                        n += k as u64;
                        tally.answered.fetch_add(1, Relaxed);
                    }
                    Err(_) if stop.load(Relaxed) => return n,
                    Err(_) => {}
                }
            }
        });
        let SocketAddr::V4(server) = turn else {
            return 0;
        };
        // SAFETY: plain socket(2) call; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            tally.other.fetch_add(1, Relaxed);
        } else {
            let mut pace = Pace::new(DATAGRAM_RATE / 4);
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                let packet = spoofed_udp(victim_addr, server, &allocate_request(1 << 40 | i));
                let to = crate::sys::to_sockaddr(server);
                // SAFETY: sends `packet` to a valid sockaddr_in of the right size.
                let sent = unsafe {
                    libc::sendto(
                        fd,
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&to as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if sent > 0 {
                    tally.sent.fetch_add(1, Relaxed);
                }
                i += 1;
                pace.tick();
            }
            // SAFETY: closes the descriptor opened above.
            unsafe { libc::close(fd) };
        }
        std::thread::sleep(Duration::from_millis(200));
        counter.join().unwrap_or(0)
    });
    victim_bytes.store(counted, Relaxed);
}

/// An IPv4 + UDP packet from `from` to `to` (IP_HDRINCL: the kernel fills the IP
/// checksum; the UDP checksum 0 means none, valid for IPv4).
fn spoofed_udp(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
