//! The admin role's view of the roles running in this process.

use callbox_admin::{AllocationView, BoxFuture, ChannelView, Live, NodeView, NodesError, PeerView, RoomView};
use callbox_turn::AllocId;
use callbox_turn::TurnControl;

/// The turn and signal roles of this process, where they run.
pub struct LiveRoles {
    pub turn: Option<TurnControl>,
    pub signal: Option<callbox_signal::SignalControl>,
    /// The cluster this node belongs to (`cluster.redis_url`).
    pub cluster: Option<callbox_cluster::Cluster>,
}

impl Live for LiveRoles {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeView>, NodesError>> {
        Box::pin(async move {
            let cluster = self.cluster.as_ref().ok_or(NodesError::NoCluster)?;
            let nodes = cluster
                .nodes()
                .await
                .map_err(|e| NodesError::Unavailable(e.to_string()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            Ok(nodes
                .into_iter()
                .map(|n| NodeView {
                    last_seen_ms_ago: now.saturating_sub(n.seen_ms),
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

    fn allocations(&self) -> BoxFuture<'_, Option<Vec<AllocationView>>> {
        Box::pin(async move {
            let turn = self.turn.as_ref()?;
            let list = turn.allocations().await;
            Some(
                list.into_iter()
                    .map(|a| AllocationView {
                        id: a.id.0.to_string(),
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
        })
    }

    fn close_allocation(&self, id: u64) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async move {
            let turn = self.turn.as_ref()?;
            Some(turn.close_allocation(AllocId(id)).await)
        })
    }

    fn rooms(&self) -> Option<Vec<RoomView>> {
        let signal = self.signal.as_ref()?;
        Some(signal.rooms().into_iter().map(room_view).collect())
    }

    fn room_counts(&self) -> Option<(u64, u64)> {
        let (rooms, peers) = self.signal.as_ref()?.counts();
        Some((rooms as u64, peers as u64))
    }

    fn room(&self, room: &str) -> Option<Option<RoomView>> {
        Some(self.signal.as_ref()?.room(room).map(room_view))
    }

    fn close_room(&self, room: &str) -> Option<usize> {
        Some(self.signal.as_ref()?.close_room(room))
    }

    fn kick_peer(&self, room: &str, peer_id: &str) -> Option<bool> {
        Some(self.signal.as_ref()?.kick_peer(room, peer_id))
    }
}

fn room_view(r: callbox_signal::RoomInfo) -> RoomView {
    RoomView {
        room: r.room,
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
