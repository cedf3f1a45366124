//! Wall-clock time as callbox passes it around: whole seconds since the Unix epoch in a `u64`
//! (the sans-IO state machines, TURN REST usernames, the store and the admin API all use this
//! one type, so no boundary converts), read in one place and formatted by `humantime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (UTC).
pub type UnixSecs = u64;

/// The current wall-clock time. The only place callbox reads the system clock for wall time;
/// the rules in this crate take `now` as an argument so they can be tested on simulated time.
/// A clock before 1970 reads as 0.
pub fn unix_now() -> UnixSecs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC). Times past the year 9999 print as that year's end,
/// the largest value the format holds.
pub fn rfc3339(unix: UnixSecs) -> String {
    // humantime formats up to 9999-12-31T23:59:59Z and panics beyond.
    const MAX: UnixSecs = 253_402_300_799;
    let t = UNIX_EPOCH + Duration::from_secs(unix.min(MAX));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `YYYY-MM-DD` (UTC).
pub fn date(unix: UnixSecs) -> String {
    let mut s = rfc3339(unix);
    s.truncate("YYYY-MM-DD".len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_303_266), "2026-11-21T23:21:06Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(date(1_795_303_266), "2026-11-21");
    }

    #[test]
    fn now_is_after_this_was_written() {
        assert!(unix_now() > 1_795_000_000);
    }
}
