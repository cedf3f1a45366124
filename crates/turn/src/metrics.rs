//! Counters of the turn role, written by the data path threads without contention (each
//! worker owns a slot) and summed when `/metrics` is scraped: the role registers a collector
//! in the process's registry rather than prometheus-client counters, which would be shared
//! atomics read-modify-written per packet by every worker.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use callbox_core::metrics::{DescriptorEncoder, Labels, MetricsRegistry, counter, counters, gauge, gauges};
use prometheus_client::collector::Collector;

use turn_proto::server::{AuthFailure, Quotas, Stats, Transport};

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
    /// By client transport (UDP, TCP, TLS).
    created_by_transport: [AtomicU64; 3],
    live_by_transport: [AtomicU64; 3],
    dropped_packets: AtomicU64,
    bandwidth_drops: AtomicU64,
    allocate_banned: AtomicU64,
    unauthenticated_drops: AtomicU64,
    send_drops: AtomicU64,
    relay_bind_failures: AtomicU64,
    relay_receive_errors: AtomicU64,
    /// TCP (0) and TLS (1) client connections.
    streams: [StreamSlot; 2],
    /// Milliseconds from [`Metrics::started`] to the worker's last loop turn.
    heartbeat_ms: AtomicU64,
}

/// One transport's stream counters in a worker's slot.
#[derive(Debug, Default)]
struct StreamSlot {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    bad_input: AtomicU64,
    idle_closed: AtomicU64,
    send_drops: AtomicU64,
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
        for (a, v) in self.created_by_transport.iter().zip(s.created_by_transport) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.live_by_transport.iter().zip(s.live_by_transport) {
            a.store(v, Relaxed);
        }
        self.dropped_packets.store(s.dropped_packets, Relaxed);
        self.bandwidth_drops.store(s.bandwidth_drops, Relaxed);
        self.allocate_banned.store(s.allocate_banned, Relaxed);
        self.unauthenticated_drops.store(s.unauthenticated_drops, Relaxed);
        self.send_drops.store(driver.send_drops, Relaxed);
        self.relay_bind_failures
            .store(driver.relay_bind_failures, Relaxed);
        self.relay_receive_errors
            .store(driver.relay_receive_errors, Relaxed);
        for (slot, c) in self.streams.iter().zip(&driver.streams) {
            slot.open.store(c.open, Relaxed);
            slot.accepted.store(c.accepted, Relaxed);
            slot.refused.store(c.refused, Relaxed);
            slot.bad_input.store(c.bad_input, Relaxed);
            slot.idle_closed.store(c.idle_closed, Relaxed);
            slot.send_drops.store(c.send_drops, Relaxed);
        }
    }
}

/// All counters of the turn role.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) workers: Vec<WorkerSlot>,
    pub(crate) event_drops: AtomicU64,
    pub(crate) quotas: Arc<Quotas>,
    /// The epoch of the workers' heartbeats.
    started: Instant,
}

impl Metrics {
    pub fn new(workers: usize, quotas: Arc<Quotas>) -> Self {
        Self {
            workers: (0..workers).map(|_| WorkerSlot::default()).collect(),
            event_drops: AtomicU64::new(0),
            quotas,
            started: Instant::now(),
        }
    }

    /// Worker `index` went round its loop now.
    pub(crate) fn heartbeat(&self, index: usize, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.workers[index].heartbeat_ms.store(ms, Relaxed);
    }

    /// Whether every worker went round its loop within `within` (a worker sleeps at most
    /// a quarter second between turns): what the service watchdog pings on.
    pub fn workers_alive(&self, within: Duration) -> bool {
        self.workers_alive_at(Instant::now(), within)
    }

    fn workers_alive_at(&self, now: Instant, within: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let within_ms = within.as_millis() as u64;
        self.workers
            .iter()
            .all(|w| now_ms.saturating_sub(w.heartbeat_ms.load(Relaxed)) <= within_ms)
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

/// Gauges in the text format are signed; these counts never come near `i64::MAX`.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        gauge(
            enc,
            "callbox_turn_allocations",
            "Live TURN allocations.",
            signed(self.allocations()),
        )?;
        counter(
            enc,
            "callbox_turn_allocations_created",
            "TURN allocations created.",
            self.sum(|w| &w.allocations_created),
        )?;
        // By transport in families of their own: the totals above keep their shape.
        let by = |f: fn(&WorkerSlot) -> &[AtomicU64; 3]| -> [u64; 3] {
            Transport::ALL.map(|t| self.workers.iter().map(|w| f(w)[t.index()].load(Relaxed)).sum())
        };
        let labels = Transport::ALL.map(|t| [("transport", t.as_str())]);
        let live = by(|w| &w.live_by_transport);
        gauges(
            enc,
            "callbox_turn_transport_allocations",
            "Live TURN allocations by the client's transport (udp, tcp, tls).",
            &[
                (&labels[0][..], signed(live[0])),
                (&labels[1][..], signed(live[1])),
                (&labels[2][..], signed(live[2])),
            ],
        )?;
        let created = by(|w| &w.created_by_transport);
        counters(
            enc,
            "callbox_turn_transport_allocations_created",
            "TURN allocations created, by the client's transport (udp, tcp, tls).",
            &[
                (&labels[0][..], created[0]),
                (&labels[1][..], created[1]),
                (&labels[2][..], created[2]),
            ],
        )?;
        counters(
            enc,
            "callbox_turn_relayed_packets",
            "Packets relayed, by direction.",
            &[
                (&[("direction", "to_peer")], self.sum(|w| &w.packets_to_peer)),
                (&[("direction", "to_client")], self.sum(|w| &w.packets_to_client)),
            ],
        )?;
        counters(
            enc,
            "callbox_turn_relayed_bytes",
            "Application bytes relayed, by direction.",
            &[
                (&[("direction", "to_peer")], self.sum(|w| &w.bytes_to_peer)),
                (&[("direction", "to_client")], self.sum(|w| &w.bytes_to_client)),
            ],
        )?;
        counter(
            enc,
            "callbox_stun_binding_requests",
            "STUN Binding requests answered.",
            self.sum(|w| &w.binding_requests),
        )?;
        let reasons: Vec<[(&str, &str); 1]> =
            AuthFailure::ALL.iter().map(|r| [("reason", r.label())]).collect();
        let failures: Vec<(Labels<'_>, u64)> = AuthFailure::ALL
            .iter()
            .zip(&reasons)
            .map(|(r, l)| (&l[..], self.sum(|w| &w.auth_failures[*r as usize])))
            .collect();
        counters(
            enc,
            "callbox_turn_auth_failures",
            "Requests refused by authentication, by reason (challenge is the normal first 401).",
            &failures,
        )?;
        counter(
            enc,
            "callbox_turn_denied_peers",
            "Permissions, channel binds and packets refused by the peer policy.",
            self.sum(|w| &w.denied_peers),
        )?;
        counters(
            enc,
            "callbox_turn_quota_rejections",
            "Allocations refused by quota.",
            &[
                (&[("quota", "user")], self.sum(|w| &w.quota_user)),
                (&[("quota", "total")], self.sum(|w| &w.quota_total)),
            ],
        )?;
        counter(
            enc,
            "callbox_turn_banned",
            "Allocate requests refused (403) because the client address is banned.",
            self.sum(|w| &w.allocate_banned),
        )?;
        counter(
            enc,
            "callbox_turn_unauthenticated_drops",
            "Requests from 5-tuples without an allocation left unanswered: their source was past turn.unauthenticated_rate (reflection limit).",
            self.sum(|w| &w.unauthenticated_drops),
        )?;
        counter(
            enc,
            "callbox_turn_dropped_packets",
            "Datagrams dropped: malformed, no allocation, no permission or channel.",
            self.sum(|w| &w.dropped_packets),
        )?;
        counter(
            enc,
            "callbox_turn_bandwidth_drops",
            "Datagrams dropped by the per-allocation bandwidth cap.",
            self.sum(|w| &w.bandwidth_drops),
        )?;
        counter(
            enc,
            "callbox_turn_send_drops",
            "Datagrams the kernel refused to send.",
            self.sum(|w| &w.send_drops),
        )?;
        counter(
            enc,
            "callbox_turn_relay_bind_failures",
            "Allocations refused because no relay socket could be bound (the log line has the cause).",
            self.sum(|w| &w.relay_bind_failures),
        )?;
        counter(
            enc,
            "callbox_turn_relay_receive_errors",
            "Receives on relay sockets that failed (the socket's error was logged, once a second at most).",
            self.sum(|w| &w.relay_receive_errors),
        )?;
        // Stream families carry `transport` ("tcp", "tls"): one sample per transport.
        let per = |f: fn(&StreamSlot) -> &AtomicU64| -> [u64; 2] {
            [0, 1].map(|t| self.workers.iter().map(|w| f(&w.streams[t]).load(Relaxed)).sum())
        };
        const T: [&[(&str, &str)]; 2] = [&[("transport", "tcp")], &[("transport", "tls")]];
        let open = per(|s| &s.open);
        gauges(
            enc,
            "callbox_turn_tcp_connections",
            "Open STUN/TURN client connections over TCP and TLS.",
            &[(T[0], signed(open[0])), (T[1], signed(open[1]))],
        )?;
        let accepted = per(|s| &s.accepted);
        counters(
            enc,
            "callbox_turn_tcp_accepted",
            "STUN/TURN client connections accepted over TCP and TLS (TLS: from turn.tls_listen and the one TLS port).",
            &[(T[0], accepted[0]), (T[1], accepted[1])],
        )?;
        let closed = [
            ("cap", per(|s| &s.refused)),
            ("bad_input", per(|s| &s.bad_input)),
            ("idle", per(|s| &s.idle_closed)),
        ];
        let labels: Vec<[(&str, &str); 2]> = closed
            .iter()
            .flat_map(|(r, _)| {
                [
                    [("transport", "tcp"), ("reason", *r)],
                    [("transport", "tls"), ("reason", *r)],
                ]
            })
            .collect();
        let samples: Vec<(&[(&str, &str)], u64)> = closed
            .iter()
            .flat_map(|(_, v)| *v)
            .zip(&labels)
            .map(|(v, l)| (&l[..], v))
            .collect();
        counters(
            enc,
            "callbox_turn_tcp_closed",
            "TCP and TLS client connections closed by the server, by reason: over the per-address or total cap (or the bound on TLS handshakes in flight) at accept, bytes that are not STUN or ChannelData (or a frame too long, or not TLS, or a failed handshake), silent past turn.tcp_idle_timeout_ms without an allocation or mid-frame (or a TLS handshake past tls.handshake_timeout_ms).",
            &samples,
        )?;
        let drops = per(|s| &s.send_drops);
        counters(
            enc,
            "callbox_turn_tcp_send_drop_bytes",
            "Bytes for TCP and TLS clients dropped because the client's send queue was full.",
            &[(T[0], drops[0]), (T[1], drops[1])],
        )?;
        counter(
            enc,
            "callbox_turn_event_drops",
            "Allocation events dropped because their consumer fell behind.",
            self.event_drops.load(Relaxed),
        )?;
        gauge(
            enc,
            "callbox_turn_quota_allocations",
            "Allocations counted against the total quota.",
            i64::from(self.quotas.total()),
        )?;
        gauge(
            enc,
            "callbox_turn_workers",
            "Data path threads.",
            signed(self.workers.len() as u64),
        )
    }
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    #[test]
    fn driver_counters_are_summed_over_workers() {
        let m = Arc::new(Metrics::new(2, Arc::new(Quotas::new(10, 10))));
        let counters = DriverCounters {
            send_drops: 1,
            relay_bind_failures: 2,
            relay_receive_errors: 3,
            ..DriverCounters::default()
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

    #[test]
    fn a_worker_that_stops_beating_makes_the_relay_unhealthy() {
        let m = Metrics::new(2, Arc::new(Quotas::new(10, 10)));
        let t0 = m.started;
        m.heartbeat(0, t0 + Duration::from_secs(10));
        m.heartbeat(1, t0 + Duration::from_secs(10));
        assert!(m.workers_alive_at(t0 + Duration::from_secs(12), Duration::from_secs(5)));
        m.heartbeat(0, t0 + Duration::from_secs(20));
        assert!(
            !m.workers_alive_at(t0 + Duration::from_secs(20), Duration::from_secs(5)),
            "worker 1 is stuck"
        );
    }
}
