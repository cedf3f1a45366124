//! TLS in the binary: the certificate (from files, or from ACME; reloaded on a timer and
//! on SIGHUP), the handshake bound every TLS listener shares, the listeners' TLS sides,
//! and the plain port-80 listener that answers HTTP-01 and redirects to https.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use callbox_acme::{AcmeSettings, Challenge};
use callbox_core::Config;
use callbox_core::config::AcmeChallenge;
use callbox_core::metrics::MetricsRegistry;
use callbox_http::{StunHandoff, TlsServe};
use callbox_tls::{
    ALPN_ACME, ALPN_H2, ALPN_HTTP1, ALPN_STUN, CertStore, HandshakeLimit, TlsMetrics, server_config,
};

/// The process's TLS: one certificate, one bound on handshakes in flight.
#[derive(Debug, Clone)]
pub struct Tls {
    pub certs: Arc<CertStore>,
    handshakes: HandshakeLimit,
}

impl Tls {
    /// Loads `tls.cert_file` and `tls.key_file`, or with ACME the certificate kept in
    /// `state_dir` (none yet is fine: it is ordered); `None` when TLS is not configured.
    pub fn open(
        config: &Config,
        state_dir: &Path,
        registry: &MetricsRegistry,
    ) -> anyhow::Result<Option<Tls>> {
        let t = &config.tls;
        let certs = match (&t.cert_file, &t.key_file) {
            (Some(cert), Some(key)) => {
                CertStore::open(cert, key, registry).context("tls.cert_file / tls.key_file")?
            }
            _ if t.acme() => {
                let (cert, key) = AcmeSettings::cert_paths(&acme_dir(state_dir));
                CertStore::open_or_empty(&cert, &key, registry)
            }
            _ => return Ok(None),
        };
        Ok(Some(Tls {
            certs,
            handshakes: HandshakeLimit::new(t.max_handshakes, t.handshake_timeout()),
        }))
    }

    /// The name for `turns:` URLs: `turn.public_host`, else the certificate's first DNS
    /// name, else the first name ACME orders one for.
    pub fn turns_host(&self, config: &Config) -> Option<String> {
        config
            .turn
            .public_host
            .clone()
            .or_else(|| self.certs.first_dns_name())
            .or_else(|| config.tls.acme_domains.first().cloned())
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
    /// browsers never offer it. `acme-tls/1` comes last: only ACME validators offer it,
    /// and only it.
    pub fn one_port(&self, turn: Option<callbox_turn::TurnControl>, registry: &MetricsRegistry) -> TlsServe {
        let handoff = turn.map(|t| Arc::new(move |conn| t.adopt(conn)) as StunHandoff);
        TlsServe {
            config: server_config(
                Arc::clone(&self.certs),
                &[ALPN_STUN, ALPN_H2, ALPN_HTTP1, ALPN_ACME],
            ),
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

fn acme_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("acme")
}

/// The ACME client's settings, when `tls.acme_domains` is set; `port80` says whether the
/// port-80 listener runs here (HTTP-01 is answered there, TLS-ALPN-01 on the one port).
pub fn acme_settings(config: &Config, state_dir: &Path, port80: bool) -> Option<AcmeSettings> {
    let t = &config.tls;
    if !t.acme() {
        return None;
    }
    let challenge = match t.acme_challenge {
        AcmeChallenge::Http01 => Challenge::Http01,
        AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
        AcmeChallenge::Auto if port80 => Challenge::Http01,
        AcmeChallenge::Auto => Challenge::TlsAlpn01,
    };
    Some(AcmeSettings {
        domains: t.acme_domains.clone(),
        email: t.acme_email.clone(),
        directory: t.acme_directory.clone(),
        ca_file: t.acme_ca_file.clone(),
        challenge,
        renew_remaining_percent: t.acme_renew_remaining_percent,
        retry_min: Duration::from_millis(t.acme_retry_min_ms),
        retry_max: Duration::from_millis(t.acme_retry_max_ms),
        order_timeout: Duration::from_millis(t.acme_order_timeout_ms),
        dir: acme_dir(state_dir),
    })
}

/// The port-80 listeners (`tls.http_listen`), bound.
#[derive(Debug)]
pub struct Port80 {
    pub listeners: Vec<tokio::net::TcpListener>,
    router: axum::Router,
    limits: Arc<callbox_http::ConnectionLimits>,
    metrics: Arc<callbox_http::ListenerMetrics>,
}

impl Port80 {
    /// Binds `tls.http_listen` under the one TLS port's connection caps (counted apart).
    /// Redirects name `https` (the bound one TLS port, else `signal.tls_listen`), else 443.
    pub async fn bind(
        config: &Config,
        tls: &Tls,
        https: Option<SocketAddr>,
        registry: &MetricsRegistry,
    ) -> anyhow::Result<Port80> {
        let t = &config.tls;
        let https_port = https.map_or(443, |a| a.port());
        let limits = callbox_http::ConnectionLimits::new(crate::serve::http_limits(
            t.max_connections,
            t.max_connections_per_address,
            config.signal.ipv6_prefix_len,
            config.signal.header_timeout_ms,
        ));
        let listeners =
            crate::serve::bind_tcp_all("tls.http_listen", &t.http_listen_addrs(), t.http_listen.is_none())
                .await?;
        Ok(Port80 {
            listeners,
            router: callbox_http::port80_router(Arc::clone(tls.certs.challenges()), https_port),
            metrics: callbox_http::ListenerMetrics::register(registry, "http", Arc::clone(&limits)),
            limits,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves every listener until `shutdown` resolves for each.
    pub fn serve<F>(
        self,
        shutdown: impl Fn() -> F,
    ) -> Vec<impl std::future::Future<Output = std::io::Result<()>> + Send + 'static>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.listeners
            .into_iter()
            .map(|l| {
                callbox_http::serve(
                    l,
                    self.router.clone(),
                    Arc::clone(&self.limits),
                    Arc::clone(&self.metrics),
                    shutdown(),
                )
            })
            .collect()
    }
}
