//! What admin sees of the hub and what it may do: listings, counts, kicks, room closes,
//! ban sweeps and the drain's close-all, and the finished-session records.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

use super::{Hub, Room, lock};
use crate::protocol::{CloseCode, LeaveReason};

/// A peer as admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    /// The client address of its current (or, in grace, last) connection.
    pub addr: IpAddr,
    /// False while the peer is in its resume grace (no connection).
    pub connected: bool,
    /// Wall clock seconds of the first join (a resume continues the same session).
    pub joined_unix: u64,
    pub meta: Value,
    /// Frames received from the peer and handed to the hub (invalid and rate-limited
    /// ones included).
    pub messages_in: u64,
    /// Messages queued for the peer (everything with a `seq`: relayed, presence, errors,
    /// pongs); replays after a resume are not counted again.
    pub messages_out: u64,
}

/// A room with at least one peer, as admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomInfo {
    pub room: String,
    /// In join order.
    pub peers: Vec<PeerInfo>,
}

/// A finished signaling session: one peer from its join to its removal, across resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    pub room: String,
    pub peer_id: String,
    pub addr: IpAddr,
    pub joined_unix: u64,
    pub left_unix: u64,
    /// `left`, `timeout`, `kicked` or `error`: the `peer-left` reason the others got.
    pub reason: LeaveReason,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Hub {
    /// Closes a room (admin): live connections get 4009, peers in their resume grace are
    /// dropped with them, and nobody can resume into it. Returns the peers removed, 0 when
    /// the room has none (admin answers 404). The room is not blocked: a later join opens
    /// it afresh.
    pub fn close_room(&self, room: &str) -> usize {
        let mut shard = lock(self.shard(room));
        self.evict(
            &mut shard,
            room,
            |_| true,
            Some((CloseCode::RoomClosed, "room closed by admin")),
            LeaveReason::Kicked,
        )
    }

    /// Kicks one peer (admin): its connection gets 4003 (clients do not retry), it is
    /// removed at once rather than when the connection reports, and the others get
    /// `peer-left` `kicked`. A peer in its resume grace is just removed. False when the room
    /// has no such peer.
    pub fn kick_peer(&self, room: &str, peer_id: &str) -> bool {
        let mut shard = lock(self.shard(room));
        self.evict(
            &mut shard,
            room,
            |p| p.id == peer_id,
            Some((CloseCode::Kicked, "kicked by admin")),
            LeaveReason::Kicked,
        ) > 0
    }

    /// Kicks, as [`Hub::kick_peer`] does, every peer whose client address `pred` selects
    /// (connected or in grace), and returns how many. Used when bans change; `pred` runs
    /// under shard locks, so it should be a plain lookup.
    pub fn kick_addresses(&self, pred: impl Fn(IpAddr) -> bool) -> usize {
        self.evict_everywhere(
            |p| pred(p.addr),
            Some((CloseCode::Kicked, "banned by admin")),
            LeaveReason::Kicked,
        )
    }

    /// Rooms with at least one peer (connected or in grace), sorted by name, for admin.
    /// Takes each shard lock in turn: a consistent view per room, not across rooms.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let mut out = Vec::new();
        for s in &self.shards {
            let shard = lock(s);
            out.extend(
                shard
                    .rooms
                    .iter()
                    .filter(|(_, r)| !r.peers.is_empty())
                    .map(|(name, r)| Self::room_info(name, r)),
            );
        }
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }

    /// One room, or `None` when it has no peers.
    pub fn room(&self, name: &str) -> Option<RoomInfo> {
        let shard = lock(self.shard(name));
        shard
            .rooms
            .get(name)
            .filter(|r| !r.peers.is_empty())
            .map(|r| Self::room_info(name, r))
    }

    fn room_info(name: &str, r: &Room) -> RoomInfo {
        RoomInfo {
            room: name.to_string(),
            peers: r
                .peers
                .iter()
                .map(|p| PeerInfo {
                    peer_id: p.id.clone(),
                    addr: p.addr,
                    connected: p.outbox.is_some(),
                    joined_unix: p.joined_unix,
                    meta: p.meta.clone(),
                    messages_in: p.messages_in,
                    messages_out: p.messages_out,
                })
                .collect(),
        }
    }

    /// Closes every live connection with `code` (4012 when draining).
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        for s in &self.shards {
            let shard = lock(s);
            for r in shard.rooms.values() {
                for p in &r.peers {
                    if let Some(o) = &p.outbox {
                        o.close(code, reason);
                    }
                }
            }
        }
    }

    /// Rooms and peers now (for metrics and admin).
    pub fn counts(&self) -> (usize, usize) {
        let mut rooms = 0;
        let mut peers = 0;
        for s in &self.shards {
            let shard = lock(s);
            rooms += shard.rooms.values().filter(|r| !r.peers.is_empty()).count();
            peers += shard.rooms.values().map(|r| r.peers.len()).sum::<usize>();
        }
        (rooms, peers)
    }
}
