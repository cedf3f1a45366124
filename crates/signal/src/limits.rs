//! Rate limits of the HTTP endpoints (the WebSocket's message windows are the hub's).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests per address over fixed windows, for the HTTP endpoints in `open` mode. The
/// table is bounded: past [`HttpLimiter::MAX_ENTRIES`] addresses, unknown ones are refused
/// until the window turns.
#[derive(Debug)]
pub struct HttpLimiter {
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    limit: u32,
    window: Duration,
}

impl HttpLimiter {
    pub const MAX_ENTRIES: usize = 100_000;

    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            limit,
            window,
        }
    }

    /// `Ok` or the seconds until the window turns.
    pub fn hit(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX_ENTRIES && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, (start, _)| now < *start + window);
            if map.len() >= Self::MAX_ENTRIES {
                return Err(window.as_secs().max(1));
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now >= e.0 + self.window {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > self.limit {
            Err((e.0 + self.window)
                .saturating_duration_since(now)
                .as_secs()
                .max(1))
        } else {
            Ok(())
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
