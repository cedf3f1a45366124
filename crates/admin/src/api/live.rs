//! `/admin/v1/allocations` and `/admin/v1/rooms`: what the relay and signaling hold
//! now, through the [`crate::Live`] trait.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{Path, Query};

/// A live TURN allocation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AllocationView {
    /// Opaque id (a string: it does not fit a JavaScript number), unique on its node.
    pub id: String,
    /// The node it lives on (`cluster.node_id`; empty outside a cluster).
    #[serde(default)]
    pub node: String,
    /// The USERNAME it authenticated with.
    pub username: String,
    /// The quota key: the REST user id part, or the static user's name.
    pub user: String,
    pub client: String,
    /// The client's transport: `udp`, `tcp` or `tls`.
    pub transport: String,
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    pub number: u16,
    pub peer: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AllocationFilter {
    /// Only allocations of this user id (REST id part or static user name).
    user: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/allocations", tag = "allocations", params(AllocationFilter),
    responses((status = 200, description = "Live allocations, by id", body = [AllocationView])))]
pub(super) async fn list_allocations(
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

/// Which node an action is for, in a cluster.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct NodeFilter {
    /// The node (`node` in the listing); absent: this admin's own process.
    node: Option<String>,
}

impl NodeFilter {
    fn node(self) -> Option<String> {
        self.node.filter(|n| !n.is_empty())
    }
}

/// Why an action for another node did not happen.
#[derive(Debug, Clone)]
pub enum NodeError {
    /// No live node has that id.
    Unknown,
    /// The node is live but did not answer.
    Unavailable(String),
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Unknown => ApiError::not_found("node"),
            NodeError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "node-unavailable", m).retry_after(1)
            }
        }
    }
}

#[utoipa::path(delete, path = "/admin/v1/allocations/{id}", tag = "allocations",
    params(("id" = String, Path, description = "Allocation id", pattern = "^[0-9]{1,19}$"), NodeFilter),
    responses((status = 204, description = "Closed (the client's next request gets 437)")))]
pub(super) async fn close_allocation(
    State(app): AppState,
    Path(id): Path<String>,
    Query(f): Query<NodeFilter>,
) -> Result<StatusCode, ApiError> {
    let id = parse_alloc_id(&id)?;
    let node = f.node();
    match app.live.close_allocation(node.clone(), id).await {
        None => Err(ApiError::role_not_running("turn")),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(false)) => Err(ApiError::not_found("allocation")),
        Some(Ok(true)) => {
            tracing::info!(
                alloc = id,
                node = node.as_deref().unwrap_or("-"),
                "admin: allocation closed"
            );
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// A live signaling room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomView {
    pub room: String,
    /// The signal instance that holds it (`cluster.node_id`; empty outside a cluster).
    #[serde(default)]
    pub node: String,
    pub peers: Vec<PeerView>,
}

/// A peer in a room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    responses((status = 200, description = "Live rooms and their peers (of every signal instance in a cluster)", body = [RoomView])))]
pub(super) async fn list_rooms(State(app): AppState) -> Result<Json<Vec<RoomView>>, ApiError> {
    app.live
        .rooms()
        .await
        .map(Json)
        .ok_or_else(|| ApiError::role_not_running("signal"))
}

#[utoipa::path(get, path = "/admin/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name"), NodeFilter),
    responses((status = 200, description = "The room", body = RoomView)))]
pub(super) async fn get_room(
    State(app): AppState,
    Path(room): Path<String>,
    Query(f): Query<NodeFilter>,
) -> Result<Json<RoomView>, ApiError> {
    let node = f.node();
    app.live
        .rooms()
        .await
        .ok_or_else(|| ApiError::role_not_running("signal"))?
        .into_iter()
        .find(|r| r.room == room && node.as_ref().is_none_or(|n| &r.node == n))
        .map(Json)
        .ok_or_else(|| ApiError::not_found("room"))
}

/// How many connections an admin action closed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Closed {
    pub closed: u64,
}

#[utoipa::path(delete, path = "/admin/v1/rooms/{room}", tag = "rooms",
    params(("room" = String, Path, description = "Room name"), NodeFilter),
    responses((status = 200, description = "Every peer was closed with 4009", body = Closed)))]
pub(super) async fn close_room(
    State(app): AppState,
    Path(room): Path<String>,
    Query(f): Query<NodeFilter>,
) -> Result<Json<Closed>, ApiError> {
    match app.live.close_room(f.node(), room.clone()).await {
        None => Err(ApiError::role_not_running("signal")),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(0)) => Err(ApiError::not_found("room")),
        Some(Ok(n)) => {
            tracing::info!(%room, peers = n, "admin: room closed");
            Ok(Json(Closed { closed: n as u64 }))
        }
    }
}

#[utoipa::path(delete, path = "/admin/v1/rooms/{room}/peers/{peer_id}", tag = "rooms",
    params(("room" = String, Path, description = "Room name"), ("peer_id" = String, Path, description = "Peer id"), NodeFilter),
    responses((status = 204, description = "The peer was closed with 4003 and cannot resume")))]
pub(super) async fn kick_peer(
    State(app): AppState,
    Path((room, peer_id)): Path<(String, String)>,
    Query(f): Query<NodeFilter>,
) -> Result<StatusCode, ApiError> {
    match app.live.kick_peer(f.node(), room.clone(), peer_id.clone()).await {
        None => Err(ApiError::role_not_running("signal")),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(false)) => Err(ApiError::not_found("peer")),
        Some(Ok(true)) => {
            tracing::info!(%room, %peer_id, "admin: peer kicked");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
