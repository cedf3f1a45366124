//! The Host header of a plain HTTP request on the port-80 listener, whose host part goes
//! into the redirect's Location: only a DNS name, an IPv4 address or a bracketed IPv6
//! address may come out, and only from the front of the header.

#![no_main]

use callbox_http::redirect_host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(host) = redirect_host(value) {
        assert!(value.starts_with(host));
        assert!(!host.is_empty() && host.len() <= 253 || host.starts_with('['));
        assert!(
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)),
            "{host:?}"
        );
    }
});
