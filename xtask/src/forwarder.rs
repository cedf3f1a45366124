//! `cargo xtask udp-forwarder --listen ADDR --peer ADDR [--workers N] [--mode M]`: the bare
//! UDP forwarder, the benchmark's practical limit for relaying on this machine.
//!
//! It does what a TURN relay must do per packet and nothing else: clients send
//! ChannelData-framed datagrams (4-byte header: channel, length) to the listen port; the
//! forwarder sends each one unchanged to the peer and remembers, per channel, which
//! client sent it; the peer's echo comes back and goes to that channel's client. No
//! authentication, no permissions, no allocation state, no timers.
//!
//! Each worker is one thread with one SO_REUSEPORT socket on the listen port (the kernel
//! spreads clients by 5-tuple, as for callbox) and moves datagrams with
//! recvmmsg/sendmmsg, 32 at a time, like callbox's workers. Toward the peer:
//! - `--mode per-client` (default): one socket per channel, as TURN requires (each
//!   allocation has its own relayed address), so a batch from many clients leaves
//!   through many sockets, one sendmmsg per run of packets for the same socket;
//! - `--mode shared`: one socket per worker for every client, a shortcut no TURN server
//!   can take (the peer would see one address for everybody): the floor.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use crate::sys::{self, BATCH, Batch, Epoll};

pub fn main(args: &[String]) -> Result<(), String> {
    let mut listen = None;
    let mut peer = None;
    let mut workers = 1usize;
    let mut shared = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse::<SocketAddrV4>().map_err(|e| e.to_string())?),
            "--peer" => peer = Some(val()?.parse::<SocketAddrV4>().map_err(|e| e.to_string())?),
            "--workers" => workers = val()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--mode" => {
                shared = match val()?.as_str() {
                    "shared" => true,
                    "per-client" => false,
                    other => return Err(format!("--mode: per-client or shared, not {other}")),
                }
            }
            other => return Err(format!("udp-forwarder: unknown argument {other}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let peer = peer.ok_or("--peer is required")?;
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let l = sys::bind_reuseport(listen).map_err(|e| format!("bind {listen}: {e}"))?;
        // The same 4 MiB callbox asks for on its listeners.
        sys::set_buffers(&l, 4 << 20);
        if shared {
            let p = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            sys::set_buffers(&p, 4 << 20);
            threads.push(std::thread::spawn(move || worker_shared(&l, &p, peer)));
        } else {
            threads.push(std::thread::spawn(move || worker_per_client(&l, peer)));
        }
    }
    println!(
        "udp-forwarder ready on {listen}, peer {peer}, {} workers, {} socket(s) toward the peer",
        threads.len(),
        if shared { "shared" } else { "per-client" }
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn worker_shared(listener: &UdpSocket, to_peer: &UdpSocket, peer: SocketAddrV4) {
    let (lfd, pfd) = (listener.as_raw_fd(), to_peer.as_raw_fd());
    // channel number -> client address, learned from the clients' datagrams.
    let mut clients: Vec<Option<libc::sockaddr_in>> = vec![None; 1 << 16];
    let peer_sa = sys::to_sockaddr(peer);
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    let mut ready = Vec::new();
    loop {
        sys::poll_readable(&[lfd, pfd], 250, &mut ready);
        for &which in &ready {
            // A few batches per socket per turn.
            for _ in 0..4 {
                let from_clients = which == 0;
                let n = rx.recv(if from_clients { lfd } else { pfd }, false).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let mut m = 0;
                for i in 0..n {
                    let d = rx.datagram(i);
                    if d.len() < 4 {
                        continue;
                    }
                    let ch = usize::from(u16::from_be_bytes([d[0], d[1]]));
                    let dest = if from_clients {
                        clients[ch] = Some(rx.addrs[i]);
                        peer_sa
                    } else {
                        match clients[ch] {
                            Some(a) => a,
                            None => continue,
                        }
                    };
                    let len = d.len();
                    tx.slot_mut(m)[..len].copy_from_slice(d);
                    tx.lens[m] = len;
                    tx.addrs[m] = dest;
                    m += 1;
                }
                tx.send(if from_clients { pfd } else { lfd }, m);
                if n < BATCH {
                    break;
                }
            }
        }
    }
}

/// One relay socket per channel (created on the channel's first datagram), like a TURN
/// allocation's relayed address.
fn worker_per_client(listener: &UdpSocket, peer: SocketAddrV4) {
    const LISTENER: u64 = u64::MAX;
    let lfd = listener.as_raw_fd();
    let ep = Epoll::new().expect("epoll");
    ep.add(lfd, LISTENER).expect("epoll add");
    // channel -> (relay socket, client address)
    let mut relays: Vec<Option<(UdpSocket, libc::sockaddr_in)>> = (0..1 << 16).map(|_| None).collect();
    let peer_sa = sys::to_sockaddr(peer);
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    let mut ready = Vec::new();
    loop {
        ep.wait(&mut ready, 250);
        for &token in &ready {
            for _ in 0..4 {
                if token == LISTENER {
                    let n = rx.recv(lfd, false).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    // Runs of datagrams for the same relay socket go out in one sendmmsg.
                    let mut m = 0;
                    let mut run_fd = -1;
                    for i in 0..n {
                        let d = rx.datagram(i);
                        if d.len() < 4 {
                            continue;
                        }
                        let ch = usize::from(u16::from_be_bytes([d[0], d[1]]));
                        if relays[ch].is_none() {
                            let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
                                continue;
                            };
                            let _ = s.set_nonblocking(true);
                            if ep.add(s.as_raw_fd(), ch as u64).is_err() {
                                continue;
                            }
                            relays[ch] = Some((s, rx.addrs[i]));
                        }
                        let Some((sock, client)) = relays[ch].as_mut() else {
                            continue;
                        };
                        *client = rx.addrs[i];
                        let fd = sock.as_raw_fd();
                        if fd != run_fd && m > 0 {
                            tx.send(run_fd, m);
                            m = 0;
                        }
                        run_fd = fd;
                        let len = d.len();
                        tx.slot_mut(m)[..len].copy_from_slice(d);
                        tx.lens[m] = len;
                        tx.addrs[m] = peer_sa;
                        m += 1;
                    }
                    if m > 0 {
                        tx.send(run_fd, m);
                    }
                    if n < BATCH {
                        break;
                    }
                } else {
                    let Some((sock, client)) = relays[token as usize].as_ref() else {
                        break;
                    };
                    let n = rx.recv(sock.as_raw_fd(), false).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    for a in rx.addrs.iter_mut().take(n) {
                        *a = *client;
                    }
                    rx.send(lfd, n);
                    if n < BATCH {
                        break;
                    }
                }
            }
        }
    }
}
