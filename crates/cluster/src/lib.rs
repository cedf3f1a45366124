//! The control plane across machines, over Redis (`cluster.redis_url`).
//!
//! Two things travel through it:
//! - **Access snapshots** ([`AccessWire`]): the secrets, static users' long-term keys, API
//!   key digests and bans the admin role reads from its store. The admin node publishes
//!   each one it applies (content-addressed: the version is the SHA-256 of the JSON, so
//!   publishing the same content twice is a no-op and a Redis that lost its data is
//!   refilled at the next check); every other node polls the version every heartbeat and
//!   fetches the snapshot when it changed. A node keeps serving from its last snapshot
//!   while Redis is away (TURN REST credentials are HMACs and need no Redis at all).
//! - **The node registry** ([`NodeInfo`]): each node writes its record with a TTL every
//!   heartbeat; a node that stops is gone after `cluster.node_ttl_ms`. Signaling builds ICE
//!   lists from the TURN nodes in it, admin lists it.
//!
//! - **Requests to one node** ([`Cluster::call`], [`Cluster::serve_rpc`]): admin asks a
//!   node for its live allocations or rooms, or to close one, through a list per node that
//!   the node pops with BLPOP on a connection of its own.
//!
//! Every command has the configured timeout; a failure is logged once per outage, counted,
//! and shown in `callbox_cluster_redis_up`. The connection manager reconnects by itself
//! with backoff and jitter.

mod access;
mod metrics;
mod registry;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use crate::access::AccessWire;
pub use crate::metrics::ClusterMetrics;
pub use crate::registry::{NodeInfo, NodeLoad};
pub use crate::rpc::{RpcError, RpcHandler};

/// Why a cluster operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a stored record does not parse: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("redis did not answer within {0} ms (cluster.timeout_ms)")]
    Timeout(u128),
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// What the cluster link needs (from `[cluster]`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub node_id: String,
    pub region: String,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    pub timeout: Duration,
    pub key_prefix: String,
}

/// A node's link to the cluster's Redis. Cheap to clone (one multiplexed connection).
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    conn: ConnectionManager,
    settings: Arc<ClusterSettings>,
    metrics: Arc<ClusterMetrics>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.settings.node_id)
            .field("key_prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A link that connects on first use and reconnects by itself: a node starts (and
    /// serves) while Redis is away. Only a malformed URL is an error here.
    pub fn new(settings: ClusterSettings, metrics: Arc<ClusterMetrics>) -> Result<Cluster> {
        // No Nagle: requests are small writes whose answers a caller waits for.
        let info = redis::IntoConnectionInfo::into_connection_info(settings.redis_url.as_str())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(5))
            .set_number_of_retries(usize::MAX);
        let conn = client.get_connection_manager_lazy(config)?;
        Ok(Cluster {
            client,
            conn,
            settings: Arc::new(settings),
            metrics,
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.metrics
    }

    /// `{prefix}:{name}`.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.key_prefix)
    }

    /// Runs `cmd`, bounded by the timeout, and records the outcome under `operation`
    /// (`access`, `publish`, `heartbeat` or `nodes`: the failure metric's label).
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<T> {
        let mut pipe = redis::pipe();
        cmd(&mut pipe);
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.settings.timeout, pipe.query_async::<T>(&mut conn)).await
        {
            Ok(r) => r.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Timeout(self.settings.timeout.as_millis())),
        };
        match &result {
            Ok(_) => self.metrics.ok(),
            Err(e) => self.metrics.failed(operation, e),
        }
        result
    }
}
