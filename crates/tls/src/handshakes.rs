//! TLS handshakes in flight, bounded across every TLS listener of the process, and the
//! time one may take: a client that opens connections and never finishes its handshake
//! holds a slot for at most the timeout, and past the bound new ones are closed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The shared bound (clones share the count).
#[derive(Debug, Clone)]
pub struct HandshakeLimit {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    /// How long a handshake may take from accept to its end.
    pub timeout: Duration,
}

/// One handshake's place; given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot(Arc<AtomicUsize>);

impl HandshakeLimit {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max,
            timeout,
        }
    }

    /// A slot, or `None` when `max` handshakes are in flight.
    pub fn try_acquire(&self) -> Option<HandshakeSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakeSlot(Arc::clone(&self.in_flight)))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_come_back() {
        let limit = HandshakeLimit::new(2, Duration::from_secs(1));
        let a = limit.try_acquire().unwrap();
        let b = limit.clone().try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert_eq!(limit.in_flight(), 1);
        assert!(limit.try_acquire().is_some());
        drop(b);
        assert_eq!(limit.in_flight(), 0);
    }
}
