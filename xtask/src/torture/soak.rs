//! Soak: steady signaling and relay load with churn (pairs leave and join again, relay
//! clients end their allocations and new ones start) for `--soak-seconds` (one hour by
//! default; three minutes with `--short`). Resident memory and descriptors must stay flat
//! (least-squares slope over the run after a warm-up, bounded), latency must not drift
//! (the last window's median round trip against the first's), and the server's counters
//! must agree with what the generator did.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use callbox_core::Secret;
use callbox_core::credentials::mint;
use callbox_core::time::unix_now;
use serde_json::json;
use test_support::ws::WsClient;
use test_support::{CallboxProcess, TurnClient};

use super::watch::{self, slope};
use super::{Ctx, Figures, appliance_config};
use test_support::metric_sum as sum;

/// Signaling pairs, each doing a round trip every 100 ms and rejoining every 5 s.
const PAIRS: usize = 10;
/// Relay clients, each sending 50 packets a second and replaced every 10 s.
const RELAY_CLIENTS: usize = 10;

#[derive(Default)]
struct Counts {
    signal_sent: AtomicU64,
    signal_received: AtomicU64,
    signal_errors: AtomicU64,
    joins: AtomicU64,
    relay_sent: AtomicU64,
    allocations: AtomicU64,
    relay_errors: AtomicU64,
}

pub fn run(ctx: &Ctx) -> Figures {
    let mut f = Figures::default();
    let server = CallboxProcess::start(&ctx.bin, &appliance_config((26000, 26999), "user_quota = 1000\n"));
    let pid = server.pid();
    let turn = server.udp_v4();
    let signal = server.signal.expect("signal listener");
    let secret = server.secret();
    let length = ctx.soak;
    let every = if length > Duration::from_secs(600) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    let peer = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    peer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // Room for a few seconds of traffic if this thread is not scheduled for a while.
    crate::sys::set_buffers(&peer, 8 << 20);
    let peer_addr = peer.local_addr().unwrap();
    let metrics0 = server.http_get("/metrics").1;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    let peer_thread = {
        let (peer, stop, received) = (Arc::clone(&peer), Arc::clone(&stop), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                match peer.recv(&mut buf) {
                    Ok(_) => {
                        received.fetch_add(1, Relaxed);
                    }
                    Err(_) if stop.load(Relaxed) => break,
                    Err(_) => {}
                }
            }
        })
    };
    let relay_thread = {
        let (counts, stop, secret) = (Arc::clone(&counts), Arc::clone(&stop), secret.clone());
        std::thread::spawn(move || relay_load(turn, &secret, peer_addr, &counts, &stop))
    };
    let signal_thread = {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(signal_load(signal, counts, stop))
        })
    };

    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < length {
        std::thread::sleep(every);
        samples.push((t0.elapsed().as_secs_f64() / 60.0, watch::read(pid)));
    }
    stop.store(true, Relaxed);
    let _ = relay_thread.join();
    let rtts = signal_thread.join().unwrap_or_default();
    let _ = peer_thread.join();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = server.http_get("/metrics").1;
    let delta = |name: &str| sum(&metrics, name) - sum(&metrics0, name);

    // After the first fifth (buffers and pools warming up).
    let warm: Vec<_> = samples.iter().skip(samples.len() / 5).collect();
    let rss_slope = slope(
        &warm
            .iter()
            .map(|(t, r)| (*t, r.rss_kib as f64))
            .collect::<Vec<_>>(),
    );
    let fd_slope = slope(&warm.iter().map(|(t, r)| (*t, r.fds as f64)).collect::<Vec<_>>());
    let window = (rtts.len() / 6).max(1);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let first = median(&rtts[..window.min(rtts.len())]);
    let last = median(&rtts[rtts.len().saturating_sub(window)..]);
    let c = |a: &AtomicU64| a.load(Relaxed);
    let relay_sent = c(&counts.relay_sent);
    let relay_got = received.load(Relaxed);
    let created = delta("callbox_turn_allocations_created_total");
    let to_peer = metric_labelled(
        &metrics,
        &metrics0,
        "callbox_turn_relayed_packets_total{direction=\"to_peer\"}",
    );
    let messages = metric_labelled(
        &metrics,
        &metrics0,
        "callbox_signal_messages_total{type=\"message\"}",
    );

    f.put("minutes", format!("{:.1}", t0.elapsed().as_secs_f64() / 60.0));
    let (first_r, last_r) = (
        warm.first().map(|s| s.1).unwrap_or_default(),
        samples.last().map(|s| s.1).unwrap_or_default(),
    );
    f.put("rss_kib", format!("{}->{}", first_r.rss_kib, last_r.rss_kib));
    f.put("rss_slope_kib_per_min", format!("{rss_slope:.1}"));
    f.put("fds", format!("{}->{}", first_r.fds, last_r.fds));
    f.put("fd_slope_per_min", format!("{fd_slope:.2}"));
    f.put("rtt_p50_ms", format!("{first:.2}->{last:.2}"));
    f.put(
        "signal",
        format!(
            "{}sent/{}received/{}joins/server{}",
            c(&counts.signal_sent),
            c(&counts.signal_received),
            c(&counts.joins),
            messages
        ),
    );
    f.put(
        "relay",
        format!("{relay_sent}sent/{relay_got}received/server{to_peer}"),
    );
    f.put(
        "allocations",
        format!("{}made/server{created}", c(&counts.allocations)),
    );

    // Bounds: 256 KiB a minute is 15 MiB an hour; descriptors back where they were. A
    // run of a few minutes sees the allocator settle, so it gets a looser bound.
    let rss_bound = if length >= Duration::from_secs(1800) {
        256.0
    } else {
        1024.0
    };
    f.put("rss_slope_bound", rss_bound);
    f.check(rss_slope <= rss_bound, || {
        format!("RSS grows {rss_slope:.0} KiB/min")
    });
    f.check(fd_slope.abs() <= 1.0 && last_r.fds <= first_r.fds + 4, || {
        format!(
            "descriptors {} -> {} (slope {fd_slope:.2}/min)",
            first_r.fds, last_r.fds
        )
    });
    f.check(last <= first * 2.0 + 1.0, || {
        format!("round trip drifted from {first:.2} ms to {last:.2} ms")
    });
    f.check(
        c(&counts.signal_errors) == 0 && c(&counts.relay_errors) == 0,
        || {
            format!(
                "generator errors: signaling {}, relay {}",
                c(&counts.signal_errors),
                c(&counts.relay_errors)
            )
        },
    );
    f.check(
        c(&counts.signal_sent) == c(&counts.signal_received) && messages == c(&counts.signal_sent) as f64,
        || {
            format!(
                "signaling: {} sent, {} received, server counted {messages}",
                c(&counts.signal_sent),
                c(&counts.signal_received)
            )
        },
    );
    f.check(relay_sent == relay_got && to_peer == relay_sent as f64, || {
        format!("relay: {relay_sent} sent, {relay_got} received, server counted {to_peer}")
    });
    f.check(created == c(&counts.allocations) as f64, || {
        format!(
            "allocations: {} made, server counted {created}",
            c(&counts.allocations)
        )
    });
    f
}

fn metric_labelled(now: &str, before: &str, sample: &str) -> f64 {
    test_support::metric(now, sample).unwrap_or(0.0) - test_support::metric(before, sample).unwrap_or(0.0)
}

fn relay_load(
    turn: std::net::SocketAddr,
    secret: &str,
    peer: std::net::SocketAddr,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let secret = Secret::new(secret);
    let mut n = 0u64;
    let mut new_client = || -> Option<TurnClient> {
        n += 1;
        let (u, p) = mint(&secret, &format!("soak{n}"), unix_now(), 600);
        let mut c = TurnClient::new(turn, &u, &p, "callbox");
        let ok = c.allocate().code.is_none()
            && c.create_permission(&[peer]).code.is_none()
            && c.channel_bind(0x4000, peer).code.is_none();
        if ok {
            counts.allocations.fetch_add(1, Relaxed);
            Some(c)
        } else {
            counts.relay_errors.fetch_add(1, Relaxed);
            None
        }
    };
    let mut clients: Vec<TurnClient> = (0..RELAY_CLIENTS).filter_map(|_| new_client()).collect();
    let tick = Duration::from_millis(20);
    let mut next = Instant::now();
    let mut turn_no = 0u64;
    while !stop.load(Relaxed) {
        for c in &clients {
            c.send_channel_data(0x4000, b"soak payload of some forty bytes......");
            counts.relay_sent.fetch_add(1, Relaxed);
        }
        turn_no += 1;
        // Every second one client ends its allocation and a new one starts.
        if turn_no.is_multiple_of(50) && !clients.is_empty() {
            let mut old = clients.remove(0);
            if old.refresh(0).code.is_some() {
                counts.relay_errors.fetch_add(1, Relaxed);
            }
            clients.extend(new_client());
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

async fn signal_load(addr: std::net::SocketAddr, counts: Arc<Counts>, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut tasks = Vec::new();
    for p in 0..PAIRS {
        let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut round = 0u64;
            while !stop.load(Relaxed) {
                round += 1;
                let room = format!("room=soak-{p}-{round}");
                // Each pair from its own addresses, as different users would be (the
                // per-address rate limits stay out of the way).
                let ip = |k: u8| std::net::IpAddr::from([127, 0, 5, 2 * p as u8 + k]);
                let (Ok(mut a), Ok(mut b)) = (
                    WsClient::connect_from(ip(1), addr, &room, &[]).await,
                    WsClient::connect_from(ip(2), addr, &room, &[]).await,
                ) else {
                    counts.signal_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                counts.joins.fetch_add(2, Relaxed);
                let _ = a.recv().await;
                for i in 0..50u64 {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    a.send(json!({"type": "message", "data": {"i": i}})).await;
                    counts.signal_sent.fetch_add(1, Relaxed);
                    match b.recv().await {
                        Some(m) if m["data"]["i"] == i => counts.signal_received.fetch_add(1, Relaxed),
                        _ => counts.signal_errors.fetch_add(1, Relaxed),
                    };
                    b.send(json!({"type": "message", "data": {"e": i}})).await;
                    counts.signal_sent.fetch_add(1, Relaxed);
                    match a.recv().await {
                        Some(m) if m["data"]["e"] == i => counts.signal_received.fetch_add(1, Relaxed),
                        _ => counts.signal_errors.fetch_add(1, Relaxed),
                    };
                    rtts.push((t.elapsed().as_secs_f64() * 1000.0, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                a.send(json!({"type": "leave"})).await;
                b.send(json!({"type": "leave"})).await;
            }
            rtts
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by_key(|(_, at)| *at);
    all.into_iter().map(|(r, _)| r).collect()
}
