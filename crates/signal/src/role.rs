//! The signal role: its shared state, routes, the handle the binary holds
//! ([`SignalControl`]) and [`SignalRole::run`], which serves and drains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callbox_core::SecretSet;
use callbox_core::config::Signal as SignalConfig;
use callbox_core::metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsRegistry};
use callbox_core::policy::Cidr;
use tokio::sync::mpsc;

use crate::SESSION_EVENTS_CAPACITY;
use crate::error::{Refusal, RefusalCode};
use crate::hub::{Hub, HubConfig, RoomInfo, SessionRecord};
use crate::ice_endpoint::{IceSource, ice_servers_get, ice_servers_post, preflight};
use crate::limits::HttpLimiter;
use crate::metrics::SignalMetrics;
use crate::page;
use crate::protocol::CloseCode;
use crate::shared::{SharedRooms, SharedSettings};
use crate::upgrade::{signal_validate, signal_ws};

/// Shared state of the signal role's handlers.
pub struct AppState {
    pub cfg: SignalConfig,
    pub hub: Arc<Hub>,
    /// The rooms shared with other instances through Redis (`signal.redis_url`); when
    /// set, rooms live there and `hub` only counts addresses.
    pub shared: Option<Arc<SharedRooms>>,
    pub ice: IceSource,
    pub draining: AtomicBool,
    pub http_limiter: HttpLimiter,
    pub metrics: Arc<SignalMetrics>,
    /// Connections held by the listener, per address and in total (counted from accept).
    pub connections: Arc<callbox_http::ConnectionLimits>,
    pub listener_metrics: Arc<callbox_http::ListenerMetrics>,
    /// The process's metrics, served at `/metrics`.
    pub registry: Arc<MetricsRegistry>,
    /// Extra readiness condition (e.g. the backplane is reachable).
    pub ready: Arc<AtomicBool>,
    /// Banned client networks, checked before every upgrade and ICE request. Swapped
    /// whole by [`AppState::set_bans`] (which also kicks live connections) so the
    /// admission path reads it without a lock.
    pub bans: ArcSwap<Vec<Cidr>>,
    /// API keys managed in the admin store: SHA-256 of the key to the key's name. The
    /// store keeps only digests, so this is what a presented key is matched against,
    /// besides the configured `signal.api_keys`.
    pub store_api_keys: ArcSwap<HashMap<[u8; 32], String>>,
    session_events: Mutex<Option<mpsc::Receiver<SessionRecord>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Builds the role's state from configuration; its metrics go into `registry`. Fails only
/// on a `signal.redis_url` that does not parse.
pub fn state(
    cfg: SignalConfig,
    ice: IceSource,
    registry: Arc<MetricsRegistry>,
) -> Result<Arc<AppState>, String> {
    let metrics = Arc::new(SignalMetrics::default());
    metrics.register(&registry);
    let hub_cfg = HubConfig {
        capacity: cfg.room_capacity,
        grace: Duration::from_secs(cfg.resume_grace),
        log_messages: cfg.resume_log_messages,
        log_bytes: cfg.resume_log_bytes,
        rate_per_connection: cfg.rate_per_connection,
        rate_per_address: cfg.rate_per_address,
        rate_per_room: cfg.rate_per_room,
        window: Duration::from_secs(10),
        heartbeat_ms: cfg.heartbeat_ms,
        ipv6_prefix: cfg.ipv6_prefix_len,
    };
    let (session_tx, session_rx) = mpsc::channel(SESSION_EVENTS_CAPACITY);
    let ready = Arc::new(AtomicBool::new(true));
    let shared = match &cfg.redis_url {
        None => None,
        Some(url) => Some(
            SharedRooms::new(
                hub_cfg.clone(),
                SharedSettings {
                    redis_url: url.expose().to_string(),
                    key_prefix: cfg.redis_key_prefix.clone(),
                    timeout: Duration::from_millis(cfg.redis_timeout_ms),
                    lease: Duration::from_millis(cfg.redis_lease_ms),
                    inbox_max: cfg.redis_inbox_max,
                },
                Arc::clone(&metrics),
                Some(session_tx.clone()),
                Arc::clone(&ready),
            )
            .map_err(|e| format!("signal.redis_url: {e}"))?,
        ),
    };
    let hub = Arc::new(
        Hub::new(hub_cfg, Arc::clone(&metrics), Box::new(rand::random::<u128>))
            .with_session_events(session_tx),
    );
    let connections = callbox_http::ConnectionLimits::new(callbox_http::Limits {
        max_connections: cfg.max_connections,
        max_per_address: cfg.max_connections_per_address,
        ipv6_prefix: cfg.ipv6_prefix_len,
        header_timeout: Duration::from_millis(cfg.header_timeout_ms),
    });
    Ok(Arc::new(AppState {
        http_limiter: HttpLimiter::new(cfg.http_rate_per_address, Duration::from_secs(10)),
        listener_metrics: callbox_http::ListenerMetrics::register(
            &registry,
            "signal",
            Arc::clone(&connections),
        ),
        connections,
        registry,
        cfg,
        hub,
        shared,
        ice,
        draining: AtomicBool::new(false),
        metrics,
        ready,
        bans: ArcSwap::from_pointee(Vec::new()),
        store_api_keys: ArcSwap::from_pointee(HashMap::new()),
        session_events: Mutex::new(Some(session_rx)),
    }))
}

impl AppState {
    /// Whether a client address is banned.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        // `Cidr` holds IPv4-mapped networks in their IPv4 form and `contains` compares the
        // canonical address, so no spelling of an address escapes its ban.
        self.bans.load().iter().any(|b| b.contains(ip))
    }

    /// Replaces the ban list and closes, with 4003, every connection (and drops every peer
    /// in its resume grace) whose address it covers: a ban takes effect at once, not at the
    /// next reconnect. The list is stored before the sweep, so a connection admitted just
    /// before is either swept or sees the new list when it joins (see `run_connection`).
    pub fn set_bans(&self, bans: Vec<Cidr>) {
        self.bans.store(Arc::new(bans));
        let bans = self.bans.load();
        if bans.is_empty() {
            return;
        }
        if let Some(shared) = &self.shared {
            let shared = Arc::clone(shared);
            let bans = Arc::clone(&bans);
            tokio::spawn(async move {
                let n = shared
                    .kick_addresses(|ip| bans.iter().any(|b| b.contains(ip)))
                    .await;
                if n > 0 {
                    tracing::info!(peers = n, "banned peers removed");
                }
            });
            return;
        }
        let n = self.hub.kick_addresses(|ip| bans.iter().any(|b| b.contains(ip)));
        if n > 0 {
            tracing::info!(peers = n, "banned peers removed");
        }
    }

    /// Replaces the store-managed API keys (SHA-256 digest of the key to its name).
    /// Requests already answered are not affected: ICE credentials are not revocable.
    pub fn set_api_keys(&self, keys: HashMap<[u8; 32], String>) {
        self.store_api_keys.store(Arc::new(keys));
    }

    /// The receiver of finished signaling sessions, once: the first caller (the admin's
    /// history writer) gets it, later calls `None`. Until it is taken, records queue up to
    /// [`SESSION_EVENTS_CAPACITY`] and then are dropped and counted; the hub never waits.
    pub fn take_session_events(&self) -> Option<mpsc::Receiver<SessionRecord>> {
        self.session_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(crate) fn refuse_banned(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.is_banned(ip) {
            return Err(Refusal::new(RefusalCode::Banned, "this address is banned"));
        }
        Ok(())
    }
}

/// The role's routes.
pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/ice-servers",
            get(ice_servers_get).post(ice_servers_post).options(preflight),
        )
        .route("/v1/signal", get(signal_ws))
        .route("/v1/signal/validate", get(signal_validate))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(page::routes())
        .with_state(app)
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.draining.load(Ordering::Relaxed) || !app.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        app.registry.encode(),
    )
        .into_response()
}

/// The binary's handle on a signal role: what the admin role and the access snapshot
/// change while it runs. Cloned freely; every method takes effect at once.
#[derive(Debug, Clone)]
pub struct SignalControl {
    app: Arc<AppState>,
}

impl SignalControl {
    /// Replaces the ban list and closes the connections it covers (see [`AppState::set_bans`]).
    pub fn set_bans(&self, bans: Vec<Cidr>) {
        self.app.set_bans(bans);
    }

    /// Replaces the store-managed API keys (SHA-256 digest of the key to its name).
    pub fn set_api_keys(&self, keys: HashMap<[u8; 32], String>) {
        self.app.set_api_keys(keys);
    }

    /// Replaces the URLs new ICE lists are made of.
    pub fn set_ice_urls(&self, urls: crate::IceUrls) {
        self.app.ice.urls.store(Arc::new(urls));
    }

    /// The URLs new ICE lists are made of.
    pub fn ice_urls(&self) -> crate::IceUrls {
        crate::IceUrls::clone(&self.app.ice.urls.load())
    }

    /// Replaces the secrets new ICE credentials are signed with (signing secret first).
    pub fn set_ice_secrets(&self, secrets: SecretSet) {
        self.app.ice.secrets.store(Arc::new(secrets));
    }

    /// The receiver of finished sessions, once (see [`AppState::take_session_events`]).
    pub fn take_session_events(&self) -> Option<mpsc::Receiver<SessionRecord>> {
        self.app.take_session_events()
    }

    /// Every room with its peers (with shared rooms: the peers connected here).
    pub fn rooms(&self) -> Vec<RoomInfo> {
        match &self.app.shared {
            Some(s) => s.rooms(None),
            None => self.app.hub.rooms(),
        }
    }

    /// One room, if it has peers or upgrades in progress (shared: peers here).
    pub fn room(&self, name: &str) -> Option<RoomInfo> {
        match &self.app.shared {
            Some(s) => s.rooms(Some(name)).pop(),
            None => self.app.hub.room(name),
        }
    }

    /// Rooms with at least one peer, and peers (shared: connected here).
    pub fn counts(&self) -> (usize, usize) {
        match &self.app.shared {
            Some(s) => s.counts(),
            None => self.app.hub.counts(),
        }
    }

    /// Closes a room with 4009 (shared: on every instance); how many peers were in it.
    pub async fn close_room(&self, name: &str) -> usize {
        match &self.app.shared {
            Some(s) => s.close_room(name).await,
            None => self.app.hub.close_room(name),
        }
    }

    /// Kicks a peer with 4003 (shared: wherever it is connected); whether there was one.
    pub async fn kick_peer(&self, room: &str, peer_id: &str) -> bool {
        match &self.app.shared {
            Some(s) => s.kick_peer(room, peer_id).await,
            None => self.app.hub.kick_peer(room, peer_id),
        }
    }
}

/// A signal role, built and not yet serving.
#[derive(Debug)]
pub struct SignalRole {
    app: Arc<AppState>,
}

impl SignalRole {
    /// The role for a configuration and the source of its ICE server lists; its metrics
    /// go into the process's `registry`.
    /// Fails only on a `signal.redis_url` that does not parse.
    pub fn new(cfg: SignalConfig, ice: IceSource, registry: Arc<MetricsRegistry>) -> Result<Self, String> {
        Ok(Self {
            app: state(cfg, ice, registry)?,
        })
    }

    /// The handle the binary keeps for admin and access changes.
    pub fn control(&self) -> SignalControl {
        SignalControl {
            app: Arc::clone(&self.app),
        }
    }
    /// Serves `listener` (HTTP) and `tls` (HTTPS, and the one TLS port) until `shutdown`,
    /// then drains: `/readyz` and new requests get 503, open connections get 4012, and the
    /// role returns when they are gone or after `signal.drain_seconds`.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        tls: Vec<TlsListener>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Arc::clone(&self.app);
        if let Some(shared) = &app.shared {
            shared.start();
        }
        let hub = Arc::clone(&app.hub);
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(500));
            loop {
                t.tick().await;
                hub.tick(Instant::now());
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let drain_app = Arc::clone(&app);
        let drain = async move {
            shutdown.await;
            drain_app.draining.store(true, Ordering::Relaxed);
            tracing::info!("signal role draining");
            let why = "server draining; reconnect with your resume token";
            match &drain_app.shared {
                Some(s) => s.close_all(CloseCode::Draining, why),
                None => drain_app.hub.close_all(CloseCode::Draining, why),
            }
            let deadline = Instant::now() + Duration::from_secs(drain_app.cfg.drain_seconds);
            while drain_app.metrics.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A moment more of clear 503s for clients reconnecting and health checkers.
            let linger = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            tokio::time::sleep(linger).await;
            let _ = stop_tx.send(true);
        };
        tokio::spawn(drain);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let routes = router(app.clone());
        let mut tls_tasks = Vec::new();
        for t in tls {
            tls_tasks.push(tokio::spawn(callbox_http::serve_tls(
                t.listener,
                routes.clone(),
                t.limits,
                t.metrics,
                t.tls,
                stopped(),
            )));
        }
        let connections = Arc::clone(&app.connections);
        let listener_metrics = Arc::clone(&app.listener_metrics);
        // Connections still open at the deadline are cut when the process exits.
        let mut r = callbox_http::serve(listener, routes, connections, listener_metrics, stopped()).await;
        for task in tls_tasks {
            let served = task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            r = r.and(served);
        }
        ticker.abort();
        r
    }
}

/// A TLS listener the signal role serves its routes on: HTTPS (`signal.tls_listen`) or
/// the one TLS port (`tls.listen`, which also hands TURN connections on).
#[derive(Debug)]
pub struct TlsListener {
    pub listener: tokio::net::TcpListener,
    pub tls: callbox_http::TlsServe,
    pub limits: Arc<callbox_http::ConnectionLimits>,
    pub metrics: Arc<callbox_http::ListenerMetrics>,
}
