//! Allocations and what they hold: permissions and channels with the peer policy's
//! verdict each was checked at, the bandwidth buckets, and the lifecycle from the bind the
//! driver does ([`Server::relay_bound`]) to [`Server::close`].
//!
//! The peer policy is judged when a permission or channel is installed and again only when
//! the policy's version changes ([`VersionedPolicy`]): a relayed packet compares two
//! numbers instead of scanning every CIDR. Whether one of our own relay ports is held by a
//! live allocation changes without the policy, so that part is settled on every packet
//! (one relaxed atomic load, [`RelayPorts::contains`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callbox_core::credentials::LongTermKey;
use callbox_core::policy::{Denial, Peer, PeerPolicy};

use super::Server;
use super::message::{Allocated, Answer, Refusal, ReplyTo, TurnError, encode};
use super::quotas::TokenBucket;
use super::types::Transport;
use super::types::{AllocId, CloseReason, Command, Event, Family, RelayBindError, Traffic};
use crate::relay_ports::RelayPorts;
use crate::stun::{TransactionId, method};

pub(super) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub(super) const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
pub(super) const MAX_PERMISSIONS: usize = 128;
pub(super) const MAX_CHANNELS: usize = 128;

/// The peer policy held by a shard, with a version that changes whenever it is replaced.
#[derive(Debug)]
pub(super) struct VersionedPolicy {
    policy: Arc<PeerPolicy>,
    version: u64,
}

impl VersionedPolicy {
    pub(super) fn new(policy: Arc<PeerPolicy>) -> Self {
        Self { policy, version: 0 }
    }

    /// Installs a new policy: every verdict taken under the old one is judged again at its
    /// next packet.
    pub(super) fn replace(&mut self, policy: Arc<PeerPolicy>) {
        self.policy = policy;
        self.version += 1;
    }

    pub(super) fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    fn verdict(&self, peer: SocketAddr) -> Verdict {
        Verdict {
            version: self.version,
            port: peer.port(),
            result: self.policy.check(peer),
        }
    }
}

/// The policy's answer for one peer address (its port included: the policy refuses some
/// ports of some addresses), as of one policy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    version: u64,
    port: u16,
    result: Result<Peer, Denial>,
}

/// What the peer of a relayed packet or a new permission is checked against, borrowed from
/// the server for one call.
pub(super) struct PeerGate<'s> {
    pub policy: &'s VersionedPolicy,
    pub relay_ports: &'s RelayPorts,
    /// Bytes per second per allocation and direction; 0 = unlimited.
    pub bandwidth_limit: u64,
}

impl PeerGate<'_> {
    /// Judges `peer` for a new permission or channel: the verdict to keep, or the refusal.
    pub(super) fn check(&self, peer: SocketAddr) -> Result<Verdict, Denial> {
        let verdict = self.policy.verdict(peer);
        settle(verdict.result, self.relay_ports, peer).map(|()| verdict)
    }

    /// Judges `peer` for a packet: the kept verdict unless the policy changed since (or it
    /// was taken for another port of the address, which a Send indication may name).
    fn admits(&self, kept: &mut Verdict, peer: SocketAddr) -> Result<(), Denial> {
        if kept.version != self.policy.version || kept.port != peer.port() {
            *kept = self.policy.verdict(peer);
        }
        settle(kept.result, self.relay_ports, peer)
    }
}

/// The policy's verdict with its own-relay case settled: allowed only where a live
/// allocation of this process holds the port.
fn settle(result: Result<Peer, Denial>, relay_ports: &RelayPorts, peer: SocketAddr) -> Result<(), Denial> {
    match result? {
        Peer::Remote => Ok(()),
        Peer::OwnRelay if relay_ports.contains(peer) => Ok(()),
        Peer::OwnRelay => Err(Denial::OwnAddress),
    }
}

/// Why a packet to a peer was not relayed (each has its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// No live allocation, permission or channel for it.
    NoRoute,
    /// Refused by the peer policy.
    Denied,
    /// Past the bandwidth cap.
    OverBandwidth,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
    verdict: Verdict,
}

#[derive(Debug)]
pub(super) struct Allocation {
    pub client: SocketAddr,
    pub transport: Transport,
    pub username: String,
    /// The quota key: the REST user id part, or the static user's name.
    pub user: String,
    pub key: LongTermKey,
    pub relay: SocketAddr,
    pub created: Instant,
    pub expires: Instant,
    pub creating_tid: TransactionId,
    /// The RESERVATION-TOKEN its success response carried, for retransmissions.
    pub reservation: Option<[u8; 8]>,
    pub lifetime: Duration,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    pub traffic: Traffic,
    to_peer_bucket: TokenBucket,
    pub to_client_bucket: TokenBucket,
}

impl Allocation {
    pub(super) fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    pub(super) fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.iter().any(|p| p.ip == ip)
    }

    /// Checks ChannelData on channel `number` of `len` bytes; the peer it goes to.
    pub(super) fn channel_to_peer(
        &mut self,
        number: u16,
        gate: &PeerGate<'_>,
        len: usize,
        now: Instant,
    ) -> Result<SocketAddr, Dropped> {
        let ch = self
            .channels
            .iter_mut()
            .find(|c| c.number == number && c.expires > now)
            .ok_or(Dropped::NoRoute)?;
        let peer = ch.peer;
        let permitted = self
            .permissions
            .iter()
            .any(|p| p.ip == peer.ip() && p.expires > now);
        if self.expires <= now || !permitted {
            return Err(Dropped::NoRoute);
        }
        gate.admits(&mut ch.verdict, peer).map_err(|_| Dropped::Denied)?;
        self.take_to_peer(gate, len, now)?;
        Ok(peer)
    }

    /// Checks a Send indication's `len` bytes for `peer`.
    pub(super) fn send_to_peer(
        &mut self,
        peer: SocketAddr,
        gate: &PeerGate<'_>,
        len: usize,
        now: Instant,
    ) -> Result<(), Dropped> {
        if self.expires <= now {
            return Err(Dropped::NoRoute);
        }
        let perm = self
            .permissions
            .iter_mut()
            .find(|p| p.ip == peer.ip() && p.expires > now)
            .ok_or(Dropped::NoRoute)?;
        gate.admits(&mut perm.verdict, peer)
            .map_err(|_| Dropped::Denied)?;
        self.take_to_peer(gate, len, now)
    }

    fn take_to_peer(&mut self, gate: &PeerGate<'_>, len: usize, now: Instant) -> Result<(), Dropped> {
        let n = len as u64;
        if gate.bandwidth_limit > 0 && !self.to_peer_bucket.take(now, gate.bandwidth_limit, n) {
            return Err(Dropped::OverBandwidth);
        }
        self.traffic.packets_to_peer += 1;
        self.traffic.bytes_to_peer += n;
        Ok(())
    }

    /// Installs or refreshes the permission for `peer`'s address, with the verdict it was
    /// just checked at.
    pub(super) fn install_permission(&mut self, peer: SocketAddr, verdict: Verdict, now: Instant) {
        let ip = peer.ip();
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => {
                p.expires = now + PERMISSION_LIFETIME;
                p.verdict = verdict;
            }
            None => self.permissions.push(Permission {
                ip,
                expires: now + PERMISSION_LIFETIME,
                verdict,
            }),
        }
    }

    /// Binds channel `number` to `peer` (or refreshes that binding).
    pub(super) fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        verdict: Verdict,
        now: Instant,
    ) -> Result<(), TurnError> {
        let by_number = self.channels.iter().position(|c| c.number == number);
        let by_peer = self.channels.iter().position(|c| c.peer == peer);
        match (by_number, by_peer) {
            (Some(i), Some(j)) if i == j => {
                self.channels[i].expires = now + CHANNEL_LIFETIME;
                self.channels[i].verdict = verdict;
            }
            (None, None) if self.channels.len() < MAX_CHANNELS => self.channels.push(Channel {
                number,
                peer,
                expires: now + CHANNEL_LIFETIME,
                verdict,
            }),
            (None, None) => return Err(TurnError::TooManyChannels),
            _ => return Err(TurnError::ChannelConflict),
        }
        Ok(())
    }

    /// Drops expired permissions and channels.
    pub(super) fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}

/// An Allocate waiting for the driver's bind.
#[derive(Debug)]
pub(super) struct Pending {
    pub client: SocketAddr,
    pub transport: Transport,
    pub tid: TransactionId,
    pub username: String,
    pub user: String,
    pub key: LongTermKey,
    pub lifetime: Duration,
    pub fingerprint: bool,
    pub family: Family,
    /// The Allocate asked for a reservation, which holds a second unit of the quota.
    pub reserving: bool,
}

impl Server {
    /// The driver's answer to [`Command::BindRelay`] and [`Command::TakeReservation`]: the
    /// bound local address, or why there is none. Queues the Allocate response as
    /// [`Command::SendToClient`].
    pub fn relay_bound(&mut self, id: AllocId, bound: Result<SocketAddr, RelayBindError>, now: Instant) {
        self.relay_bound_reserved(id, bound, None, now);
    }

    /// [`Server::relay_bound`] for a bind that also reserved the next port under
    /// `reservation`, which the success response carries as RESERVATION-TOKEN.
    pub fn relay_bound_reserved(
        &mut self,
        id: AllocId,
        bound: Result<SocketAddr, RelayBindError>,
        reservation: Option<[u8; 8]>,
        now: Instant,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            if bound.is_ok() {
                self.commands.push_back(Command::CloseRelay { id });
            }
            return;
        };
        // The reservation's unit of quota now belongs to the driver's reservation (it
        // gives it back when the token is taken or expires), or to nobody.
        if p.reserving && (reservation.is_none() || bound.is_err()) {
            self.quotas.release(&p.user);
        }
        // A reserved socket may be of another family than the Allocate asked for (the
        // request with a token names none): the bound address decides.
        let family = bound.as_ref().map_or(p.family, Family::of);
        let relay_cfg = match family {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        };
        let to = ReplyTo {
            method: method::ALLOCATE,
            tid: p.tid,
            fingerprint: p.fingerprint,
        };
        let (client, transport) = (p.client, p.transport);
        let outcome = match (bound, relay_cfg) {
            (Ok(local), Some(relay_cfg)) => {
                let relay = SocketAddr::new(relay_cfg.advertise, local.port());
                let allocated = Allocated {
                    relay,
                    lifetime: p.lifetime,
                    mapped: p.client,
                    reservation,
                    key: p.key,
                };
                self.install_allocation(id, p, relay, reservation, now);
                Ok(Answer::Allocated(allocated))
            }
            (bound, _) => {
                self.quotas.release(&p.user);
                self.by_client.remove(&(p.client, p.transport));
                let error = match bound {
                    Err(e) if !e.is_capacity() => TurnError::RelayFailed,
                    _ => TurnError::NoRelay,
                };
                Err(Refusal::signed(error, &p.key))
            }
        };
        let mut bytes = Vec::new();
        encode(&to, &outcome, self.cfg.reply_settings(), &mut bytes);
        self.commands.push_back(Command::SendToClient {
            to: client,
            transport,
            bytes,
        });
    }

    fn install_allocation(
        &mut self,
        id: AllocId,
        p: Pending,
        relay: SocketAddr,
        reservation: Option<[u8; 8]>,
        now: Instant,
    ) {
        self.relay_ports.insert(relay);
        self.stats.allocations_created += 1;
        self.stats.created_by_transport[p.transport.index()] += 1;
        self.stats.live_by_transport[p.transport.index()] += 1;
        self.events.push_back(Event::Created {
            id,
            username: p.username.clone(),
            client: p.client,
            transport: p.transport,
            relay,
            lifetime: p.lifetime,
        });
        self.allocations.insert(
            id,
            Allocation {
                client: p.client,
                transport: p.transport,
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

    /// Ends an allocation: its quota, relay port and socket are given back and its Closed
    /// event queued.
    pub(super) fn close(&mut self, id: AllocId, reason: CloseReason) {
        if let Some(a) = self.allocations.remove(&id) {
            self.by_client.remove(&(a.client, a.transport));
            self.stats.live_by_transport[a.transport.index()] -= 1;
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
}
