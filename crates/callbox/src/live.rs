//! The live roles as admin sees them: this process's turn and signal roles, and in a
//! cluster every other node's, asked through Redis ([`callbox_cluster::Cluster::call`]).
//! Every node answers those requests about itself only ([`RpcHandler`]), so a request
//! never travels further than one hop.

use std::time::Duration;

use callbox_admin::{
    AllocationView, BoxFuture, ChannelView, Live, NodeError, NodeView, NodesError, PeerView, RoomView,
};
use callbox_cluster::{Cluster, NodeInfo, RpcHandler};
use callbox_turn::AllocId;
use callbox_turn::TurnControl;
use serde_json::{Value, json};

/// How long admin waits for another node's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The turn and signal roles of this process, where they run, and the cluster.
pub struct LiveRoles {
    pub turn: Option<TurnControl>,
    pub signal: Option<callbox_signal::SignalControl>,
    /// The cluster this node belongs to (`cluster.redis_url`).
    pub cluster: Option<Cluster>,
}

impl LiveRoles {
    /// This node's id in the cluster; empty outside one.
    fn me(&self) -> String {
        self.cluster
            .as_ref()
            .map(|c| c.settings().node_id.clone())
            .unwrap_or_default()
    }

    /// The other live nodes that run `role` (none outside a cluster or while Redis is away).
    async fn others(&self, role: &str) -> Vec<NodeInfo> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        let me = self.me();
        c.nodes()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.id != me && n.roles.iter().any(|r| r == role))
            .collect()
    }

    /// Asks the live node `node` for `op` on behalf of an admin action.
    async fn act<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        op: &str,
        args: Value,
    ) -> Result<T, NodeError> {
        let Some(c) = &self.cluster else {
            return Err(NodeError::Unknown);
        };
        let live = c
            .nodes()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        if !live.iter().any(|n| n.id == node) {
            return Err(NodeError::Unknown);
        }
        self.ask(node, op, args).await.map_err(NodeError::Unavailable)
    }

    /// Asks `node` for `op`.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        op: &str,
        args: Value,
    ) -> Result<T, String> {
        let c = self.cluster.as_ref().ok_or("not in a cluster")?;
        let v = c
            .call(node, op, args, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| format!("node {node}: {e}"))
    }

    async fn local_allocations(&self) -> Option<Vec<AllocationView>> {
        let turn = self.turn.as_ref()?;
        let node = self.me();
        Some(
            turn.allocations()
                .await
                .into_iter()
                .map(|a| AllocationView {
                    id: a.id.0.to_string(),
                    node: node.clone(),
                    username: a.username,
                    user: a.user,
                    client: a.client.to_string(),
                    transport: a.transport.as_str().to_string(),
                    relay: a.relay.to_string(),
                    age_seconds: a.age.as_secs(),
                    expires_in_seconds: a.expires_in.as_secs(),
                    permissions: a.permissions.iter().map(|p| p.to_string()).collect(),
                    channels: a
                        .channels
                        .iter()
                        .map(|(number, peer)| ChannelView {
                            number: *number,
                            peer: peer.to_string(),
                        })
                        .collect(),
                    packets_to_peer: a.traffic.packets_to_peer,
                    bytes_to_peer: a.traffic.bytes_to_peer,
                    packets_to_client: a.traffic.packets_to_client,
                    bytes_to_client: a.traffic.bytes_to_client,
                })
                .collect(),
        )
    }

    fn local_rooms(&self) -> Option<Vec<RoomView>> {
        let signal = self.signal.as_ref()?;
        let node = self.me();
        Some(signal.rooms().into_iter().map(|r| room_view(r, &node)).collect())
    }

    /// Lists of this node and of every other node with `role`; `None` when no node runs it.
    async fn gather<T: serde::de::DeserializeOwned>(
        &self,
        role: &str,
        op: &str,
        local: Option<Vec<T>>,
    ) -> Option<Vec<T>> {
        let others = self.others(role).await;
        if local.is_none() && others.is_empty() {
            return None;
        }
        let mut all = local.unwrap_or_default();
        for n in others {
            match self.ask::<Vec<T>>(&n.id, op, json!({})).await {
                Ok(list) => all.extend(list),
                Err(e) => tracing::warn!(node = %n.id, error = %e, "admin: a node did not answer; left out"),
            }
        }
        Some(all)
    }

    /// Whether `node` names this process (absent, empty or its own id).
    fn is_me(&self, node: &Option<String>) -> bool {
        node.as_ref().is_none_or(|n| *n == self.me())
    }
}

impl Live for LiveRoles {
    fn allocations(&self) -> BoxFuture<'_, Option<Vec<AllocationView>>> {
        Box::pin(async move {
            let local = self.local_allocations().await;
            self.gather("turn", "allocations", local).await
        })
    }

    fn close_allocation(
        &self,
        node: Option<String>,
        id: u64,
    ) -> BoxFuture<'_, Option<Result<bool, NodeError>>> {
        Box::pin(async move {
            match (self.is_me(&node), node) {
                (true, _) => Some(Ok(self.turn.as_ref()?.close_allocation(AllocId(id)).await)),
                (false, Some(n)) => Some(self.act(&n, "close_allocation", json!({"id": id})).await),
                (false, None) => None,
            }
        })
    }

    fn rooms(&self) -> BoxFuture<'_, Option<Vec<RoomView>>> {
        Box::pin(async move {
            let local = self.local_rooms();
            self.gather("signal", "rooms", local).await
        })
    }

    fn room_counts(&self) -> Option<(u64, u64)> {
        let (rooms, peers) = self.signal.as_ref()?.counts();
        Some((rooms as u64, peers as u64))
    }

    fn close_room(
        &self,
        node: Option<String>,
        room: String,
    ) -> BoxFuture<'_, Option<Result<usize, NodeError>>> {
        Box::pin(async move {
            match (self.is_me(&node), node) {
                (true, _) => Some(Ok(self.signal.as_ref()?.close_room(&room).await)),
                (false, Some(n)) => Some(self.act(&n, "close_room", json!({"room": room})).await),
                (false, None) => None,
            }
        })
    }

    fn kick_peer(
        &self,
        node: Option<String>,
        room: String,
        peer_id: String,
    ) -> BoxFuture<'_, Option<Result<bool, NodeError>>> {
        Box::pin(async move {
            match (self.is_me(&node), node) {
                (true, _) => Some(Ok(self.signal.as_ref()?.kick_peer(&room, &peer_id).await)),
                (false, Some(n)) => Some(
                    self.act(&n, "kick_peer", json!({"room": room, "peer_id": peer_id}))
                        .await,
                ),
                (false, None) => None,
            }
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, NodesError>> {
        Box::pin(async move {
            let cluster = self.cluster.as_ref().ok_or(NodesError::NoCluster)?;
            let nodes = cluster
                .nodes()
                .await
                .map_err(|e| NodesError::Unavailable(e.to_string()))?;
            Ok(nodes
                .into_iter()
                .map(|n| NodeView {
                    last_seen_ms_ago: n.seen_ms_ago(),
                    id: n.id,
                    roles: n.roles,
                    version: n.version,
                    region: n.region,
                    started: n.started,
                    listeners: n.listeners,
                    stun_urls: n.stun_urls,
                    turn_urls: n.turn_urls,
                    allocations: n.load.allocations,
                    peers: n.load.peers,
                })
                .collect())
        })
    }
}

/// What this node answers other nodes' admins, about itself only.
impl RpcHandler for LiveRoles {
    fn handle(
        &self,
        op: String,
        args: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(async move {
            let str_arg = |k: &str| {
                args.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(format!("`{k}` is missing"))
            };
            let no_role = |role: &str| format!("the {role} role does not run on this node");
            let v = match op.as_str() {
                "allocations" => json!(self.local_allocations().await.ok_or(no_role("turn"))?),
                "close_allocation" => {
                    let id = args.get("id").and_then(Value::as_u64).ok_or("`id` is missing")?;
                    let turn = self.turn.as_ref().ok_or(no_role("turn"))?;
                    json!(turn.close_allocation(AllocId(id)).await)
                }
                "rooms" => json!(self.local_rooms().ok_or(no_role("signal"))?),
                "close_room" => {
                    let signal = self.signal.as_ref().ok_or(no_role("signal"))?;
                    json!(signal.close_room(&str_arg("room")?).await)
                }
                "kick_peer" => {
                    let signal = self.signal.as_ref().ok_or(no_role("signal"))?;
                    json!(signal.kick_peer(&str_arg("room")?, &str_arg("peer_id")?).await)
                }
                other => return Err(format!("unknown request `{other}`")),
            };
            Ok(v)
        })
    }
}

fn room_view(r: callbox_signal::RoomInfo, node: &str) -> RoomView {
    RoomView {
        room: r.room,
        node: node.to_string(),
        peers: r
            .peers
            .into_iter()
            .map(|p| PeerView {
                peer_id: p.peer_id,
                address: p.addr.to_string(),
                connected: p.connected,
                joined_at: p.joined_unix,
                meta: p.meta,
                messages_in: p.messages_in,
                messages_out: p.messages_out,
            })
            .collect(),
    }
}
