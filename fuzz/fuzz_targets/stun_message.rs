//! `Message::parse` on arbitrary bytes, then every accessor. A message that parses is
//! re-encoded attribute by attribute with `MessageBuilder` and must parse back the same.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use turn_proto::nonce::{NONCE_LEN, NonceCheck, NonceMaker};
use turn_proto::stun::{
    self, HEADER_LEN, Message, MessageBuilder, attr, encode_xor_address, looks_like_stun, message_type,
    split_type,
};

const KEY: &[u8] = b"fuzz key";
const ADDRESS_ATTRS: [u16; 4] = [
    attr::XOR_PEER_ADDRESS,
    attr::XOR_MAPPED_ADDRESS,
    attr::XOR_RELAYED_ADDRESS,
    attr::MAPPED_ADDRESS,
];
const U32_ATTRS: [u16; 4] = [
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::CHANNEL_NUMBER,
    attr::PRIORITY,
];

fn check_nonce(nonce: &str) {
    let makers = NonceMaker::new([7; 32]);
    let client: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let r = makers.check(nonce, &client, 1000, 600);
    if nonce.len() != NONCE_LEN {
        assert_eq!(r, NonceCheck::Invalid);
    }
    // Edge times must not overflow.
    let _ = makers.check(nonce, &client, 0, 0);
    let _ = makers.check(nonce, &client, u64::MAX, u64::MAX);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check_nonce(s);
    }
    let Ok(m) = Message::parse(data) else {
        return;
    };
    assert!(looks_like_stun(data));
    assert_eq!(m.bytes(), data);
    assert_eq!(
        m.bytes().len(),
        HEADER_LEN + usize::from(u16::from_be_bytes([data[2], data[3]]))
    );
    let ty = u16::from_be_bytes([data[0], data[1]]);
    assert_eq!(message_type(m.method(), m.class()), ty);
    assert_eq!(split_type(ty), (m.method(), m.class()));
    let tid = m.transaction_id();
    assert_eq!(&tid[..], &data[8..20]);

    let unknown = m.unknown_required();
    assert!(unknown.len() <= 8);
    assert!(unknown.iter().all(|&t| t < 0x8000));

    let attrs: Vec<(u16, &[u8])> = m.attributes().collect();
    for &(t, v) in &attrs {
        assert!(t != attr::MESSAGE_INTEGRITY && t != attr::FINGERPRINT);
        // The first attribute of a type is what `get` returns.
        let first = attrs.iter().find(|(at, _)| *at == t).map(|(_, v)| *v);
        assert_eq!(m.get(t), first);
        assert!(m.has(t));
        let _ = v;
        let _ = m.u32_attr(t);
    }
    if let Ok(Some(u)) = m.username() {
        assert!(u.len() <= 513);
    }
    if let Ok(Some(r)) = m.realm() {
        assert!(r.len() <= 763);
    }
    if let Ok(Some(n)) = m.nonce() {
        assert!(n.len() <= 763);
        check_nonce(n);
    }
    for t in U32_ATTRS {
        if let Ok(Some(v)) = m.u32_attr(t) {
            assert_eq!(m.get(t), Some(&v.to_be_bytes()[..]));
        }
    }
    for t in ADDRESS_ATTRS {
        let values: Vec<&[u8]> = attrs.iter().filter(|(at, _)| *at == t).map(|(_, v)| *v).collect();
        let decoded: Vec<_> = m.xor_addresses(t).collect();
        assert_eq!(values.len(), decoded.len());
        for (v, d) in values.iter().zip(&decoded) {
            if let Ok(addr) = d {
                // Re-encoding gives the same value (the first byte is reserved).
                let mut out = vec![0u8; stun::address_value_len(addr)];
                encode_xor_address(&mut out, addr, &tid);
                assert_eq!(&out[1..], &v[1..], "{addr}");
            }
        }
        assert_eq!(
            m.xor_address(t).ok().flatten(),
            decoded.first().and_then(|d| d.ok())
        );
    }
    let ok = m.verify_integrity(KEY);
    if !m.has_integrity() {
        assert!(!ok);
    }
    let _ = m.verify_integrity(b"");
    let _ = m.verify_integrity(&[0xAB; 200]);

    // Re-encode and parse again.
    let mut buf = vec![0xEE; 3]; // A message need not start at offset 0 of the buffer.
    let mut b = MessageBuilder::new(&mut buf, m.method(), m.class(), &tid);
    for &(t, v) in &attrs {
        b.add(t, v);
    }
    if m.has_integrity() {
        b.add_integrity(KEY);
    }
    if m.has_fingerprint() {
        b.add_fingerprint();
    }
    let n = b.finish();
    assert_eq!(n, buf.len() - 3);
    let again = Message::parse(&buf[3..]).expect("a re-encoded message parses");
    assert_eq!((again.method(), again.class()), (m.method(), m.class()));
    assert_eq!(again.transaction_id(), tid);
    assert_eq!(again.attributes().collect::<Vec<_>>(), attrs);
    assert_eq!(again.unknown_required(), m.unknown_required());
    assert_eq!(again.has_integrity(), m.has_integrity());
    assert_eq!(again.has_fingerprint(), m.has_fingerprint());
    if m.has_integrity() {
        assert!(again.verify_integrity(KEY));
    }
    assert_eq!(again.username(), m.username());
    assert_eq!(again.realm(), m.realm());
    assert_eq!(again.nonce(), m.nonce());
    if !m.has_integrity() && !m.has_fingerprint() {
        // Without trailers the re-encoding is the input with its padding zeroed.
        assert_eq!(buf.len() - 3, data.len());
    }
});
