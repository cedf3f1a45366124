//! Which peer addresses the relay may send to (PROTOCOL.md section 3).
//!
//! Order of the rules, first match wins:
//! 1. an address in `deny` is refused;
//! 2. one of the server's relay addresses on a port of the relay range is
//!    [`Peer::OwnRelay`]: allowed only when the caller finds a live allocation of this
//!    server on that port (two peers relayed by the same TURN server, the usual case with
//!    `iceTransportPolicy: "relay"`); a plain service of the host bound in the range is
//!    not one and is refused;
//! 3. the server's own addresses (and loopback) are refused on its service ports
//!    (every listener of the process, as bound), even where `allow` covers the address;
//! 4. an address in `allow` is allowed;
//! 5. the server's own addresses on any other port, and the default-denied ranges, are
//!    refused;
//! 6. everything else is allowed.
//!
//! IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible forms are judged as the IPv4 address
//! they carry, so no IPv6 spelling reaches a denied IPv4 range. A 6to4 address
//! (`2002:AABB:CCDD::/48`) is refused when the IPv4 address it embeds would be; Teredo
//! (`2001::/32`) and the deprecated site-local `fec0::/10` are refused by default (an
//! `allow` entry can re-open them).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP network: address and prefix length. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address")]
    Address(String),
    #[error("prefix length `{0}` is not a number from 0 to {1}")]
    Prefix(String, u8),
    #[error("`{0}` has bits set after the prefix; did you mean `{1}`?")]
    HostBits(String, String),
}

impl Cidr {
    /// A network of `prefix` bits at `addr` (host bits cleared). An IPv4-mapped network
    /// (`::ffff:a.b.c.d`, prefix 96 or more) becomes the IPv4 network it means, since
    /// addresses are matched in their IPv4 form.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && (96..=128).contains(&prefix)
        {
            return Self::new(IpAddr::V4(v4), prefix - 96);
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

pub(crate) fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible IPv6 address, else `ip`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let seg = v6.segments();
            // IPv4-compatible ::a.b.c.d (deprecated, but still routable on some stacks).
            // `::` and `::1` stay IPv6: they are the unspecified and loopback addresses.
            if seg[..6].iter().all(|&s| s == 0) && u128::from(v6) > 1 {
                return IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(addr_s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix(p.to_string(), max))?,
        };
        if mask(addr, prefix) != addr {
            let network = Cidr::new(addr, prefix).expect("prefix checked");
            return Err(CidrError::HostBits(s.to_string(), network.to_string()));
        }
        // `::ffff:10.0.0.0/104` means the IPv4 network 10.0.0.0/8 (`Cidr::new` converts it):
        // addresses are checked in their IPv4 form, so the network must be too.
        Ok(Cidr::new(addr, prefix).expect("prefix checked"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The ranges refused by default (PROTOCOL.md section 3).
pub const DEFAULT_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    // Teredo: the client's IPv4 address is carried obfuscated and reached through
    // third-party relays; browsers do not use these addresses as candidates.
    "2001::/32",
    "fc00::/7",
    "fe80::/10",
    // Site-local (deprecated by RFC 3879, still routed inside some networks).
    "fec0::/10",
    "ff00::/8",
];

/// Why a peer was refused, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Listed in the configured `deny` ranges.
    Denied,
    /// One of the server's own addresses.
    OwnAddress,
    /// In a range that is refused by default and not allowed by configuration.
    DefaultDenied,
    /// Port 0 is never a valid peer.
    PortZero,
}

/// What kind of allowed peer an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// An ordinary peer.
    Remote,
    /// One of the relay's own addresses on a port of the relay range: allowed only when
    /// that port is held by a live allocation of this server, which the caller checks
    /// (the policy knows addresses, not allocations).
    OwnRelay,
}

/// The IPv4 address a 6to4 address (`2002:AABB:CCDD::/48`) embeds.
fn six_to_four(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] == 0x2002 => {
            let s = v6.segments();
            Some(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])))
        }
        _ => None,
    }
}

/// The relay's peer address policy. Cheap to check: it is consulted on every packet the
/// relay sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    default_denied: Vec<Cidr>,
    own_addresses: Vec<IpAddr>,
    own_ports: Vec<(u16, u16)>,
    relay_addresses: Vec<IpAddr>,
    relay_ports: (u16, u16),
}

impl PeerPolicy {
    /// `own_ports` are inclusive ranges: listener ports and the relay port range.
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        own_addresses: Vec<IpAddr>,
        own_ports: Vec<(u16, u16)>,
    ) -> Self {
        Self {
            allow,
            deny,
            default_denied: DEFAULT_DENIED
                .iter()
                .map(|s| s.parse().expect("built-in range"))
                .collect(),
            own_addresses: own_addresses.into_iter().map(canonical).collect(),
            own_ports,
            relay_addresses: Vec::new(),
            relay_ports: (1, 0),
        }
    }

    /// The relay's own addresses and port range: peers there are other allocations.
    pub fn with_relays(mut self, addresses: Vec<IpAddr>, ports: (u16, u16)) -> Self {
        self.relay_addresses = addresses.into_iter().map(canonical).collect();
        self.relay_ports = ports;
        self
    }

    /// Policy with the defaults only (nothing allowed beyond the public internet).
    pub fn secure_default() -> Self {
        Self::new(vec![], vec![], vec![], vec![])
    }

    /// Whether `peer` is one of the relay's own addresses on a port of the relay range
    /// (cheap: a scan of the few relay addresses).
    pub fn is_own_relay(&self, peer: SocketAddr) -> bool {
        let (lo, hi) = self.relay_ports;
        (lo..=hi).contains(&peer.port()) && self.relay_addresses.contains(&canonical(peer.ip()))
    }

    pub fn check(&self, peer: SocketAddr) -> Result<Peer, Denial> {
        if peer.port() == 0 {
            return Err(Denial::PortZero);
        }
        let ip = canonical(peer.ip());
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Denial::Denied);
        }
        // A 6to4 address reaches the IPv4 address it embeds (through a 6to4 relay, or
        // directly on a host with a 6to4 route): it gets no more than that address would.
        // Our own relay ports are reached by their own addresses only.
        if let Some(v4) = six_to_four(ip)
            && self.check(SocketAddr::new(IpAddr::V4(v4), peer.port()))? == Peer::OwnRelay
        {
            return Err(Denial::OwnAddress);
        }
        if self.is_own_relay(peer) {
            return Ok(Peer::OwnRelay);
        }
        // Loopback and the unspecified address always reach this host.
        let own = self.own_addresses.contains(&ip) || ip.is_loopback() || ip.is_unspecified();
        let own_port = self
            .own_ports
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&peer.port()));
        if own && own_port {
            return Err(Denial::OwnAddress);
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(Peer::Remote);
        }
        if own {
            return Err(Denial::OwnAddress);
        }
        if self.default_denied.iter().any(|c| c.contains(ip)) {
            return Err(Denial::DefaultDenied);
        }
        Ok(Peer::Remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_network_built_in_code_matches_like_a_parsed_one() {
        let mapped: IpAddr = "::ffff:192.0.2.0".parse().unwrap();
        let built = Cidr::new(mapped, 120).unwrap();
        assert_eq!(built, "192.0.2.0/24".parse().unwrap());
        assert_eq!(built, "::ffff:192.0.2.0/120".parse().unwrap());
        assert!(built.contains("192.0.2.7".parse().unwrap()));
        assert!(built.contains("::ffff:192.0.2.7".parse().unwrap()));
        // Shorter than the mapped prefix: an IPv6 network, as written.
        assert!(Cidr::new(mapped, 64).unwrap().addr().is_ipv6());
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!(matches!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits(..))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!("10.0.0/8".parse::<Cidr>(), Err(CidrError::Address(..))));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::Address(..))));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn default_policy_refuses_internal_ranges() {
        let p = PeerPolicy::secure_default();
        for peer in [
            "127.0.0.1:5000",
            "10.1.2.3:5000",
            "172.16.0.1:5000",
            "192.168.1.1:5000",
            "100.64.0.1:5000",
            "169.254.169.254:80",
            "224.0.0.1:5000",
            "255.255.255.255:5000",
            "0.0.0.0:5000",
            "[::1]:5000",
            "[fd00::1]:5000",
            "[fe80::1]:5000",
            "[::ffff:127.0.0.1]:5000",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:5000",
            "[64:ff9b::a9fe:a9fe]:80",
            "[::]:5000",
            // 6to4 of denied IPv4 ranges, Teredo, site-local.
            "[2002:a9fe:a9fe::]:80",
            "[2002:7f00:1::1]:5000",
            "[2002:a00:1::]:5000",
            "[2002:c0a8:101:1::5]:5000",
            "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:5000",
            "[fec0::1]:5000",
            "[feff::1]:5000",
        ] {
            assert!(p.check(sa(peer)).is_err(), "{peer} must be refused");
        }
        for peer in [
            "8.8.8.8:53",
            "[2001:4860:4860::8888]:53",
            "198.51.100.7:4000",
            // 6to4 of a public IPv4 address.
            "[2002:808:808::1]:53",
        ] {
            assert_eq!(p.check(sa(peer)), Ok(Peer::Remote), "{peer}");
        }
        assert_eq!(p.check(sa("8.8.8.8:0")), Err(Denial::PortZero));
    }

    #[test]
    fn allow_and_deny_lists() {
        let p = PeerPolicy::new(
            vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            vec!["10.9.0.0/16".parse().unwrap(), "8.8.8.8".parse().unwrap()],
            vec!["127.0.0.1".parse().unwrap(), "203.0.113.5".parse().unwrap()],
            vec![(3478, 3478), (49152, 65535)],
        );
        assert_eq!(p.check(sa("127.0.0.1:4000")), Ok(Peer::Remote));
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:4000")), Ok(Peer::Remote));
        assert_eq!(p.check(sa("10.1.1.1:4000")), Ok(Peer::Remote));
        // The 6to4 form of an allowed IPv4 network gets what the network gets.
        assert_eq!(p.check(sa("[2002:a01:101::]:4000")), Ok(Peer::Remote));
        assert_eq!(p.check(sa("[2002:a09:101::]:4000")), Err(Denial::Denied));
        assert_eq!(p.check(sa("[2002:808:808::]:53")), Err(Denial::Denied));
        assert_eq!(p.check(sa("10.9.1.1:4000")), Err(Denial::Denied));
        assert_eq!(p.check(sa("8.8.8.8:53")), Err(Denial::Denied));
        // The relay never relays to its own services, even where the address is allowed.
        assert_eq!(p.check(sa("127.0.0.1:3478")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("127.0.0.1:50000")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("203.0.113.5:4000")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("203.0.113.6:4000")), Ok(Peer::Remote));
        // Its relay addresses on the relay range may be other allocations (the caller
        // checks that the port is one), even on a default-denied range; anywhere else on
        // them, refused.
        let p = p.with_relays(
            vec!["10.0.0.5".parse().unwrap(), "203.0.113.5".parse().unwrap()],
            (49152, 65535),
        );
        assert_eq!(p.check(sa("203.0.113.5:50000")), Ok(Peer::OwnRelay));
        assert_eq!(p.check(sa("10.0.0.5:50000")), Ok(Peer::OwnRelay));
        assert_eq!(p.check(sa("[::ffff:203.0.113.5]:50000")), Ok(Peer::OwnRelay));
        assert!(p.is_own_relay(sa("[::ffff:203.0.113.5]:50000")));
        assert!(!p.is_own_relay(sa("203.0.113.5:3478")));
        assert_eq!(p.check(sa("[2002:cb00:7105::]:50000")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("203.0.113.5:3478")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("203.0.113.5:22")), Err(Denial::OwnAddress));
        assert_eq!(p.check(sa("127.0.0.1:50000")), Err(Denial::OwnAddress));
        let p =
            PeerPolicy::secure_default().with_relays(vec!["203.0.113.5".parse().unwrap()], (49152, 65535));
        assert_eq!(p.check(sa("10.9.0.0:50000")), Err(Denial::DefaultDenied));
    }
}
