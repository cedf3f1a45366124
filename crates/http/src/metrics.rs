//! Counters of each listener, exposed through the process's metrics registry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use callbox_core::metrics::{DescriptorEncoder, Labels, MetricsRegistry, counters, gauges};
use prometheus_client::collector::Collector;

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

    /// Counters for the listener named `listener` (the `listener` label), exposed through
    /// `registry` with its live connection count. Counters made with `default()` instead
    /// count without being exposed.
    pub fn register(
        registry: &MetricsRegistry,
        listener: &'static str,
        live: Arc<ConnectionLimits>,
    ) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry
            .shared::<Listeners>()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((listener, Arc::clone(&metrics), live));
        metrics
    }
}

/// Every registered listener of the process, written as one family per metric (several
/// roles' listeners share the names, told apart by the `listener` label).
#[derive(Debug, Clone, Default)]
struct Listeners(Arc<Mutex<Vec<Listener>>>);

/// A registered listener: its `listener` label, its counters, its live connections.
type Listener = (&'static str, Arc<ListenerMetrics>, Arc<ConnectionLimits>);

impl Collector for Listeners {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let labels: Vec<[(&str, &str); 1]> = all.iter().map(|(l, _, _)| [("listener", *l)]).collect();
        let sum = |f: fn(&ListenerMetrics) -> &AtomicU64| -> Vec<(Labels<'_>, u64)> {
            all.iter()
                .zip(&labels)
                .map(|((_, m, _), l)| (&l[..], f(m).load(Relaxed)))
                .collect()
        };
        let open: Vec<(Labels<'_>, i64)> = all
            .iter()
            .zip(&labels)
            .map(|((_, _, live), l)| (&l[..], live.open() as i64))
            .collect();
        gauges(
            &mut enc,
            "callbox_http_connections",
            "TCP connections an HTTP listener holds (WebSocket included).",
            &open,
        )?;
        counters(
            &mut enc,
            "callbox_http_connections_accepted",
            "TCP connections accepted and admitted.",
            &sum(|m| &m.accepted),
        )?;
        let caps: Vec<[(&str, &str); 2]> = all
            .iter()
            .flat_map(|(l, _, _)| {
                [
                    [("listener", *l), ("cap", "per_address")],
                    [("listener", *l), ("cap", "total")],
                ]
            })
            .collect();
        let refused: Vec<(Labels<'_>, u64)> = all
            .iter()
            .flat_map(|(_, m, _)| [m.refused_per_address.load(Relaxed), m.refused_total.load(Relaxed)])
            .zip(&caps)
            .map(|(v, l)| (&l[..], v))
            .collect();
        counters(
            &mut enc,
            "callbox_http_connections_refused",
            "TCP connections closed at accept, by the cap they were past.",
            &refused,
        )?;
        counters(
            &mut enc,
            "callbox_http_header_timeouts",
            "Connections closed because their request head did not arrive in time.",
            &sum(|m| &m.header_timeouts),
        )?;
        counters(
            &mut enc,
            "callbox_http_accept_errors",
            "accept() failures (out of descriptors, ...).",
            &sum(|m| &m.accept_errors),
        )
    }
}
