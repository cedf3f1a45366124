//! Connections per client address (IPv6 by prefix): the cap checked at admission and the
//! per-address message window shared by the address's peers.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Hub, lock};
use crate::rate::AddrRate;

/// Per-address state: live connections and the message window. An entry exists only
/// while its address has connections, so the table is bounded by connections.
#[derive(Default)]
pub(super) struct AddrEntry {
    conns: usize,
    pub(super) rate: Arc<AddrRate>,
}

impl Hub {
    pub(super) fn addr_key(&self, addr: IpAddr) -> IpAddr {
        callbox_core::limit_key(addr, self.cfg.ipv6_prefix)
    }

    /// Counts a connection from `addr`; false when it already has `max`.
    pub fn connect_address(&self, addr: IpAddr, max: usize) -> bool {
        let addr = self.addr_key(addr);
        let mut addrs = lock(&self.addrs);
        let e = addrs.entry(addr).or_default();
        if e.conns >= max {
            if e.conns == 0 {
                addrs.remove(&addr);
            }
            return false;
        }
        e.conns += 1;
        true
    }

    pub fn disconnect_address(&self, addr: IpAddr) {
        let addr = self.addr_key(addr);
        let mut addrs = lock(&self.addrs);
        if let Some(e) = addrs.get_mut(&addr) {
            e.conns -= 1;
            if e.conns == 0 {
                addrs.remove(&addr);
            }
        }
    }

    /// Connections counted for `addr`.
    pub fn address_conns(&self, addr: IpAddr) -> usize {
        lock(&self.addrs).get(&self.addr_key(addr)).map_or(0, |e| e.conns)
    }

    /// Live per-address entries (bounded by connections).
    pub fn address_entries(&self) -> usize {
        lock(&self.addrs).len()
    }
}
