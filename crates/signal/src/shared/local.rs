//! The connections this instance serves, keyed by room and peer: where the inbox reader
//! hands each peer's texts, in seq order, exactly once.
//!
//! A connection is registered before its join or resume script runs (epoch 0: attaching),
//! so texts for it that the reader takes from the inbox before the script's answer is
//! back are kept, not lost; [`Local::attach`] then sends the welcome, the backlog and
//! those, in seq order, under the same lock the reader takes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hub::{Outbox, PeerInfo, RoomInfo};
use crate::protocol::CloseCode;
use crate::rate::Window;

/// Texts kept for a connection while its join or resume is on its way; past it the
/// connection is closed with 4012 (it resumes and gets them from the log).
const MAX_PENDING: usize = 1024;

pub(super) struct LocalConn {
    pub(super) conn: u64,
    /// 0 while attaching; then the epoch Redis gave the join or resume.
    pub(super) epoch: u64,
    pub(super) outbox: Arc<dyn Outbox>,
    /// The highest seq handed to the outbox: a text at or below it is not sent again.
    pub(super) delivered: u64,
    pending: Vec<(u64, u64, Arc<str>)>,
    pending_lost: bool,
    pub(super) addr: IpAddr,
    pub(super) joined_unix: u64,
    pub(super) meta: Value,
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
    pub(super) rate: Window,
    /// The resume token of the last welcome: registers the peer again if Redis lost it.
    pub(super) token: String,
}

/// What the instance knows of an attached connection, to claim it again after an outage.
pub(super) struct Known {
    pub(super) room: String,
    pub(super) peer: String,
    pub(super) epoch: u64,
    pub(super) delivered: u64,
    pub(super) token: String,
    pub(super) meta: String,
    pub(super) addr: String,
    pub(super) joined_unix: u64,
}

#[derive(Default)]
struct Table {
    /// `room\npeer` -> its connections here (two only while a resume takes over).
    peers: HashMap<String, Vec<LocalConn>>,
    /// Room -> attached connections here (the gauges and admin's listing).
    rooms: HashMap<String, usize>,
    /// Attached connections here: the sum of `rooms`, kept so the gauges need no walk.
    attached: usize,
}

impl Table {
    /// The registered connection `conn` of the peer.
    fn conn_mut(&mut self, room: &str, peer: &str, conn: u64) -> Option<&mut LocalConn> {
        self.peers
            .get_mut(&key(room, peer))
            .and_then(|v| v.iter_mut().find(|c| c.conn == conn))
    }
}

#[derive(Default)]
pub(super) struct Local {
    table: Mutex<Table>,
}

pub(super) fn key(room: &str, peer: &str) -> String {
    format!("{room}\n{peer}")
}

/// The seq a text from the inbox starts with (`{"seq":N,`); 0 when it has none.
pub fn seq_of(text: &str) -> u64 {
    text.strip_prefix("{\"seq\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection that is about to join or resume.
    pub(super) fn register(
        &self,
        room: &str,
        peer: &str,
        conn: u64,
        outbox: Arc<dyn Outbox>,
        addr: IpAddr,
        meta: Value,
    ) {
        self.lock()
            .peers
            .entry(key(room, peer))
            .or_default()
            .push(LocalConn {
                conn,
                epoch: 0,
                outbox,
                delivered: 0,
                pending: Vec::new(),
                pending_lost: false,
                addr,
                joined_unix: callbox_core::time::unix_now(),
                meta,
                messages_in: 0,
                messages_out: 0,
                rate: Window::default(),
                token: String::new(),
            });
    }

    /// The join or resume went through: `first` (the welcome), the backlog, then what
    /// arrived meanwhile for `epoch`, in seq order. Returns false if the connection is no
    /// longer registered.
    #[allow(clippy::too_many_arguments)] // the attach's facts, each needed once
    pub(super) fn attach(
        &self,
        room: &str,
        peer: &str,
        conn: u64,
        epoch: u64,
        token: &str,
        first: Arc<str>,
        backlog: Vec<Arc<str>>,
    ) -> bool {
        let mut t = self.lock();
        let Some(c) = t.conn_mut(room, peer, conn) else {
            return false;
        };
        c.epoch = epoch;
        c.token = token.to_string();
        let mut ok = c.outbox.send(first);
        for text in backlog {
            c.delivered = c.delivered.max(seq_of(&text));
            ok &= c.outbox.send(text);
        }
        for (e, seq, text) in std::mem::take(&mut c.pending) {
            if e == epoch && seq > c.delivered {
                c.delivered = seq;
                ok &= c.outbox.send(text);
            }
        }
        if !ok {
            c.outbox.close(CloseCode::TooSlow, "too slow to read");
        } else if c.pending_lost {
            c.outbox
                .close(CloseCode::Draining, "reconnect with your resume token");
        }
        *t.rooms.entry(room.to_string()).or_default() += 1;
        t.attached += 1;
        true
    }

    /// A resumed peer's meta (its join's, kept in Redis), for admin's listing.
    pub(super) fn set_meta(&self, room: &str, peer: &str, conn: u64, meta: Value) {
        if let Some(c) = self.lock().conn_mut(room, peer, conn) {
            c.meta = meta;
        }
    }

    /// Forgets a connection (ended, or its join failed); true if it had attached.
    pub(super) fn remove(&self, room: &str, peer: &str, conn: u64) -> bool {
        let mut t = self.lock();
        let k = key(room, peer);
        let Some(v) = t.peers.get_mut(&k) else {
            return false;
        };
        let Some(i) = v.iter().position(|c| c.conn == conn) else {
            return false;
        };
        let c = v.swap_remove(i);
        if v.is_empty() {
            t.peers.remove(&k);
        }
        if c.epoch == 0 {
            return false;
        }
        t.attached -= 1;
        if let Some(n) = t.rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                t.rooms.remove(room);
            }
        }
        true
    }

    /// A text from the inbox for `epoch` of the peer.
    pub(super) fn deliver(&self, room: &str, peer: &str, epoch: u64, text: Arc<str>) {
        let seq = seq_of(&text);
        let mut t = self.lock();
        let Some(v) = t.peers.get_mut(&key(room, peer)) else {
            return;
        };
        for c in v.iter_mut() {
            if c.epoch == epoch {
                if seq > c.delivered {
                    c.delivered = seq;
                    c.messages_out += 1;
                    if !c.outbox.send(Arc::clone(&text)) {
                        c.outbox.close(CloseCode::TooSlow, "too slow to read");
                    }
                }
                return;
            }
        }
        // Not attached yet: kept for the connection that is attaching.
        if let Some(c) = v.iter_mut().find(|c| c.epoch == 0) {
            if c.pending.len() < MAX_PENDING {
                c.pending.push((epoch, seq, text));
            } else {
                c.pending_lost = true;
            }
        }
    }

    /// A close from the inbox for `epoch` of the peer.
    pub(super) fn close(&self, room: &str, peer: &str, epoch: u64, code: CloseCode, reason: &str) {
        let t = self.lock();
        if let Some(c) = t
            .peers
            .get(&key(room, peer))
            .and_then(|v| v.iter().find(|c| c.epoch == epoch))
        {
            c.outbox.close(code, reason);
        }
    }

    /// Counts a message of a connection against its own window: `Ok(())` within the
    /// limit, else `Err((streak, already warned))` (and marks it warned).
    pub(super) fn hit(
        &self,
        room: &str,
        peer: &str,
        conn: u64,
        now: Instant,
        window: Duration,
        limit: u32,
    ) -> Result<(), (u32, bool)> {
        let mut t = self.lock();
        let Some(c) = t.conn_mut(room, peer, conn) else {
            return Ok(());
        };
        c.messages_in += 1;
        if c.rate.hit(now, window, limit) {
            Ok(())
        } else {
            Err((c.rate.streak, std::mem::replace(&mut c.rate.warned, true)))
        }
    }

    /// Marks a connection warned for this window; whether it was already.
    pub(super) fn warn(&self, room: &str, peer: &str, conn: u64) -> (u32, bool) {
        self.lock().conn_mut(room, peer, conn).map_or((0, true), |c| {
            (c.rate.streak, std::mem::replace(&mut c.rate.warned, true))
        })
    }

    /// Every attached connection.
    pub(super) fn attached(&self) -> Vec<Known> {
        let t = self.lock();
        t.peers
            .iter()
            .flat_map(|(k, v)| {
                let (room, peer) = k.split_once('\n').unwrap_or((k, ""));
                v.iter().filter(|c| c.epoch > 0).map(move |c| Known {
                    room: room.to_string(),
                    peer: peer.to_string(),
                    epoch: c.epoch,
                    delivered: c.delivered,
                    token: c.token.clone(),
                    meta: c.meta.to_string(),
                    addr: c.addr.to_string(),
                    joined_unix: c.joined_unix,
                })
            })
            .collect()
    }

    /// (room, peer) of attached connections whose address `pred` picks.
    pub(super) fn select(&self, pred: impl Fn(IpAddr) -> bool) -> Vec<(String, String)> {
        let t = self.lock();
        t.peers
            .iter()
            .filter(|(_, v)| v.iter().any(|c| c.epoch > 0 && pred(c.addr)))
            .filter_map(|(k, _)| k.split_once('\n'))
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .collect()
    }

    /// Asks every connection here to close.
    pub(super) fn close_all(&self, code: CloseCode, reason: &str) {
        for c in self.lock().peers.values().flatten() {
            c.outbox.close(code, reason);
        }
    }

    /// Rooms with a peer attached here, and those peers.
    pub(super) fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.rooms.len(), t.attached)
    }

    /// The rooms served here, with the peers attached here.
    pub(super) fn rooms(&self, only: Option<&str>) -> Vec<RoomInfo> {
        let t = self.lock();
        let mut rooms: HashMap<&str, Vec<PeerInfo>> = HashMap::new();
        for (k, v) in &t.peers {
            let (room, peer) = k.split_once('\n').unwrap_or((k, ""));
            if only.is_some_and(|o| o != room) {
                continue;
            }
            for c in v.iter().filter(|c| c.epoch > 0) {
                rooms.entry(room).or_default().push(PeerInfo {
                    peer_id: peer.to_string(),
                    addr: c.addr,
                    connected: true,
                    joined_unix: c.joined_unix,
                    meta: c.meta.clone(),
                    messages_in: c.messages_in,
                    messages_out: c.messages_out,
                });
            }
        }
        let mut out: Vec<RoomInfo> = rooms
            .into_iter()
            .map(|(room, mut peers)| {
                peers.sort_by_key(|p| p.joined_unix);
                RoomInfo {
                    room: room.to_string(),
                    peers,
                }
            })
            .collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }
}

#[cfg(test)]
mod tests {
    //! The local registry's ordering rules, without Redis.

    use super::*;
    use crate::conn::ConnOutbox;
    use crate::metrics::SignalMetrics;

    fn text(seq: u64, what: &str) -> Arc<str> {
        Arc::from(format!(
            "{{\"seq\":{seq},\"type\":\"message\",\"data\":\"{what}\"}}"
        ))
    }

    fn drained(o: &ConnOutbox) -> Vec<String> {
        std::iter::from_fn(|| o.pop_for_tests())
            .map(|t| t.to_string())
            .collect()
    }

    #[test]
    fn texts_that_arrive_while_attaching_follow_the_backlog_once_in_seq_order() {
        let local = Local::default();
        let outbox = ConnOutbox::new(1 << 20, Arc::new(SignalMetrics::default()));
        local.register(
            "r",
            "p-1",
            7,
            outbox.clone(),
            "127.0.0.1".parse().unwrap(),
            Value::Null,
        );
        // The inbox brings texts for the new epoch (and a stale one) before the resume's
        // answer: kept, not sent.
        local.deliver("r", "p-1", 3, text(5, "e"));
        local.deliver("r", "p-1", 2, text(4, "old epoch"));
        local.deliver("r", "p-1", 3, text(4, "d"));
        assert!(drained(&outbox).is_empty());
        // The backlog reaches to seq 4: the welcome, then 3 and 4, then 5 only once.
        assert!(local.attach(
            "r",
            "p-1",
            7,
            3,
            "tok",
            Arc::from("welcome"),
            vec![text(3, "c"), text(4, "d")]
        ));
        let got = drained(&outbox);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], "welcome");
        assert!(
            got[1].contains("\"c\"") && got[2].contains("\"d\"") && got[3].contains("\"e\""),
            "{got:?}"
        );
        // A text again (a reattach's backlog overlapping the inbox) is not sent twice.
        local.deliver("r", "p-1", 3, text(5, "e"));
        local.deliver("r", "p-1", 3, text(6, "f"));
        assert_eq!(drained(&outbox).len(), 1);
        assert_eq!(seq_of(&text(6, "f")), 6);
        assert_eq!(local.counts(), (1, 1));
        assert!(local.remove("r", "p-1", 7));
        assert_eq!(local.counts(), (0, 0));
    }

    #[test]
    fn a_close_reaches_only_the_connection_of_its_epoch() {
        let local = Local::default();
        let metrics = Arc::new(SignalMetrics::default());
        let old = ConnOutbox::new(1 << 20, Arc::clone(&metrics));
        let new = ConnOutbox::new(1 << 20, Arc::clone(&metrics));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        local.register("r", "p-1", 1, old.clone(), ip, Value::Null);
        local.attach("r", "p-1", 1, 1, "a", Arc::from("welcome"), vec![]);
        local.register("r", "p-1", 2, new.clone(), ip, Value::Null);
        local.attach("r", "p-1", 2, 2, "b", Arc::from("welcome"), vec![]);
        local.close("r", "p-1", 1, CloseCode::Replaced, "replaced");
        assert!(old.close_requested_for_tests());
        assert!(!new.close_requested_for_tests());
        // Texts for epoch 1 no longer reach anyone; epoch 2 gets its own.
        local.deliver("r", "p-1", 1, text(1, "x"));
        local.deliver("r", "p-1", 2, text(1, "y"));
        assert_eq!(drained(&new).len(), 2, "welcome and y");
    }
}
