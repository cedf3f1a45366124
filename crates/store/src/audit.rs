//! The audit log of admin changes, and the admin token's digest (changed only with an
//! audit entry).

use callbox_core::time::UnixSecs;
use rusqlite::{OptionalExtension, params};

use crate::{Result, Store, read_rows};

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: UnixSecs,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl Store {
    /// Appends an entry; callers run it inside [`Store::changing`] with the change it
    /// records.
    pub(crate) fn audit(&self, now: UnixSecs, actor: &str, action: &str, detail: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now, actor, action, detail],
        )?;
        Ok(())
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
        read_rows(&mut st, params![limit, offset as i64], "audit_log", |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })
    }

    /// Replaces the admin token's digest.
    pub fn set_admin_token(&self, token_sha256: [u8; 32], now: UnixSecs, actor: &str) -> Result<()> {
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
        Ok(self
            .conn
            .query_row("SELECT token_sha256 FROM admin_token WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }
}
