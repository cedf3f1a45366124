//! Which relay ports are held by live allocations of this server.
//!
//! The peer policy lets an allocation send to the server's own relay address only where
//! another allocation listens (two peers relayed by the same box). A host service bound
//! on a port of the relay range is not an allocation: without this registry, a client
//! could reach it through the relay, from the host's own address, past a host firewall.
//!
//! Shared by every shard of a process. A bit per port and family: one relaxed atomic
//! load to check, one atomic OR/AND when an allocation is made or closed (never per
//! packet).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const WORDS: usize = 65_536 / 64;

/// The set of relay ports held by live allocations, per address family.
#[derive(Debug)]
pub struct RelayPorts {
    v4: Box<[AtomicU64]>,
    v6: Box<[AtomicU64]>,
}

impl Default for RelayPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayPorts {
    pub fn new() -> Self {
        let words = || (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        Self {
            v4: words(),
            v6: words(),
        }
    }

    fn slot(&self, relay: &SocketAddr) -> (&AtomicU64, u64) {
        let port = usize::from(relay.port());
        // The family of the address as the peer policy judged it: an IPv4-mapped peer
        // address names an IPv4 relay port.
        let v4 = match relay.ip() {
            std::net::IpAddr::V4(_) => true,
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        let words = if v4 { &self.v4 } else { &self.v6 };
        (&words[port / 64], 1u64 << (port % 64))
    }

    /// Marks the port of `relay` as held by a live allocation.
    pub fn insert(&self, relay: SocketAddr) {
        let (w, bit) = self.slot(&relay);
        w.fetch_or(bit, Relaxed);
    }

    /// The allocation on `relay`'s port is gone.
    pub fn remove(&self, relay: SocketAddr) {
        let (w, bit) = self.slot(&relay);
        w.fetch_and(!bit, Relaxed);
    }

    /// Whether a live allocation holds the port of `peer` (of its family).
    pub fn contains(&self, peer: SocketAddr) -> bool {
        let (w, bit) = self.slot(&peer);
        w.load(Relaxed) & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_kept_per_family() {
        let p = RelayPorts::new();
        let a: SocketAddr = "203.0.113.5:50000".parse().unwrap();
        assert!(!p.contains(a));
        p.insert(a);
        assert!(p.contains(a));
        assert!(p.contains("[::ffff:203.0.113.5]:50000".parse().unwrap()));
        assert!(!p.contains("[2001:db8::5]:50000".parse().unwrap()));
        assert!(!p.contains("203.0.113.5:50001".parse().unwrap()));
        p.insert("203.0.113.5:65535".parse().unwrap());
        p.remove(a);
        assert!(!p.contains(a));
        assert!(p.contains("203.0.113.5:65535".parse().unwrap()));
    }
}
