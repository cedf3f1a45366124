//! The values a shard takes in and gives out: identities, settings, credentials, the
//! operator's view of an allocation, events, commands for the driver, packet actions and
//! counters.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use callbox_core::credentials::{LongTermKey, SecretSet};
use callbox_core::policy::Cidr;

#[cfg(doc)]
use super::{Quotas, Server};
use crate::stun;

/// Headroom the driver must leave in front of a peer payload so the server can write a
/// Data indication (or ChannelData) header in place: IPv6 Data indication head.
pub const PEER_HEADROOM: usize = stun::HEADER_LEN + 4 + 20 + 4;
/// Room the driver must leave after a peer payload for the Data indication's padding.
pub const PEER_TAILROOM: usize = 3;

/// How long a port reserved by EVEN-PORT's R bit is kept by default (RFC 8656 suggests
/// 30 s); the driver keeps reservations and expires them.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

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
    pub(crate) fn of(addr: &SocketAddr) -> Family {
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

impl ServerConfig {
    /// What every response is written with: the realm (for challenges) and SOFTWARE.
    pub(crate) fn reply_settings(&self) -> (&str, Option<&str>) {
        (&self.realm, self.software.as_deref())
    }
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

/// How a client reaches the server. Part of the 5-tuple that names an allocation (RFC 8656
/// section 2.2): the same address over UDP and over TCP are two clients. Relayed peers are
/// always UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Every transport, in [`Transport::index`] order.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// The position in per-transport counters.
    pub const fn index(self) -> usize {
        match self {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        }
    }

    /// The `transport` label of metrics and the word in logs and listings.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Over a stream (TCP, TLS) ChannelData is padded to a multiple of 4 bytes (RFC 8656
    /// section 12.5); over UDP it is not.
    pub const fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
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
    pub transport: Transport,
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
    /// The client's TCP or TLS connection closed (RFC 8656 section 12: the allocation
    /// lives only as long as its connection).
    Disconnected,
}

impl CloseReason {
    /// The word session history stores for it, lower case like the signal role's reasons
    /// ("left", "kicked", "timeout").
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Deleted => "deleted",
            CloseReason::Expired => "expired",
            CloseReason::Kicked => "kicked",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Disconnected => "disconnected",
        }
    }
}

/// What happened to allocations, for history and live views (admin stores these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created {
        id: AllocId,
        username: String,
        client: SocketAddr,
        transport: Transport,
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
    SendToClient {
        to: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
    },
}

/// Why the driver has no relay socket for an allocation ([`Server::relay_bound`]).
#[derive(Debug, thiserror::Error)]
pub enum RelayBindError {
    /// Binding (or registering) the socket failed; the cause is kept for the driver's log
    /// and decides the answer: 508 when the port range or kernel memory ran out, 500 else.
    #[error("relay socket: {0}")]
    Io(#[from] io::Error),
    /// No reservation under the RESERVATION-TOKEN (unknown, taken or expired): 508.
    #[error("no reservation under that token")]
    NoReservation,
}

impl RelayBindError {
    /// Whether the failure is a capacity limit (RFC 8656's 508 Insufficient Capacity)
    /// rather than a fault of the server (500). Judged by kind: the port range exhausted
    /// (`AddrInUse`, also what the driver reports after its last try) or no kernel memory.
    pub fn is_capacity(&self) -> bool {
        match self {
            RelayBindError::Io(e) => {
                matches!(e.kind(), io::ErrorKind::AddrInUse | io::ErrorKind::OutOfMemory)
            }
            RelayBindError::NoReservation => true,
        }
    }
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
    /// Send `buf[start..end]` to `client` over `transport` (ChannelData already padded when
    /// that is a stream).
    ToClient {
        client: SocketAddr,
        transport: Transport,
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
    /// Allocations created, and live now, by the client's transport (UDP, TCP, TLS:
    /// [`Transport::index`]).
    pub created_by_transport: [u64; 3],
    pub live_by_transport: [u64; 3],
    pub dropped_packets: u64,
    pub bandwidth_drops: u64,
    /// Allocates refused because the client address is in [`Credentials::banned`].
    pub allocate_banned: u64,
    /// Requests from 5-tuples without an allocation left unanswered because their
    /// source was past its answer budget (reflection limit).
    pub unauthenticated_drops: u64,
}
