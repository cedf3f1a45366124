//! STUN and TURN over TCP (RFC 8656 section 12): the listeners, and each worker's client
//! connections with their framing, send queues, caps and timeouts.
//!
//! A connection belongs to the worker that accepted it (SO_REUSEPORT spreads accepts over
//! the workers), and so does its allocation: the peer packets for it arrive on that
//! worker's relay socket, so nothing crosses threads. Bad input ends that one connection
//! (and its allocation), counted; it never holds others up.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox_http::{ConnectionLimits, Permit};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use turn_proto::framing::{Frame, StreamBuffer};

/// The largest frame a client may send: the largest STUN message (a 16-bit length after
/// the 20-byte header). Anything longer is refused from its header.
pub(crate) const MAX_FRAME: usize = 20 + 65_535;

/// The bound TCP listeners: for each address, one SO_REUSEPORT socket per worker.
#[derive(Debug, Default)]
pub struct TcpListeners {
    addrs: Vec<SocketAddr>,
    pub(crate) sockets: Vec<Vec<std::net::TcpListener>>,
}

impl TcpListeners {
    /// No TCP listener (`turn.tcp = false`).
    pub fn none() -> Self {
        Self::default()
    }

    /// Binds `workers` SO_REUSEPORT listeners on each address (the UDP listeners' bound
    /// addresses, so TCP serves the same ports).
    pub fn bind(addrs: &[SocketAddr], workers: usize) -> io::Result<Self> {
        let mut sockets = Vec::new();
        for addr in addrs {
            let mut group = Vec::new();
            for _ in 0..workers.max(1) {
                group.push(bind_reuseport(*addr)?);
            }
            sockets.push(group);
        }
        Ok(Self {
            addrs: addrs.to_vec(),
            sockets,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// One set of listeners from several (each bound separately).
    pub fn merge(parts: Vec<TcpListeners>) -> TcpListeners {
        let mut out = TcpListeners::none();
        for p in parts {
            out.addrs.extend(p.addrs);
            out.sockets.extend(p.sockets);
        }
        out
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The stream settings of the role (`turn.tcp_*`).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Connections at once and per address, shared by every worker (counted at accept).
    pub limits: Arc<ConnectionLimits>,
    /// Silence allowed without an allocation, or in the middle of a frame.
    pub idle_timeout: Duration,
    /// Bytes queued for a slow reader before packets to it are dropped.
    pub send_buffer: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            limits: ConnectionLimits::new(callbox_http::Limits {
                max_connections: 4096,
                max_per_address: 64,
                ipv6_prefix: callbox_core::limit_key::DEFAULT_IPV6_PREFIX,
                header_timeout: Duration::from_secs(30),
            }),
            idle_timeout: Duration::from_secs(30),
            send_buffer: 256 * 1024,
        }
    }
}

/// What the streams count, cumulative (published with the worker's counters).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamCounters {
    pub accepted: u64,
    /// Closed at accept: the per-address or total cap was reached.
    pub refused: u64,
    /// Closed for a frame that is neither STUN nor ChannelData, or too long.
    pub bad_input: u64,
    /// Closed after `idle_timeout` of silence without an allocation or mid-frame.
    pub idle_closed: u64,
    /// Bytes to a client dropped because its send queue was full.
    pub send_drops: u64,
}

pub(crate) struct Conn {
    stream: TcpStream,
    pub peer: SocketAddr,
    pub rx: StreamBuffer,
    tx: Vec<u8>,
    last_rx: Instant,
    writable: bool,
    _permit: Permit,
}

/// One worker's TCP listeners and client connections.
pub(crate) struct Streams {
    pub listeners: Vec<TcpListener>,
    pub conns: Slab<Conn>,
    by_peer: HashMap<SocketAddr, usize>,
    pub settings: StreamSettings,
    pub counters: StreamCounters,
    conn_base: usize,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The client closed it, or the socket failed.
    Closed,
    /// Its bytes were not STUN or ChannelData, or a frame was too long.
    BadInput,
    Idle,
}

impl Streams {
    pub fn new(
        listeners: Vec<std::net::TcpListener>,
        settings: StreamSettings,
        registry: &Registry,
        listener_base: usize,
        conn_base: usize,
    ) -> io::Result<Self> {
        let mut out = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, Token(listener_base + i), Interest::READABLE)?;
            out.push(l);
        }
        Ok(Self {
            listeners: out,
            conns: Slab::new(),
            by_peer: HashMap::new(),
            settings,
            counters: StreamCounters::default(),
            conn_base,
        })
    }

    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Accepts what listener `li` has waiting (bounded per turn); true if more may wait.
    pub fn accept(&mut self, li: usize, registry: &Registry, now: Instant) -> bool {
        for _ in 0..64 {
            let (mut stream, peer) = match self.listeners[li].accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // Out of descriptors or a connection reset before accept: try later.
                Err(_) => return false,
            };
            let peer = SocketAddr::new(callbox_core::policy::canonical(peer.ip()), peer.port());
            let Ok(permit) = self.settings.limits.admit(peer.ip()) else {
                self.counters.refused += 1;
                continue;
            };
            let entry = self.conns.vacant_entry();
            let token = Token(self.conn_base + entry.key());
            if registry.register(&mut stream, token, Interest::READABLE).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.by_peer.insert(peer, entry.key());
            entry.insert(Conn {
                stream,
                peer,
                rx: StreamBuffer::new(MAX_FRAME),
                tx: Vec::new(),
                last_rx: now,
                writable: false,
                _permit: permit,
            });
            self.counters.accepted += 1;
        }
        true
    }

    /// Reads what connection `key` has (bounded per turn): `Ok(true)` if more may wait,
    /// `Err` when the connection is over (EOF or error).
    pub fn read(&mut self, key: usize, now: Instant) -> Result<bool, Gone> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(false);
        };
        let spare = c.rx.spare();
        if spare.is_empty() {
            // A full buffer holds a whole frame at most: the caller drains it first.
            return Ok(true);
        }
        match c.stream.read(spare) {
            Ok(0) => Err(Gone::Closed),
            Ok(n) => {
                c.rx.filled(n);
                c.last_rx = now;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(Gone::Closed),
        }
    }

    /// The next complete frame of connection `key`: a STUN message or a ChannelData
    /// message (header and data, without its padding), as the server takes them.
    pub fn next_frame(&mut self, key: usize) -> Result<Option<(SocketAddr, &[u8])>, Gone> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(None);
        };
        let peer = c.peer;
        match c.rx.next_frame() {
            Ok(Some(Frame::Stun(bytes))) => Ok(Some((peer, bytes))),
            Ok(Some(Frame::ChannelData { message, .. })) => Ok(Some((peer, message))),
            Ok(None) => Ok(None),
            Err(_) => Err(Gone::BadInput),
        }
    }

    /// Queues `bytes` for the client at `peer` over TCP and writes what the socket takes
    /// now. Past the send buffer the bytes are dropped (and counted), as a congested
    /// network would drop them over UDP; a stream never takes half a message.
    pub fn send_to(&mut self, peer: SocketAddr, bytes: &[u8], registry: &Registry) {
        let Some(&key) = self.by_peer.get(&peer) else {
            return;
        };
        let c = &mut self.conns[key];
        let mut rest = bytes;
        if c.tx.is_empty() {
            match c.stream.write(bytes) {
                Ok(n) => rest = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The read side sees the failure and closes the connection.
                Err(_) => return,
            }
        }
        if rest.is_empty() {
            return;
        }
        if c.tx.len() + rest.len() > self.settings.send_buffer && rest.len() == bytes.len() {
            self.counters.send_drops += bytes.len() as u64;
            return;
        }
        c.tx.extend_from_slice(rest);
        if !c.writable {
            c.writable = true;
            let token = Token(self.conn_base + key);
            let _ = registry.reregister(&mut c.stream, token, Interest::READABLE | Interest::WRITABLE);
        }
    }

    /// Writes what connection `key` has queued; stops asking for writability once empty.
    pub fn flush(&mut self, key: usize, registry: &Registry) -> Result<(), Gone> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(());
        };
        while !c.tx.is_empty() {
            match c.stream.write(&c.tx) {
                Ok(0) => return Err(Gone::Closed),
                Ok(n) => {
                    c.tx.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Gone::Closed),
            }
        }
        if c.writable {
            c.writable = false;
            let token = Token(self.conn_base + key);
            let _ = registry.reregister(&mut c.stream, token, Interest::READABLE);
        }
        Ok(())
    }

    /// Closes connection `key`; returns the client's address, for its allocation.
    pub fn close(&mut self, key: usize, why: Gone, registry: &Registry) -> Option<SocketAddr> {
        let mut c = self.conns.try_remove(key)?;
        let _ = registry.deregister(&mut c.stream);
        self.by_peer.remove(&c.peer);
        match why {
            Gone::BadInput => self.counters.bad_input += 1,
            Gone::Idle => self.counters.idle_closed += 1,
            Gone::Closed => {}
        }
        Some(c.peer)
    }

    /// Connections silent for the idle timeout that have no allocation (`has_allocation`)
    /// or stopped in the middle of a frame.
    pub fn idle(&self, now: Instant, has_allocation: impl Fn(SocketAddr) -> bool) -> Vec<usize> {
        let limit = self.settings.idle_timeout;
        self.conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_rx) >= limit)
            .filter(|(_, c)| c.rx.is_mid_frame() || !has_allocation(c.peer))
            .map(|(key, _)| key)
            .collect()
    }
}
