//! The TURN server state machine (RFC 8656 over RFC 8489).
//!
//! One `Server` owns a shard of the allocations: the driver runs one per data path thread,
//! and the kernel's SO_REUSEPORT hashing keeps each client 5-tuple on one shard. Shards
//! share only [`Quotas`] (touched when allocations are made and freed), the credentials
//! snapshot and the peer policy.
//!
//! Packet path: [`Server::handle_client_packet`] and [`Server::handle_peer_packet`]
//! allocate nothing for ChannelData, Send and Data indications: payloads are borrowed from
//! the caller's receive buffer, and Data indications and ChannelData headers are written
//! in front of the payload in that buffer.
//!
//! Architecture invariant: nothing is stored for a request that has not passed
//! MESSAGE-INTEGRITY; unauthenticated input only ever gets a reply.
//!
//! Admin hooks: [`Credentials::banned`] refuses Allocates from client networks (403, before
//! authentication), [`Server::kick_clients`], [`Server::kick_user`] and [`Server::kick`]
//! close live allocations, and [`Server::allocations`] lists them. None of them touches
//! the packet path: a banned client's existing allocations are closed by a kick, not by a
//! check per packet.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callbox_core::credentials::{LongTermKey, RestUsername, SecretSet};
use callbox_core::policy::{Cidr, Denial, Peer, PeerPolicy};

use crate::nonce::{NonceCheck, NonceMaker};
use crate::relay_ports::RelayPorts;
use crate::source_limit::SourceLimiter;
use crate::stun::{self, Class, Message, MessageBuilder, TransactionId, attr, method, parse_channel_data};

/// Headroom the driver must leave in front of a peer payload so the server can write a
/// Data indication (or ChannelData) header in place: IPv6 Data indication head.
pub const PEER_HEADROOM: usize = stun::HEADER_LEN + 4 + 20 + 4;
/// Room the driver must leave after a peer payload for the Data indication's padding.
pub const PEER_TAILROOM: usize = 3;

const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const MAX_PERMISSIONS: usize = 128;
const MAX_CHANNELS: usize = 128;
/// How long a port reserved by EVEN-PORT's R bit is kept by default (RFC 8656 suggests
/// 30 s); the driver keeps reservations and expires them.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const UDP: u8 = 17;

/// An allocation's identity, unique across the shards of one process.
///
/// The high 16 bits are the shard that made it ([`ServerConfig::shard`]), which the driver
/// uses to find the worker that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId(pub u64);

impl AllocId {
    /// The shard (worker index) that made and owns this allocation.
    pub fn shard(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

/// The address family of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Where relay sockets of one family bind, and what clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    pub bind: IpAddr,
    pub advertise: IpAddr,
}

/// Static settings of a server shard.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub software: Option<String>,
    pub relay_v4: Option<RelayIp>,
    pub relay_v6: Option<RelayIp>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_allocation_age: Duration,
    pub nonce_lifetime: Duration,
    /// Bytes per second per allocation and direction; 0 = unlimited.
    pub bandwidth_limit: u64,
    /// A REST username whose expiry lies further than this beyond now was not minted
    /// by any mint of ours (`auth.max_credential_ttl` plus the clock skew): 401.
    pub max_credential_expiry: Duration,
    /// Answers per second per source to requests from 5-tuples without an allocation;
    /// 0 = unlimited.
    pub unauthenticated_rate: u32,
    pub unauthenticated_burst: u32,
    /// IPv6 sources count under this prefix for per-source limits.
    pub ipv6_prefix_len: u8,
    /// High bits of allocation ids made by this shard.
    pub shard: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            realm: "callbox".into(),
            // Off by default: 17 bytes on every answer make reflection worth more.
            software: None,
            relay_v4: None,
            relay_v6: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocation_age: Duration::from_secs(86_400),
            nonce_lifetime: Duration::from_secs(600),
            bandwidth_limit: 0,
            max_credential_expiry: Duration::from_secs(7 * 86_400 + 300),
            unauthenticated_rate: 50,
            unauthenticated_burst: 200,
            ipv6_prefix_len: 64,
            shard: 0,
        }
    }
}

/// Who may authenticate: REST secrets and static users, and which client networks may not
/// allocate at all. Swapped whole when it changes.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub secrets: Option<SecretSet>,
    /// Static users by name, with their long-term key for this realm.
    pub static_users: HashMap<String, LongTermKey>,
    /// Client networks whose Allocates are answered 403 Forbidden, before authentication
    /// (so a banned client costs no HMAC). Matched with [`Cidr::contains`], which judges an
    /// IPv4-mapped client address as its IPv4 address. Scanned once per Allocate, never
    /// per packet: live allocations of a newly banned network are closed with
    /// [`Server::kick_clients`].
    pub banned: Vec<Cidr>,
}

/// Allocation counts shared by every shard.
#[derive(Debug)]
pub struct Quotas {
    total: AtomicU32,
    max_total: u32,
    max_per_user: u32,
    per_user: Mutex<HashMap<String, u32>>,
}

/// Why an allocation was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    User,
    Total,
}

impl Quotas {
    pub fn new(max_total: u32, max_per_user: u32) -> Self {
        Self {
            total: AtomicU32::new(0),
            max_total,
            max_per_user,
            per_user: Mutex::new(HashMap::new()),
        }
    }

    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one allocation (or reservation) of `user`.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_user.get(user).copied().unwrap_or(0);
        if n >= self.max_per_user {
            return Err(QuotaError::User);
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < self.max_total).then_some(t + 1)
            })
            .is_err()
        {
            return Err(QuotaError::Total);
        }
        per_user.insert(user.to_string(), n + 1);
        Ok(())
    }

    /// Gives back what [`Quotas::acquire`] counted.
    pub fn release(&self, user: &str) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live allocation as the operator sees it ([`Server::allocations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationInfo {
    pub id: AllocId,
    /// The USERNAME it authenticated with.
    pub username: String,
    /// The quota key: the REST user id part, or the static user's name.
    pub user: String,
    pub client: SocketAddr,
    /// The advertised relay address.
    pub relay: SocketAddr,
    pub age: Duration,
    pub expires_in: Duration,
    /// Peer addresses with an unexpired permission.
    pub permissions: Vec<IpAddr>,
    /// Unexpired channel bindings: number and peer.
    pub channels: Vec<(u16, SocketAddr)>,
    pub traffic: Traffic,
}

/// Traffic counters of one allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Refresh with LIFETIME 0.
    Deleted,
    Expired,
    /// Closed by the operator or a ban.
    Kicked,
    Shutdown,
}

/// What happened to allocations, for history and live views (admin stores these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created {
        id: AllocId,
        username: String,
        client: SocketAddr,
        relay: SocketAddr,
        lifetime: Duration,
    },
    Refreshed {
        id: AllocId,
        lifetime: Duration,
    },
    Closed {
        id: AllocId,
        reason: CloseReason,
        traffic: Traffic,
    },
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind a UDP socket on `ip` with a port from the relay range (even when asked), then
    /// call [`Server::relay_bound`].
    BindRelay {
        id: AllocId,
        ip: IpAddr,
        even_port: bool,
        /// EVEN-PORT with the R bit: also bind the next port, keep it for the reservation
        /// lifetime under a token, and answer with [`Server::relay_bound_reserved`]. The
        /// reservation holds one unit of this user's quota (already counted): the driver
        /// gives it back with [`Quotas::release`] when the reservation is taken or
        /// expires, and the server does when no token is made.
        reserve_for: Option<String>,
    },
    /// Take the socket reserved under `token` (by any shard) for allocation `id`, then call
    /// [`Server::relay_bound`] (`Err` when the token is unknown or expired).
    TakeReservation { id: AllocId, token: [u8; 8] },
    /// Close the relay socket of `id`.
    CloseRelay { id: AllocId },
    /// Send `bytes` to a client (replies that are produced outside a packet call).
    SendToClient { to: SocketAddr, bytes: Vec<u8> },
}

/// What the driver does with a client packet.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction<'a> {
    /// Nothing to send.
    None,
    /// Send the reply buffer back to the source.
    Reply,
    /// Send `payload` from the relay socket of `id` to `peer`.
    Relay {
        id: AllocId,
        peer: SocketAddr,
        payload: &'a [u8],
    },
}

/// What the driver does with a peer packet.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerAction {
    Drop,
    /// Send `buf[start..end]` to `client`.
    ToClient {
        client: SocketAddr,
        start: usize,
        end: usize,
    },
}

/// Why authentication failed, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the normal first round trip.
    Challenge,
    Stale,
    UnknownUser,
    BadIntegrity,
    Expired,
    WrongCredentials,
    BadRequest,
    /// A REST username that expires further ahead than any of our mints would make.
    ExpiryTooFar,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 8] = [
        AuthFailure::Challenge,
        AuthFailure::Stale,
        AuthFailure::UnknownUser,
        AuthFailure::BadIntegrity,
        AuthFailure::Expired,
        AuthFailure::WrongCredentials,
        AuthFailure::BadRequest,
        AuthFailure::ExpiryTooFar,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Challenge => "challenge",
            AuthFailure::Stale => "stale_nonce",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongCredentials => "wrong_credentials",
            AuthFailure::BadRequest => "bad_request",
            AuthFailure::ExpiryTooFar => "expiry_too_far",
        }
    }
}

/// Counters a shard keeps; the driver publishes them as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub traffic: Traffic,
    pub binding_requests: u64,
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    pub denied_peers: u64,
    pub quota_user: u64,
    pub quota_total: u64,
    pub allocations_created: u64,
    pub dropped_packets: u64,
    pub bandwidth_drops: u64,
    /// Allocates refused because the client address is in [`Credentials::banned`].
    pub allocate_banned: u64,
    /// Requests from 5-tuples without an allocation left unanswered because their
    /// source was past its answer budget (reflection limit).
    pub unauthenticated_drops: u64,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(now: Instant, rate: u64) -> Self {
        Self {
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes if the bucket (rate bytes/s, burst of one second) has them.
    fn take(&mut self, now: Instant, rate: u64, n: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add =
                (elapsed.as_nanos().min(u128::from(u64::MAX)) as u64 / 1000).saturating_mul(rate) / 1_000_000;
            if add > 0 {
                self.tokens = (self.tokens + add).min(rate);
                self.last = now;
            }
        }
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    client: SocketAddr,
    username: String,
    /// The quota key: the REST user id part, or the static user's name.
    user: String,
    key: LongTermKey,
    relay: SocketAddr,
    created: Instant,
    expires: Instant,
    creating_tid: TransactionId,
    /// The RESERVATION-TOKEN its success response carried, for retransmissions.
    reservation: Option<[u8; 8]>,
    lifetime: Duration,
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    traffic: Traffic,
    to_peer_bucket: TokenBucket,
    to_client_bucket: TokenBucket,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|(p, exp)| *p == ip && *exp > now)
    }
}

#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    tid: TransactionId,
    username: String,
    user: String,
    key: LongTermKey,
    lifetime: Duration,
    fingerprint: bool,
    family: Family,
    /// The Allocate asked for a reservation, which holds a second unit of the quota.
    reserving: bool,
}

struct Authenticated {
    username: String,
    user: String,
    key: LongTermKey,
}

/// One shard of the TURN server.
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    nonces: NonceMaker,
    epoch: Instant,
    creds: Arc<Credentials>,
    policy: Arc<PeerPolicy>,
    quotas: Arc<Quotas>,
    relay_ports: Arc<RelayPorts>,
    unauthenticated: SourceLimiter,
    allocations: HashMap<AllocId, Allocation>,
    by_client: HashMap<SocketAddr, AllocId>,
    pending: HashMap<AllocId, Pending>,
    next_id: u64,
    indication_counter: u64,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    stats: Stats,
    next_sweep: Instant,
}

/// The outcome of handling one request: the reply is in the caller's buffer.
type Handled = Result<(), ()>;

impl Server {
    /// `nonce_key` must be random and secret; `now` starts the server's nonce clock.
    pub fn new(
        cfg: ServerConfig,
        nonce_key: [u8; 32],
        creds: Arc<Credentials>,
        policy: Arc<PeerPolicy>,
        quotas: Arc<Quotas>,
        now: Instant,
    ) -> Self {
        let limiter_key = crate::nonce::derive_key(&nonce_key, b"source-limit");
        Self {
            next_id: u64::from(cfg.shard) << 48,
            unauthenticated: SourceLimiter::new(
                cfg.unauthenticated_rate,
                cfg.unauthenticated_burst,
                cfg.ipv6_prefix_len,
                limiter_key,
                now,
            ),
            cfg,
            nonces: NonceMaker::new(nonce_key),
            epoch: now,
            creds,
            policy,
            quotas,
            relay_ports: Arc::new(RelayPorts::new()),
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            pending: HashMap::new(),
            indication_counter: 0,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            next_sweep: now + SWEEP_INTERVAL,
        }
    }

    /// Shares the registry of live relay ports with the other shards of the process (by
    /// default each server has its own).
    pub fn with_relay_ports(mut self, ports: Arc<RelayPorts>) -> Self {
        self.relay_ports = ports;
        self
    }

    pub fn set_credentials(&mut self, creds: Arc<Credentials>) {
        self.creds = creds;
    }

    pub fn set_policy(&mut self, policy: Arc<PeerPolicy>) {
        self.policy = policy;
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Entries of every table this shard keeps (allocations, client index, pending
    /// binds, permissions and channels): what a flood must not make grow.
    pub fn state_size(&self) -> usize {
        self.allocations.len()
            + self.by_client.len()
            + self.pending.len()
            + self
                .allocations
                .values()
                .map(|a| a.permissions.len() + a.channels.len())
                .sum::<usize>()
            + self.commands.len()
    }

    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn nonce_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Handles one datagram from a client. Replies are written to `reply` (cleared first).
    pub fn handle_client_packet<'a>(
        &mut self,
        from: SocketAddr,
        packet: &'a [u8],
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        reply.clear();
        match packet.first() {
            Some(0x40..=0x7F) => self.client_channel_data(from, packet, now),
            Some(0x00..=0x03) => {
                let Ok(msg) = Message::parse(packet) else {
                    self.stats.dropped_packets += 1;
                    return ClientAction::None;
                };
                self.client_stun(from, &msg, now, unix_now, reply)
            }
            _ => {
                self.stats.dropped_packets += 1;
                ClientAction::None
            }
        }
    }

    fn client_channel_data<'a>(
        &mut self,
        from: SocketAddr,
        packet: &'a [u8],
        now: Instant,
    ) -> ClientAction<'a> {
        let Some((number, payload)) = parse_channel_data(packet) else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let Some(&id) = self.by_client.get(&from) else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return ClientAction::None;
        };
        let Some(ch) = alloc
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
        else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let peer = ch.peer;
        Self::relay_to_peer(
            &self.cfg,
            (&self.policy, &self.relay_ports),
            &mut self.stats,
            id,
            alloc,
            peer,
            payload,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_to_peer<'a>(
        cfg: &ServerConfig,
        (policy, relay_ports): (&PeerPolicy, &RelayPorts),
        stats: &mut Stats,
        id: AllocId,
        alloc: &mut Allocation,
        peer: SocketAddr,
        payload: &'a [u8],
        now: Instant,
    ) -> ClientAction<'a> {
        if alloc.expires <= now || !alloc.permitted(peer.ip(), now) {
            stats.dropped_packets += 1;
            return ClientAction::None;
        }
        // Checked on every packet, not only at CreatePermission: the policy can change,
        // and so can which relay ports are allocations (a permission is per address, so
        // a Send indication may name any port of it).
        if permitted_peer(policy, relay_ports, peer).is_err() {
            stats.denied_peers += 1;
            return ClientAction::None;
        }
        let n = payload.len() as u64;
        if cfg.bandwidth_limit > 0 && !alloc.to_peer_bucket.take(now, cfg.bandwidth_limit, n) {
            stats.bandwidth_drops += 1;
            return ClientAction::None;
        }
        alloc.traffic.packets_to_peer += 1;
        alloc.traffic.bytes_to_peer += n;
        stats.traffic.packets_to_peer += 1;
        stats.traffic.bytes_to_peer += n;
        ClientAction::Relay { id, peer, payload }
    }

    fn client_stun<'a>(
        &mut self,
        from: SocketAddr,
        msg: &Message<'a>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        match msg.class() {
            Class::Indication => {
                if msg.method() == method::SEND {
                    return self.send_indication(from, msg, now);
                }
                ClientAction::None
            }
            Class::Request => {
                // A request from a 5-tuple without an allocation is answered without
                // integrity (Binding, 401, errors) or starts one: spoofable, so each
                // source gets a bounded number of answers.
                if !self.by_client.contains_key(&from) && !self.unauthenticated.allow(from.ip(), now) {
                    self.stats.unauthenticated_drops += 1;
                    return ClientAction::None;
                }
                if !msg.unknown_required().is_empty() {
                    let mut unknown = [0u8; 16];
                    let list = msg.unknown_required();
                    for (i, t) in list.iter().enumerate() {
                        unknown[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
                    }
                    let mut b = self.response(reply, msg, Class::Error);
                    b.add_error(420, "Unknown Attribute")
                        .add(attr::UNKNOWN_ATTRIBUTES, &unknown[..2 * list.len()]);
                    self.finish(b, msg, None);
                    return ClientAction::Reply;
                }
                let handled = match msg.method() {
                    method::BINDING => {
                        self.stats.binding_requests += 1;
                        let mut b = self.response(reply, msg, Class::Success);
                        b.add_xor_address(attr::XOR_MAPPED_ADDRESS, &from);
                        self.finish(b, msg, None);
                        Ok(())
                    }
                    method::ALLOCATE => self.allocate(from, msg, now, unix_now, reply),
                    method::REFRESH => self.refresh(from, msg, now, unix_now, reply),
                    method::CREATE_PERMISSION => self.create_permission(from, msg, now, unix_now, reply),
                    method::CHANNEL_BIND => self.channel_bind(from, msg, now, unix_now, reply),
                    _ => {
                        let mut b = self.response(reply, msg, Class::Error);
                        b.add_error(400, "Bad Request: unsupported method");
                        self.finish(b, msg, None);
                        Ok(())
                    }
                };
                // Handlers write their reply (success or error) or leave it empty.
                let _ = handled;
                if reply.is_empty() {
                    ClientAction::None
                } else {
                    ClientAction::Reply
                }
            }
            // Responses from a client are not expected: drop.
            Class::Success | Class::Error => ClientAction::None,
        }
    }

    fn send_indication<'a>(&mut self, from: SocketAddr, msg: &Message<'a>, now: Instant) -> ClientAction<'a> {
        let Some(&id) = self.by_client.get(&from) else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return ClientAction::None;
        };
        if Family::of(&peer) != Family::of(&alloc.relay) {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        }
        Self::relay_to_peer(
            &self.cfg,
            (&self.policy, &self.relay_ports),
            &mut self.stats,
            id,
            alloc,
            peer,
            data,
            now,
        )
    }

    /// Handles a datagram that arrived on the relay socket of `id` from `from`. The payload
    /// is `buf[head..head + len]`, with at least [`PEER_HEADROOM`] bytes before it and
    /// [`PEER_TAILROOM`] after it, where the header for the client is written in place.
    pub fn handle_peer_packet(
        &mut self,
        id: AllocId,
        from: SocketAddr,
        buf: &mut [u8],
        head: usize,
        len: usize,
        now: Instant,
    ) -> PeerAction {
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return PeerAction::Drop;
        };
        if alloc.expires <= now || !alloc.permitted(from.ip(), now) {
            self.stats.dropped_packets += 1;
            return PeerAction::Drop;
        }
        // From our own relay address: only another allocation may talk to a client, not
        // a host service bound in the relay range.
        if self.policy.is_own_relay(from) && !self.relay_ports.contains(from) {
            self.stats.denied_peers += 1;
            return PeerAction::Drop;
        }
        if self.cfg.bandwidth_limit > 0
            && !alloc
                .to_client_bucket
                .take(now, self.cfg.bandwidth_limit, len as u64)
        {
            self.stats.bandwidth_drops += 1;
            return PeerAction::Drop;
        }
        let (start, end) = if let Some(ch) = alloc.channels.iter().find(|c| c.peer == from && c.expires > now)
        {
            let start = head - 4;
            buf[start..start + 2].copy_from_slice(&ch.number.to_be_bytes());
            buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
            (start, head + len)
        } else {
            let hl = stun::data_indication_head_len(&from);
            let start = head - hl;
            self.indication_counter += 1;
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&self.indication_counter.to_be_bytes());
            tid[8..].copy_from_slice(&(id.0 as u32).to_be_bytes());
            stun::write_data_indication_head(&mut buf[start..head], &from, &tid, len);
            let padded = (len + 3) & !3;
            buf[head + len..head + padded].fill(0);
            (start, head + padded)
        };
        alloc.traffic.packets_to_client += 1;
        alloc.traffic.bytes_to_client += len as u64;
        self.stats.traffic.packets_to_client += 1;
        self.stats.traffic.bytes_to_client += len as u64;
        PeerAction::ToClient {
            client: alloc.client,
            start,
            end,
        }
    }

    fn response<'b>(&self, reply: &'b mut Vec<u8>, msg: &Message<'_>, class: Class) -> MessageBuilder<'b> {
        reply.clear();
        MessageBuilder::new(reply, msg.method(), class, &msg.transaction_id())
    }

    fn finish(&self, mut b: MessageBuilder<'_>, req: &Message<'_>, key: Option<&LongTermKey>) {
        if let Some(sw) = &self.cfg.software {
            b.add(attr::SOFTWARE, sw.as_bytes());
        }
        if let Some(k) = key {
            b.add_integrity(k);
        }
        if req.has_fingerprint() {
            b.add_fingerprint();
        }
        b.finish();
    }

    fn error(
        &self,
        reply: &mut Vec<u8>,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        key: Option<&LongTermKey>,
    ) {
        let mut b = self.response(reply, req, Class::Error);
        b.add_error(code, reason);
        self.finish(b, req, key);
    }

    /// 401 or 438 with REALM and a fresh NONCE.
    fn challenge(
        &mut self,
        reply: &mut Vec<u8>,
        req: &Message<'_>,
        from: SocketAddr,
        code: u16,
        now: Instant,
        why: AuthFailure,
    ) {
        self.stats.auth_failures[why as usize] += 1;
        let nonce = self.nonces.issue(&from, self.nonce_secs(now));
        let mut b = self.response(reply, req, Class::Error);
        b.add_error(
            code,
            if code == 438 {
                "Stale Nonce"
            } else {
                "Unauthorized"
            },
        )
        .add(attr::REALM, self.cfg.realm.as_bytes())
        .add(attr::NONCE, &nonce);
        self.finish(b, req, None);
    }

    /// Long-term credential check (RFC 8489 section 9.2). On failure the reply holds the
    /// error. `existing` is the allocation of this 5-tuple, whose key is used as is (so
    /// refreshes keep working after a REST credential expires).
    fn authenticate(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        check_expiry: bool,
        reply: &mut Vec<u8>,
    ) -> Result<Authenticated, ()> {
        if !msg.has_integrity() {
            self.challenge(reply, msg, from, 401, now, AuthFailure::Challenge);
            return Err(());
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            self.stats.auth_failures[AuthFailure::BadRequest as usize] += 1;
            self.error(
                reply,
                msg,
                400,
                "Bad Request: USERNAME, REALM and NONCE are required",
                None,
            );
            return Err(());
        };
        match self.nonces.check(
            nonce,
            &from,
            self.nonce_secs(now),
            self.cfg.nonce_lifetime.as_secs(),
        ) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.challenge(reply, msg, from, 438, now, AuthFailure::Stale);
                return Err(());
            }
        }
        if realm != self.cfg.realm {
            self.challenge(reply, msg, from, 401, now, AuthFailure::BadIntegrity);
            return Err(());
        }
        if let Some(a) = self.by_client.get(&from).and_then(|id| self.allocations.get(id)) {
            if a.username != username {
                self.stats.auth_failures[AuthFailure::WrongCredentials as usize] += 1;
                self.error(reply, msg, 441, "Wrong Credentials", None);
                return Err(());
            }
            if !msg.verify_integrity(&a.key) {
                self.challenge(reply, msg, from, 401, now, AuthFailure::BadIntegrity);
                return Err(());
            }
            return Ok(Authenticated {
                username: a.username.clone(),
                user: a.user.clone(),
                key: a.key,
            });
        }
        let creds = Arc::clone(&self.creds);
        if let Some(rest) = RestUsername::parse(username) {
            let Some(secrets) = &creds.secrets else {
                self.challenge(reply, msg, from, 401, now, AuthFailure::UnknownUser);
                return Err(());
            };
            // Every secret is tried, so the time taken does not tell which one matched.
            let mut found = None;
            for key in secrets.rest_keys(username, &self.cfg.realm) {
                if msg.verify_integrity(&key) && found.is_none() {
                    found = Some(key);
                }
            }
            let Some(key) = found else {
                self.challenge(reply, msg, from, 401, now, AuthFailure::BadIntegrity);
                return Err(());
            };
            if check_expiry && rest.expiry < unix_now {
                self.challenge(reply, msg, from, 401, now, AuthFailure::Expired);
                return Err(());
            }
            if check_expiry && rest.expiry > unix_now.saturating_add(self.cfg.max_credential_expiry.as_secs())
            {
                self.challenge(reply, msg, from, 401, now, AuthFailure::ExpiryTooFar);
                return Err(());
            }
            let user = if rest.user.is_empty() { username } else { rest.user };
            return Ok(Authenticated {
                username: username.to_string(),
                user: user.to_string(),
                key,
            });
        }
        match creds.static_users.get(username) {
            Some(key) if msg.verify_integrity(key) => Ok(Authenticated {
                username: username.to_string(),
                user: username.to_string(),
                key: *key,
            }),
            Some(_) => {
                self.challenge(reply, msg, from, 401, now, AuthFailure::BadIntegrity);
                Err(())
            }
            None => {
                self.challenge(reply, msg, from, 401, now, AuthFailure::UnknownUser);
                Err(())
            }
        }
    }

    /// RFC 8656 lets the server choose: a request below the default lifetime gets the
    /// default (a shorter one only costs refreshes), above the maximum the maximum.
    fn clamp_lifetime(&self, requested: Option<u32>) -> Duration {
        match requested {
            None => self.cfg.default_lifetime,
            Some(s) => {
                Duration::from_secs(u64::from(s)).clamp(self.cfg.default_lifetime, self.cfg.max_lifetime)
            }
        }
    }

    fn allocate(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> Handled {
        // A retransmitted Allocate gets the same success; any other one is a mismatch.
        if let Some(&id) = self.by_client.get(&from) {
            if let Some(a) = self.allocations.get(&id) {
                if a.creating_tid == msg.transaction_id() && msg.verify_integrity(&a.key) {
                    let (key, relay, lifetime, token) = (
                        a.key,
                        a.relay,
                        a.expires.saturating_duration_since(now),
                        a.reservation,
                    );
                    self.allocate_success(
                        reply,
                        msg.transaction_id(),
                        msg.has_fingerprint(),
                        from,
                        relay,
                        lifetime,
                        &key,
                        token,
                    );
                    return Ok(());
                }
            } else {
                // A bind in progress: the retransmission will be answered by its result.
                return Err(());
            }
        }
        // Before authentication: a banned client costs a scan of the ban list, no HMAC.
        let ip = from.ip();
        if self.creds.banned.iter().any(|net| net.contains(ip)) {
            self.stats.allocate_banned += 1;
            self.error(reply, msg, 403, "Forbidden: client address banned", None);
            return Ok(());
        }
        let auth = self.authenticate(from, msg, now, unix_now, true, reply)?;
        let key = auth.key;
        if self.by_client.contains_key(&from) {
            self.error(reply, msg, 437, "Allocation Mismatch", Some(&key));
            return Ok(());
        }
        match msg.u32_attr(attr::REQUESTED_TRANSPORT) {
            Ok(Some(v)) if (v >> 24) as u8 == UDP => {}
            Ok(Some(_)) => {
                self.error(reply, msg, 442, "Unsupported Transport Protocol", Some(&key));
                return Ok(());
            }
            _ => {
                self.error(reply, msg, 400, "Bad Request: REQUESTED-TRANSPORT", Some(&key));
                return Ok(());
            }
        }
        let token = match msg.get(attr::RESERVATION_TOKEN) {
            None => None,
            Some(t)
                if t.len() == 8 && !msg.has(attr::EVEN_PORT) && !msg.has(attr::REQUESTED_ADDRESS_FAMILY) =>
            {
                Some(<[u8; 8]>::try_from(t).expect("length checked"))
            }
            Some(_) => {
                self.error(reply, msg, 400, "Bad Request: RESERVATION-TOKEN", Some(&key));
                return Ok(());
            }
        };
        let (even_port, reserve_next) = match msg.get(attr::EVEN_PORT) {
            None => (false, false),
            Some([flags, ..]) => (true, flags & 0x80 != 0),
            Some([]) => {
                self.error(reply, msg, 400, "Bad Request: EVEN-PORT", Some(&key));
                return Ok(());
            }
        };
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => Family::V4,
            Some([0x01, ..]) => Family::V4,
            Some([0x02, ..]) => Family::V6,
            Some(_) => {
                self.error(reply, msg, 440, "Address Family not Supported", Some(&key));
                return Ok(());
            }
        };
        let relay_ip = match family {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        };
        let Some(relay_ip) = relay_ip else {
            self.error(reply, msg, 440, "Address Family not Supported", Some(&key));
            return Ok(());
        };
        let lifetime = match msg.u32_attr(attr::LIFETIME) {
            Ok(v) => self.clamp_lifetime(v),
            Err(_) => {
                self.error(reply, msg, 400, "Bad Request: LIFETIME", Some(&key));
                return Ok(());
            }
        };
        let lifetime = lifetime.min(self.cfg.max_allocation_age);
        // A reservation holds a socket like an allocation does, so it counts like one.
        let quota = self.quotas.acquire(&auth.user).and_then(|()| {
            if reserve_next {
                self.quotas
                    .acquire(&auth.user)
                    .inspect_err(|_| self.quotas.release(&auth.user))
            } else {
                Ok(())
            }
        });
        if let Err(q) = quota {
            let (code, reason) = match q {
                QuotaError::User => {
                    self.stats.quota_user += 1;
                    (486, "Allocation Quota Reached")
                }
                QuotaError::Total => {
                    self.stats.quota_total += 1;
                    (508, "Insufficient Capacity")
                }
            };
            self.error(reply, msg, code, reason, Some(&key));
            return Ok(());
        }
        self.next_id += 1;
        let id = AllocId(self.next_id);
        self.pending.insert(
            id,
            Pending {
                client: from,
                tid: msg.transaction_id(),
                username: auth.username,
                user: auth.user,
                key,
                lifetime,
                fingerprint: msg.has_fingerprint(),
                family,
                reserving: reserve_next,
            },
        );
        self.by_client.insert(from, id);
        self.commands.push_back(match token {
            Some(token) => Command::TakeReservation { id, token },
            None => Command::BindRelay {
                id,
                ip: relay_ip.bind,
                even_port,
                reserve_for: reserve_next.then(|| self.pending[&id].user.clone()),
            },
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &self,
        reply: &mut Vec<u8>,
        tid: TransactionId,
        fingerprint: bool,
        client: SocketAddr,
        relay: SocketAddr,
        lifetime: Duration,
        key: &LongTermKey,
        reservation: Option<[u8; 8]>,
    ) {
        reply.clear();
        let mut b = MessageBuilder::new(reply, method::ALLOCATE, Class::Success, &tid);
        b.add_xor_address(attr::XOR_RELAYED_ADDRESS, &relay)
            .add_u32(attr::LIFETIME, lifetime.as_secs() as u32)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, &client);
        if let Some(token) = reservation {
            b.add(attr::RESERVATION_TOKEN, &token);
        }
        if let Some(sw) = &self.cfg.software {
            b.add(attr::SOFTWARE, sw.as_bytes());
        }
        b.add_integrity(key);
        if fingerprint {
            b.add_fingerprint();
        }
        b.finish();
    }

    /// The driver's answer to [`Command::BindRelay`]: the bound local address, or the
    /// failure. Queues the Allocate response as [`Command::SendToClient`].
    pub fn relay_bound(&mut self, id: AllocId, bound: Result<SocketAddr, ()>, now: Instant) {
        self.relay_bound_reserved(id, bound, None, now);
    }

    /// [`Server::relay_bound`] for a bind that also reserved the next port under
    /// `reservation`, which the success response carries as RESERVATION-TOKEN.
    pub fn relay_bound_reserved(
        &mut self,
        id: AllocId,
        bound: Result<SocketAddr, ()>,
        reservation: Option<[u8; 8]>,
        now: Instant,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            if let Ok(_addr) = bound {
                self.commands.push_back(Command::CloseRelay { id });
            }
            return;
        };
        // The reservation's unit of quota now belongs to the driver's reservation (it
        // gives it back when the token is taken or expires), or to nobody.
        if p.reserving && (reservation.is_none() || bound.is_err()) {
            self.quotas.release(&p.user);
        }
        let mut reply = Vec::new();
        // A reserved socket may be of another family than the Allocate asked for (the
        // request with a token names none): the bound address decides.
        let family = bound.as_ref().map_or(p.family, Family::of);
        let relay_cfg = match family {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        };
        match (bound, relay_cfg) {
            (Ok(local), Some(relay_cfg)) => {
                let relay = SocketAddr::new(relay_cfg.advertise, local.port());
                self.relay_ports.insert(relay);
                self.allocate_success(
                    &mut reply,
                    p.tid,
                    p.fingerprint,
                    p.client,
                    relay,
                    p.lifetime,
                    &p.key,
                    reservation,
                );
                self.stats.allocations_created += 1;
                self.events.push_back(Event::Created {
                    id,
                    username: p.username.clone(),
                    client: p.client,
                    relay,
                    lifetime: p.lifetime,
                });
                self.allocations.insert(
                    id,
                    Allocation {
                        client: p.client,
                        username: p.username,
                        user: p.user,
                        key: p.key,
                        relay,
                        created: now,
                        expires: now + p.lifetime,
                        creating_tid: p.tid,
                        reservation,
                        lifetime: p.lifetime,
                        permissions: Vec::new(),
                        channels: Vec::new(),
                        traffic: Traffic::default(),
                        to_peer_bucket: TokenBucket::new(now, self.cfg.bandwidth_limit),
                        to_client_bucket: TokenBucket::new(now, self.cfg.bandwidth_limit),
                    },
                );
            }
            _ => {
                self.quotas.release(&p.user);
                self.by_client.remove(&p.client);
                let mut b = MessageBuilder::new(&mut reply, method::ALLOCATE, Class::Error, &p.tid);
                b.add_error(508, "Insufficient Capacity: no relay port or reservation");
                b.add_integrity(&p.key);
                if p.fingerprint {
                    b.add_fingerprint();
                }
                b.finish();
            }
        }
        self.commands.push_back(Command::SendToClient {
            to: p.client,
            bytes: reply,
        });
    }

    /// Authenticates a request that needs this 5-tuple's allocation: `Ok((id, key))`, or
    /// `Err` with the reply (401/438/441/437) already written.
    fn with_allocation(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> Result<(AllocId, LongTermKey), ()> {
        let auth = self.authenticate(from, msg, now, unix_now, false, reply)?;
        match self.by_client.get(&from) {
            Some(&id) if self.allocations.get(&id).is_some_and(|a| a.expires > now) => Ok((id, auth.key)),
            _ => {
                self.error(reply, msg, 437, "Allocation Mismatch", Some(&auth.key));
                Err(())
            }
        }
    }

    fn refresh(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> Handled {
        let Ok((id, key)) = self.with_allocation(from, msg, now, unix_now, reply) else {
            return Ok(());
        };
        let requested = match msg.u32_attr(attr::LIFETIME) {
            Ok(v) => v,
            Err(_) => {
                self.error(reply, msg, 400, "Bad Request: LIFETIME", Some(&key));
                return Ok(());
            }
        };
        if let Some(fam) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let relay_is_v4 = self.allocations[&id].relay.is_ipv4();
            if fam.first() != Some(if relay_is_v4 { &0x01 } else { &0x02 }) {
                self.error(reply, msg, 443, "Peer Address Family Mismatch", Some(&key));
                return Ok(());
            }
        }
        let lifetime = if requested == Some(0) {
            self.close(id, CloseReason::Deleted);
            Duration::ZERO
        } else {
            let mut lifetime = self.clamp_lifetime(requested);
            let a = self.allocations.get_mut(&id).expect("checked above");
            let age_left = (a.created + self.cfg.max_allocation_age).saturating_duration_since(now);
            lifetime = lifetime.min(age_left);
            a.expires = now + lifetime;
            a.lifetime = lifetime;
            self.events.push_back(Event::Refreshed { id, lifetime });
            lifetime
        };
        let mut b = self.response(reply, msg, Class::Success);
        b.add_u32(attr::LIFETIME, lifetime.as_secs() as u32);
        self.finish(b, msg, Some(&key));
        Ok(())
    }

    /// Checks a peer address for CreatePermission and ChannelBind; writes 400/403/443.
    fn check_peer(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        msg: &Message<'_>,
        key: &LongTermKey,
        reply: &mut Vec<u8>,
    ) -> Result<(), ()> {
        if Family::of(&peer) != Family::of(&self.allocations[&id].relay) {
            self.error(reply, msg, 443, "Peer Address Family Mismatch", Some(key));
            return Err(());
        }
        if let Err(d) = permitted_peer(&self.policy, &self.relay_ports, peer) {
            self.stats.denied_peers += 1;
            let reason = match d {
                Denial::Denied | Denial::DefaultDenied | Denial::OwnAddress => {
                    "Forbidden: peer address not allowed"
                }
                Denial::PortZero => "Forbidden: port 0",
            };
            self.error(reply, msg, 403, reason, Some(key));
            return Err(());
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> Handled {
        let Ok((id, key)) = self.with_allocation(from, msg, now, unix_now, reply) else {
            return Ok(());
        };
        let mut peers = [None; 16];
        let mut n = 0;
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            match peer {
                Ok(p) if n < peers.len() => {
                    peers[n] = Some(p);
                    n += 1;
                }
                _ => {
                    self.error(reply, msg, 400, "Bad Request: XOR-PEER-ADDRESS", Some(&key));
                    return Ok(());
                }
            }
        }
        if n == 0 {
            self.error(
                reply,
                msg,
                400,
                "Bad Request: XOR-PEER-ADDRESS required",
                Some(&key),
            );
            return Ok(());
        }
        // All or nothing: every peer is checked before any permission is installed.
        for p in peers[..n].iter().flatten() {
            if self.check_peer(id, *p, msg, &key, reply).is_err() {
                return Ok(());
            }
        }
        let a = self.allocations.get_mut(&id).expect("checked");
        let new = peers[..n]
            .iter()
            .flatten()
            .filter(|p| !a.permissions.iter().any(|(ip, _)| *ip == p.ip()))
            .count();
        a.permissions.retain(|(_, exp)| *exp > now);
        if a.permissions.len() + new > MAX_PERMISSIONS {
            self.error(
                reply,
                msg,
                508,
                "Insufficient Capacity: too many permissions",
                Some(&key),
            );
            return Ok(());
        }
        for p in peers[..n].iter().flatten() {
            install_permission(a, p.ip(), now);
        }
        let b = self.response(reply, msg, Class::Success);
        self.finish(b, msg, Some(&key));
        Ok(())
    }

    fn channel_bind(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> Handled {
        let Ok((id, key)) = self.with_allocation(from, msg, now, unix_now, reply) else {
            return Ok(());
        };
        let number = match msg.u32_attr(attr::CHANNEL_NUMBER) {
            Ok(Some(v)) => (v >> 16) as u16,
            _ => {
                self.error(reply, msg, 400, "Bad Request: CHANNEL-NUMBER", Some(&key));
                return Ok(());
            }
        };
        if !(stun::CHANNEL_MIN..=stun::CHANNEL_MAX).contains(&number) {
            self.error(
                reply,
                msg,
                400,
                "Bad Request: channel number out of range",
                Some(&key),
            );
            return Ok(());
        }
        let peer = match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Ok(Some(p)) => p,
            _ => {
                self.error(reply, msg, 400, "Bad Request: XOR-PEER-ADDRESS", Some(&key));
                return Ok(());
            }
        };
        if self.check_peer(id, peer, msg, &key, reply).is_err() {
            return Ok(());
        }
        let a = self.allocations.get_mut(&id).expect("checked");
        a.channels.retain(|c| c.expires > now);
        // Both limits are checked before anything changes, so a refusal leaves no trace.
        if !a.permissions.iter().any(|(ip, _)| *ip == peer.ip()) && a.permissions.len() >= MAX_PERMISSIONS {
            self.error(
                reply,
                msg,
                508,
                "Insufficient Capacity: too many permissions",
                Some(&key),
            );
            return Ok(());
        }
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        match (by_number, by_peer) {
            (Some(i), Some(j)) if i == j => a.channels[i].expires = now + CHANNEL_LIFETIME,
            (None, None) if a.channels.len() < MAX_CHANNELS => a.channels.push(Channel {
                number,
                peer,
                expires: now + CHANNEL_LIFETIME,
            }),
            (None, None) => {
                self.error(
                    reply,
                    msg,
                    508,
                    "Insufficient Capacity: too many channels",
                    Some(&key),
                );
                return Ok(());
            }
            _ => {
                self.error(
                    reply,
                    msg,
                    400,
                    "Bad Request: channel or peer already bound",
                    Some(&key),
                );
                return Ok(());
            }
        }
        install_permission(a, peer.ip(), now);
        let b = self.response(reply, msg, Class::Success);
        self.finish(b, msg, Some(&key));
        Ok(())
    }

    fn close(&mut self, id: AllocId, reason: CloseReason) {
        if let Some(a) = self.allocations.remove(&id) {
            self.by_client.remove(&a.client);
            self.quotas.release(&a.user);
            self.relay_ports.remove(a.relay);
            self.commands.push_back(Command::CloseRelay { id });
            self.events.push_back(Event::Closed {
                id,
                reason,
                traffic: a.traffic,
            });
        }
    }

    /// Closes an allocation on the operator's request. Returns whether it existed here.
    pub fn kick(&mut self, id: AllocId) -> bool {
        let existed = self.allocations.contains_key(&id);
        self.close(id, CloseReason::Kicked);
        existed
    }

    /// Closes every allocation whose user id matches (a ban or a removed user).
    pub fn kick_user(&mut self, user: &str) -> usize {
        let ids: Vec<AllocId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.user == user)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.close(*id, CloseReason::Kicked);
        }
        ids.len()
    }

    /// Closes every allocation whose client IP matches `pred` (a ban of a network), with
    /// reason [`CloseReason::Kicked`]. `pred` sees the address as the client sent from it;
    /// [`Cidr::contains`] judges IPv4-mapped forms as IPv4. Returns how many were closed.
    pub fn kick_clients(&mut self, pred: impl Fn(IpAddr) -> bool) -> usize {
        let ids: Vec<AllocId> = self
            .allocations
            .iter()
            .filter(|(_, a)| pred(a.client.ip()))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.close(*id, CloseReason::Kicked);
        }
        ids.len()
    }

    /// The allocations live at `now` (those past their expiry but not yet swept are left
    /// out), with their unexpired permissions and channels. In no particular order.
    pub fn allocations(&self, now: Instant) -> impl Iterator<Item = AllocationInfo> {
        self.allocations
            .iter()
            .filter(move |(_, a)| a.expires > now)
            .map(move |(id, a)| AllocationInfo {
                id: *id,
                username: a.username.clone(),
                user: a.user.clone(),
                client: a.client,
                relay: a.relay,
                age: now.saturating_duration_since(a.created),
                expires_in: a.expires.saturating_duration_since(now),
                permissions: a
                    .permissions
                    .iter()
                    .filter(|(_, exp)| *exp > now)
                    .map(|(ip, _)| *ip)
                    .collect(),
                channels: a
                    .channels
                    .iter()
                    .filter(|c| c.expires > now)
                    .map(|c| (c.number, c.peer))
                    .collect(),
                traffic: a.traffic,
            })
    }

    /// Closes every allocation (process shutdown), emitting their Closed events.
    pub fn shutdown(&mut self) {
        let ids: Vec<AllocId> = self.allocations.keys().copied().collect();
        for id in ids {
            self.close(id, CloseReason::Shutdown);
        }
    }

    /// When [`Server::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.allocations.is_empty()).then_some(self.next_sweep)
    }

    /// Expires allocations, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<AllocId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close(id, CloseReason::Expired);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|(_, exp)| *exp > now);
            a.channels.retain(|c| c.expires > now);
        }
    }
}

/// The peer policy, with its own-relay case settled: allowed only where a live allocation
/// of this server holds the port.
fn permitted_peer(policy: &PeerPolicy, relay_ports: &RelayPorts, peer: SocketAddr) -> Result<(), Denial> {
    match policy.check(peer)? {
        Peer::Remote => Ok(()),
        Peer::OwnRelay if relay_ports.contains(peer) => Ok(()),
        Peer::OwnRelay => Err(Denial::OwnAddress),
    }
}

fn install_permission(a: &mut Allocation, ip: IpAddr, now: Instant) {
    match a.permissions.iter_mut().find(|(p, _)| *p == ip) {
        Some((_, exp)) => *exp = now + PERMISSION_LIFETIME,
        None => a.permissions.push((ip, now + PERMISSION_LIFETIME)),
    }
}

#[cfg(test)]
mod tests;
