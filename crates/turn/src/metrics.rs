//! Counters of the turn role, written by the data path threads without contention (each
//! worker owns a slot) and summed when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use turn_proto::server::{AuthFailure, Quotas, Stats};

use crate::worker::DriverCounters;

/// One worker's counters, padded to its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerSlot {
    packets_to_peer: AtomicU64,
    bytes_to_peer: AtomicU64,
    packets_to_client: AtomicU64,
    bytes_to_client: AtomicU64,
    binding_requests: AtomicU64,
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    denied_peers: AtomicU64,
    quota_user: AtomicU64,
    quota_total: AtomicU64,
    allocations_created: AtomicU64,
    allocations: AtomicU64,
    dropped_packets: AtomicU64,
    bandwidth_drops: AtomicU64,
    allocate_banned: AtomicU64,
    unauthenticated_drops: AtomicU64,
    send_drops: AtomicU64,
    relay_bind_failures: AtomicU64,
    relay_receive_errors: AtomicU64,
}

impl WorkerSlot {
    /// Copies a shard's cumulative counters (one relaxed store each).
    pub(crate) fn publish(&self, s: &Stats, allocations: usize, driver: &DriverCounters) {
        self.packets_to_peer.store(s.traffic.packets_to_peer, Relaxed);
        self.bytes_to_peer.store(s.traffic.bytes_to_peer, Relaxed);
        self.packets_to_client.store(s.traffic.packets_to_client, Relaxed);
        self.bytes_to_client.store(s.traffic.bytes_to_client, Relaxed);
        self.binding_requests.store(s.binding_requests, Relaxed);
        for (a, v) in self.auth_failures.iter().zip(s.auth_failures) {
            a.store(v, Relaxed);
        }
        self.denied_peers.store(s.denied_peers, Relaxed);
        self.quota_user.store(s.quota_user, Relaxed);
        self.quota_total.store(s.quota_total, Relaxed);
        self.allocations_created.store(s.allocations_created, Relaxed);
        self.allocations.store(allocations as u64, Relaxed);
        self.dropped_packets.store(s.dropped_packets, Relaxed);
        self.bandwidth_drops.store(s.bandwidth_drops, Relaxed);
        self.allocate_banned.store(s.allocate_banned, Relaxed);
        self.unauthenticated_drops.store(s.unauthenticated_drops, Relaxed);
        self.send_drops.store(driver.send_drops, Relaxed);
        self.relay_bind_failures
            .store(driver.relay_bind_failures, Relaxed);
        self.relay_receive_errors
            .store(driver.relay_receive_errors, Relaxed);
    }
}

/// All counters of the turn role.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) workers: Vec<WorkerSlot>,
    pub(crate) event_drops: AtomicU64,
    pub(crate) quotas: Arc<Quotas>,
}

impl Metrics {
    pub fn new(workers: usize, quotas: Arc<Quotas>) -> Self {
        Self {
            workers: (0..workers).map(|_| WorkerSlot::default()).collect(),
            event_drops: AtomicU64::new(0),
            quotas,
        }
    }

    fn sum(&self, f: impl Fn(&WorkerSlot) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| f(w).load(Relaxed)).sum()
    }

    /// Live allocations across all workers.
    pub fn allocations(&self) -> u64 {
        self.sum(|w| &w.allocations)
    }

    /// Packets relayed client to peer and peer to client.
    pub fn packets(&self) -> (u64, u64) {
        (
            self.sum(|w| &w.packets_to_peer),
            self.sum(|w| &w.packets_to_client),
        )
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP callbox_{name} {help}\n# TYPE callbox_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "callbox_{name}{labels} {v}");
            }
        };
        metric(
            "turn_allocations",
            "gauge",
            "Live TURN allocations.",
            &[("", self.allocations())],
        );
        metric(
            "turn_allocations_created_total",
            "counter",
            "TURN allocations created.",
            &[("", self.sum(|w| &w.allocations_created))],
        );
        metric(
            "turn_relayed_packets_total",
            "counter",
            "Packets relayed, by direction.",
            &[
                ("{direction=\"to_peer\"}", self.sum(|w| &w.packets_to_peer)),
                ("{direction=\"to_client\"}", self.sum(|w| &w.packets_to_client)),
            ],
        );
        metric(
            "turn_relayed_bytes_total",
            "counter",
            "Application bytes relayed, by direction.",
            &[
                ("{direction=\"to_peer\"}", self.sum(|w| &w.bytes_to_peer)),
                ("{direction=\"to_client\"}", self.sum(|w| &w.bytes_to_client)),
            ],
        );
        metric(
            "stun_binding_requests_total",
            "counter",
            "STUN Binding requests answered.",
            &[("", self.sum(|w| &w.binding_requests))],
        );
        let labels: Vec<String> = AuthFailure::ALL
            .iter()
            .map(|r| format!("{{reason=\"{}\"}}", r.label()))
            .collect();
        let values: Vec<(&str, u64)> = AuthFailure::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| (l.as_str(), self.sum(|w| &w.auth_failures[*r as usize])))
            .collect();
        metric(
            "turn_auth_failures_total",
            "counter",
            "Requests refused by authentication, by reason (challenge is the normal first 401).",
            &values,
        );
        metric(
            "turn_denied_peers_total",
            "counter",
            "Permissions, channel binds and packets refused by the peer policy.",
            &[("", self.sum(|w| &w.denied_peers))],
        );
        metric(
            "turn_quota_rejections_total",
            "counter",
            "Allocations refused by quota.",
            &[
                ("{quota=\"user\"}", self.sum(|w| &w.quota_user)),
                ("{quota=\"total\"}", self.sum(|w| &w.quota_total)),
            ],
        );
        metric(
            "turn_banned_total",
            "counter",
            "Allocate requests refused (403) because the client address is banned.",
            &[("", self.sum(|w| &w.allocate_banned))],
        );
        metric(
            "turn_unauthenticated_drops_total",
            "counter",
            "Requests from 5-tuples without an allocation left unanswered: their source was past turn.unauthenticated_rate (reflection limit).",
            &[("", self.sum(|w| &w.unauthenticated_drops))],
        );
        metric(
            "turn_dropped_packets_total",
            "counter",
            "Datagrams dropped: malformed, no allocation, no permission or channel.",
            &[("", self.sum(|w| &w.dropped_packets))],
        );
        metric(
            "turn_bandwidth_drops_total",
            "counter",
            "Datagrams dropped by the per-allocation bandwidth cap.",
            &[("", self.sum(|w| &w.bandwidth_drops))],
        );
        metric(
            "turn_send_drops_total",
            "counter",
            "Datagrams the kernel refused to send.",
            &[("", self.sum(|w| &w.send_drops))],
        );
        metric(
            "turn_relay_bind_failures_total",
            "counter",
            "Allocations refused because no relay socket could be bound (the log line has the cause).",
            &[("", self.sum(|w| &w.relay_bind_failures))],
        );
        metric(
            "turn_relay_receive_errors_total",
            "counter",
            "Receives on relay sockets that failed (the socket's error was logged, once a second at most).",
            &[("", self.sum(|w| &w.relay_receive_errors))],
        );
        metric(
            "turn_event_drops_total",
            "counter",
            "Allocation events dropped because their consumer fell behind.",
            &[("", self.event_drops.load(Relaxed))],
        );
        metric(
            "turn_quota_allocations",
            "gauge",
            "Allocations counted against the total quota.",
            &[("", u64::from(self.quotas.total()))],
        );
        metric(
            "turn_workers",
            "gauge",
            "Data path threads.",
            &[("", self.workers.len() as u64)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_counters_are_summed_over_workers() {
        let m = Metrics::new(2, Arc::new(Quotas::new(10, 10)));
        let counters = DriverCounters {
            send_drops: 1,
            relay_bind_failures: 2,
            relay_receive_errors: 3,
        };
        m.workers[0].publish(&Stats::default(), 0, &counters);
        m.workers[1].publish(&Stats::default(), 0, &counters);
        let text = m.render();
        assert!(text.contains("\ncallbox_turn_send_drops_total 2\n"), "{text}");
        assert!(
            text.contains("\ncallbox_turn_relay_bind_failures_total 4\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE callbox_turn_relay_receive_errors_total counter\n"));
        assert!(
            text.contains("\ncallbox_turn_relay_receive_errors_total 6\n"),
            "{text}"
        );
    }
}
