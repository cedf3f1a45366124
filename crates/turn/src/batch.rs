//! Batched UDP receive and send with `recvmmsg`/`sendmmsg`: one system call moves up to
//! [`BATCH`] datagrams, into and out of buffers allocated once per worker.

#![allow(clippy::needless_range_loop)] // parallel arrays handed to the kernel are indexed together

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Size of one receive buffer. Larger datagrams are truncated by the kernel and dropped.
pub const BUF_SIZE: usize = 2048;

/// A set of [`BATCH`] receive buffers with their source addresses and lengths.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    /// Bytes left free at the start of each buffer (room for headers written in place).
    headroom: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("headroom", &self.headroom)
            .finish()
    }
}

impl RecvBatch {
    pub fn new(headroom: usize) -> Self {
        Self {
            bufs: vec![0u8; BATCH * BUF_SIZE],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            headroom,
        }
    }

    /// Room for a payload after the headroom, keeping `tail` bytes free at the end.
    fn capacity(&self, tail: usize) -> usize {
        BUF_SIZE - self.headroom - tail
    }

    /// Receives up to `max` datagrams (at most [`BATCH`]) into buffers `0..n`. Returns
    /// `Ok(0)` when the socket has nothing more (would block).
    pub fn recv(&mut self, fd: RawFd, max: usize, tail: usize) -> io::Result<usize> {
        let max = max.min(BATCH);
        let cap = self.capacity(tail);
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let base = self.bufs.as_mut_ptr();
        for i in 0..max {
            // SAFETY: i < BATCH, so the offset stays inside `bufs` (BATCH * BUF_SIZE bytes).
            let ptr = unsafe { base.add(i * BUF_SIZE + self.headroom) };
            iovs[i].write(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: cap,
            });
            // SAFETY: zeroed msghdr is valid; fields set below.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            hdrs[i].write(h);
        }
        // SAFETY: the first `max` headers are initialized and point at live buffers and
        // address storage owned by `self`, which outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr().cast(),
                max as libc::c_uint,
                // glibc declares the flags `int`, musl `unsigned int`.
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // ICMP errors from earlier sends surface here on Linux; they are no reason
                // to stop reading.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            // SAFETY: the kernel filled in the first `n` headers.
            let h = unsafe { hdrs[i].assume_init_ref() };
            self.lens[i] = h.msg_len as usize;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// The source of datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        let st = &self.addrs[i];
        match i32::from(st.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says this storage holds a sockaddr_in.
                let sin = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::new(
                    std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                    u16::from_be(sin.sin_port),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Some(normalize(SocketAddr::new(
                    std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into(),
                    u16::from_be(sin6.sin6_port),
                )))
            }
            _ => None,
        }
    }

    pub fn is_truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    pub fn len(&self, i: usize) -> usize {
        self.lens[i]
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// The payload of datagram `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let start = i * BUF_SIZE + self.headroom;
        &self.bufs[start..start + self.lens[i]]
    }

    /// The whole buffer of datagram `i` (headroom, payload, tail).
    pub fn buffer_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE]
    }

    pub fn buffer(&self, i: usize) -> &[u8] {
        &self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE]
    }
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) as plain IPv4.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => SocketAddr::V6(std::net::SocketAddrV6::new(*a.ip(), a.port(), 0, 0)),
        },
        v4 => v4,
    }
}

/// Datagrams waiting to go out of one socket.
pub struct SendBatch {
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("queued", &self.addrs.len())
            .finish()
    }
}

// SAFETY: the raw pointers in `iovs` are only dereferenced by `flush`, on the thread that
// owns the batch and the buffers they point into.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            addrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
        }
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Queues `data` for `to`.
    ///
    /// # Safety
    /// `data` must stay valid and unchanged until the next [`SendBatch::flush`].
    pub unsafe fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.addrs.push(SockAddr::from(to));
        self.iovs.push(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
    }

    /// Sends everything queued from `fd`. Datagrams the kernel refuses (full buffer,
    /// unreachable) are dropped, as UDP would; returns how many were dropped.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let mut dropped = 0;
        let mut start = 0;
        while start < self.addrs.len() {
            let n = (self.addrs.len() - start).min(BATCH);
            let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
            for i in 0..n {
                // SAFETY: zeroed mmsghdr is valid; the pointers set refer to `self`'s vectors.
                let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                let a = &self.addrs[start + i];
                h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = a.len();
                h.msg_hdr.msg_iov = &mut self.iovs[start + i];
                h.msg_hdr.msg_iovlen = 1;
                hdrs[i].write(h);
            }
            // SAFETY: `n` headers initialized above; the data pointers are valid per the
            // contract of `push`.
            let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().cast(), n as libc::c_uint, 0) };
            if sent <= 0 {
                // The first datagram failed (buffer full or an error for that destination):
                // drop it and go on with the rest.
                dropped += 1;
                start += 1;
            } else {
                start += sent as usize;
            }
        }
        self.addrs.clear();
        self.iovs.clear();
        dropped
    }
}
