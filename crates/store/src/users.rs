//! Static TURN users: only the RFC 8489 long-term key of a password is kept.

use callbox_core::names::UserName;
use callbox_core::time::UnixSecs;
use rusqlite::params;

use crate::{Result, Store, StoreError, read_rows};

/// A static user's key, what the relay verifies with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserKey {
    pub name: String,
    /// MD5(name:realm:password), RFC 8489 section 18.5.1.
    pub long_term_key: [u8; 16],
}

/// A static user as listed (no key, no password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub created_at: UnixSecs,
}

impl Store {
    /// Adds a static TURN user; only the long-term key is kept.
    pub fn add_user(
        &self,
        name: &UserName,
        realm: &str,
        password: &str,
        now: UnixSecs,
        actor: &str,
    ) -> Result<()> {
        self.changing(|| {
            let key = callbox_core::credentials::long_term_key(name.as_str(), realm, password);
            match self.conn.execute(
                "INSERT INTO turn_users (name, realm, long_term_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name.as_str(), realm, key.to_vec(), now],
            ) {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::Exists("user"));
                }
                Err(e) => return Err(e.into()),
            }
            self.audit(now, actor, "user.add", name.as_str())
        })
    }

    /// Removes a static user by any stored name (so a row written by another program can
    /// still be removed).
    pub fn remove_user(&self, name: &str, now: UnixSecs, actor: &str) -> Result<()> {
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

    /// Static users of a realm with their long-term keys, by name.
    pub fn users(&self, realm: &str) -> Result<Vec<UserKey>> {
        let mut st = self
            .conn
            .prepare("SELECT name, long_term_key FROM turn_users WHERE realm = ?1 ORDER BY name")?;
        read_rows(&mut st, [realm], "turn_users", |r| {
            Ok(UserKey {
                name: r.get(0)?,
                long_term_key: r.get(1)?,
            })
        })
    }

    /// Static users of every realm, by name.
    pub fn user_list(&self) -> Result<Vec<UserRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT name, realm, created_at FROM turn_users ORDER BY name")?;
        read_rows(&mut st, [], "turn_users", |r| {
            Ok(UserRecord {
                name: r.get(0)?,
                realm: r.get(1)?,
                created_at: r.get(2)?,
            })
        })
    }
}
