//! One data path thread: a mio poll loop that owns one `turn_proto::Server` shard, one
//! SO_REUSEPORT socket of each listener, and the relay sockets of its allocations.
//!
//! Nothing here is shared with other workers on the packet path: no lock, no atomic
//! read-modify-write, no allocation per ChannelData, Send or Data packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use callbox_core::{Cidr, PeerPolicy};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::Rng as _;
use slab::Slab;
use tokio::sync::oneshot;
use turn_proto::server::{Credentials, PEER_HEADROOM, PEER_TAILROOM, RelayBindError, Transport};
use turn_proto::{AllocId, AllocationInfo, ClientAction, Command, PeerAction, Server};

use crate::batch::{BATCH, RecvBatch, SendBatch};
use crate::metrics::WorkerSlot;
use crate::stream::{Gone, StreamCounters, StreamSettings, Streams};
use crate::{AllocationEvent, Metrics, Reservations};

const WAKER: Token = Token(usize::MAX - 1);
// Token ranges: UDP listeners from 0, TCP listeners, relay sockets, TCP connections.
const TCP_LISTENER_BASE: usize = 1 << 19;
const RELAY_BASE: usize = 1 << 20;
const CONN_BASE: usize = 1 << 40;
/// How often TCP connections are checked for their idle timeout.
const STREAM_SWEEP: Duration = Duration::from_secs(1);
/// Batches read from one socket before others get a turn.
const MAX_BATCHES_PER_TURN: usize = 4;
/// Longest the loop sleeps, so shutdown and credential changes are seen promptly.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Orders for a worker from outside its thread, handled between batches. Answers go back
/// on tokio oneshot channels (sending on one never waits); a dropped receiver is ignored.
#[derive(Debug)]
pub enum Control {
    /// Close every allocation of this user id.
    KickUser(String),
    /// Close every allocation whose client address is in one of these networks.
    KickClients(Vec<Cidr>),
    /// Answer with this worker's live allocations.
    List(oneshot::Sender<Vec<AllocationInfo>>),
    /// Close one allocation; answer whether it existed.
    Close(AllocId, oneshot::Sender<bool>),
    /// Serve a TLS connection from the one TLS port whose first bytes were STUN.
    Adopt(Box<callbox_http::TlsHandoff>),
}

/// The other threads' handle on a worker.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pub(crate) waker: Arc<Waker>,
    pub(crate) control: mpsc::Sender<Control>,
}

impl WorkerHandle {
    pub fn send(&self, c: Control) {
        if self.control.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

struct Relay {
    sock: UdpSocket,
    id: AllocId,
    /// The listener the client came in on: replies leave from the same socket.
    listener: usize,
}

pub(crate) struct Worker {
    index: usize,
    server: Server,
    poll: Poll,
    listeners: Vec<UdpSocket>,
    streams: Streams,
    next_stream_sweep: Instant,
    relays: Slab<Relay>,
    relay_by_id: HashMap<AllocId, usize>,
    port_range: (u16, u16),
    client_rx: RecvBatch,
    peer_rx: RecvBatch,
    to_client: SendBatch,
    to_peer: SendBatch,
    /// The relay socket the queued `to_peer` datagrams leave from.
    to_peer_fd: i32,
    reply: Vec<u8>,
    ready: Vec<Token>,
    again: Vec<Token>,
    stop: Arc<AtomicBool>,
    control: mpsc::Receiver<Control>,
    credentials: Arc<ArcSwap<Credentials>>,
    /// The credentials snapshot last installed in `server`, told from a new one by
    /// pointer (a snapshot is swapped whole, never changed in place).
    credentials_seen: Arc<Credentials>,
    policy: Arc<ArcSwap<PeerPolicy>>,
    /// The policy snapshot last installed in `server`, likewise.
    policy_seen: Arc<PeerPolicy>,
    events: tokio::sync::mpsc::Sender<AllocationEvent>,
    metrics: Arc<Metrics>,
    reservations: Arc<Reservations>,
    counters: DriverCounters,
    listener_error_log: LogLimit,
    relay_error_log: LogLimit,
    bind_error_log: LogLimit,
    next_reservation_sweep: Instant,
}

/// What the driver counts itself (the server counts the rest in its `Stats`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DriverCounters {
    pub send_drops: u64,
    pub relay_bind_failures: u64,
    pub relay_receive_errors: u64,
    /// TCP (0) and TLS (1) client connections.
    pub streams: [StreamCounters; 2],
}

/// Lets a log line through at most once a second: a socket that keeps failing is
/// counted every time but must not flood the log.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
}

impl LogLimit {
    const EVERY: Duration = Duration::from_secs(1);

    fn allow(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

pub(crate) struct WorkerParts {
    pub index: usize,
    pub server: Server,
    pub listeners: Vec<std::net::UdpSocket>,
    pub tcp_listeners: Vec<(std::net::TcpListener, Transport)>,
    pub streams: StreamSettings,
    pub port_range: (u16, u16),
    pub stop: Arc<AtomicBool>,
    pub credentials: Arc<ArcSwap<Credentials>>,
    pub policy: Arc<ArcSwap<PeerPolicy>>,
    pub events: tokio::sync::mpsc::Sender<AllocationEvent>,
    pub metrics: Arc<Metrics>,
    pub reservations: Arc<Reservations>,
}

/// How often expired EVEN-PORT reservations are closed.
const RESERVATION_SWEEP: Duration = Duration::from_secs(1);

impl Worker {
    pub(crate) fn new(p: WorkerParts) -> io::Result<(Worker, WorkerHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let mut listeners = Vec::new();
        for (i, s) in p.listeners.into_iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut s = UdpSocket::from_std(s);
            poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
            listeners.push(s);
        }
        let streams = Streams::new(
            p.tcp_listeners,
            p.streams,
            poll.registry(),
            TCP_LISTENER_BASE,
            CONN_BASE,
        )?;
        let worker = Worker {
            index: p.index,
            server: p.server,
            poll,
            listeners,
            streams,
            next_stream_sweep: Instant::now() + STREAM_SWEEP,
            relays: Slab::new(),
            relay_by_id: HashMap::new(),
            port_range: p.port_range,
            client_rx: RecvBatch::new(0),
            peer_rx: RecvBatch::new(PEER_HEADROOM),
            to_client: SendBatch::new(),
            to_peer: SendBatch::new(),
            to_peer_fd: -1,
            reply: Vec::with_capacity(1500),
            ready: Vec::with_capacity(256),
            again: Vec::with_capacity(256),
            stop: p.stop,
            control: rx,
            credentials_seen: p.credentials.load_full(),
            credentials: p.credentials,
            policy_seen: p.policy.load_full(),
            policy: p.policy,
            events: p.events,
            metrics: p.metrics,
            reservations: p.reservations,
            counters: DriverCounters::default(),
            listener_error_log: LogLimit::default(),
            relay_error_log: LogLimit::default(),
            bind_error_log: LogLimit::default(),
            next_reservation_sweep: Instant::now(),
        };
        Ok((worker, WorkerHandle { waker, control: tx }))
    }

    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let timeout = if !self.again.is_empty() {
                Duration::ZERO
            } else {
                self.server
                    .poll_timeout()
                    .map_or(MAX_SLEEP, |t| t.saturating_duration_since(now))
                    .min(MAX_SLEEP)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            std::mem::swap(&mut self.ready, &mut self.again);
            self.again.clear();
            self.ready.extend(events.iter().map(|e| e.token()));
            let mut ready = std::mem::take(&mut self.ready);
            for &token in &ready {
                let more = match token {
                    WAKER => {
                        self.controls();
                        false
                    }
                    Token(i) if i < TCP_LISTENER_BASE => self.client_readable(i)?,
                    Token(i) if i < RELAY_BASE => {
                        self.streams
                            .accept(i - TCP_LISTENER_BASE, self.poll.registry(), Instant::now())
                    }
                    Token(i) if i < CONN_BASE => self.relay_readable(i - RELAY_BASE),
                    Token(i) => self.stream_ready(i - CONN_BASE),
                };
                if more && !self.again.contains(&token) {
                    self.again.push(token);
                }
            }
            ready.clear();
            self.ready = ready;
            self.housekeeping();
        }
        self.server.shutdown();
        self.run_commands(0, Instant::now());
        self.forward_events();
        self.publish();
        Ok(())
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.server.handle_timeout(now);
        // Expired reservations are closed on a timer, not only when the next one is made
        // (their sockets and quota units must not wait for traffic). One worker does it.
        if self.index == 0 && now >= self.next_reservation_sweep {
            self.next_reservation_sweep = now + RESERVATION_SWEEP;
            self.reservations.sweep(now);
        }
        if now >= self.next_stream_sweep {
            self.next_stream_sweep = now + STREAM_SWEEP;
            let server = &self.server;
            let idle = self
                .streams
                .idle(now, |peer, transport| server.has_client(peer, transport));
            for key in idle {
                self.close_stream(key, Gone::Idle);
            }
        }
        self.run_commands(0, now);
        // What this turn queued for stream clients leaves now, one write per connection.
        self.streams.flush_queued(self.poll.registry());
        self.load_snapshots();
        self.forward_events();
        self.publish();
    }

    /// Reads, handles and writes what TCP connection `key` has; true if more may wait.
    fn stream_ready(&mut self, key: usize) -> bool {
        if let Err(why) = self.streams.flush(key, self.poll.registry()) {
            self.close_stream(key, why);
            return false;
        }
        for _ in 0..MAX_BATCHES_PER_TURN {
            let now = Instant::now();
            let more = match self.streams.read(key, now, self.poll.registry()) {
                Ok(more) => more,
                Err(why) => {
                    self.close_stream(key, why);
                    return false;
                }
            };
            if let Err(why) = self.stream_frames(key, now) {
                self.close_stream(key, why);
                return false;
            }
            if !more {
                return false;
            }
        }
        true
    }

    /// Hands every complete frame of connection `key` to the server.
    fn stream_frames(&mut self, key: usize, now: Instant) -> Result<(), Gone> {
        let unix = callbox_core::time::unix_now();
        loop {
            let Some((peer, transport, frame)) = self.streams.next_frame(key)? else {
                return Ok(());
            };
            match self
                .server
                .handle_client_message(peer, transport, frame, now, unix, &mut self.reply)
            {
                ClientAction::None => {}
                ClientAction::Reply => {
                    self.streams.send_to(peer, transport, &self.reply);
                }
                ClientAction::Relay { id, peer, payload } => {
                    if let Some(&slot) = self.relay_by_id.get(&id)
                        && self.relays[slot].sock.send_to(payload, peer).is_err()
                    {
                        self.counters.send_drops += 1;
                    }
                }
            }
            self.run_commands(0, now);
        }
    }

    /// Closes a TCP or TLS connection and, with it, its client's allocation.
    fn close_stream(&mut self, key: usize, why: Gone) {
        if let Some((peer, transport)) = self.streams.close(key, why, self.poll.registry()) {
            self.server.client_gone(peer, transport);
            self.run_commands(0, Instant::now());
        }
    }

    /// Installs the credentials and policy snapshots if they changed since last time.
    fn load_snapshots(&mut self) {
        let creds = self.credentials.load();
        if !Arc::ptr_eq(&creds, &self.credentials_seen) {
            self.credentials_seen = Arc::clone(&creds);
            self.server.set_credentials(Arc::clone(&creds));
        }
        let policy = self.policy.load();
        if !Arc::ptr_eq(&policy, &self.policy_seen) {
            self.policy_seen = Arc::clone(&policy);
            self.server.set_policy(Arc::clone(&policy));
        }
    }

    fn slot(&self) -> &WorkerSlot {
        &self.metrics.workers[self.index]
    }

    fn publish(&mut self) {
        self.metrics.heartbeat(self.index, Instant::now());
        self.counters.streams = self.streams.snapshot();
        self.slot().publish(
            self.server.stats(),
            self.server.allocation_count(),
            &self.counters,
        );
    }

    fn forward_events(&mut self) {
        while let Some(event) = self.server.next_event() {
            let record = AllocationEvent::new(event, callbox_core::time::unix_now());
            // Never wait for the consumer: a full channel costs the event, not the relay.
            if self.events.try_send(record).is_err() {
                self.metrics.event_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn controls(&mut self) {
        // A wake from `set_credentials` or `set_policy` alone: install them now.
        self.load_snapshots();
        while let Ok(c) = self.control.try_recv() {
            // Credentials stored before a control was sent are in force when it is handled
            // (the channel orders the store before the receive): after `set_credentials`
            // with a ban then `kick_clients`, no Allocate from the banned network is
            // accepted after the kick.
            self.load_snapshots();
            match c {
                Control::KickUser(user) => {
                    self.server.kick_user(&user);
                }
                Control::KickClients(nets) => {
                    self.server.kick_clients(|ip| nets.iter().any(|n| n.contains(ip)));
                }
                Control::List(answer) => {
                    let _ = answer.send(self.server.allocations(Instant::now()).collect());
                }
                Control::Close(id, answer) => {
                    let _ = answer.send(self.server.kick(id));
                }
                Control::Adopt(conn) => {
                    // Its first bytes are in the buffer already, more may wait in rustls.
                    if let Some(key) = self.streams.adopt(*conn, self.poll.registry(), Instant::now())
                        && self.stream_ready(key)
                    {
                        self.again.push(Token(CONN_BASE + key));
                    }
                }
            }
        }
        self.run_commands(0, Instant::now());
    }

    /// Reads and handles up to a few batches from listener `li`; true if more may wait.
    fn client_readable(&mut self, li: usize) -> io::Result<bool> {
        let fd = self.listeners[li].as_raw_fd();
        for _ in 0..MAX_BATCHES_PER_TURN {
            let n = match self.client_rx.recv(fd, BATCH, 0) {
                Ok(n) => n,
                Err(e) => {
                    if self.listener_error_log.allow(Instant::now()) {
                        tracing::warn!(error = %e, kind = ?e.kind(), "receive on TURN listener failed");
                    }
                    return Ok(false);
                }
            };
            if n == 0 {
                return Ok(false);
            }
            let now = Instant::now();
            let unix = callbox_core::time::unix_now();
            for i in 0..n {
                let Some(from) = self.client_rx.source(i) else {
                    continue;
                };
                if self.client_rx.is_truncated(i) {
                    continue;
                }
                let packet = self.client_rx.payload(i);
                match self
                    .server
                    .handle_client_packet(from, packet, now, unix, &mut self.reply)
                {
                    ClientAction::None => {}
                    ClientAction::Reply => {
                        if self.listeners[li].send_to(&self.reply, from).is_err() {
                            self.counters.send_drops += 1;
                        }
                    }
                    ClientAction::Relay { id, peer, payload } => {
                        if let Some(&slot) = self.relay_by_id.get(&id) {
                            let fd = self.relays[slot].sock.as_raw_fd();
                            // Consecutive packets for one relay socket go in one sendmmsg.
                            if fd != self.to_peer_fd && !self.to_peer.is_empty() {
                                self.counters.send_drops += self.to_peer.flush(self.to_peer_fd) as u64;
                            }
                            self.to_peer_fd = fd;
                            // SAFETY: `payload` points into `client_rx`, which is not
                            // written again before the flush below.
                            unsafe { self.to_peer.push(peer, payload) };
                        }
                    }
                }
                self.run_commands(li, now);
            }
            self.flush_to_peer();
            if n < BATCH {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads and handles up to a few batches from relay socket `key`; true if more may wait.
    fn relay_readable(&mut self, key: usize) -> bool {
        let Some(relay) = self.relays.get(key) else {
            return false;
        };
        let (fd, id, li) = (relay.sock.as_raw_fd(), relay.id, relay.listener);
        for _ in 0..MAX_BATCHES_PER_TURN {
            let n = match self.peer_rx.recv(fd, BATCH, PEER_TAILROOM) {
                Ok(n) => n,
                Err(e) => {
                    // Rare (the socket is unconnected, so ICMP errors from peers are not
                    // reported on it) and so worth seeing: counted, logged once a second.
                    self.counters.relay_receive_errors += 1;
                    if self.relay_error_log.allow(Instant::now()) {
                        tracing::warn!(error = %e, kind = ?e.kind(), alloc = id.0, "receive on relay socket failed");
                    }
                    return false;
                }
            };
            if n == 0 {
                return false;
            }
            let now = Instant::now();
            let head = self.peer_rx.headroom();
            for i in 0..n {
                let Some(from) = self.peer_rx.source(i) else {
                    continue;
                };
                if self.peer_rx.is_truncated(i) {
                    continue;
                }
                let len = self.peer_rx.len(i);
                let buf = self.peer_rx.buffer_mut(i);
                match self.server.handle_peer_packet(id, from, buf, head, len, now) {
                    PeerAction::ToClient {
                        client,
                        transport: Transport::Udp,
                        start,
                        end,
                    } => {
                        // SAFETY: the slice points into `peer_rx`, which is not written
                        // again before the flush below.
                        unsafe { self.to_client.push(client, &self.peer_rx.buffer(i)[start..end]) };
                    }
                    PeerAction::ToClient {
                        client,
                        transport,
                        start,
                        end,
                    } => {
                        self.streams
                            .send_to(client, transport, &self.peer_rx.buffer(i)[start..end]);
                    }
                    PeerAction::Drop => {}
                }
            }
            if !self.to_client.is_empty() {
                let lfd = self.listeners[li].as_raw_fd();
                self.counters.send_drops += self.to_client.flush(lfd) as u64;
            }
            if n < BATCH {
                return false;
            }
        }
        true
    }

    fn flush_to_peer(&mut self) {
        if !self.to_peer.is_empty() {
            self.counters.send_drops += self.to_peer.flush(self.to_peer_fd) as u64;
        }
    }

    fn run_commands(&mut self, li: usize, now: Instant) {
        while let Some(cmd) = self.server.next_command() {
            // Queued datagrams go out before a relay socket is closed (or its descriptor
            // number reused by a new one).
            self.flush_to_peer();
            match cmd {
                Command::BindRelay {
                    id,
                    ip,
                    even_port,
                    reserve_for,
                } => match self.bind_relay(ip, even_port || reserve_for.is_some(), reserve_for.is_some()) {
                    Ok((sock, reserved)) => {
                        let token = reserved
                            .zip(reserve_for.as_deref())
                            .and_then(|(r, user)| self.reservations.insert(r, user, now));
                        self.install_relay(id, sock, li, token, now);
                    }
                    Err(e) => self.relay_bind_failed(id, e, now),
                },
                Command::TakeReservation { id, token } => match self.reservations.take(&token, now) {
                    Some(sock) => self.install_relay(id, UdpSocket::from_std(sock), li, None, now),
                    None => self
                        .server
                        .relay_bound(id, Err(RelayBindError::NoReservation), now),
                },
                Command::CloseRelay { id } => {
                    if let Some(key) = self.relay_by_id.remove(&id) {
                        let mut relay = self.relays.remove(key);
                        let _ = self.poll.registry().deregister(&mut relay.sock);
                    }
                }
                Command::SendToClient {
                    to,
                    transport: Transport::Udp,
                    bytes,
                } => {
                    if self.listeners[li].send_to(&bytes, to).is_err() {
                        self.counters.send_drops += 1;
                    }
                }
                Command::SendToClient { to, transport, bytes } => {
                    self.streams.send_to(to, transport, &bytes);
                }
            }
        }
    }

    /// Registers a bound relay socket for allocation `id` and tells the server.
    fn install_relay(
        &mut self,
        id: AllocId,
        mut sock: UdpSocket,
        li: usize,
        token: Option<[u8; 8]>,
        now: Instant,
    ) {
        let entry = self.relays.vacant_entry();
        let key = entry.key();
        let installed = self
            .poll
            .registry()
            .register(&mut sock, Token(RELAY_BASE + key), Interest::READABLE)
            .and_then(|()| sock.local_addr());
        match installed {
            Ok(local) => {
                entry.insert(Relay {
                    sock,
                    id,
                    listener: li,
                });
                self.relay_by_id.insert(id, key);
                self.server.relay_bound_reserved(id, Ok(local), token, now);
            }
            // The socket closes here, which also takes it out of the poll.
            Err(e) => self.relay_bind_failed(id, e, now),
        }
    }

    /// Counts and logs (once a second at most) a relay socket that could not be had, then
    /// tells the server, which answers the Allocate by the error's kind (508 or 500).
    fn relay_bind_failed(&mut self, id: AllocId, e: io::Error, now: Instant) {
        self.counters.relay_bind_failures += 1;
        if self.bind_error_log.allow(now) {
            tracing::warn!(error = %e, kind = ?e.kind(), alloc = id.0, "no relay socket for an allocation");
        }
        self.server.relay_bound(id, Err(RelayBindError::Io(e)), now);
    }

    /// Binds a UDP socket on `ip` at a random free port of the relay range (an even one
    /// when asked), and with `reserve_next` also the port after it, kept for a later
    /// Allocate with a RESERVATION-TOKEN.
    fn bind_relay(
        &mut self,
        ip: IpAddr,
        even: bool,
        reserve_next: bool,
    ) -> io::Result<(UdpSocket, Option<std::net::UdpSocket>)> {
        let (lo, hi) = self.port_range;
        let mut rng = rand::rng();
        let mut last_err = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
        for _ in 0..64 {
            let mut port = rng.random_range(lo..=hi);
            if even {
                port &= !1;
            }
            if port < lo || (reserve_next && port == u16::MAX) {
                continue;
            }
            let first = match bind_port(ip, port) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !reserve_next {
                return Ok((UdpSocket::from_std(first), None));
            }
            match bind_port(ip, port + 1) {
                Ok(next) => return Ok((UdpSocket::from_std(first), Some(next))),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }
}

fn bind_port(ip: IpAddr, port: u16) -> io::Result<std::net::UdpSocket> {
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if ip.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::new(ip, port).into())?;
    Ok(sock.into())
}
