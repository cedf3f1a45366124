//! Thin wrappers over the Linux calls the load generator needs: batched UDP
//! (`recvmmsg`/`sendmmsg`), epoll, `poll`, rlimits, forced socket buffers, and the
//! `/proc` counters (CPU ticks, resident memory, machine-wide busy time).
//!
//! Why the batched UDP here is not `callbox_turn::batch` (checked when the two were to be
//! merged): the wrappers differ in what each caller does per datagram, and on a baseline
//! that per-datagram work is the measurement.
//! - The bare forwarder copies the kernel's `sockaddr_in` from a received slot into a send
//!   slot untouched. `callbox_turn::batch` hands out `SocketAddr`s (decoded from a
//!   `sockaddr_storage`, IPv4-mapped addresses normalized) and `SendBatch::push` encodes each
//!   one back into a `socket2::SockAddr`: two conversions per datagram the forwarder does not
//!   do today, so its numbers (the floor callbox is compared with) would move.
//! - The load generator sends N copies of one datagram on a connected socket (no address)
//!   and its senders retry `sendmmsg` on EINTR; `SendBatch` always carries an address and
//!   drops the datagram at the head on any error. Neither fits without new API in the relay
//!   crate that only the benchmark would use.
//! - `RecvBatch` keeps headroom and truncation flags for writing TURN headers in place, the
//!   relay's needs, not a forwarder's.
//! - xtask would link callbox-turn (tokio, axum, mio) for about 150 lines of syscall code.
//!
//! So the two stay apart; each is small, and the relay's can change for the relay's sake.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Datagrams per batched system call.
pub const BATCH: usize = 32;
/// Bytes per receive slot (larger datagrams are truncated; the benchmark sends ≤ 1004).
pub const SLOT: usize = 2048;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; children inherit it.
pub fn raise_nofile() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    r.rlim_cur = r.rlim_max;
    // SAFETY: `r` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r.rlim_cur)
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> bool {
    // SAFETY: passes a pointer to a live i32 and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        ) == 0
    }
}

/// Sets receive and send buffers to `bytes`, past `rmem_max` when allowed (root).
pub fn set_buffers(sock: &UdpSocket, bytes: i32) {
    let fd = sock.as_raw_fd();
    if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes) {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
    }
    if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes) {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes);
    }
}

/// A UDP socket bound to `addr` with SO_REUSEPORT (for several workers on one port).
pub fn bind_reuseport(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own; UdpSocket closes it on drop.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) {
        return Err(io::Error::last_os_error());
    }
    let sa = to_sockaddr(addr);
    // SAFETY: `sa` is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

pub fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

pub fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("the benchmark is IPv4 loopback only, got {a}"),
    }
}

/// [`BATCH`] datagram slots with their peer addresses, for `recvmmsg`/`sendmmsg`.
pub struct Batch {
    bufs: Vec<u8>,
    pub addrs: [libc::sockaddr_in; BATCH],
    pub lens: [usize; BATCH],
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batch")
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Self {
            bufs: vec![0; BATCH * SLOT],
            addrs: [to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            lens: [0; BATCH],
        }
    }

    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }

    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    /// Receives up to [`BATCH`] datagrams without blocking (or, with `wait`, blocking for
    /// the first). `Ok(0)` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        // SAFETY: all-zero iovec/mmsghdr are valid values; every field used is set below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * SLOT stays inside `bufs` (BATCH * SLOT bytes).
            iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iovs[i].iov_len = SLOT;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: the headers point at live buffers owned by `self` and the stack arrays.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                flags as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // A connected UDP socket reports an earlier ICMP unreachable here.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(n) {
            *len = h.msg_len as usize;
        }
        Ok(n)
    }

    /// Sends datagrams `0..n` (lengths `lens`) to `addrs` with `sendmmsg`. Returns how
    /// many the kernel took; datagrams refused by an error are skipped.
    pub fn send(&mut self, fd: RawFd, n: usize) -> usize {
        // SAFETY: as in `recv`.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as in `recv`.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: i * SLOT stays inside `bufs`.
            iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
            iovs[i].iov_len = self.lens[i];
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        sendmmsg_all(fd, &mut hdrs[..n])
    }
}

fn sendmmsg_all(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> usize {
    let mut at = 0;
    let mut ok = 0;
    while at < hdrs.len() {
        // SAFETY: the headers point at live buffers for the duration of the call.
        let r = unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), (hdrs.len() - at) as u32, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            at += 1; // skip the datagram that failed (e.g. ECONNREFUSED, ENOBUFS)
        } else {
            at += r as usize;
            ok += r as usize;
        }
    }
    ok
}

/// Sends `n` copies of `datagram` on a connected socket in one `sendmmsg`.
pub fn send_copies(fd: RawFd, datagram: &[u8], n: usize) -> usize {
    let n = n.min(BATCH);
    // SAFETY: all-zero iovec/mmsghdr are valid values.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    iov.iov_base = datagram.as_ptr() as *mut libc::c_void;
    iov.iov_len = datagram.len();
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for h in hdrs.iter_mut().take(n) {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    sendmmsg_all(fd, &mut hdrs[..n])
}

/// A minimal level-triggered epoll set.
#[derive(Debug)]
pub struct Epoll(RawFd);

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain epoll_create1(2) call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms`; fills `out` with the ready tokens.
    pub fn wait(&self, out: &mut Vec<u64>, timeout_ms: i32) {
        const MAX: usize = 256;
        // SAFETY: all-zero epoll_event is valid.
        let mut evs: [libc::epoll_event; MAX] = unsafe { std::mem::zeroed() };
        // SAFETY: `evs` holds MAX events.
        let n = unsafe { libc::epoll_wait(self.0, evs.as_mut_ptr(), MAX as i32, timeout_ms) };
        out.clear();
        for ev in evs.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            out.push(token);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// `poll(2)` for readability on `fds`; returns the indexes that are readable.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32, out: &mut Vec<usize>) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of the length given.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    out.clear();
    out.extend(
        pfds.iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i),
    );
}

pub fn clk_tck() -> f64 {
    // SAFETY: plain sysconf(3) call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// user + system CPU seconds of a process, all threads (`pid` None = this process).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(s) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    let Some(close) = s.rfind(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clk_tck()
}

/// VmRSS in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Machine-wide jiffies from /proc/stat's first line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jiffies {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// irq + softirq (on loopback, most of the packet delivery work).
    pub irq: u64,
    pub total: u64,
}

pub fn machine_jiffies() -> Jiffies {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Jiffies::default();
    };
    let Some(line) = s.lines().next() else {
        return Jiffies::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Jiffies {
        busy: total - at(3) - at(4),
        irq: at(5) + at(6),
        total,
    }
}

/// Cores' worth of (busy, irq) time between two samples.
pub fn cores_between(a: Jiffies, b: Jiffies) -> (f64, f64) {
    if b.total <= a.total {
        return (f64::NAN, f64::NAN);
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let span = (b.total - a.total) as f64;
    (
        ncpu * (b.busy - a.busy) as f64 / span,
        ncpu * (b.irq - a.irq) as f64 / span,
    )
}

/// The pids of the kernel's softirq threads (`ksoftirqd/N`): packet work the kernel
/// defers there is charged to no process of ours.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

pub fn cpu_seconds_sum(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|&p| cpu_seconds(Some(p)))
        .filter(|v| v.is_finite())
        .sum()
}
