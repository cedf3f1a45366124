//! The benchmark's TURN client: Allocate (401, then again with long-term credentials),
//! optionally ChannelBind to the peer, over many UDP sockets with a bounded number of
//! transactions in flight. Also the STUN Binding blaster.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callbox_core::credentials::long_term_key;
use turn_proto::stun::{Class, Message, MessageBuilder, TransactionId, attr, method, split_type};

use crate::sys;

/// A TURN REST credential.
#[derive(Debug, Clone)]
pub struct Cred {
    pub username: String,
    pub password: String,
}

static TID: AtomicU64 = AtomicU64::new(1);

pub fn next_tid() -> TransactionId {
    let mut t = [0u8; 12];
    t[..4].copy_from_slice(&std::process::id().to_be_bytes());
    t[4..].copy_from_slice(&TID.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Refresh of an existing allocation (then ChannelBind again).
    Refresh,
    Alloc1,
    Alloc2,
    Bind,
    Done,
    /// The error code, or 0 for a timeout.
    Failed(u16),
}

#[derive(Debug)]
struct Client {
    stage: Stage,
    tid: TransactionId,
    msg: Vec<u8>,
    sent_at: Instant,
    tries: u32,
    realm: String,
    nonce: String,
    key: [u8; 16],
    relay: Option<SocketAddr>,
}

/// What to do after the allocation: bind `channel_base + index` to `peer`.
#[derive(Debug, Clone, Copy)]
pub struct BindTo {
    pub peer: SocketAddr,
    pub channel_base: u16,
}

#[derive(Debug, Default)]
pub struct SetupResult {
    pub ok: usize,
    /// (error code or 0 for timeout, count)
    pub failures: Vec<(u16, usize)>,
    pub elapsed: Duration,
    pub relays: Vec<Option<SocketAddr>>,
    /// Realm, nonce and key per client, for [`refresh`].
    pub sessions: Vec<Session>,
}

/// What a client learned during setup and needs to refresh its allocation.
#[derive(Debug, Clone, Default)]
pub struct Session {
    realm: String,
    nonce: String,
    key: [u8; 16],
}

/// Refreshes every allocation (Refresh, LIFETIME 600) and, with `bind`, its channel
/// binding, which also refreshes the permission (300 s) the relay depends on.
pub fn refresh(
    socks: &[UdpSocket],
    cred: &Cred,
    bind: Option<BindTo>,
    sessions: &[Session],
    deadline: Duration,
) -> SetupResult {
    drive(socks, cred, bind, socks.len().min(64), deadline, |i| {
        let s = sessions.get(i).cloned().unwrap_or_default();
        (Stage::Refresh, s)
    })
}

const RETRANSMIT: Duration = Duration::from_millis(500);
const MAX_TRIES: u32 = 6;

fn error_code(m: &Message<'_>) -> u16 {
    m.get(attr::ERROR_CODE)
        .filter(|v| v.len() >= 4)
        .map_or(0, |v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
}

fn build(c: &mut Client, index: usize, cred: &Cred, bind: Option<BindTo>) {
    c.tid = next_tid();
    c.msg.clear();
    match c.stage {
        Stage::Alloc1 => {
            let mut b = MessageBuilder::new(&mut c.msg, method::ALLOCATE, Class::Request, &c.tid);
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
            b.finish();
        }
        Stage::Alloc2 => {
            let mut b = MessageBuilder::new(&mut c.msg, method::ALLOCATE, Class::Request, &c.tid);
            b.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
                .add(attr::USERNAME, cred.username.as_bytes())
                .add(attr::REALM, c.realm.as_bytes())
                .add(attr::NONCE, c.nonce.as_bytes())
                .add_integrity(&c.key);
            b.finish();
        }
        Stage::Bind => {
            let bind = bind.expect("Bind stage only with a peer");
            let channel = bind.channel_base + index as u16;
            let mut b = MessageBuilder::new(&mut c.msg, method::CHANNEL_BIND, Class::Request, &c.tid);
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, &bind.peer)
                .add(attr::USERNAME, cred.username.as_bytes())
                .add(attr::REALM, c.realm.as_bytes())
                .add(attr::NONCE, c.nonce.as_bytes())
                .add_integrity(&c.key);
            b.finish();
        }
        Stage::Refresh => {
            let mut b = MessageBuilder::new(&mut c.msg, method::REFRESH, Class::Request, &c.tid);
            b.add_u32(attr::LIFETIME, 600)
                .add(attr::USERNAME, cred.username.as_bytes())
                .add(attr::REALM, c.realm.as_bytes())
                .add(attr::NONCE, c.nonce.as_bytes())
                .add_integrity(&c.key);
            b.finish();
        }
        Stage::Done | Stage::Failed(_) => {}
    }
}

fn send(sock: &UdpSocket, c: &mut Client) {
    c.sent_at = Instant::now();
    c.tries += 1;
    let _ = sock.send(&c.msg);
}

/// Handles one response; returns true when a new request must be sent.
fn handle(c: &mut Client, m: &Message<'_>, cred: &Cred, bind: Option<BindTo>) -> bool {
    if m.transaction_id() != c.tid {
        return false;
    }
    let (meth, class) = (m.method(), m.class());
    match (c.stage, meth, class) {
        (Stage::Alloc1, method::ALLOCATE, Class::Error) if error_code(m) == 401 => {
            let (Ok(Some(realm)), Ok(Some(nonce))) = (m.realm(), m.nonce()) else {
                c.stage = Stage::Failed(401);
                return false;
            };
            c.realm = realm.to_string();
            c.nonce = nonce.to_string();
            c.key = long_term_key(&cred.username, &c.realm, &cred.password);
            c.stage = Stage::Alloc2;
            true
        }
        (Stage::Alloc2 | Stage::Bind | Stage::Refresh, _, Class::Error) if error_code(m) == 438 => {
            if let Ok(Some(nonce)) = m.nonce() {
                c.nonce = nonce.to_string();
            }
            c.tries = 0;
            true
        }
        (Stage::Alloc2, method::ALLOCATE, Class::Success) => {
            c.relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).ok().flatten();
            c.stage = if bind.is_some() { Stage::Bind } else { Stage::Done };
            bind.is_some()
        }
        (Stage::Refresh, method::REFRESH, Class::Success) => {
            c.stage = if bind.is_some() { Stage::Bind } else { Stage::Done };
            bind.is_some()
        }
        (Stage::Bind, method::CHANNEL_BIND, Class::Success) => {
            c.stage = Stage::Done;
            false
        }
        (_, _, Class::Error) => {
            c.stage = Stage::Failed(error_code(m));
            false
        }
        _ => false,
    }
}

/// Allocates (and binds) on every socket of `socks` (each already connected to the
/// server), with at most `window` clients mid-setup at a time. Gives up at `deadline`.
pub fn setup(
    socks: &[UdpSocket],
    cred: &Cred,
    bind: Option<BindTo>,
    window: usize,
    deadline: Duration,
) -> SetupResult {
    drive(socks, cred, bind, window, deadline, |_| {
        (Stage::Alloc1, Session::default())
    })
}

fn drive(
    socks: &[UdpSocket],
    cred: &Cred,
    bind: Option<BindTo>,
    window: usize,
    deadline: Duration,
    init: impl Fn(usize) -> (Stage, Session),
) -> SetupResult {
    let start = Instant::now();
    let mut clients: Vec<Client> = Vec::with_capacity(socks.len());
    let mut active: Vec<usize> = Vec::with_capacity(window);
    let mut fds = Vec::with_capacity(window);
    let mut readable = Vec::with_capacity(window);
    let mut buf = vec![0u8; 2048];
    let mut next = 0;
    while (next < socks.len() || !active.is_empty()) && start.elapsed() < deadline {
        while active.len() < window && next < socks.len() {
            let (stage, session) = init(next);
            let mut c = Client {
                stage,
                tid: [0; 12],
                msg: Vec::with_capacity(256),
                sent_at: Instant::now(),
                tries: 0,
                realm: session.realm,
                nonce: session.nonce,
                key: session.key,
                relay: None,
            };
            build(&mut c, next, cred, bind);
            send(&socks[next], &mut c);
            clients.push(c);
            active.push(next);
            next += 1;
        }
        fds.clear();
        fds.extend(active.iter().map(|&i| socks[i].as_raw_fd()));
        sys::poll_readable(&fds, 5, &mut readable);
        for &k in &readable {
            let i = active[k];
            while let Ok(n) = recv_nowait(&socks[i], &mut buf) {
                let Ok(m) = Message::parse(&buf[..n]) else {
                    continue;
                };
                let c = &mut clients[i];
                if handle(c, &m, cred, bind) {
                    build(c, i, cred, bind);
                    send(&socks[i], c);
                }
            }
        }
        let now = Instant::now();
        for &i in &active {
            let c = &mut clients[i];
            if matches!(c.stage, Stage::Done | Stage::Failed(_)) {
                continue;
            }
            if now.duration_since(c.sent_at) >= RETRANSMIT {
                if c.tries >= MAX_TRIES {
                    c.stage = Stage::Failed(0);
                } else {
                    send(&socks[i], c);
                }
            }
        }
        active.retain(|&i| !matches!(clients[i].stage, Stage::Done | Stage::Failed(_)));
    }
    let mut r = SetupResult {
        elapsed: start.elapsed(),
        ..SetupResult::default()
    };
    for c in &mut clients {
        if !matches!(c.stage, Stage::Done | Stage::Failed(_)) {
            c.stage = Stage::Failed(0);
        }
    }
    for c in &clients {
        match c.stage {
            Stage::Done => r.ok += 1,
            Stage::Failed(code) => match r.failures.iter_mut().find(|(k, _)| *k == code) {
                Some((_, n)) => *n += 1,
                None => r.failures.push((code, 1)),
            },
            _ => {}
        }
        r.relays.push(c.relay);
        r.sessions.push(Session {
            realm: c.realm.clone(),
            nonce: c.nonce.clone(),
            key: c.key,
        });
    }
    let not_started = socks.len() - clients.len();
    if not_started > 0 {
        r.failures.push((0, not_started));
    }
    r
}

fn recv_nowait(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a live writable buffer of the length given.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Result of the Binding test.
#[derive(Debug, Default, Clone, Copy)]
pub struct BindingResult {
    pub sent: u64,
    pub answered: u64,
    pub elapsed: Duration,
}

/// Sends STUN Binding requests from `socks` (connected to the server) for `dur`, keeping
/// up to `window` outstanding per socket (closed loop: a socket with no answer for 20 ms
/// writes its outstanding requests off as lost).
pub fn binding_blast(socks: &[UdpSocket], window: usize, dur: Duration) -> BindingResult {
    let window = window.min(sys::BATCH);
    let mut req = Vec::with_capacity(64);
    let tid = next_tid();
    MessageBuilder::new(&mut req, method::BINDING, Class::Request, &tid).finish();
    let mut outstanding = vec![0usize; socks.len()];
    let mut last_answer = vec![Instant::now(); socks.len()];
    let mut batch = sys::Batch::new();
    let fds: Vec<_> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let mut r = BindingResult::default();
    let mut ready = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        for (i, &fd) in fds.iter().enumerate() {
            if outstanding[i] > 0 && last_answer[i].elapsed() > Duration::from_millis(20) {
                outstanding[i] = 0;
            }
            let room = window - outstanding[i];
            if room > 0 {
                // Every request carries the same transaction id: the server answers each;
                // the generator only counts answers, it does not match them.
                let n = sys::send_copies(fd, &req, room);
                outstanding[i] += n;
                r.sent += n as u64;
                if outstanding[i] == n {
                    last_answer[i] = Instant::now();
                }
            }
        }
        sys::poll_readable(&fds, 2, &mut ready);
        for &i in &ready {
            loop {
                let n = batch.recv(fds[i], false).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let ok = (0..n)
                    .filter(|&k| {
                        let d = batch.datagram(k);
                        d.len() >= 20
                            && split_type(u16::from_be_bytes([d[0], d[1]]))
                                == (method::BINDING, Class::Success)
                    })
                    .count();
                r.answered += ok as u64;
                outstanding[i] = outstanding[i].saturating_sub(n);
                last_answer[i] = Instant::now();
            }
        }
    }
    r.elapsed = start.elapsed();
    r
}
