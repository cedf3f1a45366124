//! A STUN message codec (RFC 8489) with the TURN attributes of RFC 8656. Parsing borrows
//! the input and allocates nothing; building appends to a caller's reusable buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

pub type TransactionId = [u8; 12];

/// STUN methods used by a TURN server.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Comprehension-required attributes this codec knows. Any other type below 0x8000
    /// in a request is answered with 420 Unknown Attribute.
    pub(crate) fn known_required(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
        )
    }
}

/// The four STUN message classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

pub fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

pub fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Why bytes are not a STUN message. Such input is dropped silently (it may be spoofed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("the first two bits are not zero")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("length field is not a multiple of 4")]
    UnalignedLength,
    #[error("length field does not match the datagram")]
    LengthMismatch,
    #[error("an attribute runs past the end of the message")]
    AttributeOverrun,
    #[error("FINGERPRINT is not the last attribute or does not match")]
    BadFingerprint,
    #[error("MESSAGE-INTEGRITY is not 20 bytes")]
    BadIntegrity,
}

/// Why an attribute's value is malformed (answered with 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0:#06x} attribute")]
pub struct AttrError(pub u16);

const MAX_UNKNOWN: usize = 8;

/// A parsed STUN message borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    method: u16,
    class: Class,
    /// Offset of the MESSAGE-INTEGRITY attribute header; attributes after it are ignored.
    integrity_at: Option<usize>,
    /// End of the attributes that count (MESSAGE-INTEGRITY or FINGERPRINT excluded).
    attrs_end: usize,
    fingerprint: bool,
    unknown: [u16; MAX_UNKNOWN],
    unknown_len: usize,
}

/// True when `buf` starts like a STUN message (first two bits zero and the magic cookie),
/// the quick test used to tell STUN from ChannelData and garbage.
pub fn looks_like_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN
        && buf[0] & 0xC0 == 0
        && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) == MAGIC_COOKIE
}

impl<'a> Message<'a> {
    /// Parses exactly one message that fills `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
            return Err(ParseError::BadCookie);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len % 4 != 0 {
            return Err(ParseError::UnalignedLength);
        }
        if HEADER_LEN + len != buf.len() {
            return Err(ParseError::LengthMismatch);
        }
        let (method, class) = split_type(u16::from_be_bytes([buf[0], buf[1]]));
        let mut msg = Message {
            buf,
            method,
            class,
            integrity_at: None,
            attrs_end: buf.len(),
            fingerprint: false,
            unknown: [0; MAX_UNKNOWN],
            unknown_len: 0,
        };
        let mut at = HEADER_LEN;
        while at < buf.len() {
            if buf.len() - at < 4 {
                return Err(ParseError::AttributeOverrun);
            }
            let t = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let vlen = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            let padded = (vlen + 3) & !3;
            if buf.len() - at - 4 < padded {
                return Err(ParseError::AttributeOverrun);
            }
            if t == attr::FINGERPRINT {
                if vlen != 4 || at + 8 != buf.len() {
                    return Err(ParseError::BadFingerprint);
                }
                let expected = fingerprint(&buf[..at], at + 8 - HEADER_LEN);
                if buf[at + 4..at + 8] != expected.to_be_bytes() {
                    return Err(ParseError::BadFingerprint);
                }
                msg.fingerprint = true;
                if msg.integrity_at.is_none() {
                    msg.attrs_end = at;
                }
            } else if msg.integrity_at.is_none() {
                if t == attr::MESSAGE_INTEGRITY {
                    if vlen != 20 {
                        return Err(ParseError::BadIntegrity);
                    }
                    msg.integrity_at = Some(at);
                    msg.attrs_end = at;
                } else if t < 0x8000 && !attr::known_required(t) && msg.unknown_len < MAX_UNKNOWN {
                    msg.unknown[msg.unknown_len] = t;
                    msg.unknown_len += 1;
                }
            }
            at += 4 + padded;
        }
        Ok(msg)
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.buf[8..20].try_into().expect("header is 20 bytes")
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Comprehension-required attributes this codec does not know (for 420).
    pub fn unknown_required(&self) -> &[u16] {
        &self.unknown[..self.unknown_len]
    }

    /// Attributes before MESSAGE-INTEGRITY (or FINGERPRINT), in order.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: &self.buf[..self.attrs_end],
            at: HEADER_LEN,
        }
    }

    /// The first attribute of type `t`.
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attributes().find(|(at, _)| *at == t).map(|(_, v)| v)
    }

    pub fn has(&self, t: u16) -> bool {
        self.get(t).is_some()
    }

    fn text(&self, t: u16, max: usize) -> Result<Option<&'a str>, AttrError> {
        match self.get(t) {
            None => Ok(None),
            Some(v) if v.len() <= max => std::str::from_utf8(v).map(Some).map_err(|_| AttrError(t)),
            Some(_) => Err(AttrError(t)),
        }
    }

    pub fn username(&self) -> Result<Option<&'a str>, AttrError> {
        self.text(attr::USERNAME, 513)
    }

    pub fn realm(&self) -> Result<Option<&'a str>, AttrError> {
        self.text(attr::REALM, 763)
    }

    pub fn nonce(&self) -> Result<Option<&'a str>, AttrError> {
        self.text(attr::NONCE, 763)
    }

    pub fn u32_attr(&self, t: u16) -> Result<Option<u32>, AttrError> {
        match self.get(t) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))),
            Some(_) => Err(AttrError(t)),
        }
    }

    /// XOR-PEER-ADDRESS values (several are allowed in CreatePermission).
    pub fn xor_addresses(&self, t: u16) -> impl Iterator<Item = Result<SocketAddr, AttrError>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(move |(at, _)| *at == t)
            .map(move |(_, v)| decode_xor_address(v, &tid).ok_or(AttrError(t)))
    }

    pub fn xor_address(&self, t: u16) -> Result<Option<SocketAddr>, AttrError> {
        self.xor_addresses(t).next().transpose()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key`, in constant time.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
        let len = (at + 24 - HEADER_LEN) as u16;
        mac.update(&self.buf[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.buf[4..at]);
        mac.verify_slice(&self.buf[at + 4..at + 24]).is_ok()
    }
}

/// Iterator over `(type, value)` of a message's attributes.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len().saturating_sub(self.at) < 4 {
            return None;
        }
        let b = self.buf;
        let t = u16::from_be_bytes([b[self.at], b[self.at + 1]]);
        let len = usize::from(u16::from_be_bytes([b[self.at + 2], b[self.at + 3]]));
        let start = self.at + 4;
        let end = start + len;
        if end > b.len() {
            return None;
        }
        self.at = start + ((len + 3) & !3);
        Some((t, &b[start..end]))
    }
}

fn fingerprint(before: &[u8], total_attr_len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&before[..2]);
    h.update(&(total_attr_len as u16).to_be_bytes());
    h.update(&before[4..]);
    h.finalize() ^ FINGERPRINT_XOR
}

fn decode_xor_address(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let raw = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(raw)), port))
        }
        0x02 if v.len() == 20 => {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&v[4..20]);
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (r, m) in raw.iter_mut().zip(mask) {
                *r ^= m;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(raw)), port))
        }
        _ => None,
    }
}

/// Length of an encoded (XOR-)address attribute value.
pub fn address_value_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() { 8 } else { 20 }
}

/// Writes an XOR-address value into `out` (which is `address_value_len` long).
pub fn encode_xor_address(out: &mut [u8], addr: &SocketAddr, tid: &TransactionId) {
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ mask[i];
            }
        }
    }
}

/// Builds one message at the end of a reusable buffer.
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> MessageBuilder<'b> {
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: &TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(tid);
        Self { buf, start }
    }

    fn tid(&self) -> TransactionId {
        self.buf[self.start + 8..self.start + 20]
            .try_into()
            .expect("header written")
    }

    fn set_len(&mut self, extra: usize) {
        let len = (self.buf.len() - self.start - HEADER_LEN + extra) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn add(&mut self, t: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    pub fn add_u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.add(t, &v.to_be_bytes())
    }

    pub fn add_xor_address(&mut self, t: u16, addr: &SocketAddr) -> &mut Self {
        let tid = self.tid();
        let mut v = [0u8; 20];
        let n = address_value_len(addr);
        encode_xor_address(&mut v[..n], addr, &tid);
        self.add(t, &v[..n])
    }

    pub fn add_error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = [0u8; 4 + 128];
        let reason = &reason.as_bytes()[..reason.len().min(128)];
        v[2] = (code / 100) as u8;
        v[3] = (code % 100) as u8;
        v[4..4 + reason.len()].copy_from_slice(reason);
        self.add(attr::ERROR_CODE, &v[..4 + reason.len()])
    }

    /// Appends MESSAGE-INTEGRITY computed with `key`.
    pub fn add_integrity(&mut self, key: &[u8]) -> &mut Self {
        self.set_len(24);
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&self.buf[self.start..]);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Appends FINGERPRINT; must be last.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        self.set_len(8);
        let len = self.buf.len() - self.start - HEADER_LEN + 8;
        let crc = fingerprint(&self.buf[self.start..], len);
        self.add(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    /// Fixes the header length; the message is `buf[start..]`.
    pub fn finish(mut self) -> usize {
        self.set_len(0);
        self.buf.len() - self.start
    }
}

/// Channel numbers accepted. RFC 8656 section 12 narrowed the range to 0x4000-0x4FFF, but
/// RFC 5766 clients (coturn's among them) still pick numbers up to 0x7FFE, so those are
/// accepted too: the number space is per allocation and costs nothing to allow.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFE;

/// Splits a ChannelData message into channel number and application data. Over UDP the
/// padding may be absent and anything after the data is ignored.
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < 4 {
        return None;
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) || buf.len() - 4 < len {
        return None;
    }
    Some((channel, &buf[4..4 + len]))
}

/// Size of the Data indication header written in front of a payload by
/// [`write_data_indication_head`] for a peer of this family.
pub fn data_indication_head_len(peer: &SocketAddr) -> usize {
    HEADER_LEN + 4 + address_value_len(peer) + 4
}

/// Writes a Data indication's header, XOR-PEER-ADDRESS and DATA attribute header into
/// `out` (exactly `data_indication_head_len(peer)` bytes), for a payload of `len` bytes
/// that the caller places right after it, followed by padding to 4 bytes. This lets the
/// relay build the indication in the receive buffer, without copying the payload.
pub fn write_data_indication_head(out: &mut [u8], peer: &SocketAddr, tid: &TransactionId, len: usize) {
    let alen = address_value_len(peer);
    let padded = (len + 3) & !3;
    let body = 4 + alen + 4 + padded;
    out[0..2].copy_from_slice(&message_type(method::DATA, Class::Indication).to_be_bytes());
    out[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
    out[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    encode_xor_address(&mut out[24..24 + alen], peer, tid);
    let d = 24 + alen;
    out[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    out[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 5769 2.1: sample request, short-term credential password "VOkJxbRl1RmTxUk/WvJxBt".
    const REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";

    #[test]
    fn rfc5769_request() {
        let buf = hex(REQUEST);
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.method(), method::BINDING);
        assert_eq!(m.class(), Class::Request);
        assert!(m.has_fingerprint());
        assert_eq!(m.username().unwrap(), Some("evtj:h6vY"));
        assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.verify_integrity(b"wrong"));
        assert!(m.unknown_required().is_empty());
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let buf = hex(
            "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220
             002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7
             80280004c07d4c96",
        );
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let buf = hex(
            "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
        );
        let m = Message::parse(&buf).unwrap();
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
            Some("[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap())
        );
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let buf = hex(
            "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
        );
        // RFC 5769 2.4 has no FINGERPRINT; the key is MD5("マトリックス:example.org:TheMatrIX").
        let m = Message::parse(&buf).unwrap();
        assert_eq!(m.realm().unwrap(), Some("example.org"));
        assert_eq!(m.nonce().unwrap(), Some("f//499k954d6OL34oL9FSTvy64sA"));
        let key = callbox_core::credentials::long_term_key(
            m.username().unwrap().unwrap(),
            "example.org",
            "TheMatrIX",
        );
        assert!(m.verify_integrity(&key));
    }

    #[test]
    fn build_and_parse_roundtrip() {
        let tid = [7u8; 12];
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, method::ALLOCATE, Class::Error, &tid);
        b.add_error(401, "Unauthorized")
            .add(attr::REALM, b"callbox")
            .add_xor_address(attr::XOR_PEER_ADDRESS, &"[2001:db8::1]:9".parse().unwrap())
            .add_integrity(b"key")
            .add_fingerprint();
        b.finish();
        let m = Message::parse(&buf).unwrap();
        assert_eq!((m.method(), m.class()), (method::ALLOCATE, Class::Error));
        assert_eq!(m.get(attr::ERROR_CODE).unwrap()[2..4], [4, 1]);
        assert_eq!(m.realm().unwrap(), Some("callbox"));
        assert_eq!(
            m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(),
            Some("[2001:db8::1]:9".parse().unwrap())
        );
        assert!(m.verify_integrity(b"key"));
        assert!(m.has_fingerprint());
    }

    #[test]
    fn malformed_inputs() {
        let good = hex(REQUEST);
        assert_eq!(Message::parse(&good[..19]).unwrap_err(), ParseError::TooShort);
        let mut b = good.clone();
        b[0] |= 0x80;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
        let mut b = good.clone();
        b[4] ^= 1;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadCookie);
        let mut b = good.clone();
        b[3] = 0x59;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::UnalignedLength);
        assert_eq!(
            Message::parse(&good[..good.len() - 4]).unwrap_err(),
            ParseError::LengthMismatch
        );
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadFingerprint);
        // An attribute claiming more bytes than the message has.
        let mut b = good.clone();
        b[22] = 0xff;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::AttributeOverrun);
        // Unknown comprehension-required attribute is reported, not fatal.
        let mut buf = Vec::new();
        let mut mb = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, &[1; 12]);
        mb.add(0x7777, b"x");
        mb.finish();
        assert_eq!(Message::parse(&buf).unwrap().unknown_required(), &[0x7777]);
    }

    #[test]
    fn channel_data() {
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0, 2, 9, 9, 0, 0]),
            Some((0x4000, &[9u8, 9][..]))
        );
        assert_eq!(parse_channel_data(&[0x40, 0x01, 0, 0]), Some((0x4001, &[][..])));
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0, 5, 1]), None);
        assert_eq!(parse_channel_data(&[0x7F, 0xFF, 0, 0]), None);
        assert_eq!(parse_channel_data(&[0x80, 0x00, 0, 0]), None);
        assert_eq!(parse_channel_data(&[0x40]), None);
    }

    #[test]
    fn data_indication_in_place() {
        let peer: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let tid = [3u8; 12];
        let head = data_indication_head_len(&peer);
        let mut buf = vec![0u8; head + 8];
        buf[head..head + 5].copy_from_slice(b"hello");
        write_data_indication_head(&mut buf[..head], &peer, &tid, 5);
        let m = Message::parse(&buf).unwrap();
        assert_eq!((m.method(), m.class()), (method::DATA, Class::Indication));
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(), Some(peer));
        assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(m) = Message::parse(&bytes) {
                for (_t, _v) in m.attributes() {}
                let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
                let _ = m.verify_integrity(b"k");
            }
            let _ = parse_channel_data(&bytes);
        }

        #[test]
        fn type_roundtrip(method in 0u16..0x1000, c in 0u8..4) {
            let class = [Class::Request, Class::Indication, Class::Success, Class::Error][c as usize];
            proptest::prop_assert_eq!(split_type(message_type(method, class)), (method, class));
        }

        #[test]
        fn attributes_roundtrip(values in proptest::collection::vec((0x8000u16..0x8020, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)), 0..10),
                                ip in proptest::prelude::any::<IpAddr>(), port in proptest::prelude::any::<u16>()) {
            let addr = SocketAddr::new(ip, port);
            let mut buf = Vec::new();
            let mut b = MessageBuilder::new(&mut buf, method::SEND, Class::Indication, &[9; 12]);
            for (t, v) in &values { b.add(*t, v); }
            b.add_xor_address(attr::XOR_PEER_ADDRESS, &addr);
            b.add_fingerprint();
            b.finish();
            let m = Message::parse(&buf).unwrap();
            let got: Vec<(u16, Vec<u8>)> = m.attributes().filter(|(t, _)| *t != attr::XOR_PEER_ADDRESS).map(|(t, v)| (t, v.to_vec())).collect();
            proptest::prop_assert_eq!(got, values);
            proptest::prop_assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(), Some(addr));
        }
    }
}
