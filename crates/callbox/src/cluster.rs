//! The binary's part in the cluster (`cluster.redis_url`): this node's id, its registry
//! heartbeat (roles, listeners, the ICE URLs a TURN node offers, load), the first access
//! snapshot of a node that takes them from the cluster, and signaling's ICE URLs from the
//! TURN nodes in the registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use callbox_cluster::{Cluster, ClusterMetrics, ClusterSettings, NodeInfo, NodeLoad};
use callbox_core::Config;
use callbox_core::metrics::MetricsRegistry;
use callbox_signal::IceUrls;

use crate::access::Snapshot;

const NODE_ID_FILE: &str = "node-id";
/// Where a node that takes access from the cluster keeps the last snapshot.
pub const ACCESS_CACHE_FILE: &str = "cluster-access.json";

/// The link to the cluster, when `cluster.redis_url` is set.
pub fn open(
    config: &Config,
    state_dir: &Path,
    registry: &MetricsRegistry,
) -> anyhow::Result<Option<Cluster>> {
    let c = &config.cluster;
    let Some(url) = &c.redis_url else {
        return Ok(None);
    };
    let node_id = match &c.node_id {
        Some(id) => id.clone(),
        None => generated_node_id(state_dir)?,
    };
    let settings = ClusterSettings {
        redis_url: url.expose().to_string(),
        node_id,
        region: c.region.clone(),
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        node_ttl: Duration::from_millis(c.node_ttl_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        key_prefix: c.key_prefix.clone(),
    };
    let cluster = Cluster::new(settings, ClusterMetrics::register(registry)).context("cluster.redis_url")?;
    tracing::info!(node_id = %cluster.settings().node_id, region = %c.region, "cluster: this node takes part");
    Ok(Some(cluster))
}

/// The node id kept in the state directory: the host name and 8 random hex digits,
/// generated at the first start.
fn generated_node_id(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(NODE_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let suffix: u32 = rand::random();
    let id = match host.is_empty() {
        true => format!("node-{suffix:08x}"),
        false => format!("{host}-{suffix:08x}"),
    };
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    crate::state::write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// The first snapshot of a node that takes access from the cluster: Redis's, else the
/// one cached at the last run (Redis away at start), else none.
pub async fn initial_snapshot(cluster: &Cluster, cache: &Path) -> Option<Snapshot> {
    match cluster.fetch_access().await {
        Ok(Some((_, wire))) => return Some(Snapshot::from_wire(&wire)),
        Ok(None) => tracing::warn!("cluster: no access snapshot in Redis yet (is an admin node running?)"),
        Err(e) => tracing::warn!(error = %e, "cluster: access snapshot not read at start"),
    }
    let json = std::fs::read(cache).ok()?;
    match serde_json::from_slice(&json) {
        Ok(wire) => {
            tracing::info!(file = %cache.display(), "cluster: starting from the cached access snapshot");
            Some(Snapshot::from_wire(&wire))
        }
        Err(e) => {
            tracing::warn!(file = %cache.display(), error = %e, "cluster: the cached access snapshot does not read");
            None
        }
    }
}

pub fn cache_file(state_dir: &Path) -> PathBuf {
    state_dir.join(ACCESS_CACHE_FILE)
}

/// What this node tells the registry.
pub struct Heartbeat {
    pub roles: Vec<String>,
    pub listeners: Vec<String>,
    /// The ICE URLs this node's turn role offers (none without one).
    pub ice: IceUrls,
    pub turn: Option<Arc<callbox_turn::Metrics>>,
    pub signal: Option<callbox_signal::SignalControl>,
}

/// Writes this node's record every heartbeat until `shutdown`, then removes it.
pub fn spawn_heartbeat(
    cluster: Cluster,
    hb: Heartbeat,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tokio::spawn(async move {
        let s = cluster.settings().clone();
        let beat = async {
            loop {
                let info = NodeInfo {
                    id: s.node_id.clone(),
                    roles: hb.roles.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    region: s.region.clone(),
                    started,
                    seen_ms: 0,
                    listeners: hb.listeners.clone(),
                    stun_urls: hb.ice.stun.clone(),
                    turn_urls: hb.ice.turn.clone(),
                    load: NodeLoad {
                        allocations: hb.turn.as_ref().map_or(0, |m| m.allocations()),
                        peers: hb.signal.as_ref().map_or(0, |c| c.counts().1 as u64),
                    },
                };
                let _ = cluster.heartbeat(&info).await;
                tokio::time::sleep(s.heartbeat).await;
            }
        };
        tokio::select! {
            () = beat => {}
            () = shutdown => {
                let _ = cluster.deregister().await;
            }
        }
    });
}

/// Signaling's ICE URLs: its own (`own`) and those of every live TURN node in `regions`
/// (all when empty), refreshed every heartbeat. While Redis is away the last list stays.
pub fn spawn_ice_refresh(
    cluster: Cluster,
    control: callbox_signal::SignalControl,
    own: IceUrls,
    regions: Vec<String>,
) {
    tokio::spawn(async move {
        let every = cluster.settings().heartbeat;
        loop {
            if let Ok(nodes) = cluster.nodes().await {
                let next = ice_urls(&own, &nodes, &regions, &cluster.settings().node_id);
                if next != control.ice_urls() {
                    let turn_nodes = nodes
                        .iter()
                        .filter(|n| n.roles.iter().any(|r| r == "turn"))
                        .count();
                    tracing::info!(
                        turn_nodes,
                        stun = next.stun.len(),
                        turn = next.turn.len(),
                        "cluster: ICE servers updated from the registry"
                    );
                    control.set_ice_urls(next);
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// `own` plus the URLs of the TURN nodes in `regions` (all when empty), each URL once, in
/// node order; this node's own record is `own` already.
fn ice_urls(own: &IceUrls, nodes: &[NodeInfo], regions: &[String], me: &str) -> IceUrls {
    let mut out = own.clone();
    for n in nodes {
        let wanted = n.id != me
            && n.roles.iter().any(|r| r == "turn")
            && (regions.is_empty() || regions.contains(&n.region));
        if !wanted {
            continue;
        }
        for (to, from) in [(&mut out.stun, &n.stun_urls), (&mut out.turn, &n.turn_urls)] {
            for u in from {
                if !to.contains(u) {
                    to.push(u.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, roles: &[&str], region: &str, turn: &[&str]) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            version: "0".into(),
            region: region.into(),
            started: 0,
            seen_ms: 0,
            listeners: vec![],
            stun_urls: vec![],
            turn_urls: turn.iter().map(|u| u.to_string()).collect(),
            load: NodeLoad::default(),
        }
    }

    #[test]
    fn ice_lists_take_turn_nodes_of_the_wanted_regions_once() {
        let own = IceUrls {
            stun: vec![],
            turn: vec!["turn:a:3478".into()],
        };
        let nodes = [
            node("a", &["signal", "turn"], "eu", &["turn:a:3478"]),
            node("b", &["turn"], "eu", &["turn:b:3478", "turn:a:3478"]),
            node("c", &["turn"], "us", &["turn:c:3478"]),
            node("d", &["signal"], "eu", &["turn:d:3478"]),
        ];
        let all = ice_urls(&own, &nodes, &[], "a");
        assert_eq!(all.turn, ["turn:a:3478", "turn:b:3478", "turn:c:3478"]);
        let eu = ice_urls(&own, &nodes, &["eu".into()], "a");
        assert_eq!(eu.turn, ["turn:a:3478", "turn:b:3478"]);
    }
}
