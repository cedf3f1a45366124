//! Allocation and signaling session history: written in batches by the binary's history
//! writers (off the relay's path), read in pages by admin, pruned by retention.

use callbox_core::time::UnixSecs;
use rusqlite::params;

use crate::{Result, Store, read_rows, sql_time};

/// One allocation event to write to history (what the relay's event channel carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEvent {
    Created {
        alloc_id: i64,
        username: String,
        client: String,
        relay: String,
        /// The client's transport: `udp`, `tcp` or `tls`.
        transport: String,
        at: UnixSecs,
    },
    Closed {
        alloc_id: i64,
        at: UnixSecs,
        reason: String,
        packets_to_peer: i64,
        bytes_to_peer: i64,
        packets_to_client: i64,
        bytes_to_client: i64,
    },
}

/// A row of allocation history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRecord {
    pub alloc_id: i64,
    pub username: String,
    pub client: String,
    pub relay: String,
    pub transport: String,
    pub started_at: UnixSecs,
    pub ended_at: Option<UnixSecs>,
    pub close_reason: Option<String>,
    pub packets_to_peer: i64,
    pub bytes_to_peer: i64,
    pub packets_to_client: i64,
    pub bytes_to_client: i64,
}

/// Which history rows to return: started in `[from, to)`, optionally filtered, paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub from: UnixSecs,
    pub to: UnixSecs,
    /// Allocations: the username; sessions: the room.
    pub filter: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            from: 0,
            to: UnixSecs::MAX,
            filter: None,
            limit: 100,
            offset: 0,
        }
    }
}

/// A finished signaling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub room: String,
    pub peer_id: String,
    pub client: String,
    pub started_at: UnixSecs,
    pub ended_at: UnixSecs,
    pub close_reason: String,
    pub messages_in: i64,
    pub messages_out: i64,
}

impl Store {
    /// Writes a batch of history events in one transaction (the writer calls this off the
    /// relay's path, a few times a second).
    pub fn record_history(&mut self, events: &[HistoryEvent]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for e in events {
            match e {
                HistoryEvent::Created {
                    alloc_id,
                    username,
                    client,
                    relay,
                    transport,
                    at,
                } => {
                    tx.execute(
                        "INSERT INTO allocation_history (alloc_id, username, client, relay, transport, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![alloc_id, username, client, relay, transport, at],
                    )?;
                }
                HistoryEvent::Closed {
                    alloc_id,
                    at,
                    reason,
                    packets_to_peer,
                    bytes_to_peer,
                    packets_to_client,
                    bytes_to_client,
                } => {
                    tx.execute(
                        "UPDATE allocation_history SET ended_at = ?2, close_reason = ?3, packets_to_peer = ?4,
                             bytes_to_peer = ?5, packets_to_client = ?6, bytes_to_client = ?7
                         WHERE id = (SELECT MAX(id) FROM allocation_history WHERE alloc_id = ?1)",
                        params![alloc_id, at, reason, packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Allocation history started in `[from, to)`, newest first, at most `limit` rows.
    pub fn allocation_history(
        &self,
        from: UnixSecs,
        to: UnixSecs,
        limit: u32,
    ) -> Result<Vec<AllocationRecord>> {
        self.allocation_history_page(&HistoryQuery {
            from,
            to,
            limit,
            ..HistoryQuery::default()
        })
    }

    /// A page of allocation history, newest first; `q.filter` matches the username.
    pub fn allocation_history_page(&self, q: &HistoryQuery) -> Result<Vec<AllocationRecord>> {
        let mut st = self.conn.prepare(
            "SELECT alloc_id, username, client, relay, started_at, ended_at, close_reason,
                    packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client, transport
             FROM allocation_history WHERE started_at >= ?1 AND started_at < ?2
                 AND (?3 IS NULL OR username = ?3)
             ORDER BY started_at DESC, id DESC LIMIT ?4 OFFSET ?5",
        )?;
        let params = params![
            sql_time(q.from),
            sql_time(q.to),
            q.filter,
            q.limit,
            q.offset as i64
        ];
        read_rows(&mut st, params, "allocation_history", |r| {
            Ok(AllocationRecord {
                alloc_id: r.get(0)?,
                username: r.get(1)?,
                client: r.get(2)?,
                relay: r.get(3)?,
                started_at: r.get(4)?,
                ended_at: r.get(5)?,
                close_reason: r.get(6)?,
                packets_to_peer: r.get(7)?,
                bytes_to_peer: r.get(8)?,
                packets_to_client: r.get(9)?,
                bytes_to_client: r.get(10)?,
                transport: r.get(11)?,
            })
        })
    }

    /// Deletes allocation and session history that started before `before` (retention).
    pub fn prune_history(&self, before: UnixSecs) -> Result<usize> {
        let before = sql_time(before);
        Ok(self
            .conn
            .execute("DELETE FROM allocation_history WHERE started_at < ?1", [before])?
            + self
                .conn
                .execute("DELETE FROM session_history WHERE started_at < ?1", [before])?)
    }

    /// Writes finished signaling sessions in one transaction.
    pub fn record_sessions(&mut self, sessions: &[SessionRecord]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare(
                "INSERT INTO session_history (room, peer_id, client, started_at, ended_at, close_reason,
                     messages_in, messages_out) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for r in sessions {
                st.execute(params![
                    r.room,
                    r.peer_id,
                    r.client,
                    r.started_at,
                    r.ended_at,
                    r.close_reason,
                    r.messages_in,
                    r.messages_out
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A page of signaling session history, newest first; `q.filter` matches the room.
    pub fn session_history_page(&self, q: &HistoryQuery) -> Result<Vec<SessionRecord>> {
        let mut st = self.conn.prepare(
            "SELECT id, room, peer_id, client, started_at, ended_at, close_reason, messages_in, messages_out
             FROM session_history WHERE started_at >= ?1 AND started_at < ?2
                 AND (?3 IS NULL OR room = ?3)
             ORDER BY started_at DESC, id DESC LIMIT ?4 OFFSET ?5",
        )?;
        let params = params![
            sql_time(q.from),
            sql_time(q.to),
            q.filter,
            q.limit,
            q.offset as i64
        ];
        // Column 0 (the row id) is only the key a skipped row is logged with.
        read_rows(&mut st, params, "session_history", |r| {
            Ok(SessionRecord {
                room: r.get(1)?,
                peer_id: r.get(2)?,
                client: r.get(3)?,
                started_at: r.get(4)?,
                ended_at: r.get(5)?,
                close_reason: r.get(6)?,
                messages_in: r.get(7)?,
                messages_out: r.get(8)?,
            })
        })
    }
}
