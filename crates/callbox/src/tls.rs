//! TLS in the binary: the certificate (loaded once, reloaded on a timer and on SIGHUP),
//! the handshake bound every TLS listener shares, and the listeners' TLS sides.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use callbox_core::Config;
use callbox_core::metrics::MetricsRegistry;
use callbox_http::{StunHandoff, TlsServe};
use callbox_tls::{ALPN_H2, ALPN_HTTP1, ALPN_STUN, CertStore, HandshakeLimit, TlsMetrics, server_config};

/// The process's TLS: one certificate, one bound on handshakes in flight.
#[derive(Debug, Clone)]
pub struct Tls {
    pub certs: Arc<CertStore>,
    handshakes: HandshakeLimit,
}

impl Tls {
    /// Loads `tls.cert_file` and `tls.key_file`; `None` when no certificate is configured.
    pub fn open(config: &Config, registry: &MetricsRegistry) -> anyhow::Result<Option<Tls>> {
        let t = &config.tls;
        let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
            return Ok(None);
        };
        let certs = CertStore::open(cert, key, registry).context("tls.cert_file / tls.key_file")?;
        Ok(Some(Tls {
            certs,
            handshakes: HandshakeLimit::new(t.max_handshakes, t.handshake_timeout()),
        }))
    }

    /// The name for `turns:` URLs: `turn.public_host`, else the certificate's first DNS name.
    pub fn turns_host(&self, config: &Config) -> Option<String> {
        config
            .turn
            .public_host
            .clone()
            .or_else(|| self.certs.first_dns_name())
    }

    /// What the turn workers need for `turn.tls_listen` (ALPN `stun.turn` offered).
    pub fn turn(&self, registry: &MetricsRegistry) -> callbox_turn::TlsSettings {
        callbox_turn::TlsSettings {
            config: server_config(Arc::clone(&self.certs), &[ALPN_STUN]),
            handshakes: self.handshakes.clone(),
            metrics: TlsMetrics::register(registry, "turn_tls"),
        }
    }

    /// HTTPS and WSS only (`signal.tls_listen`).
    pub fn https(&self, registry: &MetricsRegistry) -> TlsServe {
        TlsServe {
            config: server_config(Arc::clone(&self.certs), &[ALPN_H2, ALPN_HTTP1]),
            handshakes: self.handshakes.clone(),
            metrics: TlsMetrics::register(registry, "signal_tls"),
            stun: None,
        }
    }

    /// The one TLS port: HTTP, and TURN handed to `turn` when the turn role runs here.
    /// `stun.turn` comes first: rustls picks by the server's order, and a client that
    /// offers it is a TURN client even when it offers `http/1.1` too (coturn's does);
    /// browsers never offer it.
    pub fn one_port(&self, turn: Option<callbox_turn::TurnControl>, registry: &MetricsRegistry) -> TlsServe {
        let handoff = turn.map(|t| Arc::new(move |conn| t.adopt(conn)) as StunHandoff);
        TlsServe {
            config: server_config(Arc::clone(&self.certs), &[ALPN_STUN, ALPN_H2, ALPN_HTTP1]),
            handshakes: self.handshakes.clone(),
            metrics: TlsMetrics::register(registry, "tls"),
            stun: Some(handoff),
        }
    }

    /// Reloads the certificate when its files change (checked every `interval`; zero:
    /// never). A file that does not load leaves the certificate in use.
    pub fn spawn_watch(&self, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let certs = Arc::clone(&self.certs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = certs.reload_if_changed();
            }
        });
    }
}
