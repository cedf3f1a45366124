//! STUN and TURN over TCP and TLS (RFC 8656 section 12): the listeners, and each worker's
//! client connections with their framing, TLS state, send queues, caps and timeouts.
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

use callbox_http::{ConnectionLimits, Permit, TlsHandoff};
use callbox_tls::{HandshakeLimit, HandshakeSlot, TlsMetrics};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use turn_proto::framing::{Frame, StreamBuffer};
use turn_proto::server::Transport;

/// The largest frame a client may send: the largest STUN message (a 16-bit length after
/// the 20-byte header). Anything longer is refused from its header.
pub(crate) const MAX_FRAME: usize = 20 + 65_535;

/// The bound TCP and TLS listeners: for each address, one SO_REUSEPORT socket per worker.
#[derive(Debug, Default)]
pub struct TcpListeners {
    addrs: Vec<(SocketAddr, Transport)>,
    pub(crate) sockets: Vec<(Transport, Vec<std::net::TcpListener>)>,
}

impl TcpListeners {
    /// No TCP listener (`turn.tcp = false`).
    pub fn none() -> Self {
        Self::default()
    }

    /// Binds `workers` SO_REUSEPORT listeners for STUN/TURN over TCP on each address (the
    /// UDP listeners' bound addresses, so TCP serves the same ports).
    pub fn bind(addrs: &[SocketAddr], workers: usize) -> io::Result<Self> {
        Self::bind_as(addrs, workers, Transport::Tcp)
    }

    /// As [`TcpListeners::bind`], for STUN/TURN over TLS (`turn.tls_listen`). Port 0 picks
    /// one port per address, shared by its sockets.
    pub fn bind_tls(addrs: &[SocketAddr], workers: usize) -> io::Result<Self> {
        Self::bind_as(addrs, workers, Transport::Tls)
    }

    fn bind_as(addrs: &[SocketAddr], workers: usize, transport: Transport) -> io::Result<Self> {
        let mut out = Self::none();
        for addr in addrs {
            let mut group = Vec::new();
            let mut actual = *addr;
            for _ in 0..workers.max(1) {
                let s = bind_reuseport(actual)?;
                actual = s.local_addr()?;
                group.push(s);
            }
            out.addrs.push((actual, transport));
            out.sockets.push((transport, group));
        }
        Ok(out)
    }

    /// The bound addresses of one transport's listeners.
    pub fn local_addrs(&self, transport: Transport) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .filter(|(_, t)| *t == transport)
            .map(|(a, _)| *a)
            .collect()
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

/// The stream settings of the role (`turn.tcp_*`, and `tls.*` for TURN over TLS).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Connections at once and per address, shared by every worker (counted at accept).
    pub limits: Arc<ConnectionLimits>,
    /// Silence allowed without an allocation, or in the middle of a frame.
    pub idle_timeout: Duration,
    /// Bytes queued for a slow reader before packets to it are dropped.
    pub send_buffer: usize,
    /// TURN over TLS: the server configuration and the handshake bound; `None` without a
    /// certificate (then no TLS listener is bound either).
    pub tls: Option<TlsSettings>,
}

/// What the workers need to serve TURN over TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Presents the certificate in force at each handshake, offers ALPN `stun.turn`.
    pub config: Arc<rustls::ServerConfig>,
    /// Handshakes in flight (shared with the other TLS listeners) and their timeout.
    pub handshakes: HandshakeLimit,
    pub metrics: Arc<TlsMetrics>,
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
            tls: None,
        }
    }
}

/// What the streams of one transport count, cumulative (published with the worker's
/// counters).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamCounters {
    pub accepted: u64,
    /// Closed at accept: the per-address or total cap (or, for TLS, the bound on
    /// handshakes in flight) was reached.
    pub refused: u64,
    /// Closed for a frame that is neither STUN nor ChannelData, or too long; for TLS also
    /// bytes that are not TLS or a failed handshake.
    pub bad_input: u64,
    /// Closed after `idle_timeout` of silence without an allocation or mid-frame, or a TLS
    /// handshake past its timeout.
    pub idle_closed: u64,
    /// Bytes to a client dropped because its send queue was full.
    pub send_drops: u64,
    /// Open now.
    pub open: u64,
}

/// A connection over TLS: rustls's state machine, driven by the worker's loop.
struct TlsConn {
    conn: rustls::ServerConnection,
    /// Held until the handshake ends.
    handshake: Option<HandshakeSlot>,
}

pub(crate) struct Conn {
    stream: TcpStream,
    pub peer: SocketAddr,
    transport: Transport,
    tls: Option<Box<TlsConn>>,
    pub rx: StreamBuffer,
    /// Bytes for the socket (ciphertext over TLS) that it did not take yet.
    tx: Vec<u8>,
    /// In [`Streams::dirty`] (has bytes queued since the last flush).
    dirty: bool,
    opened: Instant,
    last_rx: Instant,
    writable: bool,
    _permit: Permit,
}

/// One worker's TCP and TLS listeners and client connections.
pub(crate) struct Streams {
    pub listeners: Vec<(TcpListener, Transport)>,
    pub conns: Slab<Conn>,
    by_peer: HashMap<(SocketAddr, Transport), usize>,
    pub settings: StreamSettings,
    /// Counters of TCP (0) and TLS (1) connections.
    pub counters: [StreamCounters; 2],
    conn_base: usize,
    /// Connections with messages queued during this loop turn, written by
    /// [`Streams::flush_queued`] once the turn's events are handled: a turn's messages to
    /// one client leave in one write (and over TLS in few records), not one each.
    dirty: Vec<usize>,
}

/// A frame from a client: its address, its transport and the message.
pub(crate) type ClientFrame<'a> = (SocketAddr, Transport, &'a [u8]);

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The client closed it, or the socket failed.
    Closed,
    /// Its bytes were not STUN or ChannelData, or a frame was too long; or not TLS.
    BadInput,
    Idle,
}

fn slot(t: Transport) -> usize {
    usize::from(t == Transport::Tls)
}

impl Streams {
    pub fn new(
        listeners: Vec<(std::net::TcpListener, Transport)>,
        settings: StreamSettings,
        registry: &Registry,
        listener_base: usize,
        conn_base: usize,
    ) -> io::Result<Self> {
        let mut out = Vec::new();
        for (i, (l, transport)) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, Token(listener_base + i), Interest::READABLE)?;
            out.push((l, transport));
        }
        Ok(Self {
            listeners: out,
            conns: Slab::new(),
            by_peer: HashMap::new(),
            settings,
            counters: [StreamCounters::default(); 2],
            conn_base,
            dirty: Vec::new(),
        })
    }

    /// The counters, open connections included (kept as they open and close: this is
    /// read at every loop turn).
    pub fn snapshot(&self) -> [StreamCounters; 2] {
        self.counters
    }

    /// Accepts what listener `li` has waiting (bounded per turn); true if more may wait.
    pub fn accept(&mut self, li: usize, registry: &Registry, now: Instant) -> bool {
        let transport = self.listeners[li].1;
        for _ in 0..64 {
            let (mut stream, peer) = match self.listeners[li].0.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // Out of descriptors or a connection reset before accept: try later.
                Err(_) => return false,
            };
            let peer = SocketAddr::new(callbox_core::policy::canonical(peer.ip()), peer.port());
            let Ok(permit) = self.settings.limits.admit(peer.ip()) else {
                self.counters[slot(transport)].refused += 1;
                continue;
            };
            let tls = match (transport, &self.settings.tls) {
                (Transport::Tls, Some(t)) => {
                    let Some(handshake) = t.handshakes.try_acquire() else {
                        TlsMetrics::count(&t.metrics.handshakes_refused);
                        self.counters[slot(transport)].refused += 1;
                        continue;
                    };
                    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&t.config)) else {
                        continue;
                    };
                    Some(Box::new(TlsConn {
                        conn,
                        handshake: Some(handshake),
                    }))
                }
                _ => None,
            };
            let entry = self.conns.vacant_entry();
            let token = Token(self.conn_base + entry.key());
            if registry.register(&mut stream, token, Interest::READABLE).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.by_peer.insert((peer, transport), entry.key());
            entry.insert(Conn {
                stream,
                peer,
                transport,
                tls,
                rx: StreamBuffer::new(MAX_FRAME),
                tx: Vec::new(),
                dirty: false,
                opened: now,
                last_rx: now,
                writable: false,
                _permit: permit,
            });
            self.counters[slot(transport)].accepted += 1;
            self.counters[slot(transport)].open += 1;
        }
        true
    }

    /// Takes a TLS connection from the one TLS port whose first bytes were STUN, with its
    /// TLS state, the plaintext already read and its permit (it stays counted there).
    /// Returns its key; the caller handles the buffered plaintext as if just read.
    pub fn adopt(&mut self, a: TlsHandoff, registry: &Registry, now: Instant) -> Option<usize> {
        let peer = SocketAddr::new(callbox_core::policy::canonical(a.peer.ip()), a.peer.port());
        if a.stream.set_nonblocking(true).is_err() || a.prefix.len() > MAX_FRAME {
            return None;
        }
        let mut stream = TcpStream::from_std(a.stream);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        registry
            .register(&mut stream, Token(self.conn_base + key), Interest::READABLE)
            .ok()?;
        let _ = stream.set_nodelay(true);
        let mut rx = StreamBuffer::new(MAX_FRAME);
        rx.spare()[..a.prefix.len()].copy_from_slice(&a.prefix);
        rx.filled(a.prefix.len());
        let mut tls = a.tls;
        // What rustls still has to send (session tickets after the handshake).
        let mut tx = Vec::new();
        while tls.wants_write() {
            if tls.write_tls(&mut tx).is_err() {
                break;
            }
        }
        self.by_peer.insert((peer, Transport::Tls), key);
        entry.insert(Conn {
            stream,
            peer,
            transport: Transport::Tls,
            tls: Some(Box::new(TlsConn {
                conn: tls,
                handshake: None,
            })),
            rx,
            tx,
            dirty: false,
            opened: now,
            last_rx: now,
            writable: false,
            _permit: a.permit,
        });
        self.counters[slot(Transport::Tls)].accepted += 1;
        self.counters[slot(Transport::Tls)].open += 1;
        Some(key)
    }

    /// Reads what connection `key` has (bounded per turn): `Ok(true)` if more may wait,
    /// `Err` when the connection is over (EOF, error, or TLS that failed).
    pub fn read(&mut self, key: usize, now: Instant, registry: &Registry) -> Result<bool, Gone> {
        let conn_base = self.conn_base;
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(false);
        };
        let spare = c.rx.spare();
        if spare.is_empty() {
            // A full buffer holds a whole frame at most: the caller drains it first.
            return Ok(true);
        }
        let Some(tls) = c.tls.as_deref_mut() else {
            return match c.stream.read(spare) {
                Ok(0) => Err(Gone::Closed),
                Ok(n) => {
                    c.rx.filled(n);
                    c.last_rx = now;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                Err(_) => Err(Gone::Closed),
            };
        };
        // Plaintext rustls already decrypted comes first: the socket may have nothing more.
        match tls.conn.reader().read(spare) {
            Ok(0) => return Err(Gone::Closed),
            Ok(n) => {
                c.rx.filled(n);
                c.last_rx = now;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Gone::Closed),
        }
        match tls.conn.read_tls(&mut c.stream) {
            Ok(0) => return Err(Gone::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(_) => return Err(Gone::Closed),
        }
        let processed = tls.conn.process_new_packets();
        // Handshake messages, or the alert that tells the client why it failed.
        while tls.conn.wants_write() {
            if tls.conn.write_tls(&mut c.tx).is_err() {
                break;
            }
        }
        let tls_metrics = self.settings.tls.as_ref().map(|t| &t.metrics);
        if processed.is_err() {
            let _ = write_queued(c, conn_base + key, registry);
            if let Some(m) = tls_metrics {
                TlsMetrics::count(&m.handshakes_failed);
            }
            return Err(Gone::BadInput);
        }
        if tls.handshake.is_some() && !tls.conn.is_handshaking() {
            tls.handshake = None;
            if let Some(m) = tls_metrics {
                TlsMetrics::count(&m.handshakes_ok);
            }
        }
        c.last_rx = now;
        write_queued(c, conn_base + key, registry)?;
        Ok(true)
    }

    /// The next complete frame of connection `key`: a STUN message or a ChannelData
    /// message (header and data, without its padding), as the server takes them.
    pub fn next_frame(&mut self, key: usize) -> Result<Option<ClientFrame<'_>>, Gone> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(None);
        };
        let (peer, transport) = (c.peer, c.transport);
        match c.rx.next_frame() {
            Ok(Some(Frame::Stun(bytes))) => Ok(Some((peer, transport, bytes))),
            Ok(Some(Frame::ChannelData { message, .. })) => Ok(Some((peer, transport, message))),
            Ok(None) => Ok(None),
            Err(_) => Err(Gone::BadInput),
        }
    }

    /// Queues `bytes` for the client at `peer` over `transport`, to be written by
    /// [`Streams::flush_queued`] at the end of the loop turn. Past the send buffer the bytes
    /// are dropped (and counted), as a congested network would drop them over UDP; a
    /// stream never takes half a message.
    pub fn send_to(&mut self, peer: SocketAddr, transport: Transport, bytes: &[u8]) {
        let Some(&key) = self.by_peer.get(&(peer, transport)) else {
            return;
        };
        let c = &mut self.conns[key];
        if c.tx.len() + bytes.len() > self.settings.send_buffer {
            self.counters[slot(transport)].send_drops += bytes.len() as u64;
            return;
        }
        match c.tls.as_deref_mut() {
            None => c.tx.extend_from_slice(bytes),
            // One TLS record per message (the turn's records still leave in one write):
            // coturn's turnutils_uclient reads one record as one message, and clients
            // built like it would misread several messages in one record.
            Some(tls) => {
                if tls.conn.writer().write_all(bytes).is_err() {
                    return;
                }
                // rustls encrypts into its own buffer; the record moves to `tx` at once, so
                // that one queue, bounded by the send buffer, holds everything unsent.
                while tls.conn.wants_write() {
                    if tls.conn.write_tls(&mut c.tx).is_err() {
                        break;
                    }
                }
            }
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes what the loop turn queued, one write per connection. A failed write shows on
    /// the read side, which closes the connection.
    pub fn flush_queued(&mut self, registry: &Registry) {
        // Taken and put back, so the list keeps its capacity from turn to turn.
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let token = self.conn_base + key;
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
                let _ = write_queued(c, token, registry);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Writes what connection `key` has queued; stops asking for writability once empty.
    pub fn flush(&mut self, key: usize, registry: &Registry) -> Result<(), Gone> {
        let token = self.conn_base + key;
        match self.conns.get_mut(key) {
            Some(c) => write_queued(c, token, registry),
            None => Ok(()),
        }
    }

    /// Closes connection `key`; returns the client's address and transport, for its
    /// allocation.
    pub fn close(&mut self, key: usize, why: Gone, registry: &Registry) -> Option<(SocketAddr, Transport)> {
        let mut c = self.conns.try_remove(key)?;
        let _ = registry.deregister(&mut c.stream);
        self.by_peer.remove(&(c.peer, c.transport));
        let counters = &mut self.counters[slot(c.transport)];
        counters.open -= 1;
        match why {
            Gone::BadInput => counters.bad_input += 1,
            Gone::Idle => counters.idle_closed += 1,
            Gone::Closed => {}
        }
        if why == Gone::Idle
            && c.tls.as_ref().is_some_and(|t| t.handshake.is_some())
            && let Some(t) = &self.settings.tls
        {
            TlsMetrics::count(&t.metrics.handshake_timeouts);
        }
        Some((c.peer, c.transport))
    }

    /// Connections to close for silence: silent for the idle timeout without an
    /// allocation (`has_allocation`) or in the middle of a frame, or a TLS handshake not
    /// done within its timeout.
    pub fn idle(&self, now: Instant, has_allocation: impl Fn(SocketAddr, Transport) -> bool) -> Vec<usize> {
        let limit = self.settings.idle_timeout;
        let handshake_limit = self.settings.tls.as_ref().map(|t| t.handshakes.timeout);
        self.conns
            .iter()
            .filter(|(_, c)| {
                let handshaking = c.tls.as_ref().is_some_and(|t| t.handshake.is_some());
                if handshaking && let Some(h) = handshake_limit {
                    return now.saturating_duration_since(c.opened) >= h;
                }
                now.saturating_duration_since(c.last_rx) >= limit
                    && (c.rx.is_mid_frame() || !has_allocation(c.peer, c.transport))
            })
            .map(|(key, _)| key)
            .collect()
    }
}

/// Writes `c.tx` to the socket as far as it takes it; asks for writability while bytes
/// are left, and stops asking once they are gone.
fn write_queued(c: &mut Conn, token: usize, registry: &Registry) -> Result<(), Gone> {
    while !c.tx.is_empty() {
        match c.stream.write(&c.tx) {
            Ok(0) => return Err(Gone::Closed),
            Ok(n) => {
                c.tx.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Gone::Closed),
        }
    }
    let want = !c.tx.is_empty();
    if want != c.writable {
        c.writable = want;
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = registry.reregister(&mut c.stream, Token(token), interest);
    }
    Ok(())
}
