//! `/admin/v1/nodes`: the cluster's live nodes (`cluster.redis_url`), as the registry in
//! Redis has them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::ApiError;

/// A live node of the cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeView {
    /// `cluster.node_id`, or the id generated into its state directory.
    pub id: String,
    /// `turn`, `signal`, `admin`.
    pub roles: Vec<String>,
    pub version: String,
    /// `cluster.region`.
    pub region: String,
    /// Unix seconds the process started.
    pub started: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms_ago: u64,
    /// Its listeners, as `name=address` (as in its ready line).
    pub listeners: Vec<String>,
    /// The ICE URLs it offers (TURN nodes).
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    /// Live TURN allocations.
    pub allocations: u64,
    /// Live signaling peers.
    pub peers: u64,
}

/// Why the node list is not there.
#[derive(Debug, Clone)]
pub enum NodesError {
    /// This process has no `cluster.redis_url`.
    NoCluster,
    /// Redis did not answer.
    Unavailable(String),
}

#[utoipa::path(get, path = "/admin/v1/nodes", tag = "cluster",
    responses((status = 200, description = "Live nodes, by id", body = [NodeView])))]
pub(super) async fn list_nodes(State(app): AppState) -> Result<Json<Vec<NodeView>>, ApiError> {
    match app.live.nodes().await {
        Ok(list) => Ok(Json(list)),
        Err(NodesError::NoCluster) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-cluster",
            "cluster.redis_url is not set: this node is on its own",
        )),
        Err(NodesError::Unavailable(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster-unavailable",
            format!("the cluster's Redis did not answer: {e}"),
        )
        .retry_after(1)),
    }
}
