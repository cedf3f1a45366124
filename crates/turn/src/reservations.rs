//! Ports reserved by EVEN-PORT's R bit, shared by the workers: the Allocate that takes a
//! reservation comes from another 5-tuple, which the kernel may hash to another worker.
//!
//! Each reservation holds a bound socket and one unit of its user's quota (counted by the
//! server when the Allocate asked for it), so a user cannot hold more ports than its quota
//! by reserving and deleting in a loop. Reservations end when taken, or on a timer
//! ([`Reservations::sweep`], run by every worker once a second) when their lifetime
//! passes; the table is bounded in size too. Touched only by such Allocates and the
//! once-a-second sweep, never per packet.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turn_proto::server::Quotas;

struct Reserved {
    sock: UdpSocket,
    user: String,
    expires: Instant,
}

/// The reserved sockets by token.
pub struct Reservations {
    map: Mutex<HashMap<[u8; 8], Reserved>>,
    quotas: Arc<Quotas>,
    lifetime: Duration,
    max: usize,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations")
            .field("len", &self.len())
            .field("lifetime", &self.lifetime)
            .field("max", &self.max)
            .finish()
    }
}

impl Reservations {
    /// Reservations kept for `lifetime`, at most `max` at once, giving their quota units
    /// back to `quotas`.
    pub fn new(quotas: Arc<Quotas>, lifetime: Duration, max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            quotas,
            lifetime,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Reserved>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `sock` for `user` (whose quota unit it now holds) and returns its token, or
    /// `None` when the table is full (the caller gives the unit back).
    pub fn insert(&self, sock: UdpSocket, user: &str, now: Instant) -> Option<[u8; 8]> {
        let mut map = self.lock();
        if map.len() >= self.max {
            drop(map);
            self.sweep(now);
            map = self.lock();
            if map.len() >= self.max {
                return None;
            }
        }
        let token: [u8; 8] = rand::random();
        map.insert(
            token,
            Reserved {
                sock,
                user: user.to_string(),
                expires: now + self.lifetime,
            },
        );
        Some(token)
    }

    /// Takes the socket reserved under `token`, if it has not expired. Its quota unit is
    /// given back either way: the Allocate that takes it counted one of its own.
    pub fn take(&self, token: &[u8; 8], now: Instant) -> Option<UdpSocket> {
        let r = self.lock().remove(token)?;
        self.quotas.release(&r.user);
        (r.expires > now).then_some(r.sock)
    }

    /// Closes the reservations whose lifetime has passed and gives their quota back.
    /// Returns how many ended.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut ended = Vec::new();
        self.lock().retain(|_, r| {
            if r.expires > now {
                true
            } else {
                ended.push(std::mem::take(&mut r.user));
                false
            }
        });
        for user in &ended {
            self.quotas.release(user);
        }
        ended.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn reservations_hold_quota_until_taken_or_expired_and_are_bounded() {
        let quotas = Arc::new(Quotas::new(100, 3));
        let r = Reservations::new(Arc::clone(&quotas), Duration::from_secs(30), 2);
        let t0 = Instant::now();
        quotas.acquire("u").unwrap();
        let a = r.insert(sock(), "u", t0).unwrap();
        quotas.acquire("u").unwrap();
        let _b = r.insert(sock(), "u", t0).unwrap();
        quotas.acquire("u").unwrap();
        assert_eq!(r.insert(sock(), "u", t0), None, "bounded");
        quotas.release("u");
        assert_eq!(quotas.total(), 2);
        assert!(r.take(&a, t0 + Duration::from_secs(1)).is_some());
        assert!(r.take(&a, t0).is_none(), "a token works once");
        assert_eq!(quotas.total(), 1);
        // The timer ends the rest without any new Allocate.
        assert_eq!(r.sweep(t0 + Duration::from_secs(29)), 0);
        assert_eq!(r.sweep(t0 + Duration::from_secs(30)), 1);
        assert!(r.is_empty());
        assert_eq!(quotas.total(), 0);
    }

    #[test]
    fn an_expired_token_gives_no_socket_but_its_quota_back() {
        let quotas = Arc::new(Quotas::new(100, 3));
        let r = Reservations::new(Arc::clone(&quotas), Duration::from_secs(2), 8);
        let t0 = Instant::now();
        quotas.acquire("u").unwrap();
        let a = r.insert(sock(), "u", t0).unwrap();
        assert!(r.take(&a, t0 + Duration::from_secs(2)).is_none());
        assert_eq!(quotas.total(), 0);
    }
}
