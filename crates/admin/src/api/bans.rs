//! `/admin/v1/bans`: bans on addresses and networks.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callbox_core::names::BanReason;
use callbox_core::policy::Cidr;
use callbox_core::time::unix_now;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ACTOR, AppState, MAX_SPAN, schemas};
use crate::error::ApiError;
use crate::extract::{Body, Path};

/// A ban on an address or network: refused by signaling (403 `banned`) and by the relay
/// (403 to Allocate); live connections and allocations from it are closed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanView {
    pub id: i64,
    pub network: String,
    pub reason: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
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
    #[serde(default)]
    #[schema(schema_with = schemas::ban_reason)]
    pub reason: String,
    /// Lifts itself after this many seconds; absent: until removed.
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub expires_in_seconds: Option<u64>,
}

/// A ban request that keeps every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidBan {
    pub network: Cidr,
    pub reason: BanReason,
    /// 1 to ten years, when given.
    pub expires_in_seconds: Option<u64>,
}

impl NewBan {
    /// The request as the store takes it: 400 `bad-network` for the network, 400
    /// `invalid` for the reason or the expiry, in that order.
    pub fn validate(&self) -> Result<ValidBan, ApiError> {
        let network: Cidr = self
            .network
            .parse()
            .map_err(|e| ApiError::bad_request("bad-network", format!("network: {e}")))?;
        let reason = BanReason::parse(self.reason.as_str())?;
        match self.expires_in_seconds {
            Some(0) => Err(ApiError::bad_request(
                "invalid",
                "expires_in_seconds must be at least 1",
            )),
            Some(s) if s > MAX_SPAN => Err(ApiError::bad_request(
                "invalid",
                "expires_in_seconds is above ten years",
            )),
            expires_in_seconds => Ok(ValidBan {
                network,
                reason,
                expires_in_seconds,
            }),
        }
    }
}

#[utoipa::path(get, path = "/admin/v1/bans", tag = "bans",
    responses((status = 200, description = "Bans in force", body = [BanView])))]
pub(super) async fn list_bans(State(app): AppState) -> Result<Json<Vec<BanView>>, ApiError> {
    let now = unix_now();
    let list = app.with_store(move |s| s.active_bans(now)).await?;
    Ok(Json(list.into_iter().map(BanView::from).collect()))
}

#[utoipa::path(post, path = "/admin/v1/bans", tag = "bans", request_body = NewBan,
    responses((status = 201, description = "In force within a second; live connections from it are closed", body = BanView)))]
pub(super) async fn add_ban(State(app): AppState, Body(req): Body<NewBan>) -> Result<Response, ApiError> {
    let ValidBan {
        network,
        reason,
        expires_in_seconds,
    } = req.validate()?;
    let now = unix_now();
    let expires_at = expires_in_seconds.map(|s| now.saturating_add(s));
    let r = reason.clone();
    let id = app
        .with_store(move |s| s.add_ban(&network, &r, expires_at, now, ACTOR))
        .await?;
    app.changed.notify_one();
    tracing::info!(id, %network, %reason, "admin: ban added");
    Ok((
        StatusCode::CREATED,
        Json(BanView {
            id,
            network: network.to_string(),
            reason: reason.into_string(),
            created_at: now,
            expires_at,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/bans/{id}", tag = "bans",
    params(("id" = i64, Path, description = "Ban id")),
    responses((status = 204, description = "Lifted within a second")))]
pub(super) async fn remove_ban(State(app): AppState, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_ban(id, now, ACTOR)).await?;
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
