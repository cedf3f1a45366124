//! The admin role: a token-protected HTTP API (`/admin/v1`) over the store and the live
//! state of the other roles, with its OpenAPI document generated from the handlers.
//!
//! Shape: [`router`] builds the routes from [`AdminState`]; the store is reached through
//! `spawn_blocking` (SQLite calls block), the live roles through the [`Live`] trait, which
//! the binary implements over the turn and signal roles, so this crate depends on neither.
//! Changes are written to the store and announced on [`AdminState::changed`]; the binary's
//! sync loop applies them to the running roles (and picks up changes made by other
//! processes on the same database within a second).
//!
//! Invariants: every `/admin/v1` request is authenticated with the bearer token, compared
//! as SHA-256 digests in constant time; every error is JSON with a stable `code`; the
//! OpenAPI document is built from the same `#[utoipa::path]` items the router mounts.

mod api;
pub mod client;
mod error;
mod extract;
mod lockout;
mod role;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callbox_core::metrics::{
    CONTENT_TYPE as METRICS_CONTENT_TYPE, DescriptorEncoder, MetricsRegistry, counter,
};
use callbox_store::{Health, Store};
use lockout::Lockout;
use prometheus_client::collector::Collector;
use sha2::{Digest, Sha256};

pub use api::{
    AllocationView, ChannelView, MAX_SPAN, NewApiKey, NewBan, NewUser, NodeError, NodeView, NodesError,
    PeerView, RoomView, RotateSecret, ValidBan,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use role::AdminRole;

/// A boxed future, so [`Live`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The running roles as admin sees them. `None` answers mean "that role does not run in
/// this process" (the API says 404 `role-not-running`).
pub trait Live: Send + Sync + 'static {
    /// Live TURN allocations (of every TURN node in a cluster).
    fn allocations(&self) -> BoxFuture<'_, Option<Vec<AllocationView>>>;
    /// Closes one allocation of `node` (this process when `None`); `Some(Ok(false))` when
    /// there is no such allocation, `Some(Err)` when there is no such node or it did not answer.
    fn close_allocation(
        &self,
        node: Option<String>,
        id: u64,
    ) -> BoxFuture<'_, Option<Result<bool, NodeError>>>;
    /// Live signaling rooms (of every signal instance in a cluster).
    fn rooms(&self) -> BoxFuture<'_, Option<Vec<RoomView>>>;
    /// This process's live rooms and peers, counted without listing them.
    fn room_counts(&self) -> Option<(u64, u64)>;
    /// Closes a room with 4009; `Some(Ok(0))` when there is no such room.
    fn close_room(
        &self,
        node: Option<String>,
        room: String,
    ) -> BoxFuture<'_, Option<Result<usize, NodeError>>>;
    /// Kicks a peer with 4003; `Some(Ok(false))` when there is no such peer.
    fn kick_peer(
        &self,
        node: Option<String>,
        room: String,
        peer_id: String,
    ) -> BoxFuture<'_, Option<Result<bool, NodeError>>>;
    /// The cluster's live nodes.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, NodesError>>;
}

/// What the admin role knows about its process.
#[derive(Debug, Clone)]
pub struct AdminInfo {
    pub version: String,
    pub roles: Vec<String>,
    pub started: Instant,
    /// The TURN realm static users are added to.
    pub realm: String,
    /// The effective configuration, secrets redacted.
    pub config: serde_json::Value,
    /// Secrets come from `auth.secrets` in the configuration: rotation through the API is
    /// refused (409), so the two never disagree.
    pub secrets_from_config: bool,
    /// Default seconds the previous secret keeps verifying after a rotation.
    pub rotation_overlap: u64,
    pub max_body_bytes: usize,
    pub auth_failures_per_minute: u32,
    /// Connection limits of the admin listener.
    pub listener: callbox_http::Limits,
}

/// Counters of the admin role, exposed with the store's [`Health`] through the process's
/// metrics registry.
#[derive(Debug, Default)]
pub struct AdminMetrics {
    pub requests: AtomicU64,
    pub auth_failures: AtomicU64,
    pub auth_limited: AtomicU64,
}

/// Shared state of the admin handlers.
pub struct AdminState {
    pub store: Arc<Mutex<Store>>,
    pub health: Arc<Health>,
    pub live: Arc<dyn Live>,
    pub info: AdminInfo,
    /// Notified after every change, so the sync loop applies it at once.
    pub changed: Arc<tokio::sync::Notify>,
    pub metrics: Arc<AdminMetrics>,
    /// Connections the admin listener holds (per address and in total).
    pub connections: Arc<callbox_http::ConnectionLimits>,
    pub listener_metrics: Arc<callbox_http::ListenerMetrics>,
    /// The process's metrics, served at `/metrics`.
    pub registry: Arc<MetricsRegistry>,
    failures: Lockout,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    pub fn new(
        store: Arc<Mutex<Store>>,
        health: Arc<Health>,
        live: Arc<dyn Live>,
        info: AdminInfo,
        changed: Arc<tokio::sync::Notify>,
        registry: Arc<MetricsRegistry>,
    ) -> Arc<Self> {
        let info_limit = info.auth_failures_per_minute;
        let connections = callbox_http::ConnectionLimits::new(info.listener);
        let metrics = Arc::new(AdminMetrics::default());
        registry.register_collector(AdminCollector {
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        });
        Arc::new(Self {
            store,
            health,
            live,
            info,
            changed,
            metrics,
            listener_metrics: callbox_http::ListenerMetrics::register(
                &registry,
                "admin",
                Arc::clone(&connections),
            ),
            connections,
            registry,
            failures: Lockout::new(info_limit),
        })
    }

    /// Runs `f` on the store off the async threads. A database error is counted, logged
    /// and answered 503 `store-unavailable`; rule violations map to 4xx.
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> callbox_store::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        let r = tokio::task::spawn_blocking(move || {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s)
        })
        .await
        .map_err(|e| ApiError::internal(format!("store task: {e}")))?;
        r.map_err(|e| {
            if matches!(e, callbox_store::StoreError::Sqlite(_)) {
                self.health.failed();
                tracing::warn!(error = %e, "admin: store operation failed");
            }
            ApiError::from(e)
        })
    }
}

/// SHA-256 of a token, the form in which it is stored.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random admin token (shown once, stored as its digest).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cbx_{hex}")
}

async fn authenticate(
    State(app): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let ip = peer.ip();
    let now = Instant::now();
    if let Some(secs) = app.failures.limited(ip, now) {
        app.metrics.auth_limited.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many failed token checks from this address; try later",
        )
        .retry_after(secs)
        .into_response();
    }
    let presented = callbox_http::bearer(req.headers()).map(token_digest);
    let stored = match app.with_store(|s| s.admin_token()).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let ok = match (presented, stored) {
        (Some(p), Some(s)) => bool::from(subtle::ConstantTimeEq::ct_eq(&p[..], &s[..])),
        _ => false,
    };
    if !ok {
        app.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        if app.failures.failed(ip, now) {
            tracing::warn!(%ip, path = %req.uri().path(), "admin: request without a valid token");
        }
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer ...)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"callbox-admin\""),
        );
        return r;
    }
    next.run(req).await
}

/// The admin listener's routes: `/admin/v1/...` behind the token, and the unauthenticated
/// `/healthz`, `/readyz` and `/metrics` every role has.
pub fn router(app: Arc<AdminState>) -> Router {
    let (api, openapi) = api::split();
    let doc = Arc::new(
        serde_json::to_value(&openapi).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
    );
    let protected = api
        .route(
            "/admin/v1/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint").into_response()
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(app.info.max_body_bytes));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(protected)
        .with_state(app)
}

/// The OpenAPI document (what `/admin/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::split().1
}

async fn readyz(State(app): State<Arc<AdminState>>) -> Response {
    match app.with_store(|s| s.schema_version()).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}

async fn metrics_text(State(app): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        app.registry.encode(),
    )
        .into_response()
}

/// The admin role's counters and the store's health, read at scrape time.
#[derive(Debug)]
struct AdminCollector {
    metrics: Arc<AdminMetrics>,
    health: Arc<Health>,
}

impl Collector for AdminCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let (m, h) = (&self.metrics, &self.health);
        for (name, help, v) in [
            ("callbox_admin_requests", "Requests to /admin/v1.", &m.requests),
            (
                "callbox_admin_auth_failures",
                "Admin requests without a valid token.",
                &m.auth_failures,
            ),
            (
                "callbox_admin_auth_limited",
                "Admin requests refused with 429 after repeated token failures.",
                &m.auth_limited,
            ),
            (
                "callbox_store_errors",
                "Store operations that failed (full disk, locked or damaged database).",
                &h.errors,
            ),
            (
                "callbox_store_history_lost",
                "History rows lost to failed store writes.",
                &h.history_lost,
            ),
        ] {
            counter(&mut enc, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
