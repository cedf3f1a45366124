//! Failed token checks per client address, and the lockout past a limit.
//!
//! Keyed by unauthenticated input (the client address; an IPv6 client by its /64), so
//! the table is bounded: at most [`MAX_ENTRIES`] addresses. When it is full, the oldest
//! entry that is not locked out makes room; a locked-out address is never forgotten early
//! (a spray of single failures from other addresses must not release it). When every
//! entry is locked out, addresses not in the table are refused too until the first
//! lockout ends: fail closed, since the admin API is for the operator, who can wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use callbox_core::limit_key;

/// Most addresses remembered.
pub const MAX_ENTRIES: usize = 4096;
/// The window failures are counted over, which is also how long a lockout lasts.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// The failure table of the admin listener.
#[derive(Debug)]
pub struct Lockout {
    limit: u32,
    max_entries: usize,
    map: Mutex<HashMap<IpAddr, Window>>,
}

impl Lockout {
    /// Locks an address out after `limit` failures in a window.
    pub fn new(limit: u32) -> Self {
        Self::with_capacity(limit, MAX_ENTRIES)
    }

    fn with_capacity(limit: u32, max_entries: usize) -> Self {
        Self {
            limit,
            max_entries,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        limit_key(ip, callbox_core::limit_key::DEFAULT_IPV6_PREFIX)
    }

    fn locked(&self, w: &Window, now: Instant) -> bool {
        w.count >= self.limit && w.start + WINDOW > now
    }

    /// Seconds until `ip` may try again, if it is locked out (or the table is full of
    /// locked-out addresses).
    pub fn limited(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let until = |w: &Window| (w.start + WINDOW).saturating_duration_since(now).as_secs().max(1);
        match map.get(&Self::key(ip)) {
            Some(w) => self.locked(w, now).then(|| until(w)),
            None if map.len() >= self.max_entries && map.values().all(|w| self.locked(w, now)) => {
                map.values().map(until).min()
            }
            None => None,
        }
    }

    /// Counts a failed token check; true for the first failure of a window (logged).
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = Self::key(ip);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(&ip) {
            map.retain(|_, w| w.start + WINDOW > now);
            if map.len() >= self.max_entries {
                let oldest_unlocked = map
                    .iter()
                    .filter(|(_, w)| !self.locked(w, now))
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| *k);
                match oldest_unlocked {
                    Some(k) => {
                        map.remove(&k);
                    }
                    // Every entry is locked out: `limited` refuses newcomers meanwhile.
                    None => return false,
                }
            }
        }
        let w = map.entry(ip).or_insert(Window { start: now, count: 0 });
        if w.start + WINDOW <= now {
            *w = Window { start: now, count: 0 };
        }
        w.count += 1;
        w.count == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC633_6400 + i))
    }

    #[test]
    fn a_locked_address_stays_locked_while_others_spray_single_failures() {
        let l = Lockout::with_capacity(3, 16);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.failed(ip(0), t0);
        }
        assert!(l.limited(ip(0), t0).is_some());
        // Ten times the table's size of other addresses, one failure each.
        for i in 1..=160 {
            l.failed(ip(i), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(
            l.limited(ip(0), t0 + Duration::from_secs(1)).is_some(),
            "still locked"
        );
        assert!(
            l.limited(ip(0), t0 + WINDOW).is_none(),
            "released when its window ends"
        );
    }

    #[test]
    fn a_table_full_of_lockouts_refuses_newcomers_until_the_first_ends() {
        let l = Lockout::with_capacity(2, 4);
        let t0 = Instant::now();
        for i in 0..4 {
            for _ in 0..2 {
                l.failed(ip(i), t0 + Duration::from_secs(u64::from(i)));
            }
        }
        let t = t0 + Duration::from_secs(10);
        assert!(!l.failed(ip(9), t), "not tracked");
        assert_eq!(l.limited(ip(9), t), Some(50));
        assert!(l.limited(ip(9), t0 + WINDOW).is_none());
    }

    #[test]
    fn an_ipv6_64_is_one_address() {
        let l = Lockout::with_capacity(2, 16);
        let t0 = Instant::now();
        l.failed("2001:db8:0:1::1".parse().unwrap(), t0);
        l.failed("2001:db8:0:1::2".parse().unwrap(), t0);
        assert!(l.limited("2001:db8:0:1::ffff".parse().unwrap(), t0).is_some());
        assert!(l.limited("2001:db8:0:2::1".parse().unwrap(), t0).is_none());
    }
}
