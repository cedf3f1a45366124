//! `/admin/v1/status` and `/admin/v1/config`: the process at a glance.

use axum::Json;
use axum::extract::State;
use callbox_core::time::unix_now;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::ApiError;

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
pub(super) async fn status(State(app): AppState) -> Result<Json<Status>, ApiError> {
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

#[utoipa::path(get, path = "/admin/v1/config", tag = "config",
    responses((status = 200, description = "The effective configuration; secrets show as `<redacted>`", body = Object)))]
pub(super) async fn effective_config(State(app): AppState) -> Json<serde_json::Value> {
    Json(app.info.config.clone())
}
