//! `/admin/v1/secrets`: TURN REST secrets and their rotation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callbox_core::names::turn_secret;
use callbox_core::time::unix_now;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ACTOR, AppState, MAX_SPAN, random_hex, schemas};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Body;

/// A TURN REST secret, without its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    pub id: i64,
    pub created_at: u64,
    /// When it stops verifying (set once a newer secret took over).
    pub valid_until: Option<u64>,
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
pub(super) async fn list_secrets(State(app): AppState) -> Result<Json<Secrets>, ApiError> {
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
    // Checked against `callbox_core::names::turn_secret` by the handler.
    #[schema(schema_with = schemas::turn_secret)]
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
    pub created_at: u64,
    /// Until when the previous secrets keep verifying.
    pub previous_valid_until: u64,
}

#[utoipa::path(post, path = "/admin/v1/secrets", tag = "secrets", request_body = RotateSecret,
    responses(
        (status = 201, description = "The new secret signs at once; the old verify through the overlap", body = RotatedSecret),
        (status = 409, description = "Secrets are managed in the configuration file", body = ErrorBody)))]
pub(super) async fn rotate_secret(
    State(app): AppState,
    Body(req): Body<RotateSecret>,
) -> Result<Response, ApiError> {
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
    turn_secret::check(&secret)?;
    let now = unix_now();
    let value = secret.clone();
    let id = app
        .with_store(move |s| s.rotate_secret(&value, overlap, now, ACTOR))
        .await?;
    app.changed.notify_one();
    tracing::info!(id, overlap, "admin: TURN secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedSecret {
            id,
            secret,
            created_at: now,
            previous_valid_until: now.saturating_add(overlap),
        }),
    )
        .into_response())
}
