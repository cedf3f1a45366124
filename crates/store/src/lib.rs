//! The SQLite store of callbox: TURN secrets and their rotation, static TURN users, API
//! keys, bans, allocation and signaling session history, and the audit log.
//!
//! Shape: [`Store::open`] sets WAL mode and runs every forward migration the database has
//! not seen (`migrations.rs`; the `schema_version` table records them); repository
//! functions, one module per table group, are typed and take `now` ([`UnixSecs`]) from the
//! caller, so rules are testable without a clock.
//! Invariants: passwords and API keys are never stored: static users keep the RFC 8489
//! long-term key, API keys a SHA-256 digest. A row that does not parse is logged with its
//! table and key and left out of the answer, never dropped silently.

mod api_keys;
mod audit;
mod bans;
mod history;
mod migrations;
mod secrets;
#[cfg(any(test, feature = "test-api"))]
mod test_api;
mod users;

use std::path::Path;

use callbox_core::time::UnixSecs;
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use sha2::{Digest, Sha256};

pub use api_keys::{ApiKeyDigest, ApiKeyRecord};
pub use audit::AuditEntry;
pub use bans::Ban;
pub use history::{AllocationRecord, HistoryEvent, HistoryQuery, SessionRecord};
pub use migrations::MIGRATIONS;
pub use secrets::{SecretInfo, StoredSecret};
#[cfg(any(test, feature = "test-api"))]
pub use test_api::RawLock;
pub use users::{UserKey, UserRecord};

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

/// Row counts shown by the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub active_secrets: i64,
    pub users: i64,
    pub api_keys: i64,
    pub active_bans: i64,
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

/// An open store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// A time bound as SQLite holds it. SQLite integers are `i64` and rusqlite refuses to bind
/// a larger `u64`; every time past `i64::MAX` seconds means "no end", so it is clamped.
fn sql_time(t: UnixSecs) -> UnixSecs {
    const LATEST: UnixSecs = i64::MAX as UnixSecs;
    t.min(LATEST)
}

/// A value of column `col` that does not convert to its Rust type.
fn bad_value(col: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

/// Reads every row of `st` through `parse`. A row that does not convert (a value its
/// field cannot hold, such as a negative time or a network that no longer parses) is
/// logged with `table` and its key, the first column, and left out: one bad row must not
/// hide the others (or stop the sync loop that reads bans and users).
fn read_rows<T>(
    st: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    table: &'static str,
    mut parse: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut rows = st.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match parse(row) {
            Ok(v) => out.push(v),
            Err(
                e @ (rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::InvalidColumnType(..)),
            ) => {
                tracing::warn!(table, key = %row_key(row), error = %e, "store: a row that does not parse is left out");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The first column of `row`, for logs.
fn row_key(row: &rusqlite::Row<'_>) -> String {
    match row.get_ref(0) {
        Ok(ValueRef::Integer(i)) => i.to_string(),
        Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
        Ok(v) => format!("<{}>", v.data_type()),
        Err(e) => format!("<{e}>"),
    }
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

    /// Runs `change` (a write and its audit entry) in one transaction: both land or
    /// neither does, so an acknowledged change is never missing from the audit log.
    fn changing<T>(&self, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let value = change()?;
        tx.commit()?;
        Ok(value)
    }

    /// Row counts for the status endpoint.
    pub fn counts(&self, now: UnixSecs) -> Result<StoreCounts> {
        let now = sql_time(now);
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
