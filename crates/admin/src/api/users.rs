//! `/admin/v1/users`: static TURN users (long-term credentials).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callbox_core::names::{UserName, password};
use callbox_core::time::unix_now;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ACTOR, AppState, schemas};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Path};

/// A static TURN user (long-term credentials). The password is never stored or shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub realm: String,
    pub created_at: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(schema_with = schemas::user_name)]
    pub name: String,
    #[schema(schema_with = schemas::password)]
    pub password: String,
}

impl NewUser {
    /// The name as the store takes it, once the password keeps its limits too (the
    /// password first, as before the types existed; both answer 400 `invalid`).
    pub fn validate(&self) -> Result<UserName, ApiError> {
        password::check(&self.password)?;
        Ok(UserName::parse(self.name.as_str())?)
    }
}

#[utoipa::path(get, path = "/admin/v1/users", tag = "users",
    responses((status = 200, description = "Static users", body = [UserView])))]
pub(super) async fn list_users(State(app): AppState) -> Result<Json<Vec<UserView>>, ApiError> {
    let list = app.with_store(|s| s.user_list()).await?;
    Ok(Json(
        list.into_iter()
            .map(|u| UserView {
                name: u.name,
                realm: u.realm,
                created_at: u.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/admin/v1/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Added; the relay accepts it within a second", body = UserView),
        (status = 409, description = "A user with this name exists", body = ErrorBody)))]
pub(super) async fn add_user(State(app): AppState, Body(req): Body<NewUser>) -> Result<Response, ApiError> {
    let name = req.validate()?;
    let now = unix_now();
    let realm = app.info.realm.clone();
    let (n, r) = (name.clone(), realm.clone());
    app.with_store(move |s| s.add_user(&n, &r, &req.password, now, ACTOR))
        .await?;
    app.changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            name: name.into_string(),
            realm,
            created_at: now,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/admin/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed; its live allocations are closed")))]
pub(super) async fn remove_user(
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = unix_now();
    app.with_store(move |s| s.remove_user(&name, now, ACTOR)).await?;
    // The sync loop installs credentials without the user, then closes its allocations.
    app.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
