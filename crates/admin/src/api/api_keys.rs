//! `/admin/v1/api-keys`: API keys for `/v1/ice-servers` (only their SHA-256 is kept).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callbox_core::names::ApiKeyName;
use callbox_core::time::unix_now;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ACTOR, AppState, random_hex, schemas};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Path};

/// An API key for `/v1/ice-servers`, without the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: i64,
    /// Becomes the user id of the credentials minted with the key.
    pub name: String,
    pub created_at: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    #[schema(schema_with = schemas::api_key_name)]
    pub name: String,
}

impl NewApiKey {
    /// The name as the store takes it.
    pub fn validate(&self) -> Result<ApiKeyName, ApiError> {
        Ok(ApiKeyName::parse(self.name.as_str())?)
    }
}

/// A new API key, shown this once (only its SHA-256 is kept).
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedApiKey {
    pub id: i64,
    pub name: String,
    pub created_at: u64,
    pub key: String,
}

#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "API keys", body = [ApiKeyView])))]
pub(super) async fn list_api_keys(State(app): AppState) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let list = app.with_store(|s| s.api_key_list()).await?;
    Ok(Json(
        list.into_iter()
            .map(|k| ApiKeyView {
                id: k.id,
                name: k.name,
                created_at: k.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/admin/v1/api-keys", tag = "api-keys", request_body = NewApiKey,
    responses(
        (status = 201, description = "Issued; accepted by /v1/ice-servers within a second", body = IssuedApiKey),
        (status = 409, description = "A key with this name exists", body = ErrorBody)))]
pub(super) async fn add_api_key(
    State(app): AppState,
    Body(req): Body<NewApiKey>,
) -> Result<Response, ApiError> {
    let name = req.validate()?;
    let key = format!("cbk_{}", random_hex(24));
    let now = unix_now();
    let (n, k) = (name.clone(), key.clone());
    let id = app.with_store(move |s| s.add_api_key(&n, &k, now, ACTOR)).await?;
    app.changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(IssuedApiKey {
            id,
            name: name.into_string(),
            created_at: now,
            key,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/api-keys/{name}", tag = "api-keys",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 204, description = "Revoked within a second")))]
pub(super) async fn remove_api_key(
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_api_key(&name, now, ACTOR))
        .await?;
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
