//! The TURN server state machine (RFC 8656 over RFC 8489).
//!
//! One `Server` owns a shard of the allocations: the driver runs one per data path thread,
//! and the kernel's SO_REUSEPORT hashing keeps each client 5-tuple on one shard. Shards
//! share only [`Quotas`] (touched when allocations are made and freed), the credentials
//! snapshot and the peer policy.
//!
//! This module is the data path: the dispatcher ([`Server::handle_client_packet`]),
//! ChannelData and Send indications to peers, packets from peers
//! ([`Server::handle_peer_packet`]) and the timer. The rest lives beside it: `types`
//! (what goes in and out), `quotas`, `message` (requests typed, responses encoded),
//! `auth`, `requests` (the handlers), `allocation` (allocations, permissions, channels,
//! the peer policy's verdicts) and `admin` (kicks and listings).
//!
//! Packet path: [`Server::handle_client_packet`] and [`Server::handle_peer_packet`]
//! allocate nothing for ChannelData, Send and Data indications: payloads are borrowed from
//! the caller's receive buffer, and Data indications and ChannelData headers are written
//! in front of the payload in that buffer. The peer policy is not scanned per packet: each
//! permission and channel keeps the verdict it was installed with and the policy version
//! it was taken at, and is judged again only when [`Server::set_policy`] changed it.
//!
//! Architecture invariant: nothing is stored for a request that has not passed
//! MESSAGE-INTEGRITY; unauthenticated input only ever gets a reply.
//!
//! Admin hooks: [`Credentials::banned`] refuses Allocates from client networks (403, before
//! authentication), [`Server::kick_clients`], [`Server::kick_user`] and [`Server::kick`]
//! close live allocations, and [`Server::allocations`] lists them.

mod admin;
mod allocation;
mod auth;
mod message;
mod quotas;
mod requests;
mod types;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox_core::policy::PeerPolicy;

use self::allocation::{Allocation, Dropped, PeerGate, Pending, VersionedPolicy};
use self::message::{Refusal, ReplyTo, encode};
use crate::nonce::NonceMaker;
use crate::relay_ports::RelayPorts;
use crate::source_limit::SourceLimiter;
use crate::stun::{self, Class, Message, method, parse_channel_data};

pub use self::message::{
    AllocateRequest, ChannelBindRequest, ClientRequest, PermissionRequest, RefreshRequest, RequestError,
    SendIndication, TurnError,
};
pub use self::quotas::{QuotaError, Quotas};
pub use self::types::{
    AllocId, AllocationInfo, AuthFailure, ClientAction, CloseReason, Command, Credentials, Event, Family,
    PEER_HEADROOM, PEER_TAILROOM, PeerAction, RESERVATION_LIFETIME, RelayBindError, RelayIp, ServerConfig,
    Stats, Traffic, Transport,
};

const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One request as its handler sees it: the message, where it came from and when.
pub(crate) struct Request<'m> {
    pub from: SocketAddr,
    pub transport: Transport,
    pub now: Instant,
    pub unix_now: u64,
    pub msg: &'m Message<'m>,
}

/// One shard of the TURN server.
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    nonces: NonceMaker,
    epoch: Instant,
    creds: Arc<Credentials>,
    policy: VersionedPolicy,
    quotas: Arc<Quotas>,
    relay_ports: Arc<RelayPorts>,
    unauthenticated: SourceLimiter,
    allocations: HashMap<AllocId, Allocation>,
    /// Allocations by their client's address and transport (the server's side of the
    /// 5-tuple is the listener, the same for every client of a shard's socket).
    by_client: HashMap<(SocketAddr, Transport), AllocId>,
    pending: HashMap<AllocId, Pending>,
    next_id: u64,
    indication_counter: u64,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    stats: Stats,
    next_sweep: Instant,
}

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
            policy: VersionedPolicy::new(policy),
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

    /// Installs a new peer policy. Live permissions and channels are judged again under
    /// it at their next packet (not at once, and not on every packet).
    pub fn set_policy(&mut self, policy: Arc<PeerPolicy>) {
        self.policy.replace(policy);
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

    /// Handles one datagram from a UDP client ([`Server::handle_client_message`] over UDP).
    pub fn handle_client_packet<'a>(
        &mut self,
        from: SocketAddr,
        packet: &'a [u8],
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        self.handle_client_message(from, Transport::Udp, packet, now, unix_now, reply)
    }

    /// Handles one message from a client: a datagram, or one frame of a TCP/TLS stream
    /// (ChannelData given without its padding). A response is written to `reply` (cleared
    /// first), the one place a request's typed outcome becomes bytes.
    pub fn handle_client_message<'a>(
        &mut self,
        from: SocketAddr,
        transport: Transport,
        packet: &'a [u8],
        now: Instant,
        unix_now: u64,
        reply: &mut Vec<u8>,
    ) -> ClientAction<'a> {
        reply.clear();
        let client = (from, transport);
        let msg = match packet.first() {
            Some(0x40..=0x7F) => return self.client_channel_data(client, packet, now),
            Some(0x00..=0x03) => Message::parse(packet),
            _ => {
                self.stats.dropped_packets += 1;
                return ClientAction::None;
            }
        };
        let Ok(msg) = msg else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        match msg.class() {
            Class::Indication if msg.method() == method::SEND => {
                self.send_indication(client, SendIndication::parse(&msg), now)
            }
            Class::Request => {
                // A request from a 5-tuple without an allocation is answered without
                // integrity (Binding, 401, errors) or starts one: spoofable, so each
                // source gets a bounded number of answers.
                if !self.by_client.contains_key(&client) && !self.unauthenticated.allow(from.ip(), now) {
                    self.stats.unauthenticated_drops += 1;
                    return ClientAction::None;
                }
                let req = Request {
                    from,
                    transport,
                    now,
                    unix_now,
                    msg: &msg,
                };
                let outcome = match ClientRequest::parse(&msg) {
                    Ok(request) => self.handle_request(&req, request),
                    Err(e) => Err(Refusal::unsigned(e)),
                };
                if encode(&ReplyTo::of(&msg), &outcome, self.cfg.reply_settings(), reply) {
                    ClientAction::Reply
                } else {
                    ClientAction::None
                }
            }
            // Other indications, and responses from a client, are not expected: drop.
            Class::Indication | Class::Success | Class::Error => ClientAction::None,
        }
    }

    fn client_channel_data<'a>(
        &mut self,
        from: (SocketAddr, Transport),
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
        let gate = PeerGate {
            policy: &self.policy,
            relay_ports: &self.relay_ports,
            bandwidth_limit: self.cfg.bandwidth_limit,
        };
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return ClientAction::None;
        };
        let routed = alloc.channel_to_peer(number, &gate, payload.len(), now);
        self.relayed(id, routed, payload)
    }

    fn send_indication<'a>(
        &mut self,
        from: (SocketAddr, Transport),
        send: Option<SendIndication<'a>>,
        now: Instant,
    ) -> ClientAction<'a> {
        let Some(&id) = self.by_client.get(&from) else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let Some(SendIndication { peer, data }) = send else {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        };
        let gate = PeerGate {
            policy: &self.policy,
            relay_ports: &self.relay_ports,
            bandwidth_limit: self.cfg.bandwidth_limit,
        };
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return ClientAction::None;
        };
        if Family::of(&peer) != Family::of(&alloc.relay) {
            self.stats.dropped_packets += 1;
            return ClientAction::None;
        }
        let routed = alloc.send_to_peer(peer, &gate, data.len(), now).map(|()| peer);
        self.relayed(id, routed, data)
    }

    /// Counts a packet for a peer as relayed or dropped.
    fn relayed<'a>(
        &mut self,
        id: AllocId,
        routed: Result<SocketAddr, Dropped>,
        payload: &'a [u8],
    ) -> ClientAction<'a> {
        match routed {
            Ok(peer) => {
                self.stats.traffic.packets_to_peer += 1;
                self.stats.traffic.bytes_to_peer += payload.len() as u64;
                ClientAction::Relay { id, peer, payload }
            }
            Err(why) => {
                match why {
                    Dropped::NoRoute => self.stats.dropped_packets += 1,
                    Dropped::Denied => self.stats.denied_peers += 1,
                    Dropped::OverBandwidth => self.stats.bandwidth_drops += 1,
                }
                ClientAction::None
            }
        }
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
        if self.policy.policy().is_own_relay(from) && !self.relay_ports.contains(from) {
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
            // Over a stream the data is padded to a multiple of 4, with zeros (the length
            // field keeps the unpadded length); the tailroom holds the padding.
            let end = if alloc.transport.is_stream() {
                head + ((len + 3) & !3)
            } else {
                head + len
            };
            buf[head + len..end].fill(0);
            (start, end)
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
            transport: alloc.transport,
            start,
            end,
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
            a.sweep(now);
        }
    }
}

#[cfg(test)]
mod tests;
