//! A token bucket per source address for answers to requests that carry no allocation:
//! Binding, 401 challenges and the errors sent before authentication.
//!
//! Over UDP the source is spoofable, so such answers are a reflection tool: a 20-byte
//! request gets a 100-byte 401. A source past its bucket gets no answer, which caps what
//! any one victim address can be sent, whatever the attacker's rate.
//!
//! Nothing keyed by unauthenticated input may grow without bound, so the buckets are a
//! fixed table indexed by a keyed hash of the source (IPv6 cut to a prefix): sources that
//! collide share a bucket. The hash key comes from the caller's secret, so an attacker
//! cannot aim at a victim's slot.

use std::net::IpAddr;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use callbox_core::limit_key;

/// Buckets in one table (a power of two).
pub const SLOTS: usize = 8192;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Tokens in thousandths.
    milli: u32,
    /// When it was last refilled, in milliseconds since the table's epoch.
    last_ms: u32,
}

/// Per-source answer budget: `rate` per second with bursts of `burst`.
#[derive(Debug)]
pub struct SourceLimiter {
    slots: Box<[Slot]>,
    key: [u64; 2],
    epoch: Instant,
    rate: u32,
    burst_milli: u32,
    ipv6_prefix: u8,
}

impl SourceLimiter {
    /// `rate` 0 turns the limit off.
    pub fn new(rate: u32, burst: u32, ipv6_prefix: u8, key: [u64; 2], epoch: Instant) -> Self {
        let burst_milli = burst.saturating_mul(1000);
        Self {
            slots: vec![
                Slot {
                    milli: burst_milli,
                    last_ms: 0
                };
                if rate == 0 { 0 } else { SLOTS }
            ]
            .into_boxed_slice(),
            key,
            epoch,
            rate,
            burst_milli,
            ipv6_prefix,
        }
    }

    fn index(&self, ip: IpAddr) -> usize {
        let bits: u128 = match limit_key(ip, self.ipv6_prefix) {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a) ^ (1 << 127),
        };
        let mut h = (bits as u64 ^ self.key[0]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= ((bits >> 64) as u64 ^ self.key[1]).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 29;
        h = h.wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^= h >> 32;
        (h as usize) & (SLOTS - 1)
    }

    /// Takes one answer from `ip`'s bucket; `false` when it is empty (send nothing).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // Wraps after 49 days; a wrapped (or stepped back) clock only refills a bucket.
        let now_ms = (now.saturating_duration_since(self.epoch).as_millis() as u64) as u32;
        let i = self.index(ip);
        let (rate, burst) = (self.rate, self.burst_milli);
        let s = &mut self.slots[i];
        let elapsed = u64::from(now_ms.wrapping_sub(s.last_ms));
        if elapsed > 0 {
            // rate tokens per second = rate milli-tokens per millisecond.
            let add = elapsed.saturating_mul(u64::from(rate));
            s.milli = (u64::from(s.milli) + add).min(u64::from(burst)) as u32;
            s.last_ms = now_ms;
        }
        if s.milli >= 1000 {
            s.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 5, 64, [1, 2], t0);
        let victim = ip("198.51.100.7");
        let allowed = (0..100).filter(|_| l.allow(victim, t0)).count();
        assert_eq!(allowed, 5);
        // One second later: ten more, not a hundred.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| l.allow(victim, t1)).count();
        assert_eq!(allowed, 5, "refill is capped by the burst");
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..100).filter(|_| l.allow(victim, t2)).count(), 3);
        // Another source has its own budget.
        assert!(l.allow(ip("203.0.113.9"), t2));
    }

    #[test]
    fn an_ipv6_prefix_is_one_source() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 3, 64, [7, 9], t0);
        let n = (0..10u16)
            .filter(|i| l.allow(ip(&format!("2001:db8:1:2::{i:x}")), t0))
            .count();
        assert_eq!(n, 3);
    }

    #[test]
    fn rate_zero_is_unlimited_and_holds_no_table() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(0, 0, 64, [0, 0], t0);
        assert!((0..10_000).all(|_| l.allow(ip("198.51.100.7"), t0)));
        assert!(l.slots.is_empty());
    }

    #[test]
    fn many_sources_spread_over_the_table() {
        let l = SourceLimiter::new(1, 1, 64, [3, 5], Instant::now());
        let mut used = std::collections::HashSet::new();
        for i in 0..4096u32 {
            used.insert(l.index(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        assert!(used.len() > 3000, "{}", used.len());
    }
}
