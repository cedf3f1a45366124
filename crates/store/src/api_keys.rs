//! API keys for `/v1/ice-servers`: only their SHA-256 is kept.

use callbox_core::names::ApiKeyName;
use callbox_core::time::UnixSecs;
use rusqlite::{OptionalExtension, params};

use crate::{Result, Store, StoreError, read_rows, sha256};

/// An API key as listed; the key itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub name: String,
    pub created_at: UnixSecs,
}

/// An API key's digest and name, what `/v1/ice-servers` checks presented keys against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiKeyDigest {
    pub sha256: [u8; 32],
    pub name: String,
}

/// Keys shorter than this are refused: they would be guessable.
const MIN_KEY_LEN: usize = 16;

impl Store {
    /// Stores an API key (its SHA-256 only) under `name`.
    pub fn add_api_key(&self, name: &ApiKeyName, key: &str, now: UnixSecs, actor: &str) -> Result<i64> {
        self.changing(|| {
            if key.len() < MIN_KEY_LEN {
                return Err(StoreError::Invalid("API key (at least 16 characters)"));
            }
            match self.conn.execute(
                "INSERT INTO api_keys (name, key_sha256, created_at) VALUES (?1, ?2, ?3)",
                params![name.as_str(), sha256(key.as_bytes()), now],
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
            self.audit(now, actor, "api_key.add", name.as_str())?;
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

    /// Revokes the key named `name` (any stored name).
    pub fn remove_api_key(&self, name: &str, now: UnixSecs, actor: &str) -> Result<()> {
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

    /// API keys by name; the keys themselves are not kept.
    pub fn api_key_list(&self) -> Result<Vec<ApiKeyRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, created_at FROM api_keys ORDER BY name")?;
        read_rows(&mut st, [], "api_keys", |r| {
            Ok(ApiKeyRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
            })
        })
    }

    /// Every API key digest with its name.
    pub fn api_key_digests(&self) -> Result<Vec<ApiKeyDigest>> {
        let mut st = self.conn.prepare("SELECT name, key_sha256 FROM api_keys")?;
        read_rows(&mut st, [], "api_keys", |r| {
            Ok(ApiKeyDigest {
                name: r.get(0)?,
                sha256: r.get(1)?,
            })
        })
    }
}
