//! What the cluster link counts: Redis up or not, failures by operation, heartbeats,
//! access snapshots applied.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use callbox_core::metrics::{DescriptorEncoder, Labels, MetricsRegistry, counter, counters, gauge};
use prometheus_client::collector::Collector;

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    up: AtomicBool,
    /// Failures by operation (a handful of fixed names).
    failures: Mutex<BTreeMap<&'static str, u64>>,
    heartbeats: AtomicU64,
    access_applied: AtomicU64,
}

impl ClusterMetrics {
    pub fn register(registry: &MetricsRegistry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register_collector(Exposed(Arc::clone(&m)));
        m
    }

    /// Whether the last Redis command succeeded.
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub(crate) fn ok(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!("cluster: redis reachable");
        }
    }

    pub(crate) fn failed(&self, operation: &'static str, e: &crate::ClusterError) {
        if self.up.swap(false, Relaxed) {
            tracing::warn!(operation, error = %e, "cluster: redis unreachable; serving from the last snapshot");
        }
        *self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(operation)
            .or_default() += 1;
    }

    pub(crate) fn heartbeat(&self) {
        self.heartbeats.fetch_add(1, Relaxed);
    }

    pub fn access_applied(&self) {
        self.access_applied.fetch_add(1, Relaxed);
    }
}

#[derive(Debug)]
struct Exposed(Arc<ClusterMetrics>);

impl Collector for Exposed {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let m = &self.0;
        gauge(
            &mut enc,
            "callbox_cluster_redis_up",
            "1 when the last command to the cluster's Redis succeeded.",
            i64::from(m.up()),
        )?;
        let failures = m.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let labels: Vec<[(&str, &str); 1]> = failures.keys().map(|k| [("operation", *k)]).collect();
        let samples: Vec<(Labels<'_>, u64)> = labels
            .iter()
            .zip(failures.values())
            .map(|(l, v)| (&l[..], *v))
            .collect();
        counters(
            &mut enc,
            "callbox_cluster_redis_failures",
            "Redis commands that failed or timed out, by operation.",
            &samples,
        )?;
        counter(
            &mut enc,
            "callbox_cluster_heartbeats",
            "Registry heartbeats written.",
            m.heartbeats.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "callbox_cluster_access_applied",
            "Access snapshots taken from the cluster and applied.",
            m.access_applied.load(Relaxed),
        )
    }
}
