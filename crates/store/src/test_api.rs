//! What tests need to set up a database the way another process or an earlier release
//! left it. Behind the `test-api` feature: nothing in a release build can reach the raw
//! connection or write an old schema.

use std::path::Path;

use rusqlite::Connection;

use crate::migrations::{CREATE_VERSION_TABLE, MIGRATIONS};
use crate::{Result, Store};

/// A connection holding the database's write lock until dropped: what another process
/// in the middle of a long write looks like (tests of a locked database).
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

impl Store {
    /// Creates a database at `path` with only the first `version` migrations: how a
    /// database made by an earlier release looks (for migration tests).
    pub fn create_at_version(path: &Path, version: usize) -> Result<()> {
        let conn = Connection::open(path)?;
        conn.execute_batch(CREATE_VERSION_TABLE)?;
        for (i, sql) in MIGRATIONS.iter().take(version).enumerate() {
            conn.execute_batch(sql)?;
            conn.execute("INSERT INTO schema_version (version) VALUES (?1)", [i as i64 + 1])?;
        }
        Ok(())
    }

    /// Runs `sql` on the raw connection (tests that fill old schemas).
    pub fn execute_raw(path: &Path, sql: &str) -> Result<()> {
        Connection::open(path)?.execute_batch(sql)?;
        Ok(())
    }
}
