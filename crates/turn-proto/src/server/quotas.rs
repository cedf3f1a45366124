//! Limits: allocation counts shared by the shards ([`Quotas`], a mutex touched only when
//! allocations are made and freed) and the per-allocation bandwidth bucket (owned by its
//! allocation, so the packet path takes no lock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Allocation counts shared by every shard.
#[derive(Debug)]
pub struct Quotas {
    total: AtomicU32,
    max_total: u32,
    max_per_user: u32,
    per_user: Mutex<HashMap<String, u32>>,
}

/// Why an allocation was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    User,
    Total,
}

impl Quotas {
    pub fn new(max_total: u32, max_per_user: u32) -> Self {
        Self {
            total: AtomicU32::new(0),
            max_total,
            max_per_user,
            per_user: Mutex::new(HashMap::new()),
        }
    }

    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one allocation (or reservation) of `user`.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_user.get(user).copied().unwrap_or(0);
        if n >= self.max_per_user {
            return Err(QuotaError::User);
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < self.max_total).then_some(t + 1)
            })
            .is_err()
        {
            return Err(QuotaError::Total);
        }
        per_user.insert(user.to_string(), n + 1);
        Ok(())
    }

    /// Gives back what [`Quotas::acquire`] counted.
    pub fn release(&self, user: &str) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bytes-per-second budget of one allocation and direction, with a burst of one second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(now: Instant, rate: u64) -> Self {
        Self {
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes if the bucket (rate bytes/s, burst of one second) has them.
    pub(crate) fn take(&mut self, now: Instant, rate: u64, n: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add =
                (elapsed.as_nanos().min(u128::from(u64::MAX)) as u64 / 1000).saturating_mul(rate) / 1_000_000;
            if add > 0 {
                self.tokens = (self.tokens + add).min(rate);
                self.last = now;
            }
        }
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}
