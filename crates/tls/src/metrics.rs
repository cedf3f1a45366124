//! What the TLS listeners count: handshakes by outcome, connections by where they went on
//! the one TLS port, certificate reloads.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use callbox_core::metrics::{DescriptorEncoder, Labels, MetricsRegistry, counters, gauge};
use prometheus_client::collector::Collector;

/// One TLS listener's counters (`listener` label).
#[derive(Debug, Default)]
pub struct TlsMetrics {
    pub handshakes_ok: AtomicU64,
    /// The client sent something that is not TLS, or the handshake failed.
    pub handshakes_failed: AtomicU64,
    /// The handshake did not end within the handshake timeout.
    pub handshake_timeouts: AtomicU64,
    /// Closed at accept: the bound on handshakes in flight was reached.
    pub handshakes_refused: AtomicU64,
    /// One-port routing: to TURN or HTTP, by ALPN or by the first bytes.
    pub to_turn_by_alpn: AtomicU64,
    pub to_turn_by_sniff: AtomicU64,
    pub to_http_by_alpn: AtomicU64,
    pub to_http_by_sniff: AtomicU64,
    /// One-port: STUN arrived but no turn role runs in this process.
    pub turn_unavailable: AtomicU64,
}

impl TlsMetrics {
    /// Counters for the listener named `listener`, exposed through `registry`.
    pub fn register(registry: &MetricsRegistry, listener: &'static str) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry
            .shared::<Listeners>()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((listener, Arc::clone(&metrics)));
        metrics
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// A registered TLS listener: its `listener` label and its counters.
type Listener = (&'static str, Arc<TlsMetrics>);

/// Every registered TLS listener of the process, written as one family per metric.
#[derive(Debug, Clone, Default)]
struct Listeners(Arc<Mutex<Vec<Listener>>>);

impl Collector for Listeners {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let results = ["ok", "failed", "timeout", "refused"];
        let labels: Vec<Vec<[(&str, &str); 2]>> = all
            .iter()
            .map(|(l, _)| {
                results
                    .iter()
                    .map(|r| [("listener", *l), ("result", *r)])
                    .collect()
            })
            .collect();
        let mut samples: Vec<(Labels<'_>, u64)> = Vec::new();
        for ((_, m), l) in all.iter().zip(&labels) {
            let values = [
                &m.handshakes_ok,
                &m.handshakes_failed,
                &m.handshake_timeouts,
                &m.handshakes_refused,
            ];
            for (v, l) in values.iter().zip(l) {
                samples.push((&l[..], v.load(Relaxed)));
            }
        }
        counters(
            &mut enc,
            "callbox_tls_handshakes",
            "TLS handshakes by outcome (refused: past tls.max_handshakes in flight).",
            &samples,
        )?;
        let routes = [
            ("turn", "alpn"),
            ("turn", "sniff"),
            ("http", "alpn"),
            ("http", "sniff"),
            ("none", "sniff"),
        ];
        let labels: Vec<Vec<[(&str, &str); 3]>> = all
            .iter()
            .map(|(l, _)| {
                routes
                    .iter()
                    .map(|(to, by)| [("listener", *l), ("to", *to), ("by", *by)])
                    .collect()
            })
            .collect();
        let mut samples: Vec<(Labels<'_>, u64)> = Vec::new();
        for ((_, m), l) in all.iter().zip(&labels) {
            let values = [
                &m.to_turn_by_alpn,
                &m.to_turn_by_sniff,
                &m.to_http_by_alpn,
                &m.to_http_by_sniff,
                &m.turn_unavailable,
            ];
            for (v, l) in values.iter().zip(l) {
                samples.push((&l[..], v.load(Relaxed)));
            }
        }
        counters(
            &mut enc,
            "callbox_tls_routed",
            "Connections on the one TLS port by where they went (none: STUN without a turn role here) and how that was decided.",
            &samples,
        )
    }
}

/// Certificate reloads by outcome, and the validity of the certificate in force.
#[derive(Debug, Default)]
pub(crate) struct CertMetrics {
    ok: AtomicU64,
    error: AtomicU64,
    /// Unix seconds; 0 while there is no certificate.
    not_after: AtomicU64,
}

impl CertMetrics {
    pub(crate) fn register(registry: &MetricsRegistry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register_collector(CertCollector(Arc::clone(&m)));
        m
    }

    pub(crate) fn reloaded(&self) {
        self.ok.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.error.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_in_force(&self, cert: Option<&crate::LoadedCert>) {
        let secs = cert.map_or(0, |c| {
            c.not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        self.not_after.store(secs, Relaxed);
    }
}

#[derive(Debug)]
struct CertCollector(Arc<CertMetrics>);

impl Collector for CertCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        counters(
            &mut enc,
            "callbox_tls_certificate_reloads",
            "Certificate reloads (file change or SIGHUP) by outcome; after an error the certificate in use stays.",
            &[
                (&[("result", "ok")], self.0.ok.load(Relaxed)),
                (&[("result", "error")], self.0.error.load(Relaxed)),
            ],
        )?;
        gauge(
            &mut enc,
            "callbox_tls_certificate_expiry_timestamp_seconds",
            "When the certificate in force expires (notAfter, Unix seconds); 0 while there is none.",
            i64::try_from(self.0.not_after.load(Relaxed)).unwrap_or(i64::MAX),
        )
    }
}
