//! The node registry: `{prefix}:node:{id}` holds a node's record with a TTL of
//! `cluster.node_ttl_ms`, refreshed every heartbeat; `{prefix}:nodes` (a sorted set of ids
//! by last heartbeat) lets a reader find them without scanning the key space. A node that
//! stops is gone when its record expires; its id leaves the set at the next listing.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Cluster, Result};

/// A node's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub roles: Vec<String>,
    pub version: String,
    pub region: String,
    /// Unix seconds the process started.
    pub started: u64,
    /// Unix milliseconds of this heartbeat.
    pub seen_ms: u64,
    /// Its listeners, as `name=addr` (what its ready line says).
    pub listeners: Vec<String>,
    /// The ICE URLs a TURN node offers (`stun:`, `turn:`, `turns:`); empty for others.
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    pub load: NodeLoad,
}

/// How busy a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Live TURN allocations.
    pub allocations: u64,
    /// Live signaling peers.
    pub peers: u64,
}

impl NodeInfo {
    /// A record as Redis holds it.
    pub fn decode(json: &str) -> serde_json::Result<NodeInfo> {
        serde_json::from_str(json)
    }

    /// Milliseconds since this record's heartbeat.
    pub fn seen_ms_ago(&self) -> u64 {
        now_ms().saturating_sub(self.seen_ms)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Cluster {
    /// Writes this node's record (stamped now) with its TTL.
    pub async fn heartbeat(&self, info: &NodeInfo) -> Result<()> {
        let mut info = info.clone();
        info.seen_ms = now_ms();
        let json = serde_json::to_string(&info)?;
        let (key, set) = (self.key(&format!("node:{}", info.id)), self.key("nodes"));
        let ttl = u64::try_from(self.settings.node_ttl.as_millis()).unwrap_or(u64::MAX);
        let (id, seen) = (info.id.clone(), info.seen_ms);
        let () = self
            .run("heartbeat", move |p| {
                p.atomic()
                    .pset_ex(key, json, ttl)
                    .ignore()
                    .zadd(set, id, seen)
                    .ignore();
            })
            .await?;
        self.metrics.heartbeat();
        Ok(())
    }

    /// Removes this node's record at once (a clean stop).
    pub async fn deregister(&self) -> Result<()> {
        let id = self.settings.node_id.clone();
        let (key, set) = (self.key(&format!("node:{id}")), self.key("nodes"));
        let () = self
            .run("heartbeat", move |p| {
                p.del(key).ignore().zrem(set, id).ignore();
            })
            .await?;
        Ok(())
    }

    /// The live nodes, by id. Ids whose record expired leave the set here.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let set = self.key("nodes");
        let (ids,): (Vec<String>,) = self
            .run("nodes", |p| {
                p.zrange(set, 0, -1);
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&format!("node:{id}"))).collect();
        let (records,): (Vec<Option<String>>,) = self
            .run("nodes", |p| {
                p.mget(keys);
            })
            .await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in ids.into_iter().zip(records) {
            match record.map(|r| NodeInfo::decode(&r)) {
                Some(Ok(n)) => live.push(n),
                Some(Err(e)) => {
                    tracing::warn!(node = %id, error = %e, "a node record does not parse; skipped")
                }
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let set = self.key("nodes");
            let _: Result<()> = self
                .run("nodes", move |p| {
                    p.zrem(set, gone).ignore();
                })
                .await;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}
