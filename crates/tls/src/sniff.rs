//! Which service the first decrypted bytes of a connection on the one TLS port are for,
//! when the client named none by ALPN (Chrome's TURN/TLS client sends SNI but no ALPN).
//!
//! A STUN message starts with two zero bits (first byte 0x00-0x3F) and has the magic
//! cookie in bytes 4-7 (RFC 8489 section 5); a TURN client's first message is always STUN
//! (ChannelData needs a channel bound first). An HTTP request starts with a method name in
//! upper-case ASCII (0x41 and up): everything else is HTTP, whose parser answers junk.

/// The verdict on the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Stun,
    Http,
    /// Not enough bytes to tell yet.
    NeedMore,
}

/// The STUN magic cookie, in network order.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Bytes enough to decide: the STUN header up to the end of the cookie.
pub const SNIFF_BYTES: usize = 8;

pub fn sniff(first: &[u8]) -> Sniff {
    match first.first() {
        None => Sniff::NeedMore,
        Some(&b) if b > 0x3F => Sniff::Http,
        Some(_) if first.len() < SNIFF_BYTES => Sniff::NeedMore,
        Some(_) if first[4..8] == MAGIC_COOKIE => Sniff::Stun,
        Some(_) => Sniff::Http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_http_and_too_short() {
        let binding = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3];
        assert_eq!(sniff(&binding), Sniff::Stun);
        assert_eq!(sniff(&binding[..7]), Sniff::NeedMore);
        assert_eq!(sniff(&[]), Sniff::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"G"), Sniff::Http, "decided from one byte");
        // HTTP/2's preface starts with "PRI".
        assert_eq!(sniff(b"PRI * HTTP/2.0"), Sniff::Http);
        // ChannelData (0x40-0x4F) is not a first message: HTTP answers it.
        assert_eq!(sniff(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]), Sniff::Http);
        // Low first byte without the cookie (an RFC 3489 client): not ours, HTTP.
        assert_eq!(sniff(&[0x00, 0x01, 0, 0, 1, 2, 3, 4]), Sniff::Http);
    }
}
