//! The signal role: WebSocket rooms (PROTOCOL.md section 2), the ICE server endpoint
//! (section 1) and health and metrics (section 4), over axum.
//!
//! Shape: [`hub::Hub`] is the room state machine (no sockets); [`conn::drive`] runs one
//! connection over any `Sink`/`Stream`; this module holds the HTTP surface: admission
//! checks made before the upgrade (so refusals are plain HTTP with a JSON body), the ICE
//! endpoint and its auth modes, CORS and draining.
//!
//! Admin hooks (the admin role drives them from its store): [`AppState::set_bans`],
//! [`AppState::set_api_keys`], [`AppState::take_session_events`], and on the hub
//! [`Hub::rooms`], [`Hub::kick_peer`] and [`Hub::close_room`].

pub mod conn;
pub mod hub;
pub mod metrics;
pub mod page;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callbox_core::config::{AuthMode, Signal as SignalConfig};
use callbox_core::credentials::valid_user_id;
use callbox_core::ice;
use callbox_core::policy::Cidr;
use callbox_core::{Secret, SecretSet};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::conn::{ConnContext, ConnOutbox};
pub use crate::hub::{Hub, PeerInfo, RoomInfo, SessionRecord};
use crate::hub::{HubConfig, JoinError};
use crate::metrics::SignalMetrics;

/// Capacity of the session history channel: minutes of churn at a busy edge, while a
/// bounded queue keeps a stalled (or absent) consumer from growing memory without end.
pub const SESSION_EVENTS_CAPACITY: usize = 65_536;

/// The subprotocol selected when offered.
pub const SUBPROTOCOL: &str = "callbox.v1";

/// Where ICE server lists come from: URLs, secrets, lifetimes.
#[derive(Debug)]
pub struct IceSource {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    pub secrets: Arc<ArcSwap<SecretSet>>,
    pub default_ttl: u64,
    pub max_ttl: u64,
}

impl IceSource {
    pub fn build(&self, user: &str, ttl: u64) -> ice::IceServers {
        let secrets = self.secrets.load();
        ice::build_from_urls(
            &self.stun_urls,
            &self.turn_urls,
            &secrets,
            user,
            callbox_core::time::unix_now(),
            ttl,
        )
    }
}

/// An HTTP refusal: status, stable code, message, as `{"error":{"code","message"}}`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("valid status"),
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Self {
        let (status, code, message) = e.status_and_code();
        Refusal::new(status, code, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&s.to_string()).expect("digits"),
            );
        }
        r
    }
}

/// Requests per address over fixed windows, for the HTTP endpoints in `open` mode. The
/// table is bounded: past [`HttpLimiter::MAX_ENTRIES`] addresses, unknown ones are refused
/// until the window turns.
#[derive(Debug)]
pub struct HttpLimiter {
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    limit: u32,
    window: Duration,
}

impl HttpLimiter {
    pub const MAX_ENTRIES: usize = 100_000;

    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            limit,
            window,
        }
    }

    /// `Ok` or the seconds until the window turns.
    pub fn hit(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX_ENTRIES && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, (start, _)| now < *start + window);
            if map.len() >= Self::MAX_ENTRIES {
                return Err(window.as_secs().max(1));
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now >= e.0 + self.window {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > self.limit {
            Err((e.0 + self.window)
                .saturating_duration_since(now)
                .as_secs()
                .max(1))
        } else {
            Ok(())
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shared state of the signal role's handlers.
pub struct AppState {
    pub cfg: SignalConfig,
    pub hub: Arc<Hub>,
    pub ice: IceSource,
    pub draining: AtomicBool,
    pub http_limiter: HttpLimiter,
    pub metrics: Arc<SignalMetrics>,
    /// Connections held by the listener, per address and in total (counted from accept).
    pub connections: Arc<callbox_http::ConnectionLimits>,
    pub listener_metrics: Arc<callbox_http::ListenerMetrics>,
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

/// Builds the role's state from configuration.
pub fn state(cfg: SignalConfig, ice: IceSource) -> Arc<AppState> {
    let metrics = Arc::new(SignalMetrics::default());
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
    Arc::new(AppState {
        http_limiter: HttpLimiter::new(cfg.http_rate_per_address, Duration::from_secs(10)),
        connections,
        listener_metrics: Arc::new(callbox_http::ListenerMetrics::default()),
        cfg,
        hub,
        ice,
        draining: AtomicBool::new(false),
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        bans: ArcSwap::from_pointee(Vec::new()),
        store_api_keys: ArcSwap::from_pointee(HashMap::new()),
        session_events: Mutex::new(Some(session_rx)),
    })
}

/// Whether `ban` covers `ip` (already canonical: IPv4-mapped addresses in their IPv4 form).
/// [`Cidr::contains`] compares an IPv4 address only with IPv4 networks; a network written
/// in IPv4-mapped form and built with [`Cidr::new`] (parsing already converts it) is
/// judged here as the IPv4 network it stands for, so no spelling lets a banned client in.
fn ban_covers(ban: &Cidr, ip: IpAddr) -> bool {
    if ban.contains(ip) {
        return true;
    }
    if let IpAddr::V6(net) = ban.addr()
        && ban.prefix() >= 96
        && let Some(v4) = net.to_ipv4_mapped()
    {
        return Cidr::new(IpAddr::V4(v4), ban.prefix() - 96).is_some_and(|c| c.contains(ip));
    }
    false
}

impl AppState {
    /// Whether a client address is banned.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.bans.load().iter().any(|b| ban_covers(b, ip))
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
        let n = self
            .hub
            .kick_addresses(|ip| bans.iter().any(|b| ban_covers(b, canonical_ip(ip))));
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

    fn refuse_banned(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.is_banned(ip) {
            return Err(Refusal::new(403, "banned", "this address is banned"));
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
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render() + &app.listener_metrics.render("signal", &app.connections),
    )
        .into_response()
}

/// Whether a browser origin may call us: no Origin (not a browser), same origin as the
/// Host, or listed in `signal.allowed_origins` (or `*`).
fn origin_allowed(cfg: &SignalConfig, headers: &HeaderMap) -> Result<Option<String>, ()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if cfg
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return Ok(Some(origin.to_string()));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(Some(origin.to_string()));
    }
    Err(())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Who the caller is after auth: user id and `meta`, and the rooms a token limits it to.
struct Identity {
    user: Option<String>,
    meta: Value,
    rooms: Option<Vec<String>>,
}

fn jwt_identity(cfg: &SignalConfig, token: Option<&str>) -> Result<Identity, Refusal> {
    let Some(token) = token else {
        return Err(Refusal::new(401, "unauthorized", "a token is required"));
    };
    let secret = cfg.jwt_secret.as_ref().map(Secret::expose).unwrap_or_default();
    let claims = callbox_core::jwt::verify_hs256(token, secret.as_bytes(), callbox_core::time::unix_now())
        .map_err(|e| Refusal::new(401, "unauthorized", format!("bad token: {e}")))?;
    let user = match claims.get("sub") {
        Some(Value::String(s)) if valid_user_id(s) => Some(s.clone()),
        Some(_) => {
            return Err(Refusal::new(
                401,
                "unauthorized",
                "`sub` must be a user id (1-64 of A-Za-z0-9_.@-)",
            ));
        }
        None => None,
    };
    let rooms = match claims.get("rooms") {
        None => None,
        Some(Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Some(_) => {
            return Err(Refusal::new(
                401,
                "unauthorized",
                "`rooms` must be an array of room ids",
            ));
        }
    };
    let meta = match claims.get("meta") {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    Ok(Identity { user, meta, rooms })
}

/// What an admitted WebSocket request asked for.
struct Admission {
    room: String,
    identity: Identity,
    resume: Option<(String, u64)>,
    origin: Option<String>,
}

/// Every check that can be made before the upgrade, in PROTOCOL.md's order.
fn admit(
    app: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    addr: IpAddr,
    counting: bool,
) -> Result<Admission, Refusal> {
    let m = &app.metrics;
    let refuse = |r: Refusal| {
        m.reject(r.code);
        r
    };
    if app.draining.load(Ordering::Relaxed) {
        return Err(refuse(Refusal::new(
            503,
            "draining",
            "this server is shutting down; try again",
        )));
    }
    app.refuse_banned(addr).map_err(refuse)?;
    let room = q.get("room").map(String::as_str).unwrap_or("");
    if !callbox_core::names::RoomId::is_valid(room) {
        return Err(refuse(Refusal::new(
            400,
            "bad-room",
            format!("room must match {}", callbox_core::names::RoomId::pattern()),
        )));
    }
    let origin = origin_allowed(&app.cfg, headers)
        .map_err(|()| refuse(Refusal::new(403, "origin", "this origin is not allowed")))?;
    if app.cfg.require_subprotocol {
        let offered = headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
        if !offered {
            return Err(refuse(Refusal::new(
                400,
                "subprotocol",
                "the callbox.v1 subprotocol is required",
            )));
        }
    }
    let identity = match app.cfg.auth {
        AuthMode::Jwt => {
            let token = q.get("token").map(String::as_str).or_else(|| bearer(headers));
            let id = jwt_identity(&app.cfg, token).map_err(refuse)?;
            if let Some(rooms) = &id.rooms
                && !rooms.iter().any(|r| r == room)
            {
                return Err(refuse(Refusal::new(
                    403,
                    "room-not-allowed",
                    "the token does not allow this room",
                )));
            }
            id
        }
        _ => Identity {
            user: None,
            meta: json!({}),
            rooms: None,
        },
    };
    if counting && app.hub.address_conns(addr) >= app.cfg.max_connections_per_address {
        return Err(refuse(Refusal::new(
            429,
            "too-many-connections",
            "too many connections from this address",
        )));
    }
    let resume = match q.get("resume") {
        None => None,
        Some(token) => {
            let last_seq = match q.get("last_seq") {
                None => 0,
                Some(s) => s.parse::<u64>().map_err(|_| {
                    refuse(Refusal::new(
                        400,
                        "bad-resume",
                        "last_seq must be an integer >= 0",
                    ))
                })?,
            };
            Some((token.clone(), last_seq))
        }
    };
    app.hub
        .check(
            room,
            resume.as_ref().map(|(t, n)| (t.as_str(), *n)),
            Instant::now(),
        )
        .map_err(|e| refuse(e.into()))?;
    Ok(Admission {
        room: room.to_string(),
        identity,
        resume,
        origin,
    })
}

async fn signal_validate(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    if let Err(secs) = app.http_limiter.hit(
        callbox_core::limit_key(ip, app.cfg.ipv6_prefix_len),
        Instant::now(),
    ) {
        app.metrics.reject("rate-limited");
        let mut r = Refusal::new(429, "rate-limited", "too many requests");
        r.retry_after = Some(secs);
        return r.into_response();
    }
    match admit(&app, &headers, &q, ip, true) {
        Ok(_) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"ok":true}"#,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    callbox_core::policy::canonical(ip)
}

async fn signal_ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let admission = match admit(&app, &headers, &q, ip, true) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if !app.hub.connect_address(ip, app.cfg.max_connections_per_address) {
        app.metrics.reject("too-many-connections");
        return Refusal::new(
            429,
            "too-many-connections",
            "too many connections from this address",
        )
        .into_response();
    }
    if admission.resume.is_none()
        && let Err(e) = app.hub.reserve(&admission.room)
    {
        app.hub.disconnect_address(ip);
        let r: Refusal = e.into();
        app.metrics.reject(r.code);
        return r.into_response();
    }
    let limit = app.cfg.max_message_bytes;
    let fail_app = Arc::clone(&app);
    let fail_room = admission.room.clone();
    let reserved = admission.resume.is_none();
    let _ = admission.origin;
    // Small buffers: an idle connection should cost a few KiB, not tungstenite's default
    // 128 KiB read buffer (it grows for large messages, up to the message limit).
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(4096)
        // Frames are collected up to 16 KiB and written with one system call when the
        // connection task flushes (after draining its queue).
        .write_buffer_size(16 * 1024)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(move |_| {
            if reserved {
                fail_app.hub.unreserve(&fail_room);
            }
            fail_app.hub.disconnect_address(ip);
        })
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            run_connection(app, admission, ip, sink, stream).await;
        })
}

/// Joins (or resumes) and drives one connection to its end.
async fn run_connection<S, R, E>(app: Arc<AppState>, admission: Admission, ip: IpAddr, sink: S, stream: R)
where
    S: futures_util::Sink<axum::extract::ws::Message> + Unpin,
    R: futures_util::Stream<Item = Result<axum::extract::ws::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    app.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let (outbox, rx) = ConnOutbox::new(app.cfg.send_buffer_bytes, Arc::clone(&app.metrics));
    let ttl = app.ice.default_ttl;
    let room = admission.room.clone();
    let joined = match &admission.resume {
        Some((token, last_seq)) => {
            // The user id of a resumed peer's credentials: the token's, or its peer id.
            let user = admission.identity.user.clone();
            let list = app.ice.build(user.as_deref().unwrap_or("anon"), ttl);
            app.hub.resume(
                &room,
                token,
                *last_seq,
                ip,
                outbox.clone(),
                (&serde_json::to_value(&list.ice_servers).expect("serializes"), ttl),
                Instant::now(),
            )
        }
        None => {
            let user = admission
                .identity
                .user
                .clone()
                .unwrap_or_else(|| format!("anon-{:08x}", rand::random::<u32>()));
            let list = app.ice.build(&user, ttl);
            Ok(app.hub.join(
                &room,
                admission.identity.meta.clone(),
                ip,
                outbox.clone(),
                (&serde_json::to_value(&list.ice_servers).expect("serializes"), ttl),
            ))
        }
    };
    match joined {
        Ok(j) => {
            tracing::info!(room = %room, peer = %j.peer_id, resumed = j.resumed, "peer connected");
            // A ban stored after this request's admission check but before its join: the
            // ban's sweep may have missed the peer, but this load sees the new list.
            if app.is_banned(ip) {
                app.hub.kick_peer(&room, &j.peer_id);
            }
            let ice_app = Arc::clone(&app);
            let user = admission
                .identity
                .user
                .clone()
                .unwrap_or_else(|| j.peer_id.clone());
            let ice = Arc::new(move || {
                let list = ice_app.ice.build(&user, ttl);
                (serde_json::to_value(&list.ice_servers).expect("serializes"), ttl)
            });
            let ctx = ConnContext {
                hub: Arc::clone(&app.hub),
                room: room.clone(),
                peer_id: j.peer_id.clone(),
                conn: j.conn,
                addr: ip,
                outbox,
                rx,
                heartbeat: Duration::from_millis(app.cfg.heartbeat_ms),
                max_message: app.cfg.max_message_bytes,
                ice,
                ice_ttl: ttl,
            };
            conn::drive(sink, stream, ctx).await;
            tracing::info!(room = %room, peer = %j.peer_id, "peer disconnected");
        }
        Err(e) => {
            // The resume became invalid between the check and the upgrade.
            let (_, code, message) = e.status_and_code();
            let mut sink = sink;
            let _ = futures_util::SinkExt::send(
                &mut sink,
                axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 4000 + 410,
                    reason: format!("{code}: {message}").into(),
                })),
            )
            .await;
        }
    }
    app.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    app.hub.disconnect_address(ip);
}

fn cors_headers(app: &AppState, headers: &HeaderMap, r: &mut Response) {
    if let Ok(Some(origin)) = origin_allowed(&app.cfg, headers) {
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("null")),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Link"),
        );
    }
}

async fn preflight(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if origin_allowed(&app.cfg, &headers).is_err() {
        return Refusal::new(403, "origin", "this origin is not allowed").into_response();
    }
    cors_headers(&app, &headers, &mut r);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, X-Api-Key, Content-Type"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}

async fn ice_servers_get(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let params: HashMap<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    ice_servers(&app, peer, &headers, params)
}

async fn ice_servers_post(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let mut params: HashMap<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    if body.len() > 16 * 1024 {
        return Refusal::new(413, "too-large", "the body is limited to 16 KiB").into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !body.is_empty() {
        if content_type.starts_with("application/json") || body.first() == Some(&b'{') {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(m)) => params.extend(m),
                _ => {
                    return Refusal::new(400, "bad-request", "the body must be a JSON object or a form")
                        .into_response();
                }
            }
        } else {
            let text = String::from_utf8_lossy(&body);
            for (k, v) in form_pairs(&text) {
                params.insert(k, Value::String(v));
            }
        }
    }
    ice_servers(&app, peer, &headers, params)
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn param_str<'a>(params: &'a HashMap<String, Value>, k: &str) -> Option<&'a str> {
    params.get(k).and_then(Value::as_str)
}

/// The name of a presented API key: a configured key (compared in constant time, every
/// one of them) or a store-managed one, looked up by its SHA-256 digest (the lookup's
/// timing can only tell about the digest, which says nothing useful about keys).
fn api_key_name(app: &AppState, presented: &str) -> Option<String> {
    let mut found = None;
    for k in &app.cfg.api_keys {
        let eq: bool = subtle::ConstantTimeEq::ct_eq(k.key.expose().as_bytes(), presented.as_bytes()).into();
        if eq && found.is_none() {
            found = Some(k.name.clone());
        }
    }
    found.or_else(|| {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        app.store_api_keys.load().get(&digest).cloned()
    })
}

fn ice_servers(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: HashMap<String, Value>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let mut resp = ice_servers_inner(app, ip, headers, &params).unwrap_or_else(|r| {
        app.metrics.reject(r.code);
        r.into_response()
    });
    cors_headers(app, headers, &mut resp);
    resp
}

fn ice_servers_inner(
    app: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, Value>,
) -> Result<Response, Refusal> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(Refusal::new(503, "draining", "this server is shutting down"));
    }
    app.refuse_banned(ip)?;
    if origin_allowed(&app.cfg, headers).is_err() {
        return Err(Refusal::new(403, "origin", "this origin is not allowed"));
    }
    if let Some(service) = param_str(params, "service")
        && service != "turn"
    {
        return Err(Refusal::new(400, "bad-request", "service must be `turn`"));
    }
    // Who is asking decides the default user id.
    let default_user = match app.cfg.ice_auth {
        AuthMode::Open => {
            if let Err(secs) = app.http_limiter.hit(
                callbox_core::limit_key(ip, app.cfg.ipv6_prefix_len),
                Instant::now(),
            ) {
                let mut r = Refusal::new(429, "rate-limited", "too many requests from this address");
                r.retry_after = Some(secs);
                return Err(r);
            }
            None
        }
        AuthMode::ApiKey => {
            let presented = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .or_else(|| bearer(headers))
                .or_else(|| param_str(params, "key"))
                .or_else(|| param_str(params, "api"))
                .ok_or_else(|| Refusal::new(401, "unauthorized", "an API key is required"))?;
            Some(
                api_key_name(app, presented)
                    .ok_or_else(|| Refusal::new(401, "unauthorized", "unknown API key"))?,
            )
        }
        AuthMode::Jwt => jwt_identity(&app.cfg, bearer(headers).or_else(|| param_str(params, "token")))?.user,
    };
    let user = match params.get("username") {
        None => default_user.unwrap_or_else(|| format!("anon-{:08x}", rand::random::<u32>())),
        Some(Value::String(u)) if valid_user_id(u) => u.clone(),
        Some(_) => {
            return Err(Refusal::new(
                400,
                "bad-username",
                "username must be 1-64 of A-Za-z0-9_.@-",
            ));
        }
    };
    let ttl = match params.get("ttl") {
        None => app.ice.default_ttl,
        // An integer too large for u64 arrives as a float: whole and positive, it clamps.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => v,
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => f as u64,
            _ => {
                return Err(Refusal::new(
                    400,
                    "bad-ttl",
                    "ttl must be a whole number of seconds",
                ));
            }
        },
        // A string of digits of any length: one too large for u64 is past the maximum
        // anyway, so it clamps like any other large number.
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(_) => {
            return Err(Refusal::new(
                400,
                "bad-ttl",
                "ttl must be a whole number of seconds",
            ));
        }
    }
    .clamp(1, app.ice.max_ttl);
    let list = app.ice.build(&user, ttl);
    app.metrics.ice_requests.fetch_add(1, Ordering::Relaxed);
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&list).expect("serializes"),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for s in &list.ice_servers {
        for url in &s.urls {
            let link = match (&s.username, &s.credential) {
                (Some(u), Some(c)) => format!(
                    "<{url}>; rel=\"ice-server\"; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                ),
                _ => format!("<{url}>; rel=\"ice-server\""),
            };
            if let Ok(v) = HeaderValue::from_str(&link) {
                h.append(header::LINK, v);
            }
        }
    }
    Ok(r)
}

/// A running signal role.
#[derive(Debug)]
pub struct SignalRole {
    pub app: Arc<AppState>,
}

impl SignalRole {
    pub fn new(app: Arc<AppState>) -> Self {
        Self { app }
    }

    /// Serves `listener` until `shutdown`, then drains: `/readyz` and new requests get 503,
    /// open connections get 4012, and the role returns when they are gone or after
    /// `signal.drain_seconds`.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Arc::clone(&self.app);
        let hub = Arc::clone(&app.hub);
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(500));
            loop {
                t.tick().await;
                hub.tick(Instant::now());
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let drain_app = Arc::clone(&app);
        let drain = async move {
            shutdown.await;
            drain_app.draining.store(true, Ordering::Relaxed);
            tracing::info!("signal role draining");
            drain_app
                .hub
                .close_all(4012, "server draining; reconnect with your resume token");
            let deadline = Instant::now() + Duration::from_secs(drain_app.cfg.drain_seconds);
            while drain_app.metrics.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A moment more of clear 503s for clients reconnecting and health checkers.
            let linger = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            tokio::time::sleep(linger).await;
            let _ = stop_tx.send(());
        };
        tokio::spawn(drain);
        let connections = Arc::clone(&app.connections);
        let listener_metrics = Arc::clone(&app.listener_metrics);
        let served = callbox_http::serve(listener, router(app), connections, listener_metrics, async move {
            let _ = stop_rx.await;
        });
        // Connections still open at the deadline are cut when the process exits.
        let r = served.await;
        ticker.abort();
        r
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP surface over a real listener on loopback, and the admin hooks on
    //! [`AppState`].

    use super::*;
    use callbox_core::config::ApiKey;
    use futures_channel::mpsc as fmpsc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn app(cfg: SignalConfig) -> Arc<AppState> {
        let secrets = SecretSet::new(vec![Secret::new("turn-secret")]).expect("one secret");
        state(
            cfg,
            IceSource {
                stun_urls: vec![],
                turn_urls: vec!["turn:turn.example.invalid:3478".into()],
                secrets: Arc::new(ArcSwap::from_pointee(secrets)),
                default_ttl: 600,
                max_ttl: 3600,
            },
        )
    }

    async fn serve(app: Arc<AppState>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(l, router(app).into_make_service_with_connect_info::<SocketAddr>()).await
        });
        addr
    }

    /// One HTTP/1.1 GET: status and body.
    async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    }

    fn code(body: &str) -> String {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
        v["error"]["code"].as_str().unwrap_or("").to_string()
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[tokio::test]
    async fn banned_addresses_are_refused_before_the_upgrade() {
        let app = app(SignalConfig::default());
        let addr = serve(Arc::clone(&app)).await;
        assert_eq!(get(addr, "/v1/signal/validate?room=r", "").await.0, 200);
        app.set_bans(vec!["127.0.0.0/8".parse().unwrap()]);
        for (path, headers) in [
            ("/v1/signal?room=r", UPGRADE),
            ("/v1/signal/validate?room=r", ""),
            ("/v1/ice-servers", ""),
            // Banned first: a bad room or a bad resume tells a banned client nothing.
            ("/v1/signal/validate?room=bad%20room", ""),
            ("/v1/signal/validate?room=r&resume=nope", ""),
        ] {
            let (status, body) = get(addr, path, headers).await;
            assert_eq!((status, code(&body).as_str()), (403, "banned"), "{path}");
        }
        assert_eq!(app.metrics.rejects("banned"), 5);
        assert_eq!(
            app.hub.address_entries(),
            0,
            "nothing counted for a refused upgrade"
        );
        // A ban elsewhere lets us in again.
        app.set_bans(vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(get(addr, "/v1/signal/validate?room=r", "").await.0, 200);
        assert_eq!(get(addr, "/v1/ice-servers", "").await.0, 200);
    }

    #[test]
    fn bans_cover_ipv4_mapped_spellings() {
        let app = app(SignalConfig::default());
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        // Written in IPv4, client seen as IPv4-mapped IPv6 (a dual-stack listener).
        app.set_bans(vec!["203.0.113.0/24".parse().unwrap()]);
        assert!(app.is_banned(mapped) && app.is_banned(v4));
        // Written IPv4-mapped: parsing makes it the IPv4 network; Cidr::new does not.
        app.set_bans(vec!["::ffff:203.0.113.0/120".parse().unwrap()]);
        assert!(app.is_banned(mapped) && app.is_banned(v4));
        app.set_bans(vec![Cidr::new(mapped, 120).unwrap()]);
        assert!(app.is_banned(mapped) && app.is_banned(v4));
        assert!(!app.is_banned("203.0.114.9".parse().unwrap()));
        // IPv6 stays IPv6.
        app.set_bans(vec!["2001:db8::/32".parse().unwrap()]);
        assert!(app.is_banned("2001:db8::1".parse().unwrap()));
        assert!(!app.is_banned(v4));
    }

    /// A connection for tests: what the hub sends, and whether it was asked to close.
    #[derive(Default)]
    struct Probe {
        sent: Mutex<Vec<Value>>,
        closed: Mutex<Option<u16>>,
    }

    impl hub::Outbox for Probe {
        fn send(&self, text: Arc<str>) -> bool {
            self.sent
                .lock()
                .unwrap()
                .push(serde_json::from_str(&text).unwrap());
            true
        }
        fn close(&self, code: u16, _reason: &str) {
            self.closed.lock().unwrap().get_or_insert(code);
        }
    }

    #[test]
    fn set_bans_kicks_covered_live_peers_and_records_them() {
        let app = app(SignalConfig::default());
        let mut events = app.take_session_events().expect("first take");
        assert!(app.take_session_events().is_none(), "taken once");
        let join = |ip: &str| {
            let p = Arc::new(Probe::default());
            app.hub.reserve("r").unwrap();
            let j = app
                .hub
                .join("r", json!({}), ip.parse().unwrap(), p.clone(), (&json!([]), 60));
            (j, p)
        };
        let (bad, pbad) = join("10.1.2.3");
        let (_good, pgood) = join("10.9.9.9");
        pgood.sent.lock().unwrap().clear();
        app.set_bans(vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(*pbad.closed.lock().unwrap(), Some(4003));
        assert_eq!(*pgood.closed.lock().unwrap(), None);
        let got = std::mem::take(&mut *pgood.sent.lock().unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["reason"].as_str()),
            (Some("peer-left"), Some("kicked"))
        );
        assert_eq!(got[0]["peer_id"], bad.peer_id.as_str());
        let rec = events.try_recv().unwrap();
        assert_eq!(
            (rec.peer_id.as_str(), rec.reason),
            (bad.peer_id.as_str(), "kicked")
        );
        assert_eq!(app.hub.counts(), (1, 1));
        assert_eq!(app.metrics.peers.load(Ordering::Relaxed), 1);
    }

    /// A ban stored between a request's admission and its join: the join sees it and the
    /// connection is closed with 4003 right after its welcome.
    #[tokio::test]
    async fn a_ban_racing_an_upgrade_still_closes_the_connection() {
        let app = app(SignalConfig::default());
        let mut events = app.take_session_events().unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let admission = admit(
            &app,
            &HeaderMap::new(),
            &[("room".to_string(), "r".to_string())].into(),
            ip,
            true,
        )
        .unwrap_or_else(|_| panic!("admitted"));
        app.hub.reserve("r").unwrap();
        app.set_bans(vec![Cidr::new(ip, 32).unwrap()]);
        let (_to_server, stream) = fmpsc::unbounded::<Result<axum::extract::ws::Message, String>>();
        let (sink, mut from_server) = fmpsc::unbounded::<axum::extract::ws::Message>();
        run_connection(Arc::clone(&app), admission, ip, sink, stream).await;
        let mut frames = Vec::new();
        while let Some(m) = from_server.next().await {
            frames.push(m);
        }
        assert!(
            matches!(
                frames.last(),
                Some(axum::extract::ws::Message::Close(Some(f))) if f.code == 4003
            ),
            "{frames:?}"
        );
        assert_eq!(app.hub.counts(), (0, 0));
        assert_eq!(events.try_recv().unwrap().reason, "kicked");
        assert!(events.try_recv().is_err(), "one record");
    }

    #[tokio::test]
    async fn store_api_keys_are_matched_by_digest() {
        let app = app(SignalConfig {
            ice_auth: AuthMode::ApiKey,
            api_keys: vec![ApiKey {
                name: "from-config".into(),
                key: Secret::new("config-key"),
            }],
            ..SignalConfig::default()
        });
        let addr = serve(Arc::clone(&app)).await;
        let digest: [u8; 32] = Sha256::digest(b"store-key").into();
        app.set_api_keys([(digest, "from-store".to_string())].into());
        let (status, body) = get(addr, "/v1/ice-servers", "X-Api-Key: store-key\r\n").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(":from-store\""),
            "the key's name is the user id: {body}"
        );
        let (status, body) = get(addr, "/v1/ice-servers?key=config-key", "").await;
        assert_eq!(status, 200);
        assert!(body.contains(":from-config\""), "{body}");
        let (status, body) = get(addr, "/v1/ice-servers", "X-Api-Key: other\r\n").await;
        assert_eq!((status, code(&body).as_str()), (401, "unauthorized"));
        // Revoked in the store: refused at once.
        app.set_api_keys(HashMap::new());
        let (status, _) = get(addr, "/v1/ice-servers", "X-Api-Key: store-key\r\n").await;
        assert_eq!(status, 401);
    }
}
