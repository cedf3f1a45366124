//! Rooms shared by every signaling instance through Redis (`signal.redis_url`).
//!
//! Redis is the source of truth and Lua scripts make every decision that involves more
//! than one connection, atomically: capacity, membership, per-peer seq and resume logs,
//! presence, relay, the shared rate windows, fencing and ghost cleanup (see
//! `lua/prelude.lua` for the keys). A script never sends anything itself: it appends each
//! text to the receiver's log and to the inbox stream of the instance that serves the
//! receiver; each instance reads its inbox in order (`inbox.rs`) and hands texts to its
//! connections (`local.rs`). Order holds because a connection's messages run one after the
//! other (each awaited), a script runs whole, and a stream is read in order.
//!
//! An instance holds a lease in Redis (`lease.rs`); when it lapses (kill -9, a cut network),
//! any instance's sweep puts its peers into their resume grace, and their `peer-left`
//! `timeout` follows when it ends. A resume bumps the peer's epoch: texts and closes for
//! the old connection, and messages from it, are ignored from then on.

mod inbox;
mod lease;
mod local;
mod scripts;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value as Rv;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::hub::{Ended, HubConfig, JoinError, Joined, Outbox, RoomInfo, SessionRecord, Verdict};
use crate::metrics::SignalMetrics;
use crate::protocol::{ClientMessage, CloseCode, LeaveReason, Welcome, error_body, parse_client_message};
use local::Local;

pub use inbox::InboxEntry;
pub use local::seq_of;

/// How to reach the shared rooms (from `[signal]`).
#[derive(Debug, Clone)]
pub struct SharedSettings {
    pub redis_url: String,
    pub key_prefix: String,
    /// A command (or connecting) that takes longer failed.
    pub timeout: Duration,
    /// The instance's lease: without a renewal this long, its peers go into grace.
    pub lease: Duration,
    /// Entries an instance's inbox keeps at most (approximately) while it does not read.
    pub inbox_max: u64,
}

/// Why a shared operation did not happen.
#[derive(Debug)]
pub enum SharedError {
    /// The refusal a single instance would give.
    Join(JoinError),
    /// Redis did not answer (or answered an error): 503.
    Unavailable,
}

impl From<JoinError> for SharedError {
    fn from(e: JoinError) -> Self {
        SharedError::Join(e)
    }
}

/// A connection's report that could not reach Redis: tried again once it answers (else
/// the peer would stay "connected" there while this instance's lease lives).
struct UnreportedEnd {
    room: String,
    peer: String,
    epoch: u64,
    how: &'static str,
}

/// Most unreported ends kept; past it the oldest are forgotten (their peers then stay
/// until this instance's lease lapses, e.g. at its restart).
const MAX_UNREPORTED: usize = 100_000;

/// Reservations of a slot for an upgrade expire after this (an upgrade that never
/// finishes does not hold its slot longer).
const RESERVE_HOLD_MS: u64 = 30_000;

/// This instance's view of the shared rooms.
pub struct SharedRooms {
    cfg: HubConfig,
    settings: SharedSettings,
    /// This process's name in Redis: random per start, so a restarted process never
    /// mistakes the peers of its previous life for its own.
    instance: String,
    client: redis::Client,
    conn: ConnectionManager,
    local: Local,
    metrics: Arc<SignalMetrics>,
    sessions: Option<mpsc::Sender<SessionRecord>>,
    next_conn: AtomicU64,
    /// Set by the lease loop: Redis answered the last self-ping through the inbox.
    ready: Arc<AtomicBool>,
    /// Milliseconds (since `epoch`) when the inbox last saw this instance's own ping.
    inbox_seen_ms: AtomicU64,
    epoch: Instant,
    /// Whether a Redis failure happened since the last reattach.
    lost: AtomicBool,
    /// The generation of Redis's data this instance knows (see `lua/reattach.lua`).
    generation: Mutex<String>,
    unreported: Mutex<Vec<UnreportedEnd>>,
}

impl std::fmt::Debug for SharedRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRooms")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn bytes(v: &Rv) -> String {
    match v {
        Rv::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Rv::SimpleString(s) => s.clone(),
        Rv::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn int(v: &Rv) -> u64 {
    match v {
        Rv::Int(i) => u64::try_from(*i).unwrap_or(0),
        other => bytes(other).parse().unwrap_or(0),
    }
}

fn items(v: Rv) -> Vec<Rv> {
    match v {
        Rv::Array(a) => a,
        other => vec![other],
    }
}

impl SharedRooms {
    /// A link that connects on first use: only a malformed URL is an error here.
    pub fn new(
        cfg: HubConfig,
        settings: SharedSettings,
        metrics: Arc<SignalMetrics>,
        sessions: Option<mpsc::Sender<SessionRecord>>,
        ready: Arc<AtomicBool>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        // No Nagle: every script is a small write whose answer a connection waits for.
        let info = redis::IntoConnectionInfo::into_connection_info(settings.redis_url.as_str())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(usize::MAX);
        let conn = client.get_connection_manager_lazy(config)?;
        ready.store(false, Ordering::Relaxed);
        Ok(Arc::new(Self {
            cfg,
            instance: format!("{:016x}", rand::random::<u64>()),
            settings,
            client,
            conn,
            local: Local::default(),
            metrics,
            sessions,
            next_conn: AtomicU64::new(1),
            ready,
            inbox_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            lost: AtomicBool::new(true),
            generation: Mutex::new(String::new()),
            unreported: Mutex::new(Vec::new()),
        }))
    }

    /// Starts the inbox reader and the lease loop (each restarts itself if it ever ends).
    pub fn start(self: &Arc<Self>) {
        inbox::spawn(Arc::clone(self));
        lease::spawn(Arc::clone(self));
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether joins and resumes can be served now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.key_prefix)
    }

    /// Runs a script with the common arguments, bounded by the timeout.
    async fn run(
        &self,
        script: &redis::Script,
        args: &[&(dyn std::fmt::Display + Sync)],
    ) -> Result<Rv, SharedError> {
        let mut inv = script.prepare_invoke();
        inv.arg(format!("{}:", self.settings.key_prefix))
            .arg(self.cfg.log_messages)
            .arg(self.cfg.log_bytes)
            .arg(self.settings.inbox_max)
            .arg(self.cfg.grace.as_millis() as u64);
        for a in args {
            inv.arg(a.to_string());
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.settings.timeout, inv.invoke_async::<Rv>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Err(SharedError::Unavailable)
            }
            Err(_) => {
                self.failed("timed out");
                Err(SharedError::Unavailable)
            }
        }
    }

    fn failed(&self, why: &str) {
        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
        if !self.lost.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "signaling redis failed; shared rooms unavailable until it answers"
            );
        }
    }

    /// Records the peers a script removed for good.
    fn record(&self, evicted: Rv) {
        let left_unix = callbox_core::time::unix_now();
        for e in items(evicted) {
            let f = items(e);
            if f.len() < 7 {
                continue;
            }
            let Some(tx) = &self.sessions else { continue };
            let reason = match bytes(&f[6]).as_str() {
                "left" => LeaveReason::Left,
                "kicked" => LeaveReason::Kicked,
                "error" => LeaveReason::Error,
                _ => LeaveReason::Timeout,
            };
            let rec = SessionRecord {
                room: bytes(&f[0]),
                peer_id: bytes(&f[1]),
                addr: bytes(&f[2]).parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                joined_unix: int(&f[3]),
                left_unix,
                reason,
                messages_in: int(&f[4]),
                messages_out: int(&f[5]),
            };
            if tx.try_send(rec).is_err() {
                self.metrics
                    .session_events_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The checks a join or resume will make (before the upgrade).
    pub async fn check(&self, room: &str, resume: Option<(&str, u64)>) -> Result<(), SharedError> {
        if !self.is_ready() {
            return Err(SharedError::Unavailable);
        }
        let (token, last_seq) = resume.unwrap_or(("", 0));
        let v = self
            .run(&scripts::CHECK, &[&room, &token, &last_seq, &self.cfg.capacity])
            .await?;
        status(&bytes(&v))
    }

    /// Holds a slot for an upgrade; the id goes to [`SharedRooms::join`] or
    /// [`SharedRooms::unreserve`].
    pub async fn reserve(&self, room: &str) -> Result<String, SharedError> {
        let id = format!("{:032x}", rand::random::<u128>());
        let v = self
            .run(
                &scripts::RESERVE,
                &[&room, &id, &self.cfg.capacity, &RESERVE_HOLD_MS],
            )
            .await?;
        status(&bytes(&v)).map(|()| id)
    }

    pub async fn unreserve(&self, room: &str, id: &str) {
        let _ = self.run(&scripts::UNRESERVE, &[&room, &id]).await;
    }

    /// Joins a reserved slot: `welcome` to the newcomer, `peer-joined` to the others.
    pub async fn join(
        &self,
        room: &str,
        meta: Value,
        addr: IpAddr,
        outbox: Arc<dyn Outbox>,
        (ice, ice_ttl): (&Value, u64),
        reservation: &str,
    ) -> Result<Joined, SharedError> {
        let peer_id = format!("p-{:016x}", rand::random::<u64>());
        let token = format!("{:032x}", rand::random::<u128>());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let meta_text = meta.to_string();
        self.local
            .register(room, &peer_id, conn, Arc::clone(&outbox), addr, meta.clone());
        let res = self
            .run(
                &scripts::JOIN,
                &[
                    &room,
                    &peer_id,
                    &meta_text,
                    &token,
                    &self.instance,
                    &addr.to_string(),
                    &reservation,
                    &self.cfg.capacity,
                ],
            )
            .await;
        let mut f = match res {
            Ok(v) => items(v),
            Err(e) => {
                self.local.remove(room, &peer_id, conn);
                return Err(e);
            }
        };
        if bytes(&f[0]) != "ok" || f.len() < 3 {
            self.local.remove(room, &peer_id, conn);
            return Err(SharedError::Join(JoinError::Full));
        }
        self.record(f.pop().unwrap_or(Rv::Nil));
        let peers = members(f.pop().unwrap_or(Rv::Nil));
        let welcome = Welcome {
            peer_id: &peer_id,
            room,
            peers,
            ice: (ice, ice_ttl),
            resume_token: &token,
            heartbeat_ms: self.cfg.heartbeat_ms,
            resumed: false,
        };
        self.local
            .attach(room, &peer_id, conn, 1, &token, welcome.text(), Vec::new());
        self.refresh_gauges();
        Ok(Joined {
            peer_id,
            conn,
            epoch: 1,
            resumed: false,
        })
    }

    /// Takes over a peer's place through this instance, wherever it was connected.
    #[allow(clippy::too_many_arguments)] // join's arguments plus the token and last_seq
    pub async fn resume(
        &self,
        room: &str,
        token: &str,
        last_seq: u64,
        addr: IpAddr,
        outbox: Arc<dyn Outbox>,
        (ice, ice_ttl): (&Value, u64),
    ) -> Result<Joined, SharedError> {
        // The peer is registered here before the script moves it, so nothing the inbox
        // brings for it in between is lost: its id first.
        let mut conn_mgr = self.conn.clone();
        let named: Option<String> = match tokio::time::timeout(
            self.settings.timeout,
            redis::cmd("GET")
                .arg(self.key(&format!("t:{token}")))
                .query_async(&mut conn_mgr),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                return Err(SharedError::Unavailable);
            }
            Err(_) => {
                self.failed("timed out");
                return Err(SharedError::Unavailable);
            }
        };
        let pid = named
            .as_deref()
            .and_then(|v| v.split_once('\n'))
            .map_or_else(String::new, |(_, p)| p.to_string());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let new_token = format!("{:032x}", rand::random::<u128>());
        if !pid.is_empty() {
            self.local
                .register(room, &pid, conn, Arc::clone(&outbox), addr, json!({}));
        }
        let res = self
            .run(
                &scripts::RESUME,
                &[
                    &room,
                    &token,
                    &last_seq,
                    &self.instance,
                    &new_token,
                    &addr.to_string(),
                ],
            )
            .await;
        let f = match res {
            Ok(v) => items(v),
            Err(e) => {
                self.local.remove(room, &pid, conn);
                return Err(e);
            }
        };
        let st = bytes(&f[0]);
        if st != "ok" || f.len() < 6 || bytes(&f[1]) != pid {
            self.local.remove(room, &pid, conn);
            return Err(match status(&st) {
                Err(e) => e,
                Ok(()) => SharedError::Join(JoinError::ResumeExpired),
            });
        }
        let mut f = f.into_iter();
        let _ = f.next();
        let _ = f.next();
        let epoch = f.next().as_ref().map_or(0, int);
        let backlog: Vec<Arc<str>> = items(f.next().unwrap_or(Rv::Nil))
            .iter()
            .map(|t| Arc::from(bytes(t)))
            .collect();
        let peers = members(f.next().unwrap_or(Rv::Nil));
        let meta: Value = f
            .next()
            .and_then(|m| serde_json::from_str(&bytes(&m)).ok())
            .unwrap_or_else(|| json!({}));
        let welcome = Welcome {
            peer_id: &pid,
            room,
            peers,
            ice: (ice, ice_ttl),
            resume_token: &new_token,
            heartbeat_ms: self.cfg.heartbeat_ms,
            resumed: true,
        };
        self.local
            .attach(room, &pid, conn, epoch, &new_token, welcome.text(), backlog);
        self.local.set_meta(room, &pid, conn, meta);
        self.metrics.resumes.fetch_add(1, Ordering::Relaxed);
        self.refresh_gauges();
        Ok(Joined {
            peer_id: pid,
            conn,
            epoch,
            resumed: true,
        })
    }

    fn refresh_gauges(&self) {
        let (rooms, peers) = self.local.counts();
        self.metrics.rooms.store(rooms as i64, Ordering::Relaxed);
        self.metrics.peers.store(peers as i64, Ordering::Relaxed);
    }

    /// Text frames a connection had ready, in the order sent, in one script; the caller
    /// awaits it before reading on. A frame past the connection's own rate window is not
    /// sent on (its one error per window is); the verdict is the first close any asked.
    #[allow(clippy::too_many_arguments)] // the connection's identity, the frames and its ICE source
    pub async fn messages<T: std::ops::Deref<Target = str>>(
        &self,
        room: &str,
        peer_id: &str,
        conn: u64,
        epoch: u64,
        addr: IpAddr,
        texts: &[T],
        ice: &(dyn Fn() -> (Value, u64) + Send + Sync),
    ) -> Verdict {
        let started = Instant::now();
        let mut ops: Vec<Op> = Vec::with_capacity(texts.len());
        let mut close = None;
        for text in texts {
            let parsed = parse_client_message(text);
            if let Err((streak, warned)) = self.local.hit(
                room,
                peer_id,
                conn,
                Instant::now(),
                self.cfg.window,
                self.cfg.rate_per_connection,
            ) {
                self.metrics.reject("rate-limited");
                if streak >= 3 {
                    close = Some(CloseCode::RateLimited);
                    break;
                }
                if !warned {
                    ops.push(Op::push(rate_limited_body()));
                }
                continue;
            }
            let op = Op::of(parsed, peer_id, ice);
            if op.kind == Some("bad-message") {
                self.metrics.reject("bad-message");
            }
            let leave = op.op == "leave";
            ops.push(op);
            if leave {
                break;
            }
        }
        if ops.is_empty() {
            return close.map_or(Verdict::Continue, Verdict::Close);
        }
        let Ok(statuses) = self.run_ops(room, peer_id, epoch, addr, &ops).await else {
            // Nothing can be relayed without Redis: the messages are dropped and counted.
            for _ in &ops {
                self.metrics.reject("unavailable");
            }
            return close.map_or(Verdict::Continue, Verdict::Close);
        };
        let mut limited = false;
        for (op, status) in ops.iter().zip(&statuses) {
            match status.as_str() {
                "limited" => limited = true,
                "unknown-peer" => self.metrics.reject("unknown-peer"),
                "ok" => {
                    if let Some(kind) = op.kind.filter(|k| *k != "bad-message") {
                        self.metrics.message(kind);
                    }
                    if op.op == "leave" {
                        return Verdict::Close(CloseCode::Left);
                    }
                    if op.op == "to" || op.op == "all" {
                        self.metrics.observe_relay(started.elapsed());
                    }
                }
                // Stale: this connection was replaced (its close is on its way).
                _ => {}
            }
        }
        if limited {
            self.metrics.reject("rate-limited");
            let (streak, warned) = self.local.warn(room, peer_id, conn);
            if streak >= 3 {
                return Verdict::Close(CloseCode::RateLimited);
            }
            if !warned {
                let _ = self
                    .run_ops(room, peer_id, epoch, addr, &[Op::push(rate_limited_body())])
                    .await;
            }
        }
        close.map_or(Verdict::Continue, Verdict::Close)
    }

    /// Runs `ops` of one connection in one script; a status per op handled.
    async fn run_ops(
        &self,
        room: &str,
        peer_id: &str,
        epoch: u64,
        addr: IpAddr,
        ops: &[Op],
    ) -> Result<Vec<String>, SharedError> {
        let unknown = error_body("unknown-peer", "`to` names no other peer in this room");
        let addr_key = callbox_core::limit_key(addr, self.cfg.ipv6_prefix).to_string();
        let window = self.cfg.window.as_millis() as u64;
        let mut args: Vec<&(dyn std::fmt::Display + Sync)> = vec![
            &room,
            &peer_id,
            &epoch,
            &self.instance,
            &unknown,
            &addr_key,
            &window,
            &self.cfg.rate_per_address,
            &self.cfg.rate_per_room,
        ];
        for op in ops {
            args.extend([&op.op as &(dyn std::fmt::Display + Sync), &op.to, &op.body]);
        }
        let mut f = items(self.run(&scripts::MESSAGE, &args).await?);
        self.record(f.pop().unwrap_or(Rv::Nil));
        Ok(items(f.pop().unwrap_or(Rv::Nil)).iter().map(bytes).collect())
    }

    /// A message from the server to one peer, outside the rate windows.
    async fn push(&self, room: &str, peer_id: &str, epoch: u64, body: String) {
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let _ = self
            .run_ops(room, peer_id, epoch, unspecified, &[Op::push(body)])
            .await;
    }

    /// Fresh ICE servers for a peer (the periodic push).
    pub async fn push_ice(&self, room: &str, peer_id: &str, epoch: u64, ice: &Value, ttl: u64) {
        let body = json!({"type": "ice-servers", "ice_servers": ice, "ice_ttl": ttl}).to_string();
        self.push(room, peer_id, epoch, body).await;
    }

    /// A connection ended; it is forgotten here at once, and Redis hears how (later, if it
    /// does not answer now).
    pub async fn ended(&self, room: &str, peer_id: &str, conn: u64, epoch: u64, how: Ended) {
        let attached = self.local.remove(room, peer_id, conn);
        self.refresh_gauges();
        if !attached {
            return;
        }
        let how = match how {
            Ended::Replaced => return,
            Ended::Dropped => "dropped",
            Ended::Left => "left",
            Ended::Error => "error",
            Ended::Kicked => "kicked",
        };
        if !self.report_end(room, peer_id, epoch, how).await {
            let mut q = self.unreported.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_UNREPORTED {
                q.remove(0);
            }
            q.push(UnreportedEnd {
                room: room.to_string(),
                peer: peer_id.to_string(),
                epoch,
                how,
            });
        }
    }

    async fn report_end(&self, room: &str, peer_id: &str, epoch: u64, how: &str) -> bool {
        match self
            .run(&scripts::ENDED, &[&room, &peer_id, &epoch, &self.instance, &how])
            .await
        {
            Ok(v) => {
                let mut f = items(v);
                self.record(f.pop().unwrap_or(Rv::Nil));
                true
            }
            Err(_) => false,
        }
    }

    /// Removes peers wherever they are connected; `peer` empty: the whole room.
    async fn kick(&self, room: &str, peer: &str, close: CloseCode, why: &str) -> usize {
        let close_text = format!("{} {why}", close.code());
        match self
            .run(
                &scripts::KICK,
                &[&room, &peer, &close_text, &LeaveReason::Kicked.as_str()],
            )
            .await
        {
            Ok(v) => {
                let mut f = items(v);
                self.record(f.pop().unwrap_or(Rv::Nil));
                f.first().map_or(0, int) as usize
            }
            Err(_) => 0,
        }
    }

    /// Kicks a peer with 4003 (on whichever instance serves it); whether there was one.
    pub async fn kick_peer(&self, room: &str, peer_id: &str) -> bool {
        self.kick(room, peer_id, CloseCode::Kicked, "kicked by admin")
            .await
            > 0
    }

    /// Closes a room with 4009 everywhere; how many peers were in it.
    pub async fn close_room(&self, room: &str) -> usize {
        self.kick(room, "", CloseCode::RoomClosed, "room closed by admin")
            .await
    }

    /// Kicks the peers connected here whose address `pred` picks (a ban; every instance
    /// sweeps its own).
    pub async fn kick_addresses(&self, pred: impl Fn(IpAddr) -> bool) -> usize {
        let mut n = 0;
        for (room, peer) in self.local.select(pred) {
            n += self.kick(&room, &peer, CloseCode::Kicked, "banned").await;
        }
        n
    }

    /// The rooms served here with their peers here (admin merges instances).
    pub fn rooms(&self, only: Option<&str>) -> Vec<RoomInfo> {
        self.local.rooms(only)
    }

    pub fn counts(&self) -> (usize, usize) {
        self.local.counts()
    }

    pub fn close_all(&self, code: CloseCode, reason: &str) {
        self.local.close_all(code, reason);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One client message as the message script takes it.
struct Op {
    /// self, push, to, all or leave (see `lua/message.lua`).
    op: &'static str,
    to: String,
    body: String,
    /// The message-type label counted when it went through (`bad-message`: rejected).
    kind: Option<&'static str>,
}

impl Op {
    fn push(body: String) -> Op {
        Op {
            op: "push",
            to: String::new(),
            body,
            kind: None,
        }
    }

    /// The op for a parsed (or unparsable) client message from `peer_id`.
    fn of(
        parsed: Result<ClientMessage, String>,
        peer_id: &str,
        ice: &(dyn Fn() -> (Value, u64) + Send + Sync),
    ) -> Op {
        let to_self = |body: String, kind| Op {
            op: "self",
            to: String::new(),
            body,
            kind: Some(kind),
        };
        match parsed {
            Err(msg) => to_self(error_body("bad-message", &msg), "bad-message"),
            Ok(ClientMessage::Ping) => to_self(r#"{"type":"pong"}"#.to_string(), "ping"),
            Ok(ClientMessage::IceServers) => {
                let (list, ttl) = ice();
                let body = json!({"type": "ice-servers", "ice_servers": list, "ice_ttl": ttl}).to_string();
                to_self(body, "ice-servers")
            }
            Ok(ClientMessage::Leave) => Op {
                op: "leave",
                to: String::new(),
                body: String::new(),
                kind: Some("leave"),
            },
            Ok(ClientMessage::Relay { kind, to, mut object }) => {
                object.insert("from".into(), Value::String(peer_id.to_string()));
                let body = Value::Object(object).to_string();
                let (op, to) = match to {
                    Some(to) => ("to", to),
                    None => ("all", String::new()),
                };
                Op {
                    op,
                    to,
                    body,
                    kind: Some(kind),
                }
            }
        }
    }
}

/// The one error per window a rate-limited connection gets.
fn rate_limited_body() -> String {
    error_body("rate-limited", "too many messages; this one was dropped")
}

/// A script's status word as the refusal a single instance would give.
fn status(s: &str) -> Result<(), SharedError> {
    match s {
        "ok" => Ok(()),
        "full" => Err(JoinError::Full.into()),
        "gap" => Err(JoinError::ResumeGap.into()),
        "bad" => Err(JoinError::BadResume.into()),
        "expired" => Err(JoinError::ResumeExpired.into()),
        _ => Err(SharedError::Unavailable),
    }
}

/// `peer, meta, peer, meta...` (HGETALL) as welcome's `peers`.
fn members(v: Rv) -> Vec<Value> {
    items(v)
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| {
            let meta: Value = serde_json::from_str(&bytes(&c[1])).unwrap_or_else(|_| json!({}));
            json!({"peer_id": bytes(&c[0]), "meta": meta})
        })
        .collect()
}
