//! The `/admin/v1` handlers and their OpenAPI descriptions. Each handler's
//! `#[utoipa::path]` is what both the router and the document are built from.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callbox_core::policy::Cidr;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AdminState;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{Body, Path, Query};

type AppState = State<Arc<AdminState>>;

/// Actor recorded in the audit log for API changes.
const ACTOR: &str = "admin-api";
/// Longest overlap, ban or expiry accepted: ten years, in seconds.
const MAX_SPAN: u64 = 10 * 366 * 86_400;
const MAX_PAGE: u32 = 1000;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "callbox admin API",
        description = "Secrets, users, API keys, bans, live allocations and rooms, history and audit of a callbox appliance. Every endpoint needs `Authorization: Bearer <token>` (the token is in the state directory's `admin-token` file)."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    security(("token" = []))
)]
struct ApiDoc;

/// Adds the bearer scheme and the error answers every endpoint can give, so the document
/// states them once instead of in each handler.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in [
                    ("400", "Malformed request (query, path or JSON)"),
                    ("401", "Missing or wrong admin token"),
                    ("404", "No such thing, or the role does not run here"),
                    ("405", "Method not allowed"),
                    ("413", "Body too large"),
                    ("415", "Body is not JSON"),
                    ("422", "JSON with wrong types, missing or unknown fields"),
                    ("429", "Too many failed token checks from this address"),
                    ("503", "The store cannot be reached; nothing changed"),
                ] {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The routes and the document describing them. The conventions are applied after the
/// routes are collected (a modifier in `#[openapi]` runs before there are any paths).
pub(crate) fn split() -> (axum::Router<Arc<AdminState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = routes().split_for_parts();
    Conventions.modify(&mut doc);
    (router, doc)
}

fn routes() -> OpenApiRouter<Arc<AdminState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(list_allocations))
        .routes(routes!(close_allocation))
        .routes(routes!(list_rooms))
        .routes(routes!(get_room, close_room))
        .routes(routes!(kick_peer))
        .routes(routes!(list_secrets))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_users, add_user))
        .routes(routes!(remove_user))
        .routes(routes!(list_api_keys, add_api_key))
        .routes(routes!(remove_api_key))
        .routes(routes!(list_bans, add_ban))
        .routes(routes!(remove_ban))
        .routes(routes!(allocation_history))
        .routes(routes!(session_history))
        .routes(routes!(audit_log))
        .routes(routes!(effective_config))
}

// ---- status ----

/// The process at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub roles: Vec<String>,
    /// Live allocations (absent when the turn role does not run here).
    pub allocations: Option<u64>,
    /// Live rooms and peers (absent when the signal role does not run here).
    pub rooms: Option<u64>,
    pub peers: Option<u64>,
    pub active_secrets: i64,
    pub users: i64,
    pub api_keys: i64,
    pub active_bans: i64,
}

#[utoipa::path(get, path = "/admin/v1/status", tag = "status",
    responses((status = 200, description = "Version, uptime, roles and counts", body = Status)))]
async fn status(State(app): AppState) -> Result<Json<Status>, ApiError> {
    let now = unix_now();
    let counts = app.with_store(move |s| s.counts(now)).await?;
    let allocations = app.live.allocations().await.map(|a| a.len() as u64);
    let rooms = app.live.room_counts();
    Ok(Json(Status {
        version: app.info.version.clone(),
        uptime_seconds: app.info.started.elapsed().as_secs(),
        roles: app.info.roles.clone(),
        allocations,
        rooms: rooms.map(|(r, _)| r),
        peers: rooms.map(|(_, p)| p),
        active_secrets: counts.active_secrets,
        users: counts.users,
        api_keys: counts.api_keys,
        active_bans: counts.active_bans,
    }))
}

// ---- live allocations ----

/// A live TURN allocation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AllocationView {
    /// Opaque id (a string: it does not fit a JavaScript number).
    pub id: String,
    /// The USERNAME it authenticated with.
    pub username: String,
    /// The quota key: the REST user id part, or the static user's name.
    pub user: String,
    pub client: String,
    pub relay: String,
    pub age_seconds: u64,
    pub expires_in_seconds: u64,
    /// Peer addresses with an unexpired permission.
    pub permissions: Vec<String>,
    pub channels: Vec<ChannelView>,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

/// A bound channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelView {
    pub number: u16,
    pub peer: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AllocationFilter {
    /// Only allocations of this user id (REST id part or static user name).
    user: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/allocations", tag = "allocations", params(AllocationFilter),
    responses((status = 200, description = "Live allocations, by id", body = [AllocationView])))]
async fn list_allocations(
    State(app): AppState,
    Query(f): Query<AllocationFilter>,
) -> Result<Json<Vec<AllocationView>>, ApiError> {
    let mut list = app
        .live
        .allocations()
        .await
        .ok_or_else(|| ApiError::role_not_running("turn"))?;
    if let Some(user) = f.user.as_ref().filter(|u| !u.is_empty()) {
        list.retain(|a| &a.user == user || &a.username == user);
    }
    Ok(Json(list))
}

fn parse_alloc_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request("bad-path", "an allocation id is a decimal number"))
}

#[utoipa::path(delete, path = "/admin/v1/allocations/{id}", tag = "allocations",
    params(("id" = String, Path, description = "Allocation id", pattern = "^[0-9]{1,19}$")),
    responses((status = 204, description = "Closed (the client's next request gets 437)")))]
async fn close_allocation(State(app): AppState, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = parse_alloc_id(&id)?;
    match app.live.close_allocation(id).await {
        None => Err(ApiError::role_not_running("turn")),
        Some(false) => Err(ApiError::not_found("allocation")),
        Some(true) => {
            tracing::info!(alloc = id, "admin: allocation closed");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

// ---- live rooms ----

/// A live signaling room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomView {
    pub room: String,
    pub peers: Vec<PeerView>,
}

/// A peer in a room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeerView {
    pub peer_id: String,
    pub address: String,
    /// False while the peer is in its resume grace (connection lost).
    pub connected: bool,
    /// Unix seconds.
    pub joined_at: u64,
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
    pub messages_in: u64,
    pub messages_out: u64,
}

#[utoipa::path(get, path = "/admin/v1/rooms", tag = "rooms",
    responses((status = 200, description = "Live rooms and their peers", body = [RoomView])))]
async fn list_rooms(State(app): AppState) -> Result<Json<Vec<RoomView>>, ApiError> {
    app.live
        .rooms()
        .map(Json)
        .ok_or_else(|| ApiError::role_not_running("signal"))
}

#[utoipa::path(get, path = "/admin/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, description = "The room", body = RoomView)))]
async fn get_room(State(app): AppState, Path(room): Path<String>) -> Result<Json<RoomView>, ApiError> {
    app.live
        .room(&room)
        .ok_or_else(|| ApiError::role_not_running("signal"))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("room"))
}

/// How many connections an admin action closed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Closed {
    pub closed: u64,
}

#[utoipa::path(delete, path = "/admin/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, description = "Every peer was closed with 4009", body = Closed)))]
async fn close_room(State(app): AppState, Path(room): Path<String>) -> Result<Json<Closed>, ApiError> {
    match app.live.close_room(&room) {
        None => Err(ApiError::role_not_running("signal")),
        Some(0) => Err(ApiError::not_found("room")),
        Some(n) => {
            tracing::info!(%room, peers = n, "admin: room closed");
            Ok(Json(Closed { closed: n as u64 }))
        }
    }
}

#[utoipa::path(delete, path = "/admin/v1/rooms/{room}/peers/{peer_id}", tag = "rooms",
    params(("room" = String, Path, description = "Room name"), ("peer_id" = String, Path, description = "Peer id")),
    responses((status = 204, description = "The peer was closed with 4003 and cannot resume")))]
async fn kick_peer(
    State(app): AppState,
    Path((room, peer_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    match app.live.kick_peer(&room, &peer_id) {
        None => Err(ApiError::role_not_running("signal")),
        Some(false) => Err(ApiError::not_found("peer")),
        Some(true) => {
            tracing::info!(%room, %peer_id, "admin: peer kicked");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

// ---- secrets ----

/// A TURN REST secret, without its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    pub id: i64,
    pub created_at: i64,
    /// When it stops verifying (set once a newer secret took over).
    pub valid_until: Option<i64>,
    /// Verifies credentials now.
    pub active: bool,
    /// The newest active secret signs new credentials.
    pub signing: bool,
}

/// The secrets and where they are managed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Secrets {
    /// `store` (rotate here) or `config` (`auth.secrets`; rotation here is refused).
    pub managed_by: String,
    pub secrets: Vec<SecretView>,
}

#[utoipa::path(get, path = "/admin/v1/secrets", tag = "secrets",
    responses((status = 200, description = "Secrets, newest first; values are never shown again", body = Secrets)))]
async fn list_secrets(State(app): AppState) -> Result<Json<Secrets>, ApiError> {
    let now = unix_now();
    let list = app.with_store(move |s| s.secrets_overview(now)).await?;
    let signing = list.iter().find(|s| s.active).map(|s| s.id);
    Ok(Json(Secrets {
        managed_by: if app.info.secrets_from_config {
            "config"
        } else {
            "store"
        }
        .into(),
        secrets: list
            .into_iter()
            .map(|s| SecretView {
                signing: Some(s.id) == signing && !app.info.secrets_from_config,
                id: s.id,
                created_at: s.created_at,
                valid_until: s.valid_until,
                active: s.active,
            })
            .collect(),
    }))
}

/// A rotation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret (at least 16 characters); generated when absent. Give one to share
    /// it with another TURN server (e.g. coturn's `static-auth-secret`).
    #[schema(min_length = 16, max_length = 1024)]
    pub secret: Option<String>,
    /// Seconds the previous secret keeps verifying; default `admin.rotation_overlap`.
    #[schema(maximum = 316_224_000)]
    pub overlap_seconds: Option<u64>,
}

/// The new secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    pub id: i64,
    pub secret: String,
    pub created_at: i64,
    /// Until when the previous secrets keep verifying.
    pub previous_valid_until: i64,
}

#[utoipa::path(post, path = "/admin/v1/secrets", tag = "secrets", request_body = RotateSecret,
    responses(
        (status = 201, description = "The new secret signs at once; the old verify through the overlap", body = RotatedSecret),
        (status = 409, description = "Secrets are managed in the configuration file", body = ErrorBody)))]
async fn rotate_secret(State(app): AppState, Body(req): Body<RotateSecret>) -> Result<Response, ApiError> {
    if app.info.secrets_from_config {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secrets-in-config",
            "auth.secrets is set in the configuration: rotate there (or remove it to manage secrets here)",
        ));
    }
    let overlap = req.overlap_seconds.unwrap_or(app.info.rotation_overlap);
    if overlap > MAX_SPAN {
        return Err(ApiError::bad_request(
            "invalid",
            "overlap_seconds is above ten years",
        ));
    }
    let secret = req.secret.unwrap_or_else(|| random_hex(24));
    if secret.len() > 1024 {
        return Err(ApiError::bad_request(
            "invalid",
            "secret is longer than 1024 bytes",
        ));
    }
    let now = unix_now();
    let value = secret.clone();
    let id = app
        .with_store(move |s| s.rotate_secret(&value, overlap as i64, now, ACTOR))
        .await?;
    app.changed.notify_one();
    tracing::info!(id, overlap, "admin: TURN secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedSecret {
            id,
            secret,
            created_at: now,
            previous_valid_until: now + overlap as i64,
        }),
    )
        .into_response())
}

// ---- users ----

/// A static TURN user (long-term credentials). The password is never stored or shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub realm: String,
    pub created_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1-255 characters, not of the REST form `<digits>:...`.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^0-9:]")]
    pub name: String,
    /// 1-256 bytes; only the RFC 8489 long-term key derived from it is kept.
    #[schema(min_length = 1, max_length = 64)]
    pub password: String,
}

#[utoipa::path(get, path = "/admin/v1/users", tag = "users",
    responses((status = 200, description = "Static users", body = [UserView])))]
async fn list_users(State(app): AppState) -> Result<Json<Vec<UserView>>, ApiError> {
    let list = app.with_store(|s| s.user_list()).await?;
    Ok(Json(
        list.into_iter()
            .map(|(name, realm, created_at)| UserView {
                name,
                realm,
                created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/admin/v1/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Added; the relay accepts it within a second", body = UserView),
        (status = 409, description = "A user with this name exists", body = ErrorBody)))]
async fn add_user(State(app): AppState, Body(req): Body<NewUser>) -> Result<Response, ApiError> {
    if req.password.is_empty() || req.password.len() > 256 {
        return Err(ApiError::bad_request("invalid", "password must be 1-256 bytes"));
    }
    let now = unix_now();
    let realm = app.info.realm.clone();
    let (name, r) = (req.name.clone(), realm.clone());
    app.with_store(move |s| s.add_user(&name, &r, &req.password, now, ACTOR))
        .await?;
    app.changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            name: req.name,
            realm,
            created_at: now,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed; its live allocations are closed")))]
async fn remove_user(State(app): AppState, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_user(&name, now, ACTOR)).await?;
    // The sync loop installs credentials without the user, then closes its allocations.
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

// ---- API keys ----

/// An API key for `/v1/ice-servers`, without the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: i64,
    /// Becomes the user id of the credentials minted with the key.
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// 1-64 of `A-Za-z0-9_.@-`.
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    pub name: String,
}

/// A new API key, shown this once (only its SHA-256 is kept).
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedApiKey {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub key: String,
}

#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "API keys", body = [ApiKeyView])))]
async fn list_api_keys(State(app): AppState) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let list = app.with_store(|s| s.api_key_list()).await?;
    Ok(Json(
        list.into_iter()
            .map(|(id, name, created_at)| ApiKeyView { id, name, created_at })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/admin/v1/api-keys", tag = "api-keys", request_body = NewApiKey,
    responses(
        (status = 201, description = "Issued; accepted by /v1/ice-servers within a second", body = IssuedApiKey),
        (status = 409, description = "A key with this name exists", body = ErrorBody)))]
async fn add_api_key(State(app): AppState, Body(req): Body<NewApiKey>) -> Result<Response, ApiError> {
    let key = format!("cbk_{}", random_hex(24));
    let now = unix_now();
    let (name, k) = (req.name.clone(), key.clone());
    let id = app
        .with_store(move |s| s.add_api_key(&name, &k, now, ACTOR))
        .await?;
    app.changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(IssuedApiKey {
            id,
            name: req.name,
            created_at: now,
            key,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/api-keys/{name}", tag = "api-keys",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 204, description = "Revoked within a second")))]
async fn remove_api_key(State(app): AppState, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_api_key(&name, now, ACTOR))
        .await?;
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

// ---- bans ----

/// A ban on an address or network: refused by signaling (403 `banned`) and by the relay
/// (403 to Allocate); live connections and allocations from it are closed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanView {
    pub id: i64,
    pub network: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl From<callbox_store::Ban> for BanView {
    fn from(b: callbox_store::Ban) -> Self {
        Self {
            id: b.id,
            network: b.network.to_string(),
            reason: b.reason,
            created_at: b.created_at,
            expires_at: b.expires_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// An address (`192.0.2.7`, `2001:db8::7`) or a network (`192.0.2.0/24`) with no
    /// host bits set.
    #[schema(example = "192.0.2.0/24")]
    pub network: String,
    /// At most 1024 bytes.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub reason: String,
    /// Lifts itself after this many seconds; absent: until removed.
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub expires_in_seconds: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/bans", tag = "bans",
    responses((status = 200, description = "Bans in force", body = [BanView])))]
async fn list_bans(State(app): AppState) -> Result<Json<Vec<BanView>>, ApiError> {
    let now = unix_now();
    let list = app.with_store(move |s| s.active_bans(now)).await?;
    Ok(Json(list.into_iter().map(BanView::from).collect()))
}

#[utoipa::path(post, path = "/admin/v1/bans", tag = "bans", request_body = NewBan,
    responses((status = 201, description = "In force within a second; live connections from it are closed", body = BanView)))]
async fn add_ban(State(app): AppState, Body(req): Body<NewBan>) -> Result<Response, ApiError> {
    let network: Cidr = req
        .network
        .parse()
        .map_err(|e| ApiError::bad_request("bad-network", format!("network: {e}")))?;
    if req.reason.len() > 1024 {
        return Err(ApiError::bad_request(
            "invalid",
            "reason is longer than 1024 bytes",
        ));
    }
    let now = unix_now();
    let expires_at = match req.expires_in_seconds {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid",
                "expires_in_seconds must be at least 1",
            ));
        }
        Some(s) if s > MAX_SPAN => {
            return Err(ApiError::bad_request(
                "invalid",
                "expires_in_seconds is above ten years",
            ));
        }
        Some(s) => Some(now + s as i64),
        None => None,
    };
    let reason = req.reason.clone();
    let id = app
        .with_store(move |s| s.add_ban(&network, &reason, expires_at, now, ACTOR))
        .await?;
    app.changed.notify_one();
    tracing::info!(id, %network, reason = %req.reason, "admin: ban added");
    Ok((
        StatusCode::CREATED,
        Json(BanView {
            id,
            network: network.to_string(),
            reason: req.reason,
            created_at: now,
            expires_at,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/bans/{id}", tag = "bans",
    params(("id" = i64, Path, description = "Ban id")),
    responses((status = 204, description = "Lifted within a second")))]
async fn remove_ban(State(app): AppState, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_ban(id, now, ACTOR)).await?;
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

// ---- history and audit ----

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AllocationHistoryParams {
    /// Started at or after (unix seconds). Default: the beginning.
    from: Option<i64>,
    /// Started before (unix seconds). Default: no end.
    to: Option<i64>,
    /// Only allocations with this USERNAME (`<expiry>:<id>` or a static user's name).
    user: Option<String>,
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows to skip (`next_offset` of the previous page).
    offset: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SessionHistoryParams {
    /// Started at or after (unix seconds). Default: the beginning.
    from: Option<i64>,
    /// Started before (unix seconds). Default: no end.
    to: Option<i64>,
    /// Only sessions in this room.
    room: Option<String>,
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows to skip (`next_offset` of the previous page).
    offset: Option<u64>,
}

fn history_query(
    from: Option<i64>,
    to: Option<i64>,
    filter: Option<&String>,
    limit: Option<u32>,
    offset: Option<u64>,
) -> Result<callbox_store::HistoryQuery, ApiError> {
    let limit = page_limit(limit)?;
    let from = from.unwrap_or(0);
    let to = to.unwrap_or(i64::MAX);
    if from > to {
        return Err(ApiError::bad_request("bad-query", "from is after to"));
    }
    Ok(callbox_store::HistoryQuery {
        from,
        to,
        // An empty filter (`?user=`, as forms send it) means no filter.
        filter: filter.filter(|f| !f.is_empty()).cloned(),
        limit,
        offset: offset.unwrap_or(0).min(i64::MAX as u64),
    })
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request("bad-query", "limit must be 1-1000")),
    }
}

fn next_offset(offset: u64, limit: u32, got: usize) -> Option<u64> {
    (got as u64 == u64::from(limit)).then(|| offset.saturating_add(got as u64))
}

/// A finished or running allocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationRecordView {
    pub alloc_id: String,
    pub username: String,
    pub client: String,
    pub relay: String,
    pub started_at: i64,
    /// Absent while the allocation runs (or when the process stopped without closing it).
    pub ended_at: Option<i64>,
    pub close_reason: Option<String>,
    pub packets_to_peer: i64,
    pub bytes_to_peer: i64,
    pub packets_to_client: i64,
    pub bytes_to_client: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationHistoryPage {
    pub items: Vec<AllocationRecordView>,
    /// Pass as `offset` for the next page; absent on the last page.
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/history/allocations", tag = "history", params(AllocationHistoryParams),
    responses((status = 200, description = "Allocations, newest first", body = AllocationHistoryPage)))]
async fn allocation_history(
    State(app): AppState,
    Query(p): Query<AllocationHistoryParams>,
) -> Result<Json<AllocationHistoryPage>, ApiError> {
    let q = history_query(p.from, p.to, p.user.as_ref(), p.limit, p.offset)?;
    let (offset, limit) = (q.offset, q.limit);
    let rows = app.with_store(move |s| s.allocation_history_page(&q)).await?;
    Ok(Json(AllocationHistoryPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|r| AllocationRecordView {
                alloc_id: (r.alloc_id as u64).to_string(),
                username: r.username,
                client: r.client,
                relay: r.relay,
                started_at: r.started_at,
                ended_at: r.ended_at,
                close_reason: r.close_reason,
                packets_to_peer: r.packets_to_peer,
                bytes_to_peer: r.bytes_to_peer,
                packets_to_client: r.packets_to_client,
                bytes_to_client: r.bytes_to_client,
            })
            .collect(),
    }))
}

/// A finished signaling session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRecordView {
    pub room: String,
    pub peer_id: String,
    pub client: String,
    pub started_at: i64,
    pub ended_at: i64,
    /// `left`, `timeout`, `kicked` or `error`.
    pub close_reason: String,
    pub messages_in: i64,
    pub messages_out: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionHistoryPage {
    pub items: Vec<SessionRecordView>,
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/history/sessions", tag = "history", params(SessionHistoryParams),
    responses((status = 200, description = "Signaling sessions, newest first", body = SessionHistoryPage)))]
async fn session_history(
    State(app): AppState,
    Query(p): Query<SessionHistoryParams>,
) -> Result<Json<SessionHistoryPage>, ApiError> {
    let q = history_query(p.from, p.to, p.room.as_ref(), p.limit, p.offset)?;
    let (offset, limit) = (q.offset, q.limit);
    let rows = app.with_store(move |s| s.session_history_page(&q)).await?;
    Ok(Json(SessionHistoryPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|r| SessionRecordView {
                room: r.room,
                peer_id: r.peer_id,
                client: r.client,
                started_at: r.started_at,
                ended_at: r.ended_at,
                close_reason: r.close_reason,
                messages_in: r.messages_in,
                messages_out: r.messages_out,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    offset: Option<u64>,
}

/// One admin change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: i64,
    /// `admin-api` or `cli`.
    pub actor: String,
    /// e.g. `secret.rotate`, `user.add`, `ban.remove`.
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(PageParams),
    responses((status = 200, description = "Admin changes, newest first", body = AuditPage)))]
async fn audit_log(State(app): AppState, Query(p): Query<PageParams>) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(p.limit)?;
    let offset = p.offset.unwrap_or(0).min(i64::MAX as u64);
    let rows = app.with_store(move |s| s.audit_page(limit, offset)).await?;
    Ok(Json(AuditPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|a| AuditView {
                id: a.id,
                at: a.at,
                actor: a.actor,
                action: a.action,
                detail: a.detail,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/admin/v1/config", tag = "config",
    responses((status = 200, description = "The effective configuration; secrets show as `<redacted>`", body = Object)))]
async fn effective_config(State(app): AppState) -> Json<serde_json::Value> {
    Json(app.info.config.clone())
}
