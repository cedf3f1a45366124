//! The SQLite store of callbox: TURN secrets and their rotation, static TURN users, API
//! keys, bans, allocation and signaling session history, and the audit log.
//!
//! Shape: [`Store::open`] sets WAL mode and runs every forward migration the database has
//! not seen (the `schema_version` table records them); repository functions are typed and
//! take `now` (unix seconds) from the caller, so rules are testable without a clock.
//! Invariant: passwords and API keys are never stored: static users keep the RFC 8489
//! long-term key, API keys a SHA-256 digest.

use std::net::IpAddr;
use std::path::Path;

use callbox_core::policy::Cidr;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the database has schema version {found}, newer than this program knows ({known}); upgrade callbox"
    )]
    TooNew { found: i64, known: i64 },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    Exists(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Forward migrations, in order; migration `i` brings the schema to version `i + 1`.
/// Never edit a released one: add another.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE turn_secrets (
         id INTEGER PRIMARY KEY,
         secret TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         -- Set when a newer secret took over: it still verifies until then.
         valid_until INTEGER
     );
     CREATE TABLE turn_users (
         name TEXT PRIMARY KEY,
         realm TEXT NOT NULL,
         long_term_key BLOB NOT NULL CHECK (length(long_term_key) = 16),
         created_at INTEGER NOT NULL
     );
     CREATE TABLE api_keys (
         id INTEGER PRIMARY KEY,
         name TEXT NOT NULL UNIQUE,
         key_sha256 BLOB NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
         created_at INTEGER NOT NULL
     );
     CREATE TABLE bans (
         id INTEGER PRIMARY KEY,
         network TEXT NOT NULL,
         reason TEXT NOT NULL DEFAULT '',
         created_at INTEGER NOT NULL,
         expires_at INTEGER
     );
     CREATE TABLE allocation_history (
         id INTEGER PRIMARY KEY,
         alloc_id INTEGER NOT NULL,
         username TEXT NOT NULL,
         client TEXT NOT NULL,
         relay TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         ended_at INTEGER,
         close_reason TEXT,
         packets_to_peer INTEGER NOT NULL DEFAULT 0,
         bytes_to_peer INTEGER NOT NULL DEFAULT 0,
         packets_to_client INTEGER NOT NULL DEFAULT 0,
         bytes_to_client INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX allocation_history_started ON allocation_history (started_at);
     CREATE TABLE audit_log (
         id INTEGER PRIMARY KEY,
         at INTEGER NOT NULL,
         actor TEXT NOT NULL,
         action TEXT NOT NULL,
         detail TEXT NOT NULL DEFAULT ''
     );",
    // 2: signaling session history, the admin token, history lookups by user.
    "CREATE TABLE session_history (
         id INTEGER PRIMARY KEY,
         room TEXT NOT NULL,
         peer_id TEXT NOT NULL,
         client TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         ended_at INTEGER NOT NULL,
         close_reason TEXT NOT NULL,
         messages_in INTEGER NOT NULL DEFAULT 0,
         messages_out INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX session_history_started ON session_history (started_at);
     CREATE INDEX allocation_history_user ON allocation_history (username, started_at);
     -- One row: the SHA-256 of the admin API's bearer token.
     CREATE TABLE admin_token (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         token_sha256 BLOB NOT NULL CHECK (length(token_sha256) = 32),
         created_at INTEGER NOT NULL
     );",
];

/// A TURN REST shared secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub id: i64,
    pub secret: String,
    pub created_at: i64,
    pub valid_until: Option<i64>,
}

/// A ban on an address or network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub network: Cidr,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Ban {
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.network.contains(ip)
    }
}

/// One allocation event to write to history (what the relay's event channel carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEvent {
    Created {
        alloc_id: i64,
        username: String,
        client: String,
        relay: String,
        at: i64,
    },
    Closed {
        alloc_id: i64,
        at: i64,
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
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub close_reason: Option<String>,
    pub packets_to_peer: i64,
    pub bytes_to_peer: i64,
    pub packets_to_client: i64,
    pub bytes_to_client: i64,
}

/// Which history rows to return: started in `[from, to)`, optionally filtered, paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub from: i64,
    pub to: i64,
    /// Allocations: the username; sessions: the room.
    pub filter: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            from: 0,
            to: i64::MAX,
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
    pub started_at: i64,
    pub ended_at: i64,
    pub close_reason: String,
    pub messages_in: i64,
    pub messages_out: i64,
}

/// A stored secret without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub id: i64,
    pub created_at: i64,
    pub valid_until: Option<i64>,
    pub active: bool,
}

/// Row counts shown by the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub active_secrets: i64,
    pub users: i64,
    pub api_keys: i64,
    pub active_bans: i64,
}

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// How the store has fared, shared by its users and shown in `/metrics`: a failing
/// database is counted and logged, never waited on by the relay.
#[derive(Debug, Default)]
pub struct Health {
    /// Writes or reads that failed (full disk, locked database, corruption).
    pub errors: std::sync::atomic::AtomicU64,
    /// History rows (allocations and sessions) lost to failed writes.
    pub history_lost: std::sync::atomic::AtomicU64,
}

impl Health {
    /// Counts a failed operation.
    pub fn failed(&self) {
        self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection holding the database's write lock until dropped: what another process
/// in the middle of a long write looks like (tests of a locked database).
#[doc(hidden)]
#[derive(Debug)]
pub struct RawLock {
    /// Held, never read: dropping it rolls back and releases the lock.
    _conn: Connection,
}

impl RawLock {
    pub fn exclusive(path: &Path) -> Result<RawLock> {
        let conn = Connection::open(path)?;
        conn.execute_batch("BEGIN EXCLUSIVE")?;
        Ok(RawLock { _conn: conn })
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it forward.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory store (tests, tools).
    pub fn in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        // WAL: readers never block the writer; NORMAL sync is durable across process
        // crashes (a power cut may lose the last transactions, never corrupt the file).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Short: an admin request waits at most this long for a lock held elsewhere before
        // answering 503; the history writer loses that batch (counted) rather than queueing.
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version now.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| {
                r.get(0)
            })?)
    }

    fn migrate(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL DEFAULT (unixepoch()))",
        )?;
        let current = self.schema_version()?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Runs `change` (a write and its audit entry) in one transaction: both land or
    /// neither does, so an acknowledged change is never missing from the audit log.
    fn changing<T>(&self, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let value = change()?;
        tx.commit()?;
        Ok(value)
    }

    fn audit(&self, now: i64, actor: &str, action: &str, detail: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now, actor, action, detail],
        )?;
        Ok(())
    }

    /// Adds a secret that signs from now on. The previous signing secret keeps verifying
    /// for `overlap` seconds, then retires.
    pub fn rotate_secret(&mut self, secret: &str, overlap: i64, now: i64, actor: &str) -> Result<i64> {
        if secret.len() < 16 {
            return Err(StoreError::Invalid("secret (at least 16 characters)"));
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE turn_secrets SET valid_until = ?1 WHERE valid_until IS NULL",
            [now + overlap.max(0)],
        )?;
        tx.execute(
            "INSERT INTO turn_secrets (secret, created_at) VALUES (?1, ?2)",
            params![secret, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, 'secret.rotate', ?3)",
            params![
                now,
                actor,
                format!("secret {id}; previous valid {overlap} s more")
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Secrets valid at `now`, newest (the signing one) first.
    pub fn active_secrets(&self, now: i64) -> Result<Vec<StoredSecret>> {
        let mut st = self.conn.prepare(
            "SELECT id, secret, created_at, valid_until FROM turn_secrets
             WHERE valid_until IS NULL OR valid_until > ?1 ORDER BY created_at DESC, id DESC",
        )?;
        let rows = st.query_map([now], |r| {
            Ok(StoredSecret {
                id: r.get(0)?,
                secret: r.get(1)?,
                created_at: r.get(2)?,
                valid_until: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds a static TURN user; only the long-term key is kept.
    pub fn add_user(&self, name: &str, realm: &str, password: &str, now: i64, actor: &str) -> Result<()> {
        self.changing(|| {
            if name.is_empty() || name.len() > 255 || callbox_core::RestUsername::parse(name).is_some() {
                return Err(StoreError::Invalid("user name"));
            }
            let key = callbox_core::credentials::long_term_key(name, realm, password);
            match self.conn.execute(
                "INSERT INTO turn_users (name, realm, long_term_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, realm, key.to_vec(), now],
            ) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::Exists("user"));
                }
                Err(e) => return Err(e.into()),
            }
            self.audit(now, actor, "user.add", name)
        })
    }

    pub fn remove_user(&self, name: &str, now: i64, actor: &str) -> Result<()> {
        self.changing(|| {
            if self
                .conn
                .execute("DELETE FROM turn_users WHERE name = ?1", [name])?
                == 0
            {
                return Err(StoreError::NotFound("user"));
            }
            self.audit(now, actor, "user.remove", name)
        })
    }

    /// Static users for a realm: (name, long-term key).
    pub fn users(&self, realm: &str) -> Result<Vec<(String, [u8; 16])>> {
        let mut st = self
            .conn
            .prepare("SELECT name, long_term_key FROM turn_users WHERE realm = ?1 ORDER BY name")?;
        let rows = st.query_map([realm], |r| {
            let key: Vec<u8> = r.get(1)?;
            let mut k = [0u8; 16];
            k.copy_from_slice(&key);
            Ok((r.get(0)?, k))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores an API key (its SHA-256 only) under `name`.
    pub fn add_api_key(&self, name: &str, key: &str, now: i64, actor: &str) -> Result<i64> {
        self.changing(|| {
            if !callbox_core::credentials::valid_user_id(name) {
                return Err(StoreError::Invalid("API key name"));
            }
            if key.len() < 16 {
                return Err(StoreError::Invalid("API key (at least 16 characters)"));
            }
            match self.conn.execute(
                "INSERT INTO api_keys (name, key_sha256, created_at) VALUES (?1, ?2, ?3)",
                params![name, sha256(key.as_bytes()), now],
            ) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::Exists("API key"));
                }
                Err(e) => return Err(e.into()),
            }
            let id = self.conn.last_insert_rowid();
            self.audit(now, actor, "api_key.add", name)?;
            Ok(id)
        })
    }

    /// The name of the API key `key`, if it is one. The digest is looked up by index; a
    /// digest reveals nothing about other keys, so no constant-time scan is needed.
    pub fn api_key_name(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name FROM api_keys WHERE key_sha256 = ?1",
                [sha256(key.as_bytes())],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn remove_api_key(&self, name: &str, now: i64, actor: &str) -> Result<()> {
        self.changing(|| {
            if self
                .conn
                .execute("DELETE FROM api_keys WHERE name = ?1", [name])?
                == 0
            {
                return Err(StoreError::NotFound("API key"));
            }
            self.audit(now, actor, "api_key.remove", name)
        })
    }

    /// Bans an address or network, optionally until `expires_at`.
    pub fn add_ban(
        &self,
        network: &Cidr,
        reason: &str,
        expires_at: Option<i64>,
        now: i64,
        actor: &str,
    ) -> Result<i64> {
        self.changing(|| {
            if reason.len() > 1024 {
                return Err(StoreError::Invalid("reason (at most 1024 bytes)"));
            }
            self.conn.execute(
                "INSERT INTO bans (network, reason, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![network.to_string(), reason, now, expires_at],
            )?;
            let id = self.conn.last_insert_rowid();
            self.audit(now, actor, "ban.add", &format!("{network} {reason}"))?;
            Ok(id)
        })
    }

    pub fn remove_ban(&self, id: i64, now: i64, actor: &str) -> Result<()> {
        self.changing(|| {
            if self.conn.execute("DELETE FROM bans WHERE id = ?1", [id])? == 0 {
                return Err(StoreError::NotFound("ban"));
            }
            self.audit(now, actor, "ban.remove", &id.to_string())
        })
    }

    /// Bans in force at `now`.
    pub fn active_bans(&self, now: i64) -> Result<Vec<Ban>> {
        let mut st = self.conn.prepare(
            "SELECT id, network, reason, created_at, expires_at FROM bans
             WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY id",
        )?;
        let rows = st.query_map([now], |r| {
            let net: String = r.get(1)?;
            Ok((r.get(0)?, net, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, net, reason, created_at, expires_at): (i64, String, String, i64, Option<i64>) = row?;
            // Rows are written from parsed CIDRs; one that no longer parses is skipped.
            if let Ok(network) = net.parse() {
                out.push(Ban {
                    id,
                    network,
                    reason,
                    created_at,
                    expires_at,
                });
            }
        }
        Ok(out)
    }

    /// The audit log, newest first.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        self.audit_page(limit, 0)
    }

    /// A page of the audit log, newest first.
    pub fn audit_page(&self, limit: u32, offset: u64) -> Result<Vec<AuditEntry>> {
        let mut st = self.conn.prepare(
            "SELECT id, at, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT ?1 OFFSET ?2",
        )?;
        let rows = st.query_map(params![limit, offset as i64], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

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
                    at,
                } => {
                    tx.execute(
                        "INSERT INTO allocation_history (alloc_id, username, client, relay, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![alloc_id, username, client, relay, at],
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
    pub fn allocation_history(&self, from: i64, to: i64, limit: u32) -> Result<Vec<AllocationRecord>> {
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
                    packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client
             FROM allocation_history WHERE started_at >= ?1 AND started_at < ?2
                 AND (?3 IS NULL OR username = ?3)
             ORDER BY started_at DESC, id DESC LIMIT ?4 OFFSET ?5",
        )?;
        let rows = st.query_map(params![q.from, q.to, q.filter, q.limit, q.offset as i64], |r| {
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
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes allocation and session history that started before `before` (retention).
    pub fn prune_history(&self, before: i64) -> Result<usize> {
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
            "SELECT room, peer_id, client, started_at, ended_at, close_reason, messages_in, messages_out
             FROM session_history WHERE started_at >= ?1 AND started_at < ?2
                 AND (?3 IS NULL OR room = ?3)
             ORDER BY started_at DESC, id DESC LIMIT ?4 OFFSET ?5",
        )?;
        let rows = st.query_map(params![q.from, q.to, q.filter, q.limit, q.offset as i64], |r| {
            Ok(SessionRecord {
                room: r.get(0)?,
                peer_id: r.get(1)?,
                client: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                close_reason: r.get(5)?,
                messages_in: r.get(6)?,
                messages_out: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every secret ever stored, newest first, with whether it verifies at `now`.
    pub fn secrets_overview(&self, now: i64) -> Result<Vec<SecretInfo>> {
        let mut st = self.conn.prepare(
            "SELECT id, created_at, valid_until FROM turn_secrets ORDER BY created_at DESC, id DESC",
        )?;
        let rows = st.query_map([], |r| {
            let valid_until: Option<i64> = r.get(2)?;
            Ok(SecretInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                valid_until,
                active: valid_until.is_none_or(|v| v > now),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Static users of every realm: (name, realm, created_at).
    pub fn user_list(&self) -> Result<Vec<(String, String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT name, realm, created_at FROM turn_users ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// API keys: (id, name, created_at); the keys themselves are not kept.
    pub fn api_key_list(&self) -> Result<Vec<(i64, String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, created_at FROM api_keys ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every API key digest with its name (what `/v1/ice-servers` checks against).
    pub fn api_key_digests(&self) -> Result<Vec<([u8; 32], String)>> {
        let mut st = self.conn.prepare("SELECT key_sha256, name FROM api_keys")?;
        let rows = st.query_map([], |r| {
            let d: Vec<u8> = r.get(0)?;
            let mut k = [0u8; 32];
            k.copy_from_slice(&d);
            Ok((k, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Replaces the admin token's digest.
    pub fn set_admin_token(&self, token_sha256: [u8; 32], now: i64, actor: &str) -> Result<()> {
        self.changing(|| {
            self.conn.execute(
                "INSERT INTO admin_token (id, token_sha256, created_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256, created_at = excluded.created_at",
                params![token_sha256.to_vec(), now],
            )?;
            self.audit(now, actor, "admin_token.rotate", "")
        })
    }

    /// The admin token's digest, if one was set.
    pub fn admin_token(&self) -> Result<Option<[u8; 32]>> {
        let d: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT token_sha256 FROM admin_token WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(d.map(|d| {
            let mut k = [0u8; 32];
            k.copy_from_slice(&d);
            k
        }))
    }

    /// Row counts for the status endpoint.
    pub fn counts(&self, now: i64) -> Result<StoreCounts> {
        let one = |sql: &str| -> Result<i64> { Ok(self.conn.query_row(sql, [now], |r| r.get(0))?) };
        Ok(StoreCounts {
            active_secrets: one(
                "SELECT COUNT(*) FROM turn_secrets WHERE valid_until IS NULL OR valid_until > ?1",
            )?,
            users: one("SELECT COUNT(*) + 0 * ?1 FROM turn_users")?,
            api_keys: one("SELECT COUNT(*) + 0 * ?1 FROM api_keys")?,
            active_bans: one("SELECT COUNT(*) FROM bans WHERE expires_at IS NULL OR expires_at > ?1")?,
        })
    }

    /// Creates a database at `path` with only the first `version` migrations: how a
    /// database made by an earlier release looks (for migration tests).
    #[doc(hidden)]
    pub fn create_at_version(path: &Path, version: usize) -> Result<()> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL DEFAULT (unixepoch()))",
        )?;
        for (i, sql) in MIGRATIONS.iter().take(version).enumerate() {
            conn.execute_batch(sql)?;
            conn.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])?;
        }
        Ok(())
    }

    /// Runs `sql` on the raw connection (tests and tools that fill old schemas).
    #[doc(hidden)]
    pub fn execute_raw(path: &Path, sql: &str) -> Result<()> {
        Connection::open(path)?.execute_batch(sql)?;
        Ok(())
    }

    /// An online backup to `dest`, safe while others write (SQLite's backup API copies a
    /// consistent snapshot page by page).
    pub fn backup(&self, dest: &Path) -> Result<()> {
        let mut out = Connection::open(dest)?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut out)?;
        backup.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
        Ok(())
    }

    /// `PRAGMA integrity_check` says "ok".
    pub fn integrity_ok(&self) -> Result<bool> {
        let r: String = self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(r == "ok")
    }
}

#[cfg(test)]
mod tests;
