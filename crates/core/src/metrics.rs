//! The process's one metrics registry (prometheus-client), shared by every role, and the
//! helpers their collectors use to write samples.
//!
//! Roles keep their counters as plain atomics where they count (the turn data path writes
//! per-worker slots without contention) and register a `Collector` that reads them at scrape
//! time, so exposing a metric never adds work, let alone a lock, where it is counted. The
//! registry's lock is taken only when a role registers (at start) and when `/metrics` is
//! scraped.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError, RwLock};

use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric as _;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`MetricsRegistry::encode`] writes: the Prometheus text format
/// 0.0.4, which scrapers have always read from callbox.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every metric of the process; each role's `/metrics` serves all of it.
#[derive(Default)]
pub struct MetricsRegistry {
    registry: RwLock<Registry>,
    /// Collectors several registrants add to (one per type), so that a metric family written
    /// by more than one role (the HTTP listeners') appears once.
    shared: Mutex<HashMap<TypeId, Box<dyn Any + Send>>>,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collector, called on every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(Box::new(collector));
    }

    /// The collector of type `T` every caller shares: registered by the first caller, a clone
    /// (which must share its state with the original) for each later one.
    pub fn shared<T: Collector + Clone + Default>(&self) -> T {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = shared.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref::<T>()) {
            return t.clone();
        }
        let t = T::default();
        shared.insert(TypeId::of::<T>(), Box::new(t.clone()));
        self.register_collector(t.clone());
        t
    }

    /// Everything registered, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail; a collector that fails leaves what it wrote.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// Labels of one sample, in the order they are written.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A counter family. `name` is without `_total`: the encoder appends it to the `# HELP`,
/// `# TYPE` and sample lines of a counter.
pub fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let &[(&[], v)] = samples {
        return ConstCounter::new(v).encode(m);
    }
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels (`name` without `_total`, see [`counters`]).
pub fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    counters(enc, name, help, &[(&[], v)])
}

/// A gauge family.
pub fn gauges(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, i64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let &[(&[], v)] = samples {
        return ConstGauge::new(v).encode(m);
    }
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
pub fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> fmt::Result {
    gauges(enc, name, help, &[(&[], v)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default)]
    struct Fixed(std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
            counter(&mut enc, "callbox_x", "Xs seen.", v)?;
            counters(
                &mut enc,
                "callbox_y",
                "Ys, by kind.",
                &[(&[("listener", "a"), ("cap", "b")], 2)],
            )?;
            gauge(&mut enc, "callbox_z", "Zs now.", -1)
        }
    }

    #[test]
    fn text_format_keeps_total_names_and_help() {
        let r = MetricsRegistry::new();
        let a = r.shared::<Fixed>();
        let b = r.shared::<Fixed>();
        a.0.store(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            b.0.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "one shared collector"
        );
        assert_eq!(
            r.encode(),
            "# HELP callbox_x_total Xs seen.\n# TYPE callbox_x_total counter\ncallbox_x_total 3\n\
             # HELP callbox_y_total Ys, by kind.\n# TYPE callbox_y_total counter\n\
             callbox_y_total{listener=\"a\",cap=\"b\"} 2\n\
             # HELP callbox_z Zs now.\n# TYPE callbox_z gauge\ncallbox_z -1\n"
        );
    }
}
