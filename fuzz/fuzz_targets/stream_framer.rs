//! The TCP/TLS stream framer: arbitrary bytes fed in chunks whose sizes come from the input.
//! The first byte picks the largest frame accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_proto::framing::{Frame, StreamBuffer, frame_length};
use turn_proto::stun::MAGIC_COOKIE;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let max_frame = [1500usize, 20 + 65_535, 64][usize::from(pick % 3)];
    let (sizes, stream) = rest.split_at(rest.len().min(8));
    let mut buf = StreamBuffer::new(max_frame);
    let mut fed = 0usize;
    let mut taken = 0usize;
    let mut failed = false;
    let mut offset = 0usize;
    let mut i = 0usize;
    while offset < stream.len() && !failed {
        let want = usize::from(*sizes.get(i % sizes.len().max(1)).unwrap_or(&7)).max(1);
        i += 1;
        let spare = buf.spare();
        let n = want.min(spare.len()).min(stream.len() - offset);
        if n == 0 {
            // A full buffer must yield a frame or fail: it holds one largest frame.
            assert!(buf.next_frame().map(|f| f.is_some()).unwrap_or(true));
            break;
        }
        spare[..n].copy_from_slice(&stream[offset..offset + n]);
        buf.filled(n);
        offset += n;
        fed += n;
        loop {
            match buf.next_frame() {
                Ok(Some(Frame::Stun(m))) => {
                    assert!(m.len() >= 20 && m.len() <= max_frame);
                    assert_eq!(m[4..8], MAGIC_COOKIE.to_be_bytes());
                    assert_eq!((m.len() - 20) % 4, 0);
                    assert_eq!(frame_length(m, max_frame), Ok(Some(m.len())));
                    taken += m.len();
                }
                Ok(Some(Frame::ChannelData { channel, message })) => {
                    assert!((0x4000..=0x7FFF).contains(&channel));
                    let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
                    assert_eq!(message.len(), 4 + len);
                    let padded = 4 + len + (4 - len % 4) % 4;
                    assert!(padded <= max_frame);
                    taken += padded;
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(taken <= fed);
    }
    if failed {
        assert!(buf.next_frame().is_err(), "a failed stream stays failed");
    }
});
