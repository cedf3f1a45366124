//! Host address discovery: the kernel's tables (no packet sent), and on request a STUN
//! Binding for the address a server outside sees.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The interface of the IPv4 default route, from `/proc/net/route`.
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        let dest = cols.next()?;
        let mask = cols.nth(5)?;
        (dest == "00000000" && mask == "00000000").then(|| iface.to_string())
    })
}

/// Every address of every interface: (interface name, address).
pub fn interface_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: ifa_addr is non-null and its family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push((
                    name,
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push((name, IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The relay address to use when none is configured: the IPv4 address of the default
/// route's interface, or 127.0.0.1 when there is no default route.
pub fn detect_relay_ipv4() -> Ipv4Addr {
    let Some(iface) = default_route_interface() else {
        return Ipv4Addr::LOCALHOST;
    };
    interface_addresses()
        .into_iter()
        .find_map(|(name, ip)| match ip {
            IpAddr::V4(v4) if name == iface => Some(v4),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// This host's address as a STUN server at `server` sees it (the server-reflexive address,
/// RFC 8489 Binding), from a socket of `server`'s family, within `timeout`. Two tries.
pub fn stun_reflexive_address(
    server: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::SocketAddr> {
    use std::io;
    use turn_proto::stun::{Class, Message, MessageBuilder, attr, method};
    let bind: std::net::SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(timeout / 2))?;
    let tid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, method::BINDING, Class::Request, &tid).finish();
    let mut buf = [0u8; 1500];
    for _ in 0..2 {
        sock.send(&req)?;
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if m.transaction_id() != tid || m.class() != Class::Success {
            continue;
        }
        if let Ok(Some(addr)) = m.xor_address(attr::XOR_MAPPED_ADDRESS) {
            return Ok(addr);
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no STUN Binding answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let addrs = interface_addresses();
        assert!(addrs.iter().any(|(_, ip)| ip.is_loopback()), "{addrs:?}");
        // Whatever the host, detection yields a usable unicast address.
        let ip = detect_relay_ipv4();
        assert!(!ip.is_unspecified() && !ip.is_multicast());
    }
}
