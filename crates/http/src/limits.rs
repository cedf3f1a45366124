//! Connection counts per address and per listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbox_core::limit_key;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Connections one address (an IPv6 prefix) holds at once.
    pub max_per_address: usize,
    /// IPv6 clients count under this many leading bits.
    pub ipv6_prefix: u8,
    /// Time a connection has to send a whole request head.
    pub header_timeout: Duration,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds [`Limits::max_per_address`] connections.
    PerAddress,
    /// The listener holds [`Limits::max_connections`].
    Total,
}

/// The live counts of one listener.
#[derive(Debug)]
pub struct ConnectionLimits {
    limits: Limits,
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<ConnectionLimits>,
    key: IpAddr,
}

impl ConnectionLimits {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses with connections now (the size of the per-address table).
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    /// Connections held now by `ip`'s address (or prefix).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.lock()
            .get(&limit_key(ip, self.limits.ipv6_prefix))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, or says which cap it is past.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let key = limit_key(ip, self.limits.ipv6_prefix);
        let mut map = self.lock();
        if self.total.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let n = map.entry(key).or_insert(0);
        if *n >= self.limits.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            owner: Arc::clone(self),
            key,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.owner.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        self.owner.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(Limits {
            max_connections: total,
            max_per_address: per,
            ipv6_prefix: 64,
            header_timeout: Duration::from_secs(1),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_then_total_and_slots_come_back() {
        let l = limits(4, 2);
        let a1 = l.admit(ip("192.0.2.1")).unwrap();
        let _a2 = l.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(l.admit(ip("192.0.2.1")).unwrap_err(), Refusal::PerAddress);
        let _b1 = l.admit(ip("192.0.2.2")).unwrap();
        let _b2 = l.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(l.admit(ip("192.0.2.4")).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(l.open(), 3);
        let _a3 = l.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(l.open_from(ip("192.0.2.1")), 2);
    }

    #[test]
    fn an_ipv6_prefix_is_one_address_and_entries_go_with_their_connections() {
        let l = limits(100, 3);
        let held: Vec<Permit> = (1..=3)
            .map(|i| l.admit(ip(&format!("2001:db8:0:1::{i}"))).unwrap())
            .collect();
        assert_eq!(
            l.admit(ip("2001:db8:0:1:ffff::9")).unwrap_err(),
            Refusal::PerAddress
        );
        assert!(l.admit(ip("2001:db8:0:2::1")).is_ok());
        assert_eq!(l.addresses(), 1, "the permit just dropped took its entry along");
        drop(held);
        assert_eq!((l.open(), l.addresses()), (0, 0));
    }
}
