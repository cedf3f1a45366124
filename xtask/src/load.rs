//! The relay load: N client sockets send ChannelData at a paced aggregate rate; one peer
//! socket echoes every datagram back to the address it came from, so each packet goes
//! client -> relay -> peer -> relay -> client. Two threads: the sender (this one) and a
//! receiver that serves the peer echo and counts what comes back to the clients.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{self, Batch, Epoll};

/// The sockets of one relay run: clients connected to the relay, and the peer.
#[derive(Debug)]
pub struct Rig {
    pub clients: Vec<UdpSocket>,
    pub channels: Vec<u16>,
    pub peer: UdpSocket,
}

#[derive(Debug, Clone, Copy)]
pub enum Rate {
    /// Offered packets per second, client to relay, paced every ~100 µs.
    Paced(u64),
    /// Unpaced but closed-loop: keep at most this many packets in flight (sent, not yet
    /// back at a client); a stall of 20 ms writes the outstanding ones off as lost.
    Window(u64),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StepCounts {
    pub sent: u64,
    pub peer_rx: u64,
    pub client_rx: u64,
    /// Time spent sending (the step length).
    pub send_secs: f64,
    /// Sending plus the drain that followed.
    pub total_secs: f64,
}

const DRAIN_QUIET: Duration = Duration::from_millis(150);
const DRAIN_MAX: Duration = Duration::from_millis(1000);

/// Runs one load step of `dur` with `size`-byte payloads.
pub fn run_step(rig: &Rig, size: usize, rate: Rate, dur: Duration) -> StepCounts {
    let packets: Vec<Vec<u8>> = rig
        .channels
        .iter()
        .map(|&ch| {
            let mut p = vec![0u8; 4 + size];
            p[..2].copy_from_slice(&ch.to_be_bytes());
            p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
            for (i, b) in p[4..].iter_mut().enumerate() {
                *b = i as u8;
            }
            p
        })
        .collect();
    let peer_rx = AtomicU64::new(0);
    let client_rx = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let fds: Vec<_> = rig.clients.iter().map(|c| c.as_raw_fd()).collect();
    let mut counts = StepCounts::default();
    std::thread::scope(|s| {
        let rx = s.spawn(|| receiver(rig, &peer_rx, &client_rx, &stop));
        let start = Instant::now();
        let n = fds.len();
        let mut rr = 0usize;
        let mut sent = 0u64;
        let mut written_off = 0u64;
        let mut last_progress = (0u64, Instant::now());
        loop {
            let elapsed = start.elapsed();
            if elapsed >= dur {
                break;
            }
            let due = match rate {
                Rate::Paced(pps) => {
                    let target = (pps as f64 * elapsed.as_secs_f64()) as u64;
                    // At most 10 ms worth at once, so a descheduled sender does not burst.
                    target.saturating_sub(sent).min((pps / 100).max(1))
                }
                Rate::Window(w) => {
                    let back = client_rx.load(Ordering::Relaxed);
                    if back != last_progress.0 {
                        last_progress = (back, Instant::now());
                    } else if last_progress.1.elapsed() > Duration::from_millis(20) {
                        written_off = sent - back;
                        last_progress = (back, Instant::now());
                    }
                    w.saturating_sub(sent - back - written_off)
                }
            };
            if due == 0 {
                match rate {
                    Rate::Paced(_) => std::thread::sleep(Duration::from_micros(100)),
                    Rate::Window(_) => std::thread::yield_now(),
                }
                continue;
            }
            // Spread the burst over the clients, a few datagrams per sendmmsg.
            let per = (due as usize).div_ceil(n).clamp(1, sys::BATCH);
            let mut left = due as usize;
            while left > 0 {
                let k = per.min(left);
                sent += sys::send_copies(fds[rr], &packets[rr], k) as u64;
                left -= k;
                rr = (rr + 1) % n;
            }
        }
        counts.send_secs = start.elapsed().as_secs_f64();
        counts.sent = sent;
        // Drain: wait until nothing has come back for a while.
        let drain = Instant::now();
        let mut last = (client_rx.load(Ordering::Relaxed), Instant::now());
        while drain.elapsed() < DRAIN_MAX {
            std::thread::sleep(Duration::from_millis(10));
            let now = client_rx.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= DRAIN_QUIET {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        rx.join().expect("receiver thread");
        counts.total_secs = start.elapsed().as_secs_f64();
    });
    counts.peer_rx = peer_rx.load(Ordering::Relaxed);
    counts.client_rx = client_rx.load(Ordering::Relaxed);
    counts
}

fn receiver(rig: &Rig, peer_rx: &AtomicU64, client_rx: &AtomicU64, stop: &AtomicBool) {
    const PEER: u64 = u64::MAX;
    let ep = Epoll::new().expect("epoll");
    let peer_fd = rig.peer.as_raw_fd();
    ep.add(peer_fd, PEER).expect("epoll add");
    for (i, c) in rig.clients.iter().enumerate() {
        ep.add(c.as_raw_fd(), i as u64).expect("epoll add");
    }
    let mut batch = Batch::new();
    let mut ready = Vec::new();
    let (mut at_peer, mut at_clients) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        ep.wait(&mut ready, 5);
        for &t in &ready {
            // A few batches per socket per turn, so the peer and the clients share.
            for _ in 0..8 {
                if t == PEER {
                    let n = batch.recv(peer_fd, false).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    at_peer += n as u64;
                    // Echo each datagram to where it came from (the relayed address).
                    batch.send(peer_fd, n);
                } else {
                    let fd = rig.clients[t as usize].as_raw_fd();
                    let n = batch.recv(fd, false).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    at_clients += (0..n).filter(|&i| batch.lens[i] >= 4).count() as u64;
                }
            }
        }
        peer_rx.store(at_peer, Ordering::Relaxed);
        client_rx.store(at_clients, Ordering::Relaxed);
    }
    // Last counts after the stop: what is still queued is not counted (it arrived late).
    peer_rx.store(at_peer, Ordering::Relaxed);
    client_rx.store(at_clients, Ordering::Relaxed);
}
