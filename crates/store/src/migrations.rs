//! The schema and its forward migrations, run at open. The `schema_version` table records
//! which have run; a database newer than this program is refused, never downgraded.

use crate::{Result, Store, StoreError};

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
    // 3: allocation close reasons in the lower-case words session history uses (earlier
    // releases wrote the relay's Debug names). Other values are left as they are.
    "UPDATE allocation_history SET close_reason = lower(close_reason)
         WHERE close_reason IN ('Deleted', 'Expired', 'Kicked', 'Shutdown');",
    // 4: the client's transport (udp, tcp, tls); earlier releases relayed over UDP only.
    "ALTER TABLE allocation_history ADD COLUMN transport TEXT NOT NULL DEFAULT 'udp';",
];

/// Creates the version table of a new database (the same statement for [`Store::open`]
/// and for databases made at an old version in tests).
pub(crate) const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL DEFAULT (unixepoch()))";

impl Store {
    /// The schema version now.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| {
                r.get(0)
            })?)
    }

    /// Runs every migration the database has not seen, each in its own transaction with
    /// its version row, so a crash leaves the database at a version it records.
    pub(crate) fn migrate(&mut self) -> Result<()> {
        self.conn.execute_batch(CREATE_VERSION_TABLE)?;
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
}
