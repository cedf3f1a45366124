//! Access snapshots through Redis: `{prefix}:access` holds the JSON, `{prefix}:access:version`
//! its SHA-256 (hex). Written together (MULTI/EXEC) by the admin node; read by every other.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Cluster, Result};

/// Everything a node needs to admit clients, as the admin role's store says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccessWire {
    /// Active TURN secrets, the signing one first.
    pub secrets: Vec<String>,
    /// Static users: (name, MD5 long-term key in hex).
    pub users: Vec<(String, String)>,
    /// API keys: (SHA-256 of the key in hex, name).
    pub api_keys: Vec<(String, String)>,
    /// Bans: (id, network in CIDR notation).
    pub bans: Vec<(i64, String)>,
}

impl AccessWire {
    /// The JSON and its version.
    pub fn encode(&self) -> (String, String) {
        let json = serde_json::to_string(self).expect("plain data serializes");
        let version = version_of(&json);
        (json, version)
    }

    /// A snapshot as Redis holds it, with its version (computed from the bytes read).
    pub fn decode(json: &str) -> serde_json::Result<(String, AccessWire)> {
        Ok((version_of(json), serde_json::from_str(json)?))
    }
}

fn version_of(json: &str) -> String {
    Sha256::digest(json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Cluster {
    /// The version of the snapshot in Redis; `None` when there is none.
    pub async fn access_version(&self) -> Result<Option<String>> {
        let key = self.key("access:version");
        let (v,): (Option<String>,) = self
            .run("access", |p| {
                p.get(key);
            })
            .await?;
        Ok(v)
    }

    /// Publishes `wire` (both keys at once); returns its version.
    pub async fn publish_access(&self, wire: &AccessWire) -> Result<String> {
        let (json, version) = wire.encode();
        let (data, ver) = (self.key("access"), self.key("access:version"));
        let v = version.clone();
        let () = self
            .run("publish", move |p| {
                p.atomic().set(data, json).ignore().set(ver, v).ignore();
            })
            .await?;
        Ok(version)
    }

    /// The snapshot in Redis with its version (computed from what was read, so a write
    /// between two reads cannot pair one snapshot with another's version).
    pub async fn fetch_access(&self) -> Result<Option<(String, AccessWire)>> {
        let key = self.key("access");
        let (json,): (Option<String>,) = self
            .run("access", |p| {
                p.get(key);
            })
            .await?;
        let Some(json) = json else {
            return Ok(None);
        };
        Ok(Some(AccessWire::decode(&json)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_content() {
        let a = AccessWire {
            secrets: vec!["s".into()],
            ..AccessWire::default()
        };
        let (json, v) = a.encode();
        assert_eq!(v.len(), 64);
        assert_eq!(serde_json::from_str::<AccessWire>(&json).unwrap(), a);
        assert_eq!(a.clone().encode().1, v, "same content, same version");
        let b = AccessWire {
            bans: vec![(1, "192.0.2.0/24".into())],
            ..a
        };
        assert_ne!(b.encode().1, v);
    }
}
