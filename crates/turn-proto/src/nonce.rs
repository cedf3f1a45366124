//! NONCEs the server can verify without having stored them.
//!
//! A nonce is `hex(issued_at_secs) || hex(HMAC-SHA1(key, issued_at || client address)[..10])`,
//! 36 characters. Checking it needs only the key, so a flood of unauthenticated requests
//! (spoofed sources included) leaves no state behind. The client address binds a nonce
//! to the 5-tuple it was issued to.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of a nonce as sent on the wire.
pub const NONCE_LEN: usize = 36;

/// The result of checking a nonce a client sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but older than the nonce lifetime: answer 438 with a fresh one.
    Stale,
    /// Not ours (forged, for another client, or from before a restart): also 438, as
    /// RFC 8489 asks for a nonce that is no longer valid.
    Invalid,
}

/// Issues and checks nonces with a secret key given at start (the server never draws
/// random numbers itself).
#[derive(Clone)]
pub struct NonceMaker {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceMaker { key: <redacted> }")
    }
}

fn mac(key: &[u8; 32], issued: u64, client: &SocketAddr) -> [u8; 20] {
    let mut m = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
    m.update(&issued.to_be_bytes());
    match client {
        SocketAddr::V4(a) => m.update(&a.ip().octets()),
        SocketAddr::V6(a) => m.update(&a.ip().octets()),
    }
    m.update(&client.port().to_be_bytes());
    m.finalize().into_bytes().into()
}

/// A key for another use of the server's secret (`purpose` names it), so one random key
/// given at start serves every keyed hash of the server.
pub fn derive_key(key: &[u8; 32], purpose: &[u8]) -> [u64; 2] {
    let mut m = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
    m.update(purpose);
    let out: [u8; 20] = m.finalize().into_bytes().into();
    [
        u64::from_be_bytes(out[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(out[8..16].try_into().expect("8 bytes")),
    ]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl NonceMaker {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A nonce for `client` issued at `now_secs` (seconds on the server's own clock).
    pub fn issue(&self, client: &SocketAddr, now_secs: u64) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        let tag = mac(&self.key, now_secs, client);
        for (i, b) in now_secs.to_be_bytes().iter().chain(&tag[..10]).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        out
    }

    pub fn check(&self, nonce: &str, client: &SocketAddr, now_secs: u64, lifetime_secs: u64) -> NonceCheck {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; NONCE_LEN / 2];
        for (i, r) in raw.iter_mut().enumerate() {
            let hi = (b[2 * i] as char).to_digit(16);
            let lo = (b[2 * i + 1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => *r = (h * 16 + l) as u8,
                _ => return NonceCheck::Invalid,
            }
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let tag = mac(&self.key, issued, client);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&tag[..10], &raw[8..])) {
            return NonceCheck::Invalid;
        }
        if issued > now_secs || now_secs - issued >= lifetime_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let n = NonceMaker::new([5; 32]);
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let nonce = n.issue(&a, 100);
        let s = std::str::from_utf8(&nonce).unwrap();
        assert_eq!(n.check(s, &a, 100, 600), NonceCheck::Valid);
        assert_eq!(n.check(s, &a, 699, 600), NonceCheck::Valid);
        assert_eq!(n.check(s, &a, 700, 600), NonceCheck::Stale);
        assert_eq!(
            n.check(s, &b, 100, 600),
            NonceCheck::Invalid,
            "bound to the client"
        );
        assert_eq!(
            NonceMaker::new([6; 32]).check(s, &a, 100, 600),
            NonceCheck::Invalid
        );
        let mut forged = nonce;
        forged[0] = b'1';
        assert_eq!(
            n.check(std::str::from_utf8(&forged).unwrap(), &a, 100, 600),
            NonceCheck::Invalid
        );
        assert_eq!(n.check("short", &a, 100, 600), NonceCheck::Invalid);
        assert_eq!(n.check(&"zz".repeat(18), &a, 100, 600), NonceCheck::Invalid);
    }
}
