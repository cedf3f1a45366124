//! STUN and ChannelData messages back to back on a TCP or TLS stream (RFC 8656 section
//! 12, RFC 8489 section 6.2.2), sans-IO: bytes in, whole frames out.
//!
//! A STUN message is its 20-byte header plus the header's length field (a multiple of 4);
//! a ChannelData message (first byte 0x40-0x7F: RFC 8656 narrowed channel numbers to
//! 0x4000-0x4FFF, but clients of RFC 5766, coturn's among them, still bind up to 0x7FFF,
//! and the server accepts them) is its 4-byte header plus its length field, padded over a stream
//! to a multiple of 4 (the length field counts the data without the padding). Lengths are
//! read as `u16` and added in `usize`, so no frame length can wrap (a 16-bit sum
//! desynchronised coturn's and pion's framers: coturn #1837 and #1964, pion/turn #593).
//! After an error the stream cannot be resynchronised: the driver closes the connection.

use crate::stun::{HEADER_LEN, MAGIC_COOKIE};

/// Why a stream cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("bytes that start neither a STUN nor a ChannelData message")]
    NotStunOrChannelData,
    #[error("a STUN message length that is not a multiple of 4")]
    BadLength,
    #[error("a frame longer than the largest accepted")]
    TooLong,
}

/// One whole message of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A STUN message, header included.
    Stun(&'a [u8]),
    /// A ChannelData message: `message` is its header and data without the padding (what
    /// a datagram would carry).
    ChannelData { channel: u16, message: &'a [u8] },
}

/// Bytes of zero padding after `data_len` bytes of ChannelData on a stream (0..=3).
pub fn channel_data_padding(data_len: usize) -> usize {
    (4 - data_len % 4) % 4
}

/// The zero bytes that pad `data_len` bytes of ChannelData on a stream: pad bytes are
/// always zero on the wire (unzeroed padding leaked memory in coturn #1984).
pub fn stream_padding(data_len: usize) -> &'static [u8] {
    &[0u8; 3][..channel_data_padding(data_len)]
}

/// The length of the frame at the start of `buf`, padding included, once its header is
/// there (`Ok(None)`: more bytes needed). A frame longer than `max_frame` is refused from
/// its header alone, and so is a first byte that starts neither kind of message, so no
/// garbage is ever buffered.
pub fn frame_length(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let total = match first {
        0x00..=0x3F => {
            if buf.len() < 8 {
                // Judge what is there: the cookie's leading bytes can already be wrong.
                let have = &buf[4.min(buf.len())..];
                if !MAGIC_COOKIE.to_be_bytes().starts_with(have) {
                    return Err(FramingError::NotStunOrChannelData);
                }
                return Ok(None);
            }
            if buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
                return Err(FramingError::NotStunOrChannelData);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            if len % 4 != 0 {
                return Err(FramingError::BadLength);
            }
            HEADER_LEN + len
        }
        0x40..=0x7F => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            4 + len + channel_data_padding(len)
        }
        _ => return Err(FramingError::NotStunOrChannelData),
    };
    if total > max_frame {
        return Err(FramingError::TooLong);
    }
    Ok(Some(total))
}

/// A stream's receive buffer: read into [`StreamBuffer::spare`], mark what arrived with
/// [`StreamBuffer::filled`], take whole frames with [`StreamBuffer::next_frame`]. Its
/// capacity is fixed at construction (one largest frame); nothing is allocated after.
#[derive(Debug)]
pub struct StreamBuffer {
    buf: Box<[u8]>,
    /// Bytes `start..end` are received and not yet taken.
    start: usize,
    end: usize,
    max_frame: usize,
    failed: bool,
}

impl StreamBuffer {
    /// A buffer for frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: vec![0u8; max_frame.max(HEADER_LEN)].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
            failed: false,
        }
    }

    /// Where the next read goes. Taken frames are moved out of the way first, so the
    /// spare room is never smaller than what the next frame still needs.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`StreamBuffer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// True while part of a frame is buffered (a stream stopped here is stalled).
    pub fn is_mid_frame(&self) -> bool {
        self.end > self.start
    }

    /// The next whole frame, if it has arrived. After an error every later call fails too.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FramingError> {
        if self.failed {
            return Err(FramingError::NotStunOrChannelData);
        }
        let pending = &self.buf[self.start..self.end];
        let total = match frame_length(pending, self.max_frame) {
            Ok(Some(total)) if total <= pending.len() => total,
            Ok(_) => return Ok(None),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        let frame = &self.buf[self.start..self.start + total];
        self.start += total;
        Ok(Some(if frame[0] >= 0x40 {
            let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
            Frame::ChannelData {
                channel: u16::from_be_bytes([frame[0], frame[1]]),
                message: &frame[..4 + len],
            }
        } else {
            Frame::Stun(frame)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageBuilder, method};
    use proptest::prelude::*;

    const MAX: usize = 20 + 65_535;

    fn binding(tid: u8) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, &[tid; 12]);
        b.add_fingerprint();
        b.finish();
        buf
    }

    fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
        let mut v = channel.to_be_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
        v.extend_from_slice(stream_padding(data.len()));
        v
    }

    fn frames(stream: &[u8], reads: &[usize]) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut b = StreamBuffer::new(MAX);
        let mut out = Vec::new();
        let mut rest = stream;
        let mut sizes = reads.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            let spare = b.spare();
            let n = n.min(spare.len());
            spare[..n].copy_from_slice(&rest[..n]);
            b.filled(n);
            rest = &rest[n..];
            while let Some(f) = b.next_frame()? {
                out.push(match f {
                    Frame::Stun(m) | Frame::ChannelData { message: m, .. } => m.to_vec(),
                });
            }
        }
        Ok(out)
    }

    #[test]
    fn stun_and_channel_data_back_to_back() {
        let mut stream = binding(1);
        stream.extend(channel_data(0x4000, b"hello"));
        stream.extend(binding(2));
        stream.extend(channel_data(0x4FFF, b""));
        let got = frames(&stream, &[7, 1, 30]).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], binding(1));
        assert_eq!(
            got[1],
            channel_data(0x4000, b"hello")[..9].to_vec(),
            "without its padding"
        );
        assert_eq!(got[2], binding(2));
        assert_eq!(
            got[3],
            0x4FFFu32.to_be_bytes()[2..]
                .iter()
                .chain(&[0, 0])
                .copied()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn padding_is_zero_and_up_to_three_bytes() {
        for (len, pad) in [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (5, 3)] {
            assert_eq!(channel_data_padding(len), pad);
            assert!(stream_padding(len).iter().all(|&b| b == 0));
            assert_eq!(stream_padding(len).len(), pad);
        }
    }

    #[test]
    fn garbage_is_refused_from_its_first_bytes() {
        let garbage = vec![0xFFu8; 64 * 1024];
        assert_eq!(
            frame_length(&garbage, MAX),
            Err(FramingError::NotStunOrChannelData)
        );
        // A STUN-looking first byte with a wrong cookie is refused before 20 bytes arrive.
        assert_eq!(
            frame_length(&[0, 1, 0, 0, 0x21, 0x13], MAX),
            Err(FramingError::NotStunOrChannelData)
        );
        assert_eq!(frame_length(&[0, 1, 0, 0, 0x21, 0x12], MAX), Ok(None));
        let mut b = StreamBuffer::new(MAX);
        // Text reads as ChannelData ("G" is 0x47, a channel byte); a byte past 0x7F cannot.
        b.spare()[..4].copy_from_slice(b"\x80GET");
        b.filled(4);
        assert_eq!(b.next_frame(), Err(FramingError::NotStunOrChannelData));
        assert!(b.next_frame().is_err(), "a failed stream stays failed");
    }

    #[test]
    fn lengths_are_checked_from_the_header() {
        let mut m = binding(1);
        m[3] = 2;
        assert_eq!(frame_length(&m, MAX), Err(FramingError::BadLength));
        // 0xFFFF of ChannelData is 4 + 65535 + 1 padding: longer than a small limit, and
        // computed without wrapping.
        assert_eq!(
            frame_length(&[0x40, 0, 0xFF, 0xFF], 1500),
            Err(FramingError::TooLong)
        );
        assert_eq!(
            frame_length(&[0x40, 0, 0xFF, 0xFF], 70_000),
            Ok(Some(4 + 65_535 + 1))
        );
        assert_eq!(
            frame_length(&[0x00, 1, 0xFF, 0xFC, 0x21, 0x12, 0xA4, 0x42], MAX),
            Ok(Some(20 + 65_532))
        );
        assert_eq!(frame_length(&[0x40, 0], MAX), Ok(None));
    }

    #[test]
    fn a_partial_frame_waits_and_is_mid_frame() {
        let m = binding(3);
        let mut b = StreamBuffer::new(MAX);
        b.spare()[..10].copy_from_slice(&m[..10]);
        b.filled(10);
        assert_eq!(b.next_frame(), Ok(None));
        assert!(b.is_mid_frame());
        b.spare()[..m.len() - 10].copy_from_slice(&m[10..]);
        b.filled(m.len() - 10);
        assert_eq!(b.next_frame(), Ok(Some(Frame::Stun(&m))));
        assert!(!b.is_mid_frame());
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_frames(
            parts in proptest::collection::vec((any::<bool>(), 0u16..0x1000, proptest::collection::vec(any::<u8>(), 0..300)), 1..20),
            reads in proptest::collection::vec(1usize..200, 1..10),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (i, (stun, ch, data)) in parts.iter().enumerate() {
                if *stun {
                    let m = binding(i as u8);
                    stream.extend(&m);
                    want.push(m);
                } else {
                    let m = channel_data(0x4000 + ch, data);
                    stream.extend(&m);
                    want.push(m[..4 + data.len()].to_vec());
                }
            }
            prop_assert_eq!(frames(&stream, &reads).unwrap(), want);
        }
    }
}
