//! Counters of one listener, rendered into its role's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::limits::{ConnectionLimits, Refusal};

/// What happened at one listener's door.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_per_address: AtomicU64,
    pub(crate) refused_total: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
}

impl ListenerMetrics {
    pub(crate) fn refused(&self, why: Refusal) {
        match why {
            Refusal::PerAddress => &self.refused_per_address,
            Refusal::Total => &self.refused_total,
        }
        .fetch_add(1, Relaxed);
    }

    /// Connections refused at accept so far (both caps).
    pub fn refusals(&self) -> u64 {
        self.refused_per_address.load(Relaxed) + self.refused_total.load(Relaxed)
    }

    /// Prometheus text for the listener named `listener`, with its live counts.
    pub fn render(&self, listener: &str, live: &ConnectionLimits) -> String {
        let mut out = String::new();
        let l = format!("listener=\"{listener}\"");
        let _ = writeln!(
            out,
            "# HELP callbox_http_connections TCP connections an HTTP listener holds (WebSocket included).\n\
             # TYPE callbox_http_connections gauge\n\
             callbox_http_connections{{{l}}} {}",
            live.open()
        );
        let _ = writeln!(
            out,
            "# HELP callbox_http_connections_accepted_total TCP connections accepted and admitted.\n\
             # TYPE callbox_http_connections_accepted_total counter\n\
             callbox_http_connections_accepted_total{{{l}}} {}",
            self.accepted.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP callbox_http_connections_refused_total TCP connections closed at accept, by the cap they were past.\n\
             # TYPE callbox_http_connections_refused_total counter\n\
             callbox_http_connections_refused_total{{{l},cap=\"per_address\"}} {}\n\
             callbox_http_connections_refused_total{{{l},cap=\"total\"}} {}",
            self.refused_per_address.load(Relaxed),
            self.refused_total.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP callbox_http_header_timeouts_total Connections closed because their request head did not arrive in time.\n\
             # TYPE callbox_http_header_timeouts_total counter\n\
             callbox_http_header_timeouts_total{{{l}}} {}",
            self.header_timeouts.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP callbox_http_accept_errors_total accept() failures (out of descriptors, ...).\n\
             # TYPE callbox_http_accept_errors_total counter\n\
             callbox_http_accept_errors_total{{{l}}} {}",
            self.accept_errors.load(Relaxed)
        );
        out
    }
}
