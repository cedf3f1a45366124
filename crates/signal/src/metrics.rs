//! Counters of the signal role and their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const MESSAGE_TYPES: [&str; 9] = [
    "offer",
    "answer",
    "candidate",
    "message",
    "ice-servers",
    "ping",
    "leave",
    "binary",
    "other",
];

const REJECT_REASONS: [&str; 19] = [
    "bad-room",
    "unauthorized",
    "origin",
    "room-not-allowed",
    "banned",
    "room-full",
    "resume-expired",
    "resume-gap",
    "bad-resume",
    "too-many-connections",
    "draining",
    "subprotocol",
    "rate-limited",
    "bad-message",
    "unknown-peer",
    "too-large",
    "slow-reader",
    "bad-username",
    "bad-ttl",
];

/// Relay latency buckets (seconds).
const BUCKETS: [f64; 10] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
];

/// All counters of the signal role.
#[derive(Debug, Default)]
pub struct SignalMetrics {
    pub connections: AtomicI64,
    pub rooms: AtomicI64,
    pub peers: AtomicI64,
    pub resumes: AtomicU64,
    pub queue_drops: AtomicU64,
    pub ice_requests: AtomicU64,
    /// Session records lost because the history channel was full or closed.
    pub session_events_dropped: AtomicU64,
    messages: [AtomicU64; MESSAGE_TYPES.len()],
    rejects: [AtomicU64; REJECT_REASONS.len()],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl SignalMetrics {
    pub fn message(&self, kind: &str) {
        let i = MESSAGE_TYPES
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(MESSAGE_TYPES.len() - 1);
        self.messages[i].fetch_add(1, Relaxed);
    }

    pub fn reject(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) {
            self.rejects[i].fetch_add(1, Relaxed);
        }
    }

    pub fn rejects(&self, reason: &str) -> u64 {
        REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejects[i].load(Relaxed))
    }

    /// Time from a message's arrival to its delivery into the receivers' queues.
    pub fn observe_relay(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(
                o,
                "# HELP callbox_{name} {help}\n# TYPE callbox_{name} gauge\ncallbox_{name} {v}"
            );
        };
        gauge(
            "signal_connections",
            "Open signaling WebSocket connections.",
            self.connections.load(Relaxed),
        );
        gauge(
            "signal_rooms",
            "Rooms with at least one peer.",
            self.rooms.load(Relaxed),
        );
        gauge(
            "signal_peers",
            "Peers in rooms, connected or within their resume grace.",
            self.peers.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP callbox_signal_messages_total Client messages handled, by type.\n# TYPE callbox_signal_messages_total counter"
        );
        for (t, v) in MESSAGE_TYPES.iter().zip(&self.messages) {
            let _ = writeln!(
                o,
                "callbox_signal_messages_total{{type=\"{t}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP callbox_signal_rejects_total Refused connections, requests and messages, by reason.\n# TYPE callbox_signal_rejects_total counter"
        );
        for (r, v) in REJECT_REASONS.iter().zip(&self.rejects) {
            let _ = writeln!(
                o,
                "callbox_signal_rejects_total{{reason=\"{r}\"}} {}",
                v.load(Relaxed)
            );
        }
        for (name, help, v) in [
            ("signal_resumes_total", "Successful resumes.", &self.resumes),
            (
                "signal_queue_drops_total",
                "Connections closed because their send buffer overflowed (4013).",
                &self.queue_drops,
            ),
            (
                "signal_ice_requests_total",
                "ICE server lists handed out over HTTP.",
                &self.ice_requests,
            ),
            (
                "signal_session_events_dropped_total",
                "Finished-session records dropped because the history channel was full or closed.",
                &self.session_events_dropped,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP callbox_{name} {help}\n# TYPE callbox_{name} counter\ncallbox_{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP callbox_signal_relay_seconds Time from a message's arrival to its receivers' queues.\n# TYPE callbox_signal_relay_seconds histogram"
        );
        for (b, v) in BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                o,
                "callbox_signal_relay_seconds_bucket{{le=\"{b}\"}} {}",
                v.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "callbox_signal_relay_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "callbox_signal_relay_seconds_sum {}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(o, "callbox_signal_relay_seconds_count {count}");
        o
    }
}
