//! The `/admin/v1` handlers and their OpenAPI descriptions. Each handler's
//! `#[utoipa::path]` is what both the router and the document are built from.
//!
//! One module per resource; this one holds the document's conventions, the route list
//! and what handlers share. Request bodies arrive with plain strings (a JSON type error is
//! 422 `invalid-body`) and handlers parse them into the validated types of
//! `callbox_core::names` (a broken rule is 400 `invalid`, naming the field).
//!
//! Times are `callbox_core::time::UnixSecs`; the structs the document is derived from
//! spell it `u64`, because utoipa cannot see through a type alias (it would document a
//! component named `UnixSecs` instead of an integer).

mod api_keys;
mod bans;
mod history;
mod live;
mod nodes;
mod schemas;
mod secrets;
mod status;
mod users;

use std::sync::Arc;

use axum::extract::State;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AdminState;
use crate::error::{ErrorBody, ErrorDetail};

pub use api_keys::NewApiKey;
pub use bans::{NewBan, ValidBan};
pub use live::{AllocationView, ChannelView, NodeError, PeerView, RoomView};
pub use nodes::{NodeView, NodesError};
pub use secrets::RotateSecret;
pub use users::NewUser;

type AppState = State<Arc<AdminState>>;

/// Actor recorded in the audit log for API changes.
const ACTOR: &str = "admin-api";
/// Longest overlap, ban or expiry accepted: ten years, in seconds.
pub const MAX_SPAN: u64 = 10 * 366 * 86_400;

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
        .routes(routes!(status::status))
        .routes(routes!(live::list_allocations))
        .routes(routes!(live::close_allocation))
        .routes(routes!(live::list_rooms))
        .routes(routes!(live::get_room, live::close_room))
        .routes(routes!(live::kick_peer))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::rotate_secret))
        .routes(routes!(users::list_users, users::add_user))
        .routes(routes!(users::remove_user))
        .routes(routes!(api_keys::list_api_keys, api_keys::add_api_key))
        .routes(routes!(api_keys::remove_api_key))
        .routes(routes!(bans::list_bans, bans::add_ban))
        .routes(routes!(bans::remove_ban))
        .routes(routes!(history::allocation_history))
        .routes(routes!(history::session_history))
        .routes(routes!(history::audit_log))
        .routes(routes!(status::effective_config))
}
