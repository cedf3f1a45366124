//! TURN REST shared secrets and their rotation with overlap.

use callbox_core::names::turn_secret;
use callbox_core::time::UnixSecs;
use rusqlite::params;

use crate::{Result, Store, StoreError, read_rows, sql_time};

/// A TURN REST shared secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub id: i64,
    pub secret: String,
    pub created_at: UnixSecs,
    pub valid_until: Option<UnixSecs>,
}

/// A stored secret without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub id: i64,
    pub created_at: UnixSecs,
    pub valid_until: Option<UnixSecs>,
    pub active: bool,
}

impl Store {
    /// Adds a secret that signs from now on. The previous signing secret keeps verifying
    /// for `overlap` seconds, then retires.
    pub fn rotate_secret(&mut self, secret: &str, overlap: u64, now: UnixSecs, actor: &str) -> Result<i64> {
        if secret.len() < turn_secret::MIN_LEN {
            return Err(StoreError::Invalid("secret (at least 16 characters)"));
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE turn_secrets SET valid_until = ?1 WHERE valid_until IS NULL",
            [sql_time(now.saturating_add(overlap))],
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
    pub fn active_secrets(&self, now: UnixSecs) -> Result<Vec<StoredSecret>> {
        let mut st = self.conn.prepare(
            "SELECT id, secret, created_at, valid_until FROM turn_secrets
             WHERE valid_until IS NULL OR valid_until > ?1 ORDER BY created_at DESC, id DESC",
        )?;
        read_rows(&mut st, [sql_time(now)], "turn_secrets", |r| {
            Ok(StoredSecret {
                id: r.get(0)?,
                secret: r.get(1)?,
                created_at: r.get(2)?,
                valid_until: r.get(3)?,
            })
        })
    }

    /// Every secret ever stored, newest first, with whether it verifies at `now`.
    pub fn secrets_overview(&self, now: UnixSecs) -> Result<Vec<SecretInfo>> {
        let mut st = self.conn.prepare(
            "SELECT id, created_at, valid_until FROM turn_secrets ORDER BY created_at DESC, id DESC",
        )?;
        read_rows(&mut st, [], "turn_secrets", |r| {
            let valid_until: Option<UnixSecs> = r.get(2)?;
            Ok(SecretInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                valid_until,
                active: valid_until.is_none_or(|v| v > now),
            })
        })
    }
}
