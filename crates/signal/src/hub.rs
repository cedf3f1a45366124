//! Rooms, peers, presence, relay, resume logs and rate limits: the signaling state machine.
//!
//! No sockets here. A connection is represented by an [`Outbox`] the hub pushes text to
//! (and asks to close); the connection task feeds frames in and reports how it ended.
//! Rooms are spread over shards by the hash of their id; everything a message touches
//! lives in its room's shard, so one lock is taken per message and rooms on other shards
//! never wait.
//!
//! Admin reaches in through [`Hub::rooms`], [`Hub::kick_peer`], [`Hub::kick_addresses`] and
//! [`Hub::close_room`]; every peer that leaves for good (not into its resume grace) becomes
//! a [`SessionRecord`] on the optional channel given by [`Hub::with_session_events`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::RefusalCode;
use crate::metrics::SignalMetrics;
use crate::protocol::{ClientMessage, CloseCode, LeaveReason, Welcome, error_body, parse_client_message};
use crate::rate::{AddrRate, Window};
use addresses::AddrEntry;

/// Where the hub sends a connection's messages.
pub trait Outbox: Send + Sync {
    /// Queues a text frame; `false` when the reader is too slow (over its send buffer).
    fn send(&self, text: Arc<str>) -> bool;
    /// Asks the connection to close with `code` (the connection reports back when it did).
    fn close(&self, code: CloseCode, reason: &str);
}

/// Limits and timings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub capacity: usize,
    pub grace: Duration,
    pub log_messages: usize,
    pub log_bytes: usize,
    pub rate_per_connection: u32,
    pub rate_per_address: u32,
    pub rate_per_room: u32,
    pub window: Duration,
    pub heartbeat_ms: u64,
    /// IPv6 addresses count under this prefix for the per-address limits.
    pub ipv6_prefix: u8,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            capacity: 8,
            grace: Duration::from_secs(30),
            log_messages: 256,
            log_bytes: 1 << 20,
            rate_per_connection: 500,
            rate_per_address: 2000,
            rate_per_room: 2000,
            window: Duration::from_secs(10),
            ipv6_prefix: callbox_core::limit_key::DEFAULT_IPV6_PREFIX,
            heartbeat_ms: 15_000,
        }
    }
}

/// Why a join or resume is refused (answered before the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    Full,
    ResumeExpired,
    ResumeGap,
    BadResume,
}

impl JoinError {
    /// The refusal's stable code (and with it the HTTP status).
    pub fn code(self) -> RefusalCode {
        match self {
            JoinError::Full => RefusalCode::RoomFull,
            JoinError::ResumeExpired => RefusalCode::ResumeExpired,
            JoinError::ResumeGap => RefusalCode::ResumeGap,
            JoinError::BadResume => RefusalCode::BadResume,
        }
    }

    /// What the refusal tells the client.
    pub fn message(self) -> &'static str {
        match self {
            JoinError::Full => "the room is full",
            JoinError::ResumeExpired => "the resume token is unknown, used or past its grace",
            JoinError::ResumeGap => "messages since last_seq are no longer kept; join afresh",
            JoinError::BadResume => "last_seq is above the last seq sent",
        }
    }
}

/// How a connection ended, as its task reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `leave`, or a close frame 1000/1001 from the client: no resume.
    Left,
    /// Lost without a close: the peer keeps its place for the grace period.
    Dropped,
    /// Closed by the server for 1003, 1009, 4013 or 4029.
    Error,
    /// Replaced by a resumed connection (4000): nothing to do.
    Replaced,
    /// Kicked by admin (4003) or room closed (4009).
    Kicked,
}

/// What the connection does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Close with this code (1000 after `leave`, 4029 for repeated rate limit abuse).
    Close(CloseCode),
}

/// A joined (or resumed) connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub peer_id: String,
    pub conn: u64,
    /// The peer's epoch in the shared rooms (bumped by each resume); 0 on one instance.
    pub epoch: u64,
    pub resumed: bool,
}

struct LogEntry {
    seq: u64,
    text: Arc<str>,
}

struct Peer {
    id: String,
    meta: Value,
    conn: u64,
    /// Client address of the current (or last) connection: bans and admin listings.
    addr: IpAddr,
    joined_unix: u64,
    /// Plain counters: they change under the shard lock the message takes anyway.
    messages_in: u64,
    messages_out: u64,
    outbox: Option<Arc<dyn Outbox>>,
    addr_rate: Arc<AddrRate>,
    /// Last seq sent to this peer.
    seq: u64,
    log: VecDeque<LogEntry>,
    log_bytes: usize,
    /// Set when the log had to drop an entry: resumes from before it fail with a gap.
    first_kept: u64,
    resume_token: String,
    grace_until: Option<Instant>,
    /// The log dropped an entry while the peer was away: its grace ends at once.
    overflowed: bool,
    rate: Window,
}

struct Room {
    peers: Vec<Peer>,
    /// Slots held by upgrades in progress.
    reserved: usize,
    rate: Window,
}

#[derive(Default)]
struct Shard {
    rooms: HashMap<String, Room>,
    /// Resume token -> (room, peer id).
    tokens: HashMap<String, (String, String)>,
    /// Tokens of peers whose grace ended because their log overflowed -> (room, when the
    /// grace would have ended): until then a resume with one is told `resume-gap` (it can
    /// no longer be served in full), not `resume-expired`. Bounded by [`MAX_GAP_TOKENS`].
    gaps: HashMap<String, (String, Instant)>,
}

/// Overflowed-grace tokens remembered per shard; past it, such a resume is answered
/// `resume-expired` (still a refusal that makes the client join afresh).
const MAX_GAP_TOKENS: usize = 4096;

/// The signaling state of this process.
pub struct Hub {
    cfg: HubConfig,
    shards: Vec<Mutex<Shard>>,
    addrs: Mutex<HashMap<IpAddr, AddrEntry>>,
    epoch: Instant,
    next_conn: AtomicU64,
    random: Box<dyn Fn() -> u128 + Send + Sync>,
    pub metrics: Arc<SignalMetrics>,
    /// Finished sessions, for the admin's history; `try_send`, drops counted.
    sessions: Option<mpsc::Sender<SessionRecord>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("cfg", &self.cfg).finish()
    }
}

const SHARDS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `{"seq":N,` + the rest of `body` (which starts with `{`).
fn with_seq(seq: u64, body: &str) -> Arc<str> {
    let rest = &body[1..];
    let sep = if rest.starts_with('}') { "" } else { "," };
    Arc::from(format!("{{\"seq\":{seq}{sep}{rest}"))
}

impl Hub {
    /// `random` yields unpredictable numbers for peer ids and resume tokens.
    pub fn new(
        cfg: HubConfig,
        metrics: Arc<SignalMetrics>,
        random: Box<dyn Fn() -> u128 + Send + Sync>,
    ) -> Self {
        Self {
            cfg,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            addrs: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            next_conn: AtomicU64::new(1),
            random,
            metrics,
            sessions: None,
        }
    }

    /// Sends a [`SessionRecord`] on `tx` whenever a peer leaves for good. The hub never
    /// waits on it: a full or closed channel loses the record and counts it in
    /// `callbox_signal_session_events_dropped_total`, so a stalled history writer cannot
    /// stall signaling.
    pub fn with_session_events(mut self, tx: mpsc::Sender<SessionRecord>) -> Self {
        self.sessions = Some(tx);
        self
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn shard(&self, room: &str) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// The key `addr` is counted under: an IPv6 address by its prefix.
    /// The checks a join or resume will make, without changing anything (for
    /// `/v1/signal/validate` and the pre-upgrade refusal).
    pub fn check(&self, room: &str, resume: Option<(&str, u64)>, now: Instant) -> Result<(), JoinError> {
        let shard = lock(self.shard(room));
        match resume {
            Some((token, last_seq)) => Self::check_resume(&shard, room, token, last_seq, now).map(|_| ()),
            None => match shard.rooms.get(room) {
                Some(r) if r.peers.len() + r.reserved >= self.cfg.capacity => Err(JoinError::Full),
                _ => Ok(()),
            },
        }
    }

    fn check_resume<'s>(
        shard: &'s Shard,
        room: &str,
        token: &str,
        last_seq: u64,
        now: Instant,
    ) -> Result<&'s Peer, JoinError> {
        let Some((troom, pid)) = shard.tokens.get(token) else {
            return match shard.gaps.get(token) {
                Some((groom, until)) if groom == room && *until > now => Err(JoinError::ResumeGap),
                _ => Err(JoinError::ResumeExpired),
            };
        };
        if troom != room {
            return Err(JoinError::ResumeExpired);
        }
        let peer = shard
            .rooms
            .get(room)
            .and_then(|r| r.peers.iter().find(|p| &p.id == pid))
            .ok_or(JoinError::ResumeExpired)?;
        if peer.grace_until.is_some_and(|g| g <= now) {
            return Err(JoinError::ResumeExpired);
        }
        if last_seq > peer.seq {
            return Err(JoinError::BadResume);
        }
        if last_seq + 1 < peer.first_kept {
            return Err(JoinError::ResumeGap);
        }
        Ok(peer)
    }

    /// Holds a slot in `room` for an upgrade in progress; release with [`Hub::unreserve`]
    /// unless [`Hub::join`] consumed it.
    pub fn reserve(&self, room: &str) -> Result<(), JoinError> {
        let mut shard = lock(self.shard(room));
        let r = shard.rooms.entry(room.to_string()).or_insert_with(|| Room {
            peers: Vec::new(),
            reserved: 0,
            rate: Window::default(),
        });
        if r.peers.len() + r.reserved >= self.cfg.capacity {
            if r.peers.is_empty() && r.reserved == 0 {
                shard.rooms.remove(room);
            }
            return Err(JoinError::Full);
        }
        r.reserved += 1;
        Ok(())
    }

    pub fn unreserve(&self, room: &str) {
        let mut shard = lock(self.shard(room));
        if let Some(r) = shard.rooms.get_mut(room) {
            r.reserved = r.reserved.saturating_sub(1);
            // A room with no peers was never counted in the rooms gauge.
            if r.peers.is_empty() && r.reserved == 0 {
                shard.rooms.remove(room);
            }
        }
    }

    fn new_token(&self) -> String {
        format!("{:032x}", (self.random)())
    }

    /// Joins a reserved slot: sends `welcome` to the newcomer and `peer-joined` to the others.
    pub fn join(
        &self,
        room: &str,
        meta: Value,
        addr: IpAddr,
        outbox: Arc<dyn Outbox>,
        (ice, ice_ttl): (&Value, u64),
    ) -> Joined {
        let addr_rate = lock(&self.addrs)
            .get(&self.addr_key(addr))
            .map_or_else(|| Arc::new(AddrRate::default()), |e| Arc::clone(&e.rate));
        let mut shard = lock(self.shard(room));
        let shard = &mut *shard;
        let peer_id = format!("p-{:016x}", (self.random)() as u64);
        let token = self.new_token();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let r = shard.rooms.entry(room.to_string()).or_insert_with(|| Room {
            peers: Vec::new(),
            reserved: 1,
            rate: Window::default(),
        });
        if r.peers.is_empty() {
            self.metrics.rooms.fetch_add(1, Ordering::Relaxed);
        }
        r.reserved = r.reserved.saturating_sub(1);
        let peers: Vec<Value> = r
            .peers
            .iter()
            .map(|p| json!({"peer_id": p.id, "meta": p.meta}))
            .collect();
        let welcome = Welcome {
            peer_id: &peer_id,
            room,
            peers,
            ice: (ice, ice_ttl),
            resume_token: &token,
            heartbeat_ms: self.cfg.heartbeat_ms,
            resumed: false,
        };
        outbox.send(welcome.text());
        let joined_body = json!({"type": "peer-joined", "peer_id": peer_id, "meta": meta}).to_string();
        for p in r.peers.iter_mut() {
            Self::deliver(&self.cfg, p, &joined_body);
        }
        // Exactly one more: a room of two would otherwise hold room for four peers (a
        // `Peer` is a few hundred bytes), on every idle connection.
        r.peers.reserve_exact(1);
        r.peers.push(Peer {
            id: peer_id.clone(),
            meta,
            conn,
            addr,
            joined_unix: callbox_core::time::unix_now(),
            messages_in: 0,
            messages_out: 0,
            outbox: Some(outbox),
            addr_rate,
            seq: 0,
            log: VecDeque::new(),
            log_bytes: 0,
            first_kept: 1,
            resume_token: token.clone(),
            grace_until: None,
            overflowed: false,
            rate: Window::default(),
        });
        shard.tokens.insert(token, (room.to_string(), peer_id.clone()));
        self.metrics.peers.fetch_add(1, Ordering::Relaxed);
        self.end_overflowed_graces(shard, room);
        Joined {
            peer_id,
            conn,
            epoch: 0,
            resumed: false,
        }
    }

    /// Takes over a peer's place with a new connection from `addr`: `welcome` with
    /// `resumed: true`, then every logged message after `last_seq`. The address may differ
    /// from the one the peer joined from (a phone changing networks); bans and the address
    /// rate window follow the new one.
    #[allow(clippy::too_many_arguments)] // join's arguments plus the token and last_seq
    pub fn resume(
        &self,
        room: &str,
        token: &str,
        last_seq: u64,
        addr: IpAddr,
        outbox: Arc<dyn Outbox>,
        (ice, ice_ttl): (&Value, u64),
        now: Instant,
    ) -> Result<Joined, JoinError> {
        let addr_rate = lock(&self.addrs)
            .get(&self.addr_key(addr))
            .map_or_else(|| Arc::new(AddrRate::default()), |e| Arc::clone(&e.rate));
        let mut shard = lock(self.shard(room));
        let shard = &mut *shard;
        Self::check_resume(shard, room, token, last_seq, now)?;
        let (_, pid) = shard.tokens.remove(token).expect("checked");
        let new_token = self.new_token();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let r = shard.rooms.get_mut(room).expect("checked");
        let others: Vec<Value> = r
            .peers
            .iter()
            .filter(|p| p.id != pid)
            .map(|p| json!({"peer_id": p.id, "meta": p.meta}))
            .collect();
        let peer = r.peers.iter_mut().find(|p| p.id == pid).expect("checked");
        if let Some(old) = peer.outbox.take() {
            old.close(CloseCode::Replaced, "replaced by a resumed connection");
        }
        let welcome = Welcome {
            peer_id: &pid,
            room,
            peers: others,
            ice: (ice, ice_ttl),
            resume_token: &new_token,
            heartbeat_ms: self.cfg.heartbeat_ms,
            resumed: true,
        };
        outbox.send(welcome.text());
        for e in peer.log.iter().filter(|e| e.seq > last_seq) {
            outbox.send(Arc::clone(&e.text));
        }
        peer.outbox = Some(outbox);
        peer.conn = conn;
        peer.addr = addr;
        peer.addr_rate = addr_rate;
        peer.grace_until = None;
        peer.overflowed = false;
        peer.resume_token = new_token.clone();
        shard.tokens.insert(new_token, (room.to_string(), pid.clone()));
        self.metrics.resumes.fetch_add(1, Ordering::Relaxed);
        Ok(Joined {
            peer_id: pid,
            conn,
            epoch: 0,
            resumed: true,
        })
    }

    /// Appends a message (with the peer's next seq) to its log and sends it if connected.
    fn deliver(cfg: &HubConfig, p: &mut Peer, body: &str) {
        p.seq += 1;
        p.messages_out += 1;
        let text = with_seq(p.seq, body);
        p.log_bytes += text.len();
        p.log.push_back(LogEntry {
            seq: p.seq,
            text: Arc::clone(&text),
        });
        while p.log.len() > cfg.log_messages || p.log_bytes > cfg.log_bytes {
            let Some(old) = p.log.pop_front() else { break };
            p.log_bytes -= old.text.len();
            p.first_kept = old.seq + 1;
            if p.outbox.is_none() {
                p.overflowed = true;
            }
        }
        if let Some(o) = &p.outbox
            && !o.send(text)
        {
            o.close(CloseCode::TooSlow, "too slow to read");
        }
    }

    /// Ends at once the grace of peers whose log overflowed while they were away.
    fn end_overflowed_graces(&self, shard: &mut Shard, room: &str) {
        if let Some(r) = shard.rooms.get(room) {
            for p in r.peers.iter().filter(|p| p.outbox.is_none() && p.overflowed) {
                if let Some(until) = p.grace_until
                    && shard.gaps.len() < MAX_GAP_TOKENS
                {
                    shard
                        .gaps
                        .insert(p.resume_token.clone(), (room.to_string(), until));
                }
            }
        }
        self.evict(
            shard,
            room,
            |p| p.outbox.is_none() && p.overflowed,
            None,
            LeaveReason::Timeout,
        );
    }

    fn remove_peer(&self, shard: &mut Shard, room: &str, peer_id: &str, reason: LeaveReason) {
        self.evict(shard, room, |p| p.id == peer_id, None, reason);
    }

    /// Removes for good the peers of `room` that `which` selects, and returns how many.
    ///
    /// Every way out of a room goes through here, so the gauges, the resume tokens and the
    /// session records stay right whatever the reason: a live connection is asked to close
    /// with `close` (its later report finds nothing left to remove), its token dies with it
    /// (so a kicked peer cannot resume), and the peers that stay get one `peer-left` per
    /// removed peer. Removing them all before telling anyone means peers removed together
    /// (a closed room, a banned network) are not told about each other.
    fn evict(
        &self,
        shard: &mut Shard,
        room: &str,
        which: impl Fn(&Peer) -> bool,
        close: Option<(CloseCode, &str)>,
        reason: LeaveReason,
    ) -> usize {
        let Some(r) = shard.rooms.get_mut(room) else {
            return 0;
        };
        let mut gone = Vec::new();
        let mut i = 0;
        while i < r.peers.len() {
            if which(&r.peers[i]) {
                gone.push(r.peers.remove(i));
            } else {
                i += 1;
            }
        }
        if gone.is_empty() {
            return 0;
        }
        for p in &gone {
            if let (Some(o), Some((code, why))) = (&p.outbox, close) {
                o.close(code, why);
            }
            shard.tokens.remove(&p.resume_token);
            let body = json!({"type": "peer-left", "peer_id": p.id, "reason": reason.as_str()}).to_string();
            for other in r.peers.iter_mut() {
                Self::deliver(&self.cfg, other, &body);
            }
        }
        self.metrics.peers.fetch_sub(gone.len() as i64, Ordering::Relaxed);
        if r.peers.is_empty() {
            self.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
            // An upgrade in progress still holds its slot; the room goes with the last one.
            if r.reserved == 0 {
                shard.rooms.remove(room);
            }
        }
        let n = gone.len();
        let left_unix = callbox_core::time::unix_now();
        for p in gone {
            self.record(room, p, left_unix, reason);
        }
        // A peer-left may have overflowed the log of a peer that is away.
        self.end_overflowed_graces(shard, room);
        n
    }

    /// Queues the session record of a removed peer, never waiting.
    fn record(&self, room: &str, p: Peer, left_unix: u64, reason: LeaveReason) {
        let Some(tx) = &self.sessions else { return };
        let rec = SessionRecord {
            room: room.to_string(),
            peer_id: p.id,
            addr: p.addr,
            joined_unix: p.joined_unix,
            left_unix,
            reason,
            messages_in: p.messages_in,
            messages_out: p.messages_out,
        };
        if tx.try_send(rec).is_err() {
            self.metrics
                .session_events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The connection `conn` of `peer_id` ended.
    ///
    /// A peer the hub removed itself (kick, room close, ban, `leave`) is gone by the time
    /// its connection reports, so nothing happens twice.
    pub fn ended(&self, room: &str, peer_id: &str, conn: u64, how: Ended, now: Instant) {
        let mut shard = lock(self.shard(room));
        let shard = &mut *shard;
        let Some(p) = shard
            .rooms
            .get_mut(room)
            .and_then(|r| r.peers.iter_mut().find(|p| p.id == peer_id))
        else {
            return;
        };
        if p.conn != conn {
            // An older connection of a peer that resumed since: nothing to do.
            return;
        }
        match how {
            Ended::Replaced => {}
            Ended::Dropped => {
                p.outbox = None;
                p.grace_until = Some(now + self.cfg.grace);
            }
            Ended::Left => self.remove_peer(shard, room, peer_id, LeaveReason::Left),
            Ended::Error => self.remove_peer(shard, room, peer_id, LeaveReason::Error),
            Ended::Kicked => self.remove_peer(shard, room, peer_id, LeaveReason::Kicked),
        }
    }

    /// Ends expired graces (`peer-left` with `timeout`). Call about once a second.
    pub fn tick(&self, now: Instant) {
        self.evict_everywhere(
            |p| p.grace_until.is_some_and(|g| g <= now),
            None,
            LeaveReason::Timeout,
        );
        for s in &self.shards {
            lock(s).gaps.retain(|_, (_, until)| *until > now);
        }
    }

    /// Evicts, shard by shard, every peer `select` picks, in every room; returns how many.
    fn evict_everywhere(
        &self,
        select: impl Fn(&Peer) -> bool,
        close: Option<(CloseCode, &str)>,
        reason: LeaveReason,
    ) -> usize {
        let mut n = 0;
        for s in &self.shards {
            let mut shard = lock(s);
            let shard = &mut *shard;
            let rooms: Vec<String> = shard
                .rooms
                .iter()
                .filter(|(_, r)| r.peers.iter().any(&select))
                .map(|(room, _)| room.clone())
                .collect();
            for room in rooms {
                n += self.evict(shard, &room, &select, close, reason);
            }
        }
        n
    }

    /// Sends fresh ICE servers to a peer (periodic push and answer to `ice-servers`).
    pub fn push_ice(&self, room: &str, peer_id: &str, conn: u64, ice: &Value, ttl: u64) {
        let body = json!({"type": "ice-servers", "ice_servers": ice, "ice_ttl": ttl}).to_string();
        self.to_peer(room, peer_id, conn, &body);
    }

    fn to_peer(&self, room: &str, peer_id: &str, conn: u64, body: &str) {
        let mut shard = lock(self.shard(room));
        if let Some(p) = shard
            .rooms
            .get_mut(room)
            .and_then(|r| r.peers.iter_mut().find(|p| p.id == peer_id && p.conn == conn))
        {
            Self::deliver(&self.cfg, p, body);
        }
    }

    /// Handles one text frame from `peer_id` on connection `conn`. `ice` is called when
    /// the peer asks for fresh ICE servers.
    pub fn message(
        &self,
        room: &str,
        peer_id: &str,
        conn: u64,
        text: &str,
        now: Instant,
        ice: &dyn Fn() -> (Value, u64),
    ) -> Verdict {
        let started = Instant::now();
        // Parsed before the lock: JSON of up to the message limit is the costly part, and
        // other rooms of the shard need not wait for it.
        let parsed = parse_client_message(text);
        let mut shard = lock(self.shard(room));
        let shard = &mut *shard;
        let Some(r) = shard.rooms.get_mut(room) else {
            return Verdict::Continue;
        };
        let room_ok = r.rate.hit(now, self.cfg.window, self.cfg.rate_per_room);
        let Some(pi) = r.peers.iter().position(|p| p.id == peer_id && p.conn == conn) else {
            return Verdict::Continue;
        };
        r.peers[pi].messages_in += 1;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let addr_ok = r.peers[pi].addr_rate.hit(
            now_ms,
            self.cfg.window.as_millis() as u64,
            self.cfg.rate_per_address,
        );
        let conn_ok = r.peers[pi]
            .rate
            .hit(now, self.cfg.window, self.cfg.rate_per_connection);
        if !(conn_ok && addr_ok && room_ok) {
            self.metrics.reject("rate-limited");
            let p = &mut r.peers[pi];
            if p.rate.streak >= 3 {
                return Verdict::Close(CloseCode::RateLimited);
            }
            // One error per window, whichever limit dropped the message.
            let warned = std::mem::replace(&mut p.rate.warned, true);
            if !warned {
                Self::deliver(
                    &self.cfg,
                    p,
                    &error_body("rate-limited", "too many messages; this one was dropped"),
                );
            }
            return Verdict::Continue;
        }
        let parsed = match parsed {
            Ok(m) => m,
            Err(msg) => {
                self.metrics.reject("bad-message");
                Self::deliver(&self.cfg, &mut r.peers[pi], &error_body("bad-message", &msg));
                return Verdict::Continue;
            }
        };
        match parsed {
            ClientMessage::Ping => {
                self.metrics.message("ping");
                Self::deliver(&self.cfg, &mut r.peers[pi], r#"{"type":"pong"}"#);
                Verdict::Continue
            }
            ClientMessage::IceServers => {
                self.metrics.message("ice-servers");
                let (list, ttl) = ice();
                let body = json!({"type": "ice-servers", "ice_servers": list, "ice_ttl": ttl}).to_string();
                Self::deliver(&self.cfg, &mut r.peers[pi], &body);
                Verdict::Continue
            }
            ClientMessage::Leave => {
                self.metrics.message("leave");
                self.remove_peer(shard, room, peer_id, LeaveReason::Left);
                Verdict::Close(CloseCode::Left)
            }
            ClientMessage::Relay { kind, to, mut object } => {
                let to_idx = match &to {
                    Some(id) => match r.peers.iter().position(|p| &p.id == id) {
                        Some(i) if i != pi => Some(i),
                        _ => {
                            self.metrics.reject("unknown-peer");
                            Self::deliver(
                                &self.cfg,
                                &mut r.peers[pi],
                                &error_body("unknown-peer", "`to` names no other peer in this room"),
                            );
                            return Verdict::Continue;
                        }
                    },
                    None => None,
                };
                object.insert("from".into(), Value::String(peer_id.to_string()));
                let body = Value::Object(object).to_string();
                match to_idx {
                    Some(i) => Self::deliver(&self.cfg, &mut r.peers[i], &body),
                    None => {
                        for (i, p) in r.peers.iter_mut().enumerate() {
                            if i != pi {
                                Self::deliver(&self.cfg, p, &body);
                            }
                        }
                    }
                }
                self.metrics.message(kind);
                self.metrics.observe_relay(started.elapsed());
                self.end_overflowed_graces(shard, room);
                Verdict::Continue
            }
        }
    }
}

mod addresses;
mod admin;
#[cfg(test)]
mod tests;

pub use admin::{PeerInfo, RoomInfo, SessionRecord};
