//! `parse_channel_data` on arbitrary bytes. Accepted payloads are also wrapped in a Data
//! indication in place (as the relay does for peer packets) and must parse back.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use turn_proto::server::{PEER_HEADROOM, PEER_TAILROOM};
use turn_proto::stun::{
    CHANNEL_MAX, CHANNEL_MIN, Message, attr, data_indication_head_len, parse_channel_data,
    write_data_indication_head,
};

/// The largest peer payload the driver hands the server (its receive buffers are 2048
/// bytes with the head- and tailroom reserved).
const MAX_PEER_PAYLOAD: usize = 2048 - PEER_HEADROOM - PEER_TAILROOM;

fuzz_target!(|data: &[u8]| {
    let Some((channel, payload)) = parse_channel_data(data) else {
        return;
    };
    assert!((CHANNEL_MIN..=CHANNEL_MAX).contains(&channel));
    assert_eq!(u16::from_be_bytes([data[0], data[1]]), channel);
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    assert_eq!(payload, &data[4..4 + len]);

    if payload.len() > MAX_PEER_PAYLOAD {
        return;
    }
    let tid = [0x42; 12];
    for peer in ["198.51.100.7:5000", "[2001:db8::7]:6000"] {
        let peer: SocketAddr = peer.parse().unwrap();
        let head = data_indication_head_len(&peer);
        assert!(head <= PEER_HEADROOM);
        let padded = (payload.len() + 3) & !3;
        assert!(padded - payload.len() <= PEER_TAILROOM);
        let mut buf = vec![0xFF; head + padded];
        buf[head..head + payload.len()].copy_from_slice(payload);
        buf[head + payload.len()..].fill(0);
        write_data_indication_head(&mut buf[..head], &peer, &tid, payload.len());
        let m = Message::parse(&buf).expect("a Data indication parses");
        assert_eq!(m.get(attr::DATA), Some(payload));
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(), Some(peer));
    }
});
