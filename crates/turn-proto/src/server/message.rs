//! The wire side of requests: a STUN message becomes a typed [`ClientRequest`] before any
//! handler sees it, and a handler's typed answer ([`Answer`] or [`Refusal`]) becomes bytes
//! in one place ([`Server::encode`](super::Server)). Nothing here allocates.

use std::net::SocketAddr;
use std::time::Duration;

use callbox_core::credentials::LongTermKey;
use callbox_core::policy::Denial;

use super::types::Family;
use crate::nonce::NONCE_LEN;
use crate::stun::{self, Class, Message, MessageBuilder, TransactionId, attr, method};

const UDP: u8 = 17;
/// Peers one CreatePermission may name; more is answered 400.
pub(crate) const MAX_PEERS_PER_REQUEST: usize = 16;
/// Comprehension-required attributes a 420 lists (what the codec records).
const MAX_UNKNOWN: usize = 8;

/// A client request with its attributes parsed.
///
/// Each method's attributes are kept as a `Result`: their errors are answered only after
/// the request authenticated (signed with its key), as before the types existed, while the
/// errors of [`ClientRequest::parse`] itself (420, unsupported method) are answered before
/// authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "lives on the stack for one request; boxing the peer list would allocate"
)]
pub enum ClientRequest {
    Binding,
    Allocate(Result<AllocateRequest, RequestError>),
    Refresh(Result<RefreshRequest, RequestError>),
    CreatePermission(Result<PermissionRequest, RequestError>),
    ChannelBind(Result<ChannelBindRequest, RequestError>),
}

/// An Allocate's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocateRequest {
    /// RESERVATION-TOKEN: take the port reserved under it.
    pub token: Option<[u8; 8]>,
    /// EVEN-PORT was present.
    pub even_port: bool,
    /// EVEN-PORT's R bit: also reserve the next port.
    pub reserve_next: bool,
    /// REQUESTED-ADDRESS-FAMILY, IPv4 when absent.
    pub family: Family,
    /// LIFETIME in seconds as asked.
    pub lifetime: Option<u32>,
}

/// A Refresh's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRequest {
    /// LIFETIME in seconds as asked; 0 deletes the allocation.
    pub lifetime: Option<u32>,
    /// The first byte of REQUESTED-ADDRESS-FAMILY (checked against the relay's family),
    /// `Some(None)` when the attribute is empty.
    pub family: Option<Option<u8>>,
}

/// A CreatePermission's peers (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionRequest {
    peers: [Option<SocketAddr>; MAX_PEERS_PER_REQUEST],
}

impl PermissionRequest {
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().map_while(|p| *p)
    }
}

/// A ChannelBind's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelBindRequest {
    /// In `stun::CHANNEL_MIN..=stun::CHANNEL_MAX`.
    pub number: u16,
    pub peer: SocketAddr,
}

/// A Send indication: `data` for `peer`, borrowed from the client's datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendIndication<'a> {
    pub peer: SocketAddr,
    pub data: &'a [u8],
}

/// Why a request's attributes were refused; each maps to its STUN error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Comprehension-required attributes this server does not know (420, listed in
    /// UNKNOWN-ATTRIBUTES).
    #[error("unknown comprehension-required attributes")]
    UnknownAttributes { types: [u16; MAX_UNKNOWN], len: u8 },
    #[error("unsupported method")]
    UnsupportedMethod,
    #[error("malformed or missing REQUESTED-TRANSPORT")]
    BadTransport,
    #[error("a transport other than UDP")]
    UnsupportedTransport,
    #[error("malformed RESERVATION-TOKEN, or one with EVEN-PORT or REQUESTED-ADDRESS-FAMILY")]
    BadReservationToken,
    #[error("malformed EVEN-PORT")]
    BadEvenPort,
    #[error("unknown REQUESTED-ADDRESS-FAMILY")]
    UnsupportedFamily,
    #[error("malformed LIFETIME")]
    BadLifetime,
    #[error("malformed XOR-PEER-ADDRESS, or too many")]
    BadPeerAddress,
    #[error("no XOR-PEER-ADDRESS")]
    MissingPeerAddress,
    #[error("malformed or missing CHANNEL-NUMBER")]
    BadChannelNumber,
    #[error("channel number out of range")]
    ChannelOutOfRange,
}

impl RequestError {
    pub fn code(&self) -> u16 {
        match self {
            RequestError::UnknownAttributes { .. } => 420,
            RequestError::UnsupportedTransport => 442,
            RequestError::UnsupportedFamily => 440,
            _ => 400,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::UnknownAttributes { .. } => "Unknown Attribute",
            RequestError::UnsupportedMethod => "Bad Request: unsupported method",
            RequestError::BadTransport => "Bad Request: REQUESTED-TRANSPORT",
            RequestError::UnsupportedTransport => "Unsupported Transport Protocol",
            RequestError::BadReservationToken => "Bad Request: RESERVATION-TOKEN",
            RequestError::BadEvenPort => "Bad Request: EVEN-PORT",
            RequestError::UnsupportedFamily => "Address Family not Supported",
            RequestError::BadLifetime => "Bad Request: LIFETIME",
            RequestError::BadPeerAddress => "Bad Request: XOR-PEER-ADDRESS",
            RequestError::MissingPeerAddress => "Bad Request: XOR-PEER-ADDRESS required",
            RequestError::BadChannelNumber => "Bad Request: CHANNEL-NUMBER",
            RequestError::ChannelOutOfRange => "Bad Request: channel number out of range",
        }
    }
}

impl ClientRequest {
    /// Types a request (class [`Class::Request`]) by method.
    pub fn parse(msg: &Message<'_>) -> Result<ClientRequest, RequestError> {
        let unknown = msg.unknown_required();
        if !unknown.is_empty() {
            let mut types = [0u16; MAX_UNKNOWN];
            let len = unknown.len().min(MAX_UNKNOWN);
            types[..len].copy_from_slice(&unknown[..len]);
            return Err(RequestError::UnknownAttributes {
                types,
                len: len as u8,
            });
        }
        Ok(match msg.method() {
            method::BINDING => ClientRequest::Binding,
            method::ALLOCATE => ClientRequest::Allocate(AllocateRequest::parse(msg)),
            method::REFRESH => ClientRequest::Refresh(RefreshRequest::parse(msg)),
            method::CREATE_PERMISSION => ClientRequest::CreatePermission(PermissionRequest::parse(msg)),
            method::CHANNEL_BIND => ClientRequest::ChannelBind(ChannelBindRequest::parse(msg)),
            _ => return Err(RequestError::UnsupportedMethod),
        })
    }
}

impl AllocateRequest {
    fn parse(msg: &Message<'_>) -> Result<Self, RequestError> {
        match msg.u32_attr(attr::REQUESTED_TRANSPORT) {
            Ok(Some(v)) if (v >> 24) as u8 == UDP => {}
            Ok(Some(_)) => return Err(RequestError::UnsupportedTransport),
            _ => return Err(RequestError::BadTransport),
        }
        let token = match msg.get(attr::RESERVATION_TOKEN) {
            None => None,
            Some(t)
                if t.len() == 8 && !msg.has(attr::EVEN_PORT) && !msg.has(attr::REQUESTED_ADDRESS_FAMILY) =>
            {
                Some(<[u8; 8]>::try_from(t).expect("length checked"))
            }
            Some(_) => return Err(RequestError::BadReservationToken),
        };
        let (even_port, reserve_next) = match msg.get(attr::EVEN_PORT) {
            None => (false, false),
            Some([flags, ..]) => (true, flags & 0x80 != 0),
            Some([]) => return Err(RequestError::BadEvenPort),
        };
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None | Some([0x01, ..]) => Family::V4,
            Some([0x02, ..]) => Family::V6,
            Some(_) => return Err(RequestError::UnsupportedFamily),
        };
        let lifetime = msg
            .u32_attr(attr::LIFETIME)
            .map_err(|_| RequestError::BadLifetime)?;
        Ok(Self {
            token,
            even_port,
            reserve_next,
            family,
            lifetime,
        })
    }
}

impl RefreshRequest {
    fn parse(msg: &Message<'_>) -> Result<Self, RequestError> {
        Ok(Self {
            lifetime: msg
                .u32_attr(attr::LIFETIME)
                .map_err(|_| RequestError::BadLifetime)?,
            family: msg
                .get(attr::REQUESTED_ADDRESS_FAMILY)
                .map(|f| f.first().copied()),
        })
    }
}

impl PermissionRequest {
    fn parse(msg: &Message<'_>) -> Result<Self, RequestError> {
        let mut peers = [None; MAX_PEERS_PER_REQUEST];
        let mut n = 0;
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            match peer {
                Ok(p) if n < peers.len() => {
                    peers[n] = Some(p);
                    n += 1;
                }
                _ => return Err(RequestError::BadPeerAddress),
            }
        }
        if n == 0 {
            return Err(RequestError::MissingPeerAddress);
        }
        Ok(Self { peers })
    }
}

impl ChannelBindRequest {
    fn parse(msg: &Message<'_>) -> Result<Self, RequestError> {
        let number = match msg.u32_attr(attr::CHANNEL_NUMBER) {
            Ok(Some(v)) => (v >> 16) as u16,
            _ => return Err(RequestError::BadChannelNumber),
        };
        if !(stun::CHANNEL_MIN..=stun::CHANNEL_MAX).contains(&number) {
            return Err(RequestError::ChannelOutOfRange);
        }
        match msg.xor_address(attr::XOR_PEER_ADDRESS) {
            Ok(Some(peer)) => Ok(Self { number, peer }),
            _ => Err(RequestError::BadPeerAddress),
        }
    }
}

impl<'a> SendIndication<'a> {
    /// `None` for a Send indication without a well-formed peer or data (dropped).
    pub fn parse(msg: &Message<'a>) -> Option<Self> {
        match (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA)) {
            (Ok(Some(peer)), Some(data)) => Some(Self { peer, data }),
            _ => None,
        }
    }
}

/// Why a request was refused, with its STUN error code ([`TurnError::code`]) and reason
/// phrase ([`TurnError::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error(transparent)]
    Request(#[from] RequestError),
    /// 401 with a fresh nonce: no or bad credentials.
    #[error("unauthorized")]
    Unauthorized { nonce: [u8; NONCE_LEN] },
    /// 438 with a fresh nonce.
    #[error("stale nonce")]
    StaleNonce { nonce: [u8; NONCE_LEN] },
    #[error("USERNAME, REALM or NONCE missing")]
    MissingCredentials,
    /// Another USERNAME than the allocation of this 5-tuple was made with.
    #[error("wrong credentials")]
    WrongCredentials,
    #[error("client address banned")]
    Banned,
    /// No allocation where one is needed, or one where none may be.
    #[error("allocation mismatch")]
    AllocationMismatch,
    /// The family asked for has no relay address configured.
    #[error("address family not configured")]
    FamilyNotConfigured,
    #[error("peer address family mismatch")]
    PeerFamilyMismatch,
    #[error("peer refused by policy: {0:?}")]
    PeerDenied(Denial),
    #[error("user quota reached")]
    UserQuota,
    #[error("total quota reached")]
    TotalQuota,
    #[error("too many permissions")]
    TooManyPermissions,
    #[error("too many channels")]
    TooManyChannels,
    /// The channel number is bound to another peer, or the peer to another number.
    #[error("channel or peer already bound")]
    ChannelConflict,
    /// No relay socket: the port range is exhausted or the reservation is gone.
    #[error("no relay port or reservation")]
    NoRelay,
    /// The relay socket failed for another reason than capacity.
    #[error("relay socket failed")]
    RelayFailed,
}

impl TurnError {
    pub fn code(&self) -> u16 {
        match self {
            TurnError::Request(e) => e.code(),
            TurnError::Unauthorized { .. } => 401,
            TurnError::StaleNonce { .. } => 438,
            TurnError::MissingCredentials | TurnError::ChannelConflict => 400,
            TurnError::WrongCredentials => 441,
            TurnError::Banned | TurnError::PeerDenied(_) => 403,
            TurnError::AllocationMismatch => 437,
            TurnError::FamilyNotConfigured => 440,
            TurnError::PeerFamilyMismatch => 443,
            TurnError::UserQuota => 486,
            TurnError::TotalQuota
            | TurnError::TooManyPermissions
            | TurnError::TooManyChannels
            | TurnError::NoRelay => 508,
            TurnError::RelayFailed => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            TurnError::Request(e) => e.reason(),
            TurnError::Unauthorized { .. } => "Unauthorized",
            TurnError::StaleNonce { .. } => "Stale Nonce",
            TurnError::MissingCredentials => "Bad Request: USERNAME, REALM and NONCE are required",
            TurnError::WrongCredentials => "Wrong Credentials",
            TurnError::Banned => "Forbidden: client address banned",
            TurnError::AllocationMismatch => "Allocation Mismatch",
            TurnError::FamilyNotConfigured => "Address Family not Supported",
            TurnError::PeerFamilyMismatch => "Peer Address Family Mismatch",
            TurnError::PeerDenied(Denial::PortZero) => "Forbidden: port 0",
            TurnError::PeerDenied(Denial::Denied | Denial::DefaultDenied | Denial::OwnAddress) => {
                "Forbidden: peer address not allowed"
            }
            TurnError::UserQuota => "Allocation Quota Reached",
            TurnError::TotalQuota => "Insufficient Capacity",
            TurnError::TooManyPermissions => "Insufficient Capacity: too many permissions",
            TurnError::TooManyChannels => "Insufficient Capacity: too many channels",
            TurnError::ChannelConflict => "Bad Request: channel or peer already bound",
            TurnError::NoRelay => "Insufficient Capacity: no relay port or reservation",
            TurnError::RelayFailed => "Server Error: relay socket",
        }
    }
}

/// A request's error response: the error, and the key that signs it (none before the
/// request authenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub error: TurnError,
    pub key: Option<LongTermKey>,
}

impl Refusal {
    pub(crate) fn unsigned(error: impl Into<TurnError>) -> Self {
        Self {
            error: error.into(),
            key: None,
        }
    }

    pub(crate) fn signed(error: impl Into<TurnError>, key: &LongTermKey) -> Self {
        Self {
            error: error.into(),
            key: Some(*key),
        }
    }
}

/// A request's success response (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// No response now: a retransmitted Allocate whose bind is in progress, or a first
    /// Allocate answered when its relay is bound ([`super::Command::SendToClient`]).
    Later,
    Binding {
        mapped: SocketAddr,
    },
    Allocated(Allocated),
    Refreshed {
        lifetime: Duration,
        key: LongTermKey,
    },
    /// CreatePermission and ChannelBind: an empty success.
    Done {
        key: LongTermKey,
    },
}

/// An Allocate's success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allocated {
    pub relay: SocketAddr,
    pub lifetime: Duration,
    pub mapped: SocketAddr,
    pub reservation: Option<[u8; 8]>,
    pub key: LongTermKey,
}

/// What a request handler returns.
pub(crate) type Handled = Result<Answer, Refusal>;

/// What a response echoes of its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyTo {
    pub method: u16,
    pub tid: TransactionId,
    pub fingerprint: bool,
}

impl ReplyTo {
    pub(crate) fn of(msg: &Message<'_>) -> Self {
        Self {
            method: msg.method(),
            tid: msg.transaction_id(),
            fingerprint: msg.has_fingerprint(),
        }
    }
}

/// Writes the response to `to` into `out` (cleared first); false (and `out` empty) when
/// there is none. `realm` goes into challenges, `software` into every response.
pub(crate) fn encode(
    to: &ReplyTo,
    outcome: &Handled,
    (realm, software): (&str, Option<&str>),
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let class = match outcome {
        Ok(Answer::Later) => return false,
        Ok(_) => Class::Success,
        Err(_) => Class::Error,
    };
    let mut b = MessageBuilder::new(out, to.method, class, &to.tid);
    let key = match outcome {
        Ok(Answer::Later) => unreachable!("returned above"),
        Ok(Answer::Binding { mapped }) => {
            b.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped);
            None
        }
        Ok(Answer::Allocated(a)) => {
            b.add_xor_address(attr::XOR_RELAYED_ADDRESS, &a.relay)
                .add_u32(attr::LIFETIME, a.lifetime.as_secs() as u32)
                .add_xor_address(attr::XOR_MAPPED_ADDRESS, &a.mapped);
            if let Some(token) = a.reservation {
                b.add(attr::RESERVATION_TOKEN, &token);
            }
            Some(&a.key)
        }
        Ok(Answer::Refreshed { lifetime, key }) => {
            b.add_u32(attr::LIFETIME, lifetime.as_secs() as u32);
            Some(key)
        }
        Ok(Answer::Done { key }) => Some(key),
        Err(r) => {
            b.add_error(r.error.code(), r.error.reason());
            match &r.error {
                TurnError::Unauthorized { nonce } | TurnError::StaleNonce { nonce } => {
                    b.add(attr::REALM, realm.as_bytes()).add(attr::NONCE, nonce);
                }
                TurnError::Request(RequestError::UnknownAttributes { types, len }) => {
                    let mut list = [0u8; 2 * MAX_UNKNOWN];
                    for (i, t) in types[..usize::from(*len)].iter().enumerate() {
                        list[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
                    }
                    b.add(attr::UNKNOWN_ATTRIBUTES, &list[..2 * usize::from(*len)]);
                }
                _ => {}
            }
            r.key.as_ref()
        }
    };
    if let Some(sw) = software {
        b.add(attr::SOFTWARE, sw.as_bytes());
    }
    if let Some(k) = key {
        b.add_integrity(k);
    }
    if to.fingerprint {
        b.add_fingerprint();
    }
    b.finish();
    true
}
