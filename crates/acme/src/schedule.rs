//! When to order: renewal at a share of the certificate's lifetime with jitter, and
//! exponential backoff after failures. Pure arithmetic; the random draws come in as
//! arguments so tests pin them.

use std::time::{Duration, SystemTime};

/// The share of the lifetime the renewal time moves earlier, at most, at random: many
/// servers issued at once (a fleet rebuilt together) spread their renewals over it.
const JITTER_SHARE: f64 = 0.05;

/// When to renew a certificate valid from `not_before` to `not_after`: once
/// `remaining_percent` of its lifetime remains, moved earlier by `draw` (0..1) times a
/// twentieth of the lifetime. Never earlier than `not_before`.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    remaining_percent: u8,
    draw: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let keep = lifetime.mul_f64(f64::from(remaining_percent.min(100)) / 100.0);
    let jitter = lifetime.mul_f64(JITTER_SHARE * draw.clamp(0.0, 1.0));
    let at = not_after.checked_sub(keep + jitter).unwrap_or(not_before);
    at.max(not_before)
}

/// Waits between failed orders: `min`, doubled after each failure up to `max`, each wait
/// drawn between half and all of it (so a fleet that failed together does not retry in
/// step against the CA's rate limits).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait after one more failure; `draw` is uniform in 0..1.
    pub fn failed(&mut self, draw: f64) -> Duration {
        let wait = self.next.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0));
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_90_day_certificate_renews_near_day_60() {
        let from = SystemTime::UNIX_EPOCH + DAY * 1000;
        let to = from + DAY * 90;
        let at = renew_at(from, to, 33, 0.0);
        let day = at.duration_since(from).unwrap().as_secs_f64() / 86_400.0;
        assert!((60.0..60.4).contains(&day), "{day}");
        let early = renew_at(from, to, 33, 1.0);
        let day = early.duration_since(from).unwrap().as_secs_f64() / 86_400.0;
        assert!(
            (55.8..56.0).contains(&day),
            "jitter moves it at most 4.5 days earlier: {day}"
        );
    }

    #[test]
    fn odd_validity_never_renews_before_issue() {
        let from = SystemTime::UNIX_EPOCH + DAY;
        assert_eq!(renew_at(from, from, 33, 1.0), from, "zero lifetime");
        assert_eq!(
            renew_at(from, from - DAY, 33, 0.5),
            from,
            "notAfter before notBefore"
        );
        assert_eq!(renew_at(from, from + DAY, 100, 1.0), from);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(b.failed(1.0), Duration::from_secs(60));
        assert_eq!(b.failed(1.0), Duration::from_secs(120));
        assert_eq!(b.failed(0.0), Duration::from_secs(120), "half of 240");
        assert_eq!(b.failed(1.0), Duration::from_secs(300));
        assert_eq!(b.failed(1.0), Duration::from_secs(300));
        b.succeeded();
        assert_eq!(b.failed(1.0), Duration::from_secs(60));
    }
}
