//! The key that per-address limits count under.
//!
//! An IPv6 host usually holds a whole /64 (SLAAC, privacy addresses, a cloud VM's
//! prefix), so counting per full IPv6 address would give one client 2^64 budgets: limits
//! key on a configurable prefix instead (a /64 by default). IPv4-mapped and
//! IPv4-compatible spellings count as the IPv4 address they carry.

use std::net::IpAddr;

use crate::policy::{canonical, mask};

/// The default IPv6 prefix length per-address limits key on.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// `ip` as the key of its limit bucket: IPv4 as is, IPv6 cut to its first `ipv6_prefix`
/// bits (values over 128 are taken as 128).
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => mask(v6, ipv6_prefix.min(128)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_keys_on_the_prefix_and_ipv4_on_the_address() {
        assert_eq!(limit_key(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(
            limit_key(ip("2001:db8:1:2:ffff::1"), 64),
            limit_key(ip("2001:db8:1:2::9"), 64)
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:3::1"), 64),
            limit_key(ip("2001:db8:1:2::1"), 64)
        );
        assert_eq!(limit_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(limit_key(ip("2001:db8::1"), 200), ip("2001:db8::1"));
        assert_eq!(limit_key(ip("2001:db8::1"), 48), ip("2001:db8::"));
        assert_eq!(limit_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
    }
}
