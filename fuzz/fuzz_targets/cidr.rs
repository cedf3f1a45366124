//! `Cidr` (peer allow/deny lists) and `ExternalIp` parsing on arbitrary text.

#![no_main]

use std::net::SocketAddr;

use callbox_core::config::ExternalIp;
use callbox_core::policy::{Cidr, PeerPolicy, canonical};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = s.parse::<Cidr>() {
        let max = if c.addr().is_ipv4() { 32 } else { 128 };
        assert!(c.prefix() <= max);
        assert_eq!(Cidr::new(c.addr(), c.prefix()), Some(c));
        let shown = c.to_string();
        assert_eq!(shown.parse::<Cidr>(), Ok(c), "{s:?} shows as {shown:?}");
        if canonical(c.addr()) == c.addr() {
            assert!(c.contains(c.addr()), "{c} does not contain its own address");
        }
        let policy = PeerPolicy::new(vec![c], vec![c], vec![c.addr()], vec![(1, 65535)]);
        for port in [0, 1, 65535] {
            let _ = policy.check(SocketAddr::new(c.addr(), port));
        }
    }
    if let Ok(e) = s.parse::<ExternalIp>() {
        let shown = e.to_string();
        assert_eq!(shown.parse::<ExternalIp>(), Ok(e), "{s:?} shows as {shown:?}");
    }
});
