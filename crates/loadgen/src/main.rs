//! `signal-load`: drives N WebSocket connections in rooms of two through a signaling
//! server speaking PROTOCOL.md section 2, and `signal-load baseline`: a bare relay with the
//! same wire format and none of the protocol's state (no logs, limits or validation), the
//! floor to compare callbox against.
//!
//! Phases of `run`: connect every peer (rooms of two), measure the server's resident memory
//! per idle connection, then let each pair loop offer -> answer -> 20 candidates each way
//! for the given time, and report messages relayed per second, latency percentiles (from a
//! timestamp in each message) and CPU of the server and of the generator.
//! Loopback only: the URL must point at 127.0.0.0/8 or ::1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

mod baseline;

struct Args {
    addr: SocketAddr,
    /// Where the second peer of each pair connects (another instance sharing the rooms);
    /// default: `addr`.
    addr2: Option<SocketAddr>,
    conns: usize,
    seconds: u64,
    candidates: usize,
    /// The server processes measured (memory and CPU summed): `--pid` once per process.
    pids: Vec<u32>,
    /// A process whose CPU is reported apart (the rooms' Redis).
    redis_pid: Option<u32>,
    concurrency: usize,
    /// Target messages per second over all pairs (0: closed loop, as fast as it goes).
    rate: f64,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse()?,
        addr2: None,
        conns: 1000,
        seconds: 10,
        candidates: 20,
        pids: Vec::new(),
        redis_pid: None,
        concurrency: 200,
        rate: 0.0,
    };
    while let Some(k) = it.next() {
        let mut v = || it.next().context("missing value");
        match k.as_str() {
            "--addr" => a.addr = v()?.parse()?,
            "--conns" => a.conns = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--candidates" => a.candidates = v()?.parse()?,
            "--addr2" => a.addr2 = Some(v()?.parse()?),
            "--pid" => a.pids.push(v()?.parse()?),
            "--redis-pid" => a.redis_pid = Some(v()?.parse()?),
            "--concurrency" => a.concurrency = v()?.parse()?,
            "--rate" => a.rate = v()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if !a.addr.ip().is_loopback() || a.addr2.is_some_and(|x| !x.ip().is_loopback()) {
        bail!("--addr and --addr2 must be loopback addresses");
    }
    if !a.conns.is_multiple_of(2) || a.conns == 0 {
        bail!("--conns must be even and positive");
    }
    if a.seconds == 0 || a.seconds > 600 {
        bail!("--seconds must be 1..=600");
    }
    Ok(a)
}

/// Raises the open file limit to its hard maximum (10,000 sockets need it).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, room: &str) -> anyhow::Result<(Ws, Value)> {
    let url = format!("ws://{addr}/v1/signal?room={room}");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .context("connect")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "welcome" {
                    return Ok((ws, v));
                }
            }
            Some(Ok(_)) => continue,
            other => bail!("no welcome: {other:?}"),
        }
    }
}

struct Shared {
    start: Instant,
    running: AtomicBool,
    received: AtomicU64,
    /// Latency samples in microseconds (every 8th message).
    samples: std::sync::Mutex<Vec<u32>>,
}

/// One peer's loop. The `caller` starts each round with an offer; the callee answers; then
/// each side sends `n` candidates after it has seen the other's last one (caller first).
/// `round_every`: with a target rate, the caller starts a round at most this often (open
/// loop); `None` starts the next round as soon as the last one ends (closed loop).
async fn peer(
    mut ws: Ws,
    other: String,
    caller: bool,
    n: usize,
    shared: Arc<Shared>,
    round_every: Option<Duration>,
) -> anyhow::Result<()> {
    let mut next_round = tokio::time::Instant::now();
    let stamp = |s: &Shared| s.start.elapsed().as_micros() as u64;
    let send = |kind: &str, i: usize, t: u64| -> Message {
        let v = match kind {
            "offer" | "answer" => {
                json!({"type": kind, "sdp": "v=0 o=- 1 1 IN IP4 127.0.0.1", "to": other, "t": t})
            }
            _ => {
                json!({"type": "candidate", "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "i": i, "to": other, "t": t})
            }
        };
        Message::Text(v.to_string().into())
    };
    if caller {
        if let Some(every) = round_every {
            // Spread the pairs' first rounds over one period.
            let offset = every.mul_f64(f64::from(rand_u32()) / f64::from(u32::MAX));
            tokio::time::sleep(offset).await;
            next_round = tokio::time::Instant::now() + every;
        }
        ws.send(send("offer", 0, stamp(&shared))).await?;
    }
    let mut seen = 0u64;
    while shared.running.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Ok(_) => bail!("connection ended"),
            Err(_) => continue,
        };
        let v: Value = serde_json::from_str(&msg)?;
        let Some(t) = v["t"].as_u64() else { continue };
        let now = stamp(&shared);
        shared.received.fetch_add(1, Ordering::Relaxed);
        seen += 1;
        if seen.is_multiple_of(8) {
            let us = now.saturating_sub(t).min(u64::from(u32::MAX)) as u32;
            shared.samples.lock().unwrap_or_else(|e| e.into_inner()).push(us);
        }
        let last_candidate = v["type"] == "candidate" && v["i"].as_u64() == Some(n as u64 - 1);
        match (v["type"].as_str(), caller) {
            (Some("offer"), false) => ws.send(send("answer", 0, now)).await?,
            (Some("answer"), true) => {
                for i in 0..n {
                    ws.feed(send("candidate", i, stamp(&shared))).await?;
                }
                ws.flush().await?;
            }
            (Some("candidate"), false) if last_candidate => {
                for i in 0..n {
                    ws.feed(send("candidate", i, stamp(&shared))).await?;
                }
                ws.flush().await?;
            }
            (Some("candidate"), true) if last_candidate => {
                if let Some(every) = round_every {
                    tokio::time::sleep_until(next_round).await;
                    next_round += every;
                }
                ws.send(send("offer", 0, stamp(&shared))).await?
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let x = t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(13);
    x.wrapping_mul(2_654_435_761)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn run(a: Args) -> anyhow::Result<()> {
    raise_nofile();
    let pairs = a.conns / 2;
    let servers_rss = |pids: &[u32]| pids.iter().map(|p| rss_kib(*p)).sum::<u64>();
    let servers_cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let rss_before = servers_rss(&a.pids);
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let mut joins = Vec::with_capacity(pairs);
    for p in 0..pairs {
        let sem = Arc::clone(&sem);
        let addr = a.addr;
        let addr2 = a.addr2.unwrap_or(addr);
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let room = format!("bench-{p}");
            let (wa, va) = connect(addr, &room).await?;
            let (mut wb, vb) = connect(addr2, &room).await?;
            // b's welcome lists a; a gets peer-joined.
            let _ = &mut wb;
            anyhow::Ok(((wa, va), (wb, vb)))
        }));
    }
    let mut conns = Vec::with_capacity(pairs);
    for j in joins {
        conns.push(j.await??);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = servers_rss(&a.pids);
    println!(
        "connected {} peers in {connect_secs:.1} s; server RSS {rss_before} KiB before, {rss_idle} KiB idle: {:.1} KiB per connection",
        a.conns,
        (rss_idle.saturating_sub(rss_before)) as f64 / a.conns as f64
    );
    let shared = Arc::new(Shared {
        start: Instant::now(),
        running: AtomicBool::new(true),
        received: AtomicU64::new(0),
        samples: std::sync::Mutex::new(Vec::new()),
    });
    // One round is an offer, an answer and `candidates` each way.
    let per_round = (2 + 2 * a.candidates) as f64;
    let round_every = (a.rate > 0.0).then(|| Duration::from_secs_f64(pairs as f64 * per_round / a.rate));
    let mut tasks = Vec::new();
    for ((wa, va), (wb, vb)) in conns {
        let ida = va["peer_id"].as_str().unwrap_or_default().to_string();
        let idb = vb["peer_id"].as_str().unwrap_or_default().to_string();
        tasks.push(tokio::spawn(peer(
            wa,
            idb,
            true,
            a.candidates,
            Arc::clone(&shared),
            round_every,
        )));
        tasks.push(tokio::spawn(peer(
            wb,
            ida,
            false,
            a.candidates,
            Arc::clone(&shared),
            round_every,
        )));
    }
    // Warm-up (a full round period when paced), then measure.
    tokio::time::sleep(round_every.unwrap_or(Duration::ZERO).max(Duration::from_secs(1))).await;
    let r0 = shared.received.load(Ordering::Relaxed);
    shared.samples.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let m0 = Instant::now();
    let c_server = servers_cpu(&a.pids);
    let c_redis = a.redis_pid.map(cpu_secs).unwrap_or(0.0);
    let c_self = cpu_secs(std::process::id());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let elapsed = m0.elapsed().as_secs_f64();
    let r1 = shared.received.load(Ordering::Relaxed);
    let server_cpu = servers_cpu(&a.pids) - c_server;
    let redis_cpu = a.redis_pid.map(cpu_secs).unwrap_or(0.0) - c_redis;
    let self_cpu = cpu_secs(std::process::id()) - c_self;
    shared.running.store(false, Ordering::Relaxed);
    let mut samples = std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|e| e.into_inner()));
    samples.sort_unstable();
    let rate = (r1 - r0) as f64 / elapsed;
    println!(
        "relayed {:.0} messages/s over {elapsed:.1} s; latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms ({} samples); server CPU {:.2} cores ({:.1} µs/message), generator CPU {:.2} cores",
        rate,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples.len(),
        server_cpu / elapsed,
        server_cpu / (r1 - r0).max(1) as f64 * 1e6,
        self_cpu / elapsed,
    );
    println!(
        "RESULT offered={} conns={} rss_per_conn_kib={:.2} msgs_per_s={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} server_cores={:.2} us_per_msg={:.2} generator_cores={:.2} redis_cores={:.2} redis_us_per_msg={:.2}",
        if a.rate > 0.0 {
            format!("{:.0}", a.rate)
        } else {
            "closed-loop".into()
        },
        a.conns,
        (rss_idle.saturating_sub(rss_before)) as f64 / a.conns as f64,
        rate,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        server_cpu / elapsed,
        server_cpu / (r1 - r0).max(1) as f64 * 1e6,
        self_cpu / elapsed,
        redis_cpu / elapsed,
        redis_cpu / (r1 - r0).max(1) as f64 * 1e6,
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.peek().map(String::as_str) == Some("baseline") {
        args.next();
        let listen: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
        if !listen.ip().is_loopback() {
            bail!("the baseline listens on loopback only");
        }
        raise_nofile();
        return rt.block_on(async move {
            let l = TcpListener::bind(listen).await?;
            println!("baseline listening on {}", l.local_addr()?);
            baseline::serve(l).await
        });
    }
    let a = parse_args(args)?;
    rt.block_on(run(a))
}
