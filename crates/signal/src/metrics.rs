//! Counters of the signal role, exposed through the process's metrics registry.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use callbox_core::metrics::{DescriptorEncoder, Labels, MetricsRegistry, counter, counters, gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::metrics::MetricType;

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

const REJECT_REASONS: [&str; 20] = [
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
    "unavailable",
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
    /// Redis commands of the shared rooms that failed or timed out.
    pub redis_errors: AtomicU64,
    messages: [AtomicU64; MESSAGE_TYPES.len()],
    rejects: [AtomicU64; REJECT_REASONS.len()],
    /// Observations per bucket, each counted in the first bucket it fits (the encoder
    /// writes the cumulative counts).
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
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Adds these counters to `registry`.
    pub fn register(self: &Arc<Self>, registry: &MetricsRegistry) {
        registry.register_collector(Arc::clone(self));
    }

    /// These counters alone, in the Prometheus text format.
    pub fn render(self: &Arc<Self>) -> String {
        let registry = MetricsRegistry::new();
        self.register(&registry);
        registry.encode()
    }
}

impl Collector for SignalMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut enc,
            "callbox_signal_connections",
            "Open signaling WebSocket connections.",
            self.connections.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "callbox_signal_rooms",
            "Rooms with at least one peer.",
            self.rooms.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "callbox_signal_peers",
            "Peers in rooms, connected or within their resume grace.",
            self.peers.load(Relaxed),
        )?;
        let types: Vec<[(&str, &str); 1]> = MESSAGE_TYPES.iter().map(|t| [("type", *t)]).collect();
        let messages: Vec<(Labels<'_>, u64)> = types
            .iter()
            .zip(&self.messages)
            .map(|(l, v)| (&l[..], v.load(Relaxed)))
            .collect();
        counters(
            &mut enc,
            "callbox_signal_messages",
            "Client messages handled, by type.",
            &messages,
        )?;
        let reasons: Vec<[(&str, &str); 1]> = REJECT_REASONS.iter().map(|r| [("reason", *r)]).collect();
        let rejects: Vec<(Labels<'_>, u64)> = reasons
            .iter()
            .zip(&self.rejects)
            .map(|(l, v)| (&l[..], v.load(Relaxed)))
            .collect();
        counters(
            &mut enc,
            "callbox_signal_rejects",
            "Refused connections, requests and messages, by reason.",
            &rejects,
        )?;
        for (name, help, v) in [
            ("callbox_signal_resumes", "Successful resumes.", &self.resumes),
            (
                "callbox_signal_queue_drops",
                "Connections closed because their send buffer overflowed (4013).",
                &self.queue_drops,
            ),
            (
                "callbox_signal_ice_requests",
                "ICE server lists handed out over HTTP.",
                &self.ice_requests,
            ),
            (
                "callbox_signal_session_events_dropped",
                "Finished-session records dropped because the history channel was full or closed.",
                &self.session_events_dropped,
            ),
            (
                "callbox_signal_redis_errors",
                "Redis commands of the shared rooms (signal.redis_url) that failed or timed out.",
                &self.redis_errors,
            ),
        ] {
            counter(&mut enc, name, help, v.load(Relaxed))?;
        }
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(b, v)| (*b, v.load(Relaxed)))
            .collect();
        enc.encode_descriptor(
            "callbox_signal_relay_seconds",
            "Time from a message's arrival to its receivers' queues.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9,
            self.latency_count.load(Relaxed),
            &buckets,
            None,
        )
    }
}
