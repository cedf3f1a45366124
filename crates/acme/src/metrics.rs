//! What the ACME client counts: orders by outcome, failures in a row, the next attempt.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use callbox_core::metrics::{DescriptorEncoder, MetricsRegistry, counters, gauge};
use prometheus_client::collector::Collector;

#[derive(Debug, Default)]
pub(crate) struct AcmeMetrics {
    issued: AtomicU64,
    failed: AtomicU64,
    failures_in_a_row: AtomicU64,
    /// Unix seconds.
    next_attempt: AtomicU64,
}

impl AcmeMetrics {
    pub(crate) fn register(registry: &MetricsRegistry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register_collector(Exposed(Arc::clone(&m)));
        m
    }

    pub(crate) fn issued(&self) {
        self.issued.fetch_add(1, Relaxed);
        self.failures_in_a_row.store(0, Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
        self.failures_in_a_row.fetch_add(1, Relaxed);
    }

    pub(crate) fn next_attempt(&self, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.next_attempt.store(secs, Relaxed);
    }
}

#[derive(Debug)]
struct Exposed(Arc<AcmeMetrics>);

impl Collector for Exposed {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let m = &self.0;
        counters(
            &mut enc,
            "callbox_acme_orders",
            "ACME orders by outcome (failed: the certificate in force, if any, stays; retried with backoff).",
            &[
                (&[("result", "issued")], m.issued.load(Relaxed)),
                (&[("result", "failed")], m.failed.load(Relaxed)),
            ],
        )?;
        let gauge_of = |v: &AtomicU64| i64::try_from(v.load(Relaxed)).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "callbox_acme_consecutive_failures",
            "ACME orders failed since the last certificate was issued.",
            gauge_of(&m.failures_in_a_row),
        )?;
        gauge(
            &mut enc,
            "callbox_acme_next_attempt_timestamp_seconds",
            "When the next ACME order is due (Unix seconds).",
            gauge_of(&m.next_attempt),
        )
    }
}
