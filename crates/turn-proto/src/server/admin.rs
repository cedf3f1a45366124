//! Admin hooks: what the operator (through the driver's control channel) does to live
//! allocations. None of them touches the packet path: a banned client's existing
//! allocations are closed by a kick, not by a check per packet.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

#[cfg(doc)]
use callbox_core::policy::Cidr;

use super::Server;
use super::types::{AllocId, AllocationInfo, CloseReason, Transport};

impl Server {
    /// Closes an allocation on the operator's request. Returns whether it existed here.
    pub fn kick(&mut self, id: AllocId) -> bool {
        let existed = self.allocations.contains_key(&id);
        self.close(id, CloseReason::Kicked);
        existed
    }

    /// Whether `client` over `transport` has an allocation (or an Allocate in progress).
    pub fn has_client(&self, client: SocketAddr, transport: Transport) -> bool {
        self.by_client.contains_key(&(client, transport))
    }

    /// The stream (TCP, TLS) of `client` closed: its allocation ends at once, and an
    /// Allocate still waiting for its relay socket is dropped (the socket is closed when it
    /// arrives). Returns whether there was either.
    pub fn client_gone(&mut self, client: SocketAddr, transport: Transport) -> bool {
        let Some(id) = self.by_client.remove(&(client, transport)) else {
            return false;
        };
        if let Some(p) = self.pending.remove(&id) {
            self.quotas.release(&p.user);
            return true;
        }
        self.close(id, CloseReason::Disconnected);
        true
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
                transport: a.transport,
                relay: a.relay,
                age: now.saturating_duration_since(a.created),
                expires_in: a.expires.saturating_duration_since(now),
                permissions: a
                    .permissions
                    .iter()
                    .filter(|p| p.expires > now)
                    .map(|p| p.ip)
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
}
