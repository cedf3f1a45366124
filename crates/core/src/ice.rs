//! The ICE server list of PROTOCOL.md section 1: RTCPeerConnection configuration that also
//! satisfies the TURN REST API draft.

use serde::Serialize;

use crate::credentials::{self, SecretSet};

/// One RTCIceServer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The whole answer of `/v1/ice-servers` and `callbox credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServers {
    pub ice_servers: Vec<IceServer>,
    pub username: String,
    pub password: String,
    pub ttl: u64,
    pub uris: Vec<String>,
    pub expires_at: String,
}

/// The enabled TURN listeners to advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnEndpoints {
    /// Host name or address literal (IPv6 without brackets).
    pub host: String,
    pub udp_port: Option<u16>,
    pub tcp_port: Option<u16>,
    /// TURN over TLS: `turn.tls_listen`'s ports, then the one TLS port's.
    pub tls_ports: Vec<u16>,
    /// The name in `turns:` URLs (a certificate is valid for names, rarely for addresses):
    /// `turn.public_host`, else the certificate's first DNS name, else `host`.
    pub tls_host: Option<String>,
}

fn host_part(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl TurnEndpoints {
    pub fn stun_urls(&self) -> Vec<String> {
        let h = host_part(&self.host);
        self.udp_port
            .or(self.tcp_port)
            .map(|p| format!("stun:{h}:{p}"))
            .into_iter()
            .collect()
    }

    pub fn turn_urls(&self) -> Vec<String> {
        let h = host_part(&self.host);
        let mut v = Vec::new();
        if let Some(p) = self.udp_port {
            v.push(format!("turn:{h}:{p}?transport=udp"));
        }
        if let Some(p) = self.tcp_port {
            v.push(format!("turn:{h}:{p}?transport=tcp"));
        }
        let tls_host = self.tls_host.as_deref().map_or_else(|| h.clone(), host_part);
        for p in &self.tls_ports {
            v.push(format!("turns:{tls_host}:{p}?transport=tcp"));
        }
        v
    }
}

/// Builds the list for `user`, valid for `ttl` seconds from `now` (unix seconds).
pub fn build(endpoints: &TurnEndpoints, secrets: &SecretSet, user: &str, now: u64, ttl: u64) -> IceServers {
    build_from_urls(
        &endpoints.stun_urls(),
        &endpoints.turn_urls(),
        secrets,
        user,
        now,
        ttl,
    )
}

/// Builds the list from explicit URL lists (a signal role pointed at TURN servers elsewhere).
pub fn build_from_urls(
    stun: &[String],
    turn: &[String],
    secrets: &SecretSet,
    user: &str,
    now: u64,
    ttl: u64,
) -> IceServers {
    let (username, password) = credentials::mint(secrets.signing(), user, now, ttl);
    let turn_urls = turn.to_vec();
    let mut ice_servers = Vec::new();
    let stun = stun.to_vec();
    if !stun.is_empty() {
        ice_servers.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    if !turn_urls.is_empty() {
        ice_servers.push(IceServer {
            urls: turn_urls.clone(),
            username: Some(username.clone()),
            credential: Some(password.clone()),
        });
    }
    IceServers {
        ice_servers,
        username,
        password,
        ttl,
        uris: turn_urls,
        expires_at: crate::time::rfc3339(now.saturating_add(ttl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn shape_matches_protocol() {
        let ep = TurnEndpoints {
            host: "turn.example.com".into(),
            udp_port: Some(3478),
            tcp_port: None,
            tls_ports: vec![],
            tls_host: None,
        };
        let set = SecretSet::new(vec![Secret::new("s")]).unwrap();
        let list = build(&ep, &set, "alice", 1_795_216_866, 86_400);
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["username"], "1795303266:alice");
        assert_eq!(v["ttl"], 86_400);
        assert_eq!(v["expiresAt"], "2026-11-21T23:21:06Z");
        assert_eq!(v["iceServers"][0]["urls"][0], "stun:turn.example.com:3478");
        assert!(v["iceServers"][0].get("username").is_none());
        assert_eq!(
            v["iceServers"][1]["urls"][0],
            "turn:turn.example.com:3478?transport=udp"
        );
        assert_eq!(v["iceServers"][1]["credential"], v["password"]);
        assert_eq!(v["uris"].as_array().unwrap().len(), 1, "only enabled listeners");
        assert!(set.verify_password(&list.username, &list.password, 1_795_216_866));
        let v6 = TurnEndpoints {
            host: "2001:db8::1".into(),
            ..ep
        };
        assert_eq!(v6.stun_urls()[0], "stun:[2001:db8::1]:3478");
    }

    #[test]
    fn every_transport_in_the_order_to_try_with_the_certificate_name_for_tls() {
        let ep = TurnEndpoints {
            host: "192.0.2.7".into(),
            udp_port: Some(3478),
            tcp_port: Some(3478),
            tls_ports: vec![5349, 443],
            tls_host: Some("turn.example.com".into()),
        };
        assert_eq!(
            ep.turn_urls(),
            [
                "turn:192.0.2.7:3478?transport=udp",
                "turn:192.0.2.7:3478?transport=tcp",
                "turns:turn.example.com:5349?transport=tcp",
                "turns:turn.example.com:443?transport=tcp",
            ]
        );
        let no_name = TurnEndpoints { tls_host: None, ..ep };
        assert_eq!(no_name.turn_urls()[2], "turns:192.0.2.7:5349?transport=tcp");
    }
}
