//! The message rate windows the hub counts under its locks: per connection and per room
//! (fixed windows with a streak of windows over the limit, for the 4029 close), and per
//! address (shared by the address's peers, counted without a lock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    start: Option<Instant>,
    count: u32,
    over: bool,
    pub(crate) warned: bool,
    /// Consecutive windows (including this one) in which the limit was passed.
    pub(crate) streak: u32,
}

impl Window {
    /// Counts one message at `now`; true if it is within `limit`.
    pub(crate) fn hit(&mut self, now: Instant, window: Duration, limit: u32) -> bool {
        match self.start {
            Some(s) if now < s + window => {}
            Some(s) => {
                let next_adjacent = now < s + window * 2;
                self.streak = if self.over && next_adjacent {
                    self.streak
                } else {
                    0
                };
                *self = Window {
                    start: Some(now),
                    streak: self.streak,
                    ..Window::default()
                };
            }
            None => self.start = Some(now),
        }
        self.count += 1;
        if self.count > limit {
            if !self.over {
                self.over = true;
                self.streak += 1;
            }
            false
        } else {
            true
        }
    }
}

/// An address's message window, shared by its peers and counted without a lock (the
/// window turn is approximate under races, which a rate limit can afford).
#[derive(Debug, Default)]
pub(crate) struct AddrRate {
    /// Window start, in milliseconds since the hub's epoch.
    start_ms: AtomicU64,
    count: AtomicU64,
}

impl AddrRate {
    pub(crate) fn hit(&self, now_ms: u64, window_ms: u64, limit: u32) -> bool {
        let start = self.start_ms.load(Ordering::Relaxed);
        if now_ms >= start + window_ms
            && self
                .start_ms
                .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < u64::from(limit)
    }
}
