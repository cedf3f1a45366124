//! Request handlers: each takes a typed request ([`ClientRequest`]) and returns its typed
//! answer or refusal; the dispatcher ([`Server::handle_client_packet`]) writes the bytes.

use std::net::SocketAddr;
use std::time::Duration;

use callbox_core::credentials::LongTermKey;

use super::allocation::{MAX_PERMISSIONS, PeerGate, Pending, Verdict};
use super::auth::Expiry;
use super::message::{
    AllocateRequest, Allocated, Answer, ChannelBindRequest, ClientRequest, Handled, MAX_PEERS_PER_REQUEST,
    PermissionRequest, RefreshRequest, Refusal, RequestError, TurnError,
};
use super::quotas::QuotaError;
use super::types::{AllocId, CloseReason, Command, Event, Family};
use super::{Request, Server};

impl Server {
    pub(super) fn handle_request(&mut self, req: &Request<'_>, request: ClientRequest) -> Handled {
        match request {
            ClientRequest::Binding => {
                self.stats.binding_requests += 1;
                Ok(Answer::Binding { mapped: req.from })
            }
            ClientRequest::Allocate(attrs) => self.allocate(req, attrs),
            ClientRequest::Refresh(attrs) => self.refresh(req, attrs),
            ClientRequest::CreatePermission(attrs) => self.create_permission(req, attrs),
            ClientRequest::ChannelBind(attrs) => self.channel_bind(req, attrs),
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

    fn allocate(&mut self, req: &Request<'_>, attrs: Result<AllocateRequest, RequestError>) -> Handled {
        let msg = req.msg;
        // A retransmitted Allocate gets the same success; any other one is a mismatch.
        if let Some(&id) = self.by_client.get(&(req.from, req.transport)) {
            let Some(a) = self.allocations.get(&id) else {
                // A bind in progress: the retransmission will be answered by its result.
                return Ok(Answer::Later);
            };
            if a.creating_tid == msg.transaction_id() && msg.verify_integrity(&a.key) {
                return Ok(Answer::Allocated(Allocated {
                    relay: a.relay,
                    lifetime: a.expires.saturating_duration_since(req.now),
                    mapped: req.from,
                    reservation: a.reservation,
                    key: a.key,
                }));
            }
        }
        // Before authentication: a banned client costs a scan of the ban list, no HMAC.
        let ip = req.from.ip();
        if self.creds.banned.iter().any(|net| net.contains(ip)) {
            self.stats.allocate_banned += 1;
            return Err(Refusal::unsigned(TurnError::Banned));
        }
        let auth = self.authenticate(req, Expiry::Checked)?;
        let key = auth.key;
        if self.by_client.contains_key(&(req.from, req.transport)) {
            return Err(Refusal::signed(TurnError::AllocationMismatch, &key));
        }
        let attrs = attrs.map_err(|e| Refusal::signed(e, &key))?;
        let relay_ip = match attrs.family {
            Family::V4 => self.cfg.relay_v4,
            Family::V6 => self.cfg.relay_v6,
        };
        let Some(relay_ip) = relay_ip else {
            return Err(Refusal::signed(TurnError::FamilyNotConfigured, &key));
        };
        let lifetime = self
            .clamp_lifetime(attrs.lifetime)
            .min(self.cfg.max_allocation_age);
        // A reservation holds a socket like an allocation does, so it counts like one.
        let quota = self.quotas.acquire(&auth.user).and_then(|()| {
            if attrs.reserve_next {
                self.quotas
                    .acquire(&auth.user)
                    .inspect_err(|_| self.quotas.release(&auth.user))
            } else {
                Ok(())
            }
        });
        if let Err(q) = quota {
            let error = match q {
                QuotaError::User => {
                    self.stats.quota_user += 1;
                    TurnError::UserQuota
                }
                QuotaError::Total => {
                    self.stats.quota_total += 1;
                    TurnError::TotalQuota
                }
            };
            return Err(Refusal::signed(error, &key));
        }
        self.next_id += 1;
        let id = AllocId(self.next_id);
        self.commands.push_back(match attrs.token {
            Some(token) => Command::TakeReservation { id, token },
            None => Command::BindRelay {
                id,
                ip: relay_ip.bind,
                even_port: attrs.even_port,
                reserve_for: attrs.reserve_next.then(|| auth.user.clone()),
            },
        });
        self.pending.insert(
            id,
            Pending {
                client: req.from,
                transport: req.transport,
                tid: msg.transaction_id(),
                username: auth.username,
                user: auth.user,
                key,
                lifetime,
                fingerprint: msg.has_fingerprint(),
                family: attrs.family,
                reserving: attrs.reserve_next,
            },
        );
        self.by_client.insert((req.from, req.transport), id);
        Ok(Answer::Later)
    }

    /// Authenticates a request that needs this 5-tuple's allocation: its id and key, or
    /// the refusal (401/438/441/437).
    fn with_allocation(&mut self, req: &Request<'_>) -> Result<(AllocId, LongTermKey), Refusal> {
        let auth = self.authenticate(req, Expiry::Ignored)?;
        match self.by_client.get(&(req.from, req.transport)) {
            Some(&id) if self.allocations.get(&id).is_some_and(|a| a.expires > req.now) => Ok((id, auth.key)),
            _ => Err(Refusal::signed(TurnError::AllocationMismatch, &auth.key)),
        }
    }

    fn refresh(&mut self, req: &Request<'_>, attrs: Result<RefreshRequest, RequestError>) -> Handled {
        let (id, key) = self.with_allocation(req)?;
        let attrs = attrs.map_err(|e| Refusal::signed(e, &key))?;
        if let Some(fam) = attrs.family {
            let relay_is_v4 = self.allocations[&id].relay.is_ipv4();
            if fam != Some(if relay_is_v4 { 0x01 } else { 0x02 }) {
                return Err(Refusal::signed(TurnError::PeerFamilyMismatch, &key));
            }
        }
        let lifetime = if attrs.lifetime == Some(0) {
            self.close(id, CloseReason::Deleted);
            Duration::ZERO
        } else {
            let lifetime = self.clamp_lifetime(attrs.lifetime);
            let age = self.cfg.max_allocation_age;
            let a = self.allocations.get_mut(&id).expect("checked above");
            let lifetime = lifetime.min((a.created + age).saturating_duration_since(req.now));
            a.expires = req.now + lifetime;
            a.lifetime = lifetime;
            self.events.push_back(Event::Refreshed { id, lifetime });
            lifetime
        };
        Ok(Answer::Refreshed { lifetime, key })
    }

    /// Checks a peer address for CreatePermission and ChannelBind (443/403): the policy's
    /// verdict, kept with the permission or channel.
    fn check_peer(&mut self, id: AllocId, peer: SocketAddr, key: &LongTermKey) -> Result<Verdict, Refusal> {
        if Family::of(&peer) != Family::of(&self.allocations[&id].relay) {
            return Err(Refusal::signed(TurnError::PeerFamilyMismatch, key));
        }
        let gate = PeerGate {
            policy: &self.policy,
            relay_ports: &self.relay_ports,
            bandwidth_limit: self.cfg.bandwidth_limit,
        };
        gate.check(peer).map_err(|d| {
            self.stats.denied_peers += 1;
            Refusal::signed(TurnError::PeerDenied(d), key)
        })
    }

    fn create_permission(
        &mut self,
        req: &Request<'_>,
        attrs: Result<PermissionRequest, RequestError>,
    ) -> Handled {
        let (id, key) = self.with_allocation(req)?;
        let attrs = attrs.map_err(|e| Refusal::signed(e, &key))?;
        // All or nothing: every peer is checked before any permission is installed.
        let mut verdicts = [None; MAX_PEERS_PER_REQUEST];
        for (slot, peer) in verdicts.iter_mut().zip(attrs.peers()) {
            *slot = Some((peer, self.check_peer(id, peer, &key)?));
        }
        let a = self.allocations.get_mut(&id).expect("checked");
        let new = attrs.peers().filter(|p| !a.has_permission(p.ip())).count();
        a.permissions.retain(|p| p.expires > req.now);
        if a.permissions.len() + new > MAX_PERMISSIONS {
            return Err(Refusal::signed(TurnError::TooManyPermissions, &key));
        }
        for (peer, verdict) in verdicts.into_iter().flatten() {
            a.install_permission(peer, verdict, req.now);
        }
        Ok(Answer::Done { key })
    }

    fn channel_bind(
        &mut self,
        req: &Request<'_>,
        attrs: Result<ChannelBindRequest, RequestError>,
    ) -> Handled {
        let (id, key) = self.with_allocation(req)?;
        let ChannelBindRequest { number, peer } = attrs.map_err(|e| Refusal::signed(e, &key))?;
        let verdict = self.check_peer(id, peer, &key)?;
        let a = self.allocations.get_mut(&id).expect("checked");
        a.channels.retain(|c| c.expires > req.now);
        // Both limits are checked before anything changes, so a refusal leaves no trace.
        if !a.has_permission(peer.ip()) && a.permissions.len() >= MAX_PERMISSIONS {
            return Err(Refusal::signed(TurnError::TooManyPermissions, &key));
        }
        a.bind_channel(number, peer, verdict, req.now)
            .map_err(|e| Refusal::signed(e, &key))?;
        a.install_permission(peer, verdict, req.now);
        Ok(Answer::Done { key })
    }
}
