//! Bans on addresses and networks, with optional expiry.

use std::net::IpAddr;

use callbox_core::names::BanReason;
use callbox_core::policy::Cidr;
use callbox_core::time::UnixSecs;
use rusqlite::params;

use crate::{Result, Store, StoreError, bad_value, read_rows, sql_time};

/// A ban on an address or network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub network: Cidr,
    pub reason: String,
    pub created_at: UnixSecs,
    pub expires_at: Option<UnixSecs>,
}

impl Ban {
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.network.contains(ip)
    }
}

impl Store {
    /// Bans an address or network, optionally until `expires_at`.
    pub fn add_ban(
        &self,
        network: &Cidr,
        reason: &BanReason,
        expires_at: Option<UnixSecs>,
        now: UnixSecs,
        actor: &str,
    ) -> Result<i64> {
        self.changing(|| {
            self.conn.execute(
                "INSERT INTO bans (network, reason, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![network.to_string(), reason.as_str(), now, expires_at],
            )?;
            let id = self.conn.last_insert_rowid();
            self.audit(now, actor, "ban.add", &format!("{network} {reason}"))?;
            Ok(id)
        })
    }

    pub fn remove_ban(&self, id: i64, now: UnixSecs, actor: &str) -> Result<()> {
        self.changing(|| {
            if self.conn.execute("DELETE FROM bans WHERE id = ?1", [id])? == 0 {
                return Err(StoreError::NotFound("ban"));
            }
            self.audit(now, actor, "ban.remove", &id.to_string())
        })
    }

    /// Bans in force at `now`, by id.
    pub fn active_bans(&self, now: UnixSecs) -> Result<Vec<Ban>> {
        let mut st = self.conn.prepare(
            "SELECT id, network, reason, created_at, expires_at FROM bans
             WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY id",
        )?;
        read_rows(&mut st, [sql_time(now)], "bans", |r| {
            let network: String = r.get(1)?;
            Ok(Ban {
                id: r.get(0)?,
                // Rows are written from parsed CIDRs; one that no longer parses is logged
                // and left out rather than failing every read of the bans.
                network: network.parse().map_err(|e| bad_value(1, e))?,
                reason: r.get(2)?,
                created_at: r.get(3)?,
                expires_at: r.get(4)?,
            })
        })
    }
}
